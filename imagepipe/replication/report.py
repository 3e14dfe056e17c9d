"""`imagepipe audit`: one pass now, with a progress bar and a summary table (or --json)."""

from __future__ import annotations

import asyncio
import json

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from imagepipe.config import Settings
from imagepipe.replication.audit import FINDING_KINDS, AuditReport, audit_once


def summary_table(report: AuditReport) -> Table:
    """Every finding kind with its count (zeros included: a clean run says so)."""
    scope = "full" if report.full else f"changes and {report.slices} slices"
    title = f"audit ({scope}): {report.photos} photos, {report.objects} objects"
    table = Table(title=title)
    table.add_column("finding")
    table.add_column("count", justify="right")
    counts = report.counts()
    for kind in FINDING_KINDS:
        table.add_row(kind.replace("_", " "), str(counts.get(kind, 0)))
    return table


def run_audit(settings: Settings, as_json: bool, full: bool = False) -> int:
    """Run one pass; exit 0 when nothing needed repair, 1 when something did."""
    if as_json:
        report = asyncio.run(audit_once(settings, full=full))
        print(json.dumps(report.to_json(), indent=2))
    else:
        console = Console(stderr=True)
        with Progress(console=console, transient=True) as bar:
            task = bar.add_task("auditing", total=None)
            report = asyncio.run(
                audit_once(
                    settings,
                    lambda done, total: bar.update(task, completed=done, total=total),
                    full=full,
                )
            )
        Console().print(summary_table(report))
    return 1 if report.counts() else 0
