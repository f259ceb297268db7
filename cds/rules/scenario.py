"""Scenarios: test cases a clinician writes next to a pack, run through the real engine.

A scenario gives a patient in plain terms (age, sex, diagnoses by value-set
name, measured values, orders) and lists the cards that must appear, by rule
id and indicator; an empty list means nothing may fire. The given data are
turned into real FHIR resources and go through the same parsing, fact
building, engine and cross-check as a live call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from cds.errors import CdsError
from cds.examples import condition, patient, plan_order
from cds.fhir.codes import SNOMED_SYSTEM, Side, metric, metrics, plan_display
from cds.fhir.facts import ClinicalData, FactSet, build_facts
from cds.fhir.observations import coded_component, metric_observation, quantity_component
from cds.fhir.parse import (
    CarePlan,
    Condition,
    Observation,
    Patient,
    ServiceRequest,
    Unreadable,
    parse_entries,
    validate,
)
from cds.rules.compile import CompiledPack
from cds.rules.decide import CardOutcome, Decision, decide
from cds.rules.engine import RuleEngine
from cds.rules.pack import Hook, Name
from cds.rules.problems import Loc, PackProblem, did_you_mean

__all__ = [
    "Scenario",
    "ScenarioFile",
    "ScenarioResult",
    "check_scenarios",
    "decide_scenario",
    "describe_card",
    "run_scenarios",
    "scenario_facts",
]

PATIENT_ID = "scenario-patient"
Value = float | str
SideValues = dict[Side, Value]


class _Model(BaseModel):
    # the docstring under each field is its description in ``packs schema --scenarios``
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


GaitMode = Literal["running", "walking", "none"]


class Capture(_Model):
    """One measurement in full: when a scenario needs strides, units, capture details,
    an absent value, or a time within the day (repeat trials)."""

    metric: str
    """The metric code."""
    side: Side | None = None
    """left or right, for a side metric."""
    value: Value | None = None
    """The value (number, or a word for a rated test)."""
    unit: str | None = None
    """UCUM unit of the value (default: the metric's canonical unit)."""
    strides: int | None = None
    """Strides the value was measured over (default: the given's)."""
    days_ago: float = 3
    """Measured this many days ago."""
    hours_ago: float | None = None
    """Measured this many hours ago (overrides days_ago): for trials minutes or hours apart."""
    absent: str | None = None
    """Record the metric without a value, for this data-absent reason."""
    gait_mode: GaitMode | None = None
    """Run-form captures: walking, running or none (not recorded); default: the given's."""
    view: Literal["posterior", "side"] | None = None
    """The camera view recorded with the capture: posterior or side."""
    fps: float | None = None
    """The video frame rate recorded with the capture."""
    visible_percent: float | None = None
    """How much of the capture the landmarks were visible (percent)."""
    test: Literal["isometric", "eccentric", "none"] | None = None
    """Strength tests: the dynamometry contraction type; default: the given's."""
    feedback: Literal["given", "withheld"] | None = None
    """Run-form captures from a retraining session: whether the runner saw real-time
    feedback (default: not recorded, as for any assessment)."""


class Earlier(_Model):
    days_ago: float = Field(gt=0)
    """When the earlier capture was made."""
    measures: dict[str, Value | SideValues] = Field(default_factory=dict)
    """Metric code -> value, or {left: ..., right: ...} for a side metric."""


class Diagnosis(_Model):
    value_set: Name
    """A value set of the pack."""
    days_ago: float | None = None
    """Onset this many days ago (none: no onset recorded)."""
    recorded_days_ago: float | None = None
    """recordedDate this many days ago."""
    status: Literal["confirmed", "provisional", "unconfirmed", "refuted", "no-status"] = "confirmed"
    """confirmed, provisional, unconfirmed, refuted, or no-status (no clinical or verification
    status)."""
    side: Literal["left", "right", "both", "unspecified"] | None = None
    """Laterality (the ICD-10-CM character when the code has one, else bodySite)."""
    code_index: int = Field(default=0, ge=0)
    """Which code of the value set to use: its position in the list (default: the first)."""


class Order(_Model):
    plan: str
    """The plan code of the order."""
    status: Literal["draft", "active", "on-hold", "completed"] = "active"
    """draft, active, on-hold or completed."""
    days_ago: float | None = None
    """Started this many days ago."""
    resource: Literal["ServiceRequest", "CarePlan"] = "ServiceRequest"
    """ServiceRequest or CarePlan."""


class Given(_Model):
    base: Name | None = None
    """Start from this base (under bases:) and change what is given here."""
    age: int | None = None
    """Age in completed years (none: no birth date)."""
    birthday_in_days: int | None = None
    """With age: the next birthday is this many days away."""
    birth_date: str | None = None
    """A FHIR birth date as recorded, e.g. a partial 2008."""
    patient: Literal["recorded", "missing", "unreadable"] = "recorded"
    """The Patient resource: recorded, missing (prefetch null) or unreadable."""
    sex: Literal["female", "male", "other", "unknown"] | None = None
    """The recorded sex."""
    diagnoses: list[Name | Diagnosis] = Field(default_factory=list)
    """Value set names, or diagnoses in full (status, onset, side)."""
    unreadable_conditions: int = 0
    """How many Conditions in the problem list cannot be read."""
    measures: dict[str, Value | SideValues] = Field(default_factory=dict)
    """Metric code -> value, or {left: ..., right: ...} for a side metric."""
    without: list[str] = Field(default_factory=list)
    """Measures of the base to leave out (the metric was not recorded)."""
    strides: int = 12
    """Strides every run-form value was measured over."""
    days_ago: float = 3
    """When every measure was made."""
    gait_mode: GaitMode = "running"
    """Gait mode recorded with every run-form measure (none: not recorded)."""
    strength_test: Literal["isometric", "eccentric", "none"] = "eccentric"
    """Contraction type recorded with every dynamometry measure (none: not recorded)."""
    previous: Earlier | None = None
    """An earlier capture (for change since the previous capture)."""
    captures: list[Capture] = Field(default_factory=list)
    """Measurements in full, when a scenario needs strides, units or capture details."""
    orders: list[Order] = Field(default_factory=list)
    """Orders in the chart (or being placed, with status draft)."""

    def on(self, base: Given) -> Given:
        """This given on top of ``base``: fields set here win; measures merge."""
        merged = base.model_dump(exclude_unset=True) | self.model_dump(exclude_unset=True)
        measures = {**base.measures, **self.measures}
        merged["measures"] = {k: v for k, v in measures.items() if k not in self.without}
        merged["base"] = None
        return Given.model_validate(merged)


class ExpectedCard(_Model):
    rule: Name
    """The rule whose card is expected."""
    indicator: Literal["info", "warning", "critical"]
    """Its indicator: info, warning or critical."""
    sides: list[Side] | None = None
    """The sides it names (default: not checked)."""
    attached: list[Name] | None = None
    """The rules whose text is attached to it (default: not checked)."""

    def matches(self, got: CardOutcome) -> bool:
        return (
            got.rule == self.rule
            and got.indicator == self.indicator
            and (self.sides is None or sorted(self.sides) == sorted(got.sides))
            and (self.attached is None or sorted(self.attached) == sorted(got.attached))
        )

    def describe(self) -> str:
        return describe_card(self.rule, self.indicator, self.sides, self.attached)


class Scenario(_Model):
    name: str = Field(min_length=1)
    """What the scenario shows, in one line; test reports name it."""
    description: str = ""
    """More about the scenario."""
    hook: Hook = "patient-view"
    """The hook called: patient-view, order-select or order-sign."""
    given: Given
    """The patient: age, diagnoses, measures, orders."""
    expect: list[ExpectedCard]
    """Every card expected, and no other ([] for none)."""


class ScenarioFile(_Model):
    bases: dict[Name, Given] = Field(default_factory=dict)
    """Named patients scenarios can start from."""
    scenarios: list[Scenario] = Field(default_factory=list)
    """The test cases."""

    def resolved(self, scenario: Scenario) -> Given:
        base = scenario.given.base
        return scenario.given.on(self.bases[base]) if base else scenario.given


def describe_card(
    rule: str, indicator: str, sides: Sequence[str] | None, attached: Sequence[str] | None
) -> str:
    text = f"{indicator:<8} {rule}"
    if sides:
        text += f" [{', '.join(sides)}]"
    if attached:
        text += f" + {', '.join(attached)}"
    return text


# -- checks ----------------------------------------------------------------------


def _check_metric(code: str, sided: bool, loc: Loc, out: list[PackProblem], hint: str) -> None:
    m = metric(code)
    if m is None or m.group == "quality":
        out.append(
            PackProblem(
                "pack-scenario-unknown-metric",
                loc,
                f"unknown metric {code!r}",
                did_you_mean(code, _metric_codes()) or "see docs/data-contract.md",
            )
        )
    elif m.lateral and not sided:
        out.append(
            PackProblem("pack-scenario-needs-side", loc, f"{code} is measured per side", hint)
        )


def _check_measures(measures: dict[str, Any], loc: Loc, out: list[PackProblem]) -> None:
    for code, value in measures.items():
        sided = isinstance(value, dict)
        _check_metric(code, sided, (*loc, code), out, "write it as {left: 4, right: 7}")


def _metric_codes() -> list[str]:
    return [k for k, v in metrics().items() if v.group != "quality"]


def _check_given(pack: CompiledPack, given: Given, loc: Loc, out: list[PackProblem]) -> None:
    _check_measures(given.measures, (*loc, "measures"), out)
    if given.previous is not None:
        _check_measures(given.previous.measures, (*loc, "previous", "measures"), out)
    for i, code in enumerate(given.without):
        if metric(code) is None:
            hint = did_you_mean(code, _metric_codes()) or "see docs/data-contract.md"
            where = (*loc, "without", i)
            message = f"unknown metric {code!r}"
            out.append(PackProblem("pack-scenario-unknown-metric", where, message, hint))
    for i, dx in enumerate(given.diagnoses):
        name = dx if isinstance(dx, str) else dx.value_set
        value_set = pack.pack.value_sets.get(name)
        if value_set is None:
            out.append(
                PackProblem(
                    "pack-scenario-unknown-value-set",
                    (*loc, "diagnoses", i),
                    f"value set {name!r} is not defined in the pack",
                    did_you_mean(name, pack.pack.value_sets) or "use a name from value_sets:",
                )
            )
        elif isinstance(dx, Diagnosis) and dx.code_index >= len(value_set.codes):
            out.append(
                PackProblem(
                    "pack-scenario-no-such-code",
                    (*loc, "diagnoses", i, "code_index"),
                    f"value set {name!r} has {len(value_set.codes)} codes; "
                    f"code_index {dx.code_index} is past the end",
                    "count from 0 in the value set's codes list",
                )
            )
    for i, order in enumerate(given.orders):
        if plan_display(order.plan) is None:
            out.append(
                PackProblem(
                    "pack-unknown-plan", (*loc, "orders", i, "plan"), f"unknown plan {order.plan!r}"
                )
            )
    for i, cap in enumerate(given.captures):
        _check_metric(
            cap.metric, cap.side is not None, (*loc, "captures", i), out, "add side: right"
        )


def check_scenarios(pack: CompiledPack, scenarios: ScenarioFile) -> list[PackProblem]:
    """Problems with ``scenarios`` for ``pack`` (unknown rules, metrics, value sets, bases)."""
    out: list[PackProblem] = []
    rules = {r.rule.id: r.rule for r in pack.rules}
    for name, base in scenarios.bases.items():
        _check_given(pack, base, ("bases", name), out)
    seen: set[str] = set()
    for i, sc in enumerate(scenarios.scenarios):
        loc: Loc = ("scenarios", i)
        if sc.name in seen:
            out.append(
                PackProblem(
                    "pack-scenario-duplicate", (*loc, "name"), f"duplicate scenario {sc.name!r}"
                )
            )
        seen.add(sc.name)
        if sc.given.base is not None and sc.given.base not in scenarios.bases:
            out.append(
                PackProblem(
                    "pack-scenario-unknown-base",
                    (*loc, "given", "base"),
                    f"base {sc.given.base!r} is not defined",
                    did_you_mean(sc.given.base, scenarios.bases) or "define it under bases:",
                )
            )
        _check_given(pack, sc.given, (*loc, "given"), out)
        for j, card in enumerate(sc.expect):
            for k, rid in enumerate([card.rule, *(card.attached or [])]):
                where = (*loc, "expect", j, "rule" if k == 0 else "attached")
                if rid not in rules:
                    out.append(
                        PackProblem(
                            "pack-scenario-unknown-rule",
                            where,
                            f"scenario {sc.name!r} expects unknown rule {rid!r}",
                            did_you_mean(rid, rules) or "name the id of a rule in this pack",
                        )
                    )
                elif k == 0 and rules[rid].attach_to:
                    out.append(
                        PackProblem(
                            "pack-scenario-attached-rule",
                            where,
                            f"rule {rid!r} shows no card of its own; it is attached to others",
                            "list it under attached: of the card it joins",
                        )
                    )
    return out


# -- building FHIR from a scenario ---------------------------------------------------


_SIDE_CHARS = {"right": "1", "left": "2", "both": "3", "unspecified": "9"}
_SIDE_SITES = {"right": ["24028007"], "left": ["7771000"], "both": ["51440002"]}


@dataclass
class _Builder:
    pack: CompiledPack
    given: Given
    now: datetime
    resources: list[dict[str, Any]] = field(default_factory=list)

    def at(self, days_ago: float) -> datetime:
        return self.now - timedelta(days=days_ago)

    def measure(self, code: str, value: Value | SideValues, days_ago: float) -> None:
        if not isinstance(value, dict):
            self.capture(Capture(metric=code, value=value, days_ago=days_ago))
            return
        for side, v in value.items():
            self.capture(Capture(metric=code, side=side, value=v, days_ago=days_ago))

    def capture(self, cap: Capture) -> None:
        m = metric(cap.metric)
        assert m is not None
        run_form = m.group == "run-form"
        strides = cap.strides
        if strides is None and run_form:
            strides = self.given.strides
        mode = cap.gait_mode or self.given.gait_mode
        value: Value = cap.value if cap.value is not None else 0.0
        when = self.at(cap.days_ago if cap.hours_ago is None else cap.hours_ago / 24)
        obs = metric_observation(
            PATIENT_ID,
            cap.metric,
            value,
            cap.unit,
            effective=when,
            side=cap.side,
            strides=strides,
            gait_mode=mode if run_form and mode != "none" else None,
        )
        obs.setdefault("component", []).extend(self._components(cap, m.group))
        if not obs["component"]:
            del obs["component"]
        if cap.absent is not None or cap.value is None:
            obs.pop("valueQuantity", None)
            obs.pop("valueCodeableConcept", None)
            obs["dataAbsentReason"] = {"text": cap.absent or "not measured"}
        self.resources.append(obs)

    def _components(self, cap: Capture, group: str) -> list[dict[str, Any]]:
        out = []
        if cap.view is not None:
            out.append(coded_component("capture-view", cap.view))
        if cap.fps is not None:
            out.append(quantity_component("frame-rate", cap.fps, "/s"))
        if cap.visible_percent is not None:
            out.append(quantity_component("visible-fraction", cap.visible_percent, "%"))
        if cap.feedback is not None:
            out.append(coded_component("real-time-feedback", cap.feedback))
        test = cap.test or self.given.strength_test
        m = metric(cap.metric)
        if m is not None and "torque_per_mass" in m.dimensions and test != "none":
            out.append(coded_component("contraction-type", test))
        return out

    def condition(self, dx: str | Diagnosis) -> dict[str, Any]:
        dx = Diagnosis(value_set=dx) if isinstance(dx, str) else dx
        codes = self.pack.pack.value_sets[dx.value_set].codes
        code = codes[dx.code_index]
        coded = code.code
        sites: list[str] = []
        if dx.side is not None and code.laterality is not None:
            coded = _with_laterality(coded, code.laterality, _SIDE_CHARS[dx.side])
        elif dx.side is not None:
            sites = _SIDE_SITES.get(dx.side, [])
        since = None if dx.days_ago is None else self.at(dx.days_ago)
        out = condition(
            PATIENT_ID, code.system, coded, since=since, condition_id=f"dx-{dx.value_set}"
        )
        if dx.recorded_days_ago is not None:
            out["recordedDate"] = self.at(dx.recorded_days_ago).isoformat()
        if dx.status == "no-status":
            del out["clinicalStatus"]
        elif dx.status != "confirmed":
            out["verificationStatus"] = {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                        "code": dx.status,
                    }
                ]
            }
        if sites:
            out["bodySite"] = [{"coding": [{"system": SNOMED_SYSTEM, "code": c}]} for c in sites]
        return out

    def person(self) -> Patient | None:
        g = self.given
        if g.patient != "recorded":
            return None
        raw = patient(PATIENT_ID, age_years=g.age, gender=g.sex)
        if g.age is not None and g.birthday_in_days is not None:
            birthday = (self.now + timedelta(days=g.birthday_in_days)).date()
            raw["birthDate"] = birthday.replace(year=birthday.year - g.age - 1).isoformat()
        if g.birth_date is not None:
            raw["birthDate"] = g.birth_date
        return validate(Patient, raw)

    def data(self) -> ClinicalData:
        for code, value in self.given.measures.items():
            self.measure(code, value, self.given.days_ago)
        if self.given.previous is not None:
            for code, value in self.given.previous.measures.items():
                self.measure(code, value, self.given.previous.days_ago)
        for cap in self.given.captures:
            self.capture(cap)
        observations, bad = parse_entries(self.resources, "scenario", Observation)
        raw_conditions = [self.condition(d) for d in self.given.diagnoses]
        raw_conditions += [{"resourceType": "Condition", "id": f"bad-{i}", "code": 5}
                           for i in range(self.given.unreadable_conditions)]  # fmt: skip
        conditions, bad_conditions = parse_entries(raw_conditions, "scenario", Condition)
        if self.given.patient == "unreadable":
            bad.append(Unreadable(resource_type="Patient", id=PATIENT_ID, source="scenario",
                                  reason="birthDate: not a date"))  # fmt: skip
        orders = [self._order(i, o) for i, o in enumerate(self.given.orders)]
        requests, _ = parse_entries(
            [o for o in orders if o["resourceType"] == "ServiceRequest"], "scenario", ServiceRequest
        )
        plans, _ = parse_entries(
            [o for o in orders if o["resourceType"] == "CarePlan"], "scenario", CarePlan
        )
        placed: list[ServiceRequest | CarePlan] = [*requests, *plans]
        return ClinicalData(
            patient=self.person(),
            observations=observations,
            conditions=conditions,
            draft_orders=[o for o in placed if o.status == "draft"],
            orders=[o for o in placed if o.status != "draft"],
            unreadable=bad + bad_conditions,
        )

    def _order(self, i: int, o: Order) -> dict[str, Any]:
        started = None if o.days_ago is None else self.at(o.days_ago)
        order_id = f"{o.status}-{o.plan}-{i}"
        if o.resource == "ServiceRequest":
            return plan_order(PATIENT_ID, o.plan, status=o.status, started=started,
                              order_id=order_id)  # fmt: skip
        out: dict[str, Any] = {
            "resourceType": "CarePlan",
            "id": order_id,
            "status": o.status,
            "intent": "plan",
            "subject": {"reference": f"Patient/{PATIENT_ID}"},
            "activity": [{"detail": {"status": "in-progress", "code": {"coding": [
                {"system": "http://runform-cds.org/fhir/CodeSystem/plans", "code": o.plan}]}}}],
        }  # fmt: skip
        if started is not None:
            out["period"] = {"start": started.isoformat()}
        return out


