"""Turn parsed FHIR resources into the flat facts the rule engine matches.

The engine sees one fact per side (``left``, ``right``) and one per patient.
Joins are done here, not in the engine: each side fact carries that side's
metrics, derived left/right comparisons, whole-body metrics, the side's
diagnoses and the patient context, so every rule is a single-pattern
condition (see ``docs/architecture.md`` for why).

Every input that decides whether a plan applies has three states here:
known and fine, known and excluding, or **unknown** (no exact age, a
diagnosis that is not confirmed or not dated, a problem list that could not
be read). Unknown is its own field, never the absence of a field: the packs
test it and hold plans back. Field names come from :mod:`cds.fhir.fields`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, TypedDict

from cds.fhir.codes import PLANS_SYSTEM, Side, metric, metrics
from cds.fhir.diagnoses import (
    DiagnosisCode,
    DiagnosisMatch,
    as_datetime,
    diagnosis_facts,
    match_conditions,
)
from cds.fhir.fields import (
    AGE,
    AGE_UNKNOWN,
    KIND,
    MEASURE_SUFFIX,
    SIDE,
    Fact,
    OrderState,
    derived_field,
    diagnosis_field,
    lsi_field,
    measure_field,
    norm_note_field,
    order_days_field,
    order_field,
    present_field,
    quality_field,
    sex_field,
)
from cds.fhir.measurements import InputRecord, Readings, select_readings
from cds.fhir.parse import (
    CarePlan,
    Condition,
    Observation,
    Patient,
    ServiceRequest,
    Unreadable,
    codes,
)
from cds.fhir.policy import CaptureLimits, FactPolicy

__all__ = [
    "ClinicalData",
    "DiagnosisCode",
    "FactPolicy",
    "FactSet",
    "InputRecord",
    "OrderEntry",
    "build_facts",
    "diagnosis_field",
    "in_care",
    "order_field",
]

SIDES: tuple[Side, Side] = ("left", "right")
_ORDER_STATES: dict[str, OrderState] = {
    "draft": "draft",
    "active": "active",
    "on-hold": "on-hold",
    "completed": "completed",
}
_IN_CARE = {"active", "on-hold"}
_CHANGE_SUFFIXES = (MEASURE_SUFFIX["increase"], MEASURE_SUFFIX["change"])


@dataclass
class ClinicalData:
    patient: Patient | None = None
    observations: list[Observation] = field(default_factory=list)
    conditions: list[Condition] = field(default_factory=list)
    #: orders being placed (CDS Hooks ``draftOrders``): all count as draft
    draft_orders: list[ServiceRequest | CarePlan] = field(default_factory=list)
    #: orders in the chart, each in its own status (active, on-hold, completed ...)
    orders: list[ServiceRequest | CarePlan] = field(default_factory=list)
    #: orders being placed that are no ServiceRequest or CarePlan (a MedicationRequest, ...)
    other_draft_orders: list[str] = field(default_factory=list)
    unreadable: list[Unreadable] = field(default_factory=list)

    @property
    def resource_count(self) -> int:
        """Resources the rules will read (unreadable ones are already set aside)."""
        return (
            (self.patient is not None)
            + len(self.observations)
            + len(self.conditions)
            + len(self.draft_orders)
            + len(self.orders)
        )


class OrderEntry(TypedDict, total=False):
    """An order that counted (for the trace): what it is, its state and the plans it names."""

    reference: str
    state: str
    plans: list[str]
    #: False: an order being placed that names no plan the pack knows
    recognised: bool
    started_days: float


@dataclass
class FactSet:
    patient: Fact
    sides: dict[str, Fact]
    used: list[InputRecord]
    excluded: list[InputRecord]
    diagnoses: list[DiagnosisMatch] = field(default_factory=list)
    #: the orders that named a plan: reference, state (draft, active ...), plans, age
    orders: list[OrderEntry] = field(default_factory=list)
    #: the parsed resources the facts were built from (by :func:`build_facts`), for the
    #: reference evaluator to re-read; None for facts written by hand (tests)
    source: ClinicalData | None = field(default=None, repr=False)
    #: the moment ages were counted from (None: facts written by hand)
    as_of: datetime | None = None

    def all_facts(self) -> list[Fact]:
        return [self.patient, *self.sides.values()]


def _age_years(patient: Patient | None, today: date) -> int | None:
    """Completed years on ``today``: someone turning 18 next week is 17."""
    birth = patient.birth_date if patient is not None else None
    if birth is None:
        return None
    return today.year - birth.year - ((today.month, today.day) < (birth.month, birth.day))


def _days_since(when: datetime | date | None, now: datetime) -> float | None:
    moment = as_datetime(when)
    return None if moment is None else round((now - moment).total_seconds() / 86400, 2)


def _keep(ctx: Fact, key: str, days: float | None, pick: Callable[..., float]) -> None:
    """Set ``ctx[key]`` to ``days``, or to ``pick`` (min or max) of it and the value there."""
    if days is not None:
        ctx[key] = pick(days, ctx.get(key, days))


def _orders(data: ClinicalData, now: datetime, ctx: Fact) -> list[OrderEntry]:
    """Set the order facts; return, for the trace, each order that counted, and each
    order being placed that named no plan the pack knows ("nothing applied" is then
    told apart from "nothing was read")."""
    placed = [("draft", o) for o in data.draft_orders]
    placed += [(o.status, o) for o in data.orders]
    counted: list[OrderEntry] = [
        {"reference": ref, "state": "draft", "plans": [], "recognised": False}
        for ref in data.other_draft_orders
    ]
    for status, order in placed:
        state = _ORDER_STATES.get(status)
        plans = _plans_of(order) if state is not None else []
        if state == "draft" and not plans:  # being placed, and nothing the pack knows
            ref = f"{order.resourceType}/{order.id or '?'}"
            counted.append({"reference": ref, "state": "draft", "plans": [], "recognised": False})
        if state is None or not plans:
            continue
        days = _days_since(order.started, now)
        for plan in plans:
            ctx[order_field(plan, state)] = 1
            ctx[order_field(plan, "any")] = 1
            # the oldest order decides "older than"
            _keep(ctx, order_days_field(plan, state), days, max)
        record: OrderEntry = {
            "reference": f"{order.resourceType}/{order.id or '?'}", "state": state, "plans": plans
        }  # fmt: skip
        if days:
            record["started_days"] = days
        counted.append(record)
    return counted


def _plans_of(order: ServiceRequest | CarePlan) -> list[str]:
    if isinstance(order, ServiceRequest):
        return codes(order.code, PLANS_SYSTEM)
    plans = [p for cat in order.category for p in codes(cat, PLANS_SYSTEM)]
    for act in order.activity:
        detail = act.get("detail")
        if detail:
            plans.extend(codes(detail.get("code"), PLANS_SYSTEM))
    return plans


def _unreadable_kind(bad: Unreadable) -> str | None:
    """Quality flag of an unreadable resource (a Patient counts as a missing Patient)."""
    kind = bad.resource_type or bad.expected
    return {"Condition": "conditions_unreadable", "Patient": None}.get(kind or "", "unreadable")


def _context(
    data: ClinicalData, now: datetime, matches: list[DiagnosisMatch]
) -> tuple[Fact, list[OrderEntry]]:
    """The patient-level facts, and the orders that counted."""
    ctx: Fact = {}
    age = _age_years(data.patient, now.date())
    if age is None:
        ctx[AGE_UNKNOWN] = 1
    else:
        ctx[AGE] = age
    if data.patient is not None and data.patient.gender:
        ctx[sex_field(data.patient.gender)] = 1
    ctx.update(diagnosis_facts(matches).patient)
    return ctx, _orders(data, now, ctx)


def in_care(data: ClinicalData) -> bool:
    """Whether an order is in progress (the shorter data-freshness window applies)."""
    return any(o.status in _IN_CARE for o in data.orders)


def _compare_sides(sides: dict[str, Fact], fields: set[str]) -> None:
    """Left/right asymmetry per field, and one limb symmetry index per metric.

    The LSI uses the most preferred dimension measured on both sides.
    """
    left, right = sides["left"], sides["right"]
    for fld in fields:
        a, b = left.get(fld), right.get(fld)
        if not isinstance(a, float) or not isinstance(b, float):
            continue
        left[derived_field(fld, "asymmetry")] = round(a - b, 4)
        right[derived_field(fld, "asymmetry")] = round(b - a, 4)
    for m in metrics().values():
        if not m.lateral:
            continue
        for dim in m.dimensions:
            a, b = left.get(m.field_for(dim)), right.get(m.field_for(dim))
            if isinstance(a, float) and isinstance(b, float) and a > 0 and b > 0:
                left[lsi_field(m)] = round(100 * a / b, 2)
                right[lsi_field(m)] = round(100 * b / a, 2)
                break


def _mark_present(fact: Fact) -> None:
    for m in metrics().values():
        if not fact.keys().isdisjoint(m.dimension_fields.values()):
            fact[present_field(m)] = 1


def _apply_norms(fact: Fact, side: Side, readings: Readings, policy: FactPolicy) -> None:
    """Each norm of the pack on this side's value, or why it does not fit."""
    sex = next((s for s in ("female", "male", "other", "unknown") if fact.get(sex_field(s))), None)
    age = fact.get(AGE)
    age = age if isinstance(age, int) else None
    for code, norm in policy.norms.items():
        m = metrics()[code]
        found = [
            (d, readings.latest[(m.field_for(d), side)])
            for d in m.dimensions
            if (m.field_for(d), side) in readings.latest
        ]
        if not found:
            continue
        dim, reading = next(((d, r) for d, r in found if d == norm.dimension), found[0])
        result = norm.apply(reading.canonical, dim, reading.test, sex, age)
        fact[norm_note_field(m)] = result.note
        if result.z is None:
            readings.flag(side, "norm_unfit")
        else:
            fact[measure_field(m, norm.dimension, "norm")] = result.z


