"""sandbox: real child processes, real renders, real crashes, deadlines and memory caps."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from imagepipe.imaging.decoding import ImageRejected
from imagepipe.worker.sandbox import (
    DecodeCrashed,
    DecodeOutOfMemory,
    DecodePool,
    DecodeTimeout,
    SandboxError,
)
from tests import images, sandbox_helpers

MEMORY_MB = 256
TIMEOUT_S = 1.0


def alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie awaiting its reaper is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


async def gone(pid: int, within_s: float = 5.0) -> bool:
    """Whether ``pid`` stops running within ``within_s`` (signals take a moment)."""
    for _ in range(int(within_s / 0.05)):
        if not alive(pid):
            return True
        await asyncio.sleep(0.05)
    return False


@pytest.fixture
async def pool() -> AsyncIterator[DecodePool]:
    pool = DecodePool(processes=2, memory_mb=MEMORY_MB, timeout_s=TIMEOUT_S)
    await pool.start()
    yield pool
    await pool.close()


@pytest.fixture
async def single() -> AsyncIterator[DecodePool]:
    """One slot, so a replaced child is the one that must answer next."""
    pool = DecodePool(processes=1, memory_mb=MEMORY_MB, timeout_s=TIMEOUT_S)
    await pool.start()
    yield pool
    await pool.close()


async def test_runs_a_real_render_in_a_child(pool: DecodePool) -> None:
    rendered = await pool.run(sandbox_helpers.render_jpeg, 800, 600)
    assert (rendered.width, rendered.height) == (600, 800)
    assert {r.name: (r.width, r.height) for r in rendered.renditions}["sq"] == (75, 75)
    assert await pool.run(sandbox_helpers.pid) != os.getpid()


async def test_children_are_capped_warm_and_deaf_to_ctrl_c(single: DecodePool) -> None:
    ignores_sigint, cap = await single.run(sandbox_helpers.child_state)
    assert ignores_sigint
    assert cap == MEMORY_MB * 1024 * 1024
    first = await single.run(sandbox_helpers.pid)
    assert await single.run(sandbox_helpers.add, 2, 3) == 5
    assert await single.run(sandbox_helpers.pid) == first  # no process per job


async def test_image_rejected_crosses_the_pipe(pool: DecodePool) -> None:
    with pytest.raises(ImageRejected) as info:
        await pool.run(sandbox_helpers.render_bytes, images.truncated(images.jpeg(400, 300), 0.5))
    assert info.value.status == 415
    with pytest.raises(ImageRejected) as info:
        await pool.run(sandbox_helpers.render_bytes, images.pixel_flood_png())
    assert info.value.status == 413


async def test_other_exceptions_cross_the_pipe_and_the_slot_stays(single: DecodePool) -> None:
    first = await single.run(sandbox_helpers.pid)
    with pytest.raises(LookupError, match="no such thing") as info:
        await single.run(sandbox_helpers.fail, "no such thing")
    assert any("in the decode child" in note for note in info.value.__notes__)
    with pytest.raises(SandboxError, match="could not send"):
        await single.run(sandbox_helpers.unpicklable)
    assert await single.run(sandbox_helpers.pid) == first


async def test_memory_cap_raises_and_the_pool_recovers(single: DecodePool) -> None:
    first = await single.run(sandbox_helpers.pid)
    with pytest.raises((DecodeOutOfMemory, DecodeCrashed)):
        await single.run(sandbox_helpers.allocate, 4 * MEMORY_MB)
    assert await single.run(sandbox_helpers.allocate, 16) == 16 * 1024 * 1024
    assert await single.run(sandbox_helpers.pid) != first  # the child was replaced


@pytest.mark.parametrize("crash", [sandbox_helpers.die, sandbox_helpers.segfault])
async def test_a_dead_child_is_replaced(single: DecodePool, crash: Callable[[], None]) -> None:
    first = await single.run(sandbox_helpers.pid)
    with pytest.raises(DecodeCrashed, match=r"killed by SIG(KILL|SEGV)"):
        await single.run(crash)
    assert await single.run(sandbox_helpers.add, 1, 1) == 2
    assert await single.run(sandbox_helpers.pid) != first


async def test_deadline_kills_and_replaces_the_child(single: DecodePool) -> None:
    first = await single.run(sandbox_helpers.pid)
    with pytest.raises(DecodeTimeout):
        await single.run(sandbox_helpers.sleep, 60)
    assert await gone(first)  # SIGKILLed, not left running
    assert await single.run(sandbox_helpers.sleep, 0.01) == 0.01
    assert await single.run(sandbox_helpers.pid) != first


async def test_one_slot_dying_leaves_the_other_alone(pool: DecodePool) -> None:
    slow = asyncio.create_task(pool.run(sandbox_helpers.sleep, 0.5))
    await asyncio.sleep(0.05)  # the sleeper has taken its slot
    with pytest.raises(DecodeCrashed):
        await pool.run(sandbox_helpers.die)
    assert await slow == 0.5


async def test_the_loop_keeps_running_while_a_child_hangs(single: DecodePool) -> None:
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    with pytest.raises(DecodeTimeout):
        await single.run(sandbox_helpers.sleep, 60)
    ticker.cancel()
    assert ticks > 20  # ~100 in the second the child hung


async def test_a_cancelled_call_does_not_leave_a_stale_answer(single: DecodePool) -> None:
    call = asyncio.create_task(single.run(sandbox_helpers.sleep, 0.3))
    await asyncio.sleep(0.05)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert await single.run(sandbox_helpers.add, 20, 22) == 42


async def test_close_stops_children_promptly() -> None:
    pool = DecodePool(processes=2, memory_mb=MEMORY_MB, timeout_s=30)
    await pool.start()
    pids = [await pool.run(sandbox_helpers.pid) for _ in range(2)]
    busy = asyncio.create_task(pool.run(sandbox_helpers.sleep, 60))
    await asyncio.sleep(0.05)
    await asyncio.wait_for(pool.close(), 5)
    with pytest.raises(DecodeCrashed):
        await busy
    assert all([await gone(pid) for pid in pids])
    with pytest.raises(SandboxError, match="closed"):
        await pool.run(sandbox_helpers.add, 1, 2)


async def test_children_die_with_their_parent() -> None:
    # The parent here is a throwaway Python that starts a pool, reports its child, keeps
    # it busy and is SIGKILLed (no cleanup runs, no EOF is read): the child must follow.
    script = (
        "import asyncio, sys\n"
        "from imagepipe.worker.sandbox import DecodePool\n"
        "from tests import sandbox_helpers\n"
        "async def main():\n"
        "    pool = DecodePool(1, 256, 30)\n"
        "    await pool.start()\n"
        "    print(await pool.run(sandbox_helpers.pid), flush=True)\n"
        "    await pool.run(sandbox_helpers.sleep, 60)\n"
        "if __name__ == '__main__':\n"
        "    asyncio.run(main())\n"
    )
    parent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE, cwd=os.getcwd()
    )
    assert parent.stdout is not None
    child = int(await asyncio.wait_for(parent.stdout.readline(), 30))
    await asyncio.sleep(0.2)  # the child is asleep in its job now
    parent.send_signal(signal.SIGKILL)
    try:
        assert await gone(child), f"decode child {child} outlived its parent"
    finally:
        if alive(child):
            os.kill(child, signal.SIGKILL)
        await parent.wait()
