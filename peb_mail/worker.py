"""The grading worker: claim a job, grade it, store the grade with its emails.

The grade, the job's end and the feedback and summary emails commit in one
transaction, and only while this worker still holds the job's lease. A worker
whose lease expired and was taken over discards its result, so each attempt is
graded and answered once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiosqlite

from . import store as sql
from .compose import Composer, Mailbox, reply_subject
from .config import Config
from .errors import GradingError
from .message import thread_of
from .models import AttachmentInfo, Grader, Scenario, Submission, Verdict
from .precheck import precheck_async
from .store import Attempt, Job, Store, Student
from .tokens import TokenSigner, load_signer

logger = logging.getLogger(__name__)


def backoff_delay_s(
    tries: int, base_s: float, max_s: float, rand: Callable[[], float] = random.random
) -> float:
    """Return the wait before try ``tries + 1``: doubling from ``base_s``, capped.

    The result is scaled by a random factor in [0.5, 1.0) so that many jobs
    failing together do not all come back at the same moment.
    """
    # Cap the exponent first: 2 ** 1100 does not fit in a float.
    exponent = min(max(0, tries - 1), 64)
    delay = min(max_s, base_s * 2**exponent)
    return delay * (0.5 + rand() / 2)


@dataclass(frozen=True)
class _ReplyContext:
    """Data the feedback emails need besides the verdict."""

    # The student's email as received, to reply under it; b"" when unknown.
    raw: bytes
    instructors: list[str]
    previous: Verdict | None


def worker_name(index: int) -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{index}"


class GradingWorker:
    """Claims and runs grading jobs; several may run in one process."""

    def __init__(
        self,
        *,
        store: Store,
        composer: Composer,
        grader: Grader,
        scenarios: list[Scenario],
        config: Config,
        name: str,
        on_email: Callable[[], None] = lambda: None,
        signer: TokenSigner | None = None,
    ) -> None:
        self.store = store
        self.composer = composer
        self.grader = grader
        self.scenarios = {scenario.id: scenario for scenario in scenarios}
        self.config = config
        self.name = name
        self.on_email = on_email
        self.signer = signer or load_signer(config.service.secret_file)

    async def run_once(self) -> bool:
        """Claim and finish one job; False when none was runnable."""
        job = await self.store.claim_job(self.name, self.config.queue.lease_s)
        if job is None:
            return False
        started = time.monotonic()
        outcome = await self._run(job)
        logger.info(
            "job %d attempt %d try %d/%d %s in %.2fs",
            job.id,
            job.attempt_id,
            job.tries,
            job.max_tries,
            outcome,
            time.monotonic() - started,
        )
        return True

    async def drain(self) -> int:
        """Run jobs until none is runnable; returns how many were claimed."""
        count = 0
        while await self.run_once():
            count += 1
        return count

    async def run(self, wake: asyncio.Event, stop: asyncio.Event) -> None:
        while not stop.is_set():
            # Cleared before looking for work, so a wake-up that arrives while
            # run_once looks is kept and the wait below returns at once.
            wake.clear()
            if await self.run_once():
                continue
            await _wait_any(wake, stop, self.config.queue.poll_interval_s)

    async def _run(self, job: Job) -> str:
        if job.tries > job.max_tries:
            return await self._give_up(job, "no tries left")
        # One lock acquisition for every read of the job: with several workers
        # and the sender queueing for the store's lock, each acquisition waits
        # behind the others' transactions.
        async with self.store.read() as db:
            attempt = await sql.fetch_attempt(db, job.attempt_id)
            student = (
                await sql.fetch_student_by_id(db, attempt.student_id)
                if attempt
                else None
            )
            context = (
                await self._read_reply_context(db, attempt, student)
                if attempt and student
                else None
            )
        scenario = self.scenarios.get(attempt.scenario_id) if attempt else None
        if attempt is None or student is None or scenario is None:
            missing = (
                "attempt"
                if attempt is None
                else "student"
                if student is None
                else "scenario"
            )
            return await self._give_up(job, f"{missing} not found")

        submission = Submission(
            subject=attempt.subject or "",
            text=attempt.body or "",
            student_name=student.name,
            attachments=tuple(
                AttachmentInfo(**item)
                for item in json.loads(attempt.attachments or "[]")
            ),
        )
        checks = await precheck_async(scenario, submission)
        if checks.refusal:
            return await self._refuse(
                job, attempt, student, checks.refusal, checks.flags
            )
        paused = await self._budget_pause(job)
        if paused:
            return paused
        try:
            verdict = await self.grader.grade(scenario, submission)
        except asyncio.CancelledError:
            # Stopping: hand the job back now instead of waiting for the lease
            # to expire. The try still counts.
            await asyncio.shield(
                self.store.release_job(
                    job, self.name, delay_s=0.0, error="stopped during grading"
                )
            )
            raise
        except GradingError as exc:
            retry_after_s = getattr(exc, "retry_after_s", None)
            return await self._retry_or_give_up(
                job, f"{type(exc).__name__}: {exc}", min_delay_s=retry_after_s or 0.0
            )
        except Exception as exc:  # a grader bug must not kill the worker
            logger.exception("job %d: grader raised an unexpected error", job.id)
            return await self._retry_or_give_up(
                job, f"unexpected {type(exc).__name__}: {exc}"
            )
        return await self._finish(job, attempt, student, scenario, verdict, context)

    async def _retry_or_give_up(
        self, job: Job, error: str, min_delay_s: float = 0.0
    ) -> str:
        if job.tries >= job.max_tries:
            return await self._give_up(job, error)
        # A provider's Retry-After is a floor, because a retry before it would
        # be rejected again.
        delay = max(
            min_delay_s,
            backoff_delay_s(
                job.tries,
                self.config.queue.backoff_base_s,
                self.config.queue.backoff_max_s,
            ),
        )
        released = await self.store.release_job(
            job, self.name, delay_s=delay, error=error
        )
        if not released:
            return "lease lost before retry"
        return f"failed ({error}); retry in {delay:.0f}s"

    async def _budget_pause(self, job: Job) -> str | None:
        """Hold the job until the next UTC day when the model budget is spent.

        The job stays queued and its try is refunded, so a pause never turns
        into a failure; ``peb-mail attempts list`` shows the reason.
        """
        budget = self.config.grader.daily_budget_usd
        if self.config.grader.kind != "llm" or budget <= 0:
            return None
        now = self.store.clock()
        midnight = now - now % 86400
        spent = await self.store.model_cost_since(midnight)
        if spent < budget:
            return None
        reason = (
            f"paused: daily model budget ${budget:.2f} reached (${spent:.2f} spent); "
            "grading resumes at 00:00 UTC"
        )
        logger.warning("job %d: %s", job.id, reason)
        await self.store.release_job(
            job,
            self.name,
            delay_s=midnight + 86400 - now,
            error=reason,
            refund_try=True,
        )
        return reason

    async def _refuse(
        self,
        job: Job,
        attempt: Attempt,
        student: Student,
        refusal: str,
        flags: tuple[str, ...],
    ) -> str:
        """Tell the student why the email was not graded and reopen the attempt."""
        # Every refusal text already says what to send instead.
        notice = await self._student_notice(
            attempt, student, refusal + " It will be graded for the same scenario."
        )
        now = self.store.clock()
        async with self.store.transaction() as db:
            if not await sql.complete_job(db, job.id, self.name, now):
                return "lease lost before refusing"
            await sql.reopen_attempt(db, attempt.id)
            await sql.insert_outbox(db, notice, now)
        self.on_email()
        return f"not graded ({', '.join(flags) or 'refused'}): student told"

    async def _finish(
        self,
        job: Job,
        attempt: Attempt,
        student: Student,
        scenario: Scenario,
        verdict: Verdict,
        context: _ReplyContext | None = None,
    ) -> str:
        if context is None:
            async with self.store.read() as db:
                context = await self._read_reply_context(db, attempt, student)
        # Composing takes about 1 ms of CPU per job, less than a hop to a
        # thread and back would save, so it runs on the event loop.
        emails = self.composer.feedback_emails(
            attempt,
            student,
            scenario,
            verdict,
            thread_of(context.raw),
            context.instructors,
            previous=context.previous,
            review_address=self.review_address(attempt.id),
        )

        now = self.store.clock()
        async with self.store.transaction() as db:
            if not await sql.complete_job(db, job.id, self.name, now):
                logger.warning(
                    "job %d: lease lost to another worker, result discarded", job.id
                )
                return "lease lost, result discarded"
            await sql.set_attempt_graded(
                db, attempt.id, verdict.total, verdict.to_json(), now
            )
            for item in emails:
                await sql.insert_outbox(db, item, now)
        self.on_email()
        return f"graded {verdict.total}"

    def review_address(self, attempt_id: int) -> str:
        """Return the address instructors reply to with overrides for one attempt."""
        token = self.signer.review_token(attempt_id)
        return f"review+{attempt_id}-{token}@{self.config.service.domain}"

    async def _read_reply_context(
        self, db: aiosqlite.Connection, attempt: Attempt, student: Student
    ) -> _ReplyContext:
        """Read the thread, the instructors and the previous grade of an attempt."""
        raw = await sql.inbound_raw(db, attempt.inbound_id or None)
        instructors = await sql.cohort_instructors_in(db, student.cohort)
        previous = None
        if attempt.previous_attempt_id is not None:
            row = await sql.fetch_attempt(db, attempt.previous_attempt_id)
            if row is not None and row.verdict:
                previous = Verdict.from_json(row.verdict)
        return _ReplyContext(
            raw=raw,
            instructors=sorted(
                {*instructors, *self.config.cohorts.get(student.cohort, ())}
            ),
            previous=previous,
        )

    async def _student_notice(
        self, attempt: Attempt, student: Student, text: str
    ) -> sql.NewEmail:
        """Build a short notice to the student, threaded under their submission."""
        inbound = (
            await self.store.inbound_row(attempt.inbound_id)
            if attempt.inbound_id
            else None
        )
        message_id, references = thread_of(inbound["raw"] if inbound else b"")
        words = student.name.split()
        return self.composer.build(
            kind="notice",
            sender=self.composer.service,
            to=[Mailbox(student.name, student.email)],
            subject=reply_subject(attempt.subject or "your email"),
            text=self.composer.render(
                "notice.txt.j2", student_name=words[0] if words else "", text=text
            ),
            reply_to=self.composer.reply_address(attempt.token),
            in_reply_to=message_id,
            references=references,
            attempt_id=attempt.id,
        )

    async def _give_up(self, job: Job, error: str) -> str:
        """Mark the job failed and tell the student that grading is delayed."""
        logger.warning(
            "job %d attempt %d failed after %d tries: %s",
            job.id,
            job.attempt_id,
            job.tries,
            error,
        )
        attempt = await self.store.attempt(job.attempt_id)
        student = (
            await self.store.student_by_id(attempt.student_id) if attempt else None
        )
        notice = None
        if attempt is not None and student is not None:
            notice = await self._student_notice(
                attempt,
                student,
                "We received your email, but grading it is delayed. Your teacher "
                "will check it. You do not need to send it again.",
            )
        now = self.store.clock()
        async with self.store.transaction() as db:
            if not await sql.fail_job(db, job.id, self.name, error, now):
                return "lease lost before giving up"
            await sql.set_attempt_state(db, job.attempt_id, "failed")
            if notice is not None:
                await sql.insert_outbox(db, notice, now)
        self.on_email()
        return f"gave up: {error}"


async def _wait_any(wake: asyncio.Event, stop: asyncio.Event, timeout_s: float) -> None:
    waiters = [asyncio.ensure_future(wake.wait()), asyncio.ensure_future(stop.wait())]
    try:
        await asyncio.wait(
            waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        for waiter in waiters:
            waiter.cancel()
