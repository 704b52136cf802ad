"""The SMTP listener: accept mail for our domain and commit it before replying 250.

The handler stores the raw bytes as received; everything else (parsing,
matching, grading) happens later from the database, so the SMTP reply depends
only on the commit.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from .config import Config, ListenerConfig
from .errors import ConfigError
from .message import header_message_id
from .store import Store

logger = logging.getLogger(__name__)

# Parameters that real MTAs add to MAIL and RCPT (RFC 3461 DSN, RFC 4954 AUTH).
# aiosmtpd 1.4 answers 555 to any parameter it does not implement itself; we
# accept these and ignore them, because we never relay and send no DSNs.
_IGNORED_PARAMETERS = ("AUTH", "RET", "ENVID", "NOTIFY", "ORCPT")


class PebSMTP(SMTP):
    """aiosmtpd's SMTP with the extra MAIL and RCPT parameters accepted."""

    # RFC 5321 limits a line to 1000 octets, but some clients send longer
    # lines (HTML bodies without breaks). Rejecting them would lose a student's
    # email, so allow 64 KiB per line, which still bounds memory per line.
    line_length_limit = 65536

    def __init__(
        self, handler: IntakeHandler, *args: Any, max_sessions: int = 100, **kwargs: Any
    ) -> None:
        super().__init__(handler, *args, **kwargs)
        self.sessions = handler.sessions
        self.max_sessions = max_sessions

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if len(self.sessions) >= self.max_sessions:
            # Too busy: refuse before the greeting (RFC 5321 4.3.2 allows 421).
            logger.warning(
                "too many SMTP sessions (%d); refusing a new one", len(self.sessions)
            )
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(b"421 4.7.0 Too many connections, try again later\r\n")
            transport.close()
            return
        self.sessions.add(self)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self not in self.sessions:
            return  # refused in connection_made, so aiosmtpd never started
        self.sessions.discard(self)
        super().connection_lost(error)

    def _getparams(self, params: Sequence[str]) -> dict[str, str | bool] | None:
        result = super()._getparams(params)
        if result is not None:
            for name in _IGNORED_PARAMETERS:
                result.pop(name, None)
        return result


class RateLimiter:
    """Count events per key in a sliding one-minute window.

    Memory is bounded: at most ``max_keys`` keys are tracked, and the oldest
    key is dropped first.
    """

    def __init__(
        self,
        per_minute: int,
        max_keys: int = 10000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_minute = per_minute
        self.max_keys = max_keys
        self.clock = clock
        self._events: OrderedDict[str, deque[float]] = OrderedDict()

    def allow(self, key: str) -> bool:
        """Record one event for ``key``; False when it is over the limit."""
        if self.per_minute <= 0:
            return True
        now = self.clock()
        events = self._events.pop(key, None) or deque()
        while events and events[0] <= now - 60.0:
            events.popleft()
        allowed = len(events) < self.per_minute
        if allowed:
            events.append(now)
        self._events[key] = events
        if len(self._events) > self.max_keys:
            self._events.popitem(last=False)
        return allowed


class IntakeHandler:
    """aiosmtpd handler: check recipients, store the message, reply."""

    def __init__(
        self,
        store: Store,
        domain: str,
        on_stored: Callable[[], None],
        config: ListenerConfig | None = None,
    ) -> None:
        self.store = store
        self.domain = domain.lower()
        self.on_stored = on_stored
        self.config = config or ListenerConfig()
        # Open SMTP sessions, so a stop can wait for them to finish.
        self.sessions: set[PebSMTP] = set()
        # Ids of the messages stored here, for intake when several serve
        # processes share the port. Past the bound the oldest are dropped,
        # and intake's sweep for waiting messages finds them.
        self.stored_ids: deque[int] = deque(maxlen=100_000)
        self.per_ip = RateLimiter(self.config.messages_per_ip_per_minute)
        self.per_sender = RateLimiter(self.config.messages_per_sender_per_minute)

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        if not envelope.smtp_utf8 and not address.isascii():
            return "553 5.6.7 Non-ASCII sender address needs the SMTPUTF8 parameter"
        peer = _peer_host(session.peer)
        if peer not in self.config.rate_limit_exempt and not self.per_ip.allow(peer):
            logger.warning("rate limit: too many messages from %s", peer)
            return "451 4.7.1 Too many messages from your address, try again later"
        if address and not self.per_sender.allow(address.lower()):
            logger.warning("rate limit: too many messages from sender %s", address)
            return "451 4.7.1 Too many messages from this sender, try again later"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if not envelope.smtp_utf8 and not address.isascii():
            return "553 5.6.7 Non-ASCII recipient address needs the SMTPUTF8 parameter"
        _, _, domain = address.rpartition("@")
        if domain.lower() != self.domain:
            # Never an open relay: only our own domain is accepted.
            return f"550 5.7.1 <{address}>: relay not permitted, this server only accepts mail for {self.domain}"
        if len(envelope.rcpt_tos) >= self.config.max_recipients:
            return f"452 4.5.3 Too many recipients; at most {self.config.max_recipients} per message"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        raw = envelope.original_content or b""
        if isinstance(raw, str):
            raw = raw.encode("utf-8", errors="surrogateescape")
        peer = _peer_text(session.peer)
        try:
            inbound_id = await self.store.ingest(
                peer=peer,
                mail_from=envelope.mail_from or "",
                rcpt_tos=list(envelope.rcpt_tos),
                message_id=header_message_id(raw),
                raw=raw,
            )
        except Exception:
            # Tell the sending server to try later: 250 is only for stored mail,
            # and Python error text never goes into an SMTP reply.
            logger.exception("storing a message from %s failed", peer)
            return "451 4.3.0 Temporary local problem, please try again later"
        if inbound_id is None:
            logger.info("duplicate delivery from %s ignored", envelope.mail_from)
            return "250 2.0.0 OK: already received"
        self.stored_ids.append(inbound_id)
        self.on_stored()
        return f"250 2.0.0 OK: queued as {inbound_id}"


def _peer_host(peer: object) -> str:
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return str(peer)


def _peer_text(peer: object) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)


