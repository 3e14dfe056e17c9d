"""The upload page in a real Chromium, against a running stack.

Playwright drives Debian's ``/usr/bin/chromium`` (no browser download: none would work here);
`make test` installs it when missing and run as root, and elsewhere the suite skips.
The stack is real: the API over HTTP (uvicorn in a thread), and the worker and replicator as
separate processes, as an operator runs them; tickets really complete and really get backed
up. One stack serves the whole module, so checks on the server side count what a test adds.

The API runs under production rules, so the page needs a grant: most tests get the page's
HTML with a grant in its ``<meta name="imagepipe-grant">``, as a web tier serving that HTML
would send it; the embedding tests frame the page from a web tier (`examples/webtier`, or a
stand-in) that hands it grants by ``postMessage``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import pytest
from playwright.async_api import Browser, Page, Playwright, Request, Route, async_playwright, expect
from redis.asyncio import Redis
from starlette import routing
from starlette.applications import Starlette
from starlette.responses import HTMLResponse

from examples.webtier.app import create_app as webtier_app
from imagepipe import keys
from imagepipe.config import Settings
from imagepipe.grants import mint
from imagepipe.models import Ticket
from imagepipe.stack.processes import RoleProcess
from imagepipe.stack.roles import role_argv, role_env
from tests import images
from tests.conftest import CALLBACK_SECRET, free_port, unavailable
from tests.owners import GRANT_SECRET, grant
from tests.proxies import Proxy
from tests.stack import api_server, serving
from tests.test_e2e import stop_all

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
if not CHROMIUM.exists():
    unavailable(
        f"the browser tests need {CHROMIUM}: `apt-get install chromium` as root "
        "(`make test` does that when run as root, as CI does)"
    )
MAX_BYTES = 3 * 1024 * 1024  # small, so an oversized file is quick to make
DONE_MS = 30_000  # resize + callback + backup on a busy 2-core machine
POLLS = re.compile(r"/tickets(\?ids=|/[^/?]+$)")  # ticket polls, not event streams
WEBTIER_PORT = free_port()  # the web tier that may frame the page (examples/webtier)
WEBTIER = f"http://127.0.0.1:{WEBTIER_PORT}"
THE_PAGE = re.compile(r"^http://127\.0\.0\.1:\d+/$")


@dataclass
class Stack:
    """The running stack, and what the server side holds."""

    url: str
    settings: Settings
    redis: Redis

    def originals(self) -> int:
        """Originals on primary storage: one per photo ever accepted."""
        folder = self.settings.primary_root / keys.ORIGINALS
        return len(list(folder.iterdir())) if folder.exists() else 0

    async def tickets(self) -> int:
        """Tickets in Redis."""
        return len(await self.redis.keys(keys.ticket("*")))


@pytest.fixture(scope="module")
def stack_settings(
    tmp_path_factory: pytest.TempPathFactory,
    valkey_url: str,
    module_database: str,
    s3_endpoint: str,
) -> Settings:
    """Settings for the module's stack: its own data dir, port and backup bucket."""
    bucket = "browser-tests"
    boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    ).create_bucket(Bucket=bucket)
    port = free_port()
    return Settings.model_validate(
        {
            "data_dir": tmp_path_factory.mktemp("browser") / "storage",
            "port": port,
            "callback_url": f"http://127.0.0.1:{port}/internal/callbacks",
            "redis_url": valkey_url,
            "database_url": module_database,
            "backup_s3_endpoint": s3_endpoint,
            "backup_s3_bucket": bucket,
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "callback_secret": CALLBACK_SECRET,
            "grant_secret": GRANT_SECRET,
            "max_upload_bytes": MAX_BYTES,
            "page_embed_origins": [WEBTIER],
        }
    )


@pytest.fixture(scope="module")
def roles(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, RoleProcess]]:
    """The worker and the replicator as real processes (stopped, and checked, afterwards)."""
    logs = tmp_path_factory.mktemp("browser-logs")
    env = role_env(stack.settings, IMAGEPIPE_WORKER_CONCURRENCY="2")
    procs = {
        name: RoleProcess(name, role_argv(name), env, logs / f"{name}.log").start()
        for name in ("worker", "replicator")
    }
    try:
        yield procs
    finally:
        stop_all(procs)


