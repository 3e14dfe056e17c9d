"""What every benchmark hands to the report: one row of the issue's table."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Row:
    """One benchmark's outcome, ready for BENCHMARKS.md and the console."""

    number: int
    title: str
    anchor: str
    goal: str
    ratio: float | None = None  # the headline number, as the goal states it
    ratio_text: str = ""  # e.g. "0.62× libvips, 9.1× naive"
    met: bool | None = None  # None: not measured (skipped, or no anchor)
    reading: str = ""  # a short interpretation, where the time goes
    details: list[str] = field(default_factory=list)  # markdown lines (tables, notes)
    data: dict[str, Any] = field(default_factory=dict)  # raw numbers for --json

    @property
    def verdict(self) -> str:
        """``met``, ``not met`` or ``not measured``."""
        if self.met is None:
            return "not measured"
        return "met" if self.met else "not met"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table as lines."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines
