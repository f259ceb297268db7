"""The reference evaluator re-reads the Observations behind the facts with its own
metric, side and unit resolution (``cds.rules.reread``): on random Observations it
agrees with fact building field for field, and a bug planted in fact building's unit
conversion, side table or stride gate fails the decision instead of deciding a card."""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cds.errors import EngineDisagreementError
from cds.examples import patient
from cds.fhir import measurements
from cds.fhir.codes import SITE_SIDES, metrics
from cds.fhir.facts import ClinicalData, FactSet, build_facts
from cds.fhir.observations import metric_observation
from cds.fhir.parse import Observation, Patient, parse_entries, parse_resource
from cds.fhir.units import UnitError, convert, known_units
from cds.rules.compile import CompiledPack
from cds.rules.decide import decide
from cds.rules.engine import RuleEngine
from cds.rules.evaluate import canonical_value
from cds.rules.reread import check_facts, metric_fields

NOW = datetime.now(UTC)
#: units fact building and the reference evaluator both know, per dimension
_VALUES = {"angle": (0, 40), "fraction": (0, 60), "length": (0, 30), "rate": (140, 200),
           "time": (1, 120), "torque_per_mass": (0.5, 2.5), "force_per_mass": (1, 30),
           "torque": (20, 200), "force": (50, 400), "score": (0, 10)}  # fmt: skip


def _units(dim: str) -> list[str]:
    both = []
    for unit in known_units():
        try:
            convert(1.0, unit, (dim,))
            canonical_value(1.0, unit, (dim,))
        except (UnitError, ValueError):
            continue
        both.append(unit)
    return both


def _facts(observations: list[dict[str, Any]], pack: CompiledPack) -> FactSet:
    parsed, bad = parse_entries(observations, "test", Observation)
    assert not bad
    return build_facts(ClinicalData(observations=parsed), pack.policy, now=NOW)


def _random_observations(rng: random.Random) -> list[dict[str, Any]]:
    out = []
    chosen = [m for m in metrics().values() if m.group in ("run-form", "strength", "symptom")]
    for m in rng.sample(chosen, rng.randint(1, 8)):
        if m.coded:
            continue  # coded values: covered by the bundled scenarios
        dim = rng.choice([d for d in m.dimensions if d in _VALUES])
        sides = ["left", "right"] if m.lateral else [None]
        for side in rng.sample(sides, rng.randint(1, len(sides))):
            unit = rng.choice(_units(dim))
            low, high = _VALUES[dim]
            for _ in range(rng.randint(1, 3)):  # a session's trials, or earlier captures
                factor, _ = canonical_value(1.0, unit, (dim,))
                out.append(
                    metric_observation(
                        "p",
                        m.code,
                        round(rng.uniform(low, high) / factor, 3),
                        unit,
                        side=side,
                        strides=rng.choice([6, 12, 20, 30]),
                        gait_mode="running" if m.group == "run-form" else None,
                        effective=NOW - timedelta(days=rng.choice([1, 1, 2, 30, 60])),
                    )
                )
    return out


def test_fact_building_and_the_reference_agree_on_random_observations(
    core_pack: CompiledPack,
) -> None:
    rng, compared = random.Random(7), 0
    fields = metric_fields()
    for _ in range(400):
        facts = _facts(_random_observations(rng), core_pack)
        check_facts(facts, core_pack.policy)  # raises on any disagreement
        compared += sum(1 for f in facts.all_facts() for k in f if k in fields)
    assert compared > 2000


def _case(code: str, unit: str, value: float, side: str | None = "right") -> dict[str, Any]:
    return metric_observation(
        "p", code, value, unit, side=side, strides=12,
        gait_mode="running" if metrics()[code].group == "run-form" else None,
        effective=NOW - timedelta(days=1),
    )  # fmt: skip


CASES = {
    "deg": _case("contralateral-pelvic-drop", "deg", 7.5),
    "rad": _case("contralateral-pelvic-drop", "rad", 0.13),
    "N.m/kg": _case("hip-abduction-strength", "N.m/kg", 1.2),
    "%{BW}": _case("hip-abduction-strength", "%{BW}", 14.0),
    "[lbf_av]": _case("hip-abduction-strength", "[lbf_av]", 45.0),
    "s": _case("side-plank-hold", "s", 40.0),
    "h": _case("post-run-pain-duration", "h", 2.0, side=None),
}


