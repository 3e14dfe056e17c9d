"""Signed URLs (api.signing): derived keys, bucketed expiry, rotation, and every tampering."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from imagepipe.api.signing import BUCKET_S, PURPOSE, UrlSigner, derived_key
from imagepipe.errors import Forbidden

SECRET = "a-grant-secret-of-32-characters-or-more"
OLD = "the-previous-grant-secret-of-32-characters"
PATH = "/photos/0123456789abcdef0123/m"
NOW = 1_700_000_000.0


def signer(*secrets: str, ttl_s: int = 3600) -> UrlSigner:
    return UrlSigner(list(secrets) or [SECRET], ttl_s)


def test_the_key_is_derived_from_the_grant_secret_never_the_secret_itself() -> None:
    assert derived_key(SECRET) == hmac.new(SECRET.encode(), PURPOSE, hashlib.sha256).digest()
    signed = signer().sign(PATH, NOW)
    with_raw_secret = UrlSigner([], 3600)
    with_raw_secret.keys = [SECRET.encode()]  # what signing with the grant secret would make
    assert with_raw_secret.sign(PATH, NOW).sig != signed.sig


def test_exp_is_rounded_up_to_a_bucket_so_the_url_stays_the_same_a_while() -> None:
    first = signer().sign(PATH, NOW)
    assert first.exp % BUCKET_S == 0 and NOW + 3600 <= first.exp < NOW + 3600 + BUCKET_S
    same_bucket = first.exp - 3600 - 1  # the last second that rounds to the same exp
    assert signer().sign(PATH, same_bucket) == first
    assert signer().sign(PATH, first.exp - 3600 + 1).exp == first.exp + BUCKET_S
    assert first.url == f"{PATH}?exp={first.exp}&sig={first.sig}"


def test_a_signed_url_checks_for_get_and_head_until_it_expires() -> None:
    signed = signer().sign(PATH, NOW)
    for method in ("GET", "HEAD", "head"):
        assert signer().check(method, PATH, str(signed.exp), signed.sig, NOW) == signed.exp
    assert signer().check("GET", PATH, str(signed.exp), signed.sig, signed.exp - 1) == signed.exp
    with pytest.raises(Forbidden, match="expired"):
        signer().check("GET", PATH, str(signed.exp), signed.sig, signed.exp)


def flip(text: str, at: int) -> str:
    """``text`` with one character changed (still a plausible character there)."""
    swapped = "B" if text[at] != "B" else "C"
    if text[at].isdigit():
        swapped = "1" if text[at] != "1" else "2"
    return text[:at] + swapped + text[at + 1 :]


def test_one_character_changed_anywhere_is_refused() -> None:
    signed = signer().sign(PATH, NOW)
    exp = str(signed.exp)
    tampered = [(flip(PATH, i), exp, signed.sig) for i in range(1, len(PATH)) if PATH[i] != "/"]
    tampered += [(PATH, flip(exp, i), signed.sig) for i in range(len(exp))]
    tampered += [(PATH, exp, flip(signed.sig, i)) for i in range(len(signed.sig))]
    for path, when, sig in tampered:
        with pytest.raises(Forbidden, match="signature"):
            signer().check("GET", path, when, sig, NOW)


GOOD = "the signed URL's own"


@pytest.mark.parametrize(
    ("method", "exp", "sig"),
    [
        ("POST", GOOD, GOOD),  # the method is signed
        ("GET", "", GOOD),
        ("GET", "-1", GOOD),
        ("GET", "1e12", GOOD),
        ("GET", "9" * 13, GOOD),
        ("GET", "\u00b2", GOOD),  # a superscript two: isdigit() says yes, int() says no
        ("GET", GOOD, ""),
        ("GET", GOOD, "é" * 43),  # not ASCII: refused, not a crash
    ],
)
def test_malformed_or_foreign_parts_are_403_never_an_error(method: str, exp: str, sig: str) -> None:
    signed = signer().sign(PATH, NOW)
    exp = str(signed.exp) if exp == GOOD else exp
    with pytest.raises(Forbidden):
        signer().check(method, PATH, exp, signed.sig if sig == GOOD else sig, NOW)


def test_the_previous_secret_verifies_during_a_rotation_and_not_after() -> None:
    old = signer(OLD).sign(PATH, NOW)
    rotating = signer(SECRET, OLD)
    assert rotating.check("GET", PATH, str(old.exp), old.sig, NOW) == old.exp
    assert rotating.sign(PATH, NOW) == signer(SECRET).sign(PATH, NOW)  # new URLs: new secret
    with pytest.raises(Forbidden):
        signer(SECRET).check("GET", PATH, str(old.exp), old.sig, NOW)


def test_an_empty_secret_signs_nothing_and_verifies_nothing() -> None:
    empty = UrlSigner([""], 3600)
    with pytest.raises(Forbidden):
        empty.sign(PATH, NOW)
    forged = hmac.new(derived_key(""), f"GET\n{PATH}\n{int(NOW) + 600}".encode(), hashlib.sha256)
    with pytest.raises(Forbidden):
        empty.check("GET", PATH, str(int(NOW) + 600), forged.hexdigest(), NOW)
