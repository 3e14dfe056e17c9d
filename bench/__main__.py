"""`python -m bench [--quick] [--rows 1,2,...] [--output FILE] [--json FILE]`.

Runs the benchmarks of the issue's table side by side with their anchors and prints the
table; a full run rewrites BENCHMARKS.md. ``--quick`` uses small inputs and short loops so CI
can run every row in about a minute (its verdicts mean nothing; its structure is checked).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType

from bench import inputs, ladder, report
from bench.model import Row
from bench.stack import Stack


@dataclass(frozen=True)
class Plan:
    """How big and how long each benchmark runs."""

    ladder_rounds: int
    batch: int  # uploads in rows 2 and 3
    latency_samples: int
    accept_s: float
    disk_files: int
    poll_s: float
    steady_s: float
    outage_s: float
    big_upload: int
    valkey_photos: int  # row 9
    catalog_photos: int  # row 10
    catalog_samples: int
    audit_photos: int  # row 11: this many, then 10 times as many
    audit_changed: int
    user_batch: int  # row 13
    user_samples: int  # row 14
    deletion_s: float  # row 16: the window of uploads and deletes
    deletion_victims: int
    resumable_mb: int  # row 17: the file's size
    resumable_rounds: int
    restore_photos: int  # row 18


FULL = Plan(
    7,
    24,
    15,
    8.0,
    40,
    3.0,
    30.0,
    60.0,
    200 * 2**20,
    10_000,
    1_000_000,
    2000,
    10_000,
    100,
    48,
    16,
    30.0,
    30,
    40,
    5,
    48,
)
QUICK = Plan(
    3, 6, 3, 1.5, 8, 0.75, 2.0, 3.0, 16 * 2**20, 300, 5_000, 200, 500, 10, 4, 2, 3.0, 3, 12, 2, 4
)
ALL_ROWS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18)


def _photos(quick: bool) -> dict[str, inputs.Photo]:
    """The inputs each row uses."""
    if quick:
        small = inputs.generated("quick", *inputs.QUICK_SIZES["quick"])
        return {"photo": small, "accept": small, "small": small, "big": small}
    return {
        "photo": inputs.generated("12mp", *inputs.SIZES["12mp"]),
        "accept": inputs.generated("12mp q94", *inputs.SIZES["12mp"], quality=94),
        "small": inputs.generated("small", 800, 600),
        "big": inputs.generated("24mp", *inputs.SIZES["24mp"]),
    }


def run(rows: tuple[int, ...], quick: bool) -> list[Row]:
    """Every selected row, in order; the stack is started once for rows 2 to 8."""
    plan, photos = (QUICK if quick else FULL), _photos(quick)
    done: list[Row] = []
    if 1 in rows:
        done.append(_announce(ladder.row(inputs.ladder_inputs(quick), plan.ladder_rounds)))
    if any(r > 1 for r in rows):
        # quick: a short backoff cap, or row 7's drain would wait out the default 30 s
        env = {"IMAGEPIPE_REPLICATION_BACKOFF_CAP_S": "1"} if quick else {}
        with Stack.running(env=env) as stack:
            for row in _stack_rows(rows, stack, plan, photos):
                done.append(_announce(row))
    return sorted(done, key=lambda r: r.number)


def _stack_rows(
    rows: tuple[int, ...], stack: Stack, plan: Plan, photos: dict[str, inputs.Photo]
) -> Iterator[Row]:
    from bench import (
        accept,
        catalog,
        defaults,
        deletion,
        latency,
        memory,
        polling,
        replication,
        restore,
        resumable,
        throughput,
    )

    user = defaults.user_photos(plan is QUICK)

    steps: list[tuple[tuple[int, ...], Callable[[], Row | tuple[Row, ...]]]] = [
        ((2, 3), lambda: throughput.rows(stack, photos["photo"], plan.batch)),
        ((4,), lambda: latency.row(stack, photos["photo"], plan.latency_samples)),
        ((5,), lambda: accept.row(stack, photos["accept"], plan.accept_s, plan.disk_files)),
        ((6,), lambda: polling.row(stack, photos["small"], plan.poll_s)),
        ((7,), lambda: replication.row(stack, photos["small"], plan.steady_s, plan.outage_s)),
        ((8,), lambda: memory.row(stack, photos["small"], photos["big"], plan.big_upload)),
        ((9,), lambda: catalog.valkey_row(stack, plan.valkey_photos)),
        ((10,), lambda: catalog.catalog_row(stack, plan.catalog_photos, plan.catalog_samples)),
        ((11,), lambda: catalog.audit_row(stack, plan.audit_photos, plan.audit_changed)),
        ((12,), lambda: defaults.poll_row(stack, user[0], plan.poll_s)),
        ((13,), lambda: defaults.throughput_row(stack, user, plan.user_batch)),
        ((14,), lambda: defaults.latency_row(stack, user, plan.user_samples)),
        ((15,), lambda: defaults.accept_row(stack, user, plan.accept_s)),
        (
            (16,),
            lambda: deletion.row(stack, photos["small"], plan.deletion_s, plan.deletion_victims),
        ),
        ((17,), lambda: resumable.row(stack, plan.resumable_mb, plan.resumable_rounds)),
        ((18,), lambda: restore.row(stack, photos["photo"], plan.restore_photos)),
    ]
    for numbers, step in steps:
        if set(numbers) & set(rows):
            stack.reset()
            for row in _attempt(numbers, step):
                if row.number in rows:
                    yield row


def _attempt(
    numbers: tuple[int, ...], step: Callable[[], Row | tuple[Row, ...]]
) -> tuple[Row, ...]:
    """Run one benchmark; a crash becomes a row marked not measured, and the run goes on."""
    try:
        result = step()
    except Exception as exc:  # one broken benchmark must not lose the others' numbers
        traceback.print_exc()
        reason = f"not measured: {type(exc).__name__}: {exc}"[:300]
        return tuple(Row(n, f"row {n}", "", "", ratio_text=reason) for n in numbers)
    return result if isinstance(result, tuple) else (result,)


_LAST = [time.monotonic()]  # when the previous row was announced


def _announce(row: Row) -> Row:
    now = time.monotonic()
    took, _LAST[0] = now - _LAST[0], now
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    if took >= 1:  # rows 2 and 3 come out of one benchmark
        row.details.append(f"\nThis benchmark took {took:.0f} s; load average after it: {load}.")
    print(f"[{row.number}] {row.title}: {row.ratio_text} ({row.verdict}, {took:.0f} s)", flush=True)
    return row


def _stop_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so the stack's servers and roles are stopped."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small inputs, short loops (CI)")
    parser.add_argument("--rows", default="", help="comma-separated row numbers (default: all)")
    parser.add_argument("--output", type=Path, help="markdown file (default: BENCHMARKS.md)")
    parser.add_argument("--json", type=Path, help="also write every raw number here")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run, print the table, write the report."""
    args = _parser().parse_args(argv)
    rows = tuple(int(r) for r in args.rows.split(",") if r.strip()) or ALL_ROWS
    _stop_on_sigterm()
    started = time.monotonic()
    results = run(rows, args.quick)
    elapsed = time.monotonic() - started
    print("\n" + report.console(results))
    output = args.output or (None if args.quick or rows != ALL_ROWS else Path("BENCHMARKS.md"))
    if output is not None:
        output.write_text(report.markdown(results, args.quick, elapsed))
        print(f"\nwrote {output}")
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1, default=str))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
