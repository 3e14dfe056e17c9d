"""Standard Webhooks signing: the narrow unit (the HTTP side is in test_callbacks)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from imagepipe import webhooks
from imagepipe.errors import Unauthorized

BODY = b'{"type":"processing.started"}'


def test_signed_body_verifies_and_returns_its_id() -> None:
    headers = webhooks.sign("s3cret", "msg_1", BODY)
    assert webhooks.verify(["s3cret"], headers, BODY) == "msg_1"
    assert headers["webhook-signature"].startswith("v1,")


def test_signature_is_hmac_over_id_timestamp_body() -> None:
    import base64
    import hashlib
    import hmac

    at = datetime(2026, 1, 1, tzinfo=UTC)
    headers = webhooks.sign("k", "id1", BODY, at=at)
    expected = hmac.new(b"k", b"id1.%d." % int(at.timestamp()) + BODY, hashlib.sha256).digest()
    assert headers["webhook-signature"] == "v1," + base64.b64encode(expected).decode()


@pytest.mark.parametrize(
    "tamper",
    [
        lambda h, b: (h, b + b" "),  # body changed after signing
        lambda h, b: ({**h, "webhook-id": "other"}, b),
        lambda h, b: ({k: v for k, v in h.items() if k != "webhook-signature"}, b),
        lambda h, b: ({**h, "webhook-signature": "garbage"}, b),
        lambda h, b: ({**h, "webhook-signature": "v1,@@@"}, b),
        lambda h, b: ({**h, "webhook-timestamp": "not-a-number"}, b),
        lambda h, b: (h, b"\xff\xfe"),
    ],
)
def test_tampered_or_malformed_requests_are_unauthorized(tamper) -> None:  # type: ignore[no-untyped-def]
    headers, body = tamper(webhooks.sign("s3cret", "msg_1", BODY), BODY)
    with pytest.raises(Unauthorized):
        webhooks.verify(["s3cret"], headers, body)


def test_wrong_secret_is_unauthorized() -> None:
    with pytest.raises(Unauthorized):
        webhooks.verify(["other"], webhooks.sign("s3cret", "m", BODY), BODY)


@pytest.mark.parametrize("skew_s", [-301, 301])
def test_timestamps_outside_five_minutes_are_refused(skew_s: int) -> None:
    at = datetime.now(tz=UTC) + timedelta(seconds=skew_s)
    with pytest.raises(Unauthorized):
        webhooks.verify(["s3cret"], webhooks.sign("s3cret", "m", BODY, at=at), BODY)


def test_previous_secret_still_accepted_during_rotation() -> None:
    headers = webhooks.sign("old", "m", BODY)
    assert webhooks.verify(["new", "old"], headers, BODY) == "m"
