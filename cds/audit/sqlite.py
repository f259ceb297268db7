"""SQLite trace store: the embedded default. WAL mode, full fsync on every commit."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from cds.audit.schema import FACETS_TEMPLATE, SCHEMA_TEMPLATE
from cds.audit.sql import SqlTraceStore
from cds.audit.store import missing_store

__all__ = ["SqliteTraceStore"]

log = logging.getLogger("cds.audit")
T = TypeVar("T")
#: tries of a write that SQLite refused as busy (see :func:`_again_if_busy`)
BUSY_TRIES = 3

_SCHEMA = SCHEMA_TEMPLATE.format(int="INTEGER", real="REAL")
_FACETS = FACETS_TEMPLATE.format(int="INTEGER")

_REPLAY_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS jti_seen (key TEXT PRIMARY KEY, expires_at REAL NOT NULL)"
)
_CLAIM = (
    "INSERT INTO jti_seen (key, expires_at) VALUES (?, ?) ON CONFLICT (key) DO UPDATE "
    "SET expires_at = excluded.expires_at WHERE jti_seen.expires_at < ?"
)


def _connect(path: str, synchronous: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    return db


def _again_if_busy(write: Callable[[], T]) -> T:
    """Run ``write``, and run it again (up to :data:`BUSY_TRIES` in all) when SQLite
    refuses it as busy, as it rarely did with several worker processes (cause not
    found). Nothing was written: a refused BEGIN starts nothing, and a refused
    COMMIT is rolled back."""
    attempt = 1
    while True:
        try:
            return write()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == BUSY_TRIES:
                raise
            log.warning("SQLite refused a write as busy (%s); trying again", exc)
            time.sleep(0.005 * attempt)
            attempt += 1


def _require_existing(path: str) -> None:
    url = f"sqlite:///{path}"
    if path == ":memory:" or not Path(path).is_file():
        raise missing_store(url, f"the file {Path(path).resolve()} does not exist")
    try:
        db = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True)
        try:
            found = db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'records'"
            ).fetchone()
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        raise missing_store(url, f"the file is not a SQLite database: {exc}") from None
    if found is None:
        raise missing_store(url, "the file holds no trace tables")


class SqliteTraceStore(SqlTraceStore):
    def __init__(self, path: str, *, create: bool = True, migrate: bool = False) -> None:
        """``create=False``: the store must exist; it is migrated only with ``migrate``,
        else an older schema is refused (the reading commands change nothing)."""
        super().__init__()
        if not create:
            _require_existing(path)
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            # traces hold patient data: owner-only; SQLite gives -wal and -shm the same mode
            os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
        self.path = path
        self._db = _connect(path, "FULL")
        self.MAX_PARAMS = self._db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        if create or migrate:
            self._db.executescript(_SCHEMA + _FACETS)
            with self._write() as cur:
                self._migrate(cur)
        else:
            self._check_version(f"sqlite:///{path}")
        self._jti: sqlite3.Connection | None = self._db if path == ":memory:" else None
        self._jti_lock = threading.Lock() if self._jti is None else self._lock
        self._claims = 0

    @contextmanager
    def _write(self) -> Iterator[Any]:
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
                # a COMMIT that fails (SQLITE_BUSY) leaves the transaction open, and
                # every later BEGIN would then fail too: roll it back as well
                cur.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    cur.execute("ROLLBACK")
                raise

    @contextmanager
    def _read(self) -> Iterator[Any]:
        with self._lock:
            yield self._db.cursor()

    def _replay_cache(self) -> sqlite3.Connection:
        """The JWT replay cache: a file of its own beside the traces (``<file>-replay``).

        Not the trace file: there a claim, made on the event loop, would wait for the
        write lock each trace commit holds through its fsync. Its writes need no fsync
        of their own (synchronous=NORMAL); every worker process opens the same file.
        """
        if self._jti is None:
            replay = f"{self.path}-replay"
            os.close(os.open(replay, os.O_CREAT | os.O_RDWR, 0o600))
            self._jti = _connect(replay, "NORMAL")
            self._jti.execute(_REPLAY_SCHEMA)
        return self._jti

    def _retrying(self, transaction: Callable[[], T]) -> T:
        return _again_if_busy(transaction)

    def _claim(self, key: str, expires_at: float, now: float) -> bool:
        return _again_if_busy(lambda: self._claim_once(key, expires_at, now))

    def _claim_once(self, key: str, expires_at: float, now: float) -> bool:
        with self._jti_lock:
            cache = self._replay_cache()
            self._claims += 1
            if self._claims % 1000 == 0:
                cache.execute("DELETE FROM jti_seen WHERE expires_at < ?", (now,))
            return cache.execute(_CLAIM, (key, expires_at, now)).rowcount == 1

    def close(self) -> None:
        with self._lock:
            if self._jti is not None and self._jti is not self._db:
                self._jti.close()
            self._db.close()
