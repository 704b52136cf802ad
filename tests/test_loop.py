"""The whole loop over real sockets: SMTP client -> listener -> SQLite -> worker ->
sender -> an aiosmtpd sink on loopback."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

import aiosmtplib
import pytest

from peb_mail.service import Service

from .conftest import (
    DOMAIN,
    INSTRUCTOR,
    SERVICE,
    STUDENT,
    Received,
    Sink,
    address_in,
    make_config,
    smtp_outbox,
)

OTHER = "ben.okafor@student.test"


def compose(
    subject: str,
    body: str,
    *,
    to: str = SERVICE,
    sender: str = STUDENT,
    in_reply_to: str | None = None,
    html: str | None = None,
) -> EmailMessage:
    message = EmailMessage()
    message["From"] = f"Ana Silva <{sender}>"
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = make_msgid(domain="student.test")
    if in_reply_to:
        message["In-Reply-To"] = in_reply_to
        message["References"] = in_reply_to
    message.set_content(body)
    if html:
        message.add_alternative(html, subtype="html")
    return message


async def send(service: Service, message: EmailMessage, to: str | None = None) -> None:
    assert service.port is not None
    await aiosmtplib.send(
        message,
        sender=STUDENT if "Ana" in str(message["From"]) else str(message["From"]),
        recipients=[to or str(message["To"])],
        hostname="127.0.0.1",
        port=service.port,
    )


@pytest.fixture
async def service(tmp_path: Path, sink: Sink) -> AsyncIterator[Service]:
    config = make_config(tmp_path, outbox=smtp_outbox(sink))
    running = Service(config)
    await running.start()
    assert running.store is not None
    await running.store.upsert_students(
        [(STUDENT, "Ana Silva", "demo"), (OTHER, "Ben Okafor", "demo")], {}
    )
    yield running
    await running.stop()


def parts(received: Received) -> dict[str, str]:
    found: dict[str, str] = {}
    for part in received.message.walk():
        if part.get_content_maintype() == "text" and not part.get_filename():
            found[part.get_content_type()] = part.get_content()
    return found


def kind_of(received: Received) -> str:
    subject = str(received.message["Subject"])
    if subject.startswith("[peb-mail]"):
        return "summary"
    return subject


async def test_help_for_unknown_command(service: Service, sink: Sink) -> None:
    await send(service, compose("hello there", "Can you help me?"))
    received = await sink.wait_for(lambda items: len(items) >= 1)
    text = parts(received[0])["text/plain"]
    assert "LIST" in text
    assert "START" in text
    assert received[0].message["Auto-Submitted"] == "auto-replied"


async def test_list_shows_catalogue(service: Service, sink: Sink) -> None:
    await send(service, compose("Re: list", "> old quoted text"))
    received = await sink.wait_for(lambda items: len(items) >= 1)
    text = parts(received[0])["text/plain"]
    assert "correct-error-in-report" in text
    assert "clarify-vague-task" in text
    assert str(received[0].message["Subject"]) == "Re: list"


async def test_initiate_scenario_whole_loop(service: Service, sink: Sink) -> None:
    start = compose("START correct-error-in-report", "")
    await send(service, start)
    [brief] = await sink.wait_for(lambda items: len(items) >= 1)
    brief_message = brief.message
    assert str(brief_message["Message-ID"]).endswith(f"@{DOMAIN}>")
    assert brief_message["In-Reply-To"] == start["Message-ID"]
    assert str(brief_message["Reply-To"]) == SERVICE
    counterpart = address_in(parts(brief)["text/plain"])
    assert counterpart.endswith("@" + DOMAIN)
    assert any(part.get_filename() for part in brief_message.walk())

    submission = compose(
        "Correction: March revenue in the Q1 regional sales report",
        "Dear Daniel,\n\nI found a mistake in the quarterly sales report I sent you yesterday. "
        "The March revenue for the North region should be $14,200, not $12,400, so the "
        "quarterly total for North is also wrong.\n\nI am sorry for the error. I have "
        "attached the corrected file. Please use it instead of the old one.\n\n"
        "Please let me know if you have any questions.\n\nBest regards,\nAna Silva",
        to=counterpart,
    )
    await send(service, submission)
    received = await sink.wait_for(lambda items: len(items) >= 3)
    feedback = next(
        item for item in received if STUDENT in item.rcpt_tos and item is not brief
    )
    summary = next(item for item in received if INSTRUCTOR in item.rcpt_tos)

    message = feedback.message
    assert message["In-Reply-To"] == submission["Message-ID"]
    assert submission["Message-ID"] in str(message["References"])
    assert str(message["Subject"]) == "Re: " + str(submission["Subject"])
    assert message["Auto-Submitted"] == "auto-replied"
    body = parts(feedback)
    assert "YOUR SCORE" in body["text/plain"]
    assert "<table" in body["text/html"]
    assert "Tone and respect" in body["text/html"]
    assert "/ 35" in body["text/plain"]
    assert "[peb-mail] Ana Silva" in str(summary.message["Subject"])

    database = service.config.service.database
    with sqlite3.connect(database) as db:
        attempts = db.execute("select state, score from attempts").fetchall()
        jobs = db.execute("select state, tries from jobs").fetchall()
        ids = {row[0] for row in db.execute("select message_id from outbox")}
    assert attempts[0][0] == "graded"
    assert 7 <= attempts[0][1] <= 35
    assert jobs == [("done", 1)]
    assert str(message["Message-ID"]).strip("<>") in ids


async def test_reply_scenario_with_quoted_history(service: Service, sink: Sink) -> None:
    await send(service, compose("start clarify-vague-task", ""))
    received = await sink.wait_for(lambda items: len(items) >= 2)
    starter = next(item for item in received if "+" in str(item.message["From"]))
    starter_from = starter.message["From"].addresses[0].addr_spec
    starter_id = str(starter.message["Message-ID"])

    reply = compose(
        "Re: " + str(starter.message["Subject"]),
        "Hi,\n\nThank you for the task. I will clean up the notes. Who will read them, "
        "and when do you need them? Should I use bullet points?\n\nBest regards,\nAna\n\n"
        "On Mon, 4 Dec 2026 at 09:00, Manager <x@y> wrote:\n"
        "> Please clean up the notes from yesterday's meeting.\n",
        to=starter_from,
        in_reply_to=starter_id,
    )
    await send(service, reply)
    received = await sink.wait_for(lambda items: len(items) >= 4)
    feedback = [
        item for item in received if item.message["In-Reply-To"] == reply["Message-ID"]
    ]
    assert len(feedback) == 1
    with sqlite3.connect(service.config.service.database) as db:
        [(body,)] = db.execute("select body from attempts").fetchall()
    assert "Who will read them" in body
    assert "clean up the notes from yesterday" not in body


async def test_stranger_gets_one_notice_per_day(service: Service, sink: Sink) -> None:
    for index in range(3):
        message = compose(
            f"hello {index}", "Who are you?", sender="stranger@elsewhere.test"
        )
        message.replace_header("From", "stranger@elsewhere.test")
        await send(service, message)
    assert service.store is not None
    await sink.wait_for(lambda items: len(items) >= 1)
    with sqlite3.connect(service.config.service.database) as db:
        rejected = db.execute(
            "select count(*) from inbound where state = 'rejected'"
        ).fetchone()
    # Give intake time to process all three before counting replies.
    await sink.wait_for(lambda items: True, timeout_s=0.5)
    assert len(sink.to("stranger@elsewhere.test")) == 1
    assert rejected[0] >= 1


async def test_other_students_token_not_accepted(service: Service, sink: Sink) -> None:
    await send(service, compose("START 1", ""))
    [brief] = await sink.wait_for(lambda items: len(items) >= 1)
    counterpart = address_in(parts(brief)["text/plain"])
    intruder = compose(
        "Correction",
        "Dear Daniel,\n\nThe report is wrong.\n\nBen",
        to=counterpart,
        sender=OTHER,
    )
    intruder.replace_header("From", f"Ben Okafor <{OTHER}>")
    await aiosmtplib.send(
        intruder,
        sender=OTHER,
        recipients=[counterpart],
        hostname="127.0.0.1",
        port=service.port,
    )
    await sink.wait_for(lambda items: len(sink.to(OTHER)) >= 1)
    with sqlite3.connect(service.config.service.database) as db:
        states = db.execute("select state from attempts").fetchall()
    assert states == [("open",)]


async def test_resubmit_and_override_over_smtp(service: Service, sink: Sink) -> None:
    await send(service, compose("START 1", ""))
    [brief] = await sink.wait_for(lambda items: len(items) >= 1)
    counterpart = address_in(parts(brief)["text/plain"])
    first = compose(
        "report",
        "hi daniel the march number for north is wrong it is 14,200 sorry\nana",
        to=counterpart,
    )
    await send(service, first)
    received = await sink.wait_for(lambda items: len(items) >= 3)
    feedback = next(
        i for i in received if i.message["In-Reply-To"] == first["Message-ID"]
    )

    # The student replies to the feedback with a revised email.
    revised = compose(
        "Correction: North region March revenue",
        "Dear Daniel,\n\nI made a mistake in the Q1 report. The March revenue for the "
        "North region is $14,200, not $12,400, so the Q1 total is $45,300.\n\nI am "
        "sorry. The corrected file is attached; please use it on Thursday.\n\n"
        "Best regards,\nAna Silva",
        in_reply_to=str(feedback.message["Message-ID"]),
    )
    await send(service, revised)
    received = await sink.wait_for(
        lambda items: any(
            i.message["In-Reply-To"] == revised["Message-ID"] for i in items
        )
    )
    second = next(
        i for i in received if i.message["In-Reply-To"] == revised["Message-ID"]
    )
    second_text = parts(second)["text/plain"]
    assert "(last time:" in second_text
    assert " -> " in second_text

    # The instructor replies to the second summary with an override.
    await sink.wait_for(lambda items: len(sink.to(INSTRUCTOR)) >= 2)
    summary = sink.to(INSTRUCTOR)[-1]
    review = summary.message["Reply-To"].addresses[0].addr_spec
    override = compose(
        "Re: " + str(summary.message["Subject"]),
        "criterion tone 5\ncomment Much better.\n",
        to=review,
        sender=INSTRUCTOR,
        in_reply_to=str(summary.message["Message-ID"]),
    )
    override.replace_header("From", f"Kim Teacher <{INSTRUCTOR}>")
    assert service.port is not None
    await aiosmtplib.send(
        override,
        sender=INSTRUCTOR,
        recipients=[review],
        hostname="127.0.0.1",
        port=service.port,
    )
    received = await sink.wait_for(
        lambda items: any(
            "updated by your teacher" in str(i.message["Subject"]) for i in items
        )
    )
    updated = next(
        i for i in received if "updated by your teacher" in str(i.message["Subject"])
    )
    confirmation = await sink.wait_for(
        lambda items: any(
            i.message["In-Reply-To"] == override["Message-ID"] for i in items
        )
    )
    assert STUDENT in updated.rcpt_tos
    assert "Much better." in parts(updated)["text/plain"]
    assert any(
        INSTRUCTOR in i.rcpt_tos
        for i in confirmation
        if i.message["In-Reply-To"] == override["Message-ID"]
    )
