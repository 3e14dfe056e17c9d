"""`imagepipe migrate` and `imagepipe reindex`: what an operator runs on the catalog."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Collection

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from imagepipe.catalog.engine import create_engine
from imagepipe.catalog.migrate import migrate
from imagepipe.catalog.photos import PhotoCatalog
from imagepipe.catalog.reindex import Progress as Tick
from imagepipe.catalog.reindex import Reindexer, ReindexReport
from imagepipe.config import Settings
from imagepipe.storage.factory import backup_storage, primary_storage


async def migrate_catalog(settings: Settings) -> tuple[str | None, str]:
    """Apply every pending migration to the configured catalog; (revision before, after)."""
    engine = create_engine(settings)
    try:
        return await migrate(engine)
    finally:
        await engine.dispose()


def run_migrate(settings: Settings) -> int:
    """`imagepipe migrate`: say what changed; 0 when the schema is current."""
    before, after = asyncio.run(migrate_catalog(settings))
    if before == after:
        print(f"catalog schema is current (revision {after})")
    else:
        print(f"catalog schema migrated from {before or 'nothing'} to {after}")
    return 0


async def reindex(
    settings: Settings, progress: Tick | None = None, only: Collection[str] = ()
) -> ReindexReport:
    """Rebuild the catalog from the manifests on primary and backup (of the photos named)."""
    engine = create_engine(settings)
    primary, backup = primary_storage(settings), backup_storage(settings)
    try:
        return await Reindexer(PhotoCatalog(engine), primary, backup, progress, only).run()
    finally:
        await backup.close()
        await primary.close()
        await engine.dispose()


def counts_table(title: str, rows: list[tuple[str, int]]) -> Table:
    """An operator command's summary: what, and how many (zeros included: a clean run says so)."""
    table = Table(title=title)
    table.add_column("what")
    table.add_column("count", justify="right")
    for what, count in rows:
        table.add_row(what, str(count))
    return table


def summary(report: ReindexReport) -> Table:
    """What reindex did, as a table."""
    rows = [
        ("photos from primary's manifests", report.from_primary),
        ("photos from backup's manifests (primary lacks them)", report.from_backup),
        ("objects already in backup", report.objects_in_backup),
        ("objects the audit will copy to backup", report.objects_to_copy),
        ("manifests that did not parse", len(report.unreadable)),
        ("deleted photos (tombstoned) not indexed", len(report.deleted)),
    ]
    return counts_table(f"reindex: {report.photos} photos", rows)


def run_reindex(settings: Settings) -> int:
    """`imagepipe reindex`: a progress bar, then the summary; 1 if a manifest did not parse."""
    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("reindexing", total=None)
        report = asyncio.run(reindex(settings, lambda done: bar.update(task, completed=done)))
    Console().print(summary(report))
    for key in report.unreadable:
        print(f"unreadable manifest: {key}", file=sys.stderr)
    return 1 if report.unreadable else 0
