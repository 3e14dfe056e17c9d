"""Row 6: ticket polling rate, plain and conditional (304), against a bare endpoint.

All three run on the same API process with the same closed-loop clients, interleaved
(bare, ticket, 304, then again) so drift on a shared machine hits them alike. The ticket is
a queued one (the worker is not running): what a client polls while it waits, Retry-After
included.
"""

from __future__ import annotations

import asyncio

import httpx

from bench.inputs import Photo
from bench.loadgen import closed_loop
from bench.model import Row, table
from bench.stack import Stack, upload, wait_ready

CLIENTS = 8
SHARE = 0.6


async def measure(stack: Stack, photo: Photo, duration_s: float) -> dict[str, float]:
    """Requests per second of each endpoint, summed over two interleaved passes."""
    stack.start("api")
    counts = {"bare": 0.0, "ticket": 0.0, "ticket 304": 0.0}
    seconds = dict.fromkeys(counts, 0.0)
    try:
        async with httpx.AsyncClient(base_url=stack.url, timeout=30) as client:
            await wait_ready(client, stack)
            ticket_id = await upload(client, photo.data)
            etag = (await client.get(f"/tickets/{ticket_id}")).headers["etag"]
            requests = {
                "bare": (lambda c: c.get("/healthz"), (200,)),
                "ticket": (lambda c: c.get(f"/tickets/{ticket_id}"), (200,)),
                "ticket 304": (
                    lambda c: c.get(f"/tickets/{ticket_id}", headers={"If-None-Match": etag}),
                    (304,),
                ),
            }
            for _ in range(2):
                for name, (send, ok) in requests.items():
                    load = await closed_loop(
                        client,
                        send,
                        clients=CLIENTS,
                        duration_s=duration_s,
                        max_requests=int(duration_s * 5000),
                        ok=ok,
                    )
                    if load.failures:
                        raise RuntimeError(f"{name}: {load.failures} unexpected answers")
                    counts[name] += len(load.latencies)
                    seconds[name] += load.elapsed_s
    finally:
        stack.stop("api")
    return {name: counts[name] / seconds[name] for name in counts}


def row(stack: Stack, photo: Photo, duration_s: float) -> Row:
    """Row 6."""
    rates = asyncio.run(measure(stack, photo, duration_s))
    plain, conditional = rates["ticket"] / rates["bare"], rates["ticket 304"] / rates["bare"]
    details = table(
        ["endpoint", "requests/s", "ratio to bare"],
        [
            ["GET /healthz (bare)", f"{rates['bare']:.0f}", "1"],
            ["GET /tickets/{id}", f"{rates['ticket']:.0f}", f"{plain:.2f}"],
            [
                "GET /tickets/{id} + If-None-Match (304)",
                f"{rates['ticket 304']:.0f}",
                f"{conditional:.2f}",
            ],
        ],
    )
    details.append(f"\n{CLIENTS} closed-loop clients in this process (httpx), one API process.")
    worst = min(plain, conditional)
    return Row(
        6,
        "ticket polling",
        "a bare endpoint on the same server",
        f"≥ {SHARE} of the bare endpoint",
        worst,
        f"{plain:.2f} (200), {conditional:.2f} (304)",
        worst >= SHARE,
        details=details,
        data=rates,
    )