def build_facts(
    data: ClinicalData,
    policy: FactPolicy,
    *,
    limits: CaptureLimits | None = None,
    now: datetime | None = None,
) -> FactSet:
    """Normalise ``data`` into one patient fact and one fact per side."""
    now = now or datetime.now(UTC)
    readings = select_readings(
        data.observations, policy, limits or CaptureLimits(), now, in_care=in_care(data)
    )
    for bad in data.unreadable:
        readings.excluded.append(
            InputRecord(
                resource=f"{bad.resource_type or '?'}/{bad.id or '?'}",
                source=bad.source,
                reason=f"unreadable: {bad.reason}",
                why="could not be read",
            )
        )
        kind = _unreadable_kind(bad)
        if kind is not None:
            readings.flag(None, kind)
    if data.patient is None:  # not sent, null, or unreadable: nothing about age or sex
        readings.flag(None, "patient_missing")
    matches = match_conditions(data.conditions, policy.value_sets.values(), now)
    ctx, orders = _context(data, now, matches)
    by_side = diagnosis_facts(matches).sides
    whole_body = _values_of(readings, None)
    patient: Fact = {KIND: "patient", **ctx, **whole_body}
    sides: dict[str, Fact] = {}
    lateral_fields: set[str] = set()
    for side in SIDES:
        own = _values_of(readings, side)
        lateral_fields.update(k for k in own if not k.endswith(_CHANGE_SUFFIXES))
        sides[side] = {KIND: "side", SIDE: side, **ctx, **by_side[side], **whole_body, **own}
    _compare_sides(sides, lateral_fields)
    for side in SIDES:
        _apply_norms(sides[side], side, readings, policy)
    for fact in (patient, *sides.values()):
        _mark_present(fact)
    for side in SIDES:
        _flag_unnormalised(sides[side], side, readings)
    _add_quality_counts(patient, sides, readings.quality)
    notes = [
        _note(rec) for rec in readings.excluded if not (rec.reason or "").startswith("superseded")
    ]
    if notes:
        patient["q_notes"] = "; ".join(notes)
    return FactSet(
        patient=patient,
        sides=sides,
        used=readings.used,
        excluded=readings.excluded,
        diagnoses=matches,
        orders=orders,
        source=data,
        as_of=now,
    )


