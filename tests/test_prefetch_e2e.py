"""Prefetch semantics against a real local FHIR server.

Present, null, absent, slow, failing and paged answers.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from cds.examples import demo_observations, hook_request, patient, pfp_condition, searchset
from tests.conftest import LiveService

PV = "runform-patient-view"
AUTH = {
    "access_token": "tok-1",
    "token_type": "Bearer",
    "expires_in": 300,
    "scope": "user/Observation.read",
    "subject": "runform-cds",
}


def _absent(
    base: str, behaviour: Any, pid: str = "p1", keep: tuple[str, ...] = ()
) -> dict[str, Any]:
    behaviour.resources = {
        "Patient": [patient(pid)],
        "Observation": demo_observations(pid),
        "Condition": [pfp_condition(pid)],
    }
    body = hook_request("patient-view", pid)
    body["prefetch"]["orders"] = searchset([])
    body["prefetch"]["careplans"] = searchset([])
    body["prefetch"] = {k: v for k, v in body["prefetch"].items() if k in keep}
    body["fhirServer"] = base
    body["fhirAuthorization"] = AUTH
    return body


def test_absent_keys_are_fetched_with_the_bearer_token(fhir_live: Any) -> None:
    live, base, behaviour = fhir_live
    body = _absent(base, behaviour)
    r = live.post(PV, body)
    assert r.status_code == 200, r.text
    assert "PLUS gait retraining" in r.json()["cards"][0]["summary"]
    paths = sorted(q["path"] for q in behaviour.requests)
    assert paths == [
        "/fhir/CarePlan",
        "/fhir/Condition",
        "/fhir/Observation",
        "/fhir/Patient/p1",
        "/fhir/ServiceRequest",
    ]
    orders = next(q["query"] for q in behaviour.requests if q["path"] == "/fhir/ServiceRequest")
    assert "status=active,on-hold,completed" in orders  # follow-ups see finished programmes
    assert {q["authorization"] for q in behaviour.requests} == {"Bearer tok-1"}
    obs_query = next(q["query"] for q in behaviour.requests if q["path"] == "/fhir/Observation")
    assert "patient=p1" in obs_query and "_sort=-date" in obs_query
    trace = live.store.records_for(body["hookInstance"])[0].body
    assert set(trace["prefetch"].values()) == {"fetched"}


def test_present_keys_are_not_refetched(fhir_live: Any) -> None:
    live, base, behaviour = fhir_live
    body = _absent(base, behaviour, keep=("patient", "conditions", "orders", "careplans"))
    assert live.post(PV, body).status_code == 200
    assert [q["path"] for q in behaviour.requests] == ["/fhir/Observation"]


def test_null_key_is_no_data_and_not_fetched(fhir_live: Any) -> None:
    live, base, behaviour = fhir_live
    body = _absent(base, behaviour, keep=("patient", "conditions", "orders", "careplans"))
    body["prefetch"]["observations"] = None
    r = live.post(PV, body)
    assert r.status_code == 200 and r.json() == {"cards": []}
    assert behaviour.requests == []


def test_absent_key_without_fhir_server_is_412(live: LiveService) -> None:
    body = hook_request("patient-view", "p1")
    body["prefetch"].pop("observations")
    r = live.post(PV, body)
    assert r.status_code == 412
    oo = r.json()
    assert oo["resourceType"] == "OperationOutcome"
    assert oo["issue"][0]["expression"] == ["prefetch.observations"]
    [record] = live.store.records_for(body["hookInstance"])
    assert record.body["outcome"]["status"] == 412


def _outcome(live: LiveService, body: dict[str, Any]) -> dict[str, Any]:
    [record] = live.store.records_for(body["hookInstance"])
    outcome: dict[str, Any] = record.body["outcome"]
    return outcome


def test_failing_fhir_server_is_412_and_only_the_trace_says_why(fhir_live: Any) -> None:
    live, base, behaviour = fhir_live
    body = _absent(base, behaviour)
    behaviour.fail_status = 503
    r = live.post(PV, body)
    assert r.status_code == 412
    diagnostics = r.json()["issue"][0]["diagnostics"]
    assert "could not be obtained" in diagnostics
    assert "503" not in diagnostics and "127.0.0.1" not in diagnostics
    assert "503" in _outcome(live, body)["detail"]


def test_slow_fhir_server_gives_412_within_the_budget(fhir_live: Any) -> None:
    live, base, behaviour = fhir_live
    body = _absent(base, behaviour)
    behaviour.delay_s = 5.0
    started = time.monotonic()
    r = live.post(PV, body)
    elapsed = time.monotonic() - started
    assert r.status_code == 412
    assert elapsed < 3.0  # budget is 1 s in the test settings
    assert "within 1 s" in _outcome(live, body)["detail"]


def test_pagination_is_followed(fhir_live: Any) -> None:
    live, base, behaviour = fhir_live
    body = _absent(base, behaviour)
    behaviour.page_size = 2
    r = live.post(PV, body)
    assert r.status_code == 200
    obs_pages = [q for q in behaviour.requests if q["path"] == "/fhir/Observation"]
    n_obs = len(demo_observations("p1"))
    assert len(obs_pages) == -(-n_obs // 2)  # 2 per page
    trace = live.store.records_for(body["hookInstance"])[0].body
    assert len(trace["inputs"]["used"]) == len(demo_observations("p1"))


def test_page_cap_gives_412(service_factory: Any, fhir_server: Any) -> None:
    base, behaviour = fhir_server
    live = service_factory(fhir_servers=(base,), fhir={"max_pages": 2})
    body = _absent(base, behaviour)
    behaviour.page_size = 2
    assert live.post(PV, body).status_code == 412


def test_next_link_to_another_host_is_not_followed(fhir_live: Any) -> None:
    live, base, behaviour = fhir_live
    body = _absent(base, behaviour)
    behaviour.page_size = 2
    behaviour.next_link_base = "http://127.0.0.2:9"
    r = live.post(PV, body)
    assert r.status_code == 412
    assert "refusing to follow" in _outcome(live, body)["detail"]


def test_paginated_prefetch_is_completed_from_the_server(fhir_live: Any) -> None:
    live, base, behaviour = fhir_live
    body = _absent(base, behaviour, keep=("patient", "conditions"))
    all_obs = demo_observations("p1")
    behaviour.resources["Observation"] = all_obs
    behaviour.page_size = 3
    first = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": o} for o in all_obs[:3]],
        "link": [{"relation": "next", "url": f"{base}/Observation?_offset=3"}],
    }
    body["prefetch"]["observations"] = first
    r = live.post(PV, body)
    assert r.status_code == 200
    trace = live.store.records_for(body["hookInstance"])[0].body
    assert trace["prefetch"]["observations"] == "provided (pages followed)"
    assert len(trace["inputs"]["used"]) == len(demo_observations("p1"))


@pytest.mark.parametrize("where", ["value", "entry"])
def test_operation_outcome_in_prefetch_triggers_a_fetch(fhir_live: Any, where: str) -> None:
    live, base, behaviour = fhir_live
    body = _absent(base, behaviour, keep=("patient", "conditions", "orders", "careplans"))
    oo = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "timeout"}]}
    body["prefetch"]["observations"] = (
        oo
        if where == "value"
        else {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": oo}]}
    )
    r = live.post(PV, body)
    assert r.status_code == 200
    assert [q["path"] for q in behaviour.requests] == ["/fhir/Observation"]
    trace = live.store.records_for(body["hookInstance"])[0].body
    assert "OperationOutcome" in trace["notes"][0]


def test_optional_orders_that_cannot_be_fetched_do_not_fail_the_call(fhir_live: Any) -> None:
    live, base, behaviour = fhir_live
    body = _absent(base, behaviour, keep=("patient", "observations", "conditions"))
    behaviour.fail_status = 500
    r = live.post(PV, body)
    assert r.status_code == 200
    trace = live.store.records_for(body["hookInstance"])[0].body
    assert trace["prefetch"]["orders"].startswith("unavailable (optional)")
    assert trace["prefetch"]["careplans"].startswith("unavailable (optional)")
