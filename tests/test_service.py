"""The service's behaviour, called in-process with signed JWTs: the app with its
lifespan, store and packs, through httpx's ASGITransport (no port, no server
thread), one for the module. Most service tests run so (``service_factory`` starts
the app in-process unless a test asks for ``real_port=True``); what only a real
server shows is tested over a loopback port: connection limits and uvicorn's headers
(test_security), hot reload under load, the viewer in a browser, two worker
processes sharing the replay cache (test_auth_e2e), SIGTERM and JSON logs
(test_operations) and the scale-out (test_scale_out)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from cds.examples import demo_observations, hook_request, searchset
from tests.cardcheck import assert_valid_response
from tests.conftest import LiveService

PV = "runform-patient-view"
OS = "runform-order-select"
OSIGN = "runform-order-sign"


@pytest.fixture(scope="module")
def live(in_process_live: LiveService) -> LiveService:
    """The service, in-process (no port; its real-port tests are test_auth_e2e and others)."""
    return in_process_live


def _plans(card: dict[str, Any]) -> set[str]:
    """The plan codes a card's suggestions would order."""
    return {
        a["resource"]["code"]["coding"][0]["code"]
        for s in card["suggestions"]
        for a in s["actions"]
    }


def _rules(live: LiveService, hook_instance: str) -> list[str]:
    records = live.store.records_for(hook_instance)
    return [r["rule_id"] for r in records[0].body["rules_fired"] if not r.get("suppressed_by")]


def test_discovery_lists_three_services_with_2_0_prefetch(live: LiveService) -> None:
    r = live.client.discovery()
    assert r.status_code == 200
    services = {s["hook"]: s for s in r.json()["services"]}
    assert set(services) == {"patient-view", "order-select", "order-sign"}
    for s in services.values():
        assert s["id"] and s["title"] and s["description"]
        for template in s["prefetch"].values():
            tokens = [t.split("}}")[0] for t in template.split("{{")[1:]]
            assert tokens and all(t == "context.patientId" for t in tokens)
            assert "today()" not in template


def test_patient_view_recommends_strength_and_gait_retraining(live: LiveService) -> None:
    body = hook_request("patient-view", "p1")
    r = live.post(PV, body)
    assert r.status_code == 200, r.text
    payload = r.json()
    assert_valid_response(payload)
    [card] = payload["cards"]
    assert card["indicator"] == "warning"
    assert "right" in card["summary"]
    assert _plans(card) == {"hip-strengthening-program", "gait-retraining-video-feedback"}
    assert card["source"]["url"] == "https://doi.org/10.2519/jospt.2011.3470"
    # evidence per recommendation and diagnosis (this runner has patellofemoral pain)
    assert "gait retraining: C" in card["detail"]
    assert "hip and knee exercise: A" in card["detail"]
    assert "clinic-configured, not validated" in card["detail"]
    assert _rules(live, body["hookInstance"]) == [
        "r1-hip-drop-symptomatic",
        "r7-cadence-alternative",
        "r9-education",
    ]


def test_order_select_strengthening_alone_warns_and_suggests_retraining(live: LiveService) -> None:
    body = hook_request("order-select", "p1")
    r = live.post(OS, body)
    assert r.status_code == 200, r.text
    assert_valid_response(r.json())
    [card] = r.json()["cards"]
    assert card["indicator"] == "warning"
    assert "unlikely to change running mechanics" in card["summary"]
    [suggestion] = card["suggestions"]
    [action] = suggestion["actions"]
    assert action["resource"]["resourceType"] == "ServiceRequest"
    assert action["resource"]["code"]["coding"][0]["code"] == "gait-retraining-video-feedback"


def test_order_sign_with_gait_retraining_already_ordered_gives_no_warning(
    live: LiveService,
) -> None:
    from cds.examples import strengthening_order

    retrain = {
        **strengthening_order("p1"),
        "id": "draft-retrain",
        "code": {
            "coding": [
                {
                    "system": "http://runform-cds.org/fhir/CodeSystem/plans",
                    "code": "gait-retraining-video-feedback",
                }
            ]
        },
    }
    body = hook_request("order-sign", "p1", draft_orders=[strengthening_order("p1"), retrain])
    r = live.post(OSIGN, body)
    assert r.status_code == 200
    assert r.json() == {"cards": []}


def test_run_form_impairment_without_weakness_targets_gait_retraining(live: LiveService) -> None:
    obs = demo_observations("p2", right_abduction=1.7)
    r = live.post(PV, hook_request("patient-view", "p2", observations=obs))
    [card] = r.json()["cards"]
    assert card["indicator"] == "info"
    assert "gait retraining" in card["summary"]
    assert _plans(card) == {"gait-retraining-video-feedback"}


def test_weakness_without_impairment_gives_a_strengthening_plan_to_file(live: LiveService) -> None:
    obs = [
        o
        for o in demo_observations("p3", right_pelvic_drop=2.9)
        if o["code"]["coding"][0]["code"] != "peak-hip-adduction"
    ]
    r = live.post(PV, hook_request("patient-view", "p3", observations=obs))
    assert r.status_code == 200
    assert_valid_response(r.json())
    [card] = r.json()["cards"]
    [action] = card["suggestions"][0]["actions"]
    request = action["resource"]
    assert request["resourceType"] == "ServiceRequest"  # the same resource on every card
    assert request["reasonReference"] == [{"reference": "Condition/p3-pfp"}]
    assert request["bodySite"][0]["coding"][0]["code"] == "287579007"  # right hip
    assert request["occurrenceTiming"]["repeat"] == {
        "count": 18, "frequency": 3, "period": 1.0, "periodUnit": "wk",
    }  # fmt: skip
    assert request["performerType"]["coding"][0]["code"] == "36682004"
    assert "side plank" in request["patientInstruction"]
    assert "Pain rule" in request["patientInstruction"]


def test_too_few_strides_asks_for_remeasurement_and_no_plan(live: LiveService) -> None:
    obs = demo_observations("p4", strides=6)
    r = live.post(PV, hook_request("patient-view", "p4", observations=obs))
    cards = r.json()["cards"]
    assert [c["indicator"] for c in cards] == ["info"]
    assert "re-capture" in cards[0]["summary"]
    assert "suggestions" not in cards[0]


def test_stale_measurements_ask_for_remeasurement(live: LiveService) -> None:
    obs = demo_observations("p5", days_ago=200)
    body = hook_request("patient-view", "p5", observations=obs)
    cards = live.post(PV, body).json()["cards"]
    assert len(cards) == 1 and "stale" in cards[0]["summary"]
    excluded = live.store.records_for(body["hookInstance"])[0].body["inputs"]["excluded"]
    assert all(e["reason"].startswith("stale") for e in excluded)


def test_under_18_routes_to_clinician_without_plan(live: LiveService) -> None:
    body = hook_request("patient-view", "p6", age_years=16)
    cards = live.post(PV, body).json()["cards"]
    assert len(cards) == 1
    assert cards[0]["indicator"] == "warning" and "route to clinician" in cards[0]["summary"]
    fired = live.store.records_for(body["hookInstance"])[0].body["rules_fired"]
    suppressed = {r["rule_id"]: r.get("suppressed_by") for r in fired}
    assert suppressed["r1-hip-drop-symptomatic"] == "s2-under-18"


