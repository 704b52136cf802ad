"""Grading worker: retries with backoff, giving up, lease takeover, one answer."""

from __future__ import annotations

import dataclasses
import email
import email.policy
from collections.abc import AsyncIterator
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

import pytest

from peb_mail.compose import Composer
from peb_mail.config import Config
from peb_mail.errors import GradingError, TemporaryGradingError
from peb_mail.intake import Intake
from peb_mail.models import Scenario, Submission, Verdict
from peb_mail.offline_grader import OfflineGrader
from peb_mail.scenarios import load_scenarios
from peb_mail.store import Store
from peb_mail.worker import GradingWorker

from .conftest import DOMAIN, INSTRUCTOR, SERVICE, STUDENT, make_config

ANSWER = "Dear Daniel,\n\nThe March revenue for North is $14,200, not $12,400.\n\nBest regards,\nAna"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class FailingGrader:
    """Grader that fails a set number of times, then grades offline."""

    name = "failing"

    def __init__(
        self, failures: int, error: type[GradingError] = TemporaryGradingError
    ) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0

    async def grade(self, scenario: Scenario, submission: Submission) -> Verdict:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error(f"model unavailable (call {self.calls})")
        return await OfflineGrader().grade(scenario, submission)


@dataclass
class Setup:
    config: Config
    store: Store
    clock: Clock
    scenarios: list[Scenario]
    submission_id: str

    def worker(self, grader: object, name: str = "w1") -> GradingWorker:
        return GradingWorker(
            store=self.store,
            composer=Composer(self.config),
            grader=grader,  # type: ignore[arg-type]
            scenarios=self.scenarios,
            config=self.config,
            name=name,
        )

    async def emails(self, kind: str) -> list[EmailMessage]:
        return [
            email.message_from_bytes(item.raw, policy=email.policy.default)  # type: ignore[misc]
            for item in await self.store.list_outbox(limit=1000)
            if item.kind == kind
        ]


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    config = make_config(
        tmp_path, queue={"max_tries": 3, "lease_s": 60.0, "backoff_base_s": 10.0}
    )
    clock = Clock()
    store = await Store.open(config.service.database, clock=clock)
    scenarios = load_scenarios(config.service.scenarios_dir)
    await store.upsert_students([(STUDENT, "Ana Silva", "demo")], {})
    intake = Intake(store, Composer(config), scenarios, config)

    async def deliver(message: EmailMessage, rcpt: str) -> None:
        inbound_id = await store.ingest(
            peer="p",
            mail_from=STUDENT,
            rcpt_tos=[rcpt],
            message_id=str(message["Message-ID"]).strip("<>"),
            raw=message.as_bytes(),
        )
        assert inbound_id is not None
        await intake.process(inbound_id)

    start = EmailMessage()
    start["From"], start["To"], start["Subject"] = STUDENT, SERVICE, "START 1"
    start["Message-ID"] = make_msgid(domain="student.test")
    start.set_content("")
    await deliver(start, SERVICE)
    [attempt_row] = await store.list_attempts()
    attempt = await store.attempt(attempt_row["id"])
    assert attempt is not None
    address = f"daniel.okafor+{attempt.token}@{DOMAIN}"
    submission = EmailMessage()
    submission["From"], submission["To"], submission["Subject"] = (
        STUDENT,
        address,
        "Correction",
    )
    submission["Message-ID"] = make_msgid(domain="student.test")
    submission.set_content(ANSWER)
    await deliver(submission, address)
    yield Setup(config, store, clock, scenarios, str(submission["Message-ID"]))
    await store.close()


async def test_temporary_failure_retried_after_backoff(setup: Setup) -> None:
    grader = FailingGrader(failures=1)
    worker = setup.worker(grader)
    assert await worker.run_once()
    [job] = await setup.store.list_jobs()
    assert job.state == "queued"
    assert "model unavailable" in (job.last_error or "")
    assert not await worker.run_once()
    setup.clock.now += 10.0
    assert await worker.run_once()
    [job] = await setup.store.list_jobs()
    assert job.state == "done"
    assert job.tries == 2
    assert len(await setup.emails("feedback")) == 1


async def test_out_of_tries_fails_and_tells_student(setup: Setup) -> None:
    grader = FailingGrader(failures=10)
    worker = setup.worker(grader)
    for _ in range(3):
        assert await worker.run_once()
        setup.clock.now += 3600.0
    [job] = await setup.store.list_jobs()
    attempt = await setup.store.attempt(job.attempt_id)
    [notice] = await setup.emails("notice")
    assert job.state == "failed"
    assert job.tries == 3
    assert grader.calls == 3
    assert attempt is not None and attempt.state == "failed"
    assert "delayed" in notice.get_content()
    assert notice["In-Reply-To"] == setup.submission_id
    assert await setup.emails("feedback") == []


async def test_expired_lease_taken_over_once(setup: Setup) -> None:
    # A worker that died holds the lease; nobody may grade until it expires.
    dead = await setup.store.claim_job("dead-worker", lease_s=60.0)
    assert dead is not None
    grader = FailingGrader(failures=0)
    worker = setup.worker(grader, name="w2")
    assert not await worker.run_once()
    setup.clock.now += 61.0
    assert await worker.run_once()
    [job] = await setup.store.list_jobs()
    assert job.state == "done"
    assert job.tries == 2
    assert grader.calls == 1
    assert len(await setup.emails("feedback")) == 1


async def test_lost_lease_discards_result(setup: Setup) -> None:
    slow = await setup.store.claim_job("slow-worker", lease_s=60.0)
    assert slow is not None
    setup.clock.now += 61.0
    fast = setup.worker(FailingGrader(failures=0), name="fast")
    assert await fast.run_once()
    late = setup.worker(FailingGrader(failures=0), name="slow-worker")
    # The slow worker finishes after the takeover: its result must be dropped.
    outcome = await late._finish(  # noqa: SLF001 - the race needs this exact step
        slow,
        await setup.store.attempt(slow.attempt_id),  # type: ignore[arg-type]
        (await setup.store.list_students())[0],
        setup.scenarios[0],
        await OfflineGrader().grade(
            setup.scenarios[0], Submission("s", ANSWER, "Ana Silva")
        ),
    )
    assert outcome == "lease lost, result discarded"
    assert len(await setup.emails("feedback")) == 1


async def test_feedback_and_summary_commit_together(setup: Setup) -> None:
    worker = setup.worker(OfflineGrader())
    assert await worker.run_once()
    [feedback] = await setup.emails("feedback")
    [summary] = await setup.emails("summary")
    [job] = await setup.store.list_jobs()
    assert job.state == "done"
    assert feedback["In-Reply-To"] == setup.submission_id
    assert INSTRUCTOR in str(summary["To"])
    assert feedback["Reply-To"].addresses[0].addr_spec.startswith("reply+")


async def test_cc_delivery_copies_instructors(tmp_path: Path, setup: Setup) -> None:
    config = make_config(tmp_path, instructors={"delivery": "cc"})
    worker = GradingWorker(
        store=setup.store,
        composer=Composer(config),
        grader=OfflineGrader(),
        scenarios=setup.scenarios,
        config=config,
        name="cc",
    )
    assert await worker.run_once()
    [feedback] = await setup.emails("feedback")
    assert INSTRUCTOR in str(feedback["Cc"])
    assert await setup.emails("summary") == []


async def test_budget_spent_pauses_without_losing_try(
    tmp_path: Path, setup: Setup
) -> None:
    config = make_config(
        tmp_path,
        queue={"max_tries": 3},
        grader={"kind": "llm", "model": "openai/test-model", "daily_budget_usd": 1.0},
    )
    verdict = await OfflineGrader().grade(
        setup.scenarios[0], Submission("s", ANSWER, "Ana")
    )
    spent = dataclasses.replace(verdict, usage={"cost_usd": 1.25})
    async with setup.store.transaction() as db:
        await db.execute(
            "insert into attempts (student_id, scenario_id, token, state, created_at, "
            "verdict, graded_at) values (1, 'x', 'spent-token', 'graded', ?, ?, ?)",
            (setup.clock.now, spent.to_json(), setup.clock.now),
        )
    grader = FailingGrader(failures=0)
    worker = GradingWorker(
        store=setup.store,
        composer=Composer(config),
        grader=grader,
        scenarios=setup.scenarios,
        config=config,
        name="budget",
    )
    assert await worker.run_once()
    [job] = [j for j in await setup.store.list_jobs()]
    assert grader.calls == 0
    assert job.state == "queued"
    assert job.tries == 0
    assert "daily model budget" in (job.last_error or "")
    # The next UTC day the job runs.
    setup.clock.now += 86400
    assert await worker.run_once()
    assert grader.calls == 1


async def test_refused_email_reopens_attempt(setup: Setup) -> None:
    async with setup.store.transaction() as db:
        await db.execute(
            "update attempts set body = ? where state = 'submitted'",
            (
                "Sehr geehrter Herr Okafor,\n\nich habe einen Fehler im Bericht gefunden. "
                "Die Zahl für März ist falsch. Ich schicke Ihnen heute die richtige "
                "Datei.\n\nMit freundlichen Grüßen\nAna",
            ),
        )
    grader = FailingGrader(failures=0)
    worker = setup.worker(grader)
    assert await worker.run_once()
    [job] = await setup.store.list_jobs()
    attempt = await setup.store.attempt(job.attempt_id)
    [notice] = await setup.emails("notice")
    assert grader.calls == 0
    assert job.state == "done"
    assert attempt is not None and attempt.state == "open"
    assert "English" in notice.get_content()
    assert notice["In-Reply-To"] == setup.submission_id


