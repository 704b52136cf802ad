"""Parsing and applying instructor override commands."""

from __future__ import annotations

from peb_mail.models import CRITERION_KEYS, CriterionScore, Verdict
from peb_mail.overrides import apply_overrides, parse_overrides

VERDICT = Verdict(
    scores=tuple(CriterionScore(key, 3, "ok") for key in CRITERION_KEYS),
    comment="c",
    revision="r",
    counterpart_reply="x",
    grader="offline",
)


def test_commands_between_prose_lines() -> None:
    commands, errors = parse_overrides(
        "Hello,\nscore 28\nCriterion Subject line 4\nThanks, Kim"
    )
    assert errors == []
    assert [(c.action, c.criterion, c.value) for c in commands] == [
        ("score", "", 28),
        ("criterion", "subject", 4),
    ]


def test_invalid_values_reported() -> None:
    commands, errors = parse_overrides(
        "score 36\ncriterion tone 0\ncriterion magic 3\ncomment"
    )
    assert commands == []
    assert len(errors) == 4


def test_criterion_change_updates_total() -> None:
    commands, _ = parse_overrides("criterion tone 5")
    verdict = apply_overrides(VERDICT, commands, "kim@school.test")
    assert verdict.total == 23
    assert "kim@school.test" in verdict.score_of("tone").justification


def test_score_sets_total_and_survives_json() -> None:
    commands, _ = parse_overrides("score 30\ncomment Nice.")
    verdict = Verdict.from_json(apply_overrides(VERDICT, commands, "kim").to_json())
    assert verdict.total == 30
    assert verdict.instructor_note == "Nice."
