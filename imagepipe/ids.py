"""Photo and ticket ids: how they are made and what a well-formed one looks like.

    photo id   80 bits as 20 hex digits     storage keys and URLs
    ticket id  144 bits, URL-safe base64    unguessable: knowing one is the right to read it

A keyed upload (``Idempotency-Key``) gets ids derived from its key with a server secret,
so a retry of the same request names the same photo and ticket. Every ticket id is derived
from its photo id with that secret, so the audit can recreate, under the id the client
holds, a ticket Redis lost before the photo was processed (its original names the photo).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

PHOTO_ID = re.compile(r"^[0-9a-f]{20}$")
TICKET_ID = re.compile(r"^[A-Za-z0-9_-]{24}$")


def new_photo_id() -> str:
    """80 random bits as hex."""
    return secrets.token_hex(10)


def new_ticket_id() -> str:
    """144 random bits, URL-safe."""
    return secrets.token_urlsafe(18)


def is_photo_id(text: str) -> bool:
    """Whether ``text`` is a well-formed photo id (it may still name no photo)."""
    return PHOTO_ID.match(text) is not None


def is_ticket_id(text: str) -> bool:
    """Whether ``text`` is a well-formed ticket id (it may still name no ticket)."""
    return TICKET_ID.match(text) is not None


def ticket_id_for(secret: str, photo_id: str) -> str:
    """The id of the ticket that accepts ``photo_id``: 144 bits, unguessable without the secret."""
    digest = hmac.new(secret.encode(), b"ticket:" + photo_id.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:18]).decode()


def derived_ids(secret: str, header: str) -> tuple[str, str]:
    """The photo id and ticket id of an upload keyed ``header``: the same on every retry."""
    digest = hmac.new(secret.encode(), b"idempotency:" + header.encode(), hashlib.sha256).digest()
    photo_id = digest[:10].hex()
    return photo_id, ticket_id_for(secret, photo_id)
