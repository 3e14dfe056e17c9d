"""`imagepipe restore`: what an operator runs when primary is lost (see `replication.restore`).

Copies backup back to primary with a progress bar, then migrates and reindexes the catalog
from the restored manifests, and prints both summaries. Exit 0 only when every object was
restored and verified; 1 on anything missing, mismatched or failed (run it again: it goes on
from what is already on primary).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Collection

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from imagepipe.catalog.commands import counts_table, migrate_catalog, reindex
from imagepipe.catalog.commands import summary as reindex_summary
from imagepipe.catalog.reindex import ReindexReport
from imagepipe.config import Settings
from imagepipe.replication.restore import Progress as Tick
from imagepipe.replication.restore import Restorer, RestoreReport
from imagepipe.storage.factory import backup_storage, primary_storage


async def restore(
    settings: Settings, only: Collection[str] = (), progress: Tick | None = None
) -> RestoreReport:
    """Copy backup's objects (of every photo, or of the ones named) back to primary."""
    primary, backup = primary_storage(settings), backup_storage(settings)
    try:
        return await Restorer(primary, backup, only, progress).run()
    finally:
        await backup.close()
        await primary.close()


async def restore_and_reindex(
    settings: Settings, only: Collection[str] = (), progress: Tick | None = None
) -> tuple[RestoreReport, ReindexReport]:
    """The restore, then the catalog brought to this schema and rebuilt from the manifests."""
    restored = await restore(settings, only, progress)
    await migrate_catalog(settings)
    return restored, await reindex(settings, only=only)


def summary(report: RestoreReport) -> Table:
    """What restore did, as a table."""
    rows = [
        ("photos restored whole (original, sizes, manifest)", report.photos),
        (
            "originals of photos that never completed (the audit reprocesses them)",
            report.originals_only,
        ),
        ("deleted photos (tombstoned) not restored", report.deleted),
        ("tombstones restored", report.tombstones),
        ("objects copied", report.copied),
        ("bytes copied", report.copied_bytes),
        ("objects primary already held, verified", report.present),
        ("objects missing from backup", len(report.missing)),
        ("objects whose bytes did not match", len(report.mismatched)),
        ("objects that failed (storage errors)", len(report.failed)),
    ]
    return counts_table(f"restore: {report.photos} photos whole on primary", rows)


def run_restore(settings: Settings, only: Collection[str] = ()) -> int:
    """A progress bar, then both summaries; 1 if any object was not restored and verified."""
    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("restoring", total=len(only) or None)
        tick = lambda done: bar.update(task, completed=done)  # noqa: E731
        restored, reindexed = asyncio.run(restore_and_reindex(settings, only, tick))
    Console().print(summary(restored))
    Console().print(reindex_summary(reindexed))
    for line in [*restored.missing, *restored.mismatched, *restored.failed]:
        print(f"not restored: {line}", file=sys.stderr)
    return 0 if restored.ok and not reindexed.unreadable else 1