def _values_of(readings: Readings, side: Side | None) -> Fact:
    """Latest values of one side (None: whole-body), with change from the baseline."""
    out: Fact = {}
    for (fld, s), latest in readings.latest.items():
        if s != side:
            continue
        out[fld] = latest.canonical
        base = readings.baseline.get((fld, s))
        if base is not None:
            delta = round(latest.canonical - base.canonical, 4)
            out[derived_field(fld, "increase")] = delta
            out[derived_field(fld, "change")] = abs(delta)
    return out


def _flag_unnormalised(fact: Fact, side: Side, readings: Readings) -> None:
    """Strength measured only as raw force or torque cannot meet a body-mass norm."""
    for m in metrics().values():
        if m.group != "strength" or "torque_per_mass" not in m.dimensions:
            continue
        normalised = any(m.field_for(d) in fact for d in ("torque_per_mass", "force_per_mass"))
        raw = any(m.field_for(d) in fact for d in ("torque", "force"))
        if raw and not normalised:
            readings.flag(side, "unnormalised")


def _note(rec: InputRecord) -> str:
    """One set-aside input in our own words: card text never quotes what a client sent."""
    m = metric(rec.code) if rec.code else None
    what = m.display.lower() if m is not None else "a resource"
    side = f" ({rec.side})" if rec.side else ""
    return f"{what}{side}: {rec.why or 'set aside'}"


def _add_quality_counts(patient: Fact, sides: dict[str, Fact], quality: dict[Any, Any]) -> None:
    for flags in quality.values():
        for key, n in flags.items():
            patient[quality_field(key)] = patient.get(quality_field(key), 0) + n
    for side, fact in sides.items():
        for key, n in quality.get(side, {}).items():
            fact[quality_field(key)] = n
        for key, n in quality.get(None, {}).items():
            fact[quality_field(key)] = fact.get(quality_field(key), 0) + n
