"""The service and the measuring commands against a real FHIR server (Medplum, on loopback).

The fetch path (nothing prefetched, part prefetched, paged answers, 4xx and 5xx),
``measure --post`` and ``strength --post`` transactions, and a patient-view call
whose prefetch an EHR filled from what was posted.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from cds.examples import demo_observations, hook_request, patient, pfp_condition, searchset
from cds.fhir.observations import metric_observation
from tests.conftest import LiveService
from tests.media import demo_video
from tests.medplum import Medplum, medplum_server

PV = "runform-patient-view"
PAGE = 10  # the server's _count cap: searches of more than this are paged


@pytest.fixture(scope="module")
def medplum_running() -> Iterator[Medplum]:
    with medplum_server(max_count=PAGE) as server:
        yield server


@pytest.fixture
def medplum(medplum_running: Medplum) -> Medplum:
    medplum_running.reset()
    return medplum_running


@pytest.fixture
def service(service_factory: Any, medplum: Medplum) -> LiveService:
    # These tests are about what is fetched, not how fast: the default budget (3 s for
    # all of a call's fetches) was at times too short for paging through the Node test
    # server on this VM in a slow spell, and the call then rightly answered 412.
    live: LiveService = service_factory(
        fhir_servers=(medplum.base,),
        client_options={"patient_search": "reference"},
        fhir={"timeout_s": 30},
    )
    return live


def _runner(medplum: Medplum, pid: str = "p1", **obs: Any) -> None:
    medplum.put(patient(pid), pfp_condition(pid), *demo_observations(pid, **obs))


def _call(live: LiveService, medplum: Medplum, pid: str = "p1", keep: tuple[str, ...] = (),
          token: str | None = None, prefetch: dict[str, Any] | None = None,
          ) -> tuple[Any, dict[str, Any]]:  # fmt: skip
    """A patient-view call that prefetches only the ``keep`` keys (from the same server),
    or all of ``prefetch``."""
    body = hook_request("patient-view", pid)
    everything = body["prefetch"] | {"orders": searchset([]), "careplans": searchset([])}
    body["prefetch"] = prefetch or {k: v for k, v in everything.items() if k in keep}
    body["fhirServer"] = medplum.base
    body["fhirAuthorization"] = {
        "access_token": token or medplum.token,
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "patient/*.read",
        "subject": "runform-cds",
    }
    medplum.forget_requests()
    return live.post(PV, body), body


def _trace(live: LiveService, body: dict[str, Any]) -> dict[str, Any]:
    trace: dict[str, Any] = live.store.records_for(body["hookInstance"])[0].body
    return trace


def _used(trace: dict[str, Any]) -> set[str]:
    """The metric codes the decision read."""
    return {str(u.get("code")) for u in trace.get("inputs", {}).get("used", [])}


def _asked(medplum: Medplum) -> list[str]:
    return [unquote(f"{r['path']}?{r['query']}") for r in medplum.requests()]


def test_nothing_prefetched_everything_is_read_from_the_server(
    service: LiveService, medplum: Medplum
) -> None:
    _runner(medplum)
    r, body = _call(service, medplum)
    assert r.status_code == 200, r.text
    assert "PLUS gait retraining" in r.json()["cards"][0]["summary"]
    asked = _asked(medplum)
    assert sorted({a.split("?")[0] for a in asked}) == [
        "/fhir/CarePlan", "/fhir/Condition", "/fhir/Observation", "/fhir/Patient/p1",
        "/fhir/ServiceRequest",
    ]  # fmt: skip
    assert any("patient=Patient/p1" in a for a in asked if a.startswith("/fhir/Observation"))
    assert {r["authorization"] for r in medplum.requests()} == {f"Bearer {medplum.token}"}
    assert set(_trace(service, body)["prefetch"].values()) == {"fetched"}


def test_a_bare_id_search_this_server_cannot_match_gives_no_plan(
    service_factory: Any, medplum: Medplum
) -> None:
    """Medplum's in-memory search matches only ``patient=Patient/ID``: with the default
    ``patient=ID`` it finds nothing, and nothing found is never read as fine."""
    live = service_factory(fhir_servers=(medplum.base,))
    _runner(medplum)
    r, body = _call(live, medplum)
    assert r.status_code == 200, r.text
    assert not any("gait retraining" in c["summary"] for c in r.json()["cards"])
    assert any("patient=p1" in a for a in _asked(medplum))
    assert "contralateral-pelvic-drop" not in _used(_trace(live, body))


def test_only_the_missing_keys_are_read(service: LiveService, medplum: Medplum) -> None:
    _runner(medplum)
    r, body = _call(service, medplum, keep=("patient", "conditions", "orders", "careplans"))
    assert r.status_code == 200, r.text
    assert "PLUS gait retraining" in r.json()["cards"][0]["summary"]
    assert {a.split("?")[0] for a in _asked(medplum)} == {"/fhir/Observation"}
    how = _trace(service, body)["prefetch"]
    assert how["observations"] == "fetched" and how["patient"] == "provided"


def _older_readings(pid: str, n: int) -> list[dict[str, Any]]:
    """``n`` cadence readings from months ago: history the search must page through."""
    when = datetime.now(UTC) - timedelta(days=200)
    return [
        metric_observation(
            pid,
            "cadence",
            160 + i % 5,
            "/min",
            effective=when - timedelta(days=i),
            strides=12,
            gait_mode="running",
            obs_id=f"old-{i}",
        )
        for i in range(n)
    ]


def test_paged_answers_are_followed_to_the_end(service: LiveService, medplum: Medplum) -> None:
    _runner(medplum)
    medplum.put(*_older_readings("p1", 40))
    total = medplum.search("Observation?patient=Patient/p1&_count=1")["total"]
    r, _ = _call(service, medplum, keep=("patient", "conditions", "orders", "careplans"))
    assert r.status_code == 200, r.text
    assert "PLUS gait retraining" in r.json()["cards"][0]["summary"]
    pages = [a for a in _asked(medplum) if a.startswith("/fhir/Observation")]
    assert len(pages) == -(-total // PAGE)  # every page, and no more
    assert all("_offset=" in p for p in pages[1:])


def test_more_pages_than_allowed_is_a_412_not_a_partial_answer(
    service_factory: Any, medplum: Medplum
) -> None:
    live = service_factory(fhir_servers=(medplum.base,), fhir={"max_pages": 2},
                           client_options={"patient_search": "reference"})  # fmt: skip
    _runner(medplum)
    medplum.put(*_older_readings("p1", 40))
    r, body = _call(live, medplum, keep=("patient", "conditions", "orders", "careplans"))
    assert r.status_code == 412, r.text
    assert "observations" in r.text
    assert "page" in str(_trace(live, body)["outcome"])


def test_a_refused_token_is_a_412_and_the_trace_says_why(
    service: LiveService, medplum: Medplum
) -> None:
    _runner(medplum)
    r, body = _call(service, medplum, token="not-the-token")
    assert r.status_code == 412, r.text
    assert "not-the-token" not in r.text
    assert "HTTP 401" in str(_trace(service, body)["outcome"])


def test_a_patient_the_server_does_not_know_holds_the_plan_back(
    service: LiveService, medplum: Medplum
) -> None:
    medplum.put(*demo_observations("p1"))  # measurements, but no Patient record (404)
    r, _ = _call(service, medplum)
    assert r.status_code == 200, r.text
    (card,) = r.json()["cards"]
    assert card["summary"].startswith("Confirm before planning")
    assert "Patient record could not be read" in card["detail"]


def test_a_server_error_on_required_data_is_a_412(service: LiveService, medplum: Medplum) -> None:
    _runner(medplum)
    medplum.fail("/fhir/Observation", 503)
    r, body = _call(service, medplum)
    assert r.status_code == 412, r.text
    assert "observations" in r.text
    assert "HTTP 503" in str(_trace(service, body)["outcome"])


def test_a_server_error_on_optional_data_is_recorded_and_the_call_goes_on(
    service: LiveService, medplum: Medplum
) -> None:
    _runner(medplum)
    medplum.fail("/fhir/CarePlan", 500)
    r, body = _call(service, medplum)
    assert r.status_code == 200, r.text
    how = _trace(service, body)["prefetch"]["careplans"]
    assert how.startswith("unavailable (optional)") and "HTTP 500" in how


# --- measure --post, strength --post, then a call whose prefetch the EHR filled -----


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "cds", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)


def _ehr_prefetch(live: LiveService, medplum: Medplum, pid: str) -> dict[str, Any]:
    """What an EHR sends: each of the service's prefetch templates, run on its server."""
    discovery = live.client.discovery().json()
    templates = next(s for s in discovery["services"] if s["id"] == PV)["prefetch"]
    out = {}
    for key, template in templates.items():
        query = template.replace("patient={{", "patient=Patient/{{")
        query = query.replace("{{context.patientId}}", pid)
        out[key] = medplum.search(query)
    return out


