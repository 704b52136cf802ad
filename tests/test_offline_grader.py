"""Tests for the offline grader on real scenarios, word lists and readability code."""

from __future__ import annotations

import nltk
import pytest

from peb_mail.errors import GradingError
from peb_mail.models import (
    CRITERION_KEYS,
    MAX_SCORE,
    MIN_SCORE,
    AttachmentInfo,
    Counterpart,
    KeyPoint,
    Scenario,
    Submission,
    Verdict,
)
from peb_mail.offline_grader import OfflineGrader

REVENUE = Scenario(
    id="revenue-error",
    number=1,
    title="Correct a revenue error in the sales report",
    type="initiate",
    environment="A regional sales office",
    counterpart=Counterpart(
        name="Maria Lopez", role="Sales supervisor", local_part="maria.lopez"
    ),
    task=(
        "You sent the monthly sales report yesterday. You entered $12,400 as the "
        "March revenue, but the correct figure is $14,200. Tell your supervisor, "
        "apologise and say how you will fix the report."
    ),
    key_facts=(
        KeyPoint("The wrong figure was $12,400", ("12,400", "12400", "12.4k")),
        KeyPoint("The correct figure is $14,200", ("14,200", "14200", "14.2k")),
    ),
    key_points=(
        KeyPoint(
            "I will send a corrected report",
            ("corrected report", "updated report", "corrected version"),
        ),
    ),
    grading_focus="Taking responsibility for an error",
    subject_keywords=("revenue", "sales report", "correction", "corrected"),
)

INVOICE = Scenario(
    id="unpaid-invoice",
    number=2,
    title="Follow up on an unpaid invoice",
    type="initiate",
    environment="A small design studio",
    counterpart=Counterpart(
        name="Tom Becker", role="Accounts manager at a client", local_part="tom"
    ),
    task=(
        "Invoice #147 for $500 was due on 1 May and is still unpaid. Write to the "
        "client, remind them politely and ask when they will pay."
    ),
    key_facts=(
        KeyPoint("Invoice #147", ("#147", "invoice 147", "no. 147")),
        KeyPoint("The amount is $500", ("$500", "500 dollars", "500 usd")),
    ),
    key_points=(
        KeyPoint("The payment date has passed", ("overdue", "was due", "past due")),
        KeyPoint(
            "Ask when the payment will arrive",
            ("when", "payment date", "expected date"),
        ),
    ),
    grading_focus="A polite, firm payment reminder",
    subject_keywords=("invoice", "147", "payment"),
)

MEETING = Scenario(
    id="meeting-move",
    number=3,
    title="Answer a request to move a meeting",
    type="reply",
    environment="A software company",
    counterpart=Counterpart(
        name="Ms. Priya Shah", role="Project lead", local_part="priya.shah"
    ),
    task="Priya asks to move Tuesday's project meeting. Agree and offer Thursday.",
    key_facts=(KeyPoint("The new day is Thursday", ("thursday",)),),
    key_points=(KeyPoint("Agree to move the meeting", ("no problem", "happy to")),),
    grading_focus="A short, friendly reply",
    subject_keywords=("meeting", "thursday"),
    starter_subject="Project meeting on Tuesday",
    starter_body="Hi {student_name}, could we move Tuesday's meeting?",
)

POOR_REVENUE = Submission(
    subject="hey",
    text="hey, the number in the report was wrong. whatever, i fixed it. pls check "
    "ASAP!!!",
    student_name="Ana Silva",
)
ADEQUATE_REVENUE = Submission(
    subject="Report",
    text=(
        "Hi Maria,\n\n"
        "I am sorry but there is a mistake in the sales report. The March revenue "
        "should be $14,200. I will fix it and send it again tomorrow.\n\n"
        "Thanks,\nAna"
    ),
    student_name="Ana Silva",
)
EXCELLENT_REVENUE = Submission(
    subject="Correction to the March sales report revenue",
    text=(
        "Dear Maria,\n\n"
        "I am writing to correct an error in the sales report I sent yesterday. "
        "I made a mistake when I entered the March revenue: I typed $12,400, but "
        "the correct figure is $14,200.\n\n"
        "I apologise for the error. I will send you the corrected report by noon "
        "today, and I will check every figure twice before I send reports in "
        "future.\n\n"
        "Please let me know if you have already shared the report with anyone, so "
        "I can send them the correction too.\n\n"
        "Best regards,\nAna Silva"
    ),
    student_name="Ana Silva",
)

