"""The listener in LMTP mode over a real socket, and the JSON log format.

The LMTP client is Python's smtplib.LMTP, run in a thread because it blocks
and the listener runs on this test's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import logging
import smtplib
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from peb_mail.config import Config
from peb_mail.errors import ConfigError
from peb_mail.listener import Listener, start_listener
from peb_mail.logs import JsonFormatter, RedactingFilter, setup_logging
from peb_mail.store import Store

from .conftest import DOMAIN, SERVICE, STUDENT, make_config

MESSAGE = (
    f"From: Ana <{STUDENT}>\r\nTo: {SERVICE}\r\nSubject: LIST\r\n"
    "Message-ID: <lmtp1@student.test>\r\n\r\nLIST\r\n"
).encode()
OURS = [SERVICE, f"reply+abc123@{DOMAIN}"]
FOREIGN = "someone@elsewhere.test"
Reply = tuple[int, bytes]


def with_protocol(config: Config, protocol: str) -> Config:
    # Built with replace, so a value config validation would refuse (such as
    # "pop3") still reaches start_listener.
    listener = dataclasses.replace(config.listener, protocol=protocol)
    return dataclasses.replace(config, listener=listener)


class Running:
    def __init__(self, config: Config, store: Store, listener: Listener) -> None:
        self.config = config
        self.store = store
        self.listener = listener
        self.port = listener.port

    def rows(self) -> list[tuple[str, list[str]]]:
        # A separate connection sees only committed data.
        with sqlite3.connect(self.config.service.database) as db:
            found = db.execute(
                "select mail_from, rcpt_tos from inbound order by id"
            ).fetchall()
        return [(mail_from, json.loads(rcpt_tos)) for mail_from, rcpt_tos in found]


@contextlib.asynccontextmanager
async def start(tmp_path: Path, **listener: Any) -> AsyncIterator[Running]:
    """Run the listener in LMTP mode with a 4096-byte limit and ``listener`` keys."""
    config = make_config(tmp_path, listener={"max_message_bytes": 4096, **listener})
    config = with_protocol(config, "lmtp")
    store = await Store.open(config.service.database, busy_timeout_s=0.2)
    server = await start_listener(config, store, lambda: None)
    yield Running(config, store, server)
    await server.close(timeout_s=1.0)
    await store.close()


@pytest.fixture
async def lmtp(tmp_path: Path) -> AsyncIterator[Running]:
    async with start(tmp_path) as running:
        yield running


def connect(port: int) -> tuple[smtplib.LMTP, Reply]:
    """Open an LMTP connection and return the client and the server greeting."""
    client = smtplib.LMTP(timeout=5)
    greeting = client.connect("127.0.0.1", port)
    return client, greeting


@dataclasses.dataclass
class Delivery:
    rcpt_codes: list[int]
    data_replies: list[Reply]
    # The reply to a NOOP sent after the expected DATA replies. It is the
    # plain "250 OK" only if the server sent no extra DATA reply.
    next_reply: Reply


def deliver(
    port: int,
    recipients: Sequence[str],
    raw: bytes = MESSAGE,
    mail_options: Sequence[str] = (),
) -> Delivery:
    """Send one message over LMTP and read one DATA reply per accepted RCPT."""
    client, _ = connect(port)
    with client:
        client.ehlo()  # smtplib.LMTP sends LHLO here
        client.mail(STUDENT, list(mail_options))
        rcpt_codes = [client.rcpt(address)[0] for address in recipients]
        data_replies = [client.data(raw)]
        accepted = rcpt_codes.count(250)
        data_replies += [client.getreply() for _ in range(accepted - 1)]
        next_reply = client.noop()
    return Delivery(rcpt_codes, data_replies, next_reply)


async def test_lmtp_greeting_names_lmtp(lmtp: Running) -> None:
    def run() -> Reply:
        client, greeting = connect(lmtp.port)
        client.close()
        return greeting

    code, text = await asyncio.to_thread(run)
    assert code == 220
    assert b"LMTP" in text


async def test_lhlo_advertises_size(lmtp: Running) -> None:
    def run() -> tuple[Reply, dict[str, str]]:
        client, _ = connect(lmtp.port)
        with client:
            reply = client.ehlo()
            return reply, dict(client.esmtp_features)

    (code, _), features = await asyncio.to_thread(run)
    assert code == 250
    assert features.get("size") == "4096"


async def test_ehlo_and_helo_rejected(lmtp: Running) -> None:
    def run() -> tuple[Reply, Reply]:
        client, _ = connect(lmtp.port)
        with client:
            return client.docmd("EHLO", "mta.test"), client.docmd("HELO", "mta.test")

    ehlo, helo = await asyncio.to_thread(run)
    assert ehlo[0] == 500
    assert helo[0] == 500


async def test_mail_before_lhlo_names_lhlo(lmtp: Running) -> None:
    def run() -> Reply:
        client, _ = connect(lmtp.port)
        with client:
            return client.docmd("MAIL", f"FROM:<{STUDENT}>")

    code, text = await asyncio.to_thread(run)
    assert code == 503
    assert b"LHLO" in text


async def test_data_reply_per_recipient(lmtp: Running) -> None:
    delivery = await asyncio.to_thread(deliver, lmtp.port, [OURS[0], FOREIGN, OURS[1]])
    assert delivery.rcpt_codes == [250, 550, 250]
    assert [code for code, _ in delivery.data_replies] == [250, 250]
    assert delivery.data_replies[0] == delivery.data_replies[1]
    assert delivery.next_reply == (250, b"OK")


async def test_message_stored_once(lmtp: Running) -> None:
    await asyncio.to_thread(deliver, lmtp.port, [OURS[0], FOREIGN, OURS[1]])
    rows = lmtp.rows()
    assert len(rows) == 1
    assert rows[0][0] == STUDENT
    assert rows[0][1] == OURS


async def test_storage_failure_451_each(lmtp: Running) -> None:
    with sqlite3.connect(lmtp.config.service.database) as db:
        db.execute("drop table inbound")
    delivery = await asyncio.to_thread(deliver, lmtp.port, [OURS[0], FOREIGN, OURS[1]])
    assert [code for code, _ in delivery.data_replies] == [451, 451]
    assert all(b"sqlite" not in text.lower() for _, text in delivery.data_replies)
    assert delivery.next_reply == (250, b"OK")


async def test_declared_size_over_limit(lmtp: Running) -> None:
    def run() -> Reply:
        client, _ = connect(lmtp.port)
        with client:
            client.ehlo()
            return client.mail(STUDENT, ["SIZE=5000"])

    code, _ = await asyncio.to_thread(run)
    assert code == 552


async def test_oversize_data_552_each(lmtp: Running) -> None:
    # No SIZE parameter, so the limit can only be enforced during DATA.
    big = MESSAGE + (b"x" * 70 + b"\r\n") * 80
    delivery = await asyncio.to_thread(deliver, lmtp.port, OURS, big)
    assert [code for code, _ in delivery.data_replies] == [552, 552]
    assert delivery.next_reply == (250, b"OK")
    assert lmtp.rows() == []


async def test_extended_parameters_accepted(lmtp: Running) -> None:
    def run() -> tuple[Reply, Reply]:
        client, _ = connect(lmtp.port)
        with client:
            client.ehlo()
            mail = client.docmd(
                "MAIL",
                f"FROM:<{STUDENT}> SIZE=200 BODY=8BITMIME AUTH=<> RET=HDRS ENVID=Q1",
            )
            rcpt = client.docmd(
                "RCPT", f"TO:<{SERVICE}> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;{SERVICE}"
            )
            return mail, rcpt

    mail, rcpt = await asyncio.to_thread(run)
    assert mail[0] == 250
    assert rcpt[0] == 250


async def test_sender_rate_limit_applies(tmp_path: Path) -> None:
    def second_mail(port: int) -> Reply:
        client, _ = connect(port)
        with client:
            client.ehlo()
            return client.mail(STUDENT)

    async with start(tmp_path, messages_per_sender_per_minute=1) as running:
        first = await asyncio.to_thread(deliver, running.port, OURS[:1])
        code, _ = await asyncio.to_thread(second_mail, running.port)
    assert first.data_replies[0][0] == 250
    assert code == 451


async def test_session_limit_applies(tmp_path: Path) -> None:
    def run(port: int) -> tuple[Reply, Reply]:
        first, _ = connect(port)
        with first:
            lhlo = first.ehlo()
            second, greeting = connect(port)
            second.close()
        return lhlo, greeting

    async with start(tmp_path, max_sessions=1) as running:
        lhlo, greeting = await asyncio.to_thread(run, running.port)
    assert lhlo[0] == 250
    assert greeting[0] == 421


async def test_unknown_protocol_rejected(tmp_path: Path) -> None:
    config = with_protocol(make_config(tmp_path), "pop3")
    store = await Store.open(config.service.database)
    try:
        with pytest.raises(ConfigError) as rejected:
            await start_listener(config, store, lambda: None)
    finally:
        await store.close()
    assert "listener.protocol" in str(rejected.value)


# -- JSON-lines logging ---------------------------------------------------
# setup_logging changes the root logger, so those tests run it in a child
# Python process and read what that process writes to stderr.

TOKEN_ADDRESS = "ana.silva+k3j9x2m8q4@peb-mail.test"


async def log_output(setup_args: str, *lines: str) -> list[str]:
    """Run setup_logging(SETUP_ARGS) and LINES in a child process, return its stderr."""
    script = "\n".join(
        [
            "import logging",
            "from peb_mail.logs import setup_logging",
            f"setup_logging({setup_args})",
            "log = logging.getLogger('peb_mail.test')",
            *lines,
        ]
    )
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stderr.splitlines()


async def test_json_log_one_object_per_line() -> None:
    lines = await log_output(
        "fmt='json'", "log.info('first\\nsecond')", "log.warning('third %d', 3)"
    )
    records = [json.loads(line) for line in lines]
    assert len(records) == 2
    assert set(records[0]) == {"time", "level", "logger", "message"}
    assert records[0]["message"] == "first\nsecond"
    assert records[1]["level"] == "WARNING"
    assert records[1]["logger"] == "peb_mail.test"
    assert records[1]["message"] == "third 3"
    assert records[1]["time"].endswith("+00:00")


async def test_json_log_includes_exception() -> None:
    lines = await log_output(
        "fmt='json'",
        "try:\n    1 / 0\nexcept ZeroDivisionError:\n    log.exception('failed')",
    )
    record = json.loads(lines[0])
    assert len(lines) == 1
    assert record["message"] == "failed"
    assert "ZeroDivisionError" in record["exception"]


async def test_json_log_masks_token() -> None:
    lines = await log_output("fmt='json'", f"log.info('to %s', {TOKEN_ADDRESS!r})")
    record = json.loads(lines[0])
    assert "k3j9x2m8q4" not in record["message"]
    assert record["message"] == "to ana.silva+***@peb-mail.test"


async def test_json_log_masks_addresses() -> None:
    lines = await log_output(
        "redact_addresses=True, fmt='json'", f"log.info('from {STUDENT}')"
    )
    assert json.loads(lines[0])["message"] == "from a***@student.test"


async def test_text_log_unchanged() -> None:
    lines = await log_output("", f"log.info('to %s', {TOKEN_ADDRESS!r})")
    assert len(lines) == 1
    assert lines[0].endswith(" INFO peb_mail.test: to ana.silva+***@peb-mail.test")


async def test_second_setup_switches_format() -> None:
    lines = await log_output("", "setup_logging(fmt='json')", "log.info('hello')")
    assert json.loads(lines[0])["message"] == "hello"


async def test_unknown_log_format_rejected() -> None:
    with pytest.raises(ValueError) as rejected:
        setup_logging(fmt="xml")
    assert "'xml'" in str(rejected.value)


async def test_exception_text_masks_token() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactingFilter())
    log = logging.getLogger("peb_mail.test.exception_text")
    log.propagate = False
    log.addHandler(handler)
    try:
        raise ValueError(f"recipient refused: {TOKEN_ADDRESS}")
    except ValueError:
        log.exception("delivery failed")
    finally:
        log.removeHandler(handler)
    assert "k3j9x2m8q4" not in stream.getvalue()
