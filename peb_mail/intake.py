"""Turn each received message into its effect: a command reply or a submission.

Intake reads ``inbound`` rows in state ``received``. For each it parses the
stored bytes, then in one transaction decides what the message is, writes the
effect (an attempt, a grading job, emails in the outbox) and moves the row to
its final state. A crash before the commit leaves the row ``received``, so it
is processed again on restart; the conditional state update stops a second
process from applying it twice.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections import deque
from dataclasses import asdict, dataclass

import aiosqlite

from . import store as sql
from .commands import StudentCommands, first_name, parse_command
from .compose import Composer, Mailbox, reply_subject
from .config import Config
from .errors import NotFoundError
from .instructor_replies import InstructorReplies, review_target
from .message import (
    ParsedEmail,
    classify_raw,
    delivery_report,
    parse,
)
from .models import Artefact, Scenario
from .store import Attempt, Store, Student
from .tokens import TokenSigner, load_signer
from .trust import DnsLookup, check_sender

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """Intake's decision for one message, for logs, the CLI and the demo."""

    inbound_id: int
    state: str
    reason: str
    attempt_id: int | None = None


def token_of(address: str, domain: str) -> str | None:
    local, _, address_domain = address.lower().rpartition("@")
    if address_domain != domain or "+" not in local:
        return None
    return local.rsplit("+", 1)[1] or None