POOR_INVOICE = Submission(
    subject="",
    text="u still didnt pay. not my problem if ur late again, send money now!!",
    student_name="Ben Okafor",
)
ADEQUATE_INVOICE = Submission(
    subject="Invoice",
    text=(
        "Hello Tom,\n\n"
        "I want to remind you about invoice 147. It is not paid yet. Can you pay "
        "it soon please? We need the money for our work.\n\n"
        "Regards,\nBen"
    ),
    student_name="Ben Okafor",
)
EXCELLENT_INVOICE = Submission(
    subject="Payment reminder: invoice #147 for $500",
    text=(
        "Dear Tom,\n\n"
        "I hope you are well. I am writing to follow up on invoice #147 for $500, "
        "which was due on 1 May. According to our records, it is now overdue.\n\n"
        "Could you please let me know when we can expect the payment? If it has "
        "already been sent, please ignore this message.\n\n"
        "Thank you for your help.\n\n"
        "Kind regards,\nBen Okafor"
    ),
    student_name="Ben Okafor",
)

POOR_MEETING = Submission(
    subject="ok",
    text="yeah ok thursday",
    student_name="Lea Park",
)
ADEQUATE_MEETING = Submission(
    subject="Re: Project meeting on Tuesday",
    text="Hi Priya,\n\nThursday is fine for me. See you then.\n\nLea",
    student_name="Lea Park",
)
EXCELLENT_MEETING = Submission(
    subject="Re: Project meeting moved to Thursday",
    text=(
        "Hi Priya,\n\n"
        "Thank you for letting me know. No problem at all, I am happy to move the "
        "project meeting to Thursday.\n\n"
        "Would 10:00 on Thursday work for you? I will update the calendar invite "
        "as soon as you confirm.\n\n"
        "Best regards,\nLea Park"
    ),
    student_name="Lea Park",
)

CASES = [
    pytest.param(REVENUE, POOR_REVENUE, ADEQUATE_REVENUE, EXCELLENT_REVENUE, id="rev"),
    pytest.param(INVOICE, POOR_INVOICE, ADEQUATE_INVOICE, EXCELLENT_INVOICE, id="inv"),
    pytest.param(MEETING, POOR_MEETING, ADEQUATE_MEETING, EXCELLENT_MEETING, id="meet"),
]
# Smallest gap in points (of 35) between neighbouring quality levels.
MARGIN = 4


async def grade(scenario: Scenario, submission: Submission) -> Verdict:
    return await OfflineGrader().grade(scenario, submission)


def with_text(submission: Submission, text: str, **changes: object) -> Submission:
    values = {
        "subject": submission.subject,
        "text": text,
        "student_name": submission.student_name,
        "attachments": submission.attachments,
    }
    values.update(changes)
    return Submission(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(("scenario", "poor", "adequate", "excellent"), CASES)
async def test_totals_ordered_by_quality(
    scenario: Scenario, poor: Submission, adequate: Submission, excellent: Submission
) -> None:
    poor_total = (await grade(scenario, poor)).total
    adequate_total = (await grade(scenario, adequate)).total
    excellent_total = (await grade(scenario, excellent)).total
    assert adequate_total - poor_total >= MARGIN, (poor_total, adequate_total)
    assert excellent_total - adequate_total >= MARGIN, (
        adequate_total,
        excellent_total,
    )


@pytest.mark.parametrize(("scenario", "poor", "adequate", "excellent"), CASES)
async def test_verdict_shape_all_levels(
    scenario: Scenario, poor: Submission, adequate: Submission, excellent: Submission
) -> None:
    for submission in (poor, adequate, excellent):
        verdict = await grade(scenario, submission)
        keys = tuple(item.criterion for item in verdict.scores)
        assert keys == CRITERION_KEYS
        for item in verdict.scores:
            assert MIN_SCORE <= item.score <= MAX_SCORE, item
            assert item.justification.strip(), item
            assert item.justification.count(". ") == 0, item.justification
        assert verdict.total == sum(item.score for item in verdict.scores)
        assert verdict.grader == "offline"
        assert verdict.usage == {}


async def test_excellent_email_scores_high() -> None:
    verdict = await grade(REVENUE, EXCELLENT_REVENUE)
    assert verdict.total >= 33, verdict.scores


async def test_grading_is_deterministic() -> None:
    first = await grade(REVENUE, ADEQUATE_REVENUE)
    second = await OfflineGrader().grade(REVENUE, ADEQUATE_REVENUE)
    assert first == second
    assert first.to_json() == second.to_json()


async def test_different_emails_different_verdicts() -> None:
    adequate = await grade(INVOICE, ADEQUATE_INVOICE)
    excellent = await grade(INVOICE, EXCELLENT_INVOICE)
    assert adequate.scores != excellent.scores
    assert adequate.comment != excellent.comment


async def test_empty_text_raises_grading_error() -> None:
    blank = with_text(ADEQUATE_REVENUE, "  \n\t ")
    with pytest.raises(GradingError, match="nothing to grade"):
        await grade(REVENUE, blank)


async def test_missing_greeting_lowers_structure() -> None:
    body = EXCELLENT_REVENUE.text.split("\n\n", 1)[1]
    verdict = await grade(REVENUE, with_text(EXCELLENT_REVENUE, body))
    structure = verdict.score_of("structure")
    tone = verdict.score_of("tone")
    assert structure.score <= 4
    assert "greeting" in structure.justification
    assert tone.score <= 4
    assert "greeting" in tone.justification
    assert verdict.revision.startswith("Dear Maria,\n\n")


async def test_casual_greeting_lowers_tone() -> None:
    text = EXCELLENT_REVENUE.text.replace("Dear Maria,", "Hey Maria,")
    verdict = await grade(REVENUE, with_text(EXCELLENT_REVENUE, text))
    tone = verdict.score_of("tone")
    assert tone.score == 4
    assert "too casual" in tone.justification
    assert tone.evidence == "Hey Maria,"


async def test_casual_words_lower_tone() -> None:
    verdict = await grade(REVENUE, POOR_REVENUE)
    tone = verdict.score_of("tone")
    assert tone.score == 1
    assert '"whatever"' in tone.justification
    assert "as soon as possible" in verdict.revision
    assert "pls" not in verdict.revision


async def test_hey_subject_scores_two_or_less() -> None:
    verdict = await grade(
        REVENUE, with_text(EXCELLENT_REVENUE, EXCELLENT_REVENUE.text, subject="hey")
    )
    subject = verdict.score_of("subject")
    assert subject.score <= 2
    assert '"hey"' in subject.justification


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("", 1),
        ("Oops", 2),
        ("Question", 2),
        ("Update", 2),
        ("Revenue", 2),
        ("Something about last week", 3),
        ("Correction to the March sales report revenue", 5),
        ("URGENT!!! REVENUE CORRECTION", 4),
    ],
)
async def test_subject_scores_by_wording(subject: str, expected: int) -> None:
    submission = with_text(EXCELLENT_REVENUE, EXCELLENT_REVENUE.text, subject=subject)
    verdict = await grade(REVENUE, submission)
    assert verdict.score_of("subject").score == expected


