"""The listener's Message-ID scan: the same result as the email package, faster."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path

import pytest

from peb_mail.message import header_message_id, parse_message_ids

# Real emails copied from public test suites, with their licences.
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def parser_message_id(raw: bytes) -> str | None:
    """Return the first Message-ID as the full email parser reads it."""
    parsed = email.message_from_bytes(raw, policy=email.policy.compat32)
    ids = parse_message_ids(str(parsed.get("Message-ID", "")))
    return ids[0] if ids else None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"From: a@x.test\r\nMessage-ID: <one@x.test>\r\n\r\nbody\r\n", "one@x.test"),
        (b"message-id:<low@x.test>\n\nbody\n", "low@x.test"),
        (b"Message-ID:\r\n <folded@x.test>\r\nSubject: s\r\n\r\n", "folded@x.test"),
        (
            b"Message-ID: <first@x.test>\r\nMessage-ID: <second@x.test>\r\n\r\n",
            "first@x.test",
        ),
        (b"Subject: s\r\n\r\nMessage-ID: <in-body@x.test>\r\n", None),
        (b"\r\nMessage-ID: <after-blank@x.test>\r\n\r\n", None),
        (b"Subject: s\r\nnot a header\r\nMessage-ID: <late@x.test>\r\n\r\n", None),
        (b"Message-ID: bare@x.test\r\n\r\n", "bare@x.test"),
        (b"Subject: no id\r\n\r\n", None),
        (b"", None),
    ],
)
def test_message_id_cases(raw: bytes, expected: str | None) -> None:
    assert header_message_id(raw) == expected
    assert parser_message_id(raw) == expected


def test_message_id_matches_parser_on_fixtures() -> None:
    files = sorted(
        path
        for path in FIXTURES.rglob("*")
        if path.is_file()
        and path.suffix in ("", ".eml")
        and not path.name.startswith(("LICENSE", "COPYING"))
    )
    different = [
        path.name
        for path in files
        if header_message_id(path.read_bytes()) != parser_message_id(path.read_bytes())
    ]
    assert len(files) > 60
    assert different == []
