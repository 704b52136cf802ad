"""Short run of scripts/soak.py: real serve processes, SMTP load and SIGKILLs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO

pytestmark = pytest.mark.slow


def figure(output: str, name: str) -> str | None:
    """Return the value of one row of the markdown table the script prints."""
    found = re.search(rf"^\| {re.escape(name)} \| (.*?) \|$", output, re.MULTILINE)
    return found.group(1) if found else None


def test_soak_small_run_passes(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "soak.py"),
            "--students=10",
            "--submissions=40",
            "--kills=4",
            "--processes=2",
            "--concurrency=10",
            "--max-minutes=0.9",
            f"--workdir={tmp_path / 'soak'}",
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    output = done.stdout
    assert figure(output, "accepted (250)") == "40", output
    assert (
        figure(output, "feedback delivered (distinct In-Reply-To at the sink)") == "40"
    ), output
    assert figure(output, "kills done") == "4", output
    assert done.returncode == 0, output + done.stderr
