"""Graceful stop: open SMTP sessions finish, leases are released, time is bounded."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

import aiosmtplib
import pytest

from peb_mail.errors import ListenError
from peb_mail.service import Service

from .conftest import (
    DOMAIN,
    SERVICE,
    STUDENT,
    Sink,
    address_in,
    make_config,
    smtp_outbox,
)
from .model_server import ModelServer, ScriptedReply


def message(subject: str, body: str, to: str = SERVICE) -> EmailMessage:
    mail = EmailMessage()
    mail["From"] = f"Ana Silva <{STUDENT}>"
    mail["To"] = to
    mail["Subject"] = subject
    mail["Message-ID"] = make_msgid(domain="student.test")
    mail.set_content(body)
    return mail


async def test_stop_lets_open_session_finish(tmp_path: Path, sink: Sink) -> None:
    config = make_config(
        tmp_path, outbox=smtp_outbox(sink), service={"stop_timeout_s": 6.0}
    )
    service = Service(config)
    await service.start()
    assert service.port is not None
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=service.port, timeout=5)
    await client.connect()
    await client.ehlo()
    await client.mail(STUDENT)
    await client.rcpt(SERVICE)

    stopping = asyncio.create_task(service.stop())
    await asyncio.sleep(0.2)
    with pytest.raises(aiosmtplib.SMTPConnectError):
        await aiosmtplib.SMTP(
            hostname="127.0.0.1", port=service.port, timeout=2
        ).connect()
    code, _ = await client.data(message("LIST", "LIST").as_bytes())
    await client.quit()
    started = time.monotonic()
    await stopping

    with sqlite3.connect(config.service.database) as db:
        stored = db.execute("select count(*) from inbound").fetchone()
    assert code == 250
    assert stored == (1,)
    assert time.monotonic() - started < 6.0


async def test_stop_releases_grading_lease(
    tmp_path: Path, sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PEB_MAIL_LLM_API_KEY", "test-key")
    async with ModelServer() as model:
        model.push(ScriptedReply(delay_s=60))
        config = make_config(
            tmp_path,
            outbox=smtp_outbox(sink),
            service={"stop_timeout_s": 2.0},
            grader={
                "kind": "llm",
                "model": "openai/test-model",
                "api_base": model.api_base,
                "timeout_s": 120,
            },
        )
        service = Service(config)
        await service.start()
        assert service.store is not None and service.port is not None
        await service.store.upsert_students([(STUDENT, "Ana Silva", "demo")], {})
        await aiosmtplib.send(
            message("START 1", ""), hostname="127.0.0.1", port=service.port
        )
        [brief] = await sink.wait_for(lambda items: len(items) >= 1)
        address = address_in(brief.message.get_body(("plain",)).get_content())
        assert address.endswith("@" + DOMAIN)
        submission = message(
            "Correction",
            "Dear Daniel,\n\nThe March figure is $14,200.\n\nAna",
            to=address,
        )
        await aiosmtplib.send(submission, hostname="127.0.0.1", port=service.port)
        deadline = time.monotonic() + 20
        while not model.requests:
            assert time.monotonic() < deadline, "the worker never called the model"
            await asyncio.sleep(0.05)

        started = time.monotonic()
        await service.stop()
        elapsed = time.monotonic() - started

    with sqlite3.connect(config.service.database) as db:
        jobs = db.execute(
            "select state, lease_owner, tries, last_error from jobs"
        ).fetchall()
    assert jobs == [("queued", None, 1, "stopped during grading")]
    assert elapsed < 4.0


async def test_port_in_use_fails_cleanly(tmp_path: Path) -> None:
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = blocker.sockets[0].getsockname()[1]
    try:
        service = Service(make_config(tmp_path, listener={"port": port}))
        with pytest.raises(ListenError) as failed:
            await service.start()
    finally:
        blocker.close()
    assert f"127.0.0.1:{port}" in str(failed.value)
    assert "listener.port" in str(failed.value)
    assert service.store is None
