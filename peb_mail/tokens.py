"""Reply tokens: HMACs that bind an address such as ``reply+TOKEN@domain`` to
one student and one attempt.

The secret comes from ``$PEB_MAIL_SECRET`` or from ``service.secret_file``
(created on first use, readable by the owner only). Either may hold several
keys, one per line or comma-separated: the first signs new tokens and every
key verifies, so a key can be rotated without breaking open attempts.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path

from .errors import ConfigError

SECRET_ENV = "PEB_MAIL_SECRET"
# 10 bytes of the HMAC: 80 bits, 16 base32 characters in the address.
TOKEN_BYTES = 10
MIN_KEY_CHARS = 32


class TokenSigner:
    """Make and check attempt tokens with a ring of keys."""

    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise ConfigError("no token key configured")
        self.keys = keys

    def token(self, student_id: int, attempt_id: int) -> str:
        return _sign(self.keys[0], student_id, attempt_id)

    def review_token(self, attempt_id: int) -> str:
        """Token for the address instructors reply to with grade overrides."""
        return _sign_text(self.keys[0], f"peb-mail review token:{attempt_id}")

    def verify_review(self, token: str, attempt_id: int) -> bool:
        token = token.lower()
        return any(
            hmac.compare_digest(
                _sign_text(key, f"peb-mail review token:{attempt_id}"), token
            )
            for key in self.keys
        )

    def verify(self, token: str, student_id: int, attempt_id: int) -> bool:
        """True when ``token`` was made by any key for this student and attempt."""
        token = token.lower()
        return any(
            hmac.compare_digest(_sign(key, student_id, attempt_id), token)
            for key in self.keys
        )


def _sign(key: bytes, student_id: int, attempt_id: int) -> str:
    return _sign_text(key, f"peb-mail attempt token:{student_id}:{attempt_id}")


def _sign_text(key: bytes, text: str) -> str:
    digest = hmac.new(key, text.encode(), hashlib.sha256).digest()[:TOKEN_BYTES]
    return base64.b32encode(digest).decode("ascii").lower()


def load_signer(secret_file: Path) -> TokenSigner:
    """Read the keys from the environment or the secret file, creating the file if needed."""
    from_env = os.environ.get(SECRET_ENV, "")
    if from_env.strip():
        return TokenSigner(_parse_keys(from_env, SECRET_ENV))
    if not secret_file.exists():
        _create_secret_file(secret_file)
    mode = secret_file.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"{secret_file} can be read by other users (mode {oct(mode & 0o777)}); "
            f"run: chmod 600 {secret_file}"
        )
    return TokenSigner(
        _parse_keys(secret_file.read_text(encoding="utf-8"), str(secret_file))
    )


def _parse_keys(text: str, where: str) -> list[bytes]:
    keys = [
        part.strip() for part in text.replace(",", "\n").splitlines() if part.strip()
    ]
    for key in keys:
        if len(key) < MIN_KEY_CHARS:
            raise ConfigError(
                f"{where}: each key must be at least {MIN_KEY_CHARS} characters, "
                f"got one of {len(key)}; generate one with: "
                "python -c 'import secrets; print(secrets.token_hex(32))'"
            )
    if not keys:
        raise ConfigError(f"{where}: no key found")
    return [key.encode("utf-8") for key in keys]


def _create_secret_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_EXCL: never overwrite a key another process created a moment ago.
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(secrets.token_hex(32) + "\n")
