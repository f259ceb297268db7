"""SQLite trace store: the embedded default. WAL mode, full fsync on every commit."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cds.audit.sql import SqlTraceStore

__all__ = ["SqliteTraceStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    trace_id TEXT NOT NULL,
    hook_instance TEXT,
    patient TEXT,
    recorded_at TEXT NOT NULL,
    body TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_hook_instance ON records(hook_instance);
CREATE INDEX IF NOT EXISTS records_trace_id ON records(trace_id);
CREATE INDEX IF NOT EXISTS records_patient ON records(patient);
CREATE INDEX IF NOT EXISTS records_recorded_at ON records(recorded_at);
CREATE TABLE IF NOT EXISTS card_index (card_uuid TEXT PRIMARY KEY, trace_id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS feedback_keys (key TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS jti_seen (key TEXT PRIMARY KEY, expires_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoints (
    seq INTEGER NOT NULL, hash TEXT NOT NULL, signed_at TEXT NOT NULL,
    key_id TEXT NOT NULL, signature TEXT NOT NULL
);
"""

_CLAIM = (
    "INSERT INTO jti_seen (key, expires_at) VALUES (?, ?) ON CONFLICT (key) DO UPDATE "
    "SET expires_at = excluded.expires_at WHERE jti_seen.expires_at < ?"
)


def _connect(path: str, synchronous: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    return db


class SqliteTraceStore(SqlTraceStore):
    def __init__(self, path: str) -> None:
        super().__init__()
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = _connect(path, "FULL")
        self._db.executescript(_SCHEMA)
        # replay-cache writes need no fsync of their own: a second connection
        # with synchronous=NORMAL keeps them off the durable trace path
        self._jti = self._db if path == ":memory:" else _connect(path, "NORMAL")
        self._jti_lock = threading.Lock() if self._jti is not self._db else self._lock
        self._claims = 0

    @contextmanager
    def _write(self) -> Iterator[Any]:
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")

    @contextmanager
    def _read(self) -> Iterator[Any]:
        with self._lock:
            yield self._db.cursor()

    def _claim(self, key: str, expires_at: float, now: float) -> bool:
        with self._jti_lock:
            self._claims += 1
            if self._claims % 1000 == 0:
                self._jti.execute("DELETE FROM jti_seen WHERE expires_at < ?", (now,))
            return self._jti.execute(_CLAIM, (key, expires_at, now)).rowcount == 1

    def close(self) -> None:
        with self._lock:
            if self._jti is not self._db:
                self._jti.close()
            self._db.close()
