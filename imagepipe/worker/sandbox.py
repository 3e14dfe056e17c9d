"""Decoding in warm child processes, each with a memory cap and a hard deadline.

arq's job timeout cannot stop blocking code, and a hostile image can make a decoder
allocate gigabytes or spin, so every decode runs in a dedicated child process (one per
slot, kept warm across jobs, started with "spawn": the parent runs an event loop with
threads, which ``fork`` would copy mid-flight). What ``DecodePool.run`` raises:

    SandboxError              the pool is closed, or a result could not be sent back
    ├── DecodeTimeout         past the deadline: the child is SIGKILLed and replaced
    ├── DecodeOutOfMemory     MemoryError under the child's RLIMIT_AS cap: replaced
    └── DecodeCrashed         the child died (the kernel's OOM killer, a segfault): replaced

Any other exception raised by the function is re-raised in the parent as it was raised
in the child (``imaging.ImageRejected`` included). One slot's death never touches another.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import importlib
import logging
import multiprocessing
import os
import resource
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from multiprocessing.reduction import ForkingPickler
from typing import Any, TypeVar, cast

T = TypeVar("T")
log = logging.getLogger(__name__)

_CONTEXT = multiprocessing.get_context("spawn")
_START_TIMEOUT_S = 60.0  # a cold interpreter importing Pillow on a busy host
_RESPAWN_BACKOFF_S = 1.0
_JOIN_TIMEOUT_S = 5.0
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # from <malloc.h>
_HEAP_BUFFERS_UP_TO = 64 * 1024 * 1024  # a 24 MP RGBA buffer is 96 MB: mmap'd, once


class SandboxError(Exception):
    """The sandbox could not produce a result."""


class DecodeTimeout(SandboxError):
    """The child ran past its deadline and was killed."""


class DecodeOutOfMemory(SandboxError):
    """The child hit its memory cap."""


class DecodeCrashed(SandboxError):
    """The child died without answering."""


# -- the child ------------------------------------------------------------------------


def _child_main(conn: Connection, memory_mb: int, preload: tuple[str, ...], parent: int) -> None:
    """Answer (fn, args) requests from the parent until it says stop or goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _die_with_parent(parent)
    for module in preload:
        importlib.import_module(module)  # warm: the first job pays no import
    _keep_freed_memory()
    cap = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    conn.send(("ready", os.getpid()))
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return  # the parent closed its end
        except MemoryError:
            reply: tuple[str, Any] = ("oom", None)  # the request did not fit under the cap
        except Exception as exc:  # e.g. a function this child cannot import
            reply = ("error", SandboxError(f"the decode child could not read a request: {exc!r}"))
        else:
            if request is None:
                return
            reply = _call(*request)
        _send(conn, reply)


def _keep_freed_memory() -> None:
    """Have glibc keep freed memory in this child's heap for the next job.

    By default glibc serves each large buffer (a decoded photo, its resized copies) from a
    fresh mmap and unmaps it when freed, so every job page-faults its buffers in again:
    ~9000 faults and 10-25% of a 12 MP render (BENCHMARKS.md, row 2). The heap then holds
    at most the largest job's peak, under the RLIMIT_AS cap like everything else.
    """
    if sys.platform != "linux" or not (name := ctypes.util.find_library("c")):
        return
    libc = ctypes.CDLL(name)
    if hasattr(libc, "mallopt"):  # glibc (musl has none, and no such cost)
        libc.mallopt(_M_MMAP_THRESHOLD, _HEAP_BUFFERS_UP_TO)
        libc.mallopt(_M_TRIM_THRESHOLD, 2 * _HEAP_BUFFERS_UP_TO)


