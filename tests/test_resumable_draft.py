"""The IETF resumable upload draft (interop version 6) under /resumable/, over real HTTP
against a real uvicorn: on the same state, storage and accept path as tus under /uploads/."""

from __future__ import annotations

import asyncio
import hashlib
from urllib.parse import urlsplit

import httpx
import pytest

from imagepipe.api.ietf_draft import COMPLETED_UPLOAD, MISMATCHING_OFFSET
from imagepipe.config import Settings
from tests import images
from tests.owners import bearer
from tests.test_resumable import (
    TUS,
    big_jpeg,
    create,
    originals,
    partial_files,
    patch,
    ticket_of,
)
from tests.test_resumable_faults import CuttingProxy

pytestmark = pytest.mark.resumable
DRAFT = {"Upload-Draft-Interop-Version": "6"}
PARTIAL = {**DRAFT, "Content-Type": "application/partial-upload"}


async def draft_create(
    http: httpx.AsyncClient, length: int, data: bytes = b"", complete: bool = False
) -> httpx.Response:
    headers = {**DRAFT, "Upload-Complete": "?1" if complete else "?0"}
    headers["Upload-Length"] = str(length)
    return await http.post("/resumable/", content=data, headers=headers)


async def draft_created(http: httpx.AsyncClient, length: int) -> str:
    response = await draft_create(http, length)
    assert response.status_code == 201, response.text
    return response.headers["location"]


async def append(
    http: httpx.AsyncClient, url: str, offset: int, data: bytes, complete: bool, **headers: str
) -> httpx.Response:
    flag = {"Upload-Complete": "?1" if complete else "?0", "Upload-Offset": str(offset)}
    return await http.patch(url, content=data, headers={**PARTIAL, **flag, **headers})


