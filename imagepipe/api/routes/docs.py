"""Interactive API docs, in development only: Swagger UI and ReDoc load their code from a CDN.

Production serves neither (`/openapi.json` stays). Here each page carries a policy naming
exactly what it loads, instead of the strict default HTML policy (`api.edges`).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse

router = APIRouter(include_in_schema=False)
DOCS_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'unsafe-inline' https://cdn.jsdelivr.net",  # the bundles and their boot
        "style-src 'unsafe-inline' https://cdn.jsdelivr.net https://fonts.googleapis.com",
        "font-src https://fonts.gstatic.com",
        "img-src 'self' data: https://fastapi.tiangolo.com",
        "connect-src 'self'",  # the schema
        "worker-src blob:",  # ReDoc's search
        "frame-ancestors 'none'",
    ]
)


def _with_policy(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = DOCS_POLICY
    return page


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    """Swagger UI over this API's schema."""
    schema = str(request.app.openapi_url)
    return _with_policy(get_swagger_ui_html(openapi_url=schema, title="imagepipe - Swagger UI"))


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    """ReDoc over this API's schema."""
    schema = str(request.app.openapi_url)
    return _with_policy(get_redoc_html(openapi_url=schema, title="imagepipe - ReDoc"))
