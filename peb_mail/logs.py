"""Configure logging once for the CLI and the service."""

from __future__ import annotations

import logging
import sys


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # aiosmtpd logs every SMTP command at INFO under "mail.log"; that is DEBUG
    # detail for us, and it would put addresses in the log for every message.
    logging.getLogger("mail.log").setLevel(max(level, logging.WARNING))
    logging.getLogger("LiteLLM").setLevel(max(level, logging.WARNING))
