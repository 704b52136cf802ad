"""Messages that must never be answered: auto-replies, lists, bounces, loops.

Each one is delivered through the whole pipeline of scripts/corpus_pipeline.py
(sender enrolled with one open attempt) and must end ``ignored`` with a reason
and add nothing to the outbox. Genuine replies that only look automatic must
still be graded.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from .conftest import DOMAIN, STUDENT
from .test_robustness import ANSWER, FIXTURES, cp, headers


@pytest.fixture
def pipeline(tmp_path: Path):  # type: ignore[no-untyped-def]
    return cp.Pipeline(tmp_path)


def assert_ignored(result) -> None:  # type: ignore[no-untyped-def]
    assert result.crashes == []
    for delivery in result.deliveries:
        assert delivery.stored, delivery.target
        assert delivery.state == "ignored", (delivery.target, delivery.reason)
        assert delivery.reason, delivery.target
        assert delivery.outbox_kinds == (), delivery.target


REAL_FILES = [
    # RFC 3834 Auto-Submitted
    "flanker/bounce/mailbox-full.eml",
    "flanker/bounce/office365.eml",
    "flanker/bounce/zed.eml",
    "ruby_mail_gem/multipart_report_emails/report_422.eml",
    "cpython_test_email/msg_25.txt",
    # Precedence: bulk, junk, list
    "cpython_test_email/msg_16.txt",
    "cpython_test_email/msg_33.txt",
    "ruby_mail_gem/error_emails/bad_date_header.eml",
    "flanker/from-encoding.eml",
    # List-Id
    "ruby_mail_gem/error_emails/empty_in_reply_to.eml",
    # delivery reports and bounces
    "flanker/bounce/broken-mime.eml",
    "flanker/bounce/delayed.eml",
    "flanker/bounce/gmail-invalid-address.eml",
    "flanker/bounce/gmail-no-dns.eml",
    "flanker/bounce/no-mx.eml",
    "flanker/disposition-notification.eml",
    "spamscope_mail_parser/mail_malformed_2",
    # ARF complaints
    "flanker/complaints/aol.eml",
    "flanker/complaints/yahoo.eml",
]


@pytest.mark.parametrize("name", REAL_FILES)
async def test_real_automatic_ignored(pipeline, name: str) -> None:  # type: ignore[no-untyped-def]
    assert_ignored(await pipeline.run_file(FIXTURES / name, name))


async def test_bare_delivery_status_ignored(pipeline) -> None:  # type: ignore[no-untyped-def]
    name = "flanker/bounce/delayed-broken.eml"
    assert_ignored(await pipeline.run_file(FIXTURES / name, name))


def message(extra: str = "", subject: str = "Correction to the report") -> bytes:
    return (
        headers('Content-Type: text/plain; charset="utf-8"\r\n' + extra, subject)
        + b"\r\n"
        + ANSWER.encode()
    )


@pytest.mark.parametrize(
    "header",
    [
        "Auto-Submitted: auto-replied",
        "X-Autoreply: yes",
        "X-Autorespond: Out of office",
        "Precedence: bulk",
        "Precedence: junk",
        "Precedence: list",
        "Precedence: auto_reply",
        "List-Id: Team news <news.example.test>",
    ],
)
async def test_automatic_header_ignored(pipeline, header: str) -> None:  # type: ignore[no-untyped-def]
    assert_ignored(await pipeline.run_raw(message(header + "\r\n"), header))


# Outlook's localised auto-reply prefixes and common out-of-office subjects.
AUTO_SUBJECTS = {
    "en-auto": "Automatic reply: Correction to the report",
    "en-ooo": "Out of Office: Correction to the report",
    "de-auto": "Automatische Antwort: Korrektur",
    "de-ooo": "Abwesenheitsnotiz: Korrektur",
    "fr-auto": "Réponse automatique : Correction",
    "fr-ooo": "Absent du bureau : Correction",
    "es-auto": "Respuesta automática: Corrección",
    "es-ooo": "Fuera de la oficina: Corrección",
    "nl-auto": "Automatisch antwoord: Correctie",
    "nl-ooo": "Afwezigheidsbericht: Correctie",
    "pt-auto": "Resposta automática: Correção",
    "pt-ooo": "Ausente do escritório: Correção",
    "it-auto": "Risposta automatica: Correzione",
    "it-ooo": "Fuori sede: Correzione",
}
MISSED_SUBJECTS: set[str] = set()


def subject_case(key: str):  # type: ignore[no-untyped-def]
    marks = []
    if key in MISSED_SUBJECTS:
        marks.append(
            pytest.mark.xfail(
                strict=True,
                reason=f"message.py _AUTO_SUBJECT_RE does not match "
                f"{AUTO_SUBJECTS[key]!r}, so a header-less auto-reply is graded",
            )
        )
    return pytest.param(AUTO_SUBJECTS[key], id=key, marks=marks)


@pytest.mark.parametrize("subject", [subject_case(key) for key in AUTO_SUBJECTS])
async def test_auto_subject_ignored(pipeline, subject: str) -> None:  # type: ignore[no-untyped-def]
    encoded = "=?UTF-8?B?" + base64.b64encode(subject.encode()).decode()
    raw = message(subject=encoded + "?=")
    assert_ignored(await pipeline.run_raw(raw, subject))


async def test_null_sender_ignored(pipeline) -> None:  # type: ignore[no-untyped-def]
    raw = b"Return-Path: <>\r\n" + message()
    assert_ignored(await pipeline.run_raw(raw, "null sender"))


async def test_mailer_daemon_sender_ignored(pipeline) -> None:  # type: ignore[no-untyped-def]
    raw = b"Return-Path: <MAILER-DAEMON@mx.student.test>\r\n" + message()
    assert_ignored(await pipeline.run_raw(raw, "mailer-daemon"))


async def test_own_mail_loop_ignored(pipeline) -> None:  # type: ignore[no-untyped-def]
    raw = message().replace(
        f"From: Ana Silva <{STUDENT}>".encode(),
        f"From: Practice <practice@{DOMAIN}>".encode(),
    )
    assert_ignored(await pipeline.run_raw(raw, "loop"))


@pytest.mark.parametrize(
    "header",
    ["X-Auto-Response-Suppress: All", "Precedence: first-class", "Auto-Submitted: no"],
)
async def test_genuine_reply_still_graded(pipeline, header: str) -> None:  # type: ignore[no-untyped-def]
    result = await pipeline.run_raw(message(header + "\r\n"), header)
    delivery = result.deliveries[-1]
    assert result.crashes == []
    assert delivery.state == "processed"
    assert delivery.reason == "submission queued"
    assert delivery.job_state == "done"
