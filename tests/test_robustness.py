"""Odd, broken and hostile raw messages through store, intake and grading.

Every fixture message and every hand-made message must be stored, must reach
a final inbound state, and must not make ``Intake.process``, the grading
worker or ``parse`` raise. For readable messages the student's text must
reach the attempt. The pipeline is the one in scripts/corpus_pipeline.py.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType

import pytest

from peb_mail import store as sql
from peb_mail.compose import Composer
from peb_mail.intake import Intake
from peb_mail.scenarios import load_scenarios
from peb_mail.store import Store

from .conftest import DOMAIN, REPO, SERVICE, STUDENT, make_config

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SUITES = ("flanker", "spamscope_mail_parser", "cpython_test_email", "ruby_mail_gem")
FINAL_STATES = {"processed", "ignored", "rejected", "quarantined"}


def load_pipeline() -> ModuleType:
    path = REPO / "scripts" / "corpus_pipeline.py"
    spec = importlib.util.spec_from_file_location("corpus_pipeline", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["corpus_pipeline"] = module
    spec.loader.exec_module(module)
    return module


cp = load_pipeline()


def fixture_files() -> list[Path]:
    found = []
    for suite in SUITES:
        found += cp.suite_files(FIXTURES / suite)
    return found


@pytest.fixture
def pipeline(tmp_path: Path):  # type: ignore[no-untyped-def]
    return cp.Pipeline(tmp_path)


@pytest.fixture
def token_pipeline(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Deliver only to the counterpart address with the attempt's reply token."""
    return cp.Pipeline(tmp_path, targets=("token",))


def fixture_id(path: Path) -> str:
    return str(path.relative_to(FIXTURES))


@pytest.mark.parametrize("path", fixture_files(), ids=fixture_id)
async def test_fixture_message_survives(pipeline, path: Path) -> None:  # type: ignore[no-untyped-def]
    result = await pipeline.run_file(path, fixture_id(path))
    assert result.crashes == []
    for delivery in result.deliveries:
        assert delivery.stored, delivery.target
        assert delivery.state in FINAL_STATES, delivery.target
        assert delivery.reason, delivery.target
        assert delivery.job_state in (None, "done"), delivery.target


async def test_fixture_suites_present() -> None:
    for suite in SUITES:
        assert (FIXTURES / suite / "LICENSE").is_file(), suite
        assert (FIXTURES / suite / "SOURCE.md").is_file(), suite
        assert cp.suite_files(FIXTURES / suite), suite


# -- hand-made raw messages ------------------------------------------------

ANSWER = (
    "Dear Daniel,\r\n\r\nThe March revenue in the report is wrong: it is "
    "$14,200, not $41,200. I attached the corrected file.\r\n\r\n"
    "Best regards,\r\nAna\r\n"
)


def headers(extra: str = "", subject: str = "Correction to the report") -> bytes:
    text = (
        f"From: Ana Silva <{STUDENT}>\r\n"
        f"To: daniel.okafor@{DOMAIN}\r\n"
        f"Subject: {subject}\r\n"
        "Date: Mon, 1 Jun 2026 09:00:00 +0000\r\n"
        f"Message-ID: <{os.urandom(6).hex()}@student.test>\r\n"
        "MIME-Version: 1.0\r\n"
    )
    return (text + extra).encode("ascii")


def plain(charset: str, body: bytes, cte: str = "8bit") -> bytes:
    return (
        headers(
            f'Content-Type: text/plain; charset="{charset}"\r\n'
            f"Content-Transfer-Encoding: {cte}\r\n"
        )
        + b"\r\n"
        + body
    )


def with_attachment(disposition: str, payload: bytes, content_type: str) -> bytes:
    encoded = base64.encodebytes(payload).replace(b"\n", b"\r\n")
    return (
        headers('Content-Type: multipart/mixed; boundary="b1"\r\n')
        + b"\r\n--b1\r\n"
        + b'Content-Type: text/plain; charset="utf-8"\r\n\r\n'
        + ANSWER.encode()
        + b"\r\n--b1\r\n"
        + f"Content-Type: {content_type}\r\n".encode()
        + b"Content-Transfer-Encoding: base64\r\n"
        + disposition.encode()
        + b"\r\n\r\n"
        + encoded
        + b"--b1--\r\n"
    )


async def counterpart_delivery(pipeline, raw: bytes):  # type: ignore[no-untyped-def]
    """Run ``raw`` through the pipeline; return its last delivery."""
    result = await pipeline.run_raw(raw, "hand-made")
    assert result.crashes == []
    for delivery in result.deliveries:
        assert delivery.stored, delivery.target
        assert delivery.state in FINAL_STATES, delivery.target
    return result.deliveries[-1]