async def test_a_draft_upload_in_pieces_makes_one_photo_and_names_its_ticket(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    data = big_jpeg()
    cut = len(data) // 3
    created = await draft_create(http, len(data), data[:cut])
    assert created.status_code == 201, created.text
    url = created.headers["location"]
    assert url.startswith("/resumable/")
    assert created.headers["upload-offset"] == str(cut)
    assert created.headers["upload-complete"] == "?0"
    assert created.headers["upload-limit"].startswith(f"max-size={len(data)},expires=")
    middle = await append(http, url, cut, data[cut : 2 * cut], complete=False)
    assert middle.status_code == 201, middle.text
    assert middle.headers["upload-offset"] == str(2 * cut)
    assert "link" not in middle.headers
    head = await http.head(url, headers=DRAFT)
    assert head.status_code == 204
    assert head.headers["upload-offset"] == str(2 * cut)
    assert head.headers["upload-complete"] == "?0"
    assert head.headers["upload-length"] == str(len(data))
    assert head.headers["cache-control"] == "no-store"
    last = await append(http, url, 2 * cut, data[2 * cut :], complete=True)
    assert last.status_code == 201, last.text
    assert last.headers["upload-complete"] == "?1"
    assert last.headers["upload-offset"] == str(len(data))
    ticket_id = ticket_of(last)  # issued in that same request
    ticket = (await http.get(f"/tickets/{ticket_id}")).json()
    [original] = originals(settings)
    assert original.name.startswith(ticket["photo_id"] + ".")
    assert hashlib.sha256(original.read_bytes()).digest() == hashlib.sha256(data).digest()
    assert partial_files(settings) == []
    again = await http.head(url, headers=DRAFT)  # a client that lost that answer
    assert again.headers["upload-complete"] == "?1" and ticket_of(again) == ticket_id
    more = await append(http, url, len(data), b"", complete=True)
    assert more.status_code == 400 and more.json()["type"] == COMPLETED_UPLOAD
    assert len(originals(settings)) == 1


async def test_a_whole_upload_in_its_creation_answers_with_its_ticket(
    http: httpx.AsyncClient,
) -> None:
    data = images.jpeg(64, 48)
    headers = {**DRAFT, "Upload-Complete": "?1", "Content-Type": "image/jpeg"}
    response = await http.post("/resumable/", content=data, headers=headers)
    assert response.status_code == 201, response.text
    assert response.headers["upload-complete"] == "?1"
    assert response.headers["upload-offset"] == str(len(data))
    ticket_of(response)


async def test_only_upload_complete_ends_an_upload(http: httpx.AsyncClient) -> None:
    data = big_jpeg()
    url = await draft_created(http, len(data))
    whole = await append(http, url, 0, data, complete=False)  # ?0 may not carry the last byte
    assert whole.status_code == 400, whole.text
    head = await http.head(url, headers=DRAFT)
    assert head.headers["upload-complete"] == "?0"
    kept = int(head.headers["upload-offset"])
    assert kept < len(data)
    short = await append(http, url, kept, data[kept:-10], complete=True)  # ?1 must end it
    assert short.status_code == 400 and short.headers["upload-offset"] == str(kept)
    done = await append(http, url, kept, data[kept:], complete=True)
    assert done.status_code == 201, done.text
    ticket_of(done)


async def test_offset_mismatch_is_409_with_the_drafts_problem_type(
    http: httpx.AsyncClient,
) -> None:
    data = big_jpeg()
    url = await draft_created(http, len(data))
    assert (await append(http, url, 0, data[:500], complete=False)).status_code == 201
    stale = await append(http, url, 0, data[:500], complete=False)
    assert stale.status_code == 409
    assert stale.headers["content-type"] == "application/problem+json"
    assert stale.headers["upload-offset"] == "500"
    problem = stale.json()
    assert problem["type"] == MISMATCHING_OFFSET
    assert (problem["expected-offset"], problem["provided-offset"]) == (500, 0)
    assert (await http.head(url, headers=DRAFT)).headers["upload-offset"] == "500"


async def resume(http: httpx.AsyncClient, url: str, data: bytes) -> httpx.Response:
    """As a client does after a dropped link: HEAD, then the rest from there; again while the
    lost PATCH, still settling on a busy machine, holds the upload (423) or moves it (409)."""
    for _ in range(10):
        head = await http.head(url, headers=DRAFT)  # at least what was acknowledged
        assert head.status_code == 204 and head.headers["upload-complete"] == "?0"
        offset = int(head.headers["upload-offset"])
        assert 5000 <= offset < len(data)
        rest = await append(http, url, offset, data[offset:], complete=True)
        if rest.status_code not in (409, 423):
            return rest
        await asyncio.sleep(0.5)
    return rest


async def test_a_dropped_connection_resumes_from_the_offset_head_reports(
    http: httpx.AsyncClient, settings: Settings, api_url: str
) -> None:
    data = big_jpeg()
    url = await draft_created(http, len(data))
    assert (await append(http, url, 0, data[:5000], complete=False)).status_code == 201
    proxy = CuttingProxy([urlsplit(api_url).port or 80], [len(data) // 2])
    base = await proxy.start()
    try:
        async with httpx.AsyncClient(base_url=base, headers=bearer(), timeout=30) as cut:
            with pytest.raises(httpx.TransportError):  # the link dies mid-PATCH
                await append(cut, url, 5000, data[5000:], complete=True)
    finally:
        await proxy.stop()
    rest = await resume(http, url, data)
    assert rest.status_code == 201, rest.text
    ticket_of(rest)
    [original] = originals(settings)
    assert hashlib.sha256(original.read_bytes()).digest() == hashlib.sha256(data).digest()


async def test_cancellation_removes_the_upload_and_its_bytes(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    data = big_jpeg()
    url = await draft_created(http, len(data))
    assert (await append(http, url, 0, data[:5000], complete=False)).status_code == 201
    assert len(partial_files(settings)) == 1
    refused = await http.delete(url, headers={**DRAFT, "Upload-Offset": "5000"})
    assert refused.status_code == 400  # the draft forbids it on a cancellation
    assert (await http.delete(url, headers=DRAFT)).status_code == 204
    assert partial_files(settings) == []
    assert (await http.head(url, headers=DRAFT)).status_code == 404
    assert (await append(http, url, 5000, data[5000:], complete=True)).status_code == 404
    assert (await http.delete(url, headers=DRAFT)).status_code == 404


async def test_another_owners_upload_is_404(http: httpx.AsyncClient) -> None:
    data = big_jpeg()
    url = await draft_created(http, len(data))
    assert (await append(http, url, 0, data[:5000], complete=False)).status_code == 201
    stranger = bearer("someone-else")
    assert (await http.head(url, headers={**DRAFT, **stranger})).status_code == 404
    trespass = await append(http, url, 5000, data[5000:], True, **stranger)
    assert trespass.status_code == 404
    assert (await http.delete(url, headers={**DRAFT, **stranger})).status_code == 404
    assert (await http.head(url, headers=DRAFT)).headers["upload-offset"] == "5000"


async def test_a_bomb_is_refused_on_its_first_bytes(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    bomb = images.pixel_flood_png() + b"\0" * 300_000
    url = await draft_created(http, len(bomb) * 100)  # announced as a long upload
    response = await append(http, url, 0, bomb, complete=False)
    assert response.status_code == 413, response.text
    assert partial_files(settings) == []
    assert (await http.head(url, headers=DRAFT)).status_code == 404
    assert originals(settings) == []


async def test_a_tus_upload_and_a_draft_upload_coexist(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    tus_data, draft_data = big_jpeg(), images.jpeg(800, 600)
    tus_url = (await create(http, len(tus_data))).headers["location"]
    draft_url = await draft_created(http, len(draft_data))
    assert (await patch(http, tus_url, 0, tus_data[:7000])).status_code == 204
    assert (await append(http, draft_url, 0, draft_data[:3000], False)).status_code == 201
    tus_last = await patch(http, tus_url, 7000, tus_data[7000:])
    draft_last = await append(http, draft_url, 3000, draft_data[3000:], True)
    assert tus_last.status_code == 204 and draft_last.status_code == 201
    assert ticket_of(tus_last) != ticket_of(draft_last)
    digests = {hashlib.sha256(path.read_bytes()).digest() for path in originals(settings)}
    assert digests == {hashlib.sha256(tus_data).digest(), hashlib.sha256(draft_data).digest()}
    assert (await http.head(tus_url, headers=TUS)).headers["upload-offset"] == str(len(tus_data))


@pytest.mark.parametrize(
    "headers",
    [
        {"Upload-Complete": "?0", "Upload-Length": "1000"},  # no interop version
        {"Upload-Draft-Interop-Version": "5", "Upload-Complete": "?0", "Upload-Length": "1000"},
        {**DRAFT, "Upload-Length": "1000"},  # no Upload-Complete
        {**DRAFT, "Upload-Complete": "yes", "Upload-Length": "1000"},
        {**DRAFT, "Upload-Complete": "?0"},  # no length
        {**DRAFT, "Upload-Complete": "?0", "Upload-Length": "1000", "Upload-Offset": "0"},
    ],
    ids=["unversioned", "version-5", "no-complete", "bad-complete", "no-length", "offset"],
)
async def test_a_malformed_creation_is_400(
    http: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    response = await http.post("/resumable/", headers=headers)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/problem+json"


async def test_discovery_and_limits(http: httpx.AsyncClient, settings: Settings) -> None:
    options = await http.options("/resumable/")
    assert options.status_code == 204
    assert options.headers["upload-limit"] == f"max-size={settings.max_upload_bytes}"
    too_big = await draft_create(http, settings.max_upload_bytes + 1)
    assert too_big.status_code == 413
    url = await draft_created(http, 1000)
    wrong_type = await http.patch(
        url, content=b"x", headers={**DRAFT, "Upload-Offset": "0", "Upload-Complete": "?0"}
    )
    assert wrong_type.status_code == 415
    asking = await http.head(url, headers={**DRAFT, "Upload-Offset": "0"})
    assert asking.status_code == 400


async def test_an_upload_begun_with_tus_is_finished_with_the_draft(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    data = big_jpeg()
    upload_id = (await create(http, len(data))).headers["location"].rsplit("/", 1)[1]
    assert (await patch(http, f"/uploads/{upload_id}", 0, data[:7000])).status_code == 204
    url = f"/resumable/{upload_id}"
    assert (await http.head(url, headers=DRAFT)).headers["upload-offset"] == "7000"
    last = await append(http, url, 7000, data[7000:], complete=True)
    assert last.status_code == 201, last.text
    tus_head = await http.head(f"/uploads/{upload_id}", headers=TUS)
    assert ticket_of(tus_head) == ticket_of(last)
    [original] = originals(settings)
    assert hashlib.sha256(original.read_bytes()).digest() == hashlib.sha256(data).digest()
