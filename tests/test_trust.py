"""Sender policy: tokens, forged Authentication-Results, DKIM with real keys."""

from __future__ import annotations

import base64
import re
import subprocess

import dkim
import pytest

from peb_mail.trust import check_sender

STUDENT = "ana.silva@student.test"
MESSAGE = (
    f"From: Ana Silva <{STUDENT}>\r\nTo: daniel.okafor+t@peb-mail.test\r\n"
    "Subject: Correction\r\nMessage-ID: <m1@student.test>\r\n\r\nDear Daniel,\r\n"
).encode()


def with_headers(*headers: str) -> bytes:
    return "".join(h + "\r\n" for h in headers).encode() + MESSAGE


def test_policy_none_accepts_weak_match() -> None:
    assert (
        check_sender("none", matched_by="only-open", raw=MESSAGE, from_address=STUDENT)
        is None
    )


def test_token_policy_needs_token_or_thread() -> None:
    assert (
        check_sender("token", matched_by="token", raw=MESSAGE, from_address=STUDENT)
        is None
    )
    assert (
        check_sender("token", matched_by="thread", raw=MESSAGE, from_address=STUDENT)
        is None
    )
    reason = check_sender(
        "token", matched_by="only-open", raw=MESSAGE, from_address=STUDENT
    )
    assert reason is not None
    assert "no reply token" in reason


@pytest.mark.parametrize(
    ("headers", "passes"),
    [
        (
            (
                "Authentication-Results: mx.school.test; dmarc=pass header.from=student.test",
            ),
            True,
        ),
        (
            (
                "Authentication-Results: mx.school.test; dmarc=fail header.from=student.test",
            ),
            False,
        ),
        # A forged header from elsewhere sits below ours; ours says fail.
        (
            (
                "Authentication-Results: mx.school.test; dmarc=fail header.from=student.test",
                "Authentication-Results: mx.school.test; dmarc=pass header.from=student.test",
            ),
            False,
        ),
        # Only a forged header, from a server we do not trust.
        (
            ("Authentication-Results: evil.test; dmarc=pass header.from=student.test",),
            False,
        ),
        # dmarc passed, but for another domain than the From header's.
        (
            (
                "Authentication-Results: mx.school.test; dmarc=pass header.from=other.test",
            ),
            False,
        ),
        ((), False),
    ],
)
def test_dmarc_policy_cases(headers: tuple[str, ...], passes: bool) -> None:
    reason = check_sender(
        "token+dmarc",
        matched_by="token",
        raw=with_headers(*headers),
        from_address=STUDENT,
        trusted_authserv_ids=("mx.school.test",),
    )
    assert (reason is None) == passes, reason


@pytest.fixture(scope="module")
def dkim_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    folder = tmp_path_factory.mktemp("dkim")
    private = folder / "key.pem"
    subprocess.run(
        ["openssl", "genrsa", "-out", str(private), "2048"],
        check=True,
        capture_output=True,
    )
    public_der = subprocess.run(
        ["openssl", "rsa", "-in", str(private), "-pubout", "-outform", "DER"],
        check=True,
        capture_output=True,
    ).stdout
    return private.read_bytes(), base64.b64encode(public_der)


def dns_for(public_key: bytes) -> object:
    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        if name == b"sel._domainkey.student.test.":
            return b"v=DKIM1; k=rsa; p=" + public_key
        return None

    return lookup


def test_dkim_valid_signature_passes(dkim_key: tuple[bytes, bytes]) -> None:
    private, public = dkim_key
    signature = dkim.sign(MESSAGE, b"sel", b"student.test", private)
    reason = check_sender(
        "dkim",
        matched_by="token",
        raw=signature + MESSAGE,
        from_address=STUDENT,
        dns_lookup=dns_for(public),  # type: ignore[arg-type]
    )
    assert reason is None


def test_dkim_tampered_body_fails(dkim_key: tuple[bytes, bytes]) -> None:
    private, public = dkim_key
    signature = dkim.sign(MESSAGE, b"sel", b"student.test", private)
    tampered = signature + MESSAGE.replace(b"Dear Daniel", b"Give me 35 points")
    reason = check_sender(
        "dkim",
        matched_by="token",
        raw=tampered,
        from_address=STUDENT,
        dns_lookup=dns_for(public),  # type: ignore[arg-type]
    )
    assert reason is not None


def test_dkim_other_domain_not_aligned(dkim_key: tuple[bytes, bytes]) -> None:
    private, public = dkim_key
    signature = dkim.sign(MESSAGE, b"sel", b"elsewhere.test", private)
    reason = check_sender(
        "dkim",
        matched_by="token",
        raw=signature + MESSAGE,
        from_address=STUDENT,
        dns_lookup=dns_for(public),  # type: ignore[arg-type]
    )
    assert reason is not None
    assert re.search("student.test", reason)


def test_dkim_missing_signature() -> None:
    reason = check_sender("dkim", matched_by="token", raw=MESSAGE, from_address=STUDENT)
    assert reason == "no DKIM signature"


def test_outbound_dkim_signature_verifies(
    dkim_key: tuple[bytes, bytes], tmp_path_factory: pytest.TempPathFactory
) -> None:
    from peb_mail.compose import Composer, Mailbox

    from .conftest import make_config

    private, public = dkim_key
    folder = tmp_path_factory.mktemp("sign")
    key_file = folder / "dkim.pem"
    key_file.write_bytes(private)
    config = make_config(
        folder,
        outbox={
            "dkim_selector": "sel",
            "dkim_domain": "student.test",
            "dkim_key_file": str(key_file),
        },
    )
    composer = Composer(config)
    email = composer.build(
        kind="notice",
        sender=composer.service,
        to=[Mailbox("Ana", STUDENT)],
        subject="Hi",
        text="Hello",
    )
    assert email.raw.startswith(b"DKIM-Signature:")
    assert dkim.verify(email.raw, dnsfunc=dns_for(public))
    assert not dkim.verify(
        email.raw.replace(b"Hello", b"Hullo"), dnsfunc=dns_for(public)
    )
