"""A tiny Dockerfile reader for the image tests (no Docker engine here: the images are built elsewhere)."""

from __future__ import annotations

import re


def instructions(text: str) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs, with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    lines = [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def stages(text: str) -> dict[str, list[tuple[str, str]]]:
    """The instructions of each named stage, by name (``FROM image AS name``)."""
    found: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for op, arg in instructions(text):
        if op == "FROM":
            current = [(op, arg)]
            name = re.search(r"\bAS\s+(\S+)", arg, flags=re.I)
            found[name.group(1) if name else f"stage-{len(found)}"] = current
        else:
            current.append((op, arg))
    return found


def image(text: str, target: str) -> list[tuple[str, str]]:
    """Everything that goes into ``target``: its stage after the stages it builds FROM, and each stage that it
    COPYs --from (their instructions, as what lands in the image comes out of them)."""
    named = stages(text)
    steps: list[tuple[str, str]] = []
    for op, arg in named[target]:
        if op == "FROM":
            parent = arg.split()[0]
            if parent in named:
                steps += image(text, parent)
        elif op == "COPY" and arg.startswith("--from="):
            steps += image(text, arg.split()[0].removeprefix("--from="))
        steps.append((op, arg))
    return steps