async def test_reply_subject_keeps_starter() -> None:
    verdict = await grade(MEETING, ADEQUATE_MEETING)
    assert verdict.score_of("subject").score == 4


async def test_reply_subject_specific_scores_five() -> None:
    verdict = await grade(MEETING, EXCELLENT_MEETING)
    assert verdict.score_of("subject").score == 5


async def test_misspelling_named_and_fixed() -> None:
    text = EXCELLENT_REVENUE.text.replace("correct figure", "corect figure")
    verdict = await grade(REVENUE, with_text(EXCELLENT_REVENUE, text))
    grammar = verdict.score_of("grammar")
    assert grammar.score == 4
    assert '"corect"' in grammar.justification
    assert '"correct"' in grammar.justification
    assert "corect" in grammar.evidence
    assert "corect" not in verdict.revision
    assert "the correct figure is $14,200" in verdict.revision


async def test_spelling_ignores_names_and_scenario() -> None:
    text = EXCELLENT_INVOICE.text.replace(
        "I hope you are well.",
        "I hope you are well. Ms Oyelaran at ben.okafor@studio.example said the "
        "favour was realised in Q3 and paid 1,250 EUR.",
    )
    verdict = await grade(INVOICE, with_text(EXCELLENT_INVOICE, text))
    assert verdict.score_of("grammar").score == 5, verdict.score_of("grammar")


async def test_missing_attachment_noticed() -> None:
    text = EXCELLENT_REVENUE.text.replace(
        "I apologise for the error.",
        "I apologise for the error. The corrected report is attached.",
    )
    without = await grade(REVENUE, with_text(EXCELLENT_REVENUE, text))
    attached = (AttachmentInfo("report.xlsx", "application/vnd.ms-excel", 2048),)
    with_file = await grade(
        REVENUE, with_text(EXCELLENT_REVENUE, text, attachments=attached)
    )
    professionalism = without.score_of("professionalism")
    assert "no attachment" in professionalism.justification
    assert "attached" in professionalism.evidence
    assert professionalism.score == with_file.score_of("professionalism").score - 1
    assert without.score_of("task").score == with_file.score_of("task").score - 1
    assert "attachment" in without.counterpart_reply
    assert "attachment" not in with_file.counterpart_reply