def test_posted_measurements_come_back_through_an_ehr_prefetch(
    service: LiveService, medplum: Medplum, tmp_path: Path
) -> None:
    pid = "p-17"
    medplum.put(patient(pid), pfp_condition(pid))
    when = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    token = ("--token", medplum.token)
    measured = _cli("measure", str(demo_video()), "--view", "side", "--patient", f"Patient/{pid}",
                    "--roi", "0,490,1768,504", "--date", when, "--no-overlay", "--quiet",
                    "--post", medplum.base, *token, cwd=tmp_path)  # fmt: skip
    assert measured.returncode == 0, measured.stderr
    plank = ("--side-plank", "62,35")
    tested = _cli("strength", "--patient", f"Patient/{pid}", "--date", when, *plank,
                  "--post", medplum.base, *token, cwd=tmp_path)  # fmt: skip
    assert tested.returncode == 0, tested.stderr
    posted = medplum.search(f"Observation?patient=Patient/{pid}&_count=100")
    assert posted["total"] == 10 + 2  # ten video metrics, a side plank per side
    assert medplum.search("Device?_count=1")["total"] >= 1  # the software that measured

    # a page each, as EHRs send them: the service follows the next links itself
    r, body = _call(service, medplum, pid, prefetch=_ehr_prefetch(service, medplum, pid))
    assert r.status_code == 200, r.text
    trace = _trace(service, body)
    assert trace["prefetch"]["observations"] == "provided (pages followed)"
    assert {"provided"} == set(trace["prefetch"].values()) - {"provided (pages followed)"}
    assert "side-plank-hold" in _used(trace)
    walking = {x["code"] for x in trace["inputs"]["excluded"] if x.get("why") == "walking capture"}
    assert {"cadence", "trunk-forward-lean", "overstride"} <= walking
    # each input is traced as the exact version the server holds
    ids = {e["resource"]["id"] for e in posted["entry"]}
    for record in trace["inputs"]["excluded"]:
        rtype, rid, history, version = record["resource"].split("/")
        assert (rtype, history) == ("Observation", "_history") and rid in ids and version
    # the clip is of walking: no running-form plan may come from it
    assert not any("gait retraining" in c["summary"] for c in r.json()["cards"])
