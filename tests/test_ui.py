"""The page's routes without a browser: the page, its assets and the limits it checks."""

from __future__ import annotations

import hashlib
import re
from importlib import resources

import httpx
import pytest
from pydantic import ValidationError

from imagepipe.api.routes.page import assets, config_view
from imagepipe.config import Settings
from tests.conftest import SECRETS, free_port
from tests.stack import api_server

STATIC = resources.files("imagepipe.api") / "static"


async def test_the_page_is_served_with_a_strict_policy(http: httpx.AsyncClient) -> None:
    page = await http.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["x-content-type-options"] == "nosniff"
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert '<script type="module" src="/static/app.js">' in page.text


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        ("app.js", "text/javascript; charset=utf-8"),
        ("app.css", "text/css; charset=utf-8"),
        ("icon.svg", "image/svg+xml"),
        ("tus.min.js", "text/javascript; charset=utf-8"),
    ],
)
async def test_assets_have_their_type_nosniff_and_an_etag(
    http: httpx.AsyncClient, name: str, content_type: str
) -> None:
    asset = await http.get(f"/static/{name}")
    assert asset.status_code == 200
    assert asset.headers["content-type"] == content_type
    assert asset.headers["x-content-type-options"] == "nosniff"
    assert asset.content == (STATIC / name).read_bytes()
    again = await http.get(f"/static/{name}", headers={"if-none-match": asset.headers["etag"]})
    assert again.status_code == 304 and again.content == b""


async def test_head_answers_without_a_body(http: httpx.AsyncClient) -> None:
    head = await http.head("/")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-type"] == "text/html; charset=utf-8"


@pytest.mark.parametrize("name", ["nope.js", "..%2Fui.py", "%2E%2E%2Fapp.py", "index.htm"])
async def test_only_the_shipped_files_are_served(http: httpx.AsyncClient, name: str) -> None:
    response = await http.get(f"/static/{name}")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"


def test_every_file_the_page_names_is_shipped_and_nothing_is_fetched_from_elsewhere() -> None:
    page = (STATIC / "index.html").read_text()
    named = set(re.findall(r'(?:src|href)="/static/([^"]+)"', page))
    assert named == {"tus.min.js", "app.js", "app.css", "icon.svg"} and named <= set(assets())
    for name in ("index.html", "app.js", "app.css"):
        text = (STATIC / name).read_text()
        assert not re.search(r"https?://", text), f"{name} reaches outside the API (works offline)"


def test_the_vendored_tus_js_client_is_the_pinned_release() -> None:
    """`make vendor` fetched it (npm, integrity checked); nobody edited it since."""
    pin = dict(
        line.split(" ", 1)
        for line in (STATIC / "tus-js-client.pin").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert (pin["package"], pin["version"]) == ("tus-js-client", "4.3.1")
    assert hashlib.sha256((STATIC / "tus.min.js").read_bytes()).hexdigest() == pin["sha256"]
    assert "MIT" in (STATIC / "tus-js-client.LICENSE").read_text()


def test_form_controls_have_labels_and_status_changes_are_announced() -> None:
    page = (STATIC / "index.html").read_text()
    for control in re.findall(r'<input id="([^"]+)"', page):
        assert f'<label for="{control}"' in page, control
    assert 'aria-live="polite"' in page
    assert '<html lang="en">' in page and 'name="viewport"' in page


async def test_the_limits_endpoint_tells_the_page_what_the_server_enforces(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    response = await http.get("/ui/config")
    assert response.status_code == 200
    assert response.json() == config_view(settings)
    again = await http.get("/ui/config", headers={"if-none-match": response.headers["etag"]})
    assert again.status_code == 304


def test_the_limits_follow_the_settings(settings: Settings) -> None:
    custom = settings.model_copy(
        update={"max_upload_bytes": 1234, "max_pixels": 99, "formats": ("PNG", "HEIF")}
    )
    view = config_view(custom)
    assert (view["max_upload_bytes"], view["max_pixels"]) == (1234, 99)
    assert view["formats"] == ["PNG", "HEIF"]
    assert view["format_labels"] == ["PNG", "HEIC"]
    assert view["resumable_above_bytes"] == settings.page_resumable_above_bytes == 8 * 1024 * 1024
    assert "image/png" in view["media_types"] and "image/heic" in view["media_types"]
    assert "image/jpeg" not in view["media_types"]
    assert {".png", ".heic"} <= set(view["extensions"])
    assert [s["name"] for s in view["sizes"]] == [s.name for s in settings.sizes]


async def test_the_page_and_the_server_name_formats_alike(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    labels = (await http.get("/ui/config")).json()["format_labels"]
    assert {"JPEG", "WebP", "HEIC"} <= set(labels)  # how people name them: not WEBP, HEIF
    refused = await http.post(
        "/photos", content=b"a letter", headers={"content-type": "image/jpeg"}
    )
    assert refused.status_code == 415
    assert f"({', '.join(labels)})" in refused.json()["detail"]
    script = (STATIC / "app.js").read_text()
    assert "format_labels" in script and "HEIC" not in script  # no list of its own


async def test_only_the_configured_web_tiers_may_frame_the_page(settings: Settings) -> None:
    webtiers = "https://www.example.com, http://127.0.0.1:8080/"
    origins = Settings.model_validate({**SECRETS, "page_embed_origins": webtiers})
    assert origins.page_embed_origins == ("https://www.example.com", "http://127.0.0.1:8080")
    update = {"page_embed_origins": origins.page_embed_origins, "port": free_port()}
    framed = settings.model_copy(update=update)
    with api_server(framed) as url:
        async with httpx.AsyncClient(base_url=url) as http:
            policy = (await http.get("/")).headers["content-security-policy"]
            limits = (await http.get("/ui/config")).json()
    assert "frame-ancestors https://www.example.com http://127.0.0.1:8080" in policy
    assert "'none'" not in policy.partition("frame-ancestors")[2]
    assert limits["embed_origins"] == ["https://www.example.com", "http://127.0.0.1:8080"]


@pytest.mark.parametrize(
    "origins", ["*", "https://www.example.com/login", "www.example.com", "javascript:alert(1)"]
)
def test_an_embedder_must_be_an_origin(origins: str) -> None:
    with pytest.raises(ValidationError, match="is not an origin"):
        Settings.model_validate({**SECRETS, "page_embed_origins": origins})
