"""A toy web tier for imagepipe: it signs people in, mints their grants, embeds the page.

imagepipe keeps no users: the web tier does, and signs a grant (a JWT, HS256) for each
signed-in person with the secret it shares with imagepipe's api. Any JWT library works: the
key is ``IMAGEPIPE_GRANT_SECRET``'s UTF-8 bytes. The upload page is framed from imagepipe's
origin and asks this page for its grant by ``postMessage``, again whenever it nears its end;
the grant never appears in a URL. Run it (from the repository root) next to an api started
with ``IMAGEPIPE_PAGE_EMBED_ORIGINS=http://127.0.0.1:8080``:

    IMAGEPIPE_URL=http://127.0.0.1:8000 IMAGEPIPE_GRANT_SECRET=... \\
        uvicorn --factory examples.webtier.app:from_environment --port 8080
"""

from __future__ import annotations

import html
import os
import secrets
import time

import jwt
from fastapi import FastAPI, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

USERS = {"alice": "wonderland", "bob": "builder"}  # a toy: your real sign-in goes here
GRANT_TTL_S = 600  # short: the page asks for a fresh one as this one nears its end
LOGIN = """<form method="post" action="/login"><h1>Sign in</h1>
<input name="user" placeholder="user" aria-label="user">
<input name="password" type="password" placeholder="password" aria-label="password">
<button>Sign in</button></form>"""
EMBED = """<p>Signed in as {user}.</p>
<iframe id="photos" src="{imagepipe}/" title="Upload photos" width="100%" height="800"></iframe>
<script>
  const imagepipe = new URL(document.getElementById("photos").src).origin;
  window.addEventListener("message", async (event) => {{
    if (event.origin !== imagepipe || event.data?.type !== "imagepipe:grant-needed") return;
    const answer = await fetch("/grant", {{ method: "POST" }});  // our session cookie
    if (!answer.ok) return;  // signed out: the page says so
    const {{ grant }} = await answer.json();
    event.source.postMessage({{ type: "imagepipe:grant", grant }}, imagepipe);
  }});
</script>"""


def mint_grant(secret: str, user: str, ttl_s: int = GRANT_TTL_S) -> str:
    """A grant for ``user``: who they are, what they may do, until when."""
    now = int(time.time())
    claims = {"sub": user, "iat": now, "exp": now + ttl_s, "scope": "photos:write photos:read"}
    return jwt.encode(claims, secret.encode(), algorithm="HS256")


def create_app(imagepipe_url: str, secret: str) -> FastAPI:
    """The web tier, for the api at ``imagepipe_url`` that shares ``secret``."""
    app, sessions = FastAPI(), dict[str, str]()  # session cookie -> user

    def user_of(request: Request) -> str | None:
        return sessions.get(request.cookies.get("session", ""))

    @app.get("/")
    def home(request: Request) -> HTMLResponse:
        user = user_of(request)
        if user is None:
            return HTMLResponse(LOGIN)
        return HTMLResponse(EMBED.format(user=html.escape(user), imagepipe=imagepipe_url))

    @app.post("/login")
    def login(user: str = Form(), password: str = Form()) -> Response:
        if not secrets.compare_digest(USERS.get(user, ""), password):
            return HTMLResponse(LOGIN, status_code=401)
        session = secrets.token_urlsafe(32)
        sessions[session] = user
        page = RedirectResponse("/", status_code=303)
        page.set_cookie("session", session, httponly=True, samesite="strict")
        return page

    @app.post("/grant")
    def grant(request: Request) -> JSONResponse:
        user = user_of(request)
        if user is None:
            return JSONResponse({"detail": "sign in first"}, status_code=401)
        headers = {"Cache-Control": "no-store"}
        return JSONResponse({"grant": mint_grant(secret, user)}, headers=headers)

    return app


def from_environment() -> FastAPI:
    """`uvicorn --factory`: the api's URL and the grant secret from the environment."""
    url = os.environ.get("IMAGEPIPE_URL", "http://127.0.0.1:8000")
    return create_app(url.rstrip("/"), os.environ["IMAGEPIPE_GRANT_SECRET"])
