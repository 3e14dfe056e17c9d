"""Photos as their owner and as others see them: uploads of a given visibility, signed URLs."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from imagepipe.config import Settings
from tests import images
from tests.owners import bearer
from tests.stack import run_worker_burst

MALLORY = bearer("mallory")  # another owner, with every scope
PROBLEM = "application/problem+json"


async def upload(http: httpx.AsyncClient, visibility: str | None = None, width: int = 320) -> Any:
    """Upload a JPEG as the client's owner (``visibility``: the query, or the default)."""
    params = {"visibility": visibility} if visibility else {}
    response = await http.post(
        "/photos",
        params=params,
        content=images.jpeg(width, 240),
        headers={"content-type": "image/jpeg"},
    )
    assert response.status_code == 202, response.text
    return response.json()


async def processed(
    http: httpx.AsyncClient, settings: Settings, *visibilities: str | None
) -> list[str]:
    """Upload one photo per visibility given and process them all; their photo ids."""
    tickets = [await upload(http, v, 300 + n) for n, v in enumerate(visibilities)]
    await run_worker_burst(settings)
    return [t["photo_id"] for t in tickets]


def signature(url: str) -> dict[str, str]:
    """A URL's query (exp and sig of a signed one)."""
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def unsigned(url: str) -> str:
    """The URL without its query."""
    return urlsplit(url).path


async def signed_sizes(http: httpx.AsyncClient, photo_id: str) -> dict[str, str]:
    """Each size's URL as the photo's owner is given it."""
    photo = await http.get(f"/photos/{photo_id}")
    assert photo.status_code == 200, photo.text
    return {name: size["url"] for name, size in photo.json()["sizes"].items()}
