"""Capped exponential backoff with full jitter (retries spread out instead of stampeding)."""

from __future__ import annotations

import random


def delay(attempt: int, base_s: float = 0.5, cap_s: float = 30.0) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based)."""
    ceiling = min(cap_s, base_s * 2 ** max(0, attempt - 1))
    return random.uniform(ceiling / 2, ceiling)
