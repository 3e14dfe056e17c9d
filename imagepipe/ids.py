"""Photo and ticket ids: how they are made and what a well-formed one looks like.

    photo id   80 bits as 20 hex digits     storage keys and URLs
    ticket id  144 bits, URL-safe base64    unguessable: knowing one is the right to read it

Both are random, also for a keyed upload: its ids are made at the key's first reservation
and kept in the key's record (`api.idempotency`), never derived from the key.
"""

from __future__ import annotations

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
