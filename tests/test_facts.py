from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

from cds.examples import demo_observations
from cds.fhir.codes import PLANS_SYSTEM
from cds.fhir.diagnoses import DiagnosisCode, ValueSet
from cds.fhir.facts import ClinicalData, FactPolicy, build_facts
from cds.fhir.observations import metric_observation
from cds.fhir.parse import (
    Condition,
    Observation,
    Patient,
    ServiceRequest,
    _lenient_twin,
    parse_entries,
    validate,
)

NOW = datetime(2026, 11, 23, 12, tzinfo=UTC)
PFP = DiagnosisCode("http://hl7.org/fhir/sid/icd-10-cm", "M22.2", prefix=True, laterality=6)
POLICY = FactPolicy(
    min_strides=7, max_age_days=90, value_sets={"pfp": ValueSet("pfp", "PFP", (PFP,))}
)


def obs(
    code: str,
    value: Any,
    unit: str | None = None,
    side: Any = None,
    days: float = 1,
    strides: int | None = None,
) -> dict[str, Any]:
    return metric_observation(
        "p", code, value, unit, side=side, strides=strides, effective=NOW - timedelta(days=days),
        gait_mode="running" if strides is not None else None,
    )  # fmt: skip


def facts(*raw: dict[str, Any], **kw: Any) -> Any:
    parsed, bad = parse_entries(list(raw), "test", Observation)
    return build_facts(ClinicalData(observations=parsed, unreadable=bad, **kw), POLICY, now=NOW)


def test_pelvic_drop_is_attributed_to_the_stance_side_body_site() -> None:
    f = facts(obs("contralateral-pelvic-drop", 7.0, "deg", "right", strides=10))
    assert f.sides["right"]["contralateral_pelvic_drop"] == 7.0
    assert "contralateral_pelvic_drop" not in f.sides["left"]
    assert f.sides["right"]["contralateral_pelvic_drop__present"] == 1


def test_units_are_converted_and_asymmetry_and_lsi_derived() -> None:
    f = facts(
        obs("hip-abduction-strength", 1.0, "N.m/kg", "left"),
        obs("hip-abduction-strength", 1.25, "N.m/kg", "right"),
        obs("peak-hip-adduction", 0.349066, "rad", "left", strides=9),
        obs("peak-hip-adduction", 15, "deg", "right", strides=9),
    )
    assert f.sides["left"]["hip_abduction_strength__lsi"] == 80.0
    assert f.sides["right"]["hip_abduction_strength__lsi"] == 125.0
    assert f.sides["left"]["peak_hip_adduction"] == pytest.approx(20.0, abs=1e-3)
    assert f.sides["left"]["peak_hip_adduction__asym"] == pytest.approx(5.0, abs=1e-3)


def test_percent_body_weight_is_a_different_field_from_torque() -> None:
    f = facts(obs("hip-abduction-strength", 20, "%", "left"))
    assert f.sides["left"]["hip_abduction_strength__force_per_mass"] == pytest.approx(1.96133)
    assert "hip_abduction_strength" not in f.sides["left"]


def test_latest_observation_wins_and_the_previous_usable_one_is_the_baseline() -> None:
    f = facts(
        obs("contralateral-pelvic-drop", 7.0, "deg", "left", days=40, strides=9),
        obs("contralateral-pelvic-drop", 9.0, "deg", "left", days=10, strides=3),
        obs("contralateral-pelvic-drop", 4.0, "deg", "left", days=2, strides=9),
    )
    left = f.sides["left"]
    assert left["contralateral_pelvic_drop"] == 4.0
    # the 3-stride capture is too short to be a baseline; the 40-day-old one is used
    assert left["contralateral_pelvic_drop__increase"] == -3.0
    assert left["contralateral_pelvic_drop__change"] == 3.0
    assert [r.role for r in f.used] == [None, "baseline"]
    assert [e.reason for e in f.excluded] == ["too few strides (3)"]


def test_a_single_capture_has_no_change() -> None:
    f = facts(obs("contralateral-pelvic-drop", 4.0, "deg", "left", strides=9))
    assert "contralateral_pelvic_drop__change" not in f.sides["left"]


