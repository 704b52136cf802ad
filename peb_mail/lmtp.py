"""LMTP (RFC 2033) for a mail server such as Postfix or Exim that delivers to us.

LMTP differs from SMTP in two ways that matter here. The client greets with
LHLO, and EHLO and HELO are rejected. After the final dot of DATA, the server
sends one reply per recipient it accepted at RCPT, in RCPT order, so a
recipient rejected at RCPT gets no reply after DATA.

peb-mail stores each message once, as one row with all its recipients, so a
single commit decides every recipient's reply: all get 250 once the row is
committed, or all get the same 451 when storing failed.
"""

from __future__ import annotations

import enum
from typing import Any, AnyStr

from aiosmtpd.lmtp import LMTP

from .listener import PebSMTP


class _DataStage(enum.Enum):
    # DATA was received but the 354 go-ahead has not been sent yet, so a
    # reply now is an error about the command itself and is sent once.
    COMMAND = enum.auto()
    # The 354 was sent, so the next reply is the message's result and is sent
    # once per accepted recipient.
    CONTENT = enum.auto()


class PebLMTP(PebSMTP, LMTP):
    """PebSMTP that speaks LMTP.

    The MRO puts PebSMTP first, so the extra MAIL and RCPT parameters, the
    session limit and the session tracking work as in SMTP mode. aiosmtpd's
    LMTP class supplies LHLO and rejects EHLO and HELO with 500. This class
    adds the per-recipient replies after DATA, which aiosmtpd 1.4 does not
    implement.
    """

    # NOTE: RFC 2033 section 5 requires LMTP servers to implement PIPELINING
    # and ENHANCEDSTATUSCODES. aiosmtpd handles pipelined commands but does
    # not advertise PIPELINING, and its own error replies ("503 Error: need
    # RCPT command") carry no enhanced status code, so neither is advertised.
    # Clients such as Postfix then send one command at a time.

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._data_stage: _DataStage | None = None
        self._data_recipients = 0

    async def check_helo_needed(self, helo: str = "LHLO") -> bool:
        # aiosmtpd's 503 reply names HELO, which LMTP rejects, so name LHLO.
        return await super().check_helo_needed("LHLO")

    async def smtp_DATA(self, arg: str) -> None:
        # aiosmtpd resets the envelope before it sends the final reply, so the
        # recipient count is taken now. It only counts recipients that RCPT
        # accepted, because IntakeHandler.handle_RCPT appends only those.
        envelope = self.envelope
        self._data_recipients = len(envelope.rcpt_tos) if envelope else 0
        self._data_stage = _DataStage.COMMAND
        try:
            await super().smtp_DATA(arg)
        finally:
            self._data_stage = None
            self._data_recipients = 0

    async def push(self, status: AnyStr) -> None:
        """Send a reply, once per accepted recipient if it ends DATA content.

        aiosmtpd's smtp_DATA sends exactly one reply after the content: the
        handler's status, 552 when the message is over the size limit, or 500
        for an over-long line. Each of those applies to every recipient.
        """
        stage = self._data_stage
        if stage is None:
            await super().push(status)
            return
        is_go_ahead = _reply_code(status) == "354"
        if stage is _DataStage.COMMAND:
            # 354 moves on to the content. Any other reply (503 need RCPT,
            # 501 syntax, 530 STARTTLS first) ends the DATA command at once.
            self._data_stage = _DataStage.CONTENT if is_go_ahead else None
            await super().push(status)
            return
        self._data_stage = None
        for _ in range(max(1, self._data_recipients)):
            await super().push(status)


def _reply_code(status: str | bytes) -> str:
    if isinstance(status, bytes):
        return status[:3].decode("ascii", errors="replace")
    return status[:3]
