"""Operating the service: readiness, metrics, request ids in logs and traces, settings from
the environment, and a graceful shutdown that loses no acknowledged trace."""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from cds.audit.store import open_store
from cds.client import JwtSigner
from cds.config import env_overrides, load_settings
from cds.errors import ConfigError
from cds.examples import hook_request
from cds.service.operations import CALL_GC_THRESHOLDS
from tests.load import Load
from tests.servers import ServiceProcess

PV = "runform-patient-view"
TOKEN = "a-metrics-token-for-tests"


def _metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus exposition ``text``."""
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        sample, value = line.rsplit(" ", 1)
        found = dict(re.findall(r'(\w+)="([^"]*)"', sample))
        if sample.split("{")[0] == name and all(found.get(k) == v for k, v in labels.items()):
            return float(value)
    raise KeyError((name, labels))


def test_metrics_are_off_by_default_and_need_their_token(service_factory: Any) -> None:
    assert service_factory().get("/metrics").status_code == 404
    live = service_factory(server={"metrics": "token", "metrics_token": TOKEN})
    assert live.get("/metrics").status_code == 401
    wrong = live.get("/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    ok = live.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200 and ok.headers["content-type"].startswith("text/plain")


def test_metrics_count_requests_cards_prefetch_commits_and_the_pack(service_factory: Any) -> None:
    live = service_factory(server={"metrics": "open"})
    for _ in range(3):
        assert live.post(PV, hook_request("patient-view", "p-1")).status_code == 200
    assert live.client.discovery().status_code == 200
    text = live.get("/metrics").text
    calls = _metric(text, "runform_http_request_duration_seconds_count",
                    route="/cds-services/{service_id}", status="200")  # fmt: skip
    assert calls == 3
    assert _metric(text, "runform_cards_total", rule="r1-hip-drop-symptomatic",
                   indicator="warning") == 3  # fmt: skip
    assert _metric(text, "runform_prefetch_total", key="observations", outcome="provided") == 3
    assert _metric(text, "runform_trace_commit_seconds_count") >= 1
    assert _metric(text, "runform_trace_queue_depth") == 0
    assert _metric(text, "runform_pack_active", pack="runform-core") == 1


def test_engine_disagreements_are_counted_apart(
    service_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cds.service.pipeline as pipeline
    from cds.errors import EngineDisagreementError

    live = service_factory(server={"metrics": "open"})

    def disagree(*_: Any, **__: Any) -> Any:
        raise EngineDisagreementError("engine and reference evaluator disagree on rules")

    monkeypatch.setattr(pipeline, "decide", disagree)
    answer = live.post(PV, hook_request("patient-view", "p-1"))
    assert answer.status_code == 500
    text = live.get("/metrics").text
    assert _metric(text, "runform_engine_failures_total", kind="cross-check") == 1


def test_readiness_fails_when_the_trace_writer_is_stuck(service_factory: Any) -> None:
    live = service_factory()
    assert live.get("/readyz").json() == {"status": "ok", "problems": []}
    runtime = _runtime(live)
    runtime.writer.close()  # the writer thread is gone: no call could commit its trace
    answer = live.get("/readyz")
    assert answer.status_code == 503 and answer.json()["problems"] == ["trace writer stuck"]
    assert live.get("/livez").status_code == 200  # alive, just not ready


def _runtime(live: Any) -> Any:
    return live.app.state.runtime


def test_the_request_id_is_in_the_answer_and_the_trace(service_factory: Any) -> None:
    live = service_factory()
    body = hook_request("patient-view", "p-1")
    url = f"{live.url}/cds-services/{PV}"
    token = live.client.signer.token(url)
    headers = {"Authorization": f"Bearer {token}", "X-Request-ID": "ehr-req-0042"}
    answer = live.post_raw(url, json=body, headers=headers)
    assert answer.headers["x-request-id"] == "ehr-req-0042"
    [trace] = live.store.records_for(body["hookInstance"])
    assert trace.body["request_id"] == "ehr-req-0042"
    odd = live.get("/livez", headers={"X-Request-ID": "no spaces <allowed>"})
    assert re.fullmatch(r"[0-9a-f]{32}", odd.headers["x-request-id"])


def test_json_logs_carry_the_request_id(tmp_path: Path, es_signer: JwtSigner) -> None:
    svc = ServiceProcess(tmp_path, es_signer, f"sqlite:///{tmp_path / 't.db'}",
                         server_extra='log_format = "json"')  # fmt: skip
    try:
        stranger = JwtSigner(iss="https://stranger.example", alg="ES384")
        url = f"{svc.base}/cds-services"
        refused = httpx.get(url, headers={"Authorization": f"Bearer {stranger.token(url)}"})
        rid = refused.headers["x-request-id"]
        time.sleep(0.3)
    finally:
        svc.stop()
    events = [json.loads(line) for line in svc.log.read_text().splitlines() if line.startswith("{")]
    assert events and all({"time", "level", "logger", "message"} <= set(e) for e in events)
    mine = [e for e in events if e.get("request_id") == rid]
    assert any("issuer 'https://stranger.example' not on the allowlist" in e["message"]
               for e in mine)  # fmt: skip


def test_every_key_can_be_set_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert env_overrides({"RUNFORM_CDS__SERVER__PORT": "9090", "OTHER": "x",
                          "RUNFORM_CDS__CORS__ORIGINS": '["https://a.example"]',
                          "RUNFORM_CDS__VIEWER__SESSION_SECRET": "plain text, not JSON"}) == {
        "server": {"port": 9090}, "cors": {"origins": ["https://a.example"]},
        "viewer": {"session_secret": "plain text, not JSON"},
    }  # fmt: skip
    monkeypatch.setenv("RUNFORM_CDS__SERVER__METRICS", "token")
    monkeypatch.setenv("RUNFORM_CDS__SERVER__METRICS_TOKEN", TOKEN)
    settings = load_settings()
    assert settings.server.metrics == "token" and settings.server.metrics_token == TOKEN
    monkeypatch.setenv("RUNFORM_CDS__SERVER__PORT", "eighty")
    with pytest.raises(ConfigError, match=r"(?s)environment variables.*server\.port"):
        load_settings()


def test_sigterm_under_load_loses_no_acknowledged_trace(
    tmp_path: Path, es_signer: JwtSigner
) -> None:
    svc = ServiceProcess(tmp_path, es_signer, f"sqlite:///{tmp_path / 'traces.db'}")
    with Load(svc.base, es_signer, threads=6, timeout=10) as load:
        load.wait_for(40, timeout=30)
        svc.proc.send_signal(signal.SIGTERM)  # a rolling restart: drain, then exit
        code = svc.proc.wait(timeout=40)
    answered = load.answered
    svc.stop()
    # uvicorn re-raises the signal after its graceful shutdown, as a shell expects
    assert code in (0, -signal.SIGTERM) and len(answered) >= 40
    log = svc.log.read_text()
    assert "Waiting for application shutdown" in log and "Application shutdown complete" in log
    store = open_store(f"sqlite:///{tmp_path / 'traces.db'}")
    try:
        assert [h for h in answered if not store.records_for(h)] == []
        assert store.verify().ok
    finally:
        store.close()


def test_start_up_objects_are_frozen_and_the_young_generation_enlarged(
    service_factory: Any,
) -> None:
    """A full collection must not walk the start-up heap (the p99 stall under load)."""
    import gc

    gc.unfreeze()
    before = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    assert gc.get_freeze_count() == 0
    try:
        live = service_factory()
        assert live.client.discovery().status_code == 200
        assert gc.get_freeze_count() > 50_000  # modules, FHIR model classes, compiled packs
        # and the young generation is large enough that a call's objects die before a pass
        assert gc.get_threshold() == CALL_GC_THRESHOLDS
    finally:
        gc.set_threshold(*before)
