"""The readings of BENCHMARKS.md: how each row is measured and what its numbers mean.

Kept apart from the code that measures, so the prose can be read (and reviewed) as prose.
Numbers belong in the tables the benchmarks write; these notes say why.
"""

from __future__ import annotations

NOTES: dict[int, str] = {
    0: """
`make bench` installs the `bench` extra (Pillow's anchors need nothing more; libvips comes as
`pyvips` + `pyvips-binary`), then runs `python -m bench` and rewrites this file. Set
`IMAGEPIPE_CORPUS` to a folder of real photos to add its JPEGs of 2 MP and more to row 1
(CI points it at `../shared/testdata`). `make bench-quick` (`python -m bench --quick`) runs
every row on small inputs in about a minute and writes nothing: CI runs it, and
`tests/test_bench.py` checks its structure, so the suite cannot rot. `python -m bench --rows 1,5`
runs some rows only; `--json FILE` keeps the raw samples.
""",
}
