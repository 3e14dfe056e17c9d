"""Content negotiation for derivatives: which of a size's formats to send for an ``Accept``.

Browsers name the modern formats they decode (``image/avif,image/webp,image/*,*/*;q=0.8``);
a wildcard alone promises nothing about AVIF or WebP (old Safari sends ``image/*``), so a
format reached only through a wildcard ranks after one the client named, and among those
the size's first format (JPEG by default) comes first. ``mimeparse`` reads the header and
scores each match the way RFC 9110 says (the most specific range sets the quality).
"""

from __future__ import annotations

from collections.abc import Sequence

import mimeparse

from imagepipe import formats

ANY = [("*", "*", {"q": "1"})]
NAMED_FITNESS = 110  # mimeparse's score for a range naming both type and subtype


def ranked(accept: str | None, offered: Sequence[str]) -> list[str]:
    """The acceptable ones of a size's ``offered`` formats (first = default), best first."""
    ranges = _parse(accept or "") or ANY
    scored = []
    for position, fmt in enumerate(offered):
        quality, fitness = mimeparse.quality_and_fitness_parsed(formats.media_type(fmt), ranges)
        if quality <= 0:
            continue
        named = fitness >= NAMED_FITNESS
        # named: the most compact first (AVIF, WebP, JPEG); by wildcard: in the size's order
        tiebreak = -formats.get(fmt).rank if named else position
        scored.append((-quality, not named, tiebreak, fmt))
    return [fmt for *_, fmt in sorted(scored)]


def _parse(accept: str) -> list[tuple[str, str, dict[str, str]]]:
    """The header's media ranges; a malformed one is skipped rather than failing the request."""
    ranges = []
    for part in accept.split(","):
        try:
            kind, subtype, params = mimeparse.parse_media_range(part)
            float(params["q"])
        except (mimeparse.MimeTypeParseException, ValueError):
            continue
        ranges.append((kind, subtype, params))
    return ranges
