"""The SMTP listener: accept mail for our domain and commit it before replying 250.

The handler stores the raw bytes as received; everything else (parsing,
matching, grading) happens later from the database, so the SMTP reply depends
only on the commit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from .config import Config
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

    def __init__(self, handler: IntakeHandler, *args: Any, **kwargs: Any) -> None:
        super().__init__(handler, *args, **kwargs)
        self.sessions = handler.sessions

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.sessions.add(self)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        self.sessions.discard(self)
        super().connection_lost(error)

    def _getparams(self, params: Sequence[str]) -> dict[str, str | bool] | None:
        result = super()._getparams(params)
        if result is not None:
            for name in _IGNORED_PARAMETERS:
                result.pop(name, None)
        return result


class IntakeHandler:
    """aiosmtpd handler: check recipients, store the message, reply."""

    def __init__(
        self, store: Store, domain: str, on_stored: Callable[[], None]
    ) -> None:
        self.store = store
        self.domain = domain.lower()
        self.on_stored = on_stored
        # Open SMTP sessions, so a stop can wait for them to finish.
        self.sessions: set[PebSMTP] = set()

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        _, _, domain = address.rpartition("@")
        if domain.lower() != self.domain:
            # Never an open relay: only our own domain is accepted.
            return f"550 5.7.1 <{address}>: relay not permitted, this server only accepts mail for {self.domain}"
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
        self.on_stored()
        return f"250 2.0.0 OK: queued as {inbound_id}"


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
    config: Config, store: Store, on_stored: Callable[[], None]
) -> Listener:
    """Start listening on the configured host and port; port 0 picks a free one."""
    handler = IntakeHandler(store, config.service.domain, on_stored)

    def factory() -> PebSMTP:
        return PebSMTP(
            handler,
            hostname=config.service.domain,
            ident="peb-mail ESMTP",
            data_size_limit=config.listener.max_message_bytes,
            enable_SMTPUTF8=True,
            decode_data=False,
        )

    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        factory, host=config.listener.host, port=config.listener.port
    )
    return Listener(server, handler)
