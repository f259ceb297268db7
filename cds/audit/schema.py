"""The trace store's schema, its version, and the migrations between versions.

Version 1 is the first release's schema. Version 2 adds ``trace_facets``: what
a trace can be searched by (its fired and suppressed rules, card indicators,
pack versions, error status, and the outcomes of its feedback), indexed, so
``audit list`` and the viewer filter, sort and page in SQL instead of reading
every trace. A store is migrated forward, in one transaction, by the service
when it opens it, or by ``runform-cds audit migrate``; the audit reading
commands never change a store and ask for the migration instead.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

__all__ = [
    "FACETS_TEMPLATE",
    "SCHEMA_TEMPLATE",
    "SCHEMA_VERSION",
    "backfill_facets",
    "feedback_facet",
    "trace_facets",
]

#: the version this release writes
SCHEMA_VERSION = 2

#: version 1 (the first release): both backends; {int} and {real} are the dialect's types
SCHEMA_TEMPLATE = """
CREATE TABLE IF NOT EXISTS records (
    seq {int} PRIMARY KEY,
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
CREATE TABLE IF NOT EXISTS jti_seen (key TEXT PRIMARY KEY, expires_at {real} NOT NULL);
CREATE TABLE IF NOT EXISTS pack_versions (
    pack_id TEXT NOT NULL, version TEXT NOT NULL, sha256 TEXT NOT NULL, first_seen TEXT NOT NULL,
    PRIMARY KEY (pack_id, version)
);
CREATE TABLE IF NOT EXISTS checkpoints (
    seq {int} NOT NULL, hash TEXT NOT NULL, signed_at TEXT NOT NULL,
    key_id TEXT NOT NULL, signature TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS viewer_sessions (user_name TEXT PRIMARY KEY, version {int} NOT NULL);
"""


#: version 2: the searchable facets of traces, and the version itself
FACETS_TEMPLATE = """
CREATE TABLE IF NOT EXISTS schema_version (version {int} NOT NULL);
CREATE TABLE IF NOT EXISTS trace_facets (
    seq {int} NOT NULL, trace_id TEXT NOT NULL, facet TEXT NOT NULL, value TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS trace_facets_lookup ON trace_facets(facet, value, seq);
CREATE INDEX IF NOT EXISTS trace_facets_trace ON trace_facets(trace_id);
CREATE INDEX IF NOT EXISTS records_kind_seq ON records(kind, seq);
"""

Facet = tuple[str, str]


def trace_facets(body: dict[str, Any]) -> list[Facet]:
    """What a trace is searched by."""
    out: list[Facet] = []
    for fired in body.get("rules_fired", []):
        out.append(("rule", str(fired.get("rule_id"))))
        if fired.get("suppressed_by"):
            out.append(("suppressed", str(fired.get("rule_id"))))
    out += [("indicator", str(c.get("indicator"))) for c in body.get("cards", [])]
    out += [("pack_version", str(p.get("version"))) for p in body.get("packs", [])]
    if (body.get("outcome") or {}).get("status", 200) != 200:
        out.append(("status", "error"))
    return list(dict.fromkeys(out))


def feedback_facet(body: dict[str, Any]) -> Facet:
    return ("outcome", str(body.get("outcome")))


Execute = Callable[[str, tuple[Any, ...]], Any]


def backfill_facets(rows: list[Any], execute: Execute, seq_of_trace: dict[str, int]) -> None:
    """Index already stored records: ``rows`` are (seq, kind, trace_id, body JSON)."""
    for seq, kind, trace_id, body_json in rows:
        body = json.loads(body_json)
        if kind == "trace":
            seq_of_trace[str(trace_id)] = int(seq)
            facets = trace_facets(body)
            target = int(seq)
        else:
            facets = [feedback_facet(body)]
            target = seq_of_trace.get(str(trace_id), -1)
        for facet, value in facets:
            execute(
                "INSERT INTO trace_facets (seq, trace_id, facet, value) VALUES (?, ?, ?, ?)",
                (target, str(trace_id), facet, value),
            )