def test_unreadable_observation_is_excluded_and_reported(live: LiveService) -> None:
    obs = demo_observations("p7")
    obs.append(
        {
            "resourceType": "Observation",
            "id": "broken",
            "status": "final",
            "code": "not-a-codeable-concept",
        }
    )
    body = hook_request("patient-view", "p7", observations=obs)
    r = live.post(PV, body)
    assert r.status_code == 200
    summaries = [c["summary"] for c in r.json()["cards"]]
    assert any("could not be used" in s for s in summaries)
    assert any("PLUS gait retraining" in s for s in summaries)
    excluded = live.store.records_for(body["hookInstance"])[0].body["inputs"]["excluded"]
    assert excluded[0]["resource"] == "Observation/broken"
    assert "unreadable" in excluded[0]["reason"]


def test_mismatched_unit_is_excluded_not_used(live: LiveService) -> None:
    obs = demo_observations("p8")
    for o in obs:
        if o["code"]["coding"][0]["code"] == "contralateral-pelvic-drop":
            o["valueQuantity"].update(unit="cm", code="cm")
        if o["code"]["coding"][0]["code"] == "peak-hip-adduction":
            o["valueQuantity"].update(value=0.37, unit="rad", code="rad")  # 21.2 deg: converted
    body = hook_request("patient-view", "p8", observations=obs)
    r = live.post(PV, body)
    trace = live.store.records_for(body["hookInstance"])[0].body
    reasons = [e["reason"] for e in trace["inputs"]["excluded"]]
    assert sum("does not fit" in x for x in reasons) == 2
    used = {(u["code"], u["side"]): u["canonical"] for u in trace["inputs"]["used"] if "side" in u}
    assert used[("peak-hip-adduction", "right")] == pytest.approx(21.2, abs=0.01)
    assert "r1-hip-drop-symptomatic" in _rules(live, body["hookInstance"])
    assert any("could not be used" in c["summary"] for c in r.json()["cards"])


def test_no_diagnosis_gives_screening_info_without_orders(live: LiveService) -> None:
    obs = demo_observations("p9", running_pain=0)
    r = live.post(PV, hook_request("patient-view", "p9", observations=obs, conditions=[]))
    [card] = r.json()["cards"]
    assert card["indicator"] == "info" and "suggestions" not in card


# -- errors: 4xx with an OperationOutcome, never 5xx for bad input ---------------------


