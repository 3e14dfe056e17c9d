"""Signed URLs: how a private derivative is handed out without a grant in every image request.

    /photos/{id}/{size}?exp=<unix seconds>&sig=<base64url HMAC-SHA256>

The HMAC covers the method (HEAD counts as GET), the path and ``exp``, under a key *derived*
from the grant secret (HMAC(grant secret, "imagepipe signed URLs v1")), so the grant secret
itself never signs anything but grants, and one secret serves both. During a rotation the
previous grant secret's derived key verifies too. ``exp`` is rounded up to a bucket
(``BUCKET_S``), so the same photo gets the same URL for a while and browsers can cache it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import time
from dataclasses import dataclass

from imagepipe.errors import Forbidden

PURPOSE = b"imagepipe signed URLs v1"
BUCKET_S = 300  # URLs minted within one bucket are the same URL
MAX_EXP_DIGITS = 12  # a Unix time for the next thirty thousand years


def derived_key(secret: str) -> bytes:
    """The signing key of one grant secret (never the secret itself)."""
    return hmac.new(secret.encode(), PURPOSE, hashlib.sha256).digest()


def _mac(key: bytes, method: str, path: str, exp: int) -> str:
    verb = "GET" if method.upper() == "HEAD" else method.upper()
    message = f"{verb}\n{path}\n{exp}".encode()
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


@dataclass(frozen=True)
class Signed:
    """A signed path, and until when it works."""

    path: str
    exp: int
    sig: str

    @property
    def url(self) -> str:
        """The URL to hand out."""
        return f"{self.path}?exp={self.exp}&sig={self.sig}"


class UrlSigner:
    """Mints and checks signed URLs with the keys derived from the grant secrets."""

    def __init__(self, secrets: list[str], ttl_s: int, bucket_s: int = BUCKET_S) -> None:
        # an empty secret would make a key anyone can derive: such a secret signs nothing
        self.keys = [derived_key(s) for s in secrets if s]
        self.ttl_s, self.bucket_s = ttl_s, bucket_s

    def sign(self, path: str, now: float | None = None) -> Signed:
        """``path`` for GET (and HEAD), valid at least ``ttl_s`` from ``now``."""
        if not self.keys:
            raise Forbidden("signed URLs need IMAGEPIPE_GRANT_SECRET")
        at = time.time() if now is None else now
        exp = math.ceil((at + self.ttl_s) / self.bucket_s) * self.bucket_s
        return Signed(path, exp, _mac(self.keys[0], "GET", path, exp))

    def check(self, method: str, path: str, exp: str, sig: str, now: float | None = None) -> int:
        """The URL's expiry if it is ours, unchanged and not past it; else 403 saying why."""
        if not (exp.isascii() and exp.isdigit()) or len(exp) > MAX_EXP_DIGITS:
            raise Forbidden("the signed URL's exp is not a Unix time")
        expires = int(exp)
        # the MAC first: whether it is expired is only worth saying of a URL we made
        if not self._ours(method, path, expires, sig):
            raise Forbidden("the URL's signature does not match")
        if expires <= (time.time() if now is None else now):
            raise Forbidden("the signed URL has expired")
        return expires

    def _ours(self, method: str, path: str, exp: int, sig: str) -> bool:
        given = sig.encode(errors="replace")  # bytes: compare_digest refuses non-ASCII text
        made = [_mac(key, method, path, exp).encode() for key in self.keys]
        return any(hmac.compare_digest(mac, given) for mac in made)
