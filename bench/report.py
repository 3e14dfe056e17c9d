"""The console table and BENCHMARKS.md."""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

from PIL import features

from bench.model import Row, table
from bench.notes import NOTES


def machine() -> list[tuple[str, str]]:
    """What ran the benchmarks: CPU, memory, software versions, load."""
    cpu = _cpu_model()
    memory = _meminfo_gb()
    import pyvips  # after bench.ladder set VIPS_CONCURRENCY

    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return [
        ("date", datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("CPU", f"{cpu}, {os.cpu_count()} logical cores"),
        ("memory", f"{memory:.0f} GiB"),
        ("OS", f"{platform.system()} {platform.release()}"),
        ("Python", sys.version.split()[0]),
        ("Pillow", f"{version('pillow')} (libjpeg-turbo {features.version('jpg')})"),
        (
            "libvips",
            f"{pyvips.version(0)}.{pyvips.version(1)}.{pyvips.version(2)} "
            f"(pyvips {version('pyvips')}, one thread)",
        ),
        ("load average when the table was written", load),
    ]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _meminfo_gb() -> float:
    try:
        first = Path("/proc/meminfo").read_text().splitlines()[0]
        return int(first.split()[1]) / 2**20
    except (OSError, IndexError, ValueError):
        return 0.0


def summary(rows: Sequence[Row]) -> list[str]:
    """The issue's table, with what was measured and the verdict."""
    return table(
        ["#", "what", "anchor (same run)", "goal", "measured", "verdict"],
        [[str(r.number), r.title, r.anchor, r.goal, r.ratio_text, r.verdict] for r in rows],
    )


def console(rows: Sequence[Row]) -> str:
    """A plain-text table for the terminal."""
    width = max(len(r.title) for r in rows)
    lines = [f"{'#':>2}  {'what':<{width}}  {'verdict':<12}  measured"]
    lines += [f"{r.number:>2}  {r.title:<{width}}  {r.verdict:<12}  {r.ratio_text}" for r in rows]
    return "\n".join(lines)


def markdown(rows: Sequence[Row], quick: bool, elapsed_s: float) -> str:
    """The whole BENCHMARKS.md."""
    parts = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`python -m bench`); rerun it rather than editing this file. "
        "Every ratio is against an anchor measured in the same run on the same machine, because "
        "these machines are shared and noisy."
        + (" **Quick run: sizes too small to judge.**" if quick else ""),
        "",
        "## Machine",
        "",
        *table(["", ""], [[k, v] for k, v in machine()]),
        f"\nThe run took {elapsed_s / 60:.1f} minutes.",
        "",
        "## Summary",
        "",
        *summary(rows),
    ]
    for row in rows:
        parts += ["", f"## {row.number}. {row.title}", ""]
        if note := NOTES.get(row.number):
            parts += [note.strip(), ""]
        parts += row.details
    parts += ["", "## Running it", "", NOTES[0].strip(), ""]
    return "\n".join(parts)