def _oo(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["severity"] == "error"
    return body


def _raw_post(live: LiveService, path: str, content: bytes) -> httpx.Response:
    url = live.url + path
    headers = {
        "Authorization": f"Bearer {live.client.signer.token(url)}",  # type: ignore[union-attr]
        "Content-Type": "application/json",
    }
    return live.client.http.post(url, content=content, headers=headers)


def test_malformed_json_is_400(live: LiveService) -> None:
    body = _oo(_raw_post(live, f"/cds-services/{PV}", b"{not json"), 400)
    assert "not valid JSON" in body["issue"][0]["diagnostics"]


@pytest.mark.parametrize(
    ("mutate", "expression"),
    [
        (lambda b: b.update(hookInstance="not-a-uuid"), "hookInstance"),
        (lambda b: b.update(hook="order-sign"), "hook"),
        (lambda b: b["context"].pop("patientId"), "context.patientId"),
        (lambda b: b["context"].update(userId=42), "context.userId"),
        (lambda b: b.update(context=[1, 2]), "context"),
        (
            lambda b: b.update(
                fhirAuthorization={
                    "access_token": "x",
                    "token_type": "Bearer",
                    "expires_in": 300,
                    "scope": "s",
                    "subject": "c",
                }
            ),
            "fhirServer",
        ),
    ],
)
def test_invalid_requests_name_the_problem(live: LiveService, mutate: Any, expression: str) -> None:
    body = hook_request("patient-view", "p1")
    mutate(body)
    oo = _oo(live.post(PV, body), 400)
    assert oo["issue"][0]["expression"] == [expression]


def test_order_select_needs_selections(live: LiveService) -> None:
    body = hook_request("order-select", "p1")
    body["context"].pop("selections")
    assert _oo(live.post(OS, body), 400)["issue"][0]["expression"] == ["context.selections"]


def test_unknown_service_is_404(live: LiveService) -> None:
    _oo(live.post("no-such-service", hook_request("patient-view", "p1")), 404)


def test_oversized_body_is_413(service_factory: Any) -> None:
    live = service_factory(server={"max_body_bytes": 2000})
    _oo(live.post(PV, hook_request("patient-view", "p1")), 413)


def test_body_not_an_object_is_400(live: LiveService) -> None:
    _oo(_raw_post(live, f"/cds-services/{PV}", b"[1,2,3]"), 400)


def test_service_keeps_working_after_bad_input(live: LiveService) -> None:
    _raw_post(live, f"/cds-services/{PV}", b"\xff\xfe garbage")
    assert live.post(PV, hook_request("patient-view", "p1")).status_code == 200


# -- traces ---------------------------------------------------------------------------


def test_trace_is_stored_with_inputs_pack_rules_and_cards(live: LiveService) -> None:
    body = hook_request("patient-view", "p1")
    cards = live.post(PV, body).json()["cards"]
    [record] = live.store.records_for(body["hookInstance"])
    t = record.body
    assert t["hook_instance"] == body["hookInstance"] and t["service"] == PV
    assert t["packs"][0]["id"] == "runform-core" and len(t["packs"][0]["sha256"]) == 64
    assert {i["code"] for i in t["inputs"]["used"]} >= {"contralateral-pelvic-drop", "cadence"}
    fired = t["rules_fired"][0]
    assert fired["matched"][0]["side"] == "right"
    assert {th["name"] for th in fired["thresholds"]} >= {"pelvic_drop_high"}
    assert [c["uuid"] for c in t["cards"]] == [c["uuid"] for c in cards]
    orders = t["prefetch"].pop("orders")
    assert t["prefetch"].pop("careplans").startswith("unavailable (optional)")
    assert t["prefetch"] == {
        "patient": "provided",
        "observations": "provided",
        "conditions": "provided",
    }
    assert orders.startswith("unavailable (optional)")


def _service_request(pid: str, plan: str, status: str) -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "id": f"{plan}-{status}",
        "status": status,
        "intent": "order",
        "subject": {"reference": f"Patient/{pid}"},
        "code": {
            "coding": [{"system": "http://runform-cds.org/fhir/CodeSystem/plans", "code": plan}]
        },
    }


def test_active_gait_retraining_order_in_the_chart_silences_the_warning(
    live: LiveService,
) -> None:
    body = hook_request("order-select", "p1")
    body["prefetch"]["orders"] = searchset(
        [_service_request("p1", "gait-retraining-video-feedback", "active")]
    )
    r = live.post(OS, body)
    assert r.status_code == 200 and r.json() == {"cards": []}


def test_an_active_strengthening_order_alone_is_not_a_draft_order(live: LiveService) -> None:
    other = {**_service_request("p1", "cadence-retraining", "draft")}
    body = hook_request("order-select", "p1", draft_orders=[other])
    body["prefetch"]["orders"] = searchset(
        [_service_request("p1", "hip-strengthening-program", "active")]
    )
    r = live.post(OS, body)
    assert r.status_code == 200 and r.json() == {"cards": []}


def test_feedback_is_recorded_once_against_the_card_trace(live: LiveService) -> None:
    body = hook_request("patient-view", "p1")
    card = live.post(PV, body).json()["cards"][0]
    item = {
        "card": card["uuid"],
        "outcome": "overridden",
        "overrideReason": {"reason": card["overrideReasons"][0], "userComment": "prefers to wait"},
        "outcomeTimestamp": "2026-11-23T10:00:00Z",
    }
    accepted = {
        "card": card["uuid"],
        "outcome": "accepted",
        "acceptedSuggestions": [{"id": card["suggestions"][0]["uuid"]}],
        "outcomeTimestamp": "2026-11-23T10:05:00Z",
    }
    for _ in range(3):
        r = live.client.feedback(PV, [item, accepted])
        assert r.status_code == 200
    kinds = [r.kind for r in live.store.records_for(body["hookInstance"])]
    assert kinds == ["trace", "feedback", "feedback"]