async def test_key_fact_covered_raises_clarity() -> None:
    covered = await grade(REVENUE, EXCELLENT_REVENUE)
    text = EXCELLENT_REVENUE.text.replace("$14,200", "the right amount")
    missing = await grade(REVENUE, with_text(EXCELLENT_REVENUE, text))
    assert covered.score_of("clarity").score == 5
    assert missing.score_of("clarity").score < 5
    assert "$14,200" in missing.score_of("clarity").justification
    assert missing.score_of("task").score < covered.score_of("task").score


async def test_keyword_match_ignores_case_space() -> None:
    text = EXCELLENT_REVENUE.text.replace("corrected report", "CORRECTED\n   Report")
    verdict = await grade(REVENUE, with_text(EXCELLENT_REVENUE, text))
    assert verdict.score_of("task").score == 5


async def test_revision_adds_missing_key_point() -> None:
    verdict = await grade(REVENUE, ADEQUATE_REVENUE)
    assert "The wrong figure was $12,400." in verdict.revision
    assert "I will send a corrected report." in verdict.revision


async def test_revision_adds_sign_off() -> None:
    text = "Dear Maria,\n\nThe March revenue is $14,200, not $12,400. I will fix it."
    verdict = await grade(REVENUE, with_text(ADEQUATE_REVENUE, text))
    assert verdict.score_of("structure").score <= 4
    assert verdict.revision.endswith("Best regards,\nAna Silva")


async def test_revision_splits_wall_of_text() -> None:
    sentences = [
        "I am writing about the sales report I sent you yesterday morning.",
        "I made a mistake in the March revenue line of that report.",
        "I entered $12,400 there, but the correct figure is $14,200.",
        "I apologise for this error and for any trouble it causes.",
        "I will send the corrected report to you and the team today.",
        "I will also check every figure twice before I send a report.",
        "Please let me know if you have already shared the old file.",
    ]
    text = "Dear Maria,\n\n" + " ".join(sentences) + "\n\nBest regards,\nAna Silva"
    verdict = await grade(REVENUE, with_text(EXCELLENT_REVENUE, text))
    structure = verdict.score_of("structure")
    assert structure.score == 3
    assert "block of text" in structure.justification
    body_blocks = verdict.revision.split("\n\n")[1:-1]
    assert len(body_blocks) >= 2, verdict.revision


async def test_error_without_responsibility_penalised() -> None:
    text = (
        "Dear Maria,\n\nThe March revenue in the report shows $12,400 but it is "
        "$14,200. The system made the mistake, it was not my fault. Please use the "
        "corrected report I will send today.\n\nBest regards,\nAna Silva"
    )
    verdict = await grade(REVENUE, with_text(EXCELLENT_REVENUE, text))
    professionalism = verdict.score_of("professionalism")
    assert professionalism.score <= 2
    assert "blame" in professionalism.justification
    assert "The system made" in professionalism.evidence


async def test_comment_has_three_to_six_sentences() -> None:
    for submission in (POOR_REVENUE, ADEQUATE_REVENUE, EXCELLENT_REVENUE):
        comment = (await grade(REVENUE, submission)).comment
        count = comment.count(". ") + 1
        assert 3 <= count <= 6, comment


async def test_counterpart_reply_asks_missing_point() -> None:
    verdict = await grade(INVOICE, ADEQUATE_INVOICE)
    reply = verdict.counterpart_reply
    assert reply.startswith("Hi Ben,")
    assert "The amount is $500" in reply
    assert reply.endswith("Best regards,\nTom Becker")


async def test_counterpart_reply_quotes_covered_fact() -> None:
    verdict = await grade(REVENUE, EXCELLENT_REVENUE)
    assert "$12,400" in verdict.counterpart_reply
    assert "question" not in verdict.counterpart_reply


async def test_grading_never_downloads_data(monkeypatch: pytest.MonkeyPatch) -> None:
    def reject_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("the offline grader tried to download NLTK data")

    monkeypatch.setattr(nltk, "download", reject_download)
    verdict = await grade(INVOICE, EXCELLENT_INVOICE)
    assert verdict.total > 0


async def test_tiny_text_caps_grammar() -> None:
    verdict = await grade(REVENUE, with_text(ADEQUATE_REVENUE, "Hi Maria,"))
    grammar = verdict.score_of("grammar")
    assert grammar.score <= 3
    assert "too little text" in grammar.justification
    assert verdict.revision.startswith("Hi Maria,\n\n")


async def test_shouting_calmed_in_revision() -> None:
    text = "Dear Maria,\n\nMARIA, THE REPORT WAS WRONG!!! I will fix it.\n\nAna"
    verdict = await grade(REVENUE, with_text(ADEQUATE_REVENUE, text))
    assert "shouting" in verdict.score_of("tone").justification
    assert "Maria, the report was wrong." in verdict.revision
