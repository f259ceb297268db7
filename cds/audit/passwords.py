"""Passwords and sessions for the trace viewer (its own credentials, not CDS JWTs)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time
from dataclasses import dataclass

__all__ = ["DUMMY_HASH", "Session", "SessionSigner", "hash_password", "verify_password"]

ITERATIONS = 240_000


def hash_password(password: str, *, iterations: int = ITERATIONS) -> str:
    salt = os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return f"pbkdf2_sha256${iterations}${salt.hex()}${digest.hex()}"


#: checked against when the user name is unknown, so both cases take the same time
DUMMY_HASH = f"pbkdf2_sha256${ITERATIONS}${'00' * 16}${'00' * 32}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, iterations, salt, digest = stored.split("$")
        if scheme != "pbkdf2_sha256":
            return False
        candidate = hashlib.pbkdf2_hmac(
            "sha256", password.encode(), bytes.fromhex(salt), int(iterations)
        )
    except ValueError:
        return False
    return hmac.compare_digest(candidate.hex(), digest)


@dataclass(frozen=True)
class Session:
    user: str
    #: the user's session version when it was issued: a logout bumps it server-side
    version: int


class SessionSigner:
    """Signed, expiring session cookies: ``user|version|expiry|mac``.

    The signature proves the cookie was issued here; whether it is still valid is
    decided server-side (the user exists, and the version is the current one).
    """

    def __init__(self, secret: bytes, minutes: int) -> None:
        self._secret = secret
        self._seconds = minutes * 60

    def mac(self, payload: str) -> str:
        return hmac.new(self._secret, payload.encode(), hashlib.sha256).hexdigest()

    def issue(self, user: str, version: int) -> str:
        payload = f"{user}|{version}|{int(time.time()) + self._seconds}"
        return base64.urlsafe_b64encode(f"{payload}|{self.mac(payload)}".encode()).decode()

    def session(self, cookie: str | None) -> Session | None:
        if not cookie:
            return None
        try:
            user, version, expiry, mac = (
                base64.urlsafe_b64decode(cookie.encode()).decode().split("|")
            )
            if not hmac.compare_digest(mac, self.mac(f"{user}|{version}|{expiry}")):
                return None
            if int(expiry) <= time.time():
                return None
            return Session(user, int(version))
        except (ValueError, UnicodeDecodeError):
            return None