@pytest.mark.parametrize(
    "item",
    [
        {"card": "x", "outcome": "accepted", "outcomeTimestamp": "2026-11-23T10:00:00Z"},
        {"card": "x", "outcome": "maybe", "outcomeTimestamp": "2026-11-23T10:00:00Z"},
        {"card": "x", "outcome": "overridden", "outcomeTimestamp": "yesterday"},
        {
            "card": "x",
            "outcome": "overridden",
            "overrideReason": {},
            "outcomeTimestamp": "2026-11-23T10:00:00Z",
        },
    ],
)
def test_invalid_feedback_is_400(live: LiveService, item: dict[str, Any]) -> None:
    _oo(live.client.feedback(PV, [item]), 400)


def test_feedback_for_unknown_card_is_404_and_records_nothing(live: LiveService) -> None:
    body = hook_request("patient-view", "p1")
    card = live.post(PV, body).json()["cards"][0]
    good = {
        "card": card["uuid"],
        "outcome": "overridden",
        "overrideReason": {"userComment": "no"},
        "outcomeTimestamp": "2026-11-23T10:00:00Z",
    }
    unknown = {**good, "card": "00000000-0000-0000-0000-000000000000"}
    _oo(live.client.feedback(PV, [good, unknown]), 404)
    assert [r.kind for r in live.store.records_for(body["hookInstance"])] == ["trace"]


def test_audit_show_prints_the_trace(
    live: LiveService, capsys: pytest.CaptureFixture[str], tmp_path: Any
) -> None:
    from cds.cli import main

    body = hook_request("patient-view", "p1")
    live.post(PV, body)
    config = tmp_path / "audit.toml"
    config.write_text(f'[store]\nurl = "{live.settings.store.url}"\n')
    assert main(["audit", "show", body["hookInstance"], "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "r1-hip-drop-symptomatic on right" in out
    assert "is at least pelvic_drop_high (5 deg) [X]" in out
    assert (
        main(["audit", "show", "00000000-0000-0000-0000-000000000000", "--config", str(config)])
        == 2
    )


def test_prefetch_with_patient_none_means_no_data_not_fetch(live: LiveService) -> None:
    body = hook_request("patient-view", "p1")
    body["prefetch"]["patient"] = None
    r = live.post(PV, body)
    assert r.status_code == 200
    trace = live.store.records_for(body["hookInstance"])[0].body
    assert trace["prefetch"]["patient"].startswith("null")


def test_cards_are_json_without_nulls(live: LiveService) -> None:
    r = live.post(PV, hook_request("patient-view", "p1"))
    assert "null" not in json.dumps(r.json())


def test_small_calls_are_evaluated_on_the_event_loop_and_large_ones_on_a_thread(
    live: LiveService, monkeypatch: pytest.MonkeyPatch
) -> None:
    from benchmarks.latency import sixty_observations
    from cds.service import pipeline

    on_loop: list[bool] = []
    evaluate = pipeline._evaluate

    def spy(*args: Any) -> Any:
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:  # a worker thread runs no event loop
            on_loop.append(False)
        return evaluate(*args)

    monkeypatch.setattr(pipeline, "_evaluate", spy)
    many = [o for _ in range(5) for o in sixty_observations("p-many")]  # 300 > 250
    for i, obs in enumerate(many):
        obs["id"] = f"obs-{i}"
    answers = [
        live.post(PV, hook_request("patient-view", pid, observations=observations))
        for pid, observations in (("p-few", sixty_observations("p-few")), ("p-many", many))
    ]
    assert [r.status_code for r in answers] == [200, 200]
    assert on_loop == [True, False]
    assert all(r.json()["cards"] for r in answers)
