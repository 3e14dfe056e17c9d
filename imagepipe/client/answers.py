"""What `imagepipe upload` reads from the server's answers: a problem's words, Retry-After."""

from __future__ import annotations

import httpx

RETRY_AFTER_CAP_S = 30.0


def problem(response: httpx.Response) -> str:
    """The problem+json detail (or title), else the start of the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if not isinstance(body, dict):
        return str(body)[:200]
    return str(body.get("detail") or body.get("title") or body)[:200]


def retry_after(response: httpx.Response) -> float | None:
    """Retry-After in seconds (capped), when the server sent a number of them."""
    value = response.headers.get("retry-after", "")
    try:
        return min(max(float(value), 0.0), RETRY_AFTER_CAP_S)
    except ValueError:
        return None
