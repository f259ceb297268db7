"""The audit trail with the real service: durability under SIGKILL, hygiene, the CLI."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cds.audit.store import TraceFilter, open_store
from cds.cli import main
from cds.client import CdsClient, JwtSigner
from cds.examples import hook_request
from tests.conftest import LiveService
from tests.load import Load
from tests.servers import ServiceProcess

PV = "runform-patient-view"


@pytest.fixture
def service_process(tmp_path: Path, es_signer: JwtSigner) -> Iterator[ServiceProcess]:
    svc = ServiceProcess(tmp_path, es_signer, f"sqlite:///{tmp_path / 'traces.db'}")
    yield svc
    svc.stop()


def test_every_answered_call_survives_sigkill_and_the_chain_verifies(
    service_process: ServiceProcess, es_signer: JwtSigner
) -> None:
    with Load(service_process.base, es_signer, threads=6, timeout=5) as load:
        load.wait_for(40, timeout=30)
        service_process.proc.send_signal(signal.SIGKILL)  # mid-load, no shutdown
        service_process.proc.wait(timeout=10)
    answered = load.answered
    assert len(answered) >= 40
    store = open_store(f"sqlite:///{service_process.config.parent / 'traces.db'}")
    try:
        missing = [h for h in answered if not store.records_for(h)]
        assert missing == []
        assert store.verify().ok
    finally:
        store.close()


def test_tokens_never_reach_the_logs_or_the_database(
    tmp_path: Path, es_signer: JwtSigner, fhir_server: Any
) -> None:
    from cds.examples import patient

    base, behaviour = fhir_server
    service_process = ServiceProcess(
        tmp_path, es_signer, f"sqlite:///{tmp_path / 'traces.db'}", fhir_servers=(base,)
    )
    behaviour.resources["Patient"] = [patient("p1")]
    secrets = []
    for i in range(5):
        body = hook_request("patient-view", "p1")
        body["prefetch"].pop("patient")
        access = f"ACCESS-TOKEN-{i}-{os.urandom(8).hex()}"
        body["fhirServer"] = base
        body["fhirAuthorization"] = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "user/Patient.read",
            "subject": "runform-cds",
        }
        url = f"{service_process.base}/cds-services/{PV}"
        jwt = es_signer.token(url)
        assert (
            httpx.post(url, json=body, headers={"Authorization": f"Bearer {jwt}"}).status_code
            == 200
        )
        # and a rejected replay, which is logged
        assert (
            httpx.post(url, json=body, headers={"Authorization": f"Bearer {jwt}"}).status_code
            == 401
        )
        secrets += [access, jwt]
    service_process.stop()
    everything = service_process.log.read_bytes()
    for f in service_process.config.parent.glob("traces.db*"):
        everything += f.read_bytes()
    assert b"rejected credentials" in everything  # the log is really captured
    for secret in secrets:
        assert secret.encode() not in everything


def test_audit_cli_list_verify_checkpoint_export(
    live: LiveService, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bodies = [hook_request("patient-view", f"p{i}") for i in range(3)]
    cards = [live.post(PV, b).json()["cards"][0] for b in bodies]
    live.client.feedback(
        PV,
        [
            {
                "card": cards[0]["uuid"],
                "outcome": "overridden",
                "overrideReason": {"userComment": "not now"},
                "outcomeTimestamp": "2026-11-23T10:00:00Z",
            }
        ],
    )
    store = ["--store", live.settings.store.url]

    assert main(["audit", "list", *store, "--patient", "p1"]) == 0
    out = capsys.readouterr().out
    assert bodies[1]["hookInstance"] in out and "1 trace(s)" in out
    assert main(["audit", "list", *store, "--outcome", "overridden"]) == 0
    assert bodies[0]["hookInstance"] in capsys.readouterr().out

    assert main(["audit", "keygen", "--out", str(tmp_path / "cp")]) == 0
    assert (
        main(
            [
                "audit",
                "checkpoint",
                *store,
                "--key",
                str(tmp_path / "cp.key"),
                "--out",
                str(tmp_path / "cp.json"),
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert (
        main(
            [
                "audit",
                "verify",
                *store,
                "--public-key",
                str(tmp_path / "cp.pub"),
                "--checkpoint",
                str(tmp_path / "cp.json"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "chain OK: 4 records" in out and "signature verified" in out

    out_file = tmp_path / "export.json"
    assert (
        main(
            [
                "audit",
                "export",
                *store,
                "--format",
                "fhir",
                "--pseudonymise",
                "--pseudonym-key",
                "k" * 32,
                "--out",
                str(out_file),
            ]
        )
        == 0
    )
    bundle = json.loads(out_file.read_text())
    assert len(bundle["entry"]) == 13  # 4 per call, and the feedback
    assert "Patient/p1" not in out_file.read_text()
    assert (
        main(
            [
                "audit",
                "export",
                *store,
                "--format",
                "csv",
                "--rule",
                "r1-hip-drop-symptomatic",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.count("\n") == 4  # header + 3 cards

    s = open_store(live.settings.store.url)
    assert len(s.search(TraceFilter())) == 3
    s.close()


def test_audit_verify_exits_non_zero_on_a_broken_chain(
    live: LiveService, capsys: pytest.CaptureFixture[str]
) -> None:
    import sqlite3

    for i in range(3):
        live.post(PV, hook_request("patient-view", f"p{i}"))
    path = live.settings.store.url.removeprefix("sqlite:///")
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("UPDATE records SET body = replace(body, 'warning', 'info') WHERE seq = 2")
    db.close()
    assert main(["audit", "verify", "--store", live.settings.store.url]) == 1
    assert "CHAIN BROKEN at position 2 (altered)" in capsys.readouterr().out


@pytest.mark.postgres
def test_the_service_runs_on_postgresql(service_factory: Any, pg_url: str) -> None:
    live = service_factory(store={"url": pg_url})
    body = hook_request("patient-view", "p1")
    assert live.post(PV, body).status_code == 200
    store = open_store(pg_url)
    try:
        assert [r.kind for r in store.records_for(body["hookInstance"])] == ["trace"]
        assert store.verify().ok
    finally:
        store.close()


@pytest.mark.postgres
def test_two_service_processes_on_postgresql_keep_one_chain(
    tmp_path: Path, es_signer: JwtSigner, pg_url: str
) -> None:
    svc = ServiceProcess(tmp_path, es_signer, pg_url, workers=2)
    answered: list[str] = []
    lock = threading.Lock()

    def load() -> None:
        client = CdsClient(svc.base, es_signer, timeout=10)
        for _ in range(15):
            body = hook_request("patient-view", "p1")
            if client.call(PV, body).status_code == 200:
                with lock:
                    answered.append(body["hookInstance"])
        client.close()

    try:
        threads = [threading.Thread(target=load) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    finally:
        svc.stop()
    assert len(answered) == 90
    store = open_store(pg_url)
    try:
        result = store.verify()
        assert result.ok and result.records == 90
        assert all(store.records_for(h) for h in answered)
    finally:
        store.close()
