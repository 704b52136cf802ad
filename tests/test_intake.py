"""Intake decisions on stored messages: commands, matching, notices, skips."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

import pytest

from peb_mail import store as sql
from peb_mail.commands import Command, parse_command
from peb_mail.compose import Composer
from peb_mail.config import Config
from peb_mail.intake import Intake, Outcome, token_of
from peb_mail.scenarios import load_scenarios
from peb_mail.store import Store

from .conftest import DOMAIN, INSTRUCTOR, SERVICE, STUDENT, make_config

OTHER = "ben.okafor@student.test"
DAY_S = 86400.0


@pytest.mark.parametrize(
    ("subject", "first_line", "expected"),
    [
        ("START 2", "", Command("START", "2")),
        ("start clarify-vague-task", "", Command("START", "clarify-vague-task")),
        ("Re: list", "", Command("LIST")),
        ("RE: Re: Status", "", Command("STATUS")),
        ("", "help", Command("HELP")),
        ("Hello", "LIST.", Command("LIST")),
        ("start", "", Command("START")),
        ("Help with the report", "Dear Daniel,", None),
        ("list 3", "", None),
        ("Question", "On Monday I will start the report.", None),
    ],
)
def test_parse_command_table(
    subject: str, first_line: str, expected: Command | None
) -> None:
    assert parse_command(subject, first_line + "\nmore text") == expected


def test_token_of_address() -> None:
    assert token_of(f"reply+abc123@{DOMAIN}", DOMAIN) == "abc123"
    assert token_of(f"Daniel.Moreau+ABC@{DOMAIN.upper()}", DOMAIN) == "abc"
    assert token_of(f"reply@{DOMAIN}", DOMAIN) is None
    assert token_of("reply+abc@elsewhere.test", DOMAIN) is None


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Harness:
    config: Config
    store: Store
    intake: Intake
    clock: Clock

    async def deliver(
        self, message: EmailMessage | bytes, rcpt: str, mail_from: str = STUDENT
    ) -> Outcome:
        raw = message if isinstance(message, bytes) else message.as_bytes()
        parsed_id = (
            None
            if isinstance(message, bytes)
            else str(message["Message-ID"]).strip("<>")
        )
        inbound_id = await self.store.ingest(
            peer="127.0.0.1:1",
            mail_from=mail_from,
            rcpt_tos=[rcpt],
            message_id=parsed_id,
            raw=raw,
        )
        assert inbound_id is not None
        outcome = await self.intake.process(inbound_id)
        assert outcome is not None
        return outcome

    async def outbox(self) -> list[EmailMessage]:
        emails = await self.store.list_outbox(limit=1000)
        return [
            email.message_from_bytes(item.raw, policy=email.policy.default)  # type: ignore[misc]
            for item in reversed(emails)
        ]

    async def attempts(self) -> list[sql.Attempt]:
        rows = await self.store.list_attempts()
        return [
            a for row in rows if (a := await self.store.attempt(row["id"])) is not None
        ]


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    config = make_config(tmp_path)
    clock = Clock()
    store = await Store.open(config.service.database, clock=clock)
    await store.upsert_students(
        [(STUDENT, "Ana Silva", "demo"), (OTHER, "Ben Okafor", "demo")], {}
    )
    intake = Intake(
        store, Composer(config), load_scenarios(config.service.scenarios_dir), config
    )
    yield Harness(config, store, intake, clock)
    await store.close()


def mail(
    subject: str,
    body: str,
    *,
    to: str = SERVICE,
    sender: str = STUDENT,
    in_reply_to: str | None = None,
    headers: dict[str, str] | None = None,
) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = make_msgid(domain="student.test")
    if in_reply_to:
        message["In-Reply-To"] = in_reply_to
    for name, value in (headers or {}).items():
        message[name] = value
    message.set_content(body)
    return message


GOOD_ANSWER = "Dear Daniel,\n\nThe March revenue is $14,200. I attached the file.\n\nBest regards,\nAna"


async def start(
    harness: Harness, ref: str = "correct-error-in-report", sender: str = STUDENT
) -> sql.Attempt:
    outcome = await harness.deliver(
        mail(f"START {ref}", "", sender=sender), SERVICE, mail_from=sender
    )
    assert outcome.attempt_id is not None
    attempt = await harness.store.attempt(outcome.attempt_id)
    assert attempt is not None
    return attempt


def text_of(message: EmailMessage) -> str:
    body = message.get_body(("plain",))
    assert body is not None
    return str(body.get_content())


def counterpart(attempt: sql.Attempt, local: str = "daniel.okafor") -> str:
    return f"{local}+{attempt.token}@{DOMAIN}"


async def test_start_creates_attempt_and_brief(harness: Harness) -> None:
    attempt = await start(harness)
    [brief] = await harness.outbox()
    assert attempt.state == "open"
    assert str(brief["Reply-To"]) == SERVICE
    assert counterpart(attempt) in text_of(brief)
    assert str(brief["Subject"]).startswith("Scenario 1:")


async def test_reply_scenario_sends_starter(harness: Harness) -> None:
    await start(harness, "clarify-vague-task")
    emails = await harness.outbox()
    assert len(emails) == 2
    assert "+" in emails[1]["From"].addresses[0].addr_spec
    assert emails[1]["Auto-Submitted"] == "auto-generated"


async def test_start_unknown_scenario_explains(harness: Harness) -> None:
    outcome = await harness.deliver(mail("START nothing-like-this", ""), SERVICE)
    [notice] = await harness.outbox()
    assert outcome.attempt_id is None
    assert "nothing-like-this" in text_of(notice)
    assert "clarify-vague-task" in text_of(notice)
    assert await harness.attempts() == []


async def test_submission_by_token_queues_job(harness: Harness) -> None:
    attempt = await start(harness)
    outcome = await harness.deliver(
        mail("Correction", GOOD_ANSWER, to=counterpart(attempt)), counterpart(attempt)
    )
    jobs = await harness.store.list_jobs()
    assert outcome.reason == "submission queued"
    assert outcome.attempt_id == attempt.id
    assert [(job.attempt_id, job.state) for job in jobs] == [(attempt.id, "queued")]


async def test_reply_to_brief_not_graded(harness: Harness) -> None:
    attempt = await start(harness)
    [brief] = await harness.outbox()
    reply = mail("Re: brief", "Thanks, I got it.", in_reply_to=str(brief["Message-ID"]))
    outcome = await harness.deliver(reply, SERVICE)
    notice = (await harness.outbox())[-1]
    assert outcome.attempt_id == attempt.id
    assert outcome.reason == "reply to the brief, not graded"
    assert counterpart(attempt) in text_of(notice)
    assert await harness.store.list_jobs() == []


async def test_reply_to_starter_matches_attempt(harness: Harness) -> None:
    attempt = await start(harness, "clarify-vague-task")
    starter = (await harness.outbox())[-1]
    address = starter["From"].addresses[0].addr_spec
    reply = mail(
        "Re: notes", GOOD_ANSWER, to=address, in_reply_to=str(starter["Message-ID"])
    )
    outcome = await harness.deliver(reply, address)
    assert outcome.attempt_id == attempt.id
    assert outcome.reason == "submission queued"


async def test_reply_to_notice_is_submission(harness: Harness) -> None:
    attempt = await start(harness)
    empty = mail("Re: x", "> only quoted", to=counterpart(attempt))
    await harness.deliver(empty, counterpart(attempt))
    notice = (await harness.outbox())[-1]
    answer = mail("Re: x", GOOD_ANSWER, in_reply_to=str(notice["Message-ID"]))
    outcome = await harness.deliver(answer, SERVICE)
    assert outcome.attempt_id == attempt.id
    assert outcome.reason == "submission queued"


async def test_status_shows_where_to_write(harness: Harness) -> None:
    attempt = await start(harness)
    await harness.deliver(mail("STATUS", ""), SERVICE)
    reply = (await harness.outbox())[-1]
    status = text_of(reply)
    html = reply.get_body(("html",))
    assert "Scenario 1:" in status
    assert counterpart(attempt) in status
    assert "Suggested next: scenario 2" in status
    assert html is not None


async def test_only_open_attempt_held_by_token_policy(harness: Harness) -> None:
    attempt = await start(harness)
    plain = f"daniel.okafor@{DOMAIN}"
    outcome = await harness.deliver(mail("Correction", GOOD_ANSWER, to=plain), plain)
    held = [item for item in await harness.store.list_outbox() if item.kind == "held"]
    assert outcome.attempt_id == attempt.id
    assert outcome.state == "quarantined"
    assert outcome.reason.startswith("held for review: no reply token")
    assert await harness.store.list_jobs() == []
    assert [item.rcpt_tos for item in held] == [(INSTRUCTOR,)]
    told = (await harness.outbox())[-1]
    assert "teacher will check" in text_of(told)
    assert STUDENT in str(told["To"])


async def test_trusted_release_grades_held_mail(harness: Harness) -> None:
    await start(harness)
    plain = f"daniel.okafor@{DOMAIN}"
    outcome = await harness.deliver(mail("Correction", GOOD_ANSWER, to=plain), plain)
    assert await harness.store.release_inbound([outcome.inbound_id], trust=True) == 1
    again = await harness.intake.process(outcome.inbound_id)
    assert again is not None
    assert again.reason == "submission queued"


async def test_only_open_attempt_fallback_policy_none(tmp_path: Path) -> None:
    config = make_config(tmp_path, service={"sender_policy": "none"})
    store = await Store.open(config.service.database)
    try:
        await store.upsert_students([(STUDENT, "Ana Silva", "demo")], {})
        harness = Harness(
            config,
            store,
            Intake(
                store,
                Composer(config),
                load_scenarios(config.service.scenarios_dir),
                config,
            ),
            Clock(),
        )
        attempt = await start(harness)
        plain = f"daniel.okafor@{DOMAIN}"
        outcome = await harness.deliver(
            mail("Correction", GOOD_ANSWER, to=plain), plain
        )
    finally:
        await store.close()
    assert outcome.attempt_id == attempt.id
    assert outcome.reason == "submission queued"


async def test_two_open_attempts_no_fallback(harness: Harness) -> None:
    await start(harness)
    await start(harness, "reschedule-client-call")
    plain = f"daniel.okafor@{DOMAIN}"
    outcome = await harness.deliver(mail("Correction", GOOD_ANSWER, to=plain), plain)
    assert outcome.state == "rejected"
    assert outcome.attempt_id is None


async def test_other_students_token_ignored(harness: Harness) -> None:
    attempt = await start(harness)
    intruder = mail("Correction", GOOD_ANSWER, to=counterpart(attempt), sender=OTHER)
    outcome = await harness.deliver(intruder, counterpart(attempt), mail_from=OTHER)
    assert outcome.state == "rejected"
    refreshed = await harness.store.attempt(attempt.id)
    assert refreshed is not None
    assert refreshed.state == "open"


async def test_only_quoted_text_not_graded(harness: Harness) -> None:
    attempt = await start(harness)
    quoted_only = mail(
        "Re: Scenario",
        "On Mon, 1 Dec 2026 at 10:00, peb-mail wrote:\n> the brief\n> more",
        to=counterpart(attempt),
    )
    outcome = await harness.deliver(quoted_only, counterpart(attempt))
    notice = (await harness.outbox())[-1]
    assert outcome.reason == "nothing to grade"
    assert "only quoted text" in text_of(notice)
    assert await harness.store.list_jobs() == []


async def test_reply_to_feedback_is_next_attempt(harness: Harness) -> None:
    attempt = await start(harness)
    async with harness.store.transaction() as db:
        await sql.set_attempt_state(db, attempt.id, "graded")
    outcome = await harness.deliver(
        mail("Again", GOOD_ANSWER, to=counterpart(attempt)), counterpart(attempt)
    )
    revised = await harness.store.attempt(outcome.attempt_id or 0)
    assert outcome.reason == "submission queued"
    assert revised is not None
    assert revised.id != attempt.id
    assert revised.previous_attempt_id == attempt.id
    assert revised.scenario_id == attempt.scenario_id
    assert [job.attempt_id for job in await harness.store.list_jobs()] == [revised.id]


async def test_attempt_limit_stops_resubmission(tmp_path: Path) -> None:
    config = make_config(tmp_path, service={"max_attempts_per_scenario": 1})
    store = await Store.open(config.service.database)
    try:
        await store.upsert_students([(STUDENT, "Ana Silva", "demo")], {})
        limited = Harness(
            config,
            store,
            Intake(
                store,
                Composer(config),
                load_scenarios(config.service.scenarios_dir),
                config,
            ),
            Clock(),
        )
        attempt = await start(limited)
        async with store.transaction() as db:
            await sql.set_attempt_state(db, attempt.id, "graded")
        outcome = await limited.deliver(
            mail("Again", GOOD_ANSWER, to=counterpart(attempt)), counterpart(attempt)
        )
        notice = (await limited.outbox())[-1]
    finally:
        await store.close()
    assert outcome.reason == "attempt limit reached"
    assert "all 1 attempts" in text_of(notice)


async def test_resubmit_while_grading_explains(harness: Harness) -> None:
    attempt = await start(harness)
    await harness.deliver(
        mail("First", GOOD_ANSWER, to=counterpart(attempt)), counterpart(attempt)
    )
    outcome = await harness.deliver(
        mail("Second", GOOD_ANSWER, to=counterpart(attempt)), counterpart(attempt)
    )
    notice = (await harness.outbox())[-1]
    assert outcome.reason == "attempt already submitted"
    assert "grading it" in text_of(notice)


async def test_stranger_notice_once_per_day(harness: Harness) -> None:
    stranger = "who@elsewhere.test"
    for _ in range(3):
        await harness.deliver(
            mail("hi", "hello", sender=stranger), SERVICE, mail_from=stranger
        )
    first_day = len(await harness.outbox())
    harness.clock.now += DAY_S
    await harness.deliver(
        mail("hi", "hello", sender=stranger), SERVICE, mail_from=stranger
    )
    assert first_day == 1
    assert len(await harness.outbox()) == 2


@pytest.mark.parametrize(
    ("headers", "mail_from"),
    [
        ({"Auto-Submitted": "auto-replied"}, STUDENT),
        ({"X-Autoreply": "yes"}, STUDENT),
        ({"Precedence": "bulk"}, STUDENT),
        ({"List-Id": "<team.lists.test>"}, STUDENT),
        ({}, ""),
        ({}, "MAILER-DAEMON@mx.student.test"),
    ],
)
async def test_automatic_mail_ignored(
    harness: Harness, headers: dict[str, str], mail_from: str
) -> None:
    outcome = await harness.deliver(
        mail("LIST", "LIST", headers=headers), SERVICE, mail_from=mail_from
    )
    assert outcome.state == "ignored"
    assert await harness.outbox() == []


async def test_out_of_office_subject_ignored(harness: Harness) -> None:
    outcome = await harness.deliver(
        mail("Out of Office: back on Monday", "I am away."), SERVICE
    )
    assert outcome.state == "ignored"


async def test_two_from_addresses_quarantined(harness: Harness) -> None:
    raw = (
        f"From: {STUDENT}, {OTHER}\r\nTo: {SERVICE}\r\nSubject: LIST\r\n"
        "Message-ID: <two@student.test>\r\n\r\nLIST\r\n"
    ).encode()
    outcome = await harness.deliver(raw, SERVICE)
    rows = await harness.store.list_inbound("quarantined")
    assert outcome.state == "quarantined"
    assert "From" in outcome.reason
    assert len(rows) == 1
    assert await harness.outbox() == []


async def test_concurrent_intake_applies_once(harness: Harness, tmp_path: Path) -> None:
    second_store = await Store.open(
        harness.config.service.database, clock=harness.clock
    )
    second = Intake(
        second_store, Composer(harness.config), harness.intake.scenarios, harness.config
    )
    try:
        inbound_id = await harness.store.ingest(
            peer="p",
            mail_from=STUDENT,
            rcpt_tos=[SERVICE],
            message_id="x@y",
            raw=mail("LIST", "").as_bytes(),
        )
        assert inbound_id is not None
        outcomes = await asyncio.gather(
            harness.intake.process(inbound_id), second.process(inbound_id)
        )
    finally:
        await second_store.close()
    assert sum(outcome is not None for outcome in outcomes) == 1
    assert len(await harness.outbox()) == 1


async def test_submission_records_attachments(harness: Harness) -> None:
    attempt = await start(harness)
    message = mail("Correction", GOOD_ANSWER, to=counterpart(attempt))
    message.add_attachment(
        b"a,b\n1,2\n", maintype="text", subtype="csv", filename="fixed.csv"
    )
    await harness.deliver(message, counterpart(attempt))
    stored = await harness.store.attempt(attempt.id)
    assert stored is not None
    [attachment] = json.loads(stored.attachments or "[]")
    assert attachment["filename"] == "fixed.csv"
    assert attachment["content_type"] == "text/csv"
    assert attachment["size_bytes"] == 8


async def test_forged_token_in_database_ignored(harness: Harness) -> None:
    attempt = await start(harness)
    forged = "a" * 16
    async with harness.store.transaction() as db:
        await db.execute(
            "update attempts set token = ? where id = ?", (forged, attempt.id)
        )
    address = f"daniel.okafor+{forged}@{DOMAIN}"
    await start(harness, "reschedule-client-call")  # a second open attempt: no fallback
    outcome = await harness.deliver(
        mail("Correction", GOOD_ANSWER, to=address), address
    )
    assert outcome.state == "rejected"
    assert outcome.attempt_id is None


def dsn(original_to: str, status: str, action: str = "failed") -> bytes:
    return (
        "From: MAILER-DAEMON@mx.student.test\r\n"
        f"To: bounce@{DOMAIN}\r\nSubject: Undelivered Mail Returned to Sender\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n'
        "MIME-Version: 1.0\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\n"
        "Your message could not be delivered.\r\n--B\r\n"
        "Content-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.student.test\r\n\r\n"
        f"Final-Recipient: rfc822; {original_to}\r\nAction: {action}\r\n"
        f"Status: {status}\r\nDiagnostic-Code: smtp; 550 {status} no such user\r\n"
        "--B--\r\n"
    ).encode()


async def test_bounce_recorded_against_email(harness: Harness) -> None:
    await start(harness)
    [brief] = await harness.store.list_outbox()
    assert brief.envelope_from.startswith("bounces+")
    outcome = await harness.deliver(
        dsn(STUDENT, "5.1.1"), brief.envelope_from, mail_from=""
    )
    [stored] = await harness.store.list_outbox()
    [student] = [s for s in await harness.store.list_students() if s.email == STUDENT]
    assert outcome.state == "ignored"
    assert f"outbox {brief.id} (brief)" in outcome.reason
    assert stored.bounce_status == "5.1.1"
    assert student.hard_bounces == 1
    assert student.flagged is None
    assert len(await harness.store.list_outbox()) == 1


async def test_repeated_hard_bounces_flag_student(harness: Harness) -> None:
    for _ in range(3):
        await start(harness)
    emails = await harness.store.list_outbox()
    for item in emails:
        await harness.deliver(dsn(STUDENT, "5.1.1"), item.envelope_from, mail_from="")
    [student] = [s for s in await harness.store.list_students() if s.email == STUDENT]
    assert student.hard_bounces == 3
    assert student.flagged is not None


async def test_soft_bounce_not_counted(harness: Harness) -> None:
    await start(harness)
    [brief] = await harness.store.list_outbox()
    await harness.deliver(
        dsn(STUDENT, "4.4.1", "delayed"), brief.envelope_from, mail_from=""
    )
    [student] = [s for s in await harness.store.list_students() if s.email == STUDENT]
    [stored] = await harness.store.list_outbox()
    assert stored.bounce_status == "4.4.1"
    assert student.hard_bounces == 0


async def test_tnef_only_body_quarantined(harness: Harness) -> None:
    attempt = await start(harness)
    message = mail("Correction", "", to=counterpart(attempt))
    message.clear_content()
    message.add_attachment(
        b"\x78\x9f\x3e\x22" + b"\x00" * 64,
        maintype="application",
        subtype="ms-tnef",
        filename="winmail.dat",
    )
    outcome = await harness.deliver(message, counterpart(attempt))
    assert outcome.state == "quarantined"
    assert "TNEF" in outcome.reason
    assert await harness.store.list_jobs() == []


async def test_explain_reports_each_decision(harness: Harness) -> None:
    attempt = await start(harness)
    message = mail(
        "Correction", GOOD_ANSWER + "\n\n> old quoted line", to=counterpart(attempt)
    )
    inbound_id = await harness.store.ingest(
        peer="p",
        mail_from=STUDENT,
        rcpt_tos=[counterpart(attempt)],
        message_id="explain@student.test",
        raw=message.as_bytes(),
    )
    assert inbound_id is not None
    lines = await harness.intake.explain(inbound_id)
    text = "\n".join(lines)
    row = await harness.store.inbound_row(inbound_id)
    assert "classify: written by a person" in text
    assert "quoted history removed" in text
    assert "$14,200" in text
    assert f"match: attempt {attempt.id}" in text
    assert row is not None and row["state"] == "received"


async def test_released_quarantine_processed_again(harness: Harness) -> None:
    raw = (
        f"From: {STUDENT}, {OTHER}\r\nTo: {SERVICE}\r\nSubject: LIST\r\n"
        "Message-ID: <twice@student.test>\r\n\r\nLIST\r\n"
    ).encode()
    outcome = await harness.deliver(raw, SERVICE)
    assert outcome.state == "quarantined"
    assert await harness.store.release_inbound([outcome.inbound_id]) == 1
    again = await harness.intake.process(outcome.inbound_id)
    assert again is not None
    assert again.state == "quarantined"


async def test_start_twice_resends_same_brief(harness: Harness) -> None:
    first = await start(harness)
    second = await start(harness)
    briefs = [
        e for e in await harness.outbox() if str(e["Subject"]).startswith("Scenario 1:")
    ]
    assert second.id == first.id
    assert len(await harness.attempts()) == 1
    assert len(briefs) == 2


@pytest.mark.parametrize(
    "from_header",
    [
        f'"{STUDENT}" <evil@attacker.test>',
        f"{STUDENT}<evil@attacker.test>",
        f"=?utf-8?q?{STUDENT.replace('@', '=40')}?= <evil@attacker.test>",
    ],
)
async def test_spoofed_from_quarantined(harness: Harness, from_header: str) -> None:
    attempt = await start(harness)
    raw = (
        f"From: {from_header}\r\nTo: {counterpart(attempt)}\r\nSubject: Correction\r\n"
        f"Message-ID: <spoof-{abs(hash(from_header))}@attacker.test>\r\n\r\n{GOOD_ANSWER}\r\n"
    ).encode()
    outbox_before = len(await harness.outbox())
    outcome = await harness.deliver(
        raw, counterpart(attempt), mail_from="evil@attacker.test"
    )
    assert outcome.state == "quarantined"
    assert await harness.store.list_jobs() == []
    assert len(await harness.outbox()) == outbox_before
