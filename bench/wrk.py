"""A small native-speed HTTP/1.1 load generator, run in a process of its own (like wrk).

The Python clients of the older rows (httpx, in the benchmark's own process) cost more CPU
per request than the server they measure, so on a few cores they, not the server, set the
rate. This one sends prepared request bytes over keep-alive connections on uvloop and reads
only the status line, the headers and ``Content-Length`` bytes of each answer: a few tens
of microseconds per request, in a process that shares no event loop with anything else.

    python -m bench.wrk URL_PATH --port P --connections 32 --seconds 3        (closed loop)
    python -m bench.wrk /photos --port P --method POST --body a.jpg --rate 40 (open loop)

It prints one JSON object: requests answered, failures, seconds, and every latency in ms
(open loop: from each request's scheduled start, so a late start counts).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

MAX_CONNECTIONS = 256  # an open loop that needs more than this is overloaded


@dataclass
class Result:
    """What one run saw."""

    latencies_ms: list[float] = field(default_factory=list)
    failures: int = 0
    seconds: float = 0.0
    statuses: dict[int, int] = field(default_factory=dict)


class Connection:
    """One keep-alive connection: send a prepared request, read one answer."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        """A connection to the server on loopback."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**20)
        return cls(reader, writer)

    async def exchange(self, request: bytes) -> int:
        """Send ``request``; the answer's status once its whole body is read."""
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
            elif name.lower() == b"transfer-encoding":
                raise ValueError("chunked answers are not supported")
        if length:
            await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        """Close the socket."""
        self.writer.close()


def requests_for(args: argparse.Namespace) -> list[bytes]:
    """The prepared request bytes, one per body (or the one bodiless request)."""
    bodies: list[bytes | None] = [Path(p).read_bytes() for p in args.body] or [None]
    made = []
    for body in bodies:
        lines = [f"{args.method} {args.path} HTTP/1.1", f"Host: 127.0.0.1:{args.port}"]
        lines += args.header
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        made.append(("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b""))
    return made


def _record(result: Result, status: int, ok: Sequence[int], started: float) -> None:
    result.statuses[status] = result.statuses.get(status, 0) + 1
    if status in ok:
        result.latencies_ms.append((time.perf_counter() - started) * 1000)
    else:
        result.failures += 1


async def closed_loop(
    port: int, requests: list[bytes], connections: int, seconds: float, ok: Sequence[int]
) -> Result:
    """``connections`` loops, each sending its next request as soon as the last is answered."""
    result = Result()
    pool = [await Connection.open(port) for _ in range(connections)]
    deadline = time.perf_counter() + seconds

    async def loop(conn: Connection, turn: int) -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            _record(result, await conn.exchange(requests[turn % len(requests)]), ok, started)
            turn += connections

    begun = time.perf_counter()
    await asyncio.gather(*(loop(conn, i) for i, conn in enumerate(pool)))
    result.seconds = time.perf_counter() - begun
    for conn in pool:
        conn.close()
    return result


async def open_loop(
    port: int, requests: list[bytes], rate: float, seconds: float, ok: Sequence[int]
) -> Result:
    """Requests at a constant rate, each timed from its scheduled start; new connections as
    needed (a request never waits for another's answer to start)."""
    result, idle = Result(), [await Connection.open(port)]
    tasks: set[asyncio.Task[None]] = set()

    async def one(turn: int, scheduled: float) -> None:
        conn = idle.pop() if idle else await Connection.open(port)
        _record(result, await conn.exchange(requests[turn % len(requests)]), ok, scheduled)
        idle.append(conn)

    begun = time.perf_counter()
    for turn in range(max(1, int(rate * seconds))):
        scheduled = begun + turn / rate
        await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
        if len(tasks) >= MAX_CONNECTIONS:
            result.failures += 1  # dropped: the server is not keeping up with this rate
            continue
        task = asyncio.create_task(one(turn, scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    result.seconds = time.perf_counter() - begun
    for conn in idle:
        conn.close()
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.wrk", description=__doc__)
    parser.add_argument("path")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--method", default="GET")
    parser.add_argument("--header", action="append", default=[], help="'Name: value'")
    parser.add_argument("--body", action="append", default=[], help="a file; several rotate")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rate", type=float, default=0.0, help="open loop at this rate")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--ok", default="200", help="comma-separated statuses that count")
    return parser


async def run(args: argparse.Namespace) -> Result:
    """The loop the arguments ask for."""
    requests, ok = requests_for(args), [int(s) for s in args.ok.split(",")]
    if args.rate > 0:
        return await open_loop(args.port, requests, args.rate, args.seconds, ok)
    return await closed_loop(args.port, requests, args.connections, args.seconds, ok)


def main(argv: list[str] | None = None) -> int:
    """Run one load and print what it saw as JSON."""
    args = _parser().parse_args(argv)
    try:
        import uvloop

        result = uvloop.run(run(args))
    except ImportError:  # pragma: no cover - uvicorn[standard] brings uvloop
        result = asyncio.run(run(args))
    json.dump(vars(result), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
