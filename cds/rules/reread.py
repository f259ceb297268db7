"""The reference evaluator's own reading of the Observations behind the facts.

Fact building turns Observations into fact fields: it resolves each one's metric,
side and unit, converts its value, averages the trials of a session and derives
the change since the baseline, the left/right asymmetry and the limb symmetry
index. This module does all of that again from the parsed Observations the facts
say they used, with its own side table and the reference evaluator's own unit
table, and checks that every metric field of every fact agrees. A mistake in
fact building's resolution or conversion therefore fails the call
(:class:`~cds.errors.EngineDisagreementError`) instead of deciding a card.

It also checks that no Observation used breaks a gate that must never be passed
(withdrawn, measured while walking or with real-time feedback, too few strides, older
than the pack allows), and that none set aside as superseded is newer than the
reading used in its place. It reads the Patient too: age in completed years
(unknown without a full birth date) and recorded sex. How captures are grouped
into sessions, the norm z-scores, diagnoses and orders are fact building's alone.
Field names come from :mod:`cds.fhir.fields`, the one place they are made.
"""

from __future__ import annotations

import math
from datetime import datetime
from functools import cache
from statistics import fmean
from typing import Any, NamedTuple

from cds.errors import EngineDisagreementError
from cds.fhir.codes import FINDINGS_SYSTEM, METRICS_SYSTEM, Metric, metric, metrics
from cds.fhir.facts import FactPolicy, FactSet
from cds.fhir.fields import (
    AGE,
    AGE_UNKNOWN,
    KIND,
    MEASURE_SUFFIX,
    SIDE,
    Fact,
    FactValue,
    derived_field,
    lsi_field,
    measure_field,
    present_field,
    sex_field,
)
from cds.fhir.measurements import InputRecord
from cds.fhir.parse import Coding, Observation, Patient
from cds.rules.evaluate import canonical_value

__all__ = ["check_facts", "metric_fields"]

#: SNOMED CT body structures -> side, written apart from ``cds.fhir.codes``
_SIDE_OF_SITE = {
    "287679003": "left",  # left hip region structure
    "287579007": "right",  # right hip region structure
    "82169009": "left",  # structure of left knee region
    "6757004": "right",  # structure of right knee region
}
_WITHDRAWN = {"entered-in-error", "cancelled", "registered"}
#: (fact field, side): None for a whole-body metric
Key = tuple[str, str | None]
_SIDES = ("left", "right")
#: FHIR AdministrativeGender
_SEXES = ("male", "female", "other", "unknown")


@cache
def metric_fields() -> frozenset[str]:
    """Every fact field derived from a metric's values (not its norm z-score)."""
    names = set()
    for m in metrics().values():
        names |= {lsi_field(m), present_field(m)}
        for dim in m.dimensions:
            names |= {measure_field(m, dim, k) for k in MEASURE_SUFFIX if k != "norm"}
    return frozenset(names)


@cache
def _lsi_fields() -> frozenset[str]:
    return frozenset(lsi_field(m) for m in metrics().values())


