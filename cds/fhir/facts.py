"""Turn parsed FHIR resources into the flat facts the rule engine matches.

The engine sees one fact per side (``left``, ``right``) and one per patient.
Joins are done here, not in the engine: each side fact carries that side's
metrics, derived left/right comparisons, whole-body metrics and the patient
context, so every rule is a single-pattern condition (see
``docs/architecture.md`` for why).

Every Observation ends up either *used* or *excluded* with a reason; both
lists go into the trace.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from cds.fhir.codes import (
    FINDINGS_SYSTEM,
    METRICS_SYSTEM,
    PLANS_SYSTEM,
    SITE_SIDES,
    Metric,
    Side,
    metric,
    metrics,
)
from cds.fhir.parse import CarePlan, Condition, Observation, Patient, ServiceRequest, Unreadable
from cds.fhir.units import UnitError, convert

__all__ = [
    "ClinicalData",
    "DiagnosisCode",
    "FactPolicy",
    "FactSet",
    "InputRecord",
    "build_facts",
    "diagnosis_field",
    "in_care",
    "order_field",
]

SIDES: tuple[Side, Side] = ("left", "right")
_CLINICAL_OK = {"active", "recurrence", "relapse"}
_ORDER_LIVE = {"draft", "active", "on-hold"}
_CHANGE_SUFFIXES = ("__increase", "__change")


@dataclass(frozen=True)
class DiagnosisCode:
    system: str
    code: str
    prefix: bool = False

    def matches(self, system: str | None, code: str | None) -> bool:
        if system != self.system or not code:
            return False
        return code.startswith(self.code) if self.prefix else code == self.code


@dataclass(frozen=True)
class FactPolicy:
    """What the rule pack says about input quality and diagnoses."""

    min_strides: float = 7
    max_age_days: float = 90
    #: a shorter window while an order is active (None: same as ``max_age_days``)
    max_age_in_care_days: float | None = None
    diagnoses: dict[str, tuple[DiagnosisCode, ...]] = field(default_factory=dict)


@dataclass
class ClinicalData:
    patient: Patient | None = None
    observations: list[Observation] = field(default_factory=list)
    conditions: list[Condition] = field(default_factory=list)
    draft_orders: list[ServiceRequest | CarePlan] = field(default_factory=list)
    active_orders: list[ServiceRequest | CarePlan] = field(default_factory=list)
    unreadable: list[Unreadable] = field(default_factory=list)


@dataclass
class InputRecord:
    """One input as the trace shows it."""

    resource: str
    source: str
    code: str | None = None
    side: str | None = None
    value: float | str | None = None
    unit: str | None = None
    canonical: float | str | None = None
    effective: str | None = None
    strides: float | None = None
    role: str | None = None
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class FactSet:
    patient: dict[str, Any]
    sides: dict[str, dict[str, Any]]
    used: list[InputRecord]
    excluded: list[InputRecord]

    def all_facts(self) -> list[dict[str, Any]]:
        return [self.patient, *self.sides.values()]


def _ref(obs: Observation) -> str:
    ver = f"/_history/{obs.version_id}" if obs.version_id else ""
    return f"Observation/{obs.id or '?'}{ver}"


def _as_datetime(value: datetime | date | None) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime(value.year, value.month, value.day, tzinfo=UTC)


def _side_of(obs: Observation) -> Side | None:
    if obs.bodySite is None:
        return None
    for coding in obs.bodySite.coding:
        if coding.system == "http://snomed.info/sct" and coding.code in SITE_SIDES:
            return SITE_SIDES[coding.code][0]
    return None


def _component_value(obs: Observation, code: str) -> float | None:
    for comp in obs.component:
        if comp.code.has(METRICS_SYSTEM, code) and comp.valueQuantity is not None:
            return comp.valueQuantity.value
    return None


class _Reject(Exception):
    pass


def _coded_value(obs: Observation) -> str:
    if obs.valueCodeableConcept is not None:
        codes = obs.valueCodeableConcept.codes(FINDINGS_SYSTEM)
        if codes:
            return codes[0]
    if obs.valueBoolean is not None:
        return "positive" if obs.valueBoolean else "negative"
    raise _Reject(f"expected valueCodeableConcept from {FINDINGS_SYSTEM}")


def _quantity_value(obs: Observation, m: Metric) -> tuple[float, str, float, str]:
    q = obs.valueQuantity
    if q is None or q.value is None:
        raise _Reject("no valueQuantity.value")
    unit = q.code or q.unit
    if not unit:
        raise _Reject("valueQuantity has no unit")
    if q.system not in (None, "http://unitsofmeasure.org"):
        raise _Reject(f"unit system {q.system!r} is not UCUM")
    try:
        canonical, dim = convert(q.value, unit, m.dimensions)
    except UnitError as exc:
        raise _Reject(str(exc)) from exc
    return q.value, unit, canonical, m.field_for(dim)


@dataclass
class _Value:
    effective: datetime
    canonical: Any
    record: InputRecord
    numeric: bool


class _Builder:
    def __init__(self, policy: FactPolicy, now: datetime) -> None:
        self.policy = policy
        self.now = now
        self.used: list[InputRecord] = []
        self.excluded: list[InputRecord] = []
        self.history: dict[tuple[str, str | None], list[_Value]] = {}
        self.latest: dict[tuple[str, str | None], _Value] = {}
        self.baseline: dict[tuple[str, str | None], _Value] = {}
        self.quality: dict[str | None, dict[str, int]] = {}

    def _flag(self, side: str | None, key: str) -> None:
        bucket = self.quality.setdefault(side, {})
        bucket[key] = bucket.get(key, 0) + 1

    def add(self, obs: Observation) -> None:
        codes = obs.code.codes(METRICS_SYSTEM)
        m = metric(codes[0]) if codes else None
        rec = InputRecord(
            resource=_ref(obs), source="observation", code=codes[0] if codes else None
        )
        try:
            side = self._check(obs, m, rec)
            assert m is not None
            self._value(obs, m, rec, side)
        except _Reject as exc:
            rec.reason = str(exc)
            self.excluded.append(rec)

    def _check(self, obs: Observation, m: Metric | None, rec: InputRecord) -> Side | None:
        if m is None or m.group == "quality":
            raise _Reject(f"not a metric of {METRICS_SYSTEM}")
        if obs.status in ("entered-in-error", "cancelled", "registered"):
            raise _Reject(f"status {obs.status}")
        side = _side_of(obs)
        rec.side = side
        if m.lateral and side is None:
            self._flag(None, "excluded")
            raise _Reject(
                "bodySite has no recognised laterality (SNOMED CT left/right hip or knee)"
            )
        eff = _as_datetime(obs.effective)
        if eff is None:
            self._flag(side, "excluded")
            raise _Reject("no effective time")
        rec.effective = eff.isoformat()
        if obs.dataAbsentReason is not None:
            self._flag(side, "excluded")
            raise _Reject("dataAbsentReason present")
        return side

    def _value(self, obs: Observation, m: Metric, rec: InputRecord, side: Side | None) -> None:
        if m.coded:
            canonical: Any = _coded_value(obs)
            rec.value = rec.canonical = canonical
            fld = m.field
        else:
            try:
                rec.value, rec.unit, canonical, fld = _quantity_value(obs, m)
            except _Reject:
                self._flag(side, "excluded")
                raise
            rec.canonical = round(canonical, 4)
        eff = _as_datetime(obs.effective)
        assert eff is not None
        rec.strides = _component_value(obs, "strides-analyzed")
        value = _Value(eff, canonical, rec, numeric=not m.coded)
        self.history.setdefault((fld, side), []).append(value)

    def _too_few_strides(self, rec: InputRecord) -> bool:
        m = metric(rec.code or "")
        return (
            m is not None
            and m.group == "run-form"
            and rec.strides is not None
            and rec.strides < self.policy.min_strides
        )

    def _set_aside(self, value: _Value, reason: str) -> None:
        value.record.reason = reason
        self.excluded.append(value.record)

    def finish(self, in_care: bool) -> None:
        """Keep the latest value of each metric if it passes the quality gates, and the
        latest earlier usable value as the baseline for change."""
        max_age = self.policy.max_age_days
        if in_care and self.policy.max_age_in_care_days is not None:
            max_age = self.policy.max_age_in_care_days
        for key, values in self.history.items():
            values.sort(key=lambda v: v.effective)
            latest, earlier = values[-1], values[:-1]
            age_days = (self.now - latest.effective).total_seconds() / 86400
            if age_days > max_age:
                self._set_aside(latest, f"stale: measured {age_days:.0f} days ago")
                self._flag(key[1], "stale")
            elif self._too_few_strides(latest.record):
                self._set_aside(latest, f"too few strides ({latest.record.strides:g})")
                self._flag(key[1], "low_strides")
            else:
                self.latest[key] = latest
                self.used.append(latest.record)
                earlier = self._pick_baseline(key, latest, earlier)
            for value in earlier:
                self._set_aside(value, "superseded by a more recent Observation")

    def _pick_baseline(
        self, key: tuple[str, str | None], latest: _Value, earlier: list[_Value]
    ) -> list[_Value]:
        usable = [
            v
            for v in earlier
            if latest.numeric
            and v.effective < latest.effective
            and not self._too_few_strides(v.record)
        ]
        if not usable:
            return earlier
        base = usable[-1]
        base.record.role = "baseline"
        self.baseline[key] = base
        self.used.append(base.record)
        return [v for v in earlier if v is not base]


def _age_years(patient: Patient | None, today: date) -> int | None:
    if patient is None or patient.birthDate is None:
        return None
    b = patient.birthDate
    return today.year - b.year - ((today.month, today.day) < (b.month, b.day))


def _days_since(when: datetime | date | None, now: datetime) -> float | None:
    moment = _as_datetime(when)
    return None if moment is None else round((now - moment).total_seconds() / 86400, 2)


def _keep(ctx: dict[str, Any], key: str, days: float | None, pick: Callable[..., float]) -> None:
    """Set ``ctx[key]`` to ``days``, or to ``pick`` (min or max) of it and the value there."""
    if days is not None:
        ctx[key] = pick(days, ctx.get(key, days))


def _diagnoses(data: ClinicalData, policy: FactPolicy, now: datetime, ctx: dict[str, Any]) -> None:
    for cond in data.conditions:
        if cond.clinicalStatus is not None and not any(
            c.code in _CLINICAL_OK for c in cond.clinicalStatus.coding
        ):
            continue
        codings = cond.code.coding if cond.code else []
        for name, codes in policy.diagnoses.items():
            if any(dc.matches(c.system, c.code) for dc in codes for c in codings):
                fld = diagnosis_field(name)
                ctx[fld] = 1
                # the most recent onset decides "within"
                _keep(ctx, f"{fld}__days", _days_since(cond.since, now), min)


def _orders(data: ClinicalData, now: datetime, ctx: dict[str, Any]) -> None:
    for declared, orders in (("draft", data.draft_orders), ("active", data.active_orders)):
        for order in orders:
            if order.status in _ORDER_LIVE:
                state = declared
            elif order.status == "completed":
                state = "completed"
            else:
                continue
            for plan in _plans_of(order):
                ctx[order_field(plan, state)] = 1
                ctx[order_field(plan, "any")] = 1
                started = _days_since(order.started, now)
                # the oldest order decides "older than"
                _keep(ctx, f"{order_field(plan, state)}__days", started, max)


def _context(data: ClinicalData, policy: FactPolicy, now: datetime) -> dict[str, Any]:
    ctx: dict[str, Any] = {}
    age = _age_years(data.patient, now.date())
    if age is not None:
        ctx["age_years"] = age
    if data.patient is not None and data.patient.gender:
        ctx[f"sex_{data.patient.gender}"] = 1
    _diagnoses(data, policy, now, ctx)
    _orders(data, now, ctx)
    return ctx


def in_care(data: ClinicalData) -> bool:
    """Whether an order is active (the shorter data-freshness window applies)."""
    return any(o.status in _ORDER_LIVE for o in data.active_orders)


def diagnosis_field(value_set: str) -> str:
    """Fact field flagging an active diagnosis from ``value_set``."""
    return f"dx_{value_set.replace('-', '_')}"


def order_field(plan: str, state: str) -> str:
    """Fact field flagging an order for ``plan`` in ``state`` (draft, active, completed or any)."""
    prefix = "order" if state == "any" else f"order_{state}"
    return f"{prefix}_{plan.replace('-', '_')}"


def _plans_of(order: ServiceRequest | CarePlan) -> list[str]:
    if isinstance(order, ServiceRequest):
        return order.code.codes(PLANS_SYSTEM) if order.code else []
    plans = [p for cat in order.category for p in cat.codes(PLANS_SYSTEM)]
    for act in order.activity:
        if act.detail and act.detail.code:
            plans.extend(act.detail.code.codes(PLANS_SYSTEM))
    return plans


def _compare_sides(sides: dict[str, dict[str, Any]], fields: set[str]) -> None:
    """Left/right asymmetry per field, and one limb symmetry index per metric.

    The LSI uses the most preferred dimension measured on both sides.
    """
    left, right = sides["left"], sides["right"]
    for fld in fields:
        a, b = left.get(fld), right.get(fld)
        if not isinstance(a, float) or not isinstance(b, float):
            continue
        left[f"{fld}__asym"] = round(a - b, 4)
        right[f"{fld}__asym"] = round(b - a, 4)
    for m in metrics().values():
        for dim in m.dimensions:
            a, b = left.get(m.field_for(dim)), right.get(m.field_for(dim))
            if isinstance(a, float) and isinstance(b, float) and a > 0 and b > 0:
                left[f"{m.field}__lsi"] = round(100 * a / b, 2)
                right[f"{m.field}__lsi"] = round(100 * b / a, 2)
                break


def _mark_present(fact: dict[str, Any]) -> None:
    for m in metrics().values():
        if any(m.field_for(d) in fact for d in m.dimensions):
            fact[f"{m.field}__present"] = 1


def build_facts(data: ClinicalData, policy: FactPolicy, *, now: datetime | None = None) -> FactSet:
    """Normalise ``data`` into one patient fact and one fact per side."""
    now = now or datetime.now(UTC)
    builder = _Builder(policy, now)
    for obs in data.observations:
        builder.add(obs)
    builder.finish(in_care(data))
    for bad in data.unreadable:
        builder.excluded.append(
            InputRecord(
                resource=f"{bad.resource_type or '?'}/{bad.id or '?'}",
                source=bad.source,
                reason=f"unreadable: {bad.reason}",
            )
        )
        if bad.resource_type in (None, "Observation"):
            builder._flag(None, "unreadable")

    ctx = _context(data, policy, now)
    whole_body = _values_of(builder, None)
    patient: dict[str, Any] = {"kind": "patient", **ctx, **whole_body}
    sides: dict[str, dict[str, Any]] = {}
    lateral_fields: set[str] = set()
    for side in SIDES:
        own = _values_of(builder, side)
        lateral_fields.update(k for k in own if not k.endswith(_CHANGE_SUFFIXES))
        sides[side] = {"kind": "side", "side": side, **ctx, **whole_body, **own}
    _compare_sides(sides, lateral_fields)
    for fact in (patient, *sides.values()):
        _mark_present(fact)
        _flag_unnormalised(fact, builder.quality)
    _add_quality_counts(patient, sides, builder.quality)
    notes = [
        _note(rec) for rec in builder.excluded if not (rec.reason or "").startswith("superseded")
    ]
    if notes:
        patient["q_notes"] = "; ".join(notes)
    return FactSet(patient=patient, sides=sides, used=builder.used, excluded=builder.excluded)


def _values_of(builder: _Builder, side: str | None) -> dict[str, Any]:
    """Latest values of one side (None: whole-body), with change from the baseline."""
    out: dict[str, Any] = {}
    for (fld, s), latest in builder.latest.items():
        if s != side:
            continue
        out[fld] = latest.canonical
        base = builder.baseline.get((fld, s))
        if base is not None:
            delta = round(latest.canonical - base.canonical, 4)
            out[f"{fld}__increase"] = delta
            out[f"{fld}__change"] = abs(delta)
    return out


def _flag_unnormalised(fact: dict[str, Any], quality: dict[str | None, dict[str, int]]) -> None:
    """Strength measured only as raw force or torque cannot meet a body-mass norm."""
    if fact["kind"] != "side":
        return
    for m in metrics().values():
        if m.group != "strength" or "torque_per_mass" not in m.dimensions:
            continue
        normalised = any(m.field_for(d) in fact for d in ("torque_per_mass", "force_per_mass"))
        raw = any(m.field_for(d) in fact for d in ("torque", "force"))
        if raw and not normalised:
            bucket = quality.setdefault(fact["side"], {})
            bucket["unnormalised"] = bucket.get("unnormalised", 0) + 1


def _note(rec: InputRecord) -> str:
    what = rec.code or rec.resource
    side = f" ({rec.side})" if rec.side else ""
    return f"{what}{side}: {rec.reason}"


def _add_quality_counts(
    patient: dict[str, Any], sides: dict[str, dict[str, Any]], quality: dict[str | None, Any]
) -> None:
    for flags in quality.values():
        for key, n in flags.items():
            patient[f"q_{key}"] = patient.get(f"q_{key}", 0) + n
    for side, fact in sides.items():
        for key, n in quality.get(side, {}).items():
            fact[f"q_{key}"] = n
        for key, n in quality.get(None, {}).items():
            fact[f"q_{key}"] = fact.get(f"q_{key}", 0) + n
