"""The sender over real transports: an aiosmtpd smarthost on loopback, a Maildir.

The smarthost's replies are set per test. The store runs on a fake clock, so
the retry delays the sender writes are checked exactly, without sleeping.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from peb_mail import store as sql
from peb_mail.config import OutboxConfig
from peb_mail.sender import MaildirTransport, Sender, SmtpTransport
from peb_mail.store import NewEmail, OutboxEmail, Store
from peb_mail.worker import backoff_delay_s

START = 1_700_000_000.0
BASE_S = 10.0
MAX_S = 25.0
FROM = "practice@peb-mail.test"
ANA = "ana@student.test"
TEACHER = "teacher@school.test"
RAW = (
    f"From: Practice <{FROM}>\r\n"
    f"To: {ANA}\r\n"
    f"Cc: {TEACHER}\r\n"
    "Subject: Feedback on your reply\r\n"
    "Message-ID: <f1@peb-mail.test>\r\n"
    "\r\n"
    "Your reply scored 8/10.\r\n"
    ".A line that starts with a dot.\r\n"
).encode()


class FakeClock:
    """A clock for ``Store(clock=...)`` that moves only when advance() is called."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Delivery:
    mail_from: str
    rcpt_tos: list[str]
    raw: bytes


class Smarthost:
    """aiosmtpd handler whose replies each test sets through its attributes.

    ``rcpt_replies`` maps a recipient to the reply given at RCPT (others get
    250). ``data_reply`` is the reply to DATA, and ``close_at_data`` drops the
    connection instead of replying. Only messages accepted with 250 are kept.
    """

    def __init__(self) -> None:
        self.port = 0
        self.rcpt_replies: dict[str, str] = {}
        self.data_reply = "250 OK"
        self.close_at_data = False
        self.stall_at_data_s = 0.0
        self.accepted: list[Delivery] = []

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        reply = self.rcpt_replies.get(address)
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        if self.stall_at_data_s:
            await asyncio.sleep(self.stall_at_data_s)
        if self.close_at_data:
            assert server.transport is not None
            server.transport.close()
            return "421 4.4.2 closing"
        if self.data_reply.startswith("250"):
            self.accepted.append(
                Delivery(
                    envelope.mail_from or "",
                    list(envelope.rcpt_tos),
                    bytes(envelope.original_content or b""),
                )
            )
        return self.data_reply


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def store(tmp_path: Path, clock: FakeClock) -> AsyncIterator[Store]:
    opened = await Store.open(tmp_path / "x.sqlite3", clock=clock)
    yield opened
    await opened.close()


@pytest.fixture
async def smarthost() -> AsyncIterator[Smarthost]:
    handler = Smarthost()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="smarthost.test"), host="127.0.0.1", port=0
    )
    handler.port = server.sockets[0].getsockname()[1]
    yield handler
    server.close()
    await server.wait_closed()


