"""Passwords and sessions for the trace viewer (its own credentials, not CDS JWTs)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time

__all__ = ["SessionSigner", "hash_password", "verify_password"]

ITERATIONS = 240_000


def hash_password(password: str, *, iterations: int = ITERATIONS) -> str:
    salt = os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return f"pbkdf2_sha256${iterations}${salt.hex()}${digest.hex()}"


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


class SessionSigner:
    """Signed, expiring session cookies: ``user|expiry|mac``."""

    def __init__(self, secret: bytes, minutes: int) -> None:
        self._secret = secret
        self._seconds = minutes * 60

    def _mac(self, payload: str) -> str:
        return hmac.new(self._secret, payload.encode(), hashlib.sha256).hexdigest()

    def issue(self, user: str) -> str:
        payload = f"{user}|{int(time.time()) + self._seconds}"
        return base64.urlsafe_b64encode(f"{payload}|{self._mac(payload)}".encode()).decode()

    def user(self, cookie: str | None) -> str | None:
        if not cookie:
            return None
        try:
            user, expiry, mac = base64.urlsafe_b64decode(cookie.encode()).decode().split("|")
        except (ValueError, UnicodeDecodeError):
            return None
        if not hmac.compare_digest(mac, self._mac(f"{user}|{expiry}")):
            return None
        return user if int(expiry) > time.time() else None