@pytest.mark.parametrize("unit", list(CASES))
def test_a_bug_planted_in_fact_buildings_unit_conversion_is_caught(
    unit: str, core_pack: CompiledPack, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = measurements.convert

    def off(value: float, given: str, dims: tuple[str, ...]) -> tuple[float, str]:
        converted, dim = real(value, given, dims)
        return (converted * 1.01 if given == unit else converted), dim

    check_facts(_facts([CASES[unit]], core_pack), core_pack.policy)  # agrees unplanted
    monkeypatch.setattr(measurements, "convert", off)
    facts = _facts([CASES[unit]], core_pack)
    with pytest.raises(EngineDisagreementError, match="fact building and the reference"):
        decide(core_pack, RuleEngine(), facts, hook="patient-view", patient_id="p")


def test_a_bug_planted_in_fact_buildings_side_table_is_caught(
    core_pack: CompiledPack, monkeypatch: pytest.MonkeyPatch
) -> None:
    swapped = {code: ({"left": "right", "right": "left"}[s], site)
               for code, (s, site) in SITE_SIDES.items()}  # fmt: skip
    monkeypatch.setattr(measurements, "SITE_SIDES", swapped)
    facts = _facts([CASES["deg"]], core_pack)
    assert "contralateral_pelvic_drop" in facts.sides["left"]  # the planted bug took effect
    with pytest.raises(EngineDisagreementError, match="contralateral_pelvic_drop"):
        check_facts(facts, core_pack.policy)


def test_a_capture_with_too_few_strides_let_through_is_caught(
    core_pack: CompiledPack, monkeypatch: pytest.MonkeyPatch
) -> None:
    few = _case("contralateral-pelvic-drop", "deg", 9.0)
    few["component"][0]["valueQuantity"]["value"] = 3
    assert not _facts([few], core_pack).used  # the gate holds: the capture is set aside
    monkeypatch.setattr(measurements._Selector, "_too_few_strides", lambda self, r: False)
    with pytest.raises(EngineDisagreementError, match="fewer than"):
        check_facts(_facts([few], core_pack), core_pack.policy)


def test_facts_written_by_hand_have_no_observations_to_reread(core_pack: CompiledPack) -> None:
    by_hand = FactSet(patient={"kind": "patient", "cadence": 170.0}, sides={}, used=[], excluded=[])
    check_facts(by_hand, core_pack.policy)  # nothing to re-read: no error
    built = _facts([_case("cadence", "/min", 170.0, side=None)], core_pack)
    assert built.patient["cadence"] == 170.0
    built.patient["cadence"] = 171.0
    said = "cadence is 171.0 from fact building and 170.0 from the Observations"
    with pytest.raises(EngineDisagreementError, match=re.escape(said)):
        check_facts(built, core_pack.policy)


def test_every_unit_fact_building_accepts_the_reference_reads_alike() -> None:
    """Else a call with that unit would fail as a disagreement instead of being read."""
    dims = {d for m in metrics().values() if not m.coded for d in m.dimensions}
    checked = 0
    for dim in sorted(dims):
        for unit in known_units():
            try:
                theirs = convert(3.0, unit, (dim,))
            except UnitError:
                continue
            assert canonical_value(3.0, unit, (dim,)) == pytest.approx(theirs), (dim, unit)
            checked += 1
    assert checked > 30


def _capture(days_ago: float, value: float) -> dict[str, Any]:
    obs = _case("contralateral-pelvic-drop", "deg", value)
    obs["effectiveDateTime"] = (NOW - timedelta(days=days_ago)).isoformat()
    return obs


def test_a_fact_builder_that_kept_an_older_capture_is_caught(
    core_pack: CompiledPack, monkeypatch: pytest.MonkeyPatch
) -> None:
    captures = [_capture(1, 8.0), _capture(20, 5.0), _capture(40, 4.0)]
    check_facts(_facts(captures, core_pack), core_pack.policy)  # agrees unplanted
    oldest_first = lambda self, readings: [[r] for r in readings]  # noqa: E731
    monkeypatch.setattr(measurements._Selector, "_sessions", oldest_first)
    facts = _facts(captures, core_pack)
    assert facts.sides["right"]["contralateral_pelvic_drop"] == 4.0  # the planted bug took effect
    with pytest.raises(EngineDisagreementError, match="superseded, but it is newer"):
        check_facts(facts, core_pack.policy)


def test_a_fact_builder_that_used_a_stale_capture_is_caught(
    core_pack: CompiledPack, monkeypatch: pytest.MonkeyPatch
) -> None:
    stale = [_capture(400, 8.0)]
    assert not _facts(stale, core_pack).used  # the gate holds: too old to use
    real = measurements._Selector._latest
    monkeypatch.setattr(
        measurements._Selector, "_latest", lambda self, key, s, age: real(self, key, s, 1e9)
    )
    with pytest.raises(EngineDisagreementError, match="older than"):
        check_facts(_facts(stale, core_pack), core_pack.policy)


def _with_patient(raw: dict[str, Any], pack: CompiledPack) -> FactSet:
    parsed = parse_resource(raw, "prefetch.patient")
    assert isinstance(parsed, Patient)
    data = ClinicalData(
        patient=parsed, observations=parse_entries([CASES["deg"]], "t", Observation)[0]
    )
    return build_facts(data, pack.policy, now=NOW)


@pytest.mark.parametrize(
    "birth", [None, "2001", "2001-05", "2008-%m-%d", "2008-01-01", "1990-12-31"]
)
def test_age_and_sex_are_re_read_from_the_patient(
    core_pack: CompiledPack, birth: str | None
) -> None:
    raw: dict[str, Any] = {"resourceType": "Patient", "id": "p", "gender": "other"}
    if birth is not None:
        raw["birthDate"] = NOW.strftime(birth)  # "%m-%d": the 18th birthday is today
    check_facts(_with_patient(raw, core_pack), core_pack.policy)


def test_a_wrong_age_from_fact_building_is_caught(
    core_pack: CompiledPack, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cds.fhir import facts as fact_building

    real = fact_building._age_years
    monkeypatch.setattr(fact_building, "_age_years", lambda p, today: (real(p, today) or 0) + 1)
    facts = _with_patient(patient("p", age_years=17), core_pack)
    assert facts.patient["age_years"] == 18  # the planted bug took effect
    with pytest.raises(EngineDisagreementError, match="age_years is 18 from fact building and 17"):
        check_facts(facts, core_pack.policy)


def test_a_partial_birth_date_read_as_an_age_is_caught(
    core_pack: CompiledPack, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cds.fhir import facts as fact_building

    monkeypatch.setattr(fact_building, "_age_years", lambda p, today: 25)
    facts = _with_patient({"resourceType": "Patient", "id": "p", "birthDate": "2001"}, core_pack)
    with pytest.raises(EngineDisagreementError, match="age_unknown"):
        check_facts(facts, core_pack.policy)
