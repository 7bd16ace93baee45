"""The benchmark convention: each ``bench/bench_*.py`` script measures, prints its figures, and appends
them to ``docs/benchmarks.md`` with the date, the machine and the exact command, via :func:`record`.

Figures are ratios against a baseline measured in the same run wherever a goal is a comparison.
"""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

BENCHMARKS_MD = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def machine() -> str:
    cpus = os.cpu_count() or 0
    try:
        with open("/proc/meminfo") as meminfo:
            kib = int(meminfo.readline().split()[1])
        memory = f"{kib / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError, IndexError):
        memory = "unknown memory"
    return f"{platform.machine()}, {cpus} CPUs, {memory}, Python {platform.python_version()}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def record(title: str, body: str, argv: Sequence[str] | None = None, path: Path = BENCHMARKS_MD) -> str:
    """Print ``body`` and append it to docs/benchmarks.md under a dated heading. Returns the section."""
    command = shlex.join(["python", "-m", *_module_argv(argv if argv is not None else sys.argv)])
    today = datetime.date.today().isoformat()
    section = f"\n## {title}\n\n{today} · {machine()} · `{command}`\n\n{body.strip()}\n"
    print(section)
    if not path.exists():
        path.write_text("# Benchmarks\n\nAppended by the scripts in `bench/` (see `bench/README.md`).\n")
    with path.open("a") as handle:
        handle.write(section)
    return section


def _module_argv(argv: Sequence[str]) -> list[str]:
    script = Path(argv[0]) if argv else Path("bench")
    module = f"bench.{script.stem}" if script.suffix == ".py" else str(script)
    return [module, *argv[1:]]
