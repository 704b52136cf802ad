"""Tests of LLMGrader's warm-up and cost figure, through litellm and a loopback server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from peb_mail.llm_grader import LLMGrader
from tests.model_server import (  # noqa: F401 (model_server_fixture registers the fixture)
    ModelServer,
    model_server_fixture,
)
from tests.test_llm_grader import SCENARIO, SUBMISSION, make_grader

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# Runs in a fresh interpreter, because this test process has already made
# litellm calls that loaded everything.
FIRST_GRADE_SCRIPT = """
import asyncio, json, sys
from pathlib import Path
from peb_mail.llm_grader import LLMGrader
from tests.model_server import ModelServer
from tests.test_llm_grader import SCENARIO, SUBMISSION

async def main():
    async with ModelServer() as server:
        grader = LLMGrader(
            "openai/test-model",
            api_base=server.api_base,
            api_key="test-key",
            prompts_dir=Path("prompts"),
        )
        await grader.warm_up()
        # litellm logs the warm-up call in a background task; serve too has
        # logged "ready" before the first grading arrives.
        await asyncio.sleep(0.2)
        before = set(sys.modules)
        await grader.grade(SCENARIO, SUBMISSION)
        print(json.dumps(sorted(set(sys.modules) - before)))

asyncio.run(main())
"""


async def test_warm_up_sends_no_request(model_server: ModelServer) -> None:
    grader = make_grader(model_server)

    await grader.warm_up()

    assert model_server.requests == []


async def test_warm_up_other_provider_offline(model_server: ModelServer) -> None:
    grader = make_grader(model_server, model="anthropic/claude-3-5-sonnet-20240620")

    await grader.warm_up()

    assert model_server.requests == []


async def test_warm_up_then_grade_once(model_server: ModelServer) -> None:
    grader = make_grader(model_server)
    await grader.warm_up()

    verdict = await grader.grade(SCENARIO, SUBMISSION)

    assert len(model_server.requests) == 1
    assert verdict.usage["calls"] == 1


def test_first_grade_imports_nothing() -> None:
    # A module imported during the first grading is work the warm-up missed.
    result = subprocess.run(
        [sys.executable, "-c", FIRST_GRADE_SCRIPT],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"LITELLM_LOCAL_MODEL_COST_MAP": "True", "PATH": ""},
    )

    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


async def test_priced_cost_matches_price_table(model_server: ModelServer) -> None:
    import litellm

    grader: LLMGrader = make_grader(model_server, model="openai/gpt-4o-mini")

    verdict = await grader.grade(SCENARIO, SUBMISSION)

    # ModelServer reports 120 prompt and 80 completion tokens.
    prompt_cost, completion_cost = litellm.cost_per_token(
        model="gpt-4o-mini", prompt_tokens=120, completion_tokens=80
    )
    assert verdict.usage["cost_usd"] == pytest.approx(prompt_cost + completion_cost)
    assert verdict.usage["cost_usd"] > 0
