"""scripts/bench.py --quick runs to the end and prints every figure.

Only the presence of each figure is checked, never its value: timings on
shared machines are too noisy to pass or fail a test.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from .conftest import REPO

pytestmark = pytest.mark.slow

FIGURES = [
    *(
        f"ingest_{size}_{sessions}sessions_{mode}_{kind}"
        for size in ("2KB", "50KB")
        for sessions in (1, 10, 50)
        for mode in ("new", "reused")
        for kind in ("bare", "durable_1p", "ratio_1p", "durable_2p", "ratio_2p")
    ),
    *(
        f"pipeline_{run}_{name}"
        for run in ("offline_1p_20", "llm_2p_20")
        for name in ("submissions", "missing", "p50", "p95", "p99")
    ),
    "grading_rate",
    "grading_ideal",
    "grading_fraction",
    "rss_offline_idle",
    "rss_offline_loaded",
    "rss_llm_loaded",
    "rss_queued_growth",
    "startup_first_greeting",
    "startup_first_greeting_llm",
    "first_grading_latency",
    "tenth_grading_latency",
    "first_grading_latency_after_warm_up",
]
FIGURE_RE = re.compile(r"^FIGURE (\S+) (-?\d+\.\d+) \S+", re.MULTILINE)


@pytest.mark.timeout(150)
def test_bench_quick_prints_figures() -> None:
    run = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench.py"), "--quick", "--no-write"],
        capture_output=True,
        text=True,
        timeout=140,
        cwd=REPO,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    printed = dict(FIGURE_RE.findall(run.stdout))
    for name in FIGURES:
        assert name in printed, f"figure {name} missing from the output"
    for heading in ("SMTP ingest", "Pipeline latency", "Grading throughput"):
        assert f"### {heading}" in run.stdout, f"table {heading!r} missing"