@pytest.fixture(scope="module")
async def stack(stack_settings: Settings, valkey_url: str) -> AsyncIterator[Stack]:
    """A flushed Valkey, then the API on it."""
    redis: Redis = Redis.from_url(valkey_url)
    await redis.flushall()
    with api_server(stack_settings) as url:
        yield Stack(url, stack_settings, redis)
    await redis.aclose()


@pytest.fixture(scope="module")
def chromium() -> Path:
    """Debian's Chromium (the module is skipped, in one line, where it is missing)."""
    return CHROMIUM


@pytest.fixture(scope="module")
async def browser(chromium: Path, stack: Stack, roles: object) -> AsyncIterator[Browser]:
    """One headless Chromium for the module."""
    async with async_playwright() as driver:
        yield await launch(driver, chromium)


async def launch(driver: Playwright, chromium: Path) -> Browser:
    """Chromium with nothing that reaches the network on its own."""
    return await driver.chromium.launch(
        executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS
    )


@dataclass
class Tab:
    """A page on the stack, with what it logged and requested."""

    page: Page
    errors: list[str] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)

    def sent(self, method: str, pattern: re.Pattern[str] | str) -> list[Request]:
        """Requests made so far with this method whose URL matches."""
        return [r for r in self.requests if r.method == method and re.search(pattern, r.url)]


async def with_a_grant(route: Route) -> None:
    """The page's HTML as a web tier serving it would send it: with the grant of its user."""
    answer = await route.fetch()
    body = await answer.text()
    if "/static/app.js" not in body:  # not imagepipe's page
        await route.fulfill(response=answer)
        return
    meta = f'<meta name="imagepipe-grant" content="{grant()}">\n</head>'
    await route.fulfill(response=answer, body=body.replace("</head>", meta, 1))


@contextlib.asynccontextmanager
async def new_tab(browser: Browser, stack: Stack, granted: bool = True) -> AsyncIterator[Tab]:
    """A fresh browser context on the page's origin, console errors collected."""
    context = await browser.new_context(base_url=stack.url, viewport={"width": 1280, "height": 900})
    if granted:
        await context.route(THE_PAGE, with_a_grant)
    page = await context.new_page()
    tab = Tab(page)
    page.on("console", lambda m: tab.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: tab.errors.append(str(exc)))
    context.on("request", lambda r: tab.requests.append(r))
    yield tab
    await context.close()


@pytest.fixture
async def tab(browser: Browser, stack: Stack) -> AsyncIterator[Tab]:
    """A page that got its grant from the web tier serving its HTML."""
    async with new_tab(browser, stack) as tab:
        yield tab


def photo_files(folder: Path) -> list[Path]:
    """Three real photos: from $IMAGEPIPE_CORPUS when it has them, else made here."""
    corpus = os.environ.get("IMAGEPIPE_CORPUS")
    found = sorted(Path(corpus).glob("Landscape_[1-3].jpg")) if corpus else []
    if len(found) == 3:
        return found
    made = {
        "meadow.jpg": images.jpeg(1600, 1200),
        "harbour.webp": images.webp(1200, 800),
        "tower.jpg": images.jpeg(900, 1200, orientation=6),
    }
    for name, data in made.items():
        (folder / name).write_bytes(data)
    return [folder / name for name in made]


async def eventually(check: Callable[[], bool], timeout_s: float = 10) -> None:
    """Wait until ``check()`` holds."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.05)


async def open_page(tab: Tab) -> None:
    """Load the page and wait until it knows the server's limits."""
    await tab.page.goto("/")
    await expect(tab.page.locator("#limits")).to_contain_text("up to 3 MB")


async def wait_completed(tab: Tab, count: int) -> None:
    """Every card completed (and the expected number of them)."""
    cards = tab.page.locator("#uploads .card")
    await expect(cards).to_have_count(count)
    for i in range(count):
        await expect(cards.nth(i)).to_have_attribute("data-state", "completed", timeout=DONE_MS)


