"""The README's simulator table, held to the simulator: every row re-run and compared with the README's text.

The table is the README's main claim against KEDA, and it is deterministic (seed 1), so any change to the
engine, the simulator or the KEDA model that moves one of its figures must come with the README's new figures,
or this test fails and names the row. (The last round's regression of the kills without draining, 39 -> 141 on
long-tasks, was caught only by re-running the bench by hand: that column is in the table now.) The rows, their
settings and how a figure is written come from bench/bench_simulate.py, which prints the same table, so the
README, the bench and this test cannot disagree. The whole module takes 16 to 19 s here (2 CPUs shared, load 1
to 3), 7 s of it the 24-hour ``daily`` trace; every other row takes about a second or less.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from bench.bench_simulate import README_ROWS, Row, Run, readme_cells

README = Path(__file__).resolve().parent.parent / "README.md"
HEADER = "| trace | task wait p95, ours / KEDA |"


def readme_table(text: str) -> list[tuple[Row, list[str]]]:
    """The README's simulator table: per line, the row its first cell names (the trace, and ``N s grace`` where
    the pods' grace is not the default) and its figure cells."""
    lines = [line.strip() for line in text.splitlines()]
    start = next(i for i, line in enumerate(lines) if line.startswith(HEADER))
    table = []
    for line in lines[start + 2 :]:  # past the header and its separator
        if not line.startswith("|"):
            break
        first, *figures = (cell.strip() for cell in line.strip("|").split("|"))
        table.append((_row(first), figures))
    return table


def _row(cell: str) -> Row:
    trace = re.match(r"[a-z][a-z-]*", cell)
    assert trace is not None, f"a README row that names no trace: {cell!r}"
    grace = re.search(r"([\d,]+) s grace", cell)
    return Row(trace.group(), float(grace.group(1).replace(",", "")) if grace else None)


def test_the_readme_table_has_every_row_of_the_bench_in_order() -> None:
    assert [row for row, _ in readme_table(README.read_text())] == list(README_ROWS)


@pytest.mark.parametrize("row", README_ROWS, ids=lambda row: row.label)
def test_each_readme_row_is_what_the_simulator_gives(row: Row) -> None:
    written = dict(readme_table(README.read_text()))
    assert row in written, f"the README has no row for {row.label}"
    assert written[row] == readme_cells(Run(row)), f"README.md's row for {row.label} is stale: run bench_simulate"


def test_the_reader_finds_rows_and_figures_as_the_readme_writes_them() -> None:
    text = (
        "intro\n\n  | trace | task wait p95, ours / KEDA | cost | killed |\n  |---|---|---|---|\n"
        "  | long (6 h of tasks) | 11.4 s / 19,726 s | 72,566 / 61,995 (1.5x) | 0 / 31 / 89 |\n"
        "  | long, both sides with a 2,400 s grace | 11.4 s / 2,080 s | 72,566 / 55,570 (1.5x) | 0 / 31 / 0 |\n"
        "\n  | another | table |\n"
    )
    assert readme_table(text) == [
        (Row("long"), ["11.4 s / 19,726 s", "72,566 / 61,995 (1.5x)", "0 / 31 / 89"]),
        (Row("long", 2400.0), ["11.4 s / 2,080 s", "72,566 / 55,570 (1.5x)", "0 / 31 / 0"]),
    ]
