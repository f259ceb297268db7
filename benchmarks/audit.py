"""Audit-trail benchmark: the cost of durability and of the hash chain.

Prints, in one run:
* trace appends per second on SQLite and PostgreSQL with 1 and 4 writer
  processes (one durable commit per trace, as the service does when idle),
  next to a baseline of the same rows inserted with no chain and no fsync;
* the time to verify a chain of 1,000,000 records, next to the time to just
  read them.

    ./benchmarks/run audit [--seconds 5] [--records 1000000] [--no-postgres]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sqlite3
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from cds.audit.chain import canonical_json
from cds.audit.store import open_store

PG = "postgresql://postgres@127.0.0.1:5432/test"


def sample_trace(i: int) -> dict[str, Any]:
    """A trace of realistic size (~3 KiB): 7 inputs, 1 rule, 1 card."""
    tid = str(uuid.uuid4())
    return {
        "trace_id": tid,
        "hook_instance": str(uuid.uuid4()),
        "service": "runform-patient-view",
        "hook": "patient-view",
        "received_at": "2026-11-23T10:00:00+00:00",
        "patient": f"Patient/p{i % 500}",
        "user": "Practitioner/pt-1",
        "packs": [
            {
                "id": "runform-core",
                "version": "1.0.0",
                "sha256": "a" * 64,
                "url": "http://runform-cds.org/fhir/PlanDefinition/runform-core",
                "status": "active",
            }
        ],
        "inputs": {
            "used": [
                {
                    "resource": f"Observation/{uuid.uuid4().hex}/_history/1",
                    "code": "contralateral-pelvic-drop",
                    "side": "right",
                    "value": 7.5,
                    "unit": "deg",
                    "canonical": 7.5,
                    "strides": 12,
                    "effective": "2026-11-20T10:00:00+00:00",
                }
                for _ in range(7)
            ],
            "excluded": [],
        },
        "facts": [{"kind": "side", "side": "right", "contralateral_pelvic_drop": 7.5}] * 3,
        "rules_fired": [
            {
                "rule_id": "r1-hip-drop-symptomatic",
                "sides": ["right"],
                "card_uuid": f"c-{tid}",
                "thresholds": [
                    {"name": "pelvic_drop_high", "value": 5, "unit": "deg", "label": "X"}
                ],
            }
        ],
        "cards": [
            {
                "uuid": f"c-{tid}",
                "summary": "Hip weakness and hip drop on the right side",
                "indicator": "warning",
                "rule_id": "r1-hip-drop-symptomatic",
            }
        ],
        "outcome": {"status": 200},
    }


def _append_worker(url: str, seconds: float, queue: Any) -> None:
    store = open_store(url)
    n, deadline, i = 0, time.monotonic() + seconds, 0
    while time.monotonic() < deadline:
        store.append_trace(sample_trace(i))
        n, i = n + 1, i + 1
    store.close()
    queue.put(n)


def _baseline_worker(url: str, seconds: float, queue: Any) -> None:
    """The same rows, no hash chain, no lock, no fsync: what durability is compared with."""
    n, deadline = 0, time.monotonic() + seconds
    if url.startswith("sqlite"):
        db = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=OFF")
        db.execute("CREATE TABLE IF NOT EXISTS plain (id TEXT, body TEXT)")
        while time.monotonic() < deadline:
            db.execute("INSERT INTO plain VALUES (?, ?)", (str(n), canonical_json(sample_trace(n))))
            n += 1
        db.close()
    else:
        import psycopg

        base, _, schema = url.partition("?schema=")
        with psycopg.connect(base, autocommit=True) as db:
            db.execute(f'SET search_path TO "{schema}"')
            db.execute("SET synchronous_commit TO OFF")
            while time.monotonic() < deadline:
                db.execute(
                    "INSERT INTO plain VALUES (%s, %s)", (str(n), canonical_json(sample_trace(n)))
                )
                n += 1
    queue.put(n)


def _create_baseline_table(url: str) -> None:
    if url.startswith("postgresql"):
        import psycopg

        base, _, schema = url.partition("?schema=")
        with psycopg.connect(base, autocommit=True) as db:
            db.execute(f'CREATE UNLOGGED TABLE "{schema}".plain (id TEXT, body TEXT)')


def _run(target: Any, url: str, writers: int, seconds: float) -> float:
    queue: Any = mp.Queue()
    procs = [mp.Process(target=target, args=(url, seconds, queue)) for _ in range(writers)]
    for p in procs:
        p.start()
    total = sum(queue.get() for _ in procs)
    for p in procs:
        p.join()
    return total / seconds


def appends(args: argparse.Namespace, tmp: Path) -> None:
    backends = [("SQLite", lambda tag: f"sqlite:///{tmp / f'{tag}.db'}")]
    if not args.no_postgres:
        backends.append(("PostgreSQL", lambda tag: f"{PG}?schema=bench_{tag}"))
    print(f"{'backend':<11} {'writers':>7} {'appends/s':>10} {'baseline/s':>11} {'ratio':>6}")
    for name, url_for in backends:
        for writers in (1, 4):
            tag = f"{name.lower()}_{writers}_{uuid.uuid4().hex[:6]}"
            url = url_for(tag)
            open_store(url).close()
            _create_baseline_table(url)
            rate = _run(_append_worker, url, writers, args.seconds)
            base = _run(_baseline_worker, url, writers, args.seconds)
            store = open_store(url)
            assert store.verify().ok, "the chain must verify after concurrent writers"
            store.close()
            print(f"{name:<11} {writers:>7} {rate:>10.0f} {base:>11.0f} {rate / base:>6.2f}")
            if url.startswith("postgresql"):
                import psycopg

                with psycopg.connect(PG, autocommit=True) as db:
                    db.execute(f'DROP SCHEMA IF EXISTS "bench_{tag}" CASCADE')


def verify_million(args: argparse.Namespace, tmp: Path) -> None:
    url = f"sqlite:///{tmp / 'million.db'}"
    store = open_store(url)
    small = {"trace_id": "t", "hook_instance": None, "patient": "Patient/p", "cards": []}
    started, done, batch = time.monotonic(), 0, 5000
    print(f"building a chain of {args.records:,} records ...", flush=True)
    while done < args.records:
        n = min(batch, args.records - done)
        store.append_traces([{**small, "trace_id": str(done + i), "n": done + i} for i in range(n)])
        done += n
        if done % 200_000 == 0:
            print(f"  {done:,} records ({time.monotonic() - started:.0f} s)", flush=True)
    t0 = time.monotonic()
    count = sum(1 for _ in store.iter_raw())
    read_s = time.monotonic() - t0
    t0 = time.monotonic()
    result = store.verify()
    verify_s = time.monotonic() - t0
    store.close()
    assert result.ok and result.records == count == args.records
    print(
        f"verify {args.records:,} records: {verify_s:.1f} s "
        f"({args.records / verify_s:,.0f} records/s); baseline read only: {read_s:.1f} s; "
        f"ratio {verify_s / read_s:.1f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="runform-audit-bench-") as tmp:
        appends(args, Path(tmp))
        verify_million(args, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