async def test_three_photos_upload_complete_and_get_backed_up(
    tab: Tab, stack: Stack, tmp_path: Path
) -> None:
    page = tab.page
    await open_page(tab)
    before = stack.originals()
    await page.set_input_files("#file-input", photo_files(tmp_path))
    await wait_completed(tab, 3)
    cards = page.locator("#uploads .card")
    for i in range(3):
        await expect(cards.nth(i).locator("progress")).to_have_js_property("value", 100)
        await expect(cards.nth(i).locator(".backup")).to_be_visible(timeout=DONE_MS)
    thumbs = page.locator("#uploads .thumb")
    await expect(thumbs).to_have_count(3)
    for i in range(3):
        await expect(thumbs.nth(i)).to_have_js_property("complete", True)
        assert await thumbs.nth(i).evaluate("img => img.naturalWidth") > 0
    for photo_id in await cards.evaluate_all("cards => cards.map(c => c.dataset.photo)"):
        await expect(page.locator(f'#gallery li[data-photo="{photo_id}"]')).to_have_count(1)
    assert stack.originals() == before + 3
    assert tab.errors == []
    await page.screenshot(path=tmp_path / "upload-page.png", full_page=True)
    assert (tmp_path / "upload-page.png").stat().st_size > 10_000


async def test_sse_delivers_the_completion(tab: Tab, tmp_path: Path) -> None:
    # polls answer nothing at all: a completed card can only have heard it from the stream
    await tab.page.route(POLLS, lambda route: route.abort())
    await open_page(tab)
    await tab.page.set_input_files("#file-input", photo_files(tmp_path)[:1])
    await wait_completed(tab, 1)
    assert tab.sent("GET", r"/tickets/[^/]+/events$")


async def test_the_card_shows_the_photo_upright_and_formats_by_name(
    tab: Tab, tmp_path: Path
) -> None:
    portrait = tmp_path / "portrait.jpg"
    portrait.write_bytes(images.jpeg(2400, 1800, orientation=6))  # larger than the largest size
    await open_page(tab)
    await expect(tab.page.locator("#limits")).to_contain_text("WebP")
    await expect(tab.page.locator("#limits")).not_to_contain_text("WEBP")
    await tab.page.set_input_files("#file-input", [portrait])
    await wait_completed(tab, 1)
    await expect(tab.page.locator("#uploads .card")).to_contain_text("1800 × 2400 px")
    assert tab.errors == []


@contextmanager
def paused(*procs: RoleProcess) -> Iterator[None]:
    """SIGSTOP roles for the block: tickets (and backups) hold still until they resume."""
    for proc in procs:
        proc.pause()
    try:
        yield
    finally:
        for proc in procs:
            proc.resume()


async def test_polling_completes_when_streams_are_blocked(
    tab: Tab, roles: dict[str, RoleProcess], tmp_path: Path
) -> None:
    polls: list[tuple[float, int]] = []

    async def ask_for_a_longer_wait(route: Route) -> None:
        answer = await route.fetch()
        headers = {**answer.headers, **({} if polls else {"retry-after": "2"})}
        polls.append((time.monotonic(), answer.status))
        await route.fulfill(response=answer, headers=headers)

    await tab.page.route("**/events", lambda route: route.abort())
    await tab.page.route(POLLS, ask_for_a_longer_wait)
    await open_page(tab)
    with paused(roles["worker"], roles["replicator"]):
        await tab.page.set_input_files("#file-input", photo_files(tmp_path)[:2])
        await expect(tab.page.locator('#uploads .card[data-state="queued"]')).to_have_count(2)
        await eventually(lambda: len(polls) > 1)
    await wait_completed(tab, 2)
    await expect(tab.page.locator("#uploads .backup").nth(1)).to_be_visible(timeout=DONE_MS)
    assert polls[1][0] - polls[0][0] >= 1.9, "the page waits as long as Retry-After says"
    assert polls[1][1] == 304, "nothing changed: the ETag saved a body"
    assert all("?ids=" in r.url for r in tab.sent("GET", POLLS)), "two tickets, one batch poll"