def _with_laterality(code: str, position: int, char: str) -> str:
    """``code`` padded with X to ``position`` and given the laterality character there."""
    compact = code.replace(".", "")
    compact = (compact + "X" * position)[: position - 1] + char
    return compact[:3] + "." + compact[3:]


# -- running -----------------------------------------------------------------------------


@dataclass
class ScenarioResult:
    name: str
    expected: list[ExpectedCard]
    got: list[CardOutcome]
    error: str | None = None

    missing: list[ExpectedCard] = field(init=False)
    unexpected: list[CardOutcome] = field(init=False)

    def __post_init__(self) -> None:
        """Pair each expected card with one card shown; the rest are the differences."""
        self.unexpected = list(self.got)
        self.missing = []
        for exp in self.expected:
            hit = next((g for g in self.unexpected if exp.matches(g)), None)
            if hit is None:
                self.missing.append(exp)
            else:
                self.unexpected.remove(hit)

    @property
    def passed(self) -> bool:
        return self.error is None and not self.missing and not self.unexpected

    def diff(self) -> list[str]:
        """Readable lines: ``- expected but missing`` and ``+ shown but not expected``."""
        if self.error is not None:
            return [f"! {self.error}"]
        lines = [f"- {e.describe()}" for e in self.missing]
        lines += [
            f"+ {describe_card(g.rule, g.indicator, g.sides, g.attached)}" for g in self.unexpected
        ]
        return lines


