"""The trace store interface and the factory that picks a backend from a URL."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from cds.errors import ConfigError

__all__ = ["StoredRecord", "TraceStore", "open_store"]


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


class TraceStore(Protocol):
    """Append-only, hash-chained storage of traces and feedback.

    ``append_trace`` returns only after the record is durably committed.
    """

    def append_trace(self, trace: dict[str, Any]) -> StoredRecord: ...

    def append_traces(self, traces: list[dict[str, Any]]) -> list[StoredRecord]:
        """Append several traces in one durable commit (group commit)."""
        ...

    def append_feedback(self, trace_id: str, key: str, feedback: dict[str, Any]) -> bool:
        """Record feedback once per ``key``; return False if it was already recorded."""
        ...

    def trace_of_card(self, card_uuid: str) -> str | None: ...

    def claim_jti(self, iss: str, jti: str, expires_at: float) -> bool:
        """Record a JWT id; False if it was already used and has not expired (a replay).

        Shared by every service process that uses the store.
        """
        ...

    def records_for(self, hook_instance: str) -> list[StoredRecord]: ...

    def close(self) -> None: ...


def open_store(url: str) -> TraceStore:
    """Open the store named by ``url`` (``sqlite:///path`` or ``sqlite://:memory:``)."""
    if url.startswith("sqlite://"):
        from cds.audit.sqlite import SqliteTraceStore

        return SqliteTraceStore(url.removeprefix("sqlite:///").removeprefix("sqlite://"))
    if url.startswith(("postgresql://", "postgres://")):
        raise ConfigError("the PostgreSQL trace store is not available in this version")
    raise ConfigError(f"store.url: unsupported scheme in {url!r} (use sqlite:/// or postgresql://)")
