"""The trace store's schema version: a store written by the first release is migrated,
searched in SQL on indexes, and never changed by the reading commands. Both backends."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from cds.audit.chain import GENESIS, canonical_json, record_hash
from cds.audit.schema import SCHEMA_TEMPLATE, SCHEMA_VERSION
from cds.audit.store import TraceFilter, open_store
from cds.cli import main
from cds.errors import ConfigError
from tests.conftest import PG_BASE


def _trace(
    n: int, *, rule: str = "r1", status: int = 200, suppressed: bool = False
) -> dict[str, Any]:
    fired: dict[str, Any] = {"rule_id": rule, "category": "recommendation"}
    card = {"uuid": f"card-{n}", "indicator": "warning", "rule_id": rule}
    if suppressed:
        fired["suppressed_by"] = "s1"
    return {
        "trace_id": f"trace-{n}", "hook_instance": f"hook-{n}", "patient": f"Patient/p{n % 3}",
        "packs": [{"id": "core", "version": "1.0.0"}], "rules_fired": [fired],
        "cards": [] if suppressed or status != 200 else [card],
        "outcome": {"status": status},
    }  # fmt: skip


def _first_release_rows() -> list[tuple[str, str, str | None, str | None, dict[str, Any]]]:
    rows: list[tuple[str, str, str | None, str | None, dict[str, Any]]] = []
    for n in range(1, 7):
        t = _trace(n, rule="r2" if n % 2 else "r1", status=412 if n == 5 else 200,
                   suppressed=n == 6)  # fmt: skip
        rows.append(("trace", t["trace_id"], t["hook_instance"], t["patient"], t))
    feedback = {"card": "card-2", "outcome": "overridden", "outcomeTimestamp": "2026-11-01T10:00Z"}
    rows.append(("feedback", "trace-2", "hook-2", "Patient/p2", feedback))
    return rows


def _write_first_release(execute: Any, int_type: str, real: str) -> None:
    """A store as the first release wrote it: its schema and a valid hash chain."""
    for statement in SCHEMA_TEMPLATE.format(int=int_type, real=real).split(";"):
        if statement.strip():
            execute(statement, ())
    prev, when = GENESIS, datetime(2026, 11, 1, tzinfo=UTC).isoformat()
    for seq, (kind, tid, hook, patient, body) in enumerate(_first_release_rows(), start=1):
        body_json = canonical_json(body)
        digest = record_hash(prev, seq, kind, when, body_json)
        execute(
            "INSERT INTO records (seq, kind, trace_id, hook_instance, patient, recorded_at, "
            "body, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (seq, kind, tid, hook, patient, when, body_json, prev, digest),
        )
        prev = digest


@pytest.fixture(params=["sqlite", "postgres"])
def old_store(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    if request.param == "sqlite":
        path = tmp_path / "first-release.db"
        db = sqlite3.connect(path, isolation_level=None)
        _write_first_release(lambda sql, p: db.execute(sql, p), "INTEGER", "REAL")
        db.close()
        yield f"sqlite:///{path}"
        return
    url: str = request.getfixturevalue("pg_url")
    schema = url.rsplit("schema=", 1)[1]
    with psycopg.connect(PG_BASE, autocommit=True) as db:
        db.execute(f'CREATE SCHEMA "{schema}"')
        db.execute(f'SET search_path TO "{schema}"')
        _write_first_release(lambda sql, p: db.execute(sql.replace("?", "%s"), p),
                             "BIGINT", "DOUBLE PRECISION")  # fmt: skip
    yield url


def test_reading_commands_refuse_an_old_store_and_change_nothing(
    old_store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ConfigError, match=r"schema version 1.*audit migrate"):
        open_store(old_store, create=False)
    assert main(["audit", "list", "--store", old_store]) == 2
    assert "runform-cds audit migrate" in capsys.readouterr().err
    with pytest.raises(ConfigError):  # still version 1: the refusal wrote nothing
        open_store(old_store, create=False)


def test_audit_migrate_brings_an_old_store_forward_and_keeps_its_chain(
    old_store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["audit", "migrate", "--store", old_store]) == 0
    out = capsys.readouterr().out
    assert f"schema version {SCHEMA_VERSION}" in out and "7 records, chain OK" in out
    store = open_store(old_store, create=False)  # now readable
    try:

        def ids(**where: Any) -> list[str]:
            return [t.trace_id for t, _ in store.search(TraceFilter(**where))]

        assert ids(rule="r1") == ["trace-2", "trace-4", "trace-6"]
        assert ids(outcome="overridden") == ["trace-2"]
        assert ids(outcome="error") == ["trace-5"]
        assert ids(outcome="none") == ["trace-1", "trace-3", "trace-4", "trace-6"]
        assert ids(indicator="warning", pack_version="1.0.0") == [
            "trace-1",
            "trace-2",
            "trace-3",
            "trace-4",
        ]
        assert store.verify().ok and store.verify().records == 7
    finally:
        store.close()
    assert main(["audit", "migrate", "--store", old_store]) == 0  # again: nothing to do


def test_the_service_migrates_the_store_it_opens(old_store: str) -> None:
    store = open_store(old_store)  # as the service opens it
    try:
        assert [t.trace_id for t, _ in store.search(TraceFilter(rule="r2"))] == [
            "trace-1", "trace-3", "trace-5"
        ]  # fmt: skip
        new = _trace(7)
        store.append_trace(new)
        assert store.search(TraceFilter(rule="r1"))[-1][0].trace_id == "trace-7"
        assert store.verify().ok
    finally:
        store.close()


def test_pages_come_from_sql_newest_first_without_gaps(tmp_path: Any) -> None:
    store = open_store(f"sqlite:///{tmp_path / 't.db'}")
    try:
        store.append_traces([_trace(n, rule="r1" if n % 3 else "r2") for n in range(1, 251)])
        seen: list[str] = []
        before = None
        while True:
            page, before = store.search_page(TraceFilter(rule="r1"), before=before, size=70)
            seen += [t.trace_id for t, _ in page]
            if before is None:
                break
        expected = [f"trace-{n}" for n in range(250, 0, -1) if n % 3]
        assert seen == expected
        assert len(store.search(TraceFilter(rule="r2", limit=5))) == 5
    finally:
        store.close()
    plan = (
        sqlite3.connect(tmp_path / "t.db")
        .execute(
            "EXPLAIN QUERY PLAN SELECT seq FROM trace_facets WHERE facet = 'rule' AND value = 'r1'"
        )
        .fetchall()
    )
    assert "trace_facets_lookup" in " ".join(str(row) for row in plan)


@pytest.mark.parametrize("limit", [None, 130])
def test_audit_list_streams_page_by_page(tmp_path: Any, limit: int | None,
                                         capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    url = f"sqlite:///{tmp_path / 't.db'}"
    store = open_store(url)
    try:
        store.append_traces([_trace(n, rule="r1" if n % 3 else "r2") for n in range(1, 251)])
        store.append_feedback("trace-4", "k", {"card": "card-4", "outcome": "accepted"})
        pages = list(store.iter_pages(TraceFilter(rule="r1", limit=limit), size=60))
    finally:
        store.close()
    r1 = [f"trace-{n}" for n in range(1, 251) if n % 3][:limit]
    assert [len(p) for p in pages] == [60] * (len(r1) // 60) + [len(r1) % 60]
    assert [t.trace_id for p in pages for t, _ in p] == r1  # oldest first, no gaps
    feedback = {t.trace_id: fb for p in pages for t, fb in p}
    assert [f.body["outcome"] for f in feedback["trace-4"]] == ["accepted"]

    argv = ["audit", "list", "--store", url, "--rule", "r1"]
    assert main(argv + ([] if limit is None else ["--limit", str(limit)])) == 0
    out = capsys.readouterr().out.splitlines()
    assert f"{len(r1)} trace(s)" in out
    assert sum(" hook-" in line for line in out) == len(r1)
