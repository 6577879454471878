"""Password hashing with scrypt (memory-hard), a per-user salt and a constant-time compare.

The stored form is self-describing, ``scrypt$n$r$p$salt$hash`` (base64), so the cost can be
raised later without invalidating existing hashes: a hash is verified with its own cost.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from server.auth.errors import AuthError

SCHEME = "scrypt"
MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@dataclass(frozen=True)
class PasswordHasher:
    """scrypt parameters; the defaults (n=2**14, r=8, p=1) take 16 MiB and ~0.1 s per hash."""

    n: int = 2**14
    r: int = 8
    p: int = 1
    salt_bytes: int = 16
    key_bytes: int = 32

    def _derive(self, password: str, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
        maxmem = 256 * n * r + 2**20  # scrypt needs 128*n*r bytes; the default cap is 32 MiB
        return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=maxmem, dklen=dklen)

    def hash(self, password: str) -> str:
        check_password_policy(password)
        salt = secrets.token_bytes(self.salt_bytes)
        key = self._derive(password, salt, self.n, self.r, self.p, self.key_bytes)
        return f"{SCHEME}${self.n}${self.r}${self.p}${_b64(salt)}${_b64(key)}"

    def verify(self, password: str, stored: str) -> bool:
        """False for a wrong password or an unreadable hash; never raises on bad input."""
        try:
            scheme, n, r, p, salt_b64, key_b64 = stored.split("$")
            if scheme != SCHEME:
                return False
            salt, key = base64.b64decode(salt_b64), base64.b64decode(key_b64)
            if len(password) > MAX_PASSWORD_LENGTH:
                return False
            candidate = self._derive(password, salt, int(n), int(r), int(p), len(key))
        except (ValueError, TypeError):
            return False
        return hmac.compare_digest(candidate, key)

    def dummy_verify(self, password: str) -> None:
        """Spend the time of one verification: a login for an unknown user must not be faster."""
        self.verify(password, _dummy_hash(self))


_DUMMIES: dict[PasswordHasher, str] = {}


def _dummy_hash(hasher: PasswordHasher) -> str:
    if hasher not in _DUMMIES:
        _DUMMIES[hasher] = hasher.hash(secrets.token_urlsafe(16))
    return _DUMMIES[hasher]


def check_password_policy(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AuthError(f"password too short: at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise AuthError(f"password too long: at most {MAX_PASSWORD_LENGTH} characters")
