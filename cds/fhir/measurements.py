"""From Observations to the readings the rules may use, and why the others are not.

Each Observation is either *used* or *set aside* with a reason; both lists go
into the trace. In order:

1. the Observation itself: a metric of our CodeSystem, a usable status, a
   side for a lateral metric, an effective time, a value;
2. the capture: run-form values must come from a running capture (the
   ``gait-mode`` component; a missing mode is unknown unless the pack says
   otherwise), from the metric's camera view, at or above the metric's
   minimum frame rate and with its landmarks visible often enough;
3. per metric and side, the latest *session* (captures within the pack's
   session window are repeat trials of one session): trials with too few
   strides are left out, agreeing trials are combined (their mean),
   disagreeing trials are not used; a stale session is not used;
4. the most recent earlier session that gives a value is the baseline for
   change; a trial of the same session never is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from statistics import fmean
from typing import Any, NamedTuple, TypedDict, cast

from cds.fhir.codes import (
    FINDINGS_SYSTEM,
    METRICS_SYSTEM,
    SITE_SIDES,
    Metric,
    Side,
    finding_codes,
    metric,
)
from cds.fhir.diagnoses import as_datetime
from cds.fhir.parse import Observation, codes
from cds.fhir.policy import CaptureLimits, FactPolicy
from cds.fhir.units import UnitError, convert

__all__ = ["InputEntry", "InputRecord", "Reading", "Readings", "select_readings"]

#: groups whose repeat captures in one session are trials of one measurement
_TRIAL_GROUPS = ("run-form", "strength")
Key = tuple[str, Side | None]


class InputEntry(TypedDict, total=False):
    """One input as the trace records it (absent keys: not known or not applicable)."""

    resource: str
    source: str
    code: str | None
    side: str | None
    value: float | str | None
    unit: str | None
    canonical: float | str | None
    effective: str | None
    strides: float | None
    role: str | None
    reason: str | None
    why: str | None


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
    #: why it was set aside, in full (for the trace; may quote what the client sent)
    reason: str | None = None
    #: the same in our own fixed words (for card text, which never quotes the client)
    why: str | None = None
    #: the Observation as parsed (not in the trace): the reference evaluator re-reads it
    observation: Observation | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> InputEntry:
        """The trace's entry: the fields that are known, without the Observation.

        Read from ``__dict__`` (a trace holds 60 of these, and this is 2.5 times as fast
        as naming each field); a test holds :class:`InputEntry` to this class's fields.
        """
        entry = {k: v for k, v in self.__dict__.items() if v is not None}
        entry.pop("observation", None)
        return cast(InputEntry, entry)


@dataclass
class Reading:
    """A value the rules may use: one Observation, or the mean of agreeing trials."""

    metric: Metric
    effective: datetime
    canonical: Any
    records: list[InputRecord]
    numeric: bool
    #: contraction type of a strength test (isometric, eccentric), if recorded
    test: str | None = None

    @property
    def strides(self) -> float | None:
        return self.records[0].strides


class _Reject(Exception):
    def __init__(self, reason: str, why: str, flag: str | None = "excluded") -> None:
        super().__init__(reason)
        self.why = why
        self.flag = flag


def _ref(obs: Observation) -> str:
    ref, version = f"Observation/{obs.id or '?'}", obs.version_id
    return f"{ref}/_history/{version}" if version else ref


def _side_of(obs: Observation) -> Side | None:
    for code in codes(obs.bodySite, "http://snomed.info/sct"):
        if code in SITE_SIDES:
            return SITE_SIDES[code][0]
    return None


class Parts(NamedTuple):
    """An Observation's components by each code of ours they carry: the value of the
    first with a quantity, and the finding code of the first with a coded value."""

    quantities: dict[str, float | None]
    coded: dict[str, str | None]


def _parts(obs: Observation) -> Parts:
    """Index the components once: a capture is checked for up to six of them."""
    parts = Parts({}, {})
    for comp in obs.component:
        quantity, concept = comp.get("valueQuantity"), comp.get("valueCodeableConcept")
        for code in codes(comp["code"], METRICS_SYSTEM):
            if quantity is not None and code not in parts.quantities:
                parts.quantities[code] = quantity.get("value")
            if concept is not None and code not in parts.coded:
                found = codes(concept, FINDINGS_SYSTEM)
                parts.coded[code] = found[0] if found else None
    return parts


def _coded_value(obs: Observation) -> str:
    if obs.valueCodeableConcept is not None:
        coded = codes(obs.valueCodeableConcept, FINDINGS_SYSTEM)
        known = [c for c in coded if c in finding_codes()]
        if known:
            return known[0]
        if coded:
            raise _Reject(f"code {coded[0]!r} is not in {FINDINGS_SYSTEM}", "unknown coded value")
    if obs.valueBoolean is not None:
        return "positive" if obs.valueBoolean else "negative"
    raise _Reject(f"expected valueCodeableConcept from {FINDINGS_SYSTEM}", "no coded value")


def _quantity_value(obs: Observation, m: Metric) -> tuple[float, str, float, str]:
    q = obs.valueQuantity
    value = q.get("value") if q is not None else None
    if q is None or value is None:
        raise _Reject("no valueQuantity.value", "no value")
    unit = q.get("code") or q.get("unit")
    if not unit:
        raise _Reject("valueQuantity has no unit", "no unit")
    system = q.get("system")
    if system not in (None, "http://unitsofmeasure.org"):
        raise _Reject(f"unit system {system!r} is not UCUM", "unit is not UCUM")
    try:
        canonical, dim = convert(value, unit, m.dimensions)
    except UnitError as exc:
        raise _Reject(str(exc), "unit does not fit the metric") from exc
    return value, unit, canonical, m.field_for(dim)


@dataclass
class Readings:
    """The readings kept per (fact field, side), and what was set aside."""

    latest: dict[Key, Reading] = field(default_factory=dict)
    baseline: dict[Key, Reading] = field(default_factory=dict)
    used: list[InputRecord] = field(default_factory=list)
    excluded: list[InputRecord] = field(default_factory=list)
    #: counts of quality flags, per side (None: whole-body or unknown side)
    quality: dict[Side | None, dict[str, int]] = field(default_factory=dict)

    def flag(self, side: Side | None, kind: str) -> None:
        bucket = self.quality.setdefault(side, {})
        bucket[kind] = bucket.get(kind, 0) + 1

    def set_aside(self, records: list[InputRecord], reason: str) -> None:
        """Set ``records`` aside; ``reason`` is our own wording (safe for cards too)."""
        for rec in records:
            rec.reason = rec.why = reason
            self.excluded.append(rec)


class _Selector:
    def __init__(self, policy: FactPolicy, limits: CaptureLimits, now: datetime) -> None:
        self.policy = policy
        self.limits = limits
        self.now = now
        self.out = Readings()
        self.history: dict[Key, list[Reading]] = {}

    # -- one Observation ------------------------------------------------------------
    def add(self, obs: Observation) -> None:
        coded = codes(obs.code, METRICS_SYSTEM)
        rec = InputRecord(
            resource=_ref(obs), source="observation", code=coded[0] if coded else None,
            observation=obs,
        )  # fmt: skip
        m = metric(coded[0]) if coded else None
        side: Side | None = None
        try:
            if m is None or m.group == "quality":
                raise _Reject(f"not a metric of {METRICS_SYSTEM}", "not one of our metrics", None)
            if obs.status in ("entered-in-error", "cancelled", "registered"):
                raise _Reject(f"status {obs.status}", "withdrawn or not final", None)
            side = _side_of(obs)
            rec.side = side
            reading, fld = self._reading(obs, m, rec, side)
        except _Reject as exc:
            rec.reason, rec.why = str(exc), exc.why
            self.out.excluded.append(rec)
            if exc.flag is not None:
                self.out.flag(side, exc.flag)
            return
        self.history.setdefault((fld, side), []).append(reading)

    def _reading(
        self, obs: Observation, m: Metric, rec: InputRecord, side: Side | None
    ) -> tuple[Reading, str]:
        """The Observation as a reading, and the fact field (by unit dimension) it fills."""
        if m.lateral and side is None:
            raise _Reject(
                "bodySite has no recognised laterality (SNOMED CT left/right hip or knee)",
                "no side recorded",
            )
        eff = as_datetime(obs.effective)
        if eff is None:
            raise _Reject("no effective time", "no measurement time")
        rec.effective = eff.isoformat()
        if obs.dataAbsentReason is not None:
            raise _Reject("dataAbsentReason present", "no value (data absent)")
        if m.coded:
            canonical: Any = _coded_value(obs)
            rec.value = rec.canonical = canonical
            fld = m.field
        else:
            rec.value, rec.unit, canonical, fld = _quantity_value(obs, m)
            rec.canonical = round(canonical, 4)
        parts = _parts(obs)
        rec.strides = parts.quantities.get("strides-analyzed")
        if m.group == "run-form":  # after the value, so a value set aside still shows in the trace
            self._check_capture(parts, m)
        test = parts.coded.get("contraction-type") if m.group == "strength" else None
        return Reading(m, eff, canonical, [rec], numeric=not m.coded, test=test), fld

    def _check_capture(self, parts: Parts, m: Metric) -> None:
        if parts.coded.get("real-time-feedback") == "given":
            raise _Reject(
                "measured while the runner saw real-time feedback (a retraining block): "
                "it shows what they do when cued, not how they run",
                "measured with real-time feedback",
                None,  # expected, not a data problem: no card asks about it
            )
        mode = parts.coded.get("gait-mode")
        if mode == "walking":
            raise _Reject(
                "walking capture: not used for running recommendations",
                "walking capture",
                "walking",
            )
        if mode != "running" and self.policy.gait_mode_missing == "ask":
            raise _Reject("gait mode not recorded: cannot tell walking from running",
                          "gait mode not recorded", "gait_mode_unknown")  # fmt: skip
        view = parts.coded.get("capture-view")
        if m.view is not None and view is not None and view != m.view:
            raise _Reject(
                f"measured from the {view} view; this metric needs the {m.view} view",
                f"needs the {m.view} view",
            )
        fps = parts.quantities.get("frame-rate")
        needed = self.limits.required_fps(m.code, running=True)
        if fps is not None and fps < needed:
            why = f"filmed at {fps:g} fps; this metric needs at least {needed:g} fps"
            raise _Reject(why, why)
        visible = parts.quantities.get("visible-fraction")
        least = 100 * self.limits.min_visible_fraction
        if visible is not None and visible < least:
            why = f"landmarks visible in {visible:g}% of frames (needs {least:g}%)"
            raise _Reject(why, why)

    # -- per metric and side ------------------------------------------------------------
    def _too_few_strides(self, r: Reading) -> bool:
        return (
            r.metric.group == "run-form"
            and r.strides is not None
            and r.strides < self.policy.min_strides
        )

    def _sessions(self, readings: list[Reading]) -> list[list[Reading]]:
        """Newest first; each session holds the readings within the window of its newest."""
        if readings[0].metric.group not in _TRIAL_GROUPS:
            return [[r] for r in reversed(readings)]
        window = self.policy.session_window_days * 86400
        out: list[list[Reading]] = []
        for r in reversed(readings):
            if out and (out[-1][0].effective - r.effective).total_seconds() <= window:
                out[-1].append(r)
            else:
                out.append([r])
        return out

    def _combine(self, fld: str, trials: list[Reading]) -> Reading | str:
        """The session's value, or why its trials cannot be combined."""
        if len(trials) == 1:
            return trials[0]
        m = trials[0].metric
        values = [t.canonical for t in trials]
        if not trials[0].numeric:
            if len(set(values)) > 1:
                return f"repeat trials disagree ({', '.join(map(str, values))})"
            combined: Any = values[0]
        else:
            limit = self.policy.smallest_detectable_difference.get(fld)
            if limit is None:
                return (
                    f"{len(trials)} repeat trials and no agreement limit for {m.code} in the pack"
                )
            spread = max(values) - min(values)
            if spread > limit:
                return (f"repeat trials disagree: they differ by {spread:.3g} {m.unit}, "
                        f"more than the {limit:g} {m.unit} they may")  # fmt: skip
            combined = round(fmean(values), 4)
        records = [rec for t in trials for rec in t.records]
        for i, rec in enumerate(records, 1):
            rec.role = f"trial {i} of {len(records)} (mean used)"
        tests = {t.test for t in trials}
        test = tests.pop() if len(tests) == 1 else None
        return Reading(m, trials[0].effective, combined, records, trials[0].numeric, test)

    def _usable(self, session: list[Reading]) -> list[Reading]:
        keep = [r for r in session if not self._too_few_strides(r)]
        for r in session:
            if r not in keep:
                self.out.set_aside(r.records, f"too few strides ({r.strides:g})")
        return keep

    def finish(self, in_care: bool) -> Readings:
        max_age = self.policy.max_age_days
        if in_care and self.policy.max_age_in_care_days is not None:
            max_age = self.policy.max_age_in_care_days
        for key, readings in self.history.items():
            readings.sort(key=lambda r: r.effective)
            sessions = self._sessions(readings)
            latest = self._latest(key, sessions[0], max_age)
            rest = sessions[1:]
            if latest is not None and latest.numeric:
                rest = self._pick_baseline(key, rest)
            for session in rest:
                for r in session:
                    self.out.set_aside(r.records, "superseded by a more recent Observation")
        return self.out

    def _latest(self, key: Key, session: list[Reading], max_age: float) -> Reading | None:
        side = key[1]
        trials = self._usable(session)
        if not trials:
            self.out.flag(side, "low_strides")
            return None
        age_days = (self.now - trials[0].effective).total_seconds() / 86400
        if age_days > max_age:
            self.out.set_aside([x for t in trials for x in t.records],
                               f"stale: measured {age_days:.0f} days ago")  # fmt: skip
            self.out.flag(side, "stale")
            return None
        combined = self._combine(key[0], trials)
        if isinstance(combined, str):
            self.out.set_aside([x for t in trials for x in t.records], combined)
            self.out.flag(side, "trials_disagree")
            return None
        self.out.latest[key] = combined
        self.out.used += combined.records
        return combined

    def _pick_baseline(self, key: Key, earlier: list[list[Reading]]) -> list[list[Reading]]:
        """Take the newest earlier session that gives a value; return the older ones."""
        for i, session in enumerate(earlier):
            trials = self._usable(session)
            if not trials:
                continue
            combined = self._combine(key[0], trials)
            if isinstance(combined, str):
                records = [x for t in trials for x in t.records]
                self.out.set_aside(records, f"{combined}; not used as a baseline")
                continue
            for rec in combined.records:
                rec.role = "baseline" + (f", {rec.role}" if rec.role else "")
            self.out.baseline[key] = combined
            self.out.used += combined.records
            return earlier[i + 1 :]
        return []


def select_readings(
    observations: list[Observation],
    policy: FactPolicy,
    limits: CaptureLimits,
    now: datetime,
    *,
    in_care: bool,
) -> Readings:
    """Which Observations the rules may use (latest and baseline), and why not the rest."""
    selector = _Selector(policy, limits, now)
    for obs in observations:
        selector.add(obs)
    return selector.finish(in_care)
