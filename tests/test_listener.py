"""The SMTP listener over a real socket: relay rules, size limits, durability."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import aiosmtplib
import pytest

from peb_mail.config import Config
from peb_mail.listener import start_listener
from peb_mail.store import Store

from .conftest import DOMAIN, SERVICE, STUDENT, make_config

MESSAGE = (
    f"From: Ana <{STUDENT}>\r\nTo: {SERVICE}\r\nSubject: LIST\r\n"
    "Message-ID: <m1@student.test>\r\n\r\nLIST\r\n"
).encode()


class Running:
    def __init__(self, config: Config, store: Store, port: int) -> None:
        self.config = config
        self.store = store
        self.port = port
        self.stored = 0

    def client(self) -> aiosmtplib.SMTP:
        return aiosmtplib.SMTP(hostname="127.0.0.1", port=self.port, timeout=5)

    def rows(self) -> list[tuple[int, str, bytes]]:
        # A separate connection sees only committed data.
        with sqlite3.connect(self.config.service.database) as db:
            return db.execute(
                "select id, mail_from, raw from inbound order by id"
            ).fetchall()


@pytest.fixture
async def listener(tmp_path: Path) -> AsyncIterator[Running]:
    config = make_config(tmp_path, listener={"max_message_bytes": 4096})
    store = await Store.open(config.service.database, busy_timeout_s=0.2)
    running = Running(config, store, 0)

    def on_stored() -> None:
        running.stored += 1

    listener = await start_listener(config, store, on_stored)
    running.port = listener.port
    yield running
    await listener.close(timeout_s=1.0)
    await store.close()


async def test_rcpt_other_domain_rejected(listener: Running) -> None:
    async with listener.client() as client:
        await client.ehlo()
        await client.mail(STUDENT)
        with pytest.raises(aiosmtplib.SMTPRecipientRefused) as refused:
            await client.rcpt("someone@elsewhere.test")
    assert refused.value.code == 550


async def test_rcpt_our_domain_any_case(listener: Running) -> None:
    async with listener.client() as client:
        await client.ehlo()
        await client.mail(STUDENT)
        code, _ = await client.rcpt(f"Reply+ABC@{DOMAIN.upper()}")
    assert code == 250


async def test_ehlo_advertises_size(listener: Running) -> None:
    async with listener.client() as client:
        await client.ehlo()
        assert client.supports_extension("size")
        assert client.esmtp_extensions["size"] == "4096"


async def test_declared_size_over_limit(listener: Running) -> None:
    async with listener.client() as client:
        await client.ehlo()
        code, _ = await client.execute_command(
            b"MAIL", b"FROM:<" + STUDENT.encode() + b"> SIZE=5000"
        )
    assert code == 552


async def test_oversize_data_rejected(listener: Running) -> None:
    big = MESSAGE + (b"x" * 70 + b"\r\n") * 80
    async with listener.client() as client:
        await client.ehlo()
        # No SIZE parameter, so the limit can only be enforced during DATA.
        await client.execute_command(b"MAIL", b"FROM:<" + STUDENT.encode() + b">")
        await client.rcpt(SERVICE)
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await client.data(big)
    assert refused.value.code == 552
    assert listener.rows() == []


async def test_extended_parameters_accepted(listener: Running) -> None:
    async with listener.client() as client:
        await client.ehlo()
        mail_code, _ = await client.execute_command(
            b"MAIL",
            b"FROM:<" + STUDENT.encode() + b"> SIZE=200 BODY=8BITMIME SMTPUTF8 "
            b"AUTH=<> RET=HDRS ENVID=QQ314159",
        )
        rcpt_code, _ = await client.execute_command(
            b"RCPT",
            b"TO:<"
            + SERVICE.encode()
            + b"> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;"
            + SERVICE.encode(),
        )
        data_code, _ = await client.data(MESSAGE)
    assert mail_code == 250
    assert rcpt_code == 250
    assert data_code == 250


async def test_250_means_committed(listener: Running) -> None:
    errors, reply = await aiosmtplib.send(
        MESSAGE,
        sender=STUDENT,
        recipients=[SERVICE],
        hostname="127.0.0.1",
        port=listener.port,
    )
    rows = listener.rows()
    assert errors == {}
    assert len(rows) == 1
    assert rows[0][1] == STUDENT
    assert rows[0][2] == MESSAGE
    assert listener.stored == 1


async def test_duplicate_delivery_stored_once(listener: Running) -> None:
    for _ in range(2):
        _, reply = await aiosmtplib.send(
            MESSAGE,
            sender=STUDENT,
            recipients=[SERVICE],
            hostname="127.0.0.1",
            port=listener.port,
        )
        assert reply.startswith("2.0.0 OK")
    assert len(listener.rows()) == 1
    assert listener.stored == 1


async def test_storage_failure_answers_451(listener: Running) -> None:
    with sqlite3.connect(listener.config.service.database) as db:
        db.execute("drop table inbound")
    with pytest.raises(aiosmtplib.SMTPDataError) as refused:
        await aiosmtplib.send(
            MESSAGE,
            sender=STUDENT,
            recipients=[SERVICE],
            hostname="127.0.0.1",
            port=listener.port,
        )
    assert refused.value.code == 451
    assert "Error" not in refused.value.message
    assert "sqlite" not in refused.value.message.lower()


async def test_concurrent_sessions_all_stored(listener: Running) -> None:
    async def deliver(index: int) -> None:
        raw = MESSAGE.replace(b"<m1@", f"<m{index}-x@".encode())
        await aiosmtplib.send(
            raw,
            sender=STUDENT,
            recipients=[SERVICE],
            hostname="127.0.0.1",
            port=listener.port,
        )

    await asyncio.gather(*(deliver(index) for index in range(20)))
    assert len(listener.rows()) == 20


async def test_locked_database_answers_451(listener: Running) -> None:
    other = sqlite3.connect(listener.config.service.database, isolation_level=None)
    other.execute("begin exclusive")
    try:
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await aiosmtplib.send(
                MESSAGE,
                sender=STUDENT,
                recipients=[SERVICE],
                hostname="127.0.0.1",
                port=listener.port,
            )
    finally:
        other.execute("rollback")
        other.close()
    assert refused.value.code == 451
    assert listener.rows() == []
    assert listener.stored == 0


async def test_full_disk_answers_451(listener: Running) -> None:
    # max_page_count makes SQLite fail with SQLITE_FULL, as a full disk does.
    # The test reaches into the connection that commits received mail because
    # the pragma applies per connection.
    writer = listener.store._ingest_writer  # noqa: SLF001
    pages = await writer.execute("pragma page_count")
    await writer.execute(f"pragma max_page_count = {pages[0][0]}")
    big = MESSAGE + (b"y" * 70 + b"\r\n") * 50
    replies = []
    for index in range(3):
        raw = big.replace(b"<m1@", f"<full{index}@".encode())
        try:
            await aiosmtplib.send(
                raw,
                sender=STUDENT,
                recipients=[SERVICE],
                hostname="127.0.0.1",
                port=listener.port,
            )
            replies.append(250)
        except aiosmtplib.SMTPDataError as exc:
            assert "full" not in exc.message
            replies.append(exc.code)
    # The free room left in existing pages may hold one message; after that
    # every delivery must be refused with 451, never acknowledged.
    assert 451 in replies
    assert set(replies) <= {250, 451}
    assert len(listener.rows()) == replies.count(250)


async def test_read_only_database_answers_451(listener: Running) -> None:
    writer = listener.store._ingest_writer  # noqa: SLF001
    await writer.execute("pragma query_only = 1")
    with pytest.raises(aiosmtplib.SMTPDataError) as refused:
        await aiosmtplib.send(
            MESSAGE,
            sender=STUDENT,
            recipients=[SERVICE],
            hostname="127.0.0.1",
            port=listener.port,
        )
    await writer.execute("pragma query_only = 0")
    assert refused.value.code == 451
    assert listener.rows() == []


async def test_store_recovers_after_failure(listener: Running) -> None:
    writer = listener.store._ingest_writer  # noqa: SLF001
    await writer.execute("pragma query_only = 1")
    with pytest.raises(aiosmtplib.SMTPDataError):
        await aiosmtplib.send(
            MESSAGE,
            sender=STUDENT,
            recipients=[SERVICE],
            hostname="127.0.0.1",
            port=listener.port,
        )
    await writer.execute("pragma query_only = 0")
    errors, _ = await aiosmtplib.send(
        MESSAGE,
        sender=STUDENT,
        recipients=[SERVICE],
        hostname="127.0.0.1",
        port=listener.port,
    )
    assert errors == {}
    assert len(listener.rows()) == 1
