"""Functions the sandbox tests run in decode children (they must be importable there)."""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import time

from imagepipe.config import DEFAULT_SIZES, parse_sizes
from imagepipe.imaging.render import Rendered, render
from tests import images


def add(a: int, b: int) -> int:
    """A trivial job."""
    return a + b


def pid() -> int:
    """The child's process id."""
    return os.getpid()


def child_state() -> tuple[bool, int]:
    """Whether SIGINT is ignored, and the address-space cap."""
    return signal.getsignal(signal.SIGINT) is signal.SIG_IGN, resource.getrlimit(
        resource.RLIMIT_AS
    )[0]


def render_jpeg(width: int, height: int) -> Rendered:
    """A real render of a generated photo with the default ladder."""
    data = images.jpeg(width, height, orientation=6)
    return render(
        data, parse_sizes(DEFAULT_SIZES), formats=["JPEG"], max_pixels=10**8, qualities={"JPEG": 85}
    )


def render_bytes(data: bytes) -> Rendered:
    """A real render of ``data`` with the default ladder."""
    return render(
        data,
        parse_sizes(DEFAULT_SIZES),
        formats=["JPEG", "PNG"],
        max_pixels=10**7,
        qualities={"JPEG": 85},
    )


def allocate(mib: int) -> int:
    """Touch ``mib`` MiB at once."""
    return len(bytearray(mib * 1024 * 1024))


def sleep(seconds: float) -> float:
    """Block, as a decoder stuck in a loop would."""
    time.sleep(seconds)
    return seconds


def die() -> None:
    """Get killed, as the kernel's OOM killer would."""
    os.kill(os.getpid(), signal.SIGKILL)


def segfault() -> None:
    """Crash in native code."""
    ctypes.string_at(0)


def fail(message: str) -> None:
    """Raise an ordinary exception."""
    raise LookupError(message)


def unpicklable() -> object:
    """Return something that cannot cross the pipe."""
    return lambda: None
