"""worker.processing: derivatives are written once, and a re-run of a job keeps them."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from imagepipe.imaging.render import Rendered, Rendition
from imagepipe.storage import Storage
from imagepipe.storage.filesystem import FilesystemStorage
from imagepipe.storage.memory import MemoryStorage
from imagepipe.worker.processing import write_sizes

PHOTO = "0123456789abcdef0123"


@pytest.fixture(params=["filesystem", "memory"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    """A store whose head has no sha256 (filesystem), and one whose head has it (memory)."""
    backend = FilesystemStorage(tmp_path) if request.param == "filesystem" else MemoryStorage()
    yield backend
    await backend.close()


def rendered(*renditions: tuple[str, str, bytes]) -> Rendered:
    """A render result made of (size, format, bytes) triples."""
    made = tuple(Rendition(name, fmt, data, 10, 10) for name, fmt, data in renditions)
    return Rendered(format="JPEG", width=10, height=10, renditions=made)


async def test_a_rerun_keeps_the_derivatives_already_written(store: Storage) -> None:
    # the first run died after writing `t` (worker killed mid-job)
    await write_sizes(store, PHOTO, rendered(("t", "JPEG", b"first t")))
    # the re-run encodes again, and its bytes need not be the same
    again = rendered(("t", "JPEG", b"second t, longer"), ("m", "JPEG", b"m"), ("m", "WEBP", b"w"))
    sizes = await write_sizes(store, PHOTO, again)
    assert await store.read(f"derivatives/{PHOTO}/t.jpg") == b"first t"
    t = sizes["t"]
    assert (t.bytes, t.sha256) == (7, hashlib.sha256(b"first t").hexdigest())
    assert sizes["m"].sha256 == hashlib.sha256(b"m").hexdigest()
    assert [f.key for f in sizes["m"].files] == [
        f"derivatives/{PHOTO}/m.jpg",
        f"derivatives/{PHOTO}/m.webp",
    ]