async def test_charset_utf8x_text_extracted(token_pipeline) -> None:  # type: ignore[no-untyped-def]
    body = ANSWER.replace("revenue", "café revenue").encode("utf-8")
    delivery = await counterpart_delivery(token_pipeline, plain("utf8x", body))
    assert delivery.reason == "submission queued"
    assert "$14,200, not $41,200" in delivery.attempt_body


async def test_charset_latin1x_text_extracted(token_pipeline) -> None:  # type: ignore[no-untyped-def]
    body = ANSWER.replace("revenue", "café revenue").encode("latin-1")
    delivery = await counterpart_delivery(token_pipeline, plain("latin-1x", body))
    assert delivery.reason == "submission queued"
    assert "$14,200, not $41,200" in delivery.attempt_body


async def test_cp1252_labelled_utf8_extracted(token_pipeline) -> None:  # type: ignore[no-untyped-def]
    body = ANSWER.replace("wrong", "\u201cwrong\u201d \u2013 sorry").encode("cp1252")
    delivery = await counterpart_delivery(token_pipeline, plain("utf-8", body))
    assert delivery.reason == "submission queued"
    assert "$14,200, not $41,200" in delivery.attempt_body
    assert "Best regards" in delivery.attempt_body


async def test_encoded_word_split_multibyte(token_pipeline) -> None:  # type: ignore[no-untyped-def]
    # "Résumé" with the two bytes of the first "é" in different encoded words.
    first = base64.b64encode(b"R\xc3").decode()
    second = base64.b64encode(b"\xa9sum\xc3\xa9 correction").decode()
    subject = f"=?UTF-8?B?{first}?= =?UTF-8?B?{second}?="
    raw = (
        headers('Content-Type: text/plain; charset="utf-8"\r\n', subject=subject)
        + b"\r\n"
        + ANSWER.encode()
    )
    delivery = await counterpart_delivery(token_pipeline, raw)
    store = await Store.open(
        token_pipeline.workdir / f"db{token_pipeline.counter}.sqlite3"
    )
    attempt = await store.attempt(delivery.attempt_id)
    await store.close()
    assert delivery.reason == "submission queued"
    assert attempt is not None
    assert attempt.subject == "Résumé correction"


@pytest.mark.parametrize(
    "disposition",
    [
        "Content-Disposition: attachment; filename*=UTF-8''Rapport%20r%C3%A9vis%C3%A9.pdf",
        "Content-Disposition: attachment;\r\n filename*0*=UTF-8''Rapport%20r%C3%A9;"
        "\r\n filename*1*=vis%C3%A9.pdf",
    ],
    ids=["single", "continued"],
)
async def test_rfc2231_filename_recorded(token_pipeline, disposition: str) -> None:  # type: ignore[no-untyped-def]
    raw = with_attachment(disposition, b"%PDF-1.4 tiny", "application/pdf")
    delivery = await counterpart_delivery(token_pipeline, raw)
    names = [item["filename"] for item in json.loads(delivery.attempt_attachments)]
    assert delivery.reason == "submission queued"
    assert names == ["Rapport révisé.pdf"]


async def test_missing_content_type_extracted(token_pipeline) -> None:  # type: ignore[no-untyped-def]
    raw = headers() + b"\r\n" + ANSWER.encode()
    delivery = await counterpart_delivery(token_pipeline, raw)
    assert delivery.reason == "submission queued"
    assert "$14,200, not $41,200" in delivery.attempt_body


async def test_mismatched_boundary_extracted(token_pipeline) -> None:  # type: ignore[no-untyped-def]
    raw = (
        headers('Content-Type: multipart/alternative; boundary="right"\r\n')
        + b"\r\n--wrong\r\nContent-Type: text/plain\r\n\r\n"
        + ANSWER.encode()
        + b"\r\n--wrong--\r\n"
    )
    delivery = await counterpart_delivery(token_pipeline, raw)
    assert delivery.state in ("processed", "quarantined")
    assert delivery.reason != "nothing to grade"


async def test_missing_final_boundary_extracted(token_pipeline) -> None:  # type: ignore[no-untyped-def]
    raw = (
        headers('Content-Type: multipart/mixed; boundary="b1"\r\n')
        + b"\r\n--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        + ANSWER.encode()
    )
    delivery = await counterpart_delivery(token_pipeline, raw)
    assert delivery.reason == "submission queued"
    assert "$14,200, not $41,200" in delivery.attempt_body


