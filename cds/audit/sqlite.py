"""SQLite trace store: the embedded default. WAL mode, full fsync on commit."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cds.audit.chain import GENESIS, canonical_json, record_hash
from cds.audit.store import StoredRecord

__all__ = ["SqliteTraceStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    trace_id TEXT NOT NULL,
    hook_instance TEXT,
    recorded_at TEXT NOT NULL,
    body TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_hook_instance ON records(hook_instance);
CREATE INDEX IF NOT EXISTS records_trace_id ON records(trace_id);
CREATE TABLE IF NOT EXISTS card_index (card_uuid TEXT PRIMARY KEY, trace_id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS feedback_keys (key TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS jti_seen (key TEXT PRIMARY KEY, expires_at REAL NOT NULL);
"""


_LAST = "SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1"


class SqliteTraceStore:
    def __init__(self, path: str) -> None:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        # replay-cache writes need no fsync of their own: a second connection
        # with synchronous=NORMAL keeps them off the durable trace path
        self._jti = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._jti.execute("PRAGMA synchronous=NORMAL")
        self._jti.execute("PRAGMA busy_timeout=5000")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._jti_lock = threading.Lock()
        self._claims = 0

    def _append_many(
        self,
        rows: list[tuple[str, str, str | None, dict[str, Any]]],
        extra: list[tuple[str, tuple[Any, ...]]],
    ) -> list[StoredRecord]:
        """Append ``(kind, trace_id, hook_instance, body)`` rows in one durable transaction."""
        encoded = [(kind, tid, hi, body, canonical_json(body)) for kind, tid, hi, body in rows]
        now = datetime.now(UTC).isoformat()
        out: list[StoredRecord] = []
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                row = cur.execute(
                    "SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1"
                ).fetchone()
                seq, prev = (row[0], row[1]) if row else (0, GENESIS)
                for kind, tid, hi, body, body_json in encoded:
                    seq += 1
                    digest = record_hash(prev, seq, kind, body_json)
                    cur.execute(
                        "INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (seq, kind, tid, hi, now, body_json, prev, digest),
                    )
                    out.append(StoredRecord(seq, kind, tid, hi, now, body, prev, digest))
                    prev = digest
                for sql, params in extra:
                    cur.execute(sql, params)
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        return out

    def append_traces(self, traces: list[dict[str, Any]]) -> list[StoredRecord]:
        rows = [("trace", t["trace_id"], t.get("hook_instance"), t) for t in traces]
        extra = [
            ("INSERT INTO card_index VALUES (?, ?)", (c["uuid"], t["trace_id"]))
            for t in traces
            for c in t.get("cards", [])
        ]
        return self._append_many(rows, extra)

    def append_trace(self, trace: dict[str, Any]) -> StoredRecord:
        return self.append_traces([trace])[0]

    def append_feedback(self, trace_id: str, key: str, feedback: dict[str, Any]) -> bool:
        with self._lock:
            seen = self._db.execute("SELECT 1 FROM feedback_keys WHERE key = ?", (key,)).fetchone()
        if seen:
            return False
        hook_instance = self._hook_instance_of(trace_id)
        try:
            self._append_many(
                [("feedback", trace_id, hook_instance, feedback)],
                [("INSERT INTO feedback_keys VALUES (?)", (key,))],
            )
        except sqlite3.IntegrityError:
            return False  # a concurrent duplicate won the race
        return True

    def _hook_instance_of(self, trace_id: str) -> str | None:
        with self._lock:
            row = self._db.execute(
                "SELECT hook_instance FROM records WHERE trace_id = ? AND kind = 'trace'",
                (trace_id,),
            ).fetchone()
        return row[0] if row else None

    def trace_of_card(self, card_uuid: str) -> str | None:
        with self._lock:
            row = self._db.execute(
                "SELECT trace_id FROM card_index WHERE card_uuid = ?", (card_uuid,)
            ).fetchone()
        return row[0] if row else None

    def claim_jti(self, iss: str, jti: str, expires_at: float) -> bool:
        key = f"{iss}\x00{jti}"
        now = time.time()
        with self._jti_lock:
            self._claims += 1
            if self._claims % 1000 == 0:
                self._jti.execute("DELETE FROM jti_seen WHERE expires_at < ?", (now,))
            try:
                self._jti.execute("INSERT INTO jti_seen VALUES (?, ?)", (key, expires_at))
            except sqlite3.IntegrityError:
                updated = self._jti.execute(
                    "UPDATE jti_seen SET expires_at = ? WHERE key = ? AND expires_at < ?",
                    (expires_at, key, now),
                )
                return updated.rowcount == 1
        return True

    def records_for(self, hook_instance: str) -> list[StoredRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, kind, trace_id, hook_instance, recorded_at, body, prev_hash, hash "
                "FROM records WHERE hook_instance = ? ORDER BY seq",
                (hook_instance,),
            ).fetchall()
        return [
            StoredRecord(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6], r[7]) for r in rows
        ]

    def close(self) -> None:
        with self._lock, self._jti_lock:
            self._db.close()
            self._jti.close()
