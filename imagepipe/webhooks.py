"""Standard Webhooks signing and verification (HMAC-SHA256 over ``id.timestamp.body``).

The `standardwebhooks` library does the cryptography; this module adapts it to our secrets
(raw bytes, several accepted during rotation) and turns every way a request can be wrong
into one `Unauthorized`, so a malformed header can never become a 500.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from standardwebhooks.webhooks import Webhook

from imagepipe.errors import Unauthorized

HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")


def sign(secret: str, webhook_id: str, body: bytes, at: datetime | None = None) -> dict[str, str]:
    """The three signature headers for one delivery of ``body``."""
    at = at or datetime.now(tz=UTC)
    signature = Webhook(secret.encode()).sign(webhook_id, at, body.decode())
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature,
    }


def verify(secrets: Sequence[str], headers: Mapping[str, str], body: bytes) -> str:
    """Return the webhook-id when any secret signed this body within ±5 minutes."""
    wanted = {name: headers.get(name, "") for name in HEADERS}
    if not all(wanted.values()):
        raise Unauthorized("missing webhook-id, webhook-timestamp or webhook-signature")
    for secret in secrets:
        try:
            Webhook(secret.encode()).verify(body, wanted, json_parse=False)
        except Exception as exc:  # the library raises ValueError etc. on malformed input
            reason = str(exc) or type(exc).__name__
            continue
        return wanted["webhook-id"]
    raise Unauthorized(f"signature rejected: {reason}")