def test_an_active_order_shortens_the_freshness_window() -> None:
    policy = FactPolicy(min_strides=7, max_age_days=90, max_age_in_care_days=30)
    parsed, _ = parse_entries(
        [obs("contralateral-pelvic-drop", 6.0, "deg", "left", days=45, strides=9)], "t", Observation
    )
    order = validate(
        ServiceRequest,
        {
            "resourceType": "ServiceRequest",
            "status": "active",
            "intent": "order",
            "authoredOn": (NOW - timedelta(days=50)).date().isoformat(),
            "code": {"coding": [{"system": PLANS_SYSTEM, "code": "hip-strengthening-program"}]},
        },
    )
    out_of_care = build_facts(ClinicalData(observations=parsed), policy, now=NOW)
    in_care = build_facts(ClinicalData(observations=parsed, orders=[order]), policy, now=NOW)
    assert out_of_care.sides["left"]["contralateral_pelvic_drop"] == 6.0
    assert "contralateral_pelvic_drop" not in in_care.sides["left"]
    assert in_care.sides["left"]["q_stale"] == 1
    assert in_care.patient["order_active_hip_strengthening_program__days"] == 50.5


def test_raw_force_without_body_mass_is_flagged_unnormalised() -> None:
    f = facts(obs("hip-abduction-strength", 180, "N", "left"))
    assert f.sides["left"]["q_unnormalised"] == 1
    assert "q_unnormalised" not in f.sides["right"]


@pytest.mark.parametrize(
    ("raw", "reason", "flag"),
    [
        (
            obs("contralateral-pelvic-drop", 7.0, "deg", "left", strides=6),
            "too few strides",
            "low_strides",
        ),
        (
            obs("contralateral-pelvic-drop", 7.0, "deg", "left", days=120, strides=10),
            "stale",
            "stale",
        ),
        (
            obs("contralateral-pelvic-drop", 7.0, "cm", "left", strides=10),
            "does not fit",
            "excluded",
        ),
        (obs("contralateral-pelvic-drop", 7.0, "deg", None, strides=10), "laterality", "excluded"),
    ],
)
def test_quality_gates_exclude_values(raw: dict[str, Any], reason: str, flag: str) -> None:
    f = facts(raw)
    assert "contralateral_pelvic_drop" not in f.sides["left"]
    assert reason in f.excluded[0].reason
    assert f.patient[f"q_{flag}"] == 1


def test_entered_in_error_and_unknown_codes_are_excluded() -> None:
    bad = obs("cadence", 170, "/min")
    bad["status"] = "entered-in-error"
    foreign = obs("cadence", 170, "/min")
    foreign["code"]["coding"][0]["system"] = "http://loinc.org"
    f = facts(bad, foreign)
    assert "cadence" not in f.patient
    assert len(f.excluded) == 2


def test_unreadable_observation_counts_and_is_listed() -> None:
    f = facts({"resourceType": "Observation", "id": "x", "status": "final"})
    assert f.patient["q_unreadable"] == 1
    assert f.excluded[0].resource == "Observation/x"
    assert "unreadable" in f.excluded[0].reason


def test_context_age_diagnoses_and_orders() -> None:
    patient = validate(Patient, {"resourceType": "Patient", "birthDate": "2000-11-24"})
    cond = validate(
        Condition,
        {
            "resourceType": "Condition",
            "clinicalStatus": {"coding": [{"code": "active"}]},
            "code": {
                "coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "M22.2X1"}]
            },
        },
    )
    resolved = validate(
        Condition,
        {
            "resourceType": "Condition",
            "clinicalStatus": {"coding": [{"code": "resolved"}]},
            "code": {
                "coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "M22.2X2"}]
            },
        },
    )
    f = build_facts(ClinicalData(patient=patient, conditions=[resolved]), POLICY, now=NOW)
    assert "dx_pfp" not in f.patient
    assert f.patient["age_years"] == 25
    f = build_facts(ClinicalData(patient=patient, conditions=[cond]), POLICY, now=NOW)
    assert f.patient["dx_pfp"] == 1 and f.sides["left"]["dx_pfp"] == 1
    # M22.2X1: the right knee (6th character), so the right side's fact holds it
    assert f.sides["right"]["dx_pfp__here"] == 1 and f.sides["left"]["dx_pfp__there"] == 1


