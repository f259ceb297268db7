"""What the SQLite and PostgreSQL trace stores share: schema, chain, queries, verify."""

from __future__ import annotations

import json
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

from cds.audit.chain import (
    GENESIS,
    Checkpoint,
    RawRecord,
    VerifyResult,
    record_hash,
    record_json,
    record_problem,
    verify_rows,
)
from cds.audit.schema import SCHEMA_VERSION, backfill_facets, feedback_facet, trace_facets
from cds.audit.store import CardOrigin, StoredRecord, TraceFilter
from cds.audit.trace import Trace
from cds.errors import ConfigError

__all__ = ["SqlTraceStore"]

T = TypeVar("T")

Body = dict[str, Any]
Row = tuple[str, str, str | None, str | None, Body]  # kind, trace_id, hook, patient, body
_COLUMNS = "seq, kind, trace_id, hook_instance, recorded_at, body, prev_hash, hash"


def _record(row: Any) -> StoredRecord:
    return StoredRecord(row[0], row[1], row[2], row[3], row[4], json.loads(row[5]), row[6], row[7])


class SqlTraceStore(ABC):
    """A trace store over a DB-API connection; subclasses supply the dialect."""

    #: DB-API parameter placeholder of the driver
    P = "?"
    #: the most parameters one INSERT may carry (PostgreSQL allows 65,535; the SQLite
    #: store reads its own limit from the connection)
    MAX_PARAMS = 32766
    BATCH = 5000

    def __init__(self) -> None:
        self._lock = threading.Lock()

    # -- dialect -------------------------------------------------------------------
    @abstractmethod
    def _write(self) -> AbstractContextManager[Any]:
        """A cursor in a transaction that holds the chain's write lock; commits on exit."""

    @abstractmethod
    def _read(self) -> AbstractContextManager[Any]:
        """A cursor for reading."""

    @abstractmethod
    def _claim(self, key: str, expires_at: float, now: float) -> bool: ...

    def _retrying(self, transaction: Callable[[], T]) -> T:
        """Run the whole write ``transaction``: a dialect may run it again when the
        database refused it for a passing reason (nothing of it was then written)."""
        return transaction()

    def _q(self, sql: str) -> str:
        return sql.replace("?", self.P)

    # -- appends -------------------------------------------------------------------
    def _insert_chain(self, cur: Any, rows: list[Row]) -> list[StoredRecord]:
        """Append ``rows`` to the chain with ``cur``, inside a write transaction."""
        encoded = [(k, tid, hi, pat, body, record_json(body)) for k, tid, hi, pat, body in rows]
        now = datetime.now(UTC).isoformat()
        out: list[StoredRecord] = []
        values: list[tuple[Any, ...]] = []
        cur.execute("SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1")
        last = cur.fetchone()
        seq, prev = (int(last[0]), str(last[1])) if last else (0, GENESIS)
        for kind, tid, hi, patient, body, body_json in encoded:
            seq += 1
            digest = record_hash(prev, seq, kind, now, body_json)
            values.append((seq, kind, tid, hi, now, body_json, prev, digest, patient))
            out.append(StoredRecord(seq, kind, tid, hi, now, body, prev, digest))
            prev = digest
        self._insert_all(cur, f"records ({_COLUMNS}, patient)", values)
        return out

    def _insert_all(self, cur: Any, into: str, values: Sequence[tuple[Any, ...]]) -> None:
        """Insert ``values`` into ``into`` ("table (columns)") with as few statements as
        the driver's parameter limit allows.

        Not ``executemany``: that runs one step per row, and the driver lets go of the GIL
        around each. On the writer thread, while the event loop keeps the GIL busy, each
        step then waits up to the interpreter's switch interval (5 ms) to win it back: 130
        rows took 0.75 s that way, and 18 ms as one statement (a batch of ten traces
        writes about that many rows, counting their facets and cards).
        """
        if not values:
            return
        width = len(values[0])
        row = "(" + ", ".join(self.P for _ in range(width)) + ")"
        per_statement = max(1, self.MAX_PARAMS // width)
        for start in range(0, len(values), per_statement):
            chunk = values[start : start + per_statement]
            sql = f"INSERT INTO {into} VALUES " + ", ".join(row for _ in chunk)
            cur.execute(sql, [value for params in chunk for value in params])

    def _append_many(self, rows: list[Row], cards: list[tuple[str, str]]) -> list[StoredRecord]:
        with self._write() as cur:
            out = self._insert_chain(cur, rows)
            self._insert_all(cur, "card_index (card_uuid, trace_id)", cards)
            self._index(cur, out)
        return out

    _FACETS = "trace_facets (seq, trace_id, facet, value)"

    def _index(self, cur: Any, records: list[StoredRecord]) -> None:
        """Record what the new traces and feedback are searched by (same transaction)."""
        values: list[tuple[Any, ...]] = []
        for rec in records:
            if rec.kind == "trace":
                target, facets = rec.seq, trace_facets(rec.body)
            else:
                cur.execute(
                    self._q("SELECT seq FROM records WHERE kind = 'trace' AND trace_id = ?"),
                    (rec.trace_id,),
                )
                row = cur.fetchone()
                target, facets = (int(row[0]) if row else -1), [feedback_facet(rec.body)]
            values += [(target, rec.trace_id, facet, value) for facet, value in facets]
        self._insert_all(cur, self._FACETS, values)

    # -- the schema version ---------------------------------------------------------------
    def _version(self, cur: Any) -> int | None:
        cur.execute("SELECT version FROM schema_version")
        row = cur.fetchone()
        return int(row[0]) if row else None

    def _migrate(self, cur: Any) -> None:
        """Bring the schema to this release's version (inside the caller's write
        transaction): a fresh store is stamped; an older one is migrated forward."""
        version = self._version(cur)
        if version is None:
            cur.execute("SELECT COUNT(*) FROM records")
            version = 1 if int(cur.fetchone()[0]) else SCHEMA_VERSION
            cur.execute(self._q("INSERT INTO schema_version (version) VALUES (?)"), (version,))
        if version > SCHEMA_VERSION:
            raise ConfigError(
                f"the trace store is at schema version {version}, newer than this release "
                f"({SCHEMA_VERSION}): upgrade runform-cds"
            )
        if version < 2:
            self._backfill(cur)
        cur.execute(self._q("UPDATE schema_version SET version = ?"), (SCHEMA_VERSION,))

    def _backfill(self, cur: Any) -> None:
        cur.execute("DELETE FROM trace_facets")
        seq_of_trace: dict[str, int] = {}
        start = 0
        while True:
            cur.execute(
                self._q("SELECT seq, kind, trace_id, body FROM records WHERE seq > ? "
                        "ORDER BY seq LIMIT ?"),
                (start, self.BATCH),
            )  # fmt: skip
            rows = cur.fetchall()
            if not rows:
                return
            backfill_facets(rows, lambda sql, p: cur.execute(self._q(sql), p), seq_of_trace)
            start = int(rows[-1][0])

    def _check_version(self, url: str) -> None:
        """For the reading commands: refuse an older store instead of migrating it."""
        with self._read() as cur:
            try:
                version = self._version(cur)
            except Exception:  # no schema_version table: the first release's store
                version = 1
        if version is None or version < SCHEMA_VERSION:
            raise ConfigError(
                f"the trace store at {url} is at schema version {version or 1}; this release "
                f"reads version {SCHEMA_VERSION}. Migrate it: runform-cds audit migrate "
                "--store URL (the service also migrates it when it starts)"
            )

    def append_traces(self, traces: Sequence[Trace]) -> list[StoredRecord]:
        rows: list[Row] = [
            ("trace", t["trace_id"], t.get("hook_instance"), t.get("patient"), cast(Body, t))
            for t in traces
        ]
        cards = [(c["uuid"], t["trace_id"]) for t in traces for c in t.get("cards", [])]
        return self._retrying(lambda: self._append_many(rows, cards))

    def append_trace(self, trace: Trace) -> StoredRecord:
        return self.append_traces([trace])[0]

    def append_feedback(self, trace_id: str, key: str, feedback: dict[str, Any]) -> bool:
        return self.append_feedback_many([(trace_id, key, feedback)]) == 1

    def append_feedback_many(self, items: list[tuple[str, str, dict[str, Any]]]) -> int:
        """Record feedback items in one transaction, each once per key; all or nothing.

        Returns how many were new (keys already recorded, or repeated in ``items``, are
        skipped). The keys are checked inside the chain's write lock, so concurrent
        duplicates cannot both be recorded.
        """
        context = self._trace_context({tid for tid, _, _ in items})
        return self._retrying(lambda: self._record_feedback(items, context))

    def _record_feedback(
        self,
        items: list[tuple[str, str, dict[str, Any]]],
        context: dict[str, tuple[str | None, str | None]],
    ) -> int:
        with self._write() as cur:
            keys = list(dict.fromkeys(key for _, key, _ in items))
            marks = ", ".join("?" for _ in keys)
            cur.execute(self._q(f"SELECT key FROM feedback_keys WHERE key IN ({marks})"), keys)
            seen = {str(r[0]) for r in cur.fetchall()}
            rows: list[Row] = []
            for trace_id, key, record in items:
                if key in seen:
                    continue
                seen.add(key)
                hook_instance, patient = context.get(trace_id, (None, None))
                rows.append(("feedback", trace_id, hook_instance, patient, record))
                cur.execute(self._q("INSERT INTO feedback_keys (key) VALUES (?)"), (key,))
            self._index(cur, self._insert_chain(cur, rows))
        return len(rows)

    def _trace_context(self, trace_ids: set[str]) -> dict[str, tuple[str | None, str | None]]:
        if not trace_ids:
            return {}
        marks = ", ".join("?" for _ in trace_ids)
        with self._read() as cur:
            cur.execute(
                self._q(
                    "SELECT trace_id, hook_instance, patient FROM records "
                    f"WHERE kind = 'trace' AND trace_id IN ({marks})"
                ),
                tuple(trace_ids),
            )
            return {str(r[0]): (r[1], r[2]) for r in cur.fetchall()}

    def claim_jti(self, iss: str, jti: str, expires_at: float) -> bool:
        return self._claim(f"{iss} {jti}", expires_at, time.time())

    def register_pack(self, pack_id: str, version: str, sha256: str) -> str:
        """Record the content hash of an active pack version the first time it is seen;
        return the hash on record (which differs from ``sha256`` if the file changed)."""
        query = "SELECT sha256 FROM pack_versions WHERE pack_id = ? AND version = ?"
        with self._write() as cur:
            cur.execute(self._q(query), (pack_id, version))
            row = cur.fetchone()
            if row is not None:
                return str(row[0])
            cur.execute(
                self._q("INSERT INTO pack_versions VALUES (?, ?, ?, ?)"),
                (pack_id, version, sha256, datetime.now(UTC).isoformat()),
            )
        return sha256

    # -- reads -----------------------------------------------------------------------
    def trace_of_card(self, card_uuid: str) -> str | None:
        with self._read() as cur:
            cur.execute(
                self._q("SELECT trace_id FROM card_index WHERE card_uuid = ?"), (card_uuid,)
            )
            row = cur.fetchone()
        return str(row[0]) if row else None

    def card_origin(self, card_uuid: str) -> CardOrigin | None:
        """The trace, service and CDS client that produced a card."""
        trace_id = self.trace_of_card(card_uuid)
        if trace_id is None:
            return None
        with self._read() as cur:
            cur.execute(
                self._q("SELECT body FROM records WHERE trace_id = ? AND kind = 'trace'"),
                (trace_id,),
            )
            row = cur.fetchone()
        body = json.loads(row[0]) if row else {}
        client = body.get("client") or {}
        return CardOrigin(trace_id, body.get("service"), client.get("iss"))

    def session_version(self, user: str) -> int:
        with self._read() as cur:
            cur.execute(self._q("SELECT version FROM viewer_sessions WHERE user_name = ?"), (user,))
            row = cur.fetchone()
        return int(row[0]) if row else 0

    def end_sessions(self, user: str) -> int:
        """Invalidate every session of ``user`` (all processes); the new version."""
        with self._write() as cur:
            cur.execute(self._q("SELECT version FROM viewer_sessions WHERE user_name = ?"), (user,))
            row = cur.fetchone()
            version = (int(row[0]) if row else 0) + 1
            if row:
                cur.execute(
                    self._q("UPDATE viewer_sessions SET version = ? WHERE user_name = ?"),
                    (version, user),
                )
            else:
                cur.execute(
                    self._q("INSERT INTO viewer_sessions (user_name, version) VALUES (?, ?)"),
                    (user, version),
                )
        return version

    def _fetch(self, sql: str, params: tuple[Any, ...]) -> list[StoredRecord]:
        """Rows under the lock; JSON parsed after it is released."""
        with self._read() as cur:
            cur.execute(self._q(sql), params)
            rows = cur.fetchall()
        return [_record(r) for r in rows]

    def records_for(self, hook_instance: str) -> list[StoredRecord]:
        return self._fetch(
            f"SELECT {_COLUMNS} FROM records WHERE hook_instance = ? ORDER BY seq", (hook_instance,)
        )

    def records_of_trace(self, trace_id: str) -> list[StoredRecord]:
        return self._fetch(
            f"SELECT {_COLUMNS} FROM records WHERE trace_id = ? ORDER BY seq", (trace_id,)
        )

    def count(self) -> int:
        with self._read() as cur:
            cur.execute("SELECT COUNT(*) FROM records")
            return int(cur.fetchone()[0])

    def hook_instances(self, prefix: str, limit: int = 10) -> list[str]:
        with self._read() as cur:
            cur.execute(
                self._q(
                    "SELECT DISTINCT hook_instance FROM records "
                    "WHERE hook_instance LIKE ? ESCAPE '\\' ORDER BY hook_instance LIMIT ?"
                ),
                (_like_prefix(prefix), limit),
            )
            return [str(r[0]) for r in cur.fetchall()]

    def integrity(self, seqs: list[int]) -> dict[int, str | None]:
        """For each position in ``seqs``: why its record cannot be trusted, or None."""
        wanted = sorted({*seqs, *(s - 1 for s in seqs if s > 1)})
        raws: dict[int, RawRecord] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ", ".join("?" for _ in chunk)
            with self._read() as cur:
                cur.execute(
                    self._q(
                        "SELECT seq, kind, recorded_at, body, prev_hash, hash FROM records "
                        f"WHERE seq IN ({marks})"
                    ),
                    tuple(chunk),
                )
                rows = cur.fetchall()
            raws |= {int(r[0]): RawRecord(int(r[0]), r[1], r[2], r[3], r[4], r[5]) for r in rows}
        return {s: record_problem(raws.get(s), raws.get(s - 1), s) for s in seqs}

    def _where(self, where: TraceFilter) -> tuple[str, list[Any]]:
        sql, params = "", []
        if where.patient:
            # a prefix of the id, any case: "pat-00" finds Patient/PAT-0042
            reference = where.patient if "/" in where.patient else f"Patient/{where.patient}"
            sql += " AND LOWER(patient) LIKE ? ESCAPE '\\'"
            params.append(_like_prefix(reference.lower()))
        if where.hook_instance:
            sql += " AND hook_instance LIKE ? ESCAPE '\\'"
            params.append(_like_prefix(where.hook_instance))
        if where.since:
            sql += " AND recorded_at >= ?"
            params.append(where.since)
        if where.until:
            sql += " AND recorded_at < ?"
            params.append(where.until)
        facets = [("rule", where.rule), ("pack_version", where.pack_version),
                  ("indicator", where.indicator)]  # fmt: skip
        if where.outcome in ("accepted", "overridden"):
            facets.append(("outcome", where.outcome))
        elif where.outcome == "error":
            facets.append(("status", "error"))
        for facet, value in facets:
            if value:
                sql += " AND seq IN (SELECT seq FROM trace_facets WHERE facet = ? AND value = ?)"
                params += [facet, value]
        if where.outcome == "none":
            sql += (" AND seq NOT IN (SELECT seq FROM trace_facets "
                    "WHERE facet IN ('outcome', 'status'))")  # fmt: skip
        return sql, params

    def search_page(
        self, where: TraceFilter, *, before: int | None = None, size: int = 50
    ) -> tuple[list[tuple[StoredRecord, list[StoredRecord]]], int | None]:
        """Up to ``size`` matching traces, newest first, older than position ``before``;
        and the position to continue from (None: no more). Filtered, sorted and limited
        in SQL on indexed columns; the store lock is not held while rows are parsed."""
        cond, params = self._where(where)
        bound = "" if before is None else " AND seq < ?"
        args = (*params, *(() if before is None else (before,)), size + 1)
        traces = self._fetch(
            f"SELECT {_COLUMNS} FROM records WHERE kind = 'trace'{cond}{bound} "
            "ORDER BY seq DESC LIMIT ?",
            args,
        )
        more = traces[size - 1].seq if len(traces) > size else None
        traces = traces[:size]
        feedback = self._feedback_of([t.trace_id for t in traces]) if traces else {}
        return [(t, feedback.get(t.trace_id, [])) for t in traces], more

    def _feedback_of(self, trace_ids: list[str]) -> dict[str, list[StoredRecord]]:
        out: dict[str, list[StoredRecord]] = {}
        for start in range(0, len(trace_ids), 500):
            chunk = trace_ids[start : start + 500]
            marks = ", ".join("?" for _ in chunk)
            for rec in self._fetch(
                f"SELECT {_COLUMNS} FROM records WHERE kind = 'feedback' "
                f"AND trace_id IN ({marks}) ORDER BY seq",
                tuple(chunk),
            ):
                out.setdefault(rec.trace_id, []).append(rec)
        return out

    def search(self, where: TraceFilter) -> list[tuple[StoredRecord, list[StoredRecord]]]:
        """Matching traces, oldest first (up to ``where.limit``), each with its feedback."""
        return [item for page in self.iter_pages(where) for item in page]

    def iter_pages(
        self, where: TraceFilter, size: int = 500
    ) -> Iterator[list[tuple[StoredRecord, list[StoredRecord]]]]:
        """Matching traces, oldest first, ``size`` at a time: keyset paging on the
        indexed position, so each page costs the same however far into the store."""
        cond, params = self._where(where)
        after, left = 0, where.limit
        while left is None or left > 0:
            want = size if left is None else min(size, left)
            traces = self._fetch(
                f"SELECT {_COLUMNS} FROM records WHERE kind = 'trace'{cond} AND seq > ? "
                "ORDER BY seq LIMIT ?",
                (*params, after, want),
            )
            if not traces:
                return
            feedback = self._feedback_of([t.trace_id for t in traces])
            yield [(t, feedback.get(t.trace_id, [])) for t in traces]
            if len(traces) < want:
                return
            after = traces[-1].seq
            left = None if left is None else left - len(traces)

    # -- the chain -------------------------------------------------------------------
    def iter_raw(self, start: int = 1) -> Iterator[RawRecord]:
        sql = self._q(
            "SELECT seq, kind, recorded_at, body, prev_hash, hash FROM records "
            "WHERE seq >= ? ORDER BY seq LIMIT ?"
        )
        while True:
            with self._read() as cur:
                cur.execute(sql, (start, self.BATCH))
                rows = cur.fetchall()
            for r in rows:
                yield RawRecord(int(r[0]), r[1], r[2], r[3], r[4], r[5])
            if len(rows) < self.BATCH:
                return
            start = int(rows[-1][0]) + 1

    def seq_of_hash(self, digest: str) -> int | None:
        with self._read() as cur:
            cur.execute(self._q("SELECT seq FROM records WHERE hash = ?"), (digest,))
            row = cur.fetchone()
        return int(row[0]) if row else None

    def verify(self) -> VerifyResult:
        return verify_rows(self.iter_raw(), self.seq_of_hash)

    def save_checkpoint(self, checkpoint: Checkpoint) -> None:
        with self._write() as cur:
            cur.execute(
                self._q(
                    "INSERT INTO checkpoints (seq, hash, signed_at, key_id, signature) "
                    "VALUES (?, ?, ?, ?, ?)"
                ),
                (
                    checkpoint.seq,
                    checkpoint.hash,
                    checkpoint.signed_at,
                    checkpoint.key_id,
                    checkpoint.signature,
                ),
            )

    def checkpoints(self) -> list[Checkpoint]:
        with self._read() as cur:
            cur.execute(
                "SELECT seq, hash, signed_at, key_id, signature FROM checkpoints ORDER BY seq"
            )
            return [Checkpoint(int(r[0]), r[1], r[2], r[3], r[4]) for r in cur.fetchall()]

    def hash_at(self, seq: int) -> str | None:
        with self._read() as cur:
            cur.execute(self._q("SELECT hash FROM records WHERE seq = ?"), (seq,))
            row = cur.fetchone()
        return str(row[0]) if row else None


def _like_prefix(text: str) -> str:
    """A LIKE pattern matching strings that start with ``text`` taken literally."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