def scenario_facts(
    pack: CompiledPack, file: ScenarioFile, scenario: Scenario, now: datetime | None = None
) -> FactSet:
    """The scenario's patient as FHIR, read into facts as the service reads a call."""
    now = now or datetime.now(UTC)
    data = _Builder(pack, file.resolved(scenario), now).data()
    return build_facts(data, pack.policy, now=now)


def decide_scenario(
    pack: CompiledPack,
    file: ScenarioFile,
    scenario: Scenario,
    engine: RuleEngine,
    facts: FactSet | None = None,
) -> Decision:
    """The scenario's patient through facts, engine, cross-check and cards."""
    facts = facts or scenario_facts(pack, file, scenario)
    return decide(pack, engine, facts, hook=scenario.hook, patient_id=PATIENT_ID)


def run_scenario(
    pack: CompiledPack, file: ScenarioFile, scenario: Scenario, engine: RuleEngine
) -> ScenarioResult:
    try:
        decision = decide_scenario(pack, file, scenario, engine)
    except CdsError as exc:
        return ScenarioResult(scenario.name, scenario.expect, [], error=exc.message)
    return ScenarioResult(scenario.name, scenario.expect, decision.outcomes())


def run_scenarios(
    pack: CompiledPack, file: ScenarioFile, engine: RuleEngine | None = None
) -> list[ScenarioResult]:
    """Run every scenario of ``file`` on ``pack`` through the real engine."""
    engine = engine or RuleEngine()
    return [run_scenario(pack, file, sc, engine) for sc in file.scenarios]
