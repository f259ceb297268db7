"""Brute-force protection for the trace viewer's login.

Failed logins are counted per user name and per client address within a
sliding window; past either limit every attempt is refused (even with the
right password) until the window has passed, and the refusal says when to try
again. Counts live in the process; several workers each keep their own.
"""

from __future__ import annotations

import threading
import time
from collections import deque

__all__ = ["LoginThrottle"]


class LoginThrottle:
    def __init__(self, per_user: int, per_address: int, window_s: float) -> None:
        self._limits = {"user": per_user, "address": per_address}
        self._window = window_s
        self._failures: dict[tuple[str, str], deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        times = self._failures.setdefault(key, deque())
        while times and times[0] <= now - self._window:
            times.popleft()
        return times

    def retry_after(self, user: str, address: str) -> float:
        """Seconds until ``user`` may try again from ``address`` (0: now)."""
        now = time.monotonic()
        wait = 0.0
        with self._lock:
            for kind, value in (("user", user), ("address", address)):
                times = self._recent((kind, value), now)
                if len(times) >= self._limits[kind]:
                    wait = max(wait, times[0] + self._window - now)
        return wait

    def failed(self, user: str, address: str) -> None:
        now = time.monotonic()
        with self._lock:
            for key in (("user", user), ("address", address)):
                self._recent(key, now).append(now)

    def succeeded(self, user: str) -> None:
        with self._lock:
            self._failures.pop(("user", user), None)
