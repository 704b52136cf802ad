"""Configure logging once for the CLI and the service.

Every record passes through ``RedactingFilter``: reply tokens are always
masked, and with ``service.redact_addresses`` so are the local parts of email
addresses. Message bodies, prompts and keys are never passed to the logger in
the first place.

Two formats go to stderr: ``text``, one readable line per record, and
``json``, one JSON object per line (time, level, logger, message, and
exception when there is one) for journald or a log collector.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime

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
        cleaned = self.clean(message)
        if cleaned != message:
            record.msg = cleaned
            record.args = None
        if record.exc_info and not record.exc_text:
            # The traceback is formatted after filters run, so format it now
            # and clean it; formatters reuse exc_text when it is set.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.clean(record.exc_text)
        return True

    def clean(self, text: str) -> str:
        cleaned = _TOKEN_RE.sub("+***@", text)
        if self.redact_addresses:
            cleaned = _ADDRESS_RE.sub(
                lambda m: f"{m.group(1)[:1]}***@{m.group(2)}", cleaned
            )
        return cleaned


LOG_FORMATS = ("text", "json")
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line.

    Keys: ``time`` (ISO 8601 in UTC, milliseconds), ``level``, ``logger``,
    ``message``, plus ``exception`` and ``stack`` when the record has them.
    Newlines inside values are escaped, so a record never spans two lines.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, str] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False)


def make_formatter(fmt: str) -> logging.Formatter:
    """Build the "text" or "json" formatter, or raise ValueError for other names."""
    if fmt == "text":
        return logging.Formatter(_TEXT_FORMAT)
    if fmt == "json":
        return JsonFormatter()
    raise ValueError(f'log format must be "text" or "json", got {fmt!r}')


def setup_logging(
    level: int = logging.INFO, redact_addresses: bool = False, fmt: str = "text"
) -> None:
    """Send log records to stderr in format ``fmt`` ("text" or "json") with redaction.

    A later call replaces the level, the format and the redaction filter.
    """
    formatter = make_formatter(fmt)
    logging.basicConfig(level=level, stream=sys.stderr)
    root = logging.getLogger()
    # basicConfig does nothing once the root logger has a handler, so a second
    # call (after the config file is read) sets the level and format itself.
    root.setLevel(level)
    for handler in root.handlers:
        handler.setFormatter(formatter)
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
