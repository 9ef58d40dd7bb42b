"""The Makefile's targets as a user runs them (``make -n`` prints the commands without running them)."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.mark.skipif(shutil.which("make") is None, reason="make not found")
def test_make_test_reports_why_each_skipped_test_was_skipped():
    printed = subprocess.run(["make", "-n", "test"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    (pytest_line,) = [line for line in printed.splitlines() if "bin/pytest" in line]

    assert "-rs" in shlex.split(pytest_line)
