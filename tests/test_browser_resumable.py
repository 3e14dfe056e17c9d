"""Resumable uploads from the page, in a real Chromium: tus-js-client (vendored, as the page
ships it) against our tus server, over real HTTP to a real uvicorn.

A file above the page's threshold (1 MiB here, 8 MiB by default) goes to /uploads/ in PATCHes
of 1 MiB. A link cut in the middle of a PATCH is retried from the offset HEAD reports; a
reload in the middle of an upload, and the same file chosen again, goes on from the server's
offset (the upload URL was kept in localStorage), not from 0. Either way: one photo, the
right bytes. No worker runs here: an accepted upload's card stops at "queued".
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, Request, Route, async_playwright, expect
from redis.asyncio import Redis

from imagepipe import keys
from imagepipe.config import Settings
from tests.conftest import CALLBACK_SECRET, free_port
from tests.owners import GRANT_SECRET, bearer
from tests.stack import api_server
from tests.test_browser import CHROMIUM, Stack, Tab, launch, new_tab, owner_of
from tests.test_client_resumable import noise_png
from tests.test_resumable_faults import CuttingProxy

pytestmark = [pytest.mark.browser, pytest.mark.resumable]
MIB = 1024 * 1024
ACCEPTED_MS = 60_000  # six 1 MiB PATCHes on a busy 2-core machine, with a retry


@pytest.fixture(scope="module")
async def stack(
    tmp_path_factory: pytest.TempPathFactory,
    valkey_url: str,
    module_database: str,
    s3_endpoint: str,
) -> AsyncIterator[Stack]:
    """The API alone (no worker), sending files over 1 MiB resumably, 1 MiB a PATCH."""
    port = free_port()
    settings = Settings.model_validate(
        {
            "data_dir": tmp_path_factory.mktemp("browser-tus") / "storage",
            "port": port,
            "callback_url": f"http://127.0.0.1:{port}/internal/callbacks",
            "redis_url": valkey_url,
            "database_url": module_database,
            "backup_s3_endpoint": s3_endpoint,
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "callback_secret": CALLBACK_SECRET,
            "grant_secret": GRANT_SECRET,
            "page_resumable_above_bytes": MIB,
            "page_chunk_bytes": MIB,
        }
    )
    redis: Redis = Redis.from_url(valkey_url)
    await redis.flushall()
    with api_server(settings) as url:
        yield Stack(url, settings, redis)
    await redis.aclose()


@pytest.fixture(scope="module")
async def browser(stack: Stack) -> AsyncIterator[Browser]:
    async with async_playwright() as driver:
        yield await launch(driver, CHROMIUM)


@pytest.fixture
async def tab(browser: Browser, stack: Stack) -> AsyncIterator[Tab]:
    async with new_tab(browser, stack) as tab:
        yield tab


@pytest.fixture(scope="module")
def big_photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real PNG of about 5.5 MB: six PATCHes."""
    path = tmp_path_factory.mktemp("photos") / "harbour.png"
    path.write_bytes(noise_png(5 * MIB + MIB // 2))
    return path


def contents(path: Path) -> bytes:
    return path.read_bytes()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def newest_original(stack: Stack, before: set[Path]) -> bytes:
    """The one original accepted since ``before``."""
    [added] = set((stack.settings.primary_root / keys.ORIGINALS).glob("*")) - before
    return added.read_bytes()


def originals(stack: Stack) -> set[Path]:
    return set((stack.settings.primary_root / keys.ORIGINALS).glob("*"))


async def offsets(requests: list[Request]) -> list[int]:
    """Upload-Offset of each PATCH among ``requests``, in order."""
    patches = [r for r in requests if r.method == "PATCH"]
    return [int((await r.all_headers())["upload-offset"]) for r in patches]


async def accepted(tab: Tab) -> str:
    """Wait for the card's upload to be accepted (queued: no worker runs); its ticket id."""
    card = tab.page.locator("#uploads .card")
    await expect(card).to_have_attribute("data-state", "queued", timeout=ACCEPTED_MS)
    await expect(card.locator("progress")).to_have_js_property("value", 100)
    ticket_id = await card.get_attribute("data-ticket")
    assert ticket_id
    return ticket_id


def only_dropped_links(errors: list[str]) -> list[str]:
    """Console errors other than Chromium's note of a request the test cut or cancelled."""
    return [e for e in errors if "Failed to load resource" not in e]


async def test_tus_js_client_in_chromium_resumes_after_a_link_cut_mid_patch(
    tab: Tab, stack: Stack, big_photo: Path
) -> None:
    data = contents(big_photo)
    port = int(stack.url.rsplit(":", 1)[1])
    proxy = CuttingProxy([port], [2 * MIB + MIB // 2])  # in the third PATCH's body
    before = originals(stack)
    via = await proxy.start()
    try:
        await tab.page.goto(f"{via}/")
        await tab.page.set_input_files("#file-input", [big_photo])
        ticket_id = await accepted(tab)
    finally:
        await proxy.stop()
    uploads = [r for r in tab.requests if "/uploads/" in r.url]
    assert proxy.cuts == [], "the link was cut"
    assert len([r for r in uploads if r.method == "POST"]) == 1  # one upload, never restarted
    assert [r for r in uploads if r.method == "HEAD"], "the offset was asked for after the cut"
    sent = await offsets(uploads)
    assert sent[:3] == [0, MIB, 2 * MIB] and sent[3] >= 2 * MIB, sent  # on from the server's
    assert sent == sorted(sent), sent  # never back to 0
    for request in uploads:  # tus 1.0, with the grant in a header (never in a URL)
        headers = await request.all_headers()
        assert headers["tus-resumable"] == "1.0.0"
        assert headers["authorization"].startswith("Bearer ey") and "eyJ" not in request.url
    assert proxy.sent < 1.5 * len(data), (proxy.sent, len(data))
    assert sha256(newest_original(stack, before)) == sha256(data)  # one photo, its bytes
    assert await owner_of(stack, ticket_id) == "tester"
    assert only_dropped_links(tab.errors) == []


async def test_a_reload_mid_upload_resumes_from_the_server_offset(
    tab: Tab, stack: Stack, big_photo: Path
) -> None:
    data, page = contents(big_photo), tab.page
    held, release = asyncio.Event(), asyncio.Event()
    patches: list[str] = []

    async def hold_the_third_patch(route: Route) -> None:
        if route.request.method != "PATCH":
            await route.continue_()
            return
        patches.append(route.request.url)
        if len(patches) != 3:
            await route.continue_()
            return
        held.set()  # the third chunk never reaches the server: the page is reloaded meanwhile
        await release.wait()
        with contextlib.suppress(Exception):  # its page is gone: nothing left to answer
            await route.abort()

    before = originals(stack)
    await page.route("**/uploads/*", hold_the_third_patch)
    await page.goto("/")
    await page.set_input_files("#file-input", [big_photo])
    await asyncio.wait_for(held.wait(), ACCEPTED_MS / 1000)
    upload_url = patches[0]
    async with httpx.AsyncClient(headers={**bearer(), "Tus-Resumable": "1.0.0"}) as http:
        server_offset = int((await http.head(upload_url)).headers["upload-offset"])
    assert server_offset == 2 * MIB  # two chunks acknowledged before the reload
    seen = len(tab.requests)
    await page.reload()
    release.set()
    await expect(page.locator("#resume-hint")).to_contain_text(big_photo.name)
    await page.set_input_files("#file-input", [big_photo])  # the same file, chosen again
    await accepted(tab)
    card = page.locator("#uploads .card")
    await expect(card).to_have_attribute("data-resumed-from", str(server_offset))
    again = [r for r in tab.requests[seen:] if "/uploads/" in r.url]
    assert [r.method for r in again if r.method != "PATCH"] == ["HEAD"]  # no second creation
    assert {r.url for r in again} == {upload_url}
    assert (await offsets(again))[0] == server_offset, "resumed from the server's offset, not 0"
    assert sha256(newest_original(stack, before)) == sha256(data)
    assert await page.evaluate("Object.keys(localStorage).filter(k => k.startsWith('tus::'))") == []
    assert only_dropped_links(tab.errors) == []


async def test_a_refused_large_file_says_why_and_leaves_nothing_to_resume(
    tab: Tab, stack: Stack, tmp_path: Path
) -> None:
    fake = tmp_path / "scan.png"  # a photo's name, not a photo's bytes: the server judges
    fake.write_bytes(b"not an image at all\n" * (MIB // 10))
    before = originals(stack)
    await tab.page.goto("/")
    await tab.page.set_input_files("#file-input", [fake])
    card = tab.page.locator("#uploads .card")
    await expect(card).to_have_attribute("data-state", "refused", timeout=ACCEPTED_MS)
    await expect(card).to_contain_text("Not an image in an accepted format")
    assert tab.sent("POST", r"/uploads/$") and not tab.sent("POST", r"/photos$")  # through tus
    stored = "Object.keys(localStorage).filter(k => k.startsWith('tus::'))"
    assert await tab.page.evaluate(stored) == []  # nothing left to resume
    await expect(tab.page.locator("#resume-hint")).to_be_hidden()
    assert originals(stack) == before