def test_whole_body_metrics_reach_every_fact() -> None:
    f = facts(obs("cadence", 2.9, "/s", strides=10))
    assert f.patient["cadence"] == pytest.approx(174.0)
    assert f.sides["left"]["cadence"] == pytest.approx(174.0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11", datetime(2026, 11, 1, tzinfo=UTC)),
        ("2026", datetime(2026, 1, 1, tzinfo=UTC)),
        ("2026-11-20", datetime(2026, 11, 20, tzinfo=UTC)),
        ("2026-11-20T10:00:00Z", datetime(2026, 11, 20, 10, tzinfo=UTC)),
        ("2026-11-20T10:00:00+02:00", datetime(2026, 11, 20, 8, tzinfo=UTC)),
    ],
)
def test_fhir_partial_and_full_datetimes_are_read(text: str, expected: datetime) -> None:
    raw = obs("cadence", 170, "/min")
    raw["effectiveDateTime"] = text
    parsed = validate(Observation, raw)
    assert parsed.effective == expected


def test_an_unparseable_date_makes_the_observation_unreadable() -> None:
    raw = obs("cadence", 170, "/min")
    raw["effectiveDateTime"] = "last tuesday"
    f = facts(raw)
    assert f.patient["q_unreadable"] == 1
    assert "effectiveDateTime" in f.excluded[0].reason


@pytest.mark.parametrize(
    ("path", "bad", "element"),
    [
        (("code",), "pelvic drop", "CodeableConcept"),
        (("bodySite", "coding", 0), "right hip", "Coding"),
        (("component", 0), 12, "ObservationComponent"),
        (("valueQuantity",), [7.5], "Quantity"),
        (("effectivePeriod",), "last week", "Period"),
    ],
)
def test_an_element_of_the_wrong_shape_is_named_by_its_fhir_type(
    path: tuple[str | int, ...], bad: Any, element: str
) -> None:
    raw = obs("contralateral-pelvic-drop", 7.5, "deg", side="right", strides=10)
    raw.pop("effectiveDateTime")
    raw["effectivePeriod"] = {}
    *parents, last = path
    target: Any = raw
    for step in parents:
        target = target[step]
    target[last] = bad
    f = facts(raw)
    where = ".".join(map(str, path))
    assert f"{where}: Input should be a valid dictionary or instance of {element}" in (
        f.excluded[0].reason or ""
    )


def test_a_period_gives_the_measurement_time_of_an_observation() -> None:
    raw = obs("cadence", 170, "/min")
    raw.pop("effectiveDateTime")
    raw["effectivePeriod"] = {"start": "2026-11-20T10:00:00Z", "end": "2026-11-20T10:05:00Z"}
    assert validate(Observation, raw).effective == datetime(2026, 11, 20, 10, 5, tzinfo=UTC)
    raw["effectivePeriod"] = {"start": "2026-11-20T10:00:00Z"}
    assert validate(Observation, raw).effective == datetime(2026, 11, 20, 10, tzinfo=UTC)


def _lenient(raw: dict[str, Any]) -> Observation:
    """An Observation read the way msgspec's refusals are: by pydantic, then converted."""
    return msgspec.convert(validate(_lenient_twin(Observation), raw), Observation, strict=False)


def test_msgspec_and_the_lenient_path_read_an_observation_alike() -> None:
    """Every demo Observation (each metric, side, component and unit) and variants of
    the elements' types give the same Observation on both paths."""
    variants = []
    for raw in demo_observations("p", days_ago=2):
        variants.append(raw)
        variants.append({**raw, "effectiveDateTime": "2026-11-20T10:00:00.123Z"})
        variants.append({**raw, "issued": "2026-11-20T10:00:00+05:30", "id": "x"})
        if "valueQuantity" in raw:
            variants.append({**raw, "valueQuantity": {**raw["valueQuantity"], "value": 3}})
    for raw in variants:
        fast = msgspec.convert(raw, Observation)
        assert fast == _lenient(raw), raw
        assert validate(Observation, raw) == fast


@pytest.mark.parametrize(
    ("element", "sent", "read"),
    [
        ("effectiveDateTime", "2026-11-20T10:00:00", datetime(2026, 11, 20, 10, tzinfo=UTC)),
        ("effectiveDateTime", "2026-11", datetime(2026, 11, 1, tzinfo=UTC)),
        ("valueQuantity", {"value": "170", "code": "/min"}, {"value": 170.0, "code": "/min"}),
        ("valueBoolean", "true", True),
    ],
)
def test_what_msgspec_refuses_is_read_by_the_lenient_path(
    element: str, sent: Any, read: Any
) -> None:
    raw = {**obs("cadence", 170, "/min"), element: sent}
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert(raw, Observation)
    assert getattr(validate(Observation, raw), element) == read