async def test_long_line_extracted(token_pipeline) -> None:  # type: ignore[no-untyped-def]
    long_line = ("word " * 700 + "END-OF-LONG-LINE").encode()
    assert len(long_line) > 3000
    raw = plain("utf-8", ANSWER.encode() + long_line + b"\r\n")
    delivery = await counterpart_delivery(token_pipeline, raw)
    assert delivery.reason == "submission queued"
    assert "END-OF-LONG-LINE" in delivery.attempt_body


async def test_leading_dots_kept(token_pipeline) -> None:  # type: ignore[no-untyped-def]
    body = ANSWER.replace(
        "Best regards", ".5 million was the old figure.\r\n..and more.\r\n\r\nBest"
    )
    delivery = await counterpart_delivery(token_pipeline, plain("utf-8", body.encode()))
    assert delivery.reason == "submission queued"
    assert ".5 million was the old figure." in delivery.attempt_body
    assert "..and more." in delivery.attempt_body


def tnef_only() -> bytes:
    # A TNEF stream starts with the signature 0x223E9F78; the rest is opaque here.
    payload = b"\x78\x9f\x3e\x22" + os.urandom(2000)
    encoded = base64.encodebytes(payload).replace(b"\n", b"\r\n")
    return (
        headers('Content-Type: multipart/mixed; boundary="b1"\r\n')
        + b"\r\n--b1\r\n"
        + b'Content-Type: application/ms-tnef; name="winmail.dat"\r\n'
        + b"Content-Transfer-Encoding: base64\r\n"
        + b'Content-Disposition: attachment; filename="winmail.dat"\r\n\r\n'
        + encoded
        + b"--b1--\r\n"
    )


async def test_tnef_only_quarantined(token_pipeline) -> None:  # type: ignore[no-untyped-def]
    delivery = await counterpart_delivery(token_pipeline, tnef_only())
    assert delivery.state == "quarantined"
    assert "TNEF" in delivery.reason
    assert delivery.outbox_kinds == ()


async def test_ten_megabyte_attachment(token_pipeline) -> None:  # type: ignore[no-untyped-def]
    size = 10 * 1024 * 1024
    raw = with_attachment(
        'Content-Disposition: attachment; filename="big.bin"',
        os.urandom(size),
        "application/octet-stream",
    )
    result = await token_pipeline.run_raw(raw, "ten-megabytes")
    delivery = result.deliveries[-1]
    [attachment] = json.loads(delivery.attempt_attachments)
    assert result.crashes == []
    assert delivery.reason == "submission queued"
    assert attachment["size_bytes"] == size
    assert result.parse_s < cp.SLOW_PARSE_S


# -- In-Reply-To forms: matching must still find the attempt ---------------


@pytest.fixture
async def desk(tmp_path: Path) -> AsyncIterator[tuple[Store, Intake]]:
    config = make_config(tmp_path)
    store = await Store.open(config.service.database, clock=lambda: 1_800_000_000.0)
    await store.upsert_students([(STUDENT, "Ana Silva", "demo")], {})
    intake = Intake(
        store, Composer(config), load_scenarios(config.service.scenarios_dir), config
    )
    yield store, intake
    await store.close()


async def deliver(store: Store, intake: Intake, raw: bytes) -> sql.sqlite3.Row:
    inbound_id = await store.ingest(
        peer="127.0.0.1:1",
        mail_from=STUDENT,
        rcpt_tos=[SERVICE],
        message_id=None,
        raw=raw,
    )
    assert inbound_id is not None
    await intake.process(inbound_id)
    row = await store.inbound_row(inbound_id)
    assert row is not None
    return row


@pytest.mark.parametrize(
    "template",
    [
        "<{id}> (sent from my phone)",
        "(comment first) <{id}>",
        "<unknown-1@elsewhere.test> <{id}>",
        "<{id}>\r\n <unknown-2@elsewhere.test>",
    ],
    ids=["comment-after", "comment-before", "two-ids", "folded"],
)
async def test_in_reply_to_forms_match(desk, template: str) -> None:  # type: ignore[no-untyped-def]
    store, intake = desk
    start = headers(subject="START clarify-vague-task") + b"\r\n\r\n"
    await deliver(store, intake, start)
    starter = (await store.list_outbox(limit=10))[0]
    attempt_id = starter.attempt_id
    in_reply_to = template.format(id=starter.message_id.strip("<>"))
    reply = (
        headers(f"In-Reply-To: {in_reply_to}\r\n", subject="Re: the notes")
        + b"\r\n"
        + ANSWER.encode()
    )
    row = await deliver(store, intake, reply)
    assert row["state"] == "processed"
    assert row["reason"] == "submission queued"
    assert row["attempt_id"] == attempt_id
