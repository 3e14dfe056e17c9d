"""Interop: `tuspy`, an independent tus 1.0 client, against a real uvicorn serving the API.

It creates, uploads in chunks with sha1 checksums, stops part way, resumes from a new
uploader that finds the offset with HEAD, and ends with the last PATCH's ticket link; the
photo is then processed like any other.
"""

from __future__ import annotations

import asyncio
import hashlib
from io import BytesIO

import httpx
import pytest
from tusclient.client import TusClient

from imagepipe import keys
from imagepipe.config import Settings
from tests import images
from tests.owners import bearer
from tests.stack import run_worker_burst

pytestmark = pytest.mark.resumable


def tuspy_upload(api_url: str, data: bytes) -> tuple[str, str]:
    """Upload with tuspy, interrupted at a third and resumed: (upload URL, ticket link)."""
    client = TusClient(f"{api_url}/uploads/", headers=bearer())
    metadata = {"filename": "train.jpg", "filetype": "image/jpeg"}
    first = client.uploader(
        file_stream=BytesIO(data), chunk_size=64 * 1024, metadata=metadata, upload_checksum=True
    )
    first.upload(stop_at=len(data) // 3)
    assert first.url is not None
    assert 0 < first.offset < len(data)
    resumed = client.uploader(
        file_stream=BytesIO(data), url=first.url, chunk_size=256 * 1024, upload_checksum=True
    )
    assert resumed.get_offset() == first.offset  # found again with HEAD
    resumed.upload()
    assert resumed.offset == len(data)
    return first.url, resumed.request.response_headers["link"]


async def test_tuspy_uploads_interrupted_and_resumed(api_url: str, settings: Settings) -> None:
    data = images.jpeg(1600, 1200)
    url, link = await asyncio.to_thread(tuspy_upload, api_url, data)
    assert url.startswith(f"{api_url}/uploads/")
    assert link.startswith("</tickets/") and link.endswith('>; rel="ticket"')
    ticket_id = link[len("</tickets/") : link.index(">")]
    async with httpx.AsyncClient(base_url=api_url, headers=bearer()) as http:
        ticket = (await http.get(f"/tickets/{ticket_id}")).json()
        head = await http.head(url, headers={"Tus-Resumable": "1.0.0"})
    assert head.headers["link"] == link
    [original] = (settings.primary_root / keys.ORIGINALS).iterdir()
    assert original.name.startswith(ticket["photo_id"])
    assert hashlib.sha256(original.read_bytes()).digest() == hashlib.sha256(data).digest()
    await run_worker_burst(settings)  # the photo is processed like any other
    async with httpx.AsyncClient(base_url=api_url, headers=bearer()) as http:
        done = (await http.get(f"/tickets/{ticket_id}")).json()
        assert done["status"] == "completed", done
        photo = (await http.get(f"/photos/{ticket['photo_id']}")).json()
    assert (photo["width"], photo["height"]) == (1600, 1200)
