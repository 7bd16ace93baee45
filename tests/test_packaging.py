"""Installing the package is quiet: the first thing a new user runs (`make venv`, `pip install`) prints no
warning of ours, and the wheel says its license the way current packaging tools read it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.conftest import REPO


def test_the_wheel_builds_without_warnings_and_declares_its_license(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "operator", source / "operator", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert built.returncode == 0, built.stderr
    # pip's own notes about the machine's index settings are not ours; the build backend's warnings are.
    ours = [line for line in built.stderr.splitlines() if not line.startswith("WARNING: Location")]
    assert not [line for line in ours if "deprecat" in line.lower() or "Warning" in line], "\n".join(ours)
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        headers = archive.read(metadata).decode().split("\n\n", 1)[0].splitlines()
    assert "License-Expression: Apache-2.0" in headers
    assert not [h for h in headers if h.startswith("License:")], "the deprecated License field is gone"
