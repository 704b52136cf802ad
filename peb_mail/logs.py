"""Configure logging once for the CLI and the service.

Every record passes through ``RedactingFilter``: reply tokens are always
masked, and with ``service.redact_addresses`` so are the local parts of email
addresses. Message bodies, prompts and keys are never passed to the logger in
the first place.
"""

from __future__ import annotations

import logging
import re
import sys

# name+TOKEN@domain: the token is a credential for one attempt.
_TOKEN_RE = re.compile(r"\+[a-z0-9]{8,}@", re.I)
_ADDRESS_RE = re.compile(r"([A-Za-z0-9._%+-]+)@([A-Za-z0-9.-]+\.[A-Za-z]{2,})")


class RedactingFilter(logging.Filter):
    """Mask reply tokens, and optionally address local parts, in log messages."""

    def __init__(self, redact_addresses: bool = False) -> None:
        super().__init__()
        self.redact_addresses = redact_addresses

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = _TOKEN_RE.sub("+***@", message)
        if self.redact_addresses:
            cleaned = _ADDRESS_RE.sub(lambda m: f"{m.group(1)[:1]}***@{m.group(2)}", cleaned)
        if cleaned != message:
            record.msg = cleaned
            record.args = None
        return True


def setup_logging(level: int = logging.INFO, redact_addresses: bool = False) -> None:
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for handler in logging.getLogger().handlers:
        for old in [f for f in handler.filters if isinstance(f, RedactingFilter)]:
            handler.removeFilter(old)
        handler.addFilter(RedactingFilter(redact_addresses))
    # aiosmtpd logs every SMTP command at INFO under "mail.log"; that is DEBUG
    # detail for us, and it would put addresses in the log for every message.
    logging.getLogger("mail.log").setLevel(max(level, logging.WARNING))
    # aiosqlite logs every statement with its parameters at DEBUG, which
    # would put message bodies in the log with -v.
    logging.getLogger("aiosqlite").setLevel(max(level, logging.INFO))
    logging.getLogger("LiteLLM").setLevel(max(level, logging.WARNING))
