"""The controls of the clinical safety case (docs/clinical-safety.md), one test per hazard.

Scenarios in the bundled pack carry most of the evidence; these tests cover what
a scenario cannot show (the HTTP path, the card text, the FHIR suggestions, the
pack's code lists and citations) and check that every hazard has its evidence.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from fhir.resources.R4B.servicerequest import ServiceRequest

from cds.examples import demo_observations, hook_request, searchset
from cds.fhir.codes import ICD10CM_SYSTEM, SNOMED_SYSTEM
from cds.fhir.diagnoses import DiagnosisCode, ValueSet, match_conditions
from cds.fhir.facts import ClinicalData, FactPolicy, build_facts
from cds.fhir.observations import coded_component, metric_observation, quantity_component
from cds.fhir.parse import Condition, Observation, Patient, parse_entries, validate
from cds.measures.settings import MeasureSettings
from cds.rules.compile import CompiledPack
from cds.rules.decide import Decision
from cds.rules.engine import RuleEngine
from cds.rules.scenario import Scenario, ScenarioFile, decide_scenario, run_scenarios
from tests.conftest import ROOT, LiveService


@pytest.fixture(scope="module")
def live(in_process_live: LiveService) -> LiveService:
    """The service, in-process (no port; its real-port tests are test_auth_e2e and others)."""
    return in_process_live


PV = "runform-patient-view"
SAFETY_DOC = ROOT / "docs" / "clinical-safety.md"
REFERENCE = ROOT.parent / "shared" / "reference"
NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)


def _decide(core_pack: CompiledPack, given: dict[str, Any], hook: str = "patient-view") -> Decision:
    assert core_pack.scenarios is not None
    file = ScenarioFile(bases=core_pack.scenarios.bases, scenarios=[])
    scenario = Scenario.model_validate({"name": "test", "hook": hook, "given": given, "expect": []})
    return decide_scenario(core_pack, file, scenario, RuleEngine())


def _card(decision: Decision, rule: str) -> dict[str, Any]:
    record = next(f for f in decision.fired if f.rule_id == rule)
    return next(c for c in decision.cards if c["uuid"] == record.card_uuid)


def _shown(decision: Decision) -> list[str]:
    return [f.rule_id for f in decision.fired if f.card_uuid]


# -- H01-H03 age --------------------------------------------------------------------


def test_h01_paediatric_cards_cite_paediatric_sources(core_pack: CompiledPack) -> None:
    adult_trial = "10.2519/jospt.2011.3470"
    for rule_id in ("s2-under-18", "s2-possible-scfe"):
        card = core_pack.rule(rule_id).rule.card
        assert adult_trial not in (card.source.url or "")
        assert re.search(r"Patel|Sweeney|Neal", card.source.label)


def _age_on(birth: date) -> Any:
    person = validate(Patient, {"resourceType": "Patient", "birthDate": birth.isoformat()})
    return build_facts(ClinicalData(patient=person), FactPolicy(), now=NOW).patient


@pytest.mark.parametrize(
    ("birth", "age"),
    [
        (date(2008, 12, 7), 17),  # turns 18 next week
        (date(2008, 11, 30), 18),  # 18 today
        (date(2008, 12, 1), 17),  # 18 tomorrow
        (date(2008, 2, 29), 18),  # a leap-day birthday
    ],
)
def test_h03_age_is_exact_on_the_birth_date(birth: date, age: int) -> None:
    assert _age_on(birth)["age_years"] == age


@pytest.mark.parametrize("birth_date", ["2008", "2008-11"])
def test_h02_a_partial_birth_date_is_no_age(birth_date: str) -> None:
    person = validate(Patient, {"resourceType": "Patient", "birthDate": birth_date})
    facts = build_facts(ClinicalData(patient=person), FactPolicy(), now=NOW).patient
    assert facts["age_unknown"] == 1 and "age_years" not in facts


def _shown_summaries(live: LiveService, body: dict[str, Any]) -> list[str]:
    r = live.post(PV, body)
    assert r.status_code == 200, r.text
    return [c["summary"] for c in r.json()["cards"]]


def test_h02_missing_birth_date_holds_the_plan_back_end_to_end(live: LiveService) -> None:
    body = hook_request("patient-view", "h02a", age_years=None)
    summaries = _shown_summaries(live, body)
    assert len(summaries) == 1 and summaries[0].startswith("Confirm before planning")
    fired = live.store.records_for(body["hookInstance"])[0].body["rules_fired"]
    held = {r["rule_id"]: r.get("suppressed_by") for r in fired}
    assert held["r1-hip-drop-symptomatic"] == "g1-confirm-before-planning"


def test_h02_unreadable_patient_holds_the_plan_back_end_to_end(live: LiveService) -> None:
    body = hook_request("patient-view", "h02b")
    body["prefetch"]["patient"] = {"resourceType": "Patient", "id": "h02b", "birthDate": "soon"}
    [summary] = _shown_summaries(live, body)
    assert summary.startswith("Confirm before planning")
    trace = live.store.records_for(body["hookInstance"])[0].body
    assert any("unreadable" in e["reason"] for e in trace["inputs"]["excluded"])


def test_h02_patient_sent_as_null_holds_the_plan_back_end_to_end(live: LiveService) -> None:
    body = hook_request("patient-view", "h02c")
    body["prefetch"]["patient"] = None
    [summary] = _shown_summaries(live, body)
    assert summary.startswith("Confirm before planning")


def test_h14_unreadable_condition_holds_the_plan_back_end_to_end(live: LiveService) -> None:
    body = hook_request("patient-view", "h14")
    conditions = body["prefetch"]["conditions"]
    conditions["entry"].append({"resource": {"resourceType": "Condition", "code": "M54.16"}})
    r = live.post(PV, body)
    [card] = r.json()["cards"]
    assert card["summary"].startswith("Confirm before planning")
    assert "problem list could not be read" in card["detail"]
    assert "suggestions" not in card


# -- H04-H07 diagnoses --------------------------------------------------------------


def _codes(core_pack: CompiledPack, value_set: str) -> list[Any]:
    return core_pack.pack.value_sets[value_set].codes


GATES = (
    "cauda-equina",
    "fracture-or-bone-stress",
    "joint-infection",
    "malignancy",
    "acute-knee",
    "systemic-red-flag",
    "young-hip",
    "recent-lower-limb-surgery",
    "nerve-root",
    "arthroplasty",
    "pregnancy-or-postpartum",
    "inflammatory-joint-disease",
)


def test_h04_every_red_flag_category_has_icd10cm_and_snomed_codes(
    core_pack: CompiledPack,
) -> None:
    expected = {
        "cauda-equina": "G83.4",
        "fracture-or-bone-stress": "M84.3",
        "nerve-root": "M54.1",
        "arthroplasty": "Z96.64",
        "pregnancy-or-postpartum": "Z39",
        "joint-infection": "M00",
        "inflammatory-joint-disease": "M45",
        "young-hip": "M93.0",
    }
    for name, icd in expected.items():
        assert icd in {c.code for c in _codes(core_pack, name)}, name
    red_flag = core_pack.pack.findings["red_flag"].when
    assert red_flag.any  # type: ignore[union-attr]


def _listed(code: str, notes: str) -> bool:
    """Whether the notes list ``code``, alone or in a range such as `M05`-`M14`."""
    if f"`{code}" in notes:
        return True
    for low, high in re.findall(r"`([A-Z]\d\d)`\s*[\u2013-]\s*`([A-Z]\d\w)`", notes):
        if code[0] == low[0] == high[0] and low[1:3] <= code[1:3] <= high[1:3]:
            return True
    return False


def test_h05_value_sets_accept_both_code_systems_and_mark_unverified_codes(
    core_pack: CompiledPack,
) -> None:
    notes = (REFERENCE / "clinical-safety.md").read_text() if REFERENCE.exists() else None
    for name, vs in core_pack.pack.value_sets.items():
        systems = {c.system for c in vs.codes}
        assert systems == {ICD10CM_SYSTEM, SNOMED_SYSTEM}, name
        for c in vs.codes:
            if c.verified and notes is not None:
                assert _listed(c.code, notes), f"{name}: {c.code} is marked verified"
    snomed_unverified = [
        c for vs in core_pack.pack.value_sets.values() for c in vs.codes
        if c.system == SNOMED_SYSTEM and not c.verified
    ]  # fmt: skip
    assert snomed_unverified and all(c.note for c in snomed_unverified)


def _condition(code: str, **extra: Any) -> Condition:
    raw = {
        "resourceType": "Condition",
        "id": "c1",
        "clinicalStatus": {"coding": [{"code": "active"}]},
        "code": {"coding": [{"system": ICD10CM_SYSTEM, "code": code}]},
        **extra,
    }
    return validate(Condition, raw)


SURGERY = ValueSet("surgery", "Surgery", (DiagnosisCode(ICD10CM_SYSTEM, "Z47.8", prefix=True),))
PFP = ValueSet("pfp", "PFP", (DiagnosisCode(ICD10CM_SYSTEM, "M22.2", True, laterality=6),))


@pytest.mark.parametrize(
    ("extra", "state"),
    [
        ({}, "confirmed"),
        ({"verificationStatus": {"coding": [{"code": "provisional"}]}}, "possible"),
        ({"verificationStatus": {"coding": [{"code": "differential"}]}}, "possible"),
        ({"verificationStatus": {"coding": [{"code": "refuted"}]}}, "ignored"),
        ({"verificationStatus": {"coding": [{"code": "entered-in-error"}]}}, "ignored"),
        ({"clinicalStatus": {"coding": [{"code": "resolved"}]}}, "ignored"),
        ({"clinicalStatus": None}, "possible"),
    ],
)
def test_h06_diagnosis_states(extra: dict[str, Any], state: str) -> None:
    matches = match_conditions([_condition("Z47.89", **extra)], [SURGERY], NOW)
    got = "ignored" if not matches else ("confirmed" if matches[0].confirmed else "possible")
    assert got == state


def test_h07_condition_without_onset_is_possible_within_the_window() -> None:
    policy = FactPolicy(value_sets={"surgery": SURGERY})
    undated = build_facts(ClinicalData(conditions=[_condition("Z47.89")]), policy, now=NOW).patient
    assert undated["dx_surgery"] == 1 and "dx_surgery__days" not in undated
    assert undated["dx_surgery__undated_days"] == 0  # may have been today
    recorded = _condition("Z47.89", recordedDate=(NOW - timedelta(days=400)).isoformat())
    facts = build_facts(ClinicalData(conditions=[recorded]), policy, now=NOW).patient
    assert facts["dx_surgery__undated_days"] == 400  # at least 400 days ago
    onset = _condition("Z47.89", onsetDateTime=(NOW - timedelta(days=20)).isoformat())
    facts = build_facts(ClinicalData(conditions=[onset]), policy, now=NOW).patient
    assert facts["dx_surgery__days"] == 20 and "dx_surgery__undated_days" not in facts


def test_h31_laterality_from_the_icd10cm_character_and_snomed_body_site() -> None:
    policy = FactPolicy(value_sets={"pfp": PFP})
    right = build_facts(ClinicalData(conditions=[_condition("M22.2X1")]), policy, now=NOW)
    assert right.sides["right"]["dx_pfp__here"] == 1 and right.sides["left"]["dx_pfp__there"] == 1
    site = {"bodySite": [{"coding": [{"system": SNOMED_SYSTEM, "code": "7771000"}]}]}
    left = build_facts(ClinicalData(conditions=[_condition("M22.2", **site)]), policy, now=NOW)
    assert left.sides["left"]["dx_pfp__here"] == 1
    unspecified = build_facts(ClinicalData(conditions=[_condition("M22.2X9")]), policy, now=NOW)
    assert unspecified.patient["dx_pfp__unsided"] == 1
    clash = {"bodySite": [{"coding": [{"system": SNOMED_SYSTEM, "code": "7771000"}]}]}
    both = build_facts(ClinicalData(conditions=[_condition("M22.2X1", **clash)]), policy, now=NOW)
    assert both.patient["dx_pfp__unsided"] == 1  # records that disagree name no side


# -- H21 capture limits ----------------------------------------------------------------


def test_h21_the_clinic_frame_rate_limits_reach_the_service(service_factory: Any) -> None:
    live = service_factory(measures={"min_fps": {"contralateral-pelvic-drop": 100.0}})
    obs = demo_observations("h21")
    for o in obs:
        if o["code"]["coding"][0]["code"] == "contralateral-pelvic-drop":
            o["component"].append(quantity_component("frame-rate", 60, "/s"))
    body = hook_request("patient-view", "h21", observations=obs)
    assert live.post(PV, body).status_code == 200
    excluded = live.store.records_for(body["hookInstance"])[0].body["inputs"]["excluded"]
    reasons = [e["reason"] for e in excluded if e.get("code") == "contralateral-pelvic-drop"]
    assert reasons == ["filmed at 60 fps; this metric needs at least 100 fps"] * 2


def test_h21_measure_settings_and_the_service_share_one_definition() -> None:
    settings = MeasureSettings()
    limits = settings.capture_limits()
    for code in ("foot-inclination-initial-contact", "overstride", "contralateral-pelvic-drop"):
        assert settings.required_fps(code, True) == limits.required_fps(code, True)
    assert limits.required_fps("foot-inclination-initial-contact", True) == 120


# -- H29-H30 strength -----------------------------------------------------------------


def test_h29_a_norm_that_does_not_fit_is_named_on_the_card(core_pack: CompiledPack) -> None:
    decision = _decide(core_pack, {"base": "right_hip_drop", "strength_test": "isometric"})
    detail = _card(decision, "r1-hip-drop-symptomatic")["detail"]
    assert "norm not applied: isometric test; the norm is for eccentric tests" in detail


def test_h30_one_definition_of_weak_per_response(core_pack: CompiledPack) -> None:
    # 1.2 N.m/kg is within 1 SD of the norm for a woman of 30 but 73% of the other side
    decision = _decide(core_pack, {"base": "right_hip_drop"})
    assert _shown(decision) == ["r1-hip-drop-symptomatic"]
    detail = _card(decision, "r1-hip-drop-symptomatic")["detail"]
    assert "limb symmetry 73%" in detail and "weak: below -1 SD" in detail
    text = " ".join(c["detail"] for c in decision.cards).lower()
    assert "normal" not in text.replace("not normalised", "")


# -- H33-H34 plans and evidence -------------------------------------------------------------


def test_h33_plans_in_place_are_not_suggested_again(core_pack: CompiledPack) -> None:
    given = {
        "base": "right_hip_drop",
        "orders": [{"plan": "gait-retraining-video-feedback", "status": "completed"}],
    }
    card = _card(_decide(core_pack, given), "r1-hip-drop-symptomatic")
    plans = [a["resource"]["code"]["coding"][0]["code"]
             for s in card["suggestions"] for a in s["actions"]]  # fmt: skip
    assert plans == ["hip-strengthening-program"]
    assert (
        "already in place: Gait retraining with real-time video feedback (completed)"
        in (card["detail"])
    )


def _evidence(decision: Decision, rule: str) -> str:
    detail = _card(decision, rule)["detail"]
    return next(line for line in detail.splitlines() if line.startswith("**Evidence strength"))


def test_h34_evidence_grade_follows_the_diagnosis(core_pack: CompiledPack) -> None:
    pfp = _evidence(_decide(core_pack, {"base": "right_hip_drop"}), "r1-hip-drop-symptomatic")
    assert "hip and knee exercise: A" in pfp and "gait retraining: C" in pfp
    itbs = _evidence(
        _decide(core_pack, {"base": "right_hip_drop", "diagnoses": ["iliotibial-band-syndrome"]}),
        "r1-hip-drop-symptomatic",
    )
    assert "hip and knee exercise: C" in itbs and "Fredericson" in itbs
    assert ": A" not in itbs and "gait retraining: D" in itbs
    pain_only = _evidence(
        _decide(core_pack, {"base": "right_hip_drop", "diagnoses": []}), "r1-hip-drop-symptomatic"
    )
    assert "hip and knee exercise: D" in pain_only and ": A" not in pain_only


def test_h34_no_absolute_claims_in_the_pack() -> None:
    text = (ROOT / "rule_packs" / "runform-core" / "pack.yaml").read_text().lower()
    for claim in ("will not change", "does not change running", "never changes running"):
        assert claim not in text, claim


def _citations(core_pack: CompiledPack) -> list[tuple[str, str]]:
    out = []
    for r in core_pack.rules:
        card = r.rule.card
        out.append((card.source.label, card.source.url or ""))
        out += [(link.label, link.url) for link in card.links]
    return out


@pytest.mark.skipif(not REFERENCE.exists(), reason="the evidence notes are beside the checkout")
def test_h34_every_citation_is_in_the_evidence_notes(core_pack: CompiledPack) -> None:
    notes = "\n".join(p.read_text() for p in REFERENCE.glob("*.md"))
    for label, url in _citations(core_pack):
        doi = url.split("doi.org/")[-1] if "doi.org/" in url else None
        ids = re.findall(r"(?:PMC)?\d{6,}", url)
        found = (doi and doi in notes) or any(i in notes for i in ids)
        author, year = label.split()[0].rstrip(","), re.search(r"(19|20)\d\d", label)
        named = author in notes and year is not None and year.group(0) in notes
        assert found or named, f"{label} <{url}> is not in the evidence notes"


# -- H35 the engine ---------------------------------------------------------------------


def test_h35_the_fuzz_reaches_every_gate_field(core_pack: CompiledPack) -> None:
    from tests.test_engine import _fuzz_fields

    lateral, shared = _fuzz_fields(core_pack)
    fields = set(lateral) | set(shared)
    for field in (
        "age_unknown",
        "dx_cauda_equina__possible",
        "dx_recent_lower_limb_surgery__undated_days",
        "dx_patellofemoral_pain__here",
        "dx_patellofemoral_pain__unsided",
        "q_walking",
        "q_gait_mode_unknown",
        "q_trials_disagree",
        "q_conditions_unreadable",
        "q_patient_missing",
        "hip_abduction_strength__norm",
        "order_completed_hip_strengthening_program",
        "order_on_hold_gait_retraining_video_feedback",
    ):
        assert field in fields, field


# -- H37 attention -------------------------------------------------------------------------


def test_h37_cards_are_short_and_shared_notes_appear_once(core_pack: CompiledPack) -> None:
    given = {
        "base": "right_hip_drop",
        "sex": "male",
        "measures": {
            "foot-inclination-initial-contact": {"left": 8, "right": 18},
            "overstride": {"left": 8, "right": 18},
            "side-plank-hold": {"left": 60, "right": 40},
        },
    }
    decision = _decide(core_pack, given)
    assert len(decision.cards) == 3
    details = [c["detail"] for c in decision.cards]
    education = "education alone was comparable"
    population = "The key retraining trials enrolled women"
    assert sum(education in d for d in details) == 1
    assert sum(population in d for d in details) == 1
    # the population note's effect stays on every card it attaches to (D cannot go lower)
    lowered = [r for r in _shown(decision) if "lowered from" in _card(decision, r)["detail"]]
    assert lowered == ["r1-hip-drop-symptomatic", "r8-side-plank-deficit"]
    for detail in details:
        body, footer = detail.split("\n\n---\n")
        assert len(body.splitlines()) <= 16, body
        assert "clinic-configured" not in body and "`r" not in body
        assert "Rules:" in footer


# -- H39 plans that can be filed --------------------------------------------------------------


def test_h39_every_suggestion_is_complete_and_valid_r4(core_pack: CompiledPack) -> None:
    assert core_pack.scenarios is not None
    seen: set[str] = set()
    for scenario in core_pack.scenarios.scenarios:
        decision = decide_scenario(core_pack, core_pack.scenarios, scenario, RuleEngine())
        for card in decision.cards:
            for s in card.get("suggestions", []):
                for a in s["actions"]:
                    request = a["resource"]
                    validate(ServiceRequest, request)
                    plan = request["code"]["coding"][0]["code"]
                    seen.add(plan)
                    assert request["patientInstruction"] and request["note"]
                    if plan in ("clinician-review", "running-load-education"):
                        continue
                    assert request["occurrenceTiming"]["repeat"]["count"] >= 8
                    assert request["performerType"]["coding"][0]["code"] == "36682004"
                    assert request.get("reasonReference"), (scenario.name, plan)
                    if plan != "cadence-retraining":
                        assert request["bodySite"], (scenario.name, plan)
    assert seen >= {
        "hip-strengthening-program",
        "gait-retraining-video-feedback",
        "cadence-retraining",
        "single-leg-squat-training",
        "clinician-review",
        "running-load-education",
    }


def test_h39_the_retraining_plan_names_target_side_cue_fading_and_home_practice(
    core_pack: CompiledPack,
) -> None:
    card = _card(_decide(core_pack, {"base": "right_hip_drop"}), "r1-hip-drop-symptomatic")
    [retraining] = [
        a["resource"] for s in card["suggestions"] for a in s["actions"]
        if a["resource"]["code"]["coding"][0]["code"] == "gait-retraining-video-feedback"
    ]  # fmt: skip
    text = retraining["patientInstruction"]
    for part in (
        "Target: right stance",
        "pelvic drop (now 7.5 deg)",
        "knees apart",
        "Fading",
        "sessions 5-8",
        "Home practice",
        "15 minutes rising to 30",
        "physiotherapist",
    ):
        assert part in text, part  # fmt: skip
    assert retraining["occurrenceTiming"]["repeat"] == {
        "count": 8, "frequency": 4, "period": 1.0, "periodUnit": "wk",
    }  # fmt: skip


# -- the log itself -------------------------------------------------------------------------------


def test_every_hazard_has_a_scenario_or_a_test(core_pack: CompiledPack) -> None:
    hazards = re.findall(r"^\| (H\d\d) \|", SAFETY_DOC.read_text(), flags=re.M)
    assert len(hazards) >= 39 and len(set(hazards)) == len(hazards)
    assert core_pack.scenarios is not None
    scenario_ids = {s.name.split()[0] for s in core_pack.scenarios.scenarios}
    tests = "\n".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py"))
    for h in hazards:
        named_test = re.search(rf"def test_{h.lower()}_", tests)
        evidence_row = re.search(rf"^\| {h} \|.*\| ([^|]*) \|$", SAFETY_DOC.read_text(), re.M)
        assert evidence_row is not None
        cited_tests = re.findall(r"`(test_\w+)`", evidence_row.group(1))
        assert h in scenario_ids or named_test or cited_tests, h
        for name in cited_tests:
            assert f"def {name}(" in tests, f"{h} cites {name}, which does not exist"


def test_the_bundled_scenarios_pass_and_at_least_40_tell_a_hazard_story(
    core_pack: CompiledPack,
) -> None:
    assert core_pack.scenarios is not None
    results = run_scenarios(core_pack, core_pack.scenarios)
    assert all(r.passed for r in results), [r.name for r in results if not r.passed]
    stories = [s for s in core_pack.scenarios.scenarios if re.match(r"H\d\d ", s.name)]
    assert len(stories) >= 40


def test_the_gait_mode_component_is_what_measure_writes() -> None:
    """The service reads the same component measure writes (see test_measures_cli)."""
    obs = metric_observation(
        "p", "overstride", 12.0, "%", effective=NOW, side="left", strides=9, gait_mode="walking"
    )
    obs["component"].append(coded_component("capture-view", "side"))
    parsed, _ = parse_entries([obs], "t", Observation)
    facts = build_facts(ClinicalData(observations=parsed), FactPolicy(), now=NOW)
    assert facts.patient["q_walking"] == 1 and "overstride" not in facts.sides["left"]


def test_searchset_of_conditions_with_an_error_outcome_is_not_read_as_empty(
    live: LiveService,
) -> None:
    """A Bundle carrying an error OperationOutcome is refetched, never read as no conditions."""
    body = hook_request("patient-view", "h14b")
    oo = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "timeout"}]}
    body["prefetch"]["conditions"] = searchset([oo])
    r = live.post(PV, body)
    assert r.status_code == 412  # no fhirServer to refetch from: the call is refused
