"""Word-level diff shown in feedback."""

from __future__ import annotations

from pathlib import Path

from peb_mail.textdiff import changed_share, diff_html, diff_text, word_diff


def test_diff_marks_changed_words() -> None:
    segments = word_diff(
        "Hi Daniel, the number are wrong.", "Dear Daniel, the numbers are wrong."
    )
    assert (
        diff_text(segments)
        == "[-Hi-] {+Dear+} Daniel, the [-number-] {+numbers+} are wrong."
    )


def test_diff_of_equal_texts_has_no_marks() -> None:
    segments = word_diff("Same text\nhere.", "Same text\nhere.")
    assert changed_share(segments) == 0
    assert "[-" not in diff_text(segments)


def test_diff_html_escapes_student_text() -> None:
    html = str(diff_html(word_diff("<b>hi</b> there", "hello there")))
    assert "<b>" not in html
    assert "&lt;b&gt;" in html
    assert "<del" in html and "<ins" in html


def test_line_break_change_alone_is_not_a_change() -> None:
    segments = word_diff("one two\nthree", "one two three")
    assert changed_share(segments) == 0


def test_feedback_skips_empty_diff(tmp_path: Path) -> None:
    from peb_mail.compose import Composer
    from peb_mail.models import CRITERION_KEYS, CriterionScore, Verdict
    from peb_mail.scenarios import load_scenarios

    from .conftest import make_config

    config = make_config(tmp_path)
    scenario = load_scenarios(config.service.scenarios_dir)[0]
    text = "Dear Daniel,\n\nAll good.\n\nAna"
    verdict = Verdict(
        scores=tuple(CriterionScore(k, 5, "x") for k in CRITERION_KEYS),
        comment="c",
        revision=text,
        counterpart_reply="r",
        grader="offline",
    )
    context = Composer(config).feedback_context(verdict, scenario, student_text=text)
    assert context["diff_text"] == ""
