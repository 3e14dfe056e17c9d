"""The benchmark suite still runs: `python -m bench --quick`, checked for shape, never for speed.

Times on a shared machine say nothing in a unit test; `make bench` is where speed lives. This
only proves that every row runs end to end and reports sane, complete numbers.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.__main__ import ALL_ROWS
from bench.notes import NOTES

pytestmark = [pytest.mark.bench, pytest.mark.timeout(600)]
ROOT = Path(__file__).resolve().parent.parent
FIGURE = re.compile(r"(?<![\w.])\d+(?:\.\d+)?")  # 241, 0.97; not the 3 of S3 or MD5's 5


def figures(text: str) -> set[str]:
    """Every number written in ``text``."""
    return set(FIGURE.findall(text))


def test_the_notes_quote_no_figure() -> None:
    """The notes go into every run's report: a measured figure in them is stale next run."""
    rows = {str(n) for n in ALL_ROWS}  # "as in row 2" names a row, not a measurement
    for number, note in NOTES.items():
        assert figures(note) <= rows, f"note {number} quotes {sorted(figures(note) - rows)}"


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict[str, Any]], str]:
    """Run the quick suite once: (rows as JSON, the markdown report)."""
    out = tmp_path_factory.mktemp("bench")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--json",
            str(out / "rows.json"),
            "--output",
            str(out / "report.md"),
        ],
        cwd=ROOT,
        check=True,
        timeout=540,
    )
    return json.loads((out / "rows.json").read_text()), (out / "report.md").read_text()


def test_every_row_of_the_table_is_measured(quick: tuple[list[dict[str, Any]], str]) -> None:
    rows, _ = quick
    assert [r["number"] for r in rows] == list(ALL_ROWS)
    for row in rows:
        assert row["met"] in (True, False), row["title"]
        assert math.isfinite(row["ratio"]) and row["ratio"] >= 0, row["title"]
        assert row["ratio_text"] and row["goal"] and row["anchor"]


def test_the_report_has_the_machine_the_summary_and_every_row(
    quick: tuple[list[dict[str, Any]], str],
) -> None:
    rows, markdown = quick
    assert "## Machine" in markdown and "libvips" in markdown and "## Summary" in markdown
    for row in rows:
        assert f"## {row['number']}. {row['title']}" in markdown
    assert "Quick run" in markdown


def test_the_ladder_row_compares_like_with_like(quick: tuple[list[dict[str, Any]], str]) -> None:
    ladder = quick[0][0]["data"]
    contenders = {key.split(" | ")[1] for key in ladder["cpu_ms"]}
    assert contenders == {"imagepipe", "libvips", "naive Pillow"}
    assert all(len(v) >= 3 and min(v) > 0 for v in ladder["cpu_ms"].values())
    for per_photo in ladder["psnr"].values():
        assert set(per_photo["imagepipe"]) == {"sq", "t", "s", "m", "l", "xl"}
        assert min(per_photo["imagepipe"].values()) > 30  # same pictures, not just same sizes
    assert set(ladder["profile_ms"]) >= {"decode", "cascade", "encode"}


def test_stack_rows_report_their_samples(quick: tuple[list[dict[str, Any]], str]) -> None:
    rows = {r["number"]: r["data"] for r in quick[0]}
    assert rows[2]["worker_per_s"] > 0 and all(c > 0 for c in rows[2]["ceiling_per_s"])
    assert rows[2]["worker_cpu_ms"]["decode children"] > 0  # the verdict's numerator
    assert {"accepted", "polled", "pushed", "job"} <= set(rows[4]["samples_ms"][0])
    assert rows[5]["closed"]["latencies"] and rows[5]["open"]["latencies"]
    assert set(rows[6]["per_s"]) == set(rows[6]["api_cpu_ms"]) == {"bare", "ticket", "ticket 304"}
    assert rows[7]["lags_s"] and rows[7]["backlog"] >= 0
    assert rows[8]["api_peak_mb"] >= rows[8]["api_baseline_mb"] > 0


def test_the_rows_of_the_defaults_report_their_samples(
    quick: tuple[list[dict[str, Any]], str],
) -> None:
    rows = {r["number"]: r["data"] for r in quick[0]}
    assert set(rows[12]["per_s"]) == {"bare", "ticket", "ticket 304"}
    assert all(len(rates) == 3 and min(rates) > 0 for rates in rows[12]["per_s"].values())
    assert rows[13]["per_s"] > 0 and len(rows[13]["anchor_per_s"]) == 2
    assert rows[13]["cpu_ms"]["decode children"] > 0 and "postgres (catalog)" in rows[13]["cpu_ms"]
    assert {"libvips", "accepted", "polled", "pushed", "job"} <= set(rows[14]["samples_ms"][0])
    assert rows[15]["closed"]["latencies_ms"] and rows[15]["open"]["latencies_ms"]


def test_the_report_s_prose_quotes_only_what_this_run_measured(
    quick: tuple[list[dict[str, Any]], str],
) -> None:
    _, markdown = quick
    notes = [note.strip() for note in NOTES.values()]
    measured = markdown
    for note in notes:
        assert note in markdown
        measured = measured.replace(note, "")
    quoted = figures("\n".join(notes))
    assert quoted <= figures(measured), f"not from this run: {sorted(quoted - figures(measured))}"
