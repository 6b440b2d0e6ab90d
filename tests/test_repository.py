"""The repository stands alone: no doc, docstring, config or comment points outside it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Workplace paths and notes that only exist beside this checkout.
OUTSIDE = re.compile(r"\.\./shared|/work/|data notes|model-contract|\.\./\.library")


def tracked_files() -> list[Path]:
    try:
        names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: cannot list the tracked files")
    return [
        ROOT / n for n in names if n.endswith((".py", ".md", ".yaml", ".toml", ".cfg")) and not n.startswith("tests/")
    ]


def test_nothing_points_outside_the_repository():
    offenders = []
    for path in tracked_files():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if OUTSIDE.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:100]}")
    assert not offenders, "\n".join(offenders)
