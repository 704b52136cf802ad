"""Tests of the calibration run with the offline grader and replayed model responses."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from peb_mail.calibrate import (
    CalibrationCase,
    CalibrationReport,
    load_cases,
    run_calibration,
)
from peb_mail.errors import ConfigError
from peb_mail.llm_grader import LLMGrader
from peb_mail.models import Scenario
from peb_mail.offline_grader import OfflineGrader
from peb_mail.precheck import PrecheckedGrader
from peb_mail.scenarios import load_scenarios
from tests.model_server import (  # noqa: F401 (model_server_fixture registers the fixture)
    ModelServer,
    model_server_fixture,
    verdict_content,
)

REPO = Path(__file__).resolve().parent.parent
CALIBRATION = REPO / "tests" / "calibration"
CASES = load_cases(CALIBRATION / "cases.json")
SCENARIOS = load_scenarios(REPO / "scenarios")
NEW_EMAIL_SCENARIO = next(item for item in SCENARIOS if item.type == "initiate")


def recorded_content() -> dict[str, str]:
    """Map each case's email text to the recorded model response for it."""
    by_text: dict[str, str] = {}
    for case in CASES:
        record = json.loads(
            (CALIBRATION / "recorded" / f"{case.id}.json").read_text("utf-8")
        )
        by_text[case.submission.text] = record["content"]
    return by_text


def replay(by_text: dict[str, str]) -> Any:
    def content_for(request: dict[str, Any]) -> str:
        user = request["messages"][-1]["content"]
        for text, content in by_text.items():
            if text in user:
                return content
        raise AssertionError("request matches no calibration case")

    return content_for


def llm_grader(server: ModelServer) -> LLMGrader:
    return LLMGrader(
        "openai/recorded-model",
        api_base=server.api_base,
        api_key="test-key",
        prompts_dir=REPO / "prompts",
        timeout_s=5.0,
    )


def test_cases_cover_three_scenarios() -> None:
    scenario_ids = {case.scenario for case in CASES}
    assert len(scenario_ids) >= 3
    assert scenario_ids <= {scenario.id for scenario in SCENARIOS}
    for scenario_id in scenario_ids:
        levels = sorted(case.level for case in CASES if case.scenario == scenario_id)
        assert levels == ["adequate", "excellent", "poor"]


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
async def test_offline_case_in_band(case: CalibrationCase) -> None:
    report = await run_calibration(OfflineGrader(), SCENARIOS, [case])

    assert report.results[0].in_band, report.format()


async def test_offline_order_and_spread() -> None:
    report = await run_calibration(OfflineGrader(), SCENARIOS, CASES)

    assert all(report.order_agreement().values()), report.format()
    assert min(report.spreads().values()) >= 10, report.format()


async def test_recorded_llm_calibration_passes(model_server: ModelServer) -> None:
    model_server.default_content = replay(recorded_content())

    report = await run_calibration(llm_grader(model_server), SCENARIOS, CASES)

    assert len(model_server.requests) == len(CASES)
    assert report.in_band_count == len(CASES), report.format()
    assert all(report.order_agreement().values()), report.format()


async def test_report_format_lists_cases() -> None:
    report = await run_calibration(OfflineGrader(), SCENARIOS, CASES[:3])

    text = report.format()

    assert "correct-error-poor" in text
    assert "order poor < adequate < excellent holds" in text
    assert "3 of 3 totals in band" in text


def test_order_failure_is_reported() -> None:
    report = CalibrationReport(grader="test", results=())
    swapped = dataclasses.replace(
        report,
        results=tuple(
            _result(level, total)
            for level, total in (("poor", 30), ("adequate", 20), ("excellent", 35))
        ),
    )

    assert swapped.order_agreement() == {"s": False}
    assert swapped.spreads() == {"s": 5}
    assert not swapped.passed


def _result(level: str, total: int) -> Any:
    from peb_mail.calibrate import CalibrationCase, CaseResult

    case = CalibrationCase(
        id=level,
        scenario="s",
        level=level,
        band=(7, 35),
        submission=CASES[0].submission,
    )
    return CaseResult(case=case, total=total)


def test_invalid_case_raises_config(tmp_path: Path) -> None:
    path = tmp_path / "cases.json"
    path.write_text(json.dumps({"cases": [{"id": "x", "level": "great"}]}))

    with pytest.raises(ConfigError):
        load_cases(path)


def excellent_with_subject(subject: str) -> tuple[Scenario, Any]:
    case = next(
        item
        for item in CASES
        if item.scenario == NEW_EMAIL_SCENARIO.id and item.level == "excellent"
    )
    return NEW_EMAIL_SCENARIO, dataclasses.replace(case.submission, subject=subject)


@pytest.mark.parametrize("subject", ["hey", "oops"])
async def test_offline_vague_subject_capped(subject: str) -> None:
    scenario, submission = excellent_with_subject(subject)

    verdict = await PrecheckedGrader(OfflineGrader()).grade(scenario, submission)

    assert verdict.score_of("subject").score < 5


@pytest.mark.parametrize("subject", ["hey", "oops"])
async def test_llm_vague_subject_capped(
    model_server: ModelServer, subject: str
) -> None:
    model_server.default_content = verdict_content(score=5)
    scenario, submission = excellent_with_subject(subject)

    verdict = await llm_grader(model_server).grade(scenario, submission)

    assert verdict.score_of("subject").score < 5
