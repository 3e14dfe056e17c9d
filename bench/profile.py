"""Where each role's CPU goes: py-spy samples of every process of a role, by package.

`profiled(pids)` runs ``py-spy record`` on each role (its children too: the worker's decode
children) while the block runs, then sorts every sample by the package of the function it
was in (the innermost frame): ``PIL``, ``botocore``, ``asyncio``, ``imagepipe``, ... The
shares say what a role's CPU per photo is spent on; they are read from a pass of their own,
never from a timed one, since sampling costs CPU too.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from bench.model import table

RATE_HZ = 97  # not a multiple of any timer in the roles
TOP = 5
_FILE = re.compile(r"\(([^():]+):\d+\)$")  # "func (path/to/file.py:12)" -> the path


def py_spy() -> str | None:
    """The py-spy binary (the bench extra installs it beside this Python), if any."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


@contextlib.contextmanager
def profiled(pids: dict[str, int]) -> Iterator[dict[str, Counter[str]]]:
    """Sample every role while the block runs; afterwards the dict holds, per role, the
    samples by package (empty when py-spy is missing or may not attach)."""
    found: dict[str, Counter[str]] = {}
    binary = py_spy()
    if binary is None:
        yield found
        return
    with tempfile.TemporaryDirectory() as tmp:
        outputs = {role: Path(tmp) / f"{role}.txt" for role in pids}
        spies = {role: _record(binary, pid, outputs[role]) for role, pid in pids.items()}
        try:
            yield found
        finally:
            for spy in spies.values():
                spy.send_signal(signal.SIGINT)  # py-spy writes what it has and exits
            for role, spy in spies.items():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    spy.wait(timeout=30)
                found[role] = by_package(outputs[role])


def _record(binary: str, pid: int, output: Path) -> subprocess.Popen[bytes]:
    command = [binary, "record", "--pid", str(pid), "--subprocesses", "--format", "raw"]
    command += ["--rate", str(RATE_HZ), "--output", str(output), "--nonblocking"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def package(frame: str) -> str:
    """The package a sampled frame's function lives in (a stdlib module's own name)."""
    found = _FILE.search(frame)
    if found is None:
        return "other"
    path = found.group(1)
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    if "/imagepipe/" in path or path.startswith("imagepipe/"):
        return "imagepipe"
    folder = os.path.basename(os.path.dirname(path))
    stem = os.path.basename(path).removesuffix(".py")
    return stem if not folder or folder.startswith("python3") else folder


def by_package(raw: Path) -> Counter[str]:
    """Samples of a py-spy raw (collapsed) file, by the innermost frame's package."""
    counts: Counter[str] = Counter()
    if not raw.exists():
        return counts
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            counts[package(stack.rsplit(";", 1)[-1])] += int(count)
    return counts


def lines(found: dict[str, Counter[str]]) -> list[str]:
    """A table: each role's largest packages, as shares of its samples."""
    if not found:
        return ["\nNo profile: py-spy is not installed (the bench extra brings it)."]
    rows = []
    for role, counts in found.items():
        total = sum(counts.values()) or 1
        top = ", ".join(f"{name} {100 * n / total:.0f}%" for name, n in counts.most_common(TOP))
        rows.append([role, str(total), top or "no samples"])
    header = ["process (with its children)", "samples", f"largest {TOP}, by package"]
    return [
        "",
        f"Where the CPU goes (py-spy at {RATE_HZ} Hz, a pass of its own; the innermost frame):",
        "",
        *table(header, rows),
    ]
