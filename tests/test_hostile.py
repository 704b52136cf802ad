"""Hostile input at the SMTP listener and in what we send back."""

from __future__ import annotations

import asyncio
import sqlite3
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest

from peb_mail.compose import Composer, Mailbox
from peb_mail.config import Config
from peb_mail.listener import Listener, start_listener
from peb_mail.models import CRITERION_KEYS, CriterionScore, Verdict
from peb_mail.scenarios import load_scenarios
from peb_mail.store import Store, Student

from .conftest import DOMAIN, SERVICE, STUDENT, make_config

MESSAGE = (
    f"From: Ana <{STUDENT}>\r\nTo: {SERVICE}\r\nSubject: LIST\r\n"
    "Message-ID: <h1@student.test>\r\n\r\nLIST\r\n"
).encode()

Factory = Callable[..., Any]


@pytest.fixture
async def listen(tmp_path: Path) -> AsyncIterator[Factory]:
    opened: list[tuple[Listener, Store]] = []

    async def start(**listener: Any) -> tuple[Config, Listener]:
        config = make_config(tmp_path, listener=listener)
        store = await Store.open(config.service.database)
        running = await start_listener(config, store, lambda: None)
        opened.append((running, store))
        return config, running

    yield start
    for running, store in opened:
        await running.close(timeout_s=1.0)
        await store.close()


def stored(config: Config) -> list[tuple[str, bytes]]:
    with sqlite3.connect(config.service.database) as db:
        return db.execute("select rcpt_tos, raw from inbound order by id").fetchall()


