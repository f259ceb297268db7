"""The trace store interface and the factory that picks a backend from a URL."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

from cds.audit.chain import Checkpoint, RawRecord, VerifyResult
from cds.audit.trace import Trace
from cds.errors import ConfigError, StoreNotFoundError

__all__ = [
    "CardOrigin",
    "StoredRecord",
    "TraceFilter",
    "TraceStore",
    "missing_store",
    "open_store",
    "safe_url",
]


@dataclass(frozen=True)
class StoredRecord:
    seq: int
    kind: str  # "trace" or "feedback"
    trace_id: str
    hook_instance: str | None
    recorded_at: str
    body: dict[str, Any]
    prev_hash: str
    hash: str

    @property
    def trace(self) -> Trace:
        """The body of a trace record, typed (``kind == "trace"``)."""
        return cast(Trace, self.body)


@dataclass(frozen=True)
class CardOrigin:
    """Where a card came from: feedback must come from the same client and service."""

    trace_id: str
    service: str | None
    client_iss: str | None


@dataclass(frozen=True)
class TraceFilter:
    """What ``audit list`` and ``audit export`` select; every field is optional."""

    patient: str | None = None
    hook_instance: str | None = None  # the hookInstance, or the start of it
    since: str | None = None  # ISO 8601, inclusive
    until: str | None = None  # ISO 8601, exclusive
    rule: str | None = None
    pack_version: str | None = None
    indicator: str | None = None
    outcome: str | None = None  # accepted | overridden | none (no feedback) | error
    limit: int | None = None


class TraceStore(Protocol):
    """Append-only, hash-chained storage of traces and feedback.

    Appends return only after the record is durably committed.
    """

    def append_traces(self, traces: Sequence[Trace]) -> list[StoredRecord]:
        """Append several traces in one durable commit (group commit)."""
        ...

    def append_trace(self, trace: Trace) -> StoredRecord: ...

    def append_feedback(self, trace_id: str, key: str, feedback: dict[str, Any]) -> bool:
        """Record feedback once per ``key``; return False if it was already recorded."""
        ...

    def append_feedback_many(self, items: list[tuple[str, str, dict[str, Any]]]) -> int:
        """Record ``(trace_id, key, record)`` items in one transaction; all or nothing.
        Items whose key is already recorded are skipped; returns how many were new."""
        ...

    def trace_of_card(self, card_uuid: str) -> str | None: ...

    def card_origin(self, card_uuid: str) -> CardOrigin | None:
        """The trace, service and CDS client that produced a card."""
        ...

    def session_version(self, user: str) -> int:
        """The current session version of a viewer user (0 if never logged out)."""
        ...

    def end_sessions(self, user: str) -> int:
        """Invalidate every session of a viewer user, in every process."""
        ...

    def records_for(self, hook_instance: str) -> list[StoredRecord]: ...

    def hook_instances(self, prefix: str, limit: int = 10) -> list[str]:
        """The recorded hookInstances that start with ``prefix`` (up to ``limit``)."""
        ...

    def count(self) -> int:
        """How many records (traces and feedback) the store holds."""
        ...

    def integrity(self, seqs: list[int]) -> dict[int, str | None]:
        """For each position: why its record cannot be trusted on its own, or None."""
        ...

    def records_of_trace(self, trace_id: str) -> list[StoredRecord]:
        """The trace record and its feedback records, in order."""
        ...

    def search(self, where: TraceFilter) -> list[tuple[StoredRecord, list[StoredRecord]]]:
        """Matching traces, oldest first, each with its feedback records."""
        ...

    def iter_pages(
        self, where: TraceFilter, size: int = 500
    ) -> Iterator[list[tuple[StoredRecord, list[StoredRecord]]]]:
        """The same, fetched and yielded ``size`` traces at a time (memory stays flat)."""
        ...

    def search_page(
        self, where: TraceFilter, *, before: int | None = None, size: int = 50
    ) -> tuple[list[tuple[StoredRecord, list[StoredRecord]]], int | None]:
        """A page of matching traces, newest first, and where the next page starts."""
        ...

    def register_pack(self, pack_id: str, version: str, sha256: str) -> str:
        """The content hash on record for an active pack version (recording it if new)."""
        ...

    def claim_jti(self, iss: str, jti: str, expires_at: float) -> bool:
        """Record a JWT id; False if it was already used and has not expired (a replay).

        Shared by every service process that uses the store.
        """
        ...

    def iter_raw(self, start: int = 1) -> Iterator[RawRecord]: ...

    def verify(self) -> VerifyResult: ...

    def save_checkpoint(self, checkpoint: Checkpoint) -> None: ...

    def checkpoints(self) -> list[Checkpoint]: ...

    def seq_of_hash(self, digest: str) -> int | None:
        """The position of the record with this hash, if any (for diagnosing a break)."""
        ...

    def hash_at(self, seq: int) -> str | None:
        """The stored hash of the record at position ``seq``."""
        ...

    def close(self) -> None: ...


def open_store(url: str, *, create: bool = True, migrate: bool = False) -> TraceStore:
    """Open the store named by ``url``.

    ``sqlite:///path`` (or ``sqlite://:memory:``), or
    ``postgresql://user@host:port/db[?schema=name]``. A store opened with ``create``
    (the service) is created if needed and migrated to this release's schema. With
    ``create=False`` (the audit commands) a store that does not exist is an error, not
    a new empty one, and an older schema is refused unless ``migrate`` is given.
    """
    if url.startswith("sqlite://"):
        from cds.audit.sqlite import SqliteTraceStore

        path = url.removeprefix("sqlite:///").removeprefix("sqlite://")
        return SqliteTraceStore(path, create=create, migrate=migrate)
    if url.startswith(("postgresql://", "postgres://")):
        from cds.audit.postgres import PostgresTraceStore

        return PostgresTraceStore(url, create=create, migrate=migrate)
    raise ConfigError(f"store.url: unsupported scheme in {url!r} (use sqlite:/// or postgresql://)")


def safe_url(url: str) -> str:
    """``url`` without a password, for printing."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def missing_store(url: str, why: str) -> StoreNotFoundError:
    return StoreNotFoundError(
        f"no trace store at {safe_url(url)} ({why}); nothing was created. Name the service's "
        "store with --store, --config or $RUNFORM_CDS_CONFIG"
    )