@pytest.fixture
def closed_port() -> int:
    """Return a loopback port that was bound and closed, so connecting is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def smtp_config(
    port: int, max_tries: int = 10, dead_after_s: float = 172800.0
) -> OutboxConfig:
    return OutboxConfig(
        dead_after_s=dead_after_s,
        transport="smtp",
        smarthost_host="127.0.0.1",
        smarthost_port=port,
        timeout_s=5.0,
        max_tries=max_tries,
        backoff_base_s=BASE_S,
        backoff_max_s=MAX_S,
    )


def smtp_sender(store: Store, port: int, max_tries: int = 10) -> Sender:
    config = smtp_config(port, max_tries)
    return Sender(store, SmtpTransport(config), config)


async def queue_email(store: Store, rcpt_tos: tuple[str, ...] = (ANA, TEACHER)) -> int:
    email = NewEmail(
        message_id="<f1@peb-mail.test>",
        kind="feedback",
        envelope_from=FROM,
        rcpt_tos=rcpt_tos,
        raw=RAW,
    )
    async with store.transaction() as db:
        await sql.insert_outbox(db, email, store.clock())
    [queued] = await store.list_outbox()
    return queued.id


async def only_email(store: Store) -> OutboxEmail:
    [email] = await store.list_outbox()
    return email


def expected_delay_bounds(tries: int) -> tuple[float, float]:
    """Return the [low, high) range of the wait after failed try ``tries``."""
    full = min(MAX_S, BASE_S * 2 ** (tries - 1))
    return 0.5 * full, full


# -- SMTP --------------------------------------------------------------------


async def test_smtp_delivers_exact_bytes(
    store: Store, clock: FakeClock, smarthost: Smarthost
) -> None:
    email_id = await queue_email(store)
    clock.advance(3.0)
    tried = await smtp_sender(store, smarthost.port).run_once()
    assert tried == 1
    [delivery] = smarthost.accepted
    assert delivery.raw == RAW
    assert delivery.mail_from == FROM
    assert delivery.rcpt_tos == [ANA, TEACHER]
    email = await only_email(store)
    assert email.id == email_id
    assert email.state == "sent"
    assert email.sent_at == clock.now
    assert email.last_error is None
    assert email.tries == 1


async def test_smtp_data_4xx_backs_off(
    store: Store, clock: FakeClock, smarthost: Smarthost
) -> None:
    smarthost.data_reply = "451 4.3.0 try later"
    await queue_email(store)
    sender = smtp_sender(store, smarthost.port)
    # Tries 1 to 3 cover doubling (10 s, then 20 s) and the 25 s cap.
    for tries in (1, 2, 3):
        assert await sender.run_once() == 1
        email = await only_email(store)
        assert email.state == "pending"
        assert email.tries == tries
        assert "451" in (email.last_error or "")
        low, high = expected_delay_bounds(tries)
        delay = email.not_before - clock.now
        assert low <= delay < high, f"try {tries}: delay {delay}"
        assert await sender.run_once() == 0
        clock.advance(delay)
    assert smarthost.accepted == []


async def test_smtp_data_5xx_dead(store: Store, smarthost: Smarthost) -> None:
    smarthost.data_reply = "554 5.7.1 message rejected as spam"
    await queue_email(store)
    await smtp_sender(store, smarthost.port).run_once()
    email = await only_email(store)
    assert email.state == "dead"
    assert email.tries == 1
    assert "554" in (email.last_error or "")
    assert "message rejected as spam" in (email.last_error or "")


async def test_smtp_partial_rcpt_refusal_sent(
    store: Store, smarthost: Smarthost
) -> None:
    smarthost.rcpt_replies = {TEACHER: "550 5.1.1 no such user"}
    await queue_email(store)
    await smtp_sender(store, smarthost.port).run_once()
    email = await only_email(store)
    assert email.state == "sent"
    note = email.last_error or ""
    assert TEACHER in note
    assert "550" in note
    assert ANA not in note
    [delivery] = smarthost.accepted
    assert delivery.rcpt_tos == [ANA]
    assert delivery.raw == RAW


async def test_smtp_all_rcpts_5xx_dead(store: Store, smarthost: Smarthost) -> None:
    smarthost.rcpt_replies = {
        ANA: "550 5.1.1 no such user",
        TEACHER: "553 5.1.3 bad address",
    }
    await queue_email(store)
    await smtp_sender(store, smarthost.port).run_once()
    email = await only_email(store)
    assert email.state == "dead"
    assert ANA in (email.last_error or "")
    assert TEACHER in (email.last_error or "")
    assert smarthost.accepted == []


async def test_smtp_all_rcpts_mixed_retried(
    store: Store, clock: FakeClock, smarthost: Smarthost
) -> None:
    # One temporary refusal among permanent ones may still pass later.
    smarthost.rcpt_replies = {
        ANA: "450 4.2.0 try later",
        TEACHER: "550 5.1.1 no such user",
    }
    await queue_email(store)
    await smtp_sender(store, smarthost.port).run_once()
    email = await only_email(store)
    assert email.state == "pending"
    assert email.tries == 1
    assert "450" in (email.last_error or "")
    assert email.not_before > clock.now


async def test_smtp_closed_at_data_retried(
    store: Store, clock: FakeClock, smarthost: Smarthost
) -> None:
    smarthost.close_at_data = True
    await queue_email(store)
    await smtp_sender(store, smarthost.port).run_once()
    email = await only_email(store)
    assert email.state == "pending"
    assert email.tries == 1
    assert f"127.0.0.1:{smarthost.port}" in (email.last_error or "")
    low, high = expected_delay_bounds(1)
    assert low <= email.not_before - clock.now < high


async def test_smtp_refused_connection_retried(
    store: Store, clock: FakeClock, closed_port: int
) -> None:
    await queue_email(store)
    await smtp_sender(store, closed_port).run_once()
    email = await only_email(store)
    assert email.state == "pending"
    assert email.tries == 1
    assert f"127.0.0.1:{closed_port}" in (email.last_error or "")
    low, high = expected_delay_bounds(1)
    assert low <= email.not_before - clock.now < high


async def test_smtp_dead_after_max_tries(
    store: Store, clock: FakeClock, closed_port: int
) -> None:
    await queue_email(store)
    sender = smtp_sender(store, closed_port, max_tries=3)
    for tries in (1, 2):
        assert await sender.run_once() == 1
        email = await only_email(store)
        assert email.state == "pending", f"after try {tries}"
        clock.advance(email.not_before - clock.now)
    assert await sender.run_once() == 1
    email = await only_email(store)
    assert email.state == "dead"
    assert email.tries == 3
    assert (email.last_error or "").startswith("gave up after 3 tries")


async def test_smtp_dead_after_max_age(
    store: Store, clock: FakeClock, closed_port: int
) -> None:
    await queue_email(store)
    config = smtp_config(closed_port, max_tries=100, dead_after_s=3600.0)
    sender = Sender(store, SmtpTransport(config), config)
    assert await sender.run_once() == 1
    assert (await only_email(store)).state == "pending"
    clock.advance(3600.0)
    assert await sender.run_once() == 1
    email = await only_email(store)
    assert email.state == "dead"
    assert email.tries == 2
    assert (email.last_error or "").startswith("gave up after 3600s")
    # A revived email gets a new age limit, not an instant second death.
    assert await store.retry_outbox(None) == 1
    assert await sender.run_once() == 1
    assert (await only_email(store)).state == "pending"


async def test_retry_outbox_redelivers(store: Store, smarthost: Smarthost) -> None:
    smarthost.data_reply = "554 5.7.1 rejected"
    email_id = await queue_email(store)
    sender = smtp_sender(store, smarthost.port)
    await sender.run_once()
    assert (await only_email(store)).state == "dead"
    smarthost.data_reply = "250 OK"
    assert await sender.run_once() == 0
    assert await store.retry_outbox([email_id]) == 1
    assert await sender.run_once() == 1
    email = await only_email(store)
    assert email.state == "sent"
    assert email.tries == 1
    [delivery] = smarthost.accepted
    assert delivery.raw == RAW


# -- Maildir -----------------------------------------------------------------


async def test_maildir_stores_envelope_and_raw(store: Store, tmp_path: Path) -> None:
    maildir = tmp_path / "sent"
    config = OutboxConfig(transport="maildir", maildir=maildir)
    await queue_email(store)
    await Sender(store, MaildirTransport(maildir), config).run_once()
    [path] = list((maildir / "new").iterdir())
    expected = (
        f"X-Peb-Envelope-From: {FROM}\r\nX-Peb-Envelope-To: {ANA}, {TEACHER}\r\n"
    ).encode() + RAW
    assert path.read_bytes() == expected
    assert (await only_email(store)).state == "sent"


# -- backoff -----------------------------------------------------------------


async def test_backoff_doubles_per_try() -> None:
    delays = [
        backoff_delay_s(tries, 10.0, 1000.0, rand=lambda: 0.0) for tries in range(5)
    ]
    # Try 0 gets the same wait as try 1.
    assert delays == [5.0, 5.0, 10.0, 20.0, 40.0]


async def test_backoff_capped_at_max() -> None:
    assert backoff_delay_s(7, 10.0, 100.0, rand=lambda: 0.0) == 50.0
    assert backoff_delay_s(7, 10.0, 100.0, rand=lambda: 0.5) == 75.0


async def test_backoff_jitter_bounds() -> None:
    assert backoff_delay_s(3, 10.0, 1000.0, rand=lambda: 0.0) == 20.0
    assert backoff_delay_s(3, 10.0, 1000.0, rand=lambda: 0.5) == 30.0
    highest = backoff_delay_s(3, 10.0, 1000.0, rand=lambda: 0.999999)
    assert 39.99 < highest < 40.0
    for _ in range(200):
        assert 20.0 <= backoff_delay_s(3, 10.0, 1000.0) < 40.0


async def test_backoff_huge_tries_capped() -> None:
    assert backoff_delay_s(2000, 10.0, 100.0, rand=lambda: 0.0) == 50.0


async def test_rate_limit_spreads_deliveries(
    store: Store, clock: FakeClock, smarthost: Smarthost
) -> None:
    for index in range(5):
        email = NewEmail(
            message_id=f"<rate{index}@peb-mail.test>",
            kind="feedback",
            envelope_from=FROM,
            rcpt_tos=(ANA,),
            raw=RAW,
        )
        async with store.transaction() as db:
            await sql.insert_outbox(db, email, store.clock())
    config = dataclasses.replace(smtp_config(smarthost.port), max_per_minute=2)
    sender = Sender(store, SmtpTransport(config), config)
    assert await sender.run_once() == 2
    assert await sender.run_once() == 0
    clock.advance(61.0)
    assert await sender.run_once() == 2
    assert len(smarthost.accepted) == 4


async def test_smtp_stall_mid_data_retried(
    store: Store, clock: FakeClock, smarthost: Smarthost
) -> None:
    await queue_email(store)
    smarthost.stall_at_data_s = 3.0
    config = dataclasses.replace(smtp_config(smarthost.port), timeout_s=0.5)
    sender = Sender(store, SmtpTransport(config), config)
    assert await sender.run_once() == 1
    email = await only_email(store)
    assert email.state == "pending"
    assert email.tries == 1
    assert "Timeout" in (email.last_error or "") or "timed out" in (
        email.last_error or ""
    )
    smarthost.stall_at_data_s = 0.0
    clock.advance(email.not_before - clock.now)
    assert await sender.run_once() == 1
    assert (await only_email(store)).state == "sent"


class GatedSmarthost(Smarthost):
    """Smarthost that keeps each DATA waiting until ``expected`` are in DATA."""

    def __init__(self, expected: int) -> None:
        super().__init__()
        self.expected = expected
        self.in_data = 0
        self.max_in_data = 0
        self.all_arrived = asyncio.Event()

    async def handle_DATA(
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        self.in_data += 1
        self.max_in_data = max(self.max_in_data, self.in_data)
        if self.in_data >= self.expected:
            self.all_arrived.set()
        try:
            # A sender that delivers one at a time never gets here twice at
            # once, so each delivery waits out the timeout alone.
            await asyncio.wait_for(self.all_arrived.wait(), 2.0)
        except TimeoutError:
            pass
        self.in_data -= 1
        return await super().handle_DATA(server, session, envelope)


async def queue_numbered(store: Store, number: int) -> None:
    email = NewEmail(
        message_id=f"<n{number}@peb-mail.test>",
        kind="feedback",
        envelope_from=FROM,
        rcpt_tos=(ANA,),
        raw=RAW,
    )
    async with store.transaction() as db:
        await sql.insert_outbox(db, email, store.clock())


async def deliver_gated(store: Store, emails: int, concurrency: int) -> GatedSmarthost:
    """Queue ``emails`` emails and run the sender once against a gated smarthost."""
    gated = GatedSmarthost(expected=emails)
    server, port = await counting_smarthost(gated, [])
    try:
        for number in range(emails):
            await queue_numbered(store, number)
        config = dataclasses.replace(smtp_config(port), concurrency=concurrency)
        sender = Sender(store, SmtpTransport(config), config)
        assert await sender.run_once() == emails
    finally:
        server.close()
        await server.wait_closed()
    return gated


async def test_concurrency_delivers_in_parallel(store: Store) -> None:
    gated = await deliver_gated(store, emails=3, concurrency=3)
    assert gated.max_in_data == 3
    assert len(gated.accepted) == 3
    states = [email.state for email in await store.list_outbox()]
    assert states == ["sent", "sent", "sent"]


async def test_concurrency_one_is_sequential(store: Store) -> None:
    gated = await deliver_gated(store, emails=2, concurrency=1)
    assert gated.max_in_data == 1
    assert len(gated.accepted) == 2


async def counting_smarthost(
    handler: Smarthost, sessions: list[SMTP]
) -> tuple[asyncio.Server, int]:
    """Start an aiosmtpd server that records each SMTP session it opens."""

    def factory() -> SMTP:
        session = SMTP(handler, hostname="smarthost.test")
        sessions.append(session)
        return session

    server = await asyncio.get_running_loop().create_server(
        factory, host="127.0.0.1", port=0
    )
    return server, server.sockets[0].getsockname()[1]


async def test_smtp_reuses_connection(store: Store) -> None:
    handler = Smarthost()
    sessions: list[SMTP] = []
    server, port = await counting_smarthost(handler, sessions)
    config = smtp_config(port)
    transport = SmtpTransport(config)
    sender = Sender(store, transport, config)
    try:
        await queue_numbered(store, 1)
        assert await sender.run_once() == 1
        await queue_numbered(store, 2)
        assert await sender.run_once() == 1
        await transport.close()
    finally:
        server.close()
        await server.wait_closed()
    assert len(handler.accepted) == 2
    assert len(sessions) == 1


async def test_smtp_reconnects_after_idle_close(store: Store) -> None:
    handler = Smarthost()
    sessions: list[SMTP] = []
    server, port = await counting_smarthost(handler, sessions)
    config = smtp_config(port)
    transport = SmtpTransport(config)
    sender = Sender(store, transport, config)
    try:
        await queue_numbered(store, 1)
        assert await sender.run_once() == 1
        # The smarthost drops the idle session, as servers do after a timeout.
        assert sessions[0].transport is not None
        sessions[0].transport.close()
        await asyncio.sleep(0.1)
        await queue_numbered(store, 2)
        assert await sender.run_once() == 1
        await transport.close()
    finally:
        server.close()
        await server.wait_closed()
    states = [email.state for email in await store.list_outbox()]
    assert states == ["sent", "sent"]
    assert len(handler.accepted) == 2
    assert len(sessions) == 2
