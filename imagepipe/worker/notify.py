"""The signed callback POST (worker -> web tier): sent at once, else as a retried arq job.

The first try goes out inline, from the job that made the event, so a photo's completion
reaches the web tier without waiting for a queue poll. If that try fails, the event
becomes its own small retried job: a callback that fails is retried with backoff and
jitter without ever redoing the resize that produced it. The webhook-id is fixed when the
event is made, so the web tier can recognise a redelivery and apply the event once.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx
from arq import Retry

from imagepipe import backoff, metrics, queue, webhooks
from imagepipe.models import CallbackEvent, Derivative, EventType, Ticket
from imagepipe.worker.deps import WorkerDeps, deps

log = logging.getLogger(__name__)
RETRYABLE = {408, 425, 429, 500, 502, 503, 504}
MAX_ERROR_CHARS = 500  # a reason for people, never a payload


async def report(
    d: WorkerDeps,
    ticket: Ticket,
    kind: EventType,
    attempt: int,
    *,
    sizes: dict[str, Derivative] | None = None,
    upright: tuple[int, int] | None = None,
    error: str | None = None,
) -> None:
    """Deliver a callback event about this ticket now, or queue it for retried delivery."""
    event = CallbackEvent(
        type=kind,
        ticket_id=ticket.id,
        photo_id=ticket.photo_id,
        attempt=attempt,
        sizes=sizes or {},
        width=upright[0] if upright else None,
        height=upright[1] if upright else None,
        error=error[:MAX_ERROR_CHARS] if error else None,
    )
    webhook_id = f"{ticket.id}.{kind}.{attempt}"
    body = event.model_dump_json()
    outcome, _ = await _post(d, webhook_id, body)
    if outcome == "retry":  # the web tier is away or busy: the job keeps trying
        await queue.enqueue_callback(d.redis, webhook_id, body)


async def send_callback(ctx: dict[str, Any], webhook_id: str, body: str) -> str:
    """arq job: POST one signed event; retry transient failures, drop permanent refusals."""
    d, attempt = deps(ctx), ctx["job_try"]
    outcome, reason = await _post(d, webhook_id, body)
    return _retry_or_give_up(d, attempt, webhook_id, reason) if outcome == "retry" else outcome


async def _post(d: WorkerDeps, webhook_id: str, body: str) -> tuple[str, str]:
    """One signed POST: ("delivered" | "refused N" | "retry", why)."""
    settings = d.settings
    payload = body.encode()
    # signed at each attempt: the timestamp must be fresh even after a long outage
    headers = webhooks.sign(settings.callback_secret.get_secret_value(), webhook_id, payload)
    headers["content-type"] = "application/json"
    try:
        response = await d.http.post(settings.callback_url, content=payload, headers=headers)
    except httpx.HTTPError as exc:
        metrics.CALLBACK_ATTEMPTS.labels("network_error").inc()
        return "retry", f"{type(exc).__name__}: {exc}"
    metrics.CALLBACK_ATTEMPTS.labels(str(response.status_code)).inc()
    if response.is_success:
        return "delivered", ""
    if response.status_code in RETRYABLE:
        return "retry", f"HTTP {response.status_code}"
    log.error(
        "callback refused with %s: %s",
        response.status_code,
        response.text[:300],
        extra={"job_id": webhook_id},
    )
    return f"refused {response.status_code}", ""


def _retry_or_give_up(d: WorkerDeps, attempt: int, webhook_id: str, reason: str) -> str:
    settings = d.settings
    if attempt >= settings.callback_max_tries:
        # the audit finds the ticket stuck and re-enqueues it; nothing is lost, only late
        log.error(
            "callback given up after %d tries: %s", attempt, reason, extra={"job_id": webhook_id}
        )
        return f"gave up: {reason}"
    wait = backoff.delay(attempt, cap_s=settings.callback_backoff_cap_s)
    log.warning(
        "callback failed (%s); retry %d in %.1f s",
        reason,
        attempt,
        wait,
        extra={"job_id": webhook_id},
    )
    raise Retry(defer=wait)
