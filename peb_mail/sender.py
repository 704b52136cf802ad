"""Deliver outbox emails through a transport, with retries and backoff.

Two transports exist: ``SmtpTransport`` hands mail to a smarthost with
aiosmtplib, and ``MaildirTransport`` stores it in a local Maildir so a new user
can read every email without a mail server. A kill between a successful hand-off
and ``mark_sent`` delivers that email again after its lease expires, so the
guarantee is at least once, with the same Message-ID.
"""

from __future__ import annotations

import asyncio
import logging
import mailbox
from collections import deque
from pathlib import Path
from typing import Protocol

import aiosmtplib

from .config import OutboxConfig
from .errors import DeliveryError, PermanentDeliveryError, TemporaryDeliveryError
from .store import OutboxEmail, Store
from .worker import _wait_any, backoff_delay_s

logger = logging.getLogger(__name__)


class Transport(Protocol):
    async def deliver(self, email: OutboxEmail) -> str | None:
        """Deliver one email; return a note (such as refused recipients) or None.

        Raises TemporaryDeliveryError or PermanentDeliveryError.
        """
        ...


class MaildirTransport:
    """Store each email in a Maildir folder (``new/``), as a mail client would find it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._maildir = mailbox.Maildir(path, create=True)

    async def deliver(self, email: OutboxEmail) -> str | None:
        envelope = (
            f"X-Peb-Envelope-From: {email.envelope_from}\r\n"
            f"X-Peb-Envelope-To: {', '.join(email.rcpt_tos)}\r\n"
        ).encode("ascii", errors="replace")
        try:
            await asyncio.to_thread(self._maildir.add, envelope + email.raw)
        except OSError as exc:
            raise TemporaryDeliveryError(
                f"could not write to Maildir {self.path}: {exc}"
            ) from exc
        return None


class SmtpTransport:
    """Send through the configured smarthost with aiosmtplib.

    Connections stay open between emails for up to ``KEEP_IDLE_S``, because
    a new connection per email (connect, EHLO, maybe STARTTLS and AUTH, QUIT)
    made the exchange cost about 1.2 ms of CPU per email in a profile at 40
    submissions/s. A connection that failed in any way is closed, never
    reused.
    """

    # Smarthosts close idle sessions after a while (Postfix after 300 s), so
    # a connection idle this long is closed instead of reused.
    KEEP_IDLE_S = 30.0

    def __init__(self, config: OutboxConfig, local_hostname: str | None = None) -> None:
        self.config = config
        # Our EHLO name. Without it aiosmtplib uses socket.getfqdn(), which
        # does a DNS lookup and may not be a fully qualified name.
        self.local_hostname = local_hostname
        # Open connections not in use, with the loop time each became idle.
        self._idle: list[tuple[aiosmtplib.SMTP, float]] = []

    async def deliver(self, email: OutboxEmail) -> str | None:
        config = self.config
        try:
            errors = await self._send(email)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [item.code for item in exc.recipients]
            text = "; ".join(
                f"{item.recipient}: {item.code} {item.message}"
                for item in exc.recipients
            )
            if all(code >= 500 for code in codes):
                raise PermanentDeliveryError(
                    f"all recipients refused: {text}", codes[0]
                ) from exc
            raise TemporaryDeliveryError(
                f"recipients refused: {text}", codes[0]
            ) from exc
        except aiosmtplib.SMTPResponseException as exc:
            error_class = (
                PermanentDeliveryError if exc.code >= 500 else TemporaryDeliveryError
            )
            raise error_class(
                f"smarthost replied {exc.code} {exc.message}", exc.code
            ) from exc
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            raise TemporaryDeliveryError(
                f"could not deliver to {config.smarthost_host}:{config.smarthost_port}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if errors:
            # NOTE: refused recipients of a partly accepted email are only noted,
            # not retried one by one.
            return "; ".join(
                f"{rcpt}: {reply.code} {reply.message}"
                for rcpt, reply in errors.items()
            )
        return None

    async def _send(self, email: OutboxEmail) -> dict[str, aiosmtplib.SMTPResponse]:
        """Send on an idle connection, or on a new one; return refused recipients."""
        client = self._take_idle()
        if client is not None:
            try:
                errors, _ = await client.sendmail(
                    email.envelope_from, list(email.rcpt_tos), email.raw
                )
            except (aiosmtplib.SMTPServerDisconnected, ConnectionError):
                # The smarthost closed the idle connection. Try once on a new
                # one; had it accepted the email before closing, the email
                # arrives twice, as after any retry.
                client.close()
            except BaseException:
                client.close()
                raise
            else:
                self._give_back(client)
                return errors
        client = self._new_client()
        try:
            await client.connect()
            errors, _ = await client.sendmail(
                email.envelope_from, list(email.rcpt_tos), email.raw
            )
        except BaseException:
            client.close()
            raise
        self._give_back(client)
        return errors

    def _new_client(self) -> aiosmtplib.SMTP:
        config = self.config
        return aiosmtplib.SMTP(
            hostname=config.smarthost_host,
            port=config.smarthost_port,
            username=config.username or None,
            password=config.password if config.username else None,
            start_tls=config.starttls,
            use_tls=config.use_tls,
            timeout=config.timeout_s,
            local_hostname=self.local_hostname,
        )

    def _take_idle(self) -> aiosmtplib.SMTP | None:
        now = asyncio.get_running_loop().time()
        while self._idle:
            client, since = self._idle.pop()
            if now - since < self.KEEP_IDLE_S and client.is_connected:
                return client
            client.close()
        return None

    def _give_back(self, client: aiosmtplib.SMTP) -> None:
        self._idle.append((client, asyncio.get_running_loop().time()))

    async def close(self) -> None:
        """Close every idle connection.

        No QUIT is sent: a stop must not wait for a slow smarthost, and
        servers treat a closed idle connection like a QUIT.
        """
        idle, self._idle = self._idle, []
        for client, _ in idle:
            client.close()


def make_transport(
    config: OutboxConfig, local_hostname: str | None = None
) -> Transport:
    if config.transport == "smtp":
        return SmtpTransport(config, local_hostname)
    return MaildirTransport(config.maildir)


class Sender:
    """Deliver due outbox emails; safe to run in several processes at once."""

    def __init__(
        self, store: Store, transport: Transport, config: OutboxConfig
    ) -> None:
        self.store = store
        self.transport = transport
        self.config = config
        # Times of recent hand-offs, for outbox.max_per_minute.
        self._recent: deque[float] = deque()

    def _free_slots(self) -> int:
        """Count the emails that may go now under outbox.max_per_minute (10 at most)."""
        if self.config.max_per_minute <= 0:
            return 10
        now = self.store.clock()
        while self._recent and self._recent[0] <= now - 60.0:
            self._recent.popleft()
        return max(0, min(10, self.config.max_per_minute - len(self._recent)))

    async def run_once(self) -> int:
        """Try every email that is due now, within the rate limit; returns how many."""
        slots = self._free_slots()
        if slots == 0:
            return 0
        emails = await self.store.claim_outbox(self.config.send_lease_s, limit=slots)
        limit = asyncio.Semaphore(self.config.concurrency)

        async def deliver(item: OutboxEmail) -> None:
            async with limit:
                self._recent.append(self.store.clock())
                await self._deliver(item)

        await asyncio.gather(*(deliver(item) for item in emails))
        return len(emails)

    async def drain(self) -> int:
        total = 0
        while count := await self.run_once():
            total += count
        return total

    async def run(self, wake: asyncio.Event, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                # Cleared before looking for work, so a wake-up that arrives
                # while run_once looks is kept and the wait returns at once.
                wake.clear()
                if await self.run_once():
                    continue
                await _wait_any(wake, stop, self.config.poll_interval_s)
        finally:
            close = getattr(self.transport, "close", None)
            if close is not None:
                await close()

    async def _deliver(self, item: OutboxEmail) -> None:
        try:
            note = await self.transport.deliver(item)
        except PermanentDeliveryError as exc:
            logger.warning("outbox %d (%s) dead: %s", item.id, item.kind, exc)
            await self.store.mark_dead(item.id, str(exc))
            return
        except DeliveryError as exc:
            await self._retry(item, str(exc))
            return
        except Exception as exc:  # a transport bug must not stop the sender
            logger.exception("outbox %d: unexpected error while sending", item.id)
            await self._retry(item, f"unexpected {type(exc).__name__}: {exc}")
            return
        await self.store.mark_sent(item.id, note)
        logger.info(
            "outbox %d (%s) sent to %d recipients",
            item.id,
            item.kind,
            len(item.rcpt_tos),
        )

    async def _retry(self, item: OutboxEmail, error: str) -> None:
        age_s = self.store.clock() - (item.revived_at or item.created_at)
        if age_s >= self.config.dead_after_s:
            logger.warning(
                "outbox %d (%s) dead: still failing after %.0fs: %s",
                item.id,
                item.kind,
                age_s,
                error,
            )
            await self.store.mark_dead(
                item.id, f"gave up after {age_s:.0f}s and {item.tries} tries: {error}"
            )
            return
        if item.tries >= self.config.max_tries:
            logger.warning(
                "outbox %d (%s) dead after %d tries: %s",
                item.id,
                item.kind,
                item.tries,
                error,
            )
            await self.store.mark_dead(
                item.id, f"gave up after {item.tries} tries: {error}"
            )
            return
        delay = backoff_delay_s(
            item.tries, self.config.backoff_base_s, self.config.backoff_max_s
        )
        logger.info(
            "outbox %d try %d failed, retry in %.0fs: %s",
            item.id,
            item.tries,
            delay,
            error,
        )
        await self.store.mark_retry(item.id, delay, error)
