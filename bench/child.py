"""What row 8 runs inside a real decode child: imports nothing a worker's child would not."""

from __future__ import annotations

import contextlib
from pathlib import Path

from imagepipe.config import DEFAULT_SIZES, parse_sizes
from imagepipe.imaging import render as imaging

LADDER = parse_sizes(DEFAULT_SIZES)


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def render_and_peak(data: bytes) -> tuple[float, float]:
    """(RSS before, peak RSS during) rendering the default ladder of ``data``, in MB.

    The peak is the kernel's high-water mark (VmHWM), reset first: ru_maxrss would not do,
    as Linux carries it across exec from the parent that spawned this child.
    """
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _status_mb("VmRSS")
    imaging.render(data, LADDER, formats=("JPEG",), max_pixels=50_000_000, qualities={"JPEG": 85})
    return before, _status_mb("VmHWM")
