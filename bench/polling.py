"""Row 6: ticket polling rate, plain and conditional (304), against a bare endpoint.

All three run on the same API process with the same closed-loop clients, interleaved
(bare, ticket, 304, then again) so drift on a shared machine hits them alike. The ticket is
a queued one (the worker is not running): what a client polls while it waits, Retry-After
included.
"""

from __future__ import annotations

import asyncio

from bench.inputs import Photo
from bench.loadgen import closed_loop
from bench.model import Row, table
from bench.stack import Stack, cpu_s, upload

CLIENTS = 8
PASSES = 3  # interleaved: bare, ticket, 304, bare, ...
SHARE = 0.6


async def measure(
    stack: Stack, photo: Photo, duration_s: float
) -> tuple[dict[str, float], dict[str, float]]:
    """Per endpoint: requests per second, and API CPU ms per request (interleaved passes)."""
    stack.start("api")
    counts = {"bare": 0.0, "ticket": 0.0, "ticket 304": 0.0}
    seconds = dict.fromkeys(counts, 0.0)
    api_cpu = dict.fromkeys(counts, 0.0)
    try:
        async with stack.client(30) as client:
            await stack.wait_ready()
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
            for _ in range(PASSES):
                for name, (send, ok) in requests.items():
                    cpu_before = cpu_s(stack.pid("api"))
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
                    api_cpu[name] += cpu_s(stack.pid("api")) - cpu_before
    finally:
        stack.stop("api")
    rates = {name: counts[name] / seconds[name] for name in counts}
    return rates, {name: 1000 * api_cpu[name] / counts[name] for name in counts}


def row(stack: Stack, photo: Photo, duration_s: float) -> Row:
    """Row 6: capacity by the API's CPU per request; the client-bound rates beside it."""
    rates, cpu = asyncio.run(measure(stack, photo, duration_s))
    names = {
        "bare": "GET /healthz (bare)",
        "ticket": "GET /tickets/{id}",
        "ticket 304": "GET /tickets/{id} + If-None-Match (304)",
    }
    # One API process saturates at 1 / (CPU per request); the clients, Python in this same
    # process on the same cores, run out first, so their rates understate the difference.
    capacity = {key: cpu["bare"] / cpu[key] for key in names}
    details = table(
        ["endpoint", "API CPU ms per request", "capacity ÷ bare", "requests/s seen", "seen ÷ bare"],
        [
            [
                label,
                f"{cpu[key]:.2f}",
                f"{capacity[key]:.2f}",
                f"{rates[key]:.0f}",
                f"{rates[key] / rates['bare']:.2f}",
            ]
            for key, label in names.items()
        ],
    )
    details.append(
        f"\n{CLIENTS} closed-loop clients in this process (httpx), one API process, "
        f"{PASSES} interleaved passes of {duration_s:g} s per endpoint."
    )
    worst = min(capacity["ticket"], capacity["ticket 304"])
    return Row(
        6,
        "ticket polling",
        "a bare endpoint on the same server",
        f"≥ {SHARE} of the bare endpoint",
        worst,
        f"{capacity['ticket']:.2f} (200), {capacity['ticket 304']:.2f} (304) of bare by API CPU "
        f"per request (client-bound rates: {rates['ticket'] / rates['bare']:.2f}, "
        f"{rates['ticket 304'] / rates['bare']:.2f})",
        worst >= SHARE,
        details=details,
        data={"per_s": rates, "api_cpu_ms": cpu},
    )
