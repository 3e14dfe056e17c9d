"""The browser page: `GET /` and its static assets, plus the upload limits the page checks.

The page is plain HTML, CSS and JavaScript shipped inside the package (no build step, no
CDN), so it works offline and is served by every API process. `GET /ui/config` tells it the
server's limits so it can refuse a file before sending it (the server stays the judge), and
which files go resumably, through tus-js-client (vendored: `tus.min.js`, see its `.pin`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from fastapi import APIRouter, Request, Response

from imagepipe import formats
from imagepipe.api.deps import ServicesDep
from imagepipe.api.views import cached_json, not_modified
from imagepipe.config import Settings
from imagepipe.errors import NotFound

router = APIRouter(tags=["ui"])

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
# Everything the page loads comes from this origin: no inline script, no third party. Only
# the web tiers in IMAGEPIPE_PAGE_EMBED_ORIGINS may frame it (they hand it its grant).
PAGE_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors "
)


def page_policy(settings: Settings) -> str:
    """The page's Content-Security-Policy: who may frame it is the settings' word."""
    return PAGE_POLICY + (" ".join(settings.page_embed_origins) or "'none'")


@dataclass(frozen=True)
class Asset:
    """One static file, read once: its bytes, type and validator."""

    body: bytes
    content_type: str
    etag: str


@cache
def assets() -> dict[str, Asset]:
    """Every servable file in `static/`, by name (a dict lookup: no path ever reaches disk)."""
    found: dict[str, Asset] = {}
    for entry in (resources.files("imagepipe.api") / "static").iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in CONTENT_TYPES:
            body = entry.read_bytes()
            etag = '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'
            found[entry.name] = Asset(body, CONTENT_TYPES[suffix], etag)
    return found


def _serve(request: Request, name: str, extra: dict[str, str] | None = None) -> Response:
    asset = assets().get(name)
    if asset is None:
        raise NotFound("no such file")
    # no-cache = revalidate each time: assets are not fingerprinted, so an upgrade shows at once
    headers = {
        "ETag": asset.etag,
        "Cache-Control": "no-cache",
        "X-Content-Type-Options": "nosniff",
        **(extra or {}),
    }
    if not_modified(request, asset.etag):
        return Response(status_code=304, headers=headers)
    return Response(asset.body, headers=headers, media_type=asset.content_type)


@router.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
async def page(request: Request, services: ServicesDep) -> Response:
    """The upload page."""
    policy = page_policy(services.settings)
    headers = {"Content-Security-Policy": policy, "Referrer-Policy": "same-origin"}
    return _serve(request, "index.html", headers)


@router.api_route("/static/{name}", methods=["GET", "HEAD"], include_in_schema=False)
async def static_file(name: str, request: Request) -> Response:
    """One of the page's assets (CSS, JavaScript, icon)."""
    return _serve(request, name)


def config_view(settings: Settings) -> dict[str, Any]:
    """What the page needs: the limits to refuse a file before sending it, and the sizes."""
    # browsers name a file's type from its extension: these mirror the server's decoders
    known = [formats.get(f) for f in settings.formats]
    return {
        "max_upload_bytes": settings.max_upload_bytes,
        "max_pixels": settings.max_pixels,
        "formats": list(settings.formats),
        "format_labels": formats.labels(settings.formats),  # what the page shows
        "media_types": [t for f in known for t in f.media_types],
        "extensions": [e for f in known for e in f.file_names],
        "sizes": [s.model_dump(mode="json") for s in settings.sizes],  # largest first
        "embed_origins": list(settings.page_embed_origins),  # who may hand the page a grant
        # larger files go through tus (tus-js-client), resumable after a drop or a reload
        "resumable_above_bytes": settings.page_resumable_above_bytes,
        "chunk_bytes": settings.page_chunk_bytes,
    }


@router.get("/ui/config")
async def page_config(request: Request, services: ServicesDep) -> Response:
    """Upload limits (bytes, pixels, formats) and the size ladder, for the page's checks."""
    return cached_json(request, config_view(services.settings))
