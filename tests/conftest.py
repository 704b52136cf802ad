"""Shared test parts: a config on temporary files, and an SMTP sink on loopback."""

from __future__ import annotations

import asyncio
import email
import email.policy
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from peb_mail.config import Config, config_from_dict

REPO = Path(__file__).resolve().parent.parent
DOMAIN = "peb-mail.test"
SERVICE = f"practice@{DOMAIN}"
STUDENT = "ana.silva@student.test"
INSTRUCTOR = "teacher@school.test"


def make_config(tmp_path: Path, **sections: dict[str, Any]) -> Config:
    """Build a config whose files live under ``tmp_path`` and whose listener uses port 0."""
    data: dict[str, Any] = {
        "service": {
            "domain": DOMAIN,
            "data_dir": str(tmp_path / "data"),
            "database": str(tmp_path / "data" / "peb.sqlite3"),
            "scenarios_dir": str(REPO / "scenarios"),
            "prompts_dir": str(REPO / "prompts"),
        },
        "listener": {"host": "127.0.0.1", "port": 0},
        "queue": {"workers": 1, "poll_interval_s": 0.05, "backoff_base_s": 0.1},
        "outbox": {
            "transport": "maildir",
            "maildir": str(tmp_path / "sent"),
            "poll_interval_s": 0.05,
        },
        "cohorts": {"demo": {"instructors": [INSTRUCTOR]}},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return config_from_dict(data, base_dir=tmp_path)


@dataclass
class Received:
    """One message the sink accepted."""

    mail_from: str
    rcpt_tos: list[str]
    raw: bytes

    @property
    def message(self) -> EmailMessage:
        parsed = email.message_from_bytes(self.raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class Sink:
    """An aiosmtpd server on loopback that records every message it accepts."""

    port: int = 0
    received: list[Received] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle_DATA(
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        raw = envelope.original_content or b""
        self.received.append(
            Received(envelope.mail_from or "", list(envelope.rcpt_tos), bytes(raw))
        )
        self.changed.set()
        return "250 OK"

    async def wait_for(
        self, predicate: Callable[[list[Received]], bool], timeout_s: float = 15.0
    ) -> list[Received]:
        deadline = time.monotonic() + timeout_s
        while not predicate(self.received):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                kinds = [item.message["Subject"] for item in self.received]
                raise AssertionError(f"sink timed out; received subjects: {kinds}")
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), min(remaining, 0.2))
            except TimeoutError:
                pass
        return self.received

    def to(self, address: str) -> list[Received]:
        return [item for item in self.received if address in item.rcpt_tos]


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    recorder = Sink()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(recorder, hostname="sink.test"), host="127.0.0.1", port=0
    )
    recorder.port = server.sockets[0].getsockname()[1]
    yield recorder
    server.close()
    await server.wait_closed()


def smtp_outbox(sink: Sink) -> dict[str, Any]:
    return {
        "transport": "smtp",
        "smarthost_host": "127.0.0.1",
        "smarthost_port": sink.port,
        "poll_interval_s": 0.05,
        "backoff_base_s": 0.1,
        "timeout_s": 5,
    }


def address_in(text: str) -> str:
    """Return the first token address (name+TOKEN@domain) found in an email's text."""
    import re

    match = re.search(r"[a-z0-9._-]+\+[a-z0-9]+@" + re.escape(DOMAIN), text)
    assert match, f"no token address in: {text[:300]!r}"
    return match.group(0)