class Intake(InstructorReplies, StudentCommands):
    """Process received messages; one instance per service process."""

    def __init__(
        self,
        store: Store,
        composer: Composer,
        scenarios: list[Scenario],
        config: Config,
        signer: TokenSigner | None = None,
        dns_lookup: DnsLookup | None = None,
    ) -> None:
        self.store = store
        self.composer = composer
        self.scenarios = scenarios
        self.scenarios_by_id = {scenario.id: scenario for scenario in scenarios}
        self.config = config
        self.domain = config.service.domain
        self.signer = signer or load_signer(config.service.secret_file)
        # DKIM key lookups; None uses dkimpy's DNS resolver.
        self.dns_lookup = dns_lookup

    async def process_pending(
        self, own_ids: deque[int] | None = None, stale_after_s: float = 0.0
    ) -> list[Outcome]:
        """Process received messages until none is left.

        With ``own_ids`` (several serve processes), take the messages this
        process's listener stored, then any other message still waiting
        ``stale_after_s`` after it arrived, such as one stored by a process
        that has since died. Without, take every waiting message.
        """
        outcomes: list[Outcome] = []
        while True:
            if own_ids is None:
                ids = await self.store.received_inbound_ids()
            else:
                ids = [own_ids.popleft() for _ in range(len(own_ids))]
                if not ids:
                    ids = await self.store.received_inbound_ids(
                        received_before=self.store.clock() - stale_after_s
                    )
            if not ids:
                return outcomes
            for inbound_id in ids:
                outcome = await self.process(inbound_id)
                if outcome:
                    outcomes.append(outcome)

    async def process(self, inbound_id: int) -> Outcome | None:
        """Process one message; None when it was already processed elsewhere."""
        row = await self.store.inbound_row(inbound_id)
        if row is None or row["state"] != "received":
            return None
        rcpt_tos = [address.lower() for address in json.loads(row["rcpt_tos"])]
        bounce_targets = [
            a
            for a in rcpt_tos
            if a.startswith("bounces+") and a.endswith("@" + self.domain)
        ]
        if bounce_targets or f"bounces@{self.domain}" in rcpt_tos:
            return await self._record_bounce(inbound_id, row["raw"], bounce_targets)
        mail_from = row["mail_from"]
        if not mail_from or mail_from.startswith(("mailer-daemon@", "postmaster@")):
            # Bounces are often malformed; decide before parsing so they are
            # ignored rather than quarantined.
            return await self._finish_only(
                inbound_id, "ignored", "null or mailer-daemon envelope sender (bounce)"
            )
        automatic = classify_raw(row["raw"])
        if automatic:
            logger.info("inbound %d ignored: %s", inbound_id, automatic)
            return await self._finish_only(inbound_id, "ignored", automatic)
        try:
            parsed = parse(row["raw"])
        except Exception as exc:  # any parser failure must quarantine, not crash
            logger.warning(
                "inbound %d quarantined: %s: %s", inbound_id, type(exc).__name__, exc
            )
            return await self._finish_only(
                inbound_id,
                "quarantined",
                f"could not parse: {type(exc).__name__}: {exc}",
            )

        skip_reason = self._automatic_reason(row["mail_from"], parsed)
        if skip_reason:
            logger.info("inbound %d ignored: %s", inbound_id, skip_reason)
            return await self._finish_only(inbound_id, "ignored", skip_reason)

        try:
            async with self.store.transaction() as db:
                outcome = await self._decide(
                    db, inbound_id, parsed, rcpt_tos, row["raw"], bool(row["trusted"])
                )
                if outcome is None:
                    # Another process finished this row first, so undo our writes.
                    raise _AlreadyProcessed
        except _AlreadyProcessed:
            return None
        logger.info(
            "inbound %d %s: %s (attempt %s)",
            inbound_id,
            outcome.state,
            outcome.reason,
            outcome.attempt_id,
        )
        return outcome

    async def _record_bounce(
        self, inbound_id: int, raw: bytes, targets: list[str]
    ) -> Outcome | None:
        """Record a bounce of our own mail against the email it is about. Never answered."""
        try:
            report = delivery_report(raw)
        except Exception as exc:  # a broken bounce is still a bounce
            logger.warning(
                "inbound %d: unreadable delivery report: %s", inbound_id, exc
            )
            report = None
        status = report.status if report else ""
        hard = report.hard if report else False
        async with self.store.transaction() as db:
            bounced = [
                email
                for target in targets
                if (
                    email := await sql.record_bounce(
                        db, target, status, hard, self.store.clock()
                    )
                )
            ]
            what = ", ".join(f"outbox {email.id} ({email.kind})" for email in bounced)
            reason = (
                f"bounce of {what}, status {status or 'unknown'}"
                if bounced
                else "bounce for no known email"
            )
            done = await sql.finish_inbound(
                db, inbound_id, state="ignored", reason=reason, now=self.store.clock()
            )
        if done:
            logger.info("inbound %d: %s", inbound_id, reason)
        return Outcome(inbound_id, "ignored", reason) if done else None

    async def explain(self, inbound_id: int) -> list[str]:
        """Describe each intake decision for a stored message, changing nothing."""
        row = await self.store.inbound_row(inbound_id)
        if row is None:
            raise NotFoundError(
                f"inbound {inbound_id} not found; see peb-mail inbound list"
            )
        rcpt_tos = [address.lower() for address in json.loads(row["rcpt_tos"])]
        lines = [
            f"message {inbound_id}: envelope from {row['mail_from'] or '<>'} to "
            f"{', '.join(rcpt_tos)}; stored state {row['state']}"
            + (f" ({row['reason']})" if row["reason"] else ""),
        ]
        if any(
            a.startswith("bounces") and a.endswith("@" + self.domain) for a in rcpt_tos
        ):
            report = delivery_report(row["raw"])
            lines.append(
                f"bounce: addressed to our bounce address; status "
                f"{report.status if report else 'unknown'}"
                + (f" ({'hard' if report.hard else 'soft'})" if report else "")
            )
            return lines
        try:
            parsed = parse(row["raw"])
        except Exception as exc:
            lines.append(
                f"parse: failed, would quarantine: {type(exc).__name__}: {exc}"
            )
            return lines
        lines.append(
            f"parse: From {parsed.from_address!r}, Subject {parsed.subject!r}, "
            f"Message-ID {parsed.message_id}, In-Reply-To {list(parsed.in_reply_to)}, "
            f"{len(parsed.references)} References, "
            f"{len(parsed.attachments)} attachments "
            f"{[a.filename for a in parsed.attachments]}"
        )
        skip = self._automatic_reason(row["mail_from"], parsed)
        lines.append(
            f"classify: {'machine-sent, not answered: ' + skip if skip else 'written by a person'}"
        )
        lines.append(
            f"extract: {'quoted history removed' if parsed.had_quote else 'no quoted history'}; new text:"
        )
        lines.extend(
            "    | " + line for line in (parsed.new_text or "(empty)").splitlines()
        )
        if skip:
            return lines
        async with self.store.read() as db:
            student = await sql.fetch_student(db, parsed.from_address)
            if student is None:
                lines.append("student: not enrolled, would get one notice a day")
                return lines
            lines.append(
                f"student: {student.email} ({student.name}, cohort {student.cohort})"
            )
            to_service = self.config.service.service_address in rcpt_tos
            command = (
                parse_command(parsed.subject, parsed.new_text) if to_service else None
            )
            if command:
                lines.append(
                    f"command: {command.name} {command.argument or ''}".rstrip()
                )
                return lines
            matched = await self._match(db, student, parsed, rcpt_tos)
        if matched is None:
            lines.append(
                "match: none; would send HELP"
                if to_service
                else "match: none; would send a notice"
            )
        else:
            attempt, kind, method = matched
            lines.append(
                f"match: attempt {attempt.id} ({attempt.scenario_id}, state {attempt.state}) "
                f"by {method}" + (f", a reply to our {kind}" if kind else "")
            )
            held = check_sender(
                self.config.service.sender_policy,
                matched_by=method,
                raw=row["raw"],
                from_address=parsed.from_address,
                trusted_authserv_ids=self.config.service.trusted_authserv_ids,
                dns_lookup=self.dns_lookup,
            )
            lines.append(
                f"sender policy {self.config.service.sender_policy}: "
                + (
                    f"held for review: {held}"
                    if held and not row["trusted"]
                    else "passes"
                )
            )
        return lines

    def _automatic_reason(self, mail_from: str, parsed: ParsedEmail) -> str | None:
        if parsed.automatic:
            return parsed.automatic
        if not mail_from or mail_from.startswith(("mailer-daemon@", "postmaster@")):
            return "null or mailer-daemon envelope sender (bounce)"
        if parsed.from_address.endswith("@" + self.domain):
            return "our own mail looping back"
        return None

    async def _finish_only(
        self, inbound_id: int, state: str, reason: str
    ) -> Outcome | None:
        async with self.store.transaction() as db:
            done = await sql.finish_inbound(
                db, inbound_id, state=state, reason=reason, now=self.store.clock()
            )
        return Outcome(inbound_id, state, reason) if done else None

    async def _decide(
        self,
        db: aiosqlite.Connection,
        inbound_id: int,
        parsed: ParsedEmail,
        rcpt_tos: list[str],
        raw: bytes = b"",
        trusted: bool = False,
    ) -> Outcome | None:
        review = review_target(rcpt_tos, self.domain)
        if review is not None:
            return await self._instructor_reply(db, inbound_id, parsed, *review)
        student = await sql.fetch_student(db, parsed.from_address)
        if student is None:
            await self._notice_once(
                db,
                parsed,
                None,
                f"We could not find the address {parsed.from_address} in our list "
                "of students. If your teacher added you with another address, please "
                "write from that address. If not, please ask your teacher to add you.",
                show_help=False,
            )
            return await self._finish(
                db, inbound_id, "rejected", "sender not enrolled", None, None
            )

        to_service = self.config.service.service_address in rcpt_tos
        command = parse_command(parsed.subject, parsed.new_text) if to_service else None
        matched = None if command else await self._match(db, student, parsed, rcpt_tos)
        attempt, replied_to, matched_by = matched if matched else (None, None, "")

        if command:
            attempt_id = await self._run_command(db, command, student, parsed)
            return await self._finish(
                db,
                inbound_id,
                "processed",
                f"command {command.name}",
                student.id,
                attempt_id,
            )
        if attempt is not None and replied_to == "brief" and attempt.state == "open":
            await self._explain_brief_reply(db, parsed, student, attempt)
            return await self._finish(
                db,
                inbound_id,
                "processed",
                "reply to the brief, not graded",
                student.id,
                attempt.id,
            )
        if attempt is not None and not trusted:
            held = check_sender(
                self.config.service.sender_policy,
                matched_by=matched_by,
                raw=raw,
                from_address=parsed.from_address,
                trusted_authserv_ids=self.config.service.trusted_authserv_ids,
                dns_lookup=self.dns_lookup,
            )
            if held:
                await self._tell_instructors_held(
                    db, inbound_id, student, attempt, held
                )
                await self._notify(
                    db,
                    student,
                    parsed,
                    attempt.id,
                    "We received your email. Before we grade it, your "
                    "teacher will check that it really comes from you. Next time, "
                    "please reply to the email we sent you, or write to the "
                    "address in your brief.",
                )
                return await self._finish(
                    db,
                    inbound_id,
                    "quarantined",
                    f"held for review: {held}",
                    student.id,
                    attempt.id,
                )
        if attempt is not None:
            return await self._submit(db, inbound_id, parsed, student, attempt)
        if to_service:
            await self._reply(db, "help", student, parsed, self._help_text(student))
            return await self._finish(
                db, inbound_id, "processed", "no command: sent HELP", student.id, None
            )
        await self._notice_once(
            db,
            parsed,
            student,
            "We could not match your email to a practice scenario. Please reply to the "
            "email we sent you for the scenario, or write to the address in your brief.",
        )
        return await self._finish(
            db, inbound_id, "rejected", "no matching attempt", student.id, None
        )

    async def _match(
        self,
        db: aiosqlite.Connection,
        student: Student,
        parsed: ParsedEmail,
        rcpt_tos: list[str],
    ) -> tuple[Attempt, str | None, str] | None:
        """Find the attempt a message answers.

        Returns (attempt, kind, method). Thread ids come first, then a token in
        a recipient address, then the sender's only open attempt; ``method``
        says which ("thread", "token" or "only-open"). ``kind`` is the kind of
        our email that a thread match replies to ("brief", "feedback"...).
        """
        known_id = await sql.closest_known_id(
            db, [*parsed.references, *parsed.in_reply_to]
        )
        if known_id is not None:
            attempt_id = await sql.attempt_for_message_ids(db, [known_id])
            attempt = await sql.fetch_attempt(db, attempt_id) if attempt_id else None
            if attempt and attempt.student_id == student.id:
                return attempt, await sql.thread_kind(db, known_id), "thread"
        for address in rcpt_tos:
            token = token_of(address, self.domain)
            if token:
                attempt = await sql.attempt_by_token(db, token)
                # The token must be ours for this student and attempt: a token
                # copied from another student's email does not count.
                if (
                    attempt
                    and attempt.student_id == student.id
                    and self.signer.verify(token, student.id, attempt.id)
                ):
                    return attempt, None, "token"
        if self.config.service.service_address not in rcpt_tos:
            open_attempts = await sql.open_attempts(db, student.id)
            if len(open_attempts) == 1:
                return open_attempts[0], None, "only-open"
        return None

    async def _next_attempt(
        self, db: aiosqlite.Connection, student: Student, previous: Attempt
    ) -> Attempt | None:
        """Open the next attempt of the same scenario, or None at the limit."""
        limit = self.config.service.max_attempts_per_scenario
        if (
            limit
            and await sql.count_attempts(db, student.id, previous.scenario_id) >= limit
        ):
            return None
        attempt_id = await sql.create_attempt(
            db,
            student.id,
            previous.scenario_id,
            lambda new_id: self.signer.token(student.id, new_id),
            self.store.clock(),
            previous_attempt_id=previous.id,
        )
        return await sql.fetch_attempt(db, attempt_id)

    async def _explain_brief_reply(
        self,
        db: aiosqlite.Connection,
        parsed: ParsedEmail,
        student: Student,
        attempt: Attempt,
    ) -> None:
        """Tell a student who answered the brief itself where the answer must go."""
        scenario = self.scenarios_by_id.get(attempt.scenario_id)
        if scenario is None:
            return
        if scenario.type == "initiate":
            address = self.composer.counterpart_address(scenario, attempt.token)
            where = (
                f"To do the task, write a new email to {scenario.counterpart.name} "
                f"at this address:\n\n    {address}"
            )
        else:
            where = (
                f"To do the task, reply to the email from {scenario.counterpart.name} "
                f'with the subject "{scenario.starter_subject}".'
            )
        text = (
            "Thank you. Your email was a reply to the brief, so we did not grade it. "
            + where
        )
        await self._notify(db, student, parsed, attempt.id, text)

    async def _submit(
        self,
        db: aiosqlite.Connection,
        inbound_id: int,
        parsed: ParsedEmail,
        student: Student,
        attempt: Attempt,
    ) -> Outcome | None:
        if attempt.state in ("graded", "failed") and parsed.new_text.strip():
            # A reply to feedback with a revised email: the next attempt.
            revised = await self._next_attempt(db, student, attempt)
            if revised is None:
                await self._notify(
                    db,
                    student,
                    parsed,
                    attempt.id,
                    (
                        f"You have used all {self.config.service.max_attempts_per_scenario} "
                        "attempts for this scenario, so we did not grade this email. "
                        "Send LIST to choose another scenario."
                    ),
                )
                return await self._finish(
                    db,
                    inbound_id,
                    "processed",
                    "attempt limit reached",
                    student.id,
                    attempt.id,
                )
            attempt = revised
        if parsed.message_id:
            await sql.add_thread_id(db, parsed.message_id, attempt.id)
        if attempt.state != "open":
            state_text = {
                "submitted": "We already have your email for this scenario and we are grading it.",
                "graded": "You already finished this scenario and we sent you the feedback.",
                "failed": "We already have your email for this scenario.",
            }.get(attempt.state, "This scenario is closed.")
            scenario = self.scenarios_by_id.get(attempt.scenario_id)
            ref = scenario.number if scenario else attempt.scenario_id
            await self._notify(
                db,
                student,
                parsed,
                attempt.id,
                f"{state_text} To practise it again, send START {ref}.",
            )
            return await self._finish(
                db,
                inbound_id,
                "processed",
                f"attempt already {attempt.state}",
                student.id,
                attempt.id,
            )
        if not parsed.new_text.strip():
            text = (
                "We found only quoted text in your email, so there is nothing to grade. "
                "Please write your answer above the quoted email and send it again."
                if parsed.had_quote
                else "Your email was empty, so there is nothing to grade. Please write "
                "your answer and send it again."
            )
            await self._notify(db, student, parsed, attempt.id, text)
            return await self._finish(
                db, inbound_id, "processed", "nothing to grade", student.id, attempt.id
            )
        await sql.submit_attempt(
            db,
            attempt.id,
            inbound_id=inbound_id,
            subject=parsed.subject,
            body=parsed.new_text,
            attachments=json.dumps([asdict(item) for item in parsed.attachments]),
            max_tries=self.config.queue.max_tries,
            now=self.store.clock(),
        )
        return await self._finish(
            db, inbound_id, "processed", "submission queued", student.id, attempt.id
        )

    async def _notify(
        self,
        db: aiosqlite.Connection,
        student: Student,
        parsed: ParsedEmail,
        attempt_id: int,
        text: str,
    ) -> None:
        """Queue a short notice for one attempt, threaded under the student's message."""
        body = self.composer.render(
            "notice.txt.j2", student_name=first_name(student.name), text=text
        )
        await self._reply(db, "notice", student, parsed, body, attempt_id=attempt_id)

    async def _reply(
        self,
        db: aiosqlite.Connection,
        kind: str,
        student: Student,
        parsed: ParsedEmail,
        text: str,
        *,
        subject: str | None = None,
        reply_to: str | None = None,
        attachments: tuple[Artefact, ...] = (),
        attempt_id: int | None = None,
        html: str | None = None,
    ) -> None:
        """Queue a reply to the student's message, threaded under it."""
        email = self.composer.build(
            kind=kind,
            sender=self.composer.service,
            to=[Mailbox(student.name, student.email)],
            subject=subject or reply_subject(parsed.subject),
            text=text,
            html=html,
            reply_to=reply_to,
            in_reply_to=parsed.message_id,
            references=parsed.references,
            attachments=attachments,
            attempt_id=attempt_id,
        )
        await sql.insert_outbox(db, email, self.store.clock())

    async def _notice_once(
        self,
        db: aiosqlite.Connection,
        parsed: ParsedEmail,
        student: Student | None,
        text: str,
        show_help: bool = True,
    ) -> None:
        """Send a short explanation, at most one per sender per UTC day."""
        day = dt.datetime.fromtimestamp(self.store.clock(), dt.UTC).date().isoformat()
        if not await sql.take_notice_slot(db, parsed.from_address, day):
            return
        name = first_name(student.name) if student else ""
        email = self.composer.build(
            kind="notice",
            sender=self.composer.service,
            to=[
                Mailbox(
                    student.name if student else parsed.from_name, parsed.from_address
                )
            ],
            subject=reply_subject(parsed.subject),
            text=self.composer.render(
                "notice.txt.j2", student_name=name, text=text, show_help=show_help
            ),
            in_reply_to=parsed.message_id,
            references=parsed.references,
        )
        await sql.insert_outbox(db, email, self.store.clock())

    async def _finish(
        self,
        db: aiosqlite.Connection,
        inbound_id: int,
        state: str,
        reason: str,
        student_id: int | None,
        attempt_id: int | None,
    ) -> Outcome | None:
        done = await sql.finish_inbound(
            db,
            inbound_id,
            state=state,
            reason=reason,
            now=self.store.clock(),
            student_id=student_id,
            attempt_id=attempt_id,
        )
        return Outcome(inbound_id, state, reason, attempt_id) if done else None


class _AlreadyProcessed(Exception):
    """Raised inside the intake transaction to roll it back."""
