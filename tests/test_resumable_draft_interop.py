"""An independent client of the IETF resumable upload draft against /resumable/: the page's
vendored tus-js-client 4.3.1 (npm), with ``protocol: 'ietf-draft-05'`` (interop version 6),
in a real Chromium, over real HTTP to a real uvicorn. No network at test time: the library is
the committed `imagepipe/api/static/tus.min.js`."""

from __future__ import annotations

import base64
import hashlib

import httpx
import pytest
from playwright.async_api import Request, async_playwright

from imagepipe.config import Settings
from tests.owners import bearer
from tests.test_browser import CHROMIUM, launch
from tests.test_resumable import big_jpeg, originals

pytestmark = [pytest.mark.browser, pytest.mark.resumable]
CHUNK = 64 * 1024
Sent = tuple[str, dict[str, str]]

UPLOAD = """
async ({data, auth, chunk}) => {
  const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
  const file = new Blob([bytes], {type: "image/jpeg"});
  return await new Promise((resolve, reject) => {
    const upload = new tus.Upload(file, {
      endpoint: location.origin + "/resumable/",
      protocol: "ietf-draft-05",
      chunkSize: chunk,
      retryDelays: [],
      headers: {Authorization: auth},
      onSuccess: ({lastResponse}) => resolve(lastResponse.getHeader("Link")),
      onError: (error) => reject(String(error)),
    });
    upload.start();
  });
}
"""


async def upload_in_chromium(api_url: str, data: bytes) -> tuple[str, list[Sent]]:
    """tus-js-client uploads ``data`` from a page on the API's origin: the last answer's Link,
    and the method and headers of each request it sent to /resumable/."""
    sent: list[Request] = []
    async with async_playwright() as driver:
        browser = await launch(driver, CHROMIUM)
        try:
            page = await browser.new_page(base_url=api_url)
            page.on("request", lambda request: sent.append(request))
            await page.goto("/")
            await page.wait_for_function("typeof tus !== 'undefined'")
            args = {
                "data": base64.b64encode(data).decode(),
                "auth": bearer()["Authorization"],
                "chunk": CHUNK,
            }
            link = await page.evaluate(UPLOAD, args)
            drafts = [(r.method, await r.all_headers()) for r in sent if "/resumable/" in r.url]
        finally:
            await browser.close()
    return link, drafts


async def test_tus_js_client_speaks_the_draft_to_us(
    http: httpx.AsyncClient, api_url: str, settings: Settings
) -> None:
    data = big_jpeg()
    link, drafts = await upload_in_chromium(api_url, data)
    assert link.startswith("</tickets/") and link.endswith('>; rel="ticket"'), link
    methods = [method for method, _ in drafts]
    assert methods[0] == "POST" and methods.count("PATCH") == -(-len(data) // CHUNK)
    for _, headers in drafts:
        assert headers["upload-draft-interop-version"] == "6"
        assert "tus-resumable" not in headers
    patches = [headers for method, headers in drafts if method == "PATCH"]
    assert {h["content-type"] for h in patches} == {"application/partial-upload"}
    assert [h["upload-complete"] for h in patches][-2:] == ["?0", "?1"]
    ticket = (await http.get(link[1 : link.index(">")])).json()
    [original] = originals(settings)
    assert original.name.startswith(ticket["photo_id"] + ".")
    assert hashlib.sha256(original.read_bytes()).digest() == hashlib.sha256(data).digest()
