"""Reply tokens: HMAC binding, key rotation, secret file handling."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from peb_mail.errors import ConfigError
from peb_mail.store import Store
from peb_mail.tokens import SECRET_ENV, TokenSigner, load_signer

KEY_A = b"a" * 64
KEY_B = b"b" * 64


def test_token_verifies_for_its_attempt() -> None:
    signer = TokenSigner([KEY_A])
    token = signer.token(7, 42)
    assert len(token) == 16
    assert token.isalnum()
    assert signer.verify(token, 7, 42)
    assert signer.verify(token.upper(), 7, 42)


def test_token_rejected_for_other_binding() -> None:
    signer = TokenSigner([KEY_A])
    token = signer.token(7, 42)
    assert not signer.verify(token, 8, 42)
    assert not signer.verify(token, 7, 43)
    assert not signer.verify("a" * 16, 7, 42)


def test_rotation_keeps_old_tokens_valid() -> None:
    old_token = TokenSigner([KEY_A]).token(1, 2)
    rotated = TokenSigner([KEY_B, KEY_A])
    assert rotated.verify(old_token, 1, 2)
    assert rotated.token(1, 2) != old_token
    assert not TokenSigner([KEY_B]).verify(old_token, 1, 2)


def test_secret_file_created_owner_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)
    path = tmp_path / "var" / "secret.key"
    first = load_signer(path)
    mode = stat.S_IMODE(path.stat().st_mode)
    assert mode == 0o600
    assert load_signer(path).token(1, 1) == first.token(1, 1)


def test_readable_secret_file_rejected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)
    path = tmp_path / "secret.key"
    path.write_text("k" * 64)
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError) as failed:
        load_signer(path)
    assert "chmod 600" in str(failed.value)


def test_environment_secret_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV, "x" * 40 + "," + "y" * 40)
    signer = load_signer(tmp_path / "never-created.key")
    assert not (tmp_path / "never-created.key").exists()
    assert signer.verify(TokenSigner([b"y" * 40]).token(3, 4), 3, 4)


def test_short_key_rejected(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(SECRET_ENV, "short")
    with pytest.raises(ConfigError) as failed:
        load_signer(tmp_path / "k")
    assert "at least 32 characters" in str(failed.value)


async def test_database_created_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    store = await Store.open(path)
    await store.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
