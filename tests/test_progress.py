"""STATUS progress: best and latest, skill trends, weakest criterion, suggestion."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from peb_mail.models import CRITERION_KEYS, CriterionScore, Verdict
from peb_mail.progress import build_progress
from peb_mail.scenarios import load_scenarios
from peb_mail.store import Attempt

SCENARIOS = load_scenarios(Path(__file__).resolve().parent.parent / "scenarios")


def verdict(**scores: int) -> Verdict:
    return Verdict(
        scores=tuple(
            CriterionScore(key, scores.get(key, 4), "x") for key in CRITERION_KEYS
        ),
        comment="c",
        revision="r",
        counterpart_reply="x",
        grader="offline",
    )


def attempt(
    attempt_id: int, scenario_id: str, score: int | None, result: Verdict | None = None
) -> Attempt:
    return Attempt(
        id=attempt_id,
        student_id=1,
        scenario_id=scenario_id,
        token="t",
        created_at=0.0,
        state="graded" if score is not None else "open",
        inbound_id=None,
        subject=None,
        body=None,
        attachments=None,
        score=score,
        verdict=result.to_json() if result else None,
        submitted_at=None,
        graded_at=None,
    )


def test_best_and_latest_per_scenario() -> None:
    first = verdict(tone=5)
    second = dataclasses.replace(verdict(tone=2), scores=verdict(tone=2).scores)
    progress = build_progress(
        [
            attempt(1, "correct-error-in-report", 30, first),
            attempt(2, "correct-error-in-report", 25, second),
        ],
        SCENARIOS,
        {},
    )
    [row] = progress.scenarios
    assert row.attempts == 2
    assert row.best == 30
    assert row.latest == 25


def test_trend_and_bar_per_criterion() -> None:
    progress = build_progress(
        [
            attempt(1, "clarify-vague-task", 20, verdict(subject=2)),
            attempt(2, "clarify-vague-task", 24, verdict(subject=4)),
        ],
        SCENARIOS,
        {},
    )
    subject = [t for t in progress.trends if t.label == "Subject line"][0]
    assert subject.history == "2 -> 4"
    assert subject.bar == "■■■■□"


def test_weakest_criterion_drives_suggestion() -> None:
    progress = build_progress(
        [attempt(1, "clarify-vague-task", 20, verdict(tone=1))], SCENARIOS, {}
    )
    assert progress.weakest == "Tone and respect"
    assert progress.suggestion is not None
    assert progress.suggestion.id != "clarify-vague-task"


def test_new_student_gets_first_scenario() -> None:
    progress = build_progress([], SCENARIOS, {})
    assert progress.trends == []
    assert progress.suggestion is not None
    assert progress.suggestion.number == 1
