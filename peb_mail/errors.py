"""Exceptions raised by peb-mail.

The tree, split by what the caller should do::

    PebMailError
    ├── ConfigError            bad config.toml, roster or scenario file: fix the input
    ├── NotFoundError          unknown student, attempt, scenario or outbox id
    ├── ListenError            the SMTP listener cannot bind its address
    ├── GradingError           no usable verdict; the job may be tried again
    │   └── TemporaryGradingError   model busy, rate-limited or timed out
    └── DeliveryError          outbound mail failed
        ├── TemporaryDeliveryError  4xx reply, refused connection, timeout
        └── PermanentDeliveryError  5xx reply: the email is marked dead
"""

from __future__ import annotations


class PebMailError(Exception):
    """Base class of every error peb-mail raises on purpose."""


class ConfigError(PebMailError):
    """Invalid configuration, roster row or scenario file."""


class NotFoundError(PebMailError):
    """A named record does not exist."""


class ListenError(PebMailError):
    """The listener could not bind its host and port."""


class GradingError(PebMailError):
    """The grader could not produce a complete, valid verdict."""


class TemporaryGradingError(GradingError):
    """The model provider failed in a way that may pass (429, 5xx, timeout).

    ``retry_after_s`` is the wait in seconds the provider asked for, when known.
    """

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeliveryError(PebMailError):
    """Sending one outbound email failed."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class TemporaryDeliveryError(DeliveryError):
    """Delivery may succeed later."""


class PermanentDeliveryError(DeliveryError):
    """Delivery will never succeed as addressed."""
