"""What `imagepipe upload` shows: progress on stderr, then a table or JSON on stdout."""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from imagepipe.client.upload import Options, Upload

PIPED_WIDTH = 240
STATUS_STYLE = {"completed": "green", "failed": "red", "refused": "red", "error": "yellow"}


class _Live:
    """A rich Progress on stderr that draws only when asked to."""

    def __init__(self, enabled: bool, *columns: Any) -> None:
        self.progress = Progress(*columns, console=Console(stderr=True), disable=not enabled)

    def __enter__(self) -> Self:
        self.progress.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.progress.stop()


class Bars(_Live):
    """A bar per file in flight (its bytes sent) and one over every byte of every file."""

    def __init__(self, items: Sequence[Upload], enabled: bool) -> None:
        columns = (TextColumn("{task.description:<28.28}"), BarColumn(), DownloadColumn())
        super().__init__(enabled, *columns, TransferSpeedColumn(), TimeRemainingColumn())
        total = sum(item.size for item in items)
        self.overall = self.progress.add_task(f"{len(items)} files", total=total)
        self.tasks: dict[Path, TaskID] = {}
        self.sent_so_far: dict[Path, int] = {}

    @contextmanager
    def file(self, item: Upload) -> Iterator[None]:
        """Show the file's own bar while it is being sent."""
        self.tasks[item.path] = self.progress.add_task(item.path.name, total=item.size)
        try:
            yield
        finally:
            self.progress.remove_task(self.tasks.pop(item.path))

    def sent(self, item: Upload, count: int) -> None:
        """count more bytes of the file went out."""
        self.progress.advance(self.tasks[item.path], count)
        self.progress.advance(self.overall, count)
        self.sent_so_far[item.path] = self.sent_so_far.get(item.path, 0) + count

    def restart(self, item: Upload, at: int = 0) -> None:
        """A new try sends the file again from byte ``at``: its first, or where the server
        has it to (a resumed upload's bar starts there)."""
        self.progress.advance(self.overall, at - self.sent_so_far.pop(item.path, 0))
        self.progress.reset(self.tasks[item.path], total=item.size, completed=at)
        self.sent_so_far[item.path] = at


class Waiting(_Live):
    """One bar: how many tickets reached completed or failed."""

    def __init__(self, total: int, enabled: bool) -> None:
        columns = (BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        super().__init__(enabled, TextColumn("processing"), *columns)
        self.total = total
        self.task = self.progress.add_task("processing", total=total)

    def update(self, still_waiting: int) -> None:
        """Redraw from the number of tickets not yet terminal."""
        self.progress.update(self.task, completed=self.total - still_waiting)


def report(
    items: Sequence[Upload],
    skipped: Sequence[Path],
    options: Options,
    code: int,
    error: str | None = None,
) -> dict[str, Any]:
    """The run as one JSON-ready document (what --json prints; the table shows the same)."""
    return {
        "server": options.server,
        "exit_code": code,
        "error": error,
        "counts": dict(Counter(item.status for item in items)),
        "files": [_file(item) for item in items],
        "skipped": [str(path) for path in skipped],
    }


def _file(item: Upload) -> dict[str, Any]:
    return {
        "path": str(item.path),
        "bytes": item.size,
        "status": item.status,
        "ticket_id": item.ticket_id,
        "photo_id": item.photo_id,
        "error": item.error,
        "sizes": item.sizes,
        "idempotency_key": item.key,
        "tries": item.tries,
        "upload_url": item.upload_url,
        "resumed_from": item.resumed_from,
        "seconds": round(item.seconds, 3),
    }


def show(document: dict[str, Any], as_json: bool, out: TextIO | None = None) -> None:
    """Print the document: JSON for machines, a table (and notes on stderr) for people."""
    out = out or sys.stdout  # looked up now: tests and callers may have replaced it
    if as_json:
        json.dump(document, out, indent=2)
        out.write("\n")
        return
    if document["files"]:
        # piped to a file, a wide table greps better than one folded to 80 columns
        Console(file=out, width=None if out.isatty() else PIPED_WIDTH).print(
            _table(document["files"])
        )
    notes = Console(stderr=True)
    if document["counts"]:
        notes.print(", ".join(f"{n} {status}" for status, n in document["counts"].items()))
    if skipped := document["skipped"]:
        notes.print(f"skipped {len(skipped)} file(s) that are not images:")
        for path in skipped:
            notes.print(Text(f"  {path}"))  # Text, not markup: a name may hold [brackets]
    if document["error"]:
        notes.print(Text(f"imagepipe upload: {document['error']}", style="red"))


def _table(files: list[dict[str, Any]]) -> Table:
    table = Table()
    table.add_column("file", overflow="fold")  # folded, never cut: the name is the point
    table.add_column("ticket", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("bytes", justify="right", no_wrap=True)
    table.add_column("sizes")
    table.add_column("seconds", justify="right", no_wrap=True)
    table.add_column("note", overflow="fold")
    for row in files:
        status = row["status"]
        table.add_row(
            Text(row["path"]),  # Text, not markup: a file name may hold [brackets]
            row["ticket_id"] or "",
            Text(status, style=STATUS_STYLE.get(status, "cyan")),
            f"{row['bytes']:,}",
            " ".join(row["sizes"]),
            f"{row['seconds']:.1f}",
            Text(row["error"] or ""),
        )
    return table