def _die_with_parent(parent: int) -> None:
    """Have Linux SIGKILL this child when the parent dies, even mid-decode."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    # Elsewhere (and for a parent that died before prctl) EOF on the pipe ends the loop.
    if os.getppid() != parent:
        os._exit(1)


def _call(fn: Callable[..., Any], args: tuple[Any, ...]) -> tuple[str, Any]:
    try:
        return "ok", fn(*args)
    except MemoryError:
        return "oom", None
    except Exception as exc:
        # The traceback does not survive pickling; keep its text for the parent's logs.
        exc.add_note("in the decode child:\n" + "".join(traceback.format_tb(exc.__traceback__)))
        return "error", exc


def _send(conn: Connection, reply: tuple[str, Any]) -> None:
    try:
        conn.send(reply)
    except MemoryError:
        conn.send(("oom", None))
    except Exception as exc:  # an unpicklable result or exception
        conn.send(("error", SandboxError(f"the decode child could not send {reply[0]}: {exc!r}")))


# -- the parent -----------------------------------------------------------------------


@dataclass(eq=False)
class _Slot:
    process: BaseProcess
    conn: Connection


class DecodePool:
    """Warm child processes, one per slot, each running one call at a time."""

    def __init__(
        self,
        processes: int,
        memory_mb: int,
        timeout_s: float,
        *,
        preload: Sequence[str] = ("imagepipe.imaging.render",),
    ) -> None:
        if processes < 1:
            raise ValueError("a decode pool needs at least one process")
        self._processes = processes
        self._memory_mb = memory_mb
        self._timeout_s = timeout_s
        self._preload = tuple(preload)
        self._idle: asyncio.Queue[_Slot | None] = asyncio.Queue()  # None: the pool closed
        self._slots: set[_Slot] = set()  # every live child, idle or busy
        self._respawns: set[asyncio.Task[None]] = set()
        self._closed = False

    async def start(self) -> None:
        """Spawn every child and wait until each is ready."""
        slots = [self._spawn() for _ in range(self._processes)]
        try:
            results = await asyncio.gather(
                *(self._wait_ready(slot) for slot in slots), return_exceptions=True
            )
            if failures := [r for r in results if isinstance(r, BaseException)]:
                raise failures[0]
        except BaseException:
            for slot in slots:
                self._discard(slot)
            raise
        for slot in slots:
            self._idle.put_nowait(slot)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Call ``fn(*args)`` in a child: its result, or its exception re-raised here."""
        payload = ForkingPickler.dumps((fn, args))  # fails here, not half-way down a pipe
        slot = await self._take()
        try:
            kind, value = await self._call(slot, payload)
        except BaseException:
            self._replace(slot)  # timed out, died or cancelled mid-call: state unknown
            raise
        if kind == "oom":
            self._replace(slot)  # a MemoryError can leave a wrecked heap behind
            raise DecodeOutOfMemory(f"{_name(fn)} ran out of its {self._memory_mb} MiB")
        self._idle.put_nowait(slot)
        if kind == "error":
            raise value
        return cast(T, value)

    async def close(self) -> None:
        """Stop every child now, busy ones included, and any respawn under way."""
        self._closed = True
        for task in self._respawns:
            task.cancel()
        await asyncio.gather(*self._respawns, return_exceptions=True)
        processes = [slot.process for slot in self._slots]
        for process in processes:
            process.kill()  # a busy slot's run() then sees EOF and raises DecodeCrashed
        while not self._idle.empty():
            if (slot := self._idle.get_nowait()) is not None:
                self._discard(slot)
        self._idle.put_nowait(None)  # wakes anyone still waiting for a slot
        await asyncio.gather(*(asyncio.to_thread(p.join, _JOIN_TIMEOUT_S) for p in processes))

    # -- slots --

    def _spawn(self) -> _Slot:
        # Called on the loop's thread: PR_SET_PDEATHSIG fires when the *thread* that
        # started the child exits, so never start one from a short-lived worker thread.
        ours, theirs = _CONTEXT.Pipe()
        process = _CONTEXT.Process(
            target=_child_main,
            args=(theirs, self._memory_mb, self._preload, os.getpid()),
            name="imagepipe-decode",
            daemon=True,
        )
        process.start()
        theirs.close()  # only the child may hold its end, or its death would never show
        slot = _Slot(process, ours)
        self._slots.add(slot)
        return slot

    def _discard(self, slot: _Slot) -> None:
        """Kill a slot nobody is waiting on and let go of it."""
        slot.process.kill()
        slot.conn.close()
        self._slots.discard(slot)

    def _replace(self, slot: _Slot) -> None:
        self._discard(slot)
        if not self._closed:
            task = asyncio.get_running_loop().create_task(self._respawn())
            self._respawns.add(task)
            task.add_done_callback(self._respawns.discard)

    async def _respawn(self) -> None:
        """Start a fresh child for a slot that died, retrying until the pool closes."""
        while not self._closed:
            slot = self._spawn()
            try:
                await self._wait_ready(slot)
            except SandboxError as exc:
                log.warning("decode child did not start: %s", exc)
                self._discard(slot)
                await asyncio.sleep(_RESPAWN_BACKOFF_S)
                continue
            except BaseException:
                self._discard(slot)
                raise
            self._idle.put_nowait(slot)
            return

    async def _take(self) -> _Slot:
        if self._closed:
            raise SandboxError("the decode pool is closed")
        slot = await self._idle.get()
        if slot is None:
            self._idle.put_nowait(None)  # pass the news on to the next waiter
            raise SandboxError("the decode pool is closed")
        return slot

    # -- talking to a child --

    async def _wait_ready(self, slot: _Slot) -> None:
        kind, _ = await self._receive(slot, _START_TIMEOUT_S)
        if kind != "ready":
            raise SandboxError(f"decode child said {kind!r} instead of ready")

    async def _call(self, slot: _Slot, payload: memoryview) -> tuple[str, Any]:
        try:
            # A 50 MB upload takes a while to write: let a thread do it, not the loop.
            await asyncio.to_thread(slot.conn.send_bytes, payload)
        except OSError as exc:  # a broken pipe: the child is gone
            raise DecodeCrashed(f"the decode child died ({_exit_reason(slot.process)})") from exc
        return await self._receive(slot, self._timeout_s)

    async def _receive(self, slot: _Slot, limit_s: float) -> tuple[str, Any]:
        """The child's next message, awaited without blocking the loop."""
        await self._readable(slot, limit_s)
        try:
            return cast(tuple[str, Any], slot.conn.recv())
        except (EOFError, OSError) as exc:  # readable because its end closed: it died
            reason = _exit_reason(slot.process)
            log.warning("decode child %s died: %s", slot.process.pid, reason)
            raise DecodeCrashed(f"the decode child died ({reason})") from exc
        except Exception as exc:  # an answer that does not unpickle here
            raise SandboxError(f"unreadable answer from the decode child: {exc!r}") from exc

    async def _readable(self, slot: _Slot, limit_s: float) -> None:
        loop = asyncio.get_running_loop()
        readable = loop.create_future()

        def wake() -> None:
            if not readable.done():
                readable.set_result(None)

        fd = slot.conn.fileno()
        loop.add_reader(fd, wake)
        try:
            await asyncio.wait_for(readable, limit_s)
        except TimeoutError:
            log.warning("decode child %s passed its %g s deadline", slot.process.pid, limit_s)
            raise DecodeTimeout(f"no answer within {limit_s:g} s") from None
        finally:
            loop.remove_reader(fd)


def _exit_reason(process: BaseProcess) -> str:
    process.join(0.5)  # it has closed its pipe, so it is exiting or gone already
    code = process.exitcode
    if code is None:
        return "still exiting"
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit status {code}"


def _name(fn: Callable[..., Any]) -> str:
    """A short name for messages (a partial's repr would carry its arguments: a whole image)."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return str(getattr(fn, "__qualname__", type(fn).__name__))