async def test_revised_email_shows_changes(tmp_path: Path, setup: Setup) -> None:
    worker = setup.worker(OfflineGrader())
    assert await worker.run_once()
    [feedback] = await setup.emails("feedback")
    intake = Intake(setup.store, Composer(setup.config), setup.scenarios, setup.config)
    revised = EmailMessage()
    revised["From"], revised["To"] = STUDENT, SERVICE
    revised["Subject"] = "Re: Correction"
    revised["Message-ID"] = make_msgid(domain="student.test")
    revised["In-Reply-To"] = str(feedback["Message-ID"])
    revised.set_content(
        "Dear Daniel,\n\nI made a mistake in the Q1 report. The March revenue for North "
        "is $14,200, not $12,400, so the Q1 total is $45,300.\n\nI am sorry. I attached "
        "the corrected file; please use it on Thursday.\n\nBest regards,\nAna Silva"
    )
    inbound_id = await setup.store.ingest(
        peer="p",
        mail_from=STUDENT,
        rcpt_tos=[SERVICE],
        message_id=str(revised["Message-ID"]).strip("<>"),
        raw=revised.as_bytes(),
    )
    assert inbound_id is not None
    outcome = await intake.process(inbound_id)
    assert outcome is not None and outcome.reason == "submission queued"
    assert await worker.run_once()
    second = [
        item
        for item in await setup.emails("feedback")
        if item["In-Reply-To"] == revised["Message-ID"]
    ]
    assert len(second) == 1
    text = second[0].get_body(("plain",)).get_content()
    html = second[0].get_body(("html",)).get_content()
    assert "(last time:" in text
    assert " -> " in text
    assert "YOUR EMAIL WITH THE CHANGES" in text
    assert "&rarr;" in html
    assert "<ins" in html or "<del" in html


async def instructor_reply(setup: Setup, body: str, sender: str = INSTRUCTOR) -> str:
    """Reply to the grade summary as ``sender``; return the outcome's reason."""
    [summary] = await setup.emails("summary")
    review = summary["Reply-To"].addresses[0].addr_spec
    reply = EmailMessage()
    reply["From"], reply["To"] = sender, review
    reply["Subject"] = "Re: " + str(summary["Subject"])
    reply["Message-ID"] = make_msgid(domain="school.test")
    reply["In-Reply-To"] = str(summary["Message-ID"])
    reply.set_content(body + "\n\n> quoted summary line\n> score 1\n")
    inbound_id = await setup.store.ingest(
        peer="p",
        mail_from=sender,
        rcpt_tos=[review],
        message_id=str(reply["Message-ID"]).strip("<>"),
        raw=reply.as_bytes(),
    )
    assert inbound_id is not None
    intake = Intake(setup.store, Composer(setup.config), setup.scenarios, setup.config)
    outcome = await intake.process(inbound_id)
    assert outcome is not None
    return outcome.reason


async def test_instructor_override_by_reply(setup: Setup) -> None:
    assert await setup.worker(OfflineGrader()).run_once()
    reason = await instructor_reply(
        setup,
        "Hi,\n\ncriterion tone 5\ncomment Good work on the numbers.\nscore 30\n\nKim",
    )
    [job] = await setup.store.list_jobs()
    attempt = await setup.store.attempt(job.attempt_id)
    assert attempt is not None and attempt.verdict is not None
    verdict = Verdict.from_json(attempt.verdict)
    updated = [
        e
        for e in await setup.emails("feedback")
        if "updated by your teacher" in str(e["Subject"])
    ]
    [confirmation] = await setup.emails("confirmation")
    assert reason == f"override by {INSTRUCTOR}"
    assert attempt.score == 30
    assert verdict.score_of("tone").score == 5
    assert verdict.instructor_note == "Good work on the numbers."
    assert len(updated) == 1
    assert "A NOTE FROM YOUR TEACHER" in updated[0].get_body(("plain",)).get_content()
    assert "The new total is 30/35" in confirmation.get_content()
    assert (
        confirmation["Reply-To"]
        .addresses[0]
        .addr_spec.startswith(f"review+{job.attempt_id}-")
    )


async def test_override_errors_change_nothing(setup: Setup) -> None:
    assert await setup.worker(OfflineGrader()).run_once()
    [job] = await setup.store.list_jobs()
    before = await setup.store.attempt(job.attempt_id)
    reason = await instructor_reply(setup, "criterion kindness 9\nscore 99")
    after = await setup.store.attempt(job.attempt_id)
    [confirmation] = await setup.emails("confirmation")
    text = confirmation.get_content()
    assert reason == "override rejected"
    assert before is not None and after is not None
    assert after.score == before.score
    assert "Nothing was changed" in text
    assert "criterion kindness 9" in text
    assert "score 99" in text


async def test_override_from_non_instructor_rejected(setup: Setup) -> None:
    assert await setup.worker(OfflineGrader()).run_once()
    reason = await instructor_reply(setup, "score 35", sender=STUDENT)
    [job] = await setup.store.list_jobs()
    attempt = await setup.store.attempt(job.attempt_id)
    assert reason == "review reply from a non-instructor"
    assert attempt is not None and attempt.score != 35
    assert await setup.emails("confirmation") == []


async def test_override_regrade_grades_again(setup: Setup) -> None:
    worker = setup.worker(OfflineGrader())
    assert await worker.run_once()
    reason = await instructor_reply(setup, "regrade")
    assert reason == "override: regrade"
    assert await worker.run_once()
    assert len(await setup.emails("feedback")) == 2
    assert len(await setup.emails("summary")) == 2
