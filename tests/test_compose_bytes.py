"""Composer.build writes the bytes that the email package writes for the same email.

``Composer.build`` assembles headers and MIME parts itself to save CPU time.
These tests compare its output with ``EmailMessage(policy=SMTP).as_bytes()``
and check that non-ASCII names and threading headers survive.
"""

from __future__ import annotations

import email
import email.policy
import re
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any

import pytest

from peb_mail.compose import Composer, Mailbox
from peb_mail.models import Artefact
from peb_mail.scenarios import load_scenarios

from .conftest import INSTRUCTOR, STUDENT, make_config

NAMES = [
    "Ana Silva",
    "José Núñez",
    "李雷",
    "Dr. O'Brien (TA)",
    'Eve "x" <e@x>',
    "=?utf-8?q?Sneaky?=",
    "A Student Name So Long That The To Header Has To Be Folded Onto Two Lines",
]
SUBJECTS = [
    "Re: Report numbers",
    "Réponse : le rapport",
    "=?utf-8?q?encoded?=",
    "A subject line long enough that the email package must fold it over two lines",
]


def reference_bytes(composer: Composer, **fields: Any) -> bytes:
    """Build the same email with the email package's API, as the reference."""
    message = EmailMessage(policy=SMTP)
    message["Message-ID"] = "<1.2.3@peb-mail.test>"
    message["Date"] = "Fri, 04 Dec 2026 19:36:23 +0000"

    message["From"] = fields["sender"].header()
    message["To"] = [box.header() for box in fields["to"]]
    if fields.get("cc"):
        message["Cc"] = [box.header() for box in fields["cc"]]
    if fields.get("reply_to"):
        message["Reply-To"] = Mailbox("", fields["reply_to"]).header()
    message["Subject"] = " ".join(fields["subject"].split())
    if fields.get("in_reply_to"):
        message["In-Reply-To"] = f"<{fields['in_reply_to']}>"
        message["References"] = " ".join(
            f"<{item}>" for item in (*fields["references"], fields["in_reply_to"])
        )
    message["Auto-Submitted"] = "auto-replied"
    message["X-Auto-Response-Suppress"] = "All"

    message.set_content(fields["text"], cte="quoted-printable")
    if fields.get("html") is not None:
        message.add_alternative(fields["html"], subtype="html", cte="quoted-printable")
    for artefact in fields.get("attachments", ()):
        maintype, _, subtype = artefact.content_type.partition("/")
        message.add_attachment(
            artefact.path.read_bytes(),
            maintype=maintype,
            subtype=subtype,
            filename=artefact.path.name,
        )
    return message.as_bytes()


def normalised(raw: bytes) -> bytes:
    """Replace the values that change on every call: Message-ID, Date, boundaries."""
    raw = re.sub(rb"Message-ID: <[^>]*>", b"Message-ID: <ID>", raw)
    raw = re.sub(rb"Date: [^\r]*", b"Date: DATE", raw)
    for number, boundary in enumerate(re.findall(rb'boundary="([^"]+)"', raw)):
        raw = raw.replace(boundary, b"BOUNDARY%d" % number)
    return raw


def parsed(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


@pytest.fixture
def composer(tmp_path: Path) -> Composer:
    return Composer(make_config(tmp_path))


@pytest.fixture
def attachment(tmp_path: Path) -> Artefact:
    config = make_config(tmp_path)
    scenarios = load_scenarios(config.service.scenarios_dir)
    return next(item for s in scenarios for item in s.artefacts if item.path)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("subject", SUBJECTS)
def test_feedback_layout_matches_email_package(
    composer: Composer, name: str, subject: str
) -> None:
    fields: dict[str, Any] = {
        "sender": composer.service,
        "to": [Mailbox(name, STUDENT)],
        "cc": [Mailbox("", INSTRUCTOR)],
        "subject": subject,
        "text": f"Hello {name},\n\nYour score: 23 / 35\n" + "long line " * 20,
        "html": f'<p>Hello {name},</p>\n<p style="x">Score</p>\n',
        "reply_to": "reply+abc@peb-mail.test",
        "in_reply_to": "m.1@student.test",
        "references": ("r.1@peb-mail.test",),
    }
    built = composer.build(kind="feedback", **fields)
    assert normalised(built.raw) == normalised(reference_bytes(composer, **fields))


@pytest.mark.parametrize("html", [None, "<p>Brief</p>\n"])
def test_attachment_layout_matches_email_package(
    composer: Composer, attachment: Artefact, html: str | None
) -> None:
    fields: dict[str, Any] = {
        "sender": composer.service,
        "to": [Mailbox("José Núñez", STUDENT)],
        "subject": "Scenario 1: Correct a mistake",
        "text": "Hello José,\n\nThe file is attached.\n",
        "html": html,
        "attachments": (attachment, attachment),
    }
    built = composer.build(kind="brief", **fields)
    assert normalised(built.raw) == normalised(reference_bytes(composer, **fields))


@pytest.mark.parametrize("name", ["José Núñez", "李雷"])
def test_nonascii_name_encoded_and_decoded(composer: Composer, name: str) -> None:
    built = composer.build(
        kind="notice",
        sender=composer.service,
        to=[Mailbox(name, STUDENT)],
        subject="Hello",
        text="hi",
    )
    head = built.raw.split(b"\r\n\r\n", 1)[0]
    assert b"To: =?utf-8?" in head
    assert parsed(built.raw)["To"].addresses[0].display_name == name


def test_nonascii_subject_encoded_and_decoded(composer: Composer) -> None:
    built = composer.build(
        kind="notice",
        sender=composer.service,
        to=[Mailbox("Ana", STUDENT)],
        subject="Réponse : 李雷",
        text="hi",
    )
    head = built.raw.split(b"\r\n\r\n", 1)[0]
    assert head.isascii()
    assert parsed(built.raw)["Subject"] == "Réponse : 李雷"


def test_threading_headers_kept(composer: Composer) -> None:
    built = composer.build(
        kind="feedback",
        sender=composer.service,
        to=[Mailbox("李雷", STUDENT)],
        subject="Re: Report",
        text="hi",
        html="<p>hi</p>",
        in_reply_to="m.1@student.test",
        references=("root.1@peb-mail.test", "brief.2@peb-mail.test"),
    )
    message = parsed(built.raw)
    assert message["Message-ID"] == f"<{built.message_id}>"
    assert message["In-Reply-To"] == "<m.1@student.test>"
    assert message["References"] == (
        "<root.1@peb-mail.test> <brief.2@peb-mail.test> <m.1@student.test>"
    )


def test_lines_crlf_and_folded(composer: Composer) -> None:
    built = composer.build(
        kind="summary",
        sender=composer.service,
        to=[Mailbox("", f"teacher{number}@school.test") for number in range(8)],
        subject="[peb-mail] José Núñez: " + "A long scenario title " * 4,
        text="x" * 300 + "\n",
        html="<p>" + "y" * 300 + "</p>",
    )
    head = built.raw.split(b"\r\n\r\n", 1)[0]
    lines = built.raw.split(b"\r\n")
    assert b"\n" not in built.raw.replace(b"\r\n", b"")
    assert max(len(line) for line in head.split(b"\r\n")) <= 78
    assert max(len(line) for line in lines) <= 78
    assert parsed(built.raw).get_body(("html",)).get_content().startswith("<p>yyy")
