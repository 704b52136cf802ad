"""Instructors' mail to the service: grade overrides by reply, held-mail notices.

The methods here are part of ``Intake`` and run inside its transaction.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import aiosqlite

from . import store as sql
from .compose import Composer, Mailbox, reply_subject
from .config import Config
from .message import ParsedEmail, thread_of
from .models import MAX_TOTAL, Scenario, Verdict
from .overrides import apply_overrides, parse_overrides
from .store import Attempt, Store, Student
from .tokens import TokenSigner

if TYPE_CHECKING:
    from .intake import Outcome

logger = logging.getLogger(__name__)


class InstructorReplies:
    """Mixin for ``Intake`` with the instructor paths."""

    store: Store
    composer: Composer
    config: Config
    scenarios_by_id: dict[str, Scenario]
    signer: TokenSigner

    if TYPE_CHECKING:
        # Provided by Intake.

        async def _finish(
            self,
            db: aiosqlite.Connection,
            inbound_id: int,
            state: str,
            reason: str,
            student_id: int | None,
            attempt_id: int | None,
        ) -> Outcome | None: ...

    async def _instructor_reply(
        self,
        db: aiosqlite.Connection,
        inbound_id: int,
        parsed: ParsedEmail,
        attempt_id: int,
        token: str,
    ) -> Outcome | None:
        """Apply an instructor's overrides sent as a reply to a grade summary."""
        attempt = await sql.fetch_attempt(db, attempt_id)
        if attempt is None or not self.signer.verify_review(token, attempt_id):
            return await self._finish(
                db, inbound_id, "rejected", "invalid review address", None, None
            )
        student = await sql.fetch_student_by_id(db, attempt.student_id)
        assert student is not None
        instructors = {
            *await sql.cohort_instructors_in(db, student.cohort),
            *self.config.cohorts.get(student.cohort, ()),
        }
        instructor = parsed.from_address
        if instructor not in instructors:
            logger.warning(
                "inbound %d: review reply for attempt %d from a non-instructor",
                inbound_id,
                attempt_id,
            )
            return await self._finish(
                db,
                inbound_id,
                "rejected",
                "review reply from a non-instructor",
                None,
                attempt.id,
            )
        commands, errors = parse_overrides(parsed.new_text)
        scenario = self.scenarios_by_id.get(attempt.scenario_id)
        if not commands and not errors:
            errors.append(
                "No command found. Write one command per line; see the list below."
            )
        needs_grade = [c for c in commands if c.action != "regrade"]
        if needs_grade and not attempt.verdict:
            errors.append(
                f"Attempt {attempt.id} has no grade yet (state {attempt.state}), so only "
                "regrade is possible."
            )
        if errors or scenario is None:
            await self._confirm(
                db,
                parsed,
                instructor,
                attempt,
                "Nothing was changed.\n\n"
                + "\n".join(
                    f"- {error}"
                    for error in errors or ["The scenario no longer exists."]
                ),
            )
            return await self._finish(
                db, inbound_id, "processed", "override rejected", student.id, attempt.id
            )

        now = self.store.clock()
        if any(c.action == "regrade" for c in commands):
            await sql.record_override(
                db, attempt.id, instructor, "regrade", None, None, now
            )
            if not await sql.requeue_grading(db, attempt.id, now):
                await self._confirm(
                    db,
                    parsed,
                    instructor,
                    attempt,
                    "Nothing was changed: this attempt has no email to grade yet.",
                )
                return await self._finish(
                    db,
                    inbound_id,
                    "processed",
                    "override rejected",
                    student.id,
                    attempt.id,
                )
            await self._confirm(
                db,
                parsed,
                instructor,
                attempt,
                "The email will be graded again. The student gets new feedback, and "
                "you get a new summary.",
            )
            return await self._finish(
                db, inbound_id, "processed", "override: regrade", student.id, attempt.id
            )

        assert attempt.verdict is not None
        verdict = apply_overrides(
            Verdict.from_json(attempt.verdict), commands, instructor
        )
        await sql.record_override(
            db,
            attempt.id,
            instructor,
            "\n".join(c.describe() for c in commands),
            verdict.to_json(),
            verdict.total,
            now,
        )
        thread = thread_of(await sql.inbound_raw(db, attempt.inbound_id))
        previous = None
        if attempt.previous_attempt_id is not None:
            earlier = await sql.fetch_attempt(db, attempt.previous_attempt_id)
            if earlier is not None and earlier.verdict:
                previous = Verdict.from_json(earlier.verdict)
        emails = self.composer.feedback_emails(
            attempt,
            student,
            scenario,
            verdict,
            thread,
            [],
            previous=previous,
            updated_by=instructor,
        )
        for item in emails:
            if item.kind == "feedback":
                await sql.insert_outbox(db, item, now)
        await self._confirm(
            db,
            parsed,
            instructor,
            attempt,
            "Done: "
            + "; ".join(c.describe() for c in commands)
            + f". The new total is {verdict.total}/{MAX_TOTAL}. {student.name} was sent "
            "updated feedback.",
        )
        return await self._finish(
            db,
            inbound_id,
            "processed",
            f"override by {instructor}",
            student.id,
            attempt.id,
        )

    async def _confirm(
        self,
        db: aiosqlite.Connection,
        parsed: ParsedEmail,
        instructor: str,
        attempt: Attempt,
        text: str,
    ) -> None:
        """Answer an instructor's override reply with the result or the errors."""
        email = self.composer.build(
            kind="confirmation",
            sender=self.composer.service,
            to=[Mailbox(parsed.from_name, instructor)],
            subject=reply_subject(parsed.subject),
            text=f"{text}\n\nCommands, one per line:\n"
            "  score 28 | criterion tone 4 | comment Well done. | regrade\n",
            # Replies to the confirmation are more overrides for this attempt.
            reply_to=f"review+{attempt.id}-{self.signer.review_token(attempt.id)}"
            f"@{self.config.service.domain}",
            in_reply_to=parsed.message_id,
            references=parsed.references,
            attempt_id=attempt.id,
        )
        await sql.insert_outbox(db, email, self.store.clock())

    async def _tell_instructors_held(
        self,
        db: aiosqlite.Connection,
        inbound_id: int,
        student: Student,
        attempt: Attempt,
        reason: str,
    ) -> None:
        """Tell the cohort's instructors that a submission waits for their review."""
        instructors = sorted(
            {
                *await sql.cohort_instructors_in(db, student.cohort),
                *self.config.cohorts.get(student.cohort, ()),
            }
        )
        if not instructors:
            return
        text = (
            f"A submission that names {student.name} <{student.email}> as its sender "
            f"for attempt {attempt.id} ({attempt.scenario_id}) was held and not "
            f"graded.\n\nReason: {reason}\n\nIf you know it is genuine, an admin can "
            f"grade it with:\n\n    peb-mail quarantine release --trust {inbound_id}\n"
        )
        notice = self.composer.build(
            kind="held",
            sender=self.composer.service,
            to=[Mailbox("", address) for address in instructors],
            subject=f"[peb-mail] Held for review: {student.name}, attempt {attempt.id}",
            text=text,
            attempt_id=attempt.id,
            auto_submitted="auto-generated",
        )
        await sql.insert_outbox(db, notice, self.store.clock())


def review_target(rcpt_tos: list[str], domain: str) -> tuple[int, str] | None:
    """Find review+ATTEMPT-TOKEN@domain among the recipients."""
    for address in rcpt_tos:
        local, _, address_domain = address.partition("@")
        if address_domain != domain or not local.startswith("review+"):
            continue
        attempt_part, _, token = local[len("review+") :].partition("-")
        if attempt_part.isdigit() and token:
            return int(attempt_part), token
    return None