class Listener:
    """The running SMTP server and its open sessions."""

    def __init__(self, server: asyncio.Server, handler: IntakeHandler) -> None:
        self.server = server
        self.handler = handler

    @property
    def port(self) -> int:
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self, timeout_s: float) -> int:
        """Stop accepting, wait up to ``timeout_s`` for open sessions, then drop them.

        Returns how many sessions were still open at the deadline. A session
        dropped before its 250 is retried by the sending server, so no mail
        is lost.
        """
        self.server.close()
        deadline = asyncio.get_running_loop().time() + timeout_s
        while self.handler.sessions and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        left = list(self.handler.sessions)
        for session in left:
            if session.transport is not None:
                session.transport.close()
        await self.server.wait_closed()
        return len(left)


async def start_listener(
    config: Config,
    store: Store,
    on_stored: Callable[[], None],
    reuse_port: bool = False,
) -> Listener:
    """Start listening on the configured host and port; port 0 picks a free one.

    ``reuse_port`` sets SO_REUSEPORT, so several processes can share the port.
    """
    listener = config.listener
    handler = IntakeHandler(store, config.service.domain, on_stored, listener)
    tls_context = None
    if listener.tls_cert_file and listener.tls_key_file:
        tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls_context.load_cert_chain(listener.tls_cert_file, listener.tls_key_file)

    # "smtp" for mail clients and MTAs, "lmtp" for a local MTA that delivers
    # through an LMTP transport. getattr keeps configs without the key working.
    protocol = getattr(listener, "protocol", "smtp")
    protocol_class: type[PebSMTP]
    if protocol == "smtp":
        protocol_class, ident = PebSMTP, "peb-mail ESMTP"
    elif protocol == "lmtp":
        # Imported here because peb_mail.lmtp imports PebSMTP from this module.
        from .lmtp import PebLMTP

        protocol_class, ident = PebLMTP, "peb-mail LMTP"
    else:
        raise ConfigError(
            f'listener.protocol must be "smtp" or "lmtp", got {protocol!r}'
        )

    def factory() -> PebSMTP:
        return protocol_class(
            handler,
            hostname=config.service.domain,
            ident=ident,
            data_size_limit=listener.max_message_bytes,
            enable_SMTPUTF8=True,
            decode_data=False,
            timeout=listener.idle_timeout_s,
            command_call_limit=listener.max_commands_per_session,
            tls_context=tls_context,
            require_starttls=listener.require_tls,
            max_sessions=listener.max_sessions,
        )

    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        factory,
        host=config.listener.host,
        port=config.listener.port,
        reuse_port=reuse_port or None,
    )
    return Listener(server, handler)
