"""Closed- and open-loop HTTP load, bounded in count and time, loopback only."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx

Request = Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]
MAX_IN_FLIGHT = 256  # an open loop that falls this far behind is overloaded: stop adding


@dataclass
class Load:
    """Latencies (ms) of answered requests, failures, and the wall time they took."""

    latencies: list[float] = field(default_factory=list)
    failures: int = 0
    elapsed_s: float = 0.0

    @property
    def rate(self) -> float:
        """Answered requests per second."""
        return len(self.latencies) / self.elapsed_s if self.elapsed_s else 0.0


async def _send(client: httpx.AsyncClient, request: Request, ok: tuple[int, ...]) -> bool:
    try:
        response = await request(client)
    except httpx.HTTPError:
        return False
    return response.status_code in ok


async def closed_loop(
    client: httpx.AsyncClient,
    request: Request,
    *,
    clients: int,
    duration_s: float,
    max_requests: int,
    ok: tuple[int, ...] = (200,),
) -> Load:
    """``clients`` loops each sending the next request when the last one is answered."""
    load = Load()
    deadline = time.monotonic() + duration_s
    budget = [max_requests]

    async def one_client() -> None:
        while time.monotonic() < deadline and budget[0] > 0:
            budget[0] -= 1
            sent = time.monotonic()
            if await _send(client, request, ok):
                load.latencies.append((time.monotonic() - sent) * 1000)
            else:
                load.failures += 1

    started = time.monotonic()
    await asyncio.gather(*(one_client() for _ in range(clients)))
    load.elapsed_s = time.monotonic() - started
    return load


async def open_loop(
    client: httpx.AsyncClient,
    request: Request,
    *,
    rate: float,
    duration_s: float,
    ok: tuple[int, ...] = (200,),
) -> Load:
    """Requests at a constant ``rate``, each timed from when it was scheduled to start.

    Timing from the schedule, not from the send, counts the wait of a request the client could
    not start on time (no coordinated omission).
    """
    load = Load()
    count = max(1, int(rate * duration_s))
    in_flight: set[asyncio.Task[None]] = set()
    started = time.monotonic()

    async def one(scheduled: float) -> None:
        if await _send(client, request, ok):
            load.latencies.append((time.monotonic() - scheduled) * 1000)
        else:
            load.failures += 1

    for i in range(count):
        scheduled = started + i / rate
        await asyncio.sleep(max(0.0, scheduled - time.monotonic()))
        if len(in_flight) >= MAX_IN_FLIGHT:
            load.failures += 1  # dropped: the server cannot keep up with this rate
            continue
        task = asyncio.create_task(one(scheduled))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    await asyncio.gather(*in_flight)
    load.elapsed_s = time.monotonic() - started
    return load