async def test_a_photo_the_worker_cannot_read_fails_in_plain_words(
    tab: Tab, tmp_path: Path
) -> None:
    broken = tmp_path / "cut-short.jpg"
    broken.write_bytes(images.truncated(images.jpeg(1600, 1200), 0.4))  # a header, half a body
    await open_page(tab)
    await tab.page.set_input_files("#file-input", [broken])
    card = tab.page.locator("#uploads .card")
    await expect(card).to_have_attribute("data-state", "failed", timeout=DONE_MS)
    await expect(card).to_contain_text("damaged or incomplete")
    await expect(card.locator(".detail")).to_have_attribute("title", re.compile("decodable"))


async def test_refused_files_say_why_and_make_no_ticket(
    tab: Tab, stack: Stack, tmp_path: Path
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo")
    huge = tmp_path / "huge.jpg"
    huge.write_bytes(images.jpeg(64, 64) + bytes(MAX_BYTES))
    tickets, originals = await stack.tickets(), stack.originals()
    await open_page(tab)
    await tab.page.set_input_files("#file-input", [notes, huge])
    cards = tab.page.locator("#uploads .card")
    await expect(cards.nth(0)).to_have_attribute("data-state", "refused")
    await expect(cards.nth(0)).to_contain_text("Not a photo we accept")
    await expect(cards.nth(1)).to_have_attribute("data-state", "refused")
    await expect(cards.nth(1)).to_contain_text("Too large")
    assert tab.sent("POST", "/photos$") == []  # refused before anything was sent
    assert tab.errors == []
    assert (await stack.tickets(), stack.originals()) == (tickets, originals)


async def test_the_server_judges_what_the_page_lets_through(
    tab: Tab, stack: Stack, tmp_path: Path
) -> None:
    fake = tmp_path / "fake.jpg"
    fake.write_text("text in a photo's name")
    huge = tmp_path / "huge.jpg"
    huge.write_bytes(images.jpeg(64, 64) + bytes(MAX_BYTES))
    await tab.page.route("**/ui/config", lambda route: route.fulfill(json=LAX_CONFIG))
    tickets, originals = await stack.tickets(), stack.originals()
    await tab.page.goto("/")
    await expect(tab.page.locator("#limits")).to_contain_text("1024 GB")
    await tab.page.unroute("**/ui/config")
    await tab.page.set_input_files("#file-input", [fake, huge])
    cards = tab.page.locator("#uploads .card")
    await expect(cards.nth(0)).to_have_attribute("data-state", "refused")
    await expect(cards.nth(0)).to_contain_text("Not an image in an accepted format")
    await expect(cards.nth(0)).to_contain_text("WebP")  # the server's labels, as the page's
    await expect(cards.nth(1)).to_have_attribute("data-state", "refused")
    await expect(cards.nth(1)).to_contain_text("larger than 3 MB")
    assert len(tab.sent("POST", "/photos$")) == 2
    assert (await stack.tickets(), stack.originals()) == (tickets, originals)


LAX_CONFIG = {
    "max_upload_bytes": 1 << 40,
    "max_pixels": 1 << 40,
    "formats": ["JPEG"],
    "media_types": ["image/jpeg", "text/plain"],
    "extensions": [".jpg"],
    "sizes": [],
}


class FlakyLink(Proxy):
    """A TCP proxy in front of the API that breaks the answer to the first upload.

    The server receives the whole upload and answers it; the browser sees the connection die
    in the middle of that answer (after its first bytes, so Chromium cannot quietly resend).
    """

    def __init__(self, upstream: str) -> None:
        super().__init__()
        self.upstream_port = int(upstream.rsplit(":", 1)[1])
        self.armed = True

    async def relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self.writers |= {writer, up_writer}
        uploading = asyncio.Event()
        pipes = [
            asyncio.create_task(self._up(reader, up_writer, uploading)),
            asyncio.create_task(self._down(up_reader, writer, uploading)),
        ]
        # one side has closed: close the other too, as a plain TCP proxy would
        await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        for each in (writer, up_writer):
            each.transport.abort()
        await asyncio.gather(*pipes, return_exceptions=True)
        self.writers -= {writer, up_writer}

    async def _up(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, uploading: asyncio.Event
    ) -> None:
        while data := await reader.read(1 << 16):
            if data.startswith(b"POST /photos "):
                uploading.set()
            writer.write(data)
            await writer.drain()

    async def _down(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, uploading: asyncio.Event
    ) -> None:
        while data := await reader.read(1 << 16):
            if uploading.is_set() and self.armed:
                self.armed = False
                # the status and headers, then the connection dies mid-body
                writer.write(data[: data.find(b"\r\n\r\n") + 10])
                await writer.drain()
                writer.transport.abort()
                return
            writer.write(data)
            await writer.drain()


@pytest.fixture
async def flaky_url(stack: Stack) -> AsyncIterator[str]:
    """The API behind a link that drops the first upload's answer."""
    link = FlakyLink(stack.url)
    yield await link.start()
    await link.stop()


async def test_a_retry_after_a_network_failure_reuses_the_key(
    tab: Tab, stack: Stack, flaky_url: str, tmp_path: Path
) -> None:
    originals = stack.originals()
    await tab.page.goto(f"{flaky_url}/")
    await tab.page.set_input_files("#file-input", photo_files(tmp_path)[:1])
    card = tab.page.locator("#uploads .card")
    await expect(card).to_have_attribute("data-state", "error")
    assert stack.originals() == originals + 1  # the server has it; the browser cannot know
    await card.get_by_role("button", name=re.compile("Retry upload")).click()
    await wait_completed(tab, 1)
    sent = [await r.header_value("idempotency-key") for r in tab.sent("POST", "/photos$")]
    assert len(sent) == 2 and sent[0] == sent[1] and sent[0]
    assert stack.originals() == originals + 1  # one photo, not two


async def test_the_page_works_by_keyboard_and_at_phone_width(tab: Tab) -> None:
    page = tab.page
    await page.set_viewport_size({"width": 390, "height": 844})
    await open_page(tab)
    for focused in (".skip-link", "#file-input", "#folder-input"):
        await page.keyboard.press("Tab")
        await expect(page.locator(focused)).to_be_focused()
    assert await page.evaluate("document.documentElement.scrollWidth") <= 390
    assert tab.errors == []


def no_grant_in_any_url(tab: Tab) -> None:
    """A JWT starts with ``eyJ`` (``{"`` in base64): none may reach a URL (logs, Referer)."""
    assert tab.requests and not [r.url for r in tab.requests if "eyJ" in r.url]


async def owner_of(stack: Stack, ticket_id: str) -> str:
    """Whose photo the ticket's upload is, as the server recorded it."""
    raw = await stack.redis.get(keys.ticket(ticket_id))
    assert raw is not None
    return Ticket.model_validate_json(raw).owner


async def test_an_embedding_web_tier_hands_the_page_its_grant(
    browser: Browser, stack: Stack, tmp_path: Path
) -> None:
    with serving(webtier_app(stack.url, GRANT_SECRET), WEBTIER_PORT):
        async with new_tab(browser, stack, granted=False) as tab:
            page = tab.page
            # the toy web tier has no icon: a 404 for it would be the only console error
            await page.route(f"{WEBTIER}/favicon.ico", lambda route: route.fulfill(status=204))
            await page.goto(WEBTIER)
            await page.get_by_placeholder("user").fill("alice")
            await page.get_by_placeholder("password").fill("wonderland")
            await page.get_by_role("button", name="Sign in").click()
            framed = page.frame_locator("#photos")
            await expect(framed.locator("#limits")).to_contain_text("up to 3 MB")
            await framed.locator("#file-input").set_input_files(photo_files(tmp_path)[:1])
            card = framed.locator("#uploads .card")
            await expect(card).to_have_attribute("data-state", "completed", timeout=DONE_MS)
            await expect(card.locator(".thumb")).to_have_js_property("complete", True)
            ticket_id = await card.get_attribute("data-ticket")
            assert ticket_id and await owner_of(stack, ticket_id) == "alice"
            posted = tab.sent("POST", f"^{stack.url}/photos$")
            assert len(posted) == 1
            assert (await posted[0].header_value("authorization") or "").startswith("Bearer ey")
            no_grant_in_any_url(tab)
            assert tab.errors == []


def stand_in_web_tier(stack: Stack, grants: list[str]) -> Starlette:
    """A web tier framing imagepipe's page that answers each ask with the next of ``grants``
    (served for real: Chromium lets only a page from a local address frame a local one)."""
    page = HTMLResponse(f"""<!doctype html><title>web tier</title>
<iframe id="photos" src="{stack.url}/" width="1200" height="800"></iframe>
<script>
  window.grants = {grants!r};
  window.asks = 0;
  window.addEventListener("message", (event) => {{
    if (event.data?.type !== "imagepipe:grant-needed") return;
    const grant = window.grants[Math.min(window.asks++, window.grants.length - 1)];
    event.source.postMessage({{ type: "imagepipe:grant", grant }}, event.origin);
  }});
</script>""")
    return Starlette(routes=[routing.Route("/", lambda request: page)])


async def test_a_refused_grant_is_renewed_by_the_embedding_page(
    browser: Browser, stack: Stack, tmp_path: Path
) -> None:
    forged = mint("a-secret-imagepipe-does-not-know-of-32-chars", "mallory")
    host = stand_in_web_tier(stack, [forged, grant("carol")])
    with serving(host, WEBTIER_PORT):
        async with new_tab(browser, stack, granted=False) as tab:
            refusals: list[str] = []
            tab.page.on("response", lambda r: refusals.append(r.url) if r.status == 401 else None)
            await tab.page.goto(f"{WEBTIER}/")
            framed = tab.page.frame_locator("#photos")
            status = framed.locator("#gallery-status")
            await expect(status).not_to_have_text("Loading…")  # the gallery asked, and got it
            await expect(status).not_to_contain_text("could not be loaded")
            await framed.locator("#file-input").set_input_files(photo_files(tmp_path)[:1])
            card = framed.locator("#uploads .card")
            await expect(card).to_have_attribute("data-state", "completed", timeout=DONE_MS)
            ticket_id = await card.get_attribute("data-ticket")
            assert ticket_id and await owner_of(stack, ticket_id) == "carol"
            assert refusals, "the forged grant was tried and refused"
            assert (
                await tab.page.evaluate("window.asks") == 2
            )  # asked once, and once more after a 401
            await expect(framed.locator("#grant-status")).to_be_hidden()
            no_grant_in_any_url(tab)


async def test_without_a_grant_the_page_says_what_to_do(
    browser: Browser, stack: Stack, tmp_path: Path
) -> None:
    originals = stack.originals()
    async with new_tab(browser, stack, granted=False) as tab:
        await open_page(tab)
        await tab.page.set_input_files("#file-input", photo_files(tmp_path)[:1])
        card = tab.page.locator("#uploads .card")
        await expect(card).to_have_attribute("data-state", "error")
        await expect(card).to_contain_text("Not signed in")
        notice = tab.page.locator("#grant-status")
        await expect(notice).to_be_visible()
        await expect(notice).to_contain_text("needs you to be signed in")
    assert stack.originals() == originals


async def test_in_development_the_page_needs_no_grant(
    browser: Browser, stack: Stack, tmp_path: Path
) -> None:
    """`imagepipe dev`: a request without a grant is the owner `local` (no meta, no frame)."""
    port = free_port()
    dev = stack.settings.model_copy(update={"environment": "development", "port": port})
    with api_server(dev) as url:
        async with new_tab(browser, Stack(url, dev, stack.redis), granted=False) as tab:
            await open_page(tab)
            await tab.page.set_input_files("#file-input", photo_files(tmp_path)[:1])
            await wait_completed(tab, 1)
            ticket_id = await tab.page.locator("#uploads .card").get_attribute("data-ticket")
            assert ticket_id and await owner_of(stack, ticket_id) == "local"
            await expect(tab.page.locator("#grant-status")).to_be_hidden()
            assert tab.errors == []
