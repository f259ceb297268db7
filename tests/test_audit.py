"""The audit trail: chain verification against tampering, checkpoints, queries, exports,
on SQLite and on the real PostgreSQL at 127.0.0.1:5432."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cds.audit.chain import canonical_json, record_hash, sign_checkpoint
from cds.audit.export import to_csv, to_fhir_bundle
from cds.audit.keys import load_private_key, write_keypair
from cds.audit.pseudonym import Pseudonymiser
from cds.audit.schema import trace_facets
from cds.audit.store import TraceFilter, TraceStore, open_store
from cds.audit.verify import verify_store
from cds.audit.writer import TraceWriter


def _trace(
    i: int, patient: str = "p1", rule: str = "r1", indicator: str = "warning", status: int = 200
) -> dict[str, Any]:
    trace_id = str(uuid.uuid4())
    return {
        "trace_id": trace_id,
        "hook_instance": str(uuid.uuid4()),
        "service": "runform-patient-view",
        "hook": "patient-view",
        "received_at": f"2026-11-23T10:00:{i % 60:02d}+00:00",
        "patient": f"Patient/{patient}",
        "user": "Practitioner/x",
        "packs": [
            {
                "id": "runform-core",
                "url": "http://runform-cds.org/fhir/PlanDefinition/x",
                "version": "1.0.0",
                "sha256": "0" * 64,
                "status": "active",
            }
        ],
        "engine": {"name": "durable-rules", "version": "2.0.28", "runform_cds": "0.1.0"},
        "inputs": {
            "used": [
                {
                    "resource": f"Observation/o{i}/_history/1",
                    "code": "cadence",
                    "value": 170.0,
                    "unit": "/min",
                }
            ],
            "excluded": [],
        },
        "rules_fired": [
            {
                "rule_id": rule,
                "category": "recommendation",
                "sides": ["right"],
                "card_uuid": f"card-{trace_id}",
                "thresholds": [{"name": "t", "value": 5, "unit": "deg", "label": "X"}],
            }
        ],
        "cards": [
            {
                "uuid": f"card-{trace_id}",
                "summary": f"card {i}",
                "indicator": indicator,
                "rule_id": rule,
            }
        ],
        "outcome": {"status": status},
    }


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'audit.db'}"
    else:
        yield request.getfixturevalue("pg_url")


@pytest.fixture
def store(store_url: str) -> Iterator[TraceStore]:
    s = open_store(store_url)
    yield s
    s.close()


class Raw:
    """Direct SQL on the store's database, bypassing the store: the tamperer."""

    def __init__(self, url: str) -> None:
        self.url = url

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        if self.url.startswith("sqlite"):
            import sqlite3

            db = sqlite3.connect(self.url.removeprefix("sqlite:///"), isolation_level=None)
            try:
                return db.execute(sql, params).fetchall()
            finally:
                db.close()
        base, _, schema = self.url.partition("?schema=")
        with psycopg.connect(base, autocommit=True) as db:
            db.execute(f'SET search_path TO "{schema}"')
            cur = db.execute(sql.replace("?", "%s"), params)
            return cur.fetchall() if cur.description else []

    def row(self, seq: int) -> tuple[Any, ...]:
        return tuple(
            self.execute(
                "SELECT kind, recorded_at, body, prev_hash, hash FROM records WHERE seq = ?", (seq,)
            )[0]
        )