@cache
def _measured_by() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Each metric's "present" field, and the fields its values fill (one per unit
    dimension)."""
    return tuple(
        (present_field(m), tuple(m.field_for(d) for d in m.dimensions)) for m in metrics().values()
    )


def check_facts(facts: FactSet, policy: FactPolicy) -> None:
    """Re-derive the metric and patient fields of ``facts`` from the resources they were
    built from; raise :class:`EngineDisagreementError` where fact building says
    otherwise (facts written by hand, with no source, are taken as they are)."""
    if facts.source is None:
        return
    _check_patient(facts, facts.source.patient)
    used = [_reading(rec, policy) for rec in facts.used]
    _check_newest(used, facts, policy)
    mine = _facts(*_values(used))
    fields = metric_fields()
    for fact in facts.all_facts():
        where = str(fact.get(SIDE, fact.get(KIND)))
        theirs = {k: v for k, v in fact.items() if k in fields}
        _compare(where, mine.get(where, {}), theirs)


def _check_patient(facts: FactSet, patient: Patient | None) -> None:
    """Age in completed years (unknown without a full birth date) and recorded sex, as
    every fact carries them."""
    birth = patient.birth_date if patient is not None else None
    expected: Fact = {}
    if birth is None or facts.as_of is None:
        expected[AGE_UNKNOWN] = 1
    else:
        today = facts.as_of.date()
        before_birthday = (today.month, today.day) < (birth.month, birth.day)
        expected[AGE] = today.year - birth.year - before_birthday
    if patient is not None and patient.gender:
        expected[sex_field(patient.gender)] = 1
    watched = {AGE, AGE_UNKNOWN, *(sex_field(s) for s in _SEXES), *expected}
    for fact in facts.all_facts():
        theirs = {k: v for k, v in fact.items() if k in watched}
        _compare(str(fact.get(SIDE, fact.get(KIND))), expected, theirs)


# -- reading one Observation ----------------------------------------------------------
def _code(coding: Coding, system: str) -> str | None:
    """The code of ``coding`` if it is one (not empty) of ``system``."""
    return (coding.get("code") or None) if coding.get("system") == system else None


def _metric_of(obs: Observation) -> Metric | None:
    coded = [code for c in obs.code.get("coding", ()) if (code := _code(c, METRICS_SYSTEM))]
    return metric(coded[0]) if coded else None


def _side_of(obs: Observation) -> str | None:
    for coding in obs.bodySite.get("coding", ()) if obs.bodySite else ():
        side = _SIDE_OF_SITE.get(_code(coding, "http://snomed.info/sct") or "")
        if side is not None:
            return side
    return None


def _component(obs: Observation, code: str) -> Any:
    for comp in obs.component:
        coding = comp["code"].get("coding", ())
        if any(_code(c, METRICS_SYSTEM) == code for c in coding):
            if (quantity := comp.get("valueQuantity")) is not None:
                return quantity.get("value")
            if (concept := comp.get("valueCodeableConcept")) is not None:
                found = [c.get("code") for c in concept.get("coding", ())]
                return found[0] if found else None
    return None


def _coded(obs: Observation) -> str | None:
    if obs.valueCodeableConcept is not None:
        for c in obs.valueCodeableConcept.get("coding", ()):
            if code := _code(c, FINDINGS_SYSTEM):
                return code
    if obs.valueBoolean is not None:
        return "positive" if obs.valueBoolean else "negative"
    return None


def _gate(obs: Observation, m: Metric, policy: FactPolicy) -> str | None:
    """Why ``obs`` must never have been used (None: it may)."""
    if obs.status in _WITHDRAWN:
        return f"status {obs.status}"
    if m.group != "run-form":
        return None
    if _component(obs, "real-time-feedback") == "given":
        return "measured with real-time feedback"
    if _component(obs, "gait-mode") == "walking":
        return "a walking capture"
    strides = _component(obs, "strides-analyzed")
    if isinstance(strides, int | float) and strides < policy.min_strides:
        return f"{strides:g} strides, fewer than {policy.min_strides:g}"
    return None


class _Read(NamedTuple):
    """One used Observation as read here: the field and side it fills, and its value."""

    rec: InputRecord
    obs: Observation
    key: Key
    value: FactValue

    @property
    def baseline(self) -> bool:
        return (self.rec.role or "").startswith("baseline")


def _reading(rec: InputRecord, policy: FactPolicy) -> _Read:
    """One used Observation, read here (raises if it should not have been used)."""
    obs = rec.observation
    m = _metric_of(obs) if obs is not None else None
    if obs is None or m is None:
        raise _disagree(f"{rec.resource} was used but is no metric Observation")
    problem = _gate(obs, m, policy)
    if problem is not None:
        raise _disagree(f"{rec.resource} was used but it is {problem}")
    side = _side_of(obs) if m.lateral else None
    if m.coded:
        code = _coded(obs)
        if code is None:
            raise _disagree(f"{rec.resource} was used but has no coded value")
        return _Read(rec, obs, (m.field_for(m.dimensions[0]), side), code)
    quantity = _quantity(obs)
    if quantity is None:
        raise _disagree(f"{rec.resource} was used but has no value with a unit")
    try:
        value, dim = canonical_value(*quantity, m.dimensions)
    except ValueError as exc:
        raise _disagree(f"{rec.resource} was used: {exc}") from None
    return _Read(rec, obs, (measure_field(m, dim), side), value)


def _quantity(obs: Observation) -> tuple[float, str] | None:
    """The value and unit of ``obs`` (None without both)."""
    q = obs.valueQuantity or {}
    value, unit = q.get("value"), q.get("code") or q.get("unit")
    return (value, unit) if value is not None and unit else None


def _field_of(obs: Observation, m: Metric) -> str | None:
    """The fact field ``obs`` fills (by its unit's dimension); None if it has none."""
    if m.coded:
        return m.field_for(m.dimensions[0])
    quantity = _quantity(obs)
    try:
        return measure_field(m, canonical_value(*quantity, m.dimensions)[1]) if quantity else None
    except ValueError:
        return None


def _check_newest(used: list[_Read], facts: FactSet, policy: FactPolicy) -> None:
    """The reading used for a field and side is the newest, and not too old."""
    allowed = max(policy.max_age_days, policy.max_age_in_care_days or 0)
    oldest_of_latest: dict[Key, tuple[datetime, str]] = {}
    for read in used:
        when = read.obs.effective
        if when is None:
            raise _disagree(f"{read.rec.resource} was used but has no measurement time")
        if read.baseline:
            continue
        earliest = oldest_of_latest.get(read.key, (when, ""))
        oldest_of_latest[read.key] = min(earliest, (when, read.rec.resource))
        if facts.as_of is not None and (facts.as_of - when).days > allowed:
            raise _disagree(f"{read.rec.resource} was used but is older than {allowed:g} days")
    for rec in facts.excluded:
        obs = rec.observation
        if obs is None or obs.effective is None or not (rec.reason or "").startswith("superseded"):
            continue
        m = _metric_of(obs)
        fld = _field_of(obs, m) if m is not None else None
        if m is None or fld is None:
            continue
        newest = oldest_of_latest.get((fld, _side_of(obs) if m.lateral else None))
        if newest is not None and obs.effective > newest[0]:
            raise _disagree(
                f"{rec.resource} was set aside as superseded, but it is newer than "
                f"{newest[1]}, which was used"
            )


# -- from readings to fields ----------------------------------------------------------
def _values(used: list[_Read]) -> tuple[dict[Key, FactValue], dict[Key, FactValue]]:
    """The latest and the baseline value per (field, side): the mean of a session's trials."""
    groups: dict[bool, dict[Key, list[FactValue]]] = {False: {}, True: {}}
    for read in used:
        groups[read.baseline].setdefault(read.key, []).append(read.value)
    latest, baseline = ({k: _mean(v) for k, v in g.items()} for g in (groups[False], groups[True]))
    return latest, baseline


def _mean(values: list[FactValue]) -> FactValue:
    numbers = [v for v in values if isinstance(v, float | int)]
    if len(numbers) != len(values):  # coded: the trials agreed on one code
        return values[0]
    return numbers[0] if len(numbers) == 1 else round(fmean(numbers), 4)


def _facts(latest: dict[Key, FactValue], baseline: dict[Key, FactValue]) -> dict[str, Fact]:
    """The metric fields of the patient fact and of each side's fact."""
    whole: Fact = {}
    own: dict[str, Fact] = {s: {} for s in _SIDES}
    for (fld, side), value in latest.items():
        target = whole if side is None else own[side]
        target[fld] = value
        base = baseline.get((fld, side))
        if isinstance(value, float | int) and isinstance(base, float | int):
            delta = round(value - base, 4)
            target[derived_field(fld, "increase")] = delta
            target[derived_field(fld, "change")] = abs(delta)
    _asymmetry(own)
    sides = {s: {**whole, **own[s]} for s in _SIDES}
    for fact in (whole, *sides.values()):
        _present(fact)
    return {"patient": whole, **sides}


def _asymmetry(own: dict[str, Fact]) -> None:
    left, right = own["left"], own["right"]
    changes = (MEASURE_SUFFIX["increase"], MEASURE_SUFFIX["change"])
    plain = {f for f in (*left, *right) if not f.endswith(changes)}
    for fld in plain:
        a, b = left.get(fld), right.get(fld)
        if isinstance(a, float) and isinstance(b, float):
            left[derived_field(fld, "asymmetry")] = round(a - b, 4)
            right[derived_field(fld, "asymmetry")] = round(b - a, 4)
    for m in metrics().values():
        for dim in m.dimensions if m.lateral else ():
            a, b = left.get(m.field_for(dim)), right.get(m.field_for(dim))
            if isinstance(a, float) and isinstance(b, float) and a > 0 and b > 0:
                left[lsi_field(m)] = round(100 * a / b, 2)
                right[lsi_field(m)] = round(100 * b / a, 2)
                break


def _present(fact: Fact) -> None:
    for present, fields in _measured_by():
        if any(f in fact for f in fields):
            fact[present] = 1


def _compare(where: str, mine: Fact, theirs: Fact) -> None:
    lsi = _lsi_fields()
    for fld in sorted(mine.keys() | theirs.keys()):
        a, b = mine.get(fld), theirs.get(fld)
        rounding = 0.011 if fld in lsi else 2e-4  # an LSI has 2 decimals
        if a is None or b is None or not _same(a, b, rounding):
            raise _disagree(
                f"the {where} fact: {fld} is {b!r} from fact building and {a!r} from the "
                "Observations"
            )


def _same(a: FactValue, b: FactValue, rounding: float) -> bool:
    if isinstance(a, int | float) and isinstance(b, int | float):
        # means and differences are rounded (4 decimals, an LSI 2) after unit factors
        # that may differ in their last digits: one rounding step apart is the same
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=rounding)
    return a == b


def _disagree(what: str) -> EngineDisagreementError:
    return EngineDisagreementError(f"fact building and the reference evaluator disagree: {what}")