async def raw_session(port: int, lines: list[bytes]) -> bytes:
    """Send raw bytes line by line and return everything the server answered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    replies = await reader.readline()
    try:
        for line in [*lines, b"QUIT\r\n"]:
            writer.write(line)
            await writer.drain()
            await asyncio.sleep(0.02)
    except ConnectionError:
        pass  # the server closed the session; read what it said first
    try:
        replies += await asyncio.wait_for(reader.read(), 5)
    except ConnectionError:
        pass
    finally:
        writer.close()
    return replies


async def test_thousand_recipients_capped(listen: Factory) -> None:
    config, running = await listen(max_recipients=50)
    codes = []
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=running.port) as client:
        await client.ehlo()
        await client.mail(STUDENT)
        for index in range(1000):
            response = await client.execute_command(
                b"RCPT", f"TO:<r{index}@{DOMAIN}>".encode()
            )
            codes.append(response.code)
        await client.data(MESSAGE)
    [(rcpt_tos, _)] = stored(config)
    assert codes.count(250) == 50
    assert set(codes[50:]) == {452}
    assert rcpt_tos.count("@") == 50


async def test_session_limit_answers_421(listen: Factory) -> None:
    _, running = await listen(max_sessions=2)
    first = aiosmtplib.SMTP(hostname="127.0.0.1", port=running.port)
    second = aiosmtplib.SMTP(hostname="127.0.0.1", port=running.port)
    await first.connect()
    await second.connect()
    try:
        with pytest.raises(aiosmtplib.SMTPConnectError) as refused:
            await aiosmtplib.SMTP(hostname="127.0.0.1", port=running.port).connect()
    finally:
        await first.quit()
        await second.quit()
    assert "421" in str(refused.value)


async def test_flood_from_one_ip_limited(listen: Factory) -> None:
    config, running = await listen(messages_per_ip_per_minute=3, rate_limit_exempt=[])
    codes = []
    for index in range(6):
        raw = MESSAGE.replace(b"<h1@", f"<ip{index}@".encode())
        try:
            await aiosmtplib.send(
                raw,
                sender=f"s{index}@student.test",
                recipients=[SERVICE],
                hostname="127.0.0.1",
                port=running.port,
            )
            codes.append(250)
        except aiosmtplib.SMTPSenderRefused as exc:
            codes.append(exc.code)
    assert codes == [250, 250, 250, 451, 451, 451]
    assert len(stored(config)) == 3


async def test_flood_from_one_sender_limited(listen: Factory) -> None:
    config, running = await listen(messages_per_sender_per_minute=2)
    codes = []
    for index in range(4):
        raw = MESSAGE.replace(b"<h1@", f"<snd{index}@".encode())
        try:
            await aiosmtplib.send(
                raw,
                sender=STUDENT,
                recipients=[SERVICE],
                hostname="127.0.0.1",
                port=running.port,
            )
            codes.append(250)
        except aiosmtplib.SMTPSenderRefused as exc:
            codes.append(exc.code)
    assert codes == [250, 250, 451, 451]
    assert len(stored(config)) == 2


async def test_loopback_exempt_from_ip_limit(listen: Factory) -> None:
    config, running = await listen(messages_per_ip_per_minute=1)
    for index in range(3):
        raw = MESSAGE.replace(b"<h1@", f"<ex{index}@".encode())
        await aiosmtplib.send(
            raw,
            sender=f"e{index}@student.test",
            recipients=[SERVICE],
            hostname="127.0.0.1",
            port=running.port,
        )
    assert len(stored(config)) == 3


async def test_8bit_address_without_smtputf8(listen: Factory) -> None:
    config, running = await listen()
    answer = await raw_session(
        running.port,
        [b"EHLO x\r\n", "MAIL FROM:<jos\u00e9@student.test>\r\n".encode()],
    )
    assert b"553 5.6.7" in answer
    assert stored(config) == []


async def test_8bit_address_with_smtputf8(listen: Factory) -> None:
    config, running = await listen()
    answer = await raw_session(
        running.port,
        [
            b"EHLO x\r\n",
            "MAIL FROM:<jos\u00e9@student.test> SMTPUTF8\r\n".encode(),
            f"RCPT TO:<{SERVICE}>\r\n".encode(),
            b"DATA\r\n",
            MESSAGE + b".\r\n",
        ],
    )
    assert answer.count(b"250 2.0.0 OK: queued") == 1
    assert len(stored(config)) == 1


@pytest.mark.parametrize("fake_end", [b"\n.\n", b"\r\n.\n", b"\n.\r\n"])
async def test_smuggled_second_message_stays_data(
    listen: Factory, fake_end: bytes
) -> None:
    config, running = await listen()
    smuggled = (
        b"From: Ana <"
        + STUDENT.encode()
        + b">\r\nSubject: real\r\n\r\nfirst part"
        + fake_end
        + b"MAIL FROM:<forged@student.test>\r\nRCPT TO:<"
        + SERVICE.encode()
        + b">\r\n"
        b"DATA\r\nSubject: forged\r\n\r\nforged body\r\n.\r\n"
    )
    answer = await raw_session(
        running.port,
        [
            b"EHLO x\r\n",
            f"MAIL FROM:<{STUDENT}>\r\n".encode(),
            f"RCPT TO:<{SERVICE}>\r\n".encode(),
            b"DATA\r\n",
            smuggled,
        ],
    )
    rows = stored(config)
    assert answer.count(b"250 2.0.0 OK: queued") == 1
    assert len(rows) == 1
    assert b"forged body" in rows[0][1]


async def test_command_flood_closes_session(listen: Factory) -> None:
    _, running = await listen(max_commands_per_session=5)
    reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
    await reader.readline()
    answers = []
    for _ in range(8):
        writer.write(b"NOOP\r\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 5)
        if not line:
            break
        answers.append(line[:3])
    writer.close()
    assert answers == [b"250"] * 5 + [b"421"]


async def test_idle_client_disconnected(listen: Factory) -> None:
    _, running = await listen(idle_timeout_s=0.3)
    reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
    await reader.readline()
    started = asyncio.get_running_loop().time()
    # The server closes the idle session; read() returns at end of stream.
    await asyncio.wait_for(reader.read(), 5)
    elapsed = asyncio.get_running_loop().time() - started
    writer.close()
    assert reader.at_eof()
    assert elapsed < 3.0


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            f"/CN={DOMAIN}",
            "-addext",
            f"subjectAltName=DNS:{DOMAIN},IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_starttls_then_deliver(
    listen: Factory, certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    config, running = await listen(
        tls_cert_file=str(cert), tls_key_file=str(key), require_tls=True
    )
    context = ssl.create_default_context(cafile=str(cert))
    async with aiosmtplib.SMTP(
        hostname="127.0.0.1", port=running.port, tls_context=context, start_tls=False
    ) as client:
        await client.ehlo()
        assert client.supports_extension("starttls")
        refused = await client.execute_command(b"MAIL", f"FROM:<{STUDENT}>".encode())
        await client.starttls()
        await client.ehlo()
        await client.sendmail(STUDENT, [SERVICE], MESSAGE)
    assert refused.code == 530
    assert len(stored(config)) == 1


def test_roster_name_cannot_inject_headers(tmp_path: Path) -> None:
    composer = Composer(make_config(tmp_path))
    email = composer.build(
        kind="notice",
        sender=composer.service,
        to=[Mailbox("Ana\r\nBcc: evil@attacker.test", STUDENT)],
        subject="Hello\r\nBcc: evil@attacker.test",
        text="hi",
    )
    head = email.raw.split(b"\r\n\r\n", 1)[0]
    assert b"\r\nBcc:" not in head
    assert email.rcpt_tos == (STUDENT,)


def test_feedback_html_escapes_everything(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    composer = Composer(config)
    scenario = load_scenarios(config.service.scenarios_dir)[0]
    evil = '<script>alert("x")</script><img src=x onerror=1>'
    verdict = Verdict(
        scores=tuple(CriterionScore(key, 3, evil) for key in CRITERION_KEYS),
        comment=evil,
        revision=evil,
        counterpart_reply=evil,
        grader="offline",
    )
    html = composer.render(
        "feedback.html.j2",
        student_name=evil,
        **composer.feedback_context(verdict, scenario),
    )
    summary = composer.render(
        "summary.html.j2",
        student=Student(1, STUDENT, evil, evil),
        attempt_id=1,
        subject=evil,
        body=evil,
        **composer.feedback_context(verdict, scenario),
    )
    for page in (html, summary):
        assert "<script>" not in page
        assert "<img" not in page
        assert "&lt;script&gt;" in page


async def test_oversized_header_rejected(listen: Factory) -> None:
    config, running = await listen(max_message_bytes=200_000)
    huge = b"X-Filler: " + b"a" * 70_000 + b"\r\n"
    answer = await raw_session(
        running.port,
        [
            b"EHLO x\r\n",
            f"MAIL FROM:<{STUDENT}>\r\n".encode(),
            f"RCPT TO:<{SERVICE}>\r\n".encode(),
            b"DATA\r\n",
            huge + MESSAGE + b".\r\n",
        ],
    )
    assert b"500" in answer
    assert b"250 2.0.0 OK: queued" not in answer
    assert stored(config) == []