def _fill(store: TraceStore, n: int = 10) -> None:
    store.append_traces([_trace(i) for i in range(n // 2)])
    for i in range(n // 2, n):
        store.append_trace(_trace(i))


def test_an_untouched_chain_verifies(store: TraceStore) -> None:
    _fill(store)
    result = store.verify()
    assert result.ok and result.records == 10 and result.head_seq == 10


def test_an_altered_record_is_found_at_its_position(store: TraceStore, store_url: str) -> None:
    _fill(store)
    raw = Raw(store_url)
    body = json.loads(raw.row(5)[2])
    body["cards"][0]["indicator"] = "info"
    raw.execute("UPDATE records SET body = ? WHERE seq = 5", (canonical_json(body),))
    problem = store.verify().problem
    assert problem is not None and (problem.kind, problem.position) == ("altered", 5)


def test_an_altered_and_rehashed_record_breaks_the_next_link(
    store: TraceStore, store_url: str
) -> None:
    _fill(store)
    raw = Raw(store_url)
    kind, at, body_json, prev, _ = raw.row(5)
    forged = body_json.replace("warning", "info")
    assert forged != body_json
    raw.execute(
        "UPDATE records SET body = ?, hash = ? WHERE seq = 5",
        (forged, record_hash(prev, 5, kind, at, forged)),
    )
    problem = store.verify().problem
    assert problem is not None and (problem.kind, problem.position) == ("broken-link", 6)


def test_a_removed_record_is_found(store: TraceStore, store_url: str) -> None:
    _fill(store)
    Raw(store_url).execute("DELETE FROM records WHERE seq = 4")
    problem = store.verify().problem
    assert problem is not None and (problem.kind, problem.position) == ("removed", 4)


def test_reordered_records_are_found(store: TraceStore, store_url: str) -> None:
    _fill(store)
    raw = Raw(store_url)
    three, seven = raw.row(3), raw.row(7)
    for seq, row in ((3, seven), (7, three)):
        raw.execute(
            "UPDATE records SET kind = ?, recorded_at = ?, body = ?, prev_hash = ?, "
            "hash = ? WHERE seq = ?",
            (*row, seq),
        )
    problem = store.verify().problem
    assert problem is not None and (problem.kind, problem.position) == ("reordered", 3)
    assert "written at position 7" in problem.detail


def test_signed_checkpoints_expose_a_rewritten_chain(
    store: TraceStore, store_url: str, tmp_path: Path
) -> None:
    _fill(store, 6)
    private, public = write_keypair(tmp_path / "audit")
    head = store.verify()
    cp = sign_checkpoint(head.head_seq, head.head_hash, load_private_key(private))
    store.save_checkpoint(cp)
    exported = tmp_path / "cp.json"
    exported.write_text(json.dumps(cp.as_dict()))
    assert verify_store(store, public_key=public, checkpoint_files=[exported]).ok
    # rewrite the whole chain consistently from record 2 on: the chain alone verifies ...
    raw = Raw(store_url)
    prev = raw.row(1)[4]
    for seq in range(2, 7):
        kind, at, body_json, _, _ = raw.row(seq)
        body_json = body_json.replace("warning", "info")
        digest = record_hash(prev, seq, kind, at, body_json)
        raw.execute(
            "UPDATE records SET body = ?, prev_hash = ?, hash = ? WHERE seq = ?",
            (body_json, prev, digest, seq),
        )
        prev = digest
    report = verify_store(store, public_key=public, checkpoint_files=[exported])
    assert report.chain.ok
    assert not report.ok and "no longer has the signed hash at position 6" in report.text
    # ... and a checkpoint signed by another key is refused
    _, other_public = write_keypair(tmp_path / "other")
    assert not verify_store(store, public_key=other_public).ok


def test_truncating_the_tail_is_caught_by_a_checkpoint(
    store: TraceStore, store_url: str, tmp_path: Path
) -> None:
    _fill(store, 6)
    private, public = write_keypair(tmp_path / "k")
    head = store.verify()
    store.save_checkpoint(sign_checkpoint(head.head_seq, head.head_hash, load_private_key(private)))
    Raw(store_url).execute("DELETE FROM records WHERE seq >= 5")
    report = verify_store(store, public_key=public)
    assert report.chain.ok and not report.ok


def test_feedback_links_to_the_trace_and_is_idempotent(store: TraceStore) -> None:
    t = _trace(1)
    store.append_trace(t)
    fb = {"card": t["cards"][0]["uuid"], "outcome": "accepted"}
    assert store.trace_of_card(t["cards"][0]["uuid"]) == t["trace_id"]
    assert store.append_feedback(t["trace_id"], "k1", fb) is True
    assert store.append_feedback(t["trace_id"], "k1", fb) is False
    kinds = [r.kind for r in store.records_for(t["hook_instance"])]
    assert kinds == ["trace", "feedback"]
    assert store.verify().ok


def test_search_filters(store: TraceStore) -> None:
    a, b, c = (
        _trace(1, "p1", "r1"),
        _trace(2, "p2", "r2", "info"),
        _trace(3, "p1", "r2", status=412),
    )
    store.append_traces([a, b, c])
    store.append_feedback(
        a["trace_id"], "f", {"card": a["cards"][0]["uuid"], "outcome": "overridden"}
    )
    ids = lambda f: [r.trace_id for r, _ in store.search(f)]  # noqa: E731
    assert ids(TraceFilter(patient="p1")) == [a["trace_id"], c["trace_id"]]
    assert ids(TraceFilter(rule="r2")) == [b["trace_id"], c["trace_id"]]
    assert ids(TraceFilter(indicator="info")) == [b["trace_id"]]
    assert ids(TraceFilter(outcome="overridden")) == [a["trace_id"]]
    assert ids(TraceFilter(outcome="none")) == [b["trace_id"]]
    assert ids(TraceFilter(outcome="error")) == [c["trace_id"]]
    assert ids(TraceFilter(pack_version="9.9.9")) == []
    assert ids(TraceFilter(since="2000-01-01", until="2000-01-02")) == []


def test_a_batch_over_the_parameter_limit_is_stored_whole(
    store: TraceStore, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch too big for one INSERT statement is split, and nothing is lost."""
    monkeypatch.setattr(store, "MAX_PARAMS", 10)  # one record row (9 values) per statement
    traces = [_trace(i, f"p{i % 3}", f"r{i % 2}") for i in range(7)]
    stored = store.append_traces(traces)
    assert [r.seq for r in stored] == list(range(1, 8))
    assert store.verify().ok
    assert [r.trace_id for r, _ in store.search(TraceFilter(rule="r1"))] == [
        t["trace_id"] for t in traces if t["rules_fired"][0]["rule_id"] == "r1"
    ]
    for t in traces:
        assert store.trace_of_card(t["cards"][0]["uuid"]) == t["trace_id"]
    facets = Raw(store_url).execute("SELECT COUNT(*) FROM trace_facets")[0][0]
    assert facets == sum(len(trace_facets(t)) for t in traces)


def test_the_writer_answers_each_call_with_its_own_record_and_one_wake_per_batch(
    tmp_path: Path,
) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'audit.db'}")
    batches: list[int] = []
    writer = TraceWriter(store, on_commit=lambda _, n: batches.append(n))
    traces = [_trace(i) for i in range(40)]

    async def calls() -> tuple[list[Any], int]:
        loop = asyncio.get_running_loop()
        wakes = 0
        wake = loop.call_soon_threadsafe

        def counted(*args: Any) -> Any:
            nonlocal wakes
            wakes += 1
            return wake(*args)

        loop.call_soon_threadsafe = counted  # type: ignore[method-assign]
        stored = await asyncio.gather(*(writer.append(t) for t in traces))
        return stored, wakes

    try:
        stored, wakes = asyncio.run(calls())
    finally:
        writer.close()
    assert [r.trace_id for r in stored] == [t["trace_id"] for t in traces]
    assert sorted(r.seq for r in stored) == list(range(1, 41))
    assert sum(batches) == 40 and wakes == len(batches)
    assert store.verify().ok
    store.close()


def test_a_failed_batch_fails_each_of_its_calls_and_the_writer_goes_on(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'audit.db'}")
    writer = TraceWriter(store)
    real = store.append_traces
    store.append_traces = lambda traces: (_ for _ in ()).throw(OSError("disk gone"))  # type: ignore[method-assign]

    async def calls() -> list[Any]:
        return await asyncio.gather(
            *(writer.append(_trace(i)) for i in range(5)), return_exceptions=True
        )

    try:
        failed = asyncio.run(calls())
        store.append_traces = real  # type: ignore[method-assign]
        after = asyncio.run(writer.append(_trace(9)))
    finally:
        writer.close()
    assert all(isinstance(f, OSError) and "disk gone" in str(f) for f in failed)
    assert after.seq == 1 and store.verify().ok
    store.close()


def test_jti_claims_are_shared_and_expire(store: TraceStore) -> None:
    import time

    assert store.claim_jti("iss", "j1", time.time() + 60)
    assert not store.claim_jti("iss", "j1", time.time() + 60)
    assert store.claim_jti("iss", "j2", time.time() - 1)
    assert store.claim_jti("iss", "j2", time.time() + 60)  # expired entry may be reused


def test_a_jti_claim_never_waits_for_a_trace_commit(tmp_path: Path) -> None:
    """Claims are made on the event loop; the replay cache is a file of its own, so a
    trace transaction holding the trace file's write lock (through its fsync) cannot
    hold them up. A second store on the same file shares the cache (a second worker)."""
    import sqlite3
    import threading
    import time

    path = tmp_path / "traces.db"
    store, worker = open_store(f"sqlite:///{path}"), open_store(f"sqlite:///{path}")
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # what the trace writer holds while it commits
    answers: list[bool] = []
    claim = threading.Thread(
        target=lambda: answers.extend(
            [
                store.claim_jti("iss", "j1", time.time() + 60),
                worker.claim_jti("iss", "j1", time.time() + 60),
            ]
        )
    )
    claim.start()
    claim.join(timeout=10)
    finished_under_the_lock = not claim.is_alive()
    writer.execute("ROLLBACK")
    claim.join()
    assert finished_under_the_lock
    assert answers == [True, False]
    assert (tmp_path / "traces.db-replay").stat().st_mode & 0o777 == 0o600
    store.close()
    worker.close()


def test_exports_csv_and_a_valid_fhir_bundle_with_pseudonyms(store: TraceStore) -> None:
    t = _trace(1, "secret-patient")
    store.append_trace(t)
    store.append_feedback(
        t["trace_id"],
        "f",
        {
            "card": t["cards"][0]["uuid"],
            "outcome": "overridden",
            "overrideReason": {"userComment": "patient declined"},
        },
    )
    items = store.search(TraceFilter())
    rows = list(csv.DictReader(io.StringIO(to_csv(items))))
    assert rows[0]["patient"] == "Patient/secret-patient"
    assert rows[0]["feedback_outcome"] == "overridden"
    assert rows[0]["override_comment"] == "patient declined"
    plain = to_fhir_bundle(items)
    assert plain["entry"][2]["resource"]["entity"][0]["what"]["reference"] == "Observation/o1"
    pseudo = Pseudonymiser(b"an export key of at least 32 bytes")
    text = json.dumps(to_fhir_bundle(pseudo.items(items)))
    for original in ("secret-patient", "Observation/o1", t["hook_instance"], t["trace_id"]):
        assert original not in text
    bundle = json.loads(text)
    types = [e["resource"]["resourceType"] for e in bundle["entry"]]
    assert types == ["GuidanceResponse", "Parameters", "Provenance", "AuditEvent", "AuditEvent"]
    gr = bundle["entry"][0]["resource"]
    assert gr["requestIdentifier"]["value"] == f"urn:uuid:{pseudo.identifier(t['hook_instance'])}"
    assert gr["moduleCanonical"].endswith("|1.0.0")
    assert gr["subject"]["reference"] == pseudo.reference("Patient", "secret-patient")
    params = bundle["entry"][1]["resource"]
    assert params["parameter"][0]["part"][0] == {"name": "rule", "valueString": "r1"}
    prov = bundle["entry"][2]["resource"]
    assert prov["entity"][0]["what"]["reference"] == pseudo.reference("Observation", "o1")
    feedback = bundle["entry"][4]["resource"]
    details = {d["type"]: d["valueString"] for d in feedback["entity"][0]["detail"]}
    assert details["outcome"] == "overridden"
    assert details["overrideComment"] == "[comment withheld: 16 characters]"


def _writer(url: str, n: int, tag: str) -> None:
    store = open_store(url)
    for i in range(n):
        store.append_trace(_trace(i, patient=tag))
    store.close()


@pytest.mark.postgres
def test_concurrent_writer_processes_keep_one_valid_chain(pg_url: str) -> None:
    store_url = pg_url
    open_store(store_url).close()  # create the schema once
    code = (
        "import sys; from tests.test_audit import _writer; "
        "_writer(sys.argv[1], int(sys.argv[2]), sys.argv[3])"
    )
    root = Path(__file__).resolve().parent.parent
    procs = [
        subprocess.Popen([sys.executable, "-c", code, store_url, "40", f"w{i}"], cwd=root)
        for i in range(4)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    store = open_store(store_url)
    try:
        result = store.verify()
        assert result.ok and result.records == 160
        assert len(store.search(TraceFilter(patient="w3"))) == 40
    finally:
        store.close()


def test_record_json_writes_what_canonical_json_writes() -> None:
    """Stored bodies are written by orjson; on every bundled scenario's decisions, on
    times and on dataclasses the text is canonical_json's, and what orjson refuses
    (an integer beyond 64 bits) falls back to it."""
    from datetime import UTC, datetime

    from cds.audit.chain import record_json
    from tests.golden import decisions

    scenarios = decisions()
    assert len(scenarios) > 10
    for name, record in scenarios.items():
        assert record_json(record) == canonical_json(record), name
    when = datetime(2026, 11, 30, 7, 1, tzinfo=UTC)
    odd = {"b": when, "a": ("x", 1.5, None, "é\u2028\n"), "c": TraceFilter(patient="p"), "n": 2**70}
    assert record_json(odd) == canonical_json(odd)
    del odd["n"]
    assert record_json(odd) == canonical_json(odd)


class _CommitFails:
    """A SQLite connection whose next ``times`` COMMITs fail as a busy database's may."""

    def __init__(self, db: Any, times: int) -> None:
        self._db = db
        self.left = times

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)

    def cursor(self) -> Any:
        outer, cur = self, self._db.cursor()

        class Cursor:
            def __getattr__(self, name: str) -> Any:
                return getattr(cur, name)

            def execute(self, sql: str, *params: Any) -> Any:
                if sql == "COMMIT" and outer.left:
                    outer.left -= 1
                    raise sqlite3.OperationalError("database is locked")
                return cur.execute(sql, *params)

        return Cursor()


def _failing_commits(tmp_path: Path, times: int) -> tuple[TraceStore, _CommitFails]:
    store = open_store(f"sqlite:///{tmp_path}/t.db")
    store.append_trace(_trace(0))
    failing = _CommitFails(store._db, times)  # type: ignore[attr-defined]
    store._db = failing  # type: ignore[attr-defined]
    return store, failing


def test_a_write_refused_as_busy_is_tried_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from cds.audit.sqlite import BUSY_TRIES

    store, failing = _failing_commits(tmp_path, BUSY_TRIES - 1)
    store.append_trace(_trace(1))
    assert failing.left == 0 and "refused a write as busy" in caplog.text
    assert store.count() == 2 and verify_store(store).ok  # stored once, chain intact
    store.close()


def test_feedback_refused_as_busy_is_tried_again(tmp_path: Path) -> None:
    from cds.audit.sqlite import BUSY_TRIES

    store, failing = _failing_commits(tmp_path, BUSY_TRIES - 1)
    t = _trace(0)  # not stored: the feedback's trace context is then empty
    fb = {"card": t["cards"][0]["uuid"], "outcome": "accepted"}
    assert store.append_feedback(t["trace_id"], "k1", fb) is True
    assert failing.left == 0
    assert store.append_feedback(t["trace_id"], "k1", fb) is False  # the key stored once
    assert store.count() == 2 and verify_store(store).ok
    store.close()


def test_a_commit_refused_every_time_is_rolled_back_and_the_store_keeps_working(
    tmp_path: Path,
) -> None:
    from cds.audit.sqlite import BUSY_TRIES

    store, failing = _failing_commits(tmp_path, BUSY_TRIES)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        store.append_trace(_trace(1))
    assert failing.left == 0 and not failing.in_transaction
    store.append_trace(_trace(2))  # not "cannot start a transaction within a transaction"
    assert store.count() == 2 and verify_store(store).ok
    store.close()
