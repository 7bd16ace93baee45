"""The recorded trace as the simulator's CSV (``time,duration``, sim/trace.py), and ``--duration``'s reading. Pure.

The header comments say where the trace came from and how it was made (the source, its limits, what was
left out), so a trace passed around later still tells how far to trust it.
"""

from __future__ import annotations

import math
import re
import textwrap
from collections.abc import Iterable, Sequence

__all__ = ["format_trace", "parse_seconds"]

UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
WIDTH = 110


def parse_seconds(text: str) -> float:
    """``90``, ``90s``, ``10m``, ``1.5h``, ``1d`` as seconds; raises ValueError for anything else or for 0."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([smhd]?)\s*", text.lower())
    if match is None:
        raise ValueError(f"{text!r} is not a duration: a number of seconds, or with s, m, h or d (10m, 1.5h)")
    seconds = float(match.group(1)) * UNITS[match.group(2)]
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{text!r}: a duration must be more than 0")
    return seconds


def format_trace(tasks: Iterable[tuple[float, float]], header: Sequence[str]) -> str:
    """``# header`` lines (wrapped), then ``time,duration`` and one row per task, sorted by arrival, in
    milliseconds (a task faster than that is written ``0.000``, which the simulator reads)."""
    lines: list[str] = []
    for text in header:
        lines += [f"# {line}" for line in textwrap.wrap(text, WIDTH, subsequent_indent="  ")] or ["#"]
    lines.append("time,duration")
    lines += [f"{arrival:.3f},{duration:.3f}" for arrival, duration in sorted(tasks)]
    return "\n".join(lines) + "\n"
