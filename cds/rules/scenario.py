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
from cds.fhir.codes import Side, metric, metrics, plan_display
from cds.fhir.facts import ClinicalData, build_facts
from cds.fhir.observations import metric_observation
from cds.fhir.parse import CarePlan, Condition, Observation, Patient, ServiceRequest, parse_entries
from cds.rules.compile import CompiledPack
from cds.rules.decide import CardOutcome, decide
from cds.rules.engine import RuleEngine
from cds.rules.pack import Hook, Name
from cds.rules.problems import Loc, PackProblem, did_you_mean

__all__ = ["Scenario", "ScenarioFile", "ScenarioResult", "check_scenarios", "run_scenarios"]

PATIENT_ID = "scenario-patient"
Value = float | str
SideValues = dict[Side, Value]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Capture(_Model):
    """One measurement in full: when a scenario needs strides, units or an absent value."""

    metric: str
    side: Side | None = None
    value: Value | None = None
    unit: str | None = None
    strides: int | None = None
    days_ago: float = 3
    absent: str | None = None


class Earlier(_Model):
    days_ago: float = Field(gt=0)
    measures: dict[str, Value | SideValues] = Field(default_factory=dict)


class Diagnosis(_Model):
    value_set: Name
    days_ago: float | None = None


class Order(_Model):
    plan: str
    status: Literal["draft", "active", "completed"] = "active"
    days_ago: float | None = None


class Given(_Model):
    base: Name | None = None
    age: int | None = None
    sex: Literal["female", "male", "other", "unknown"] | None = None
    diagnoses: list[Name | Diagnosis] = Field(default_factory=list)
    measures: dict[str, Value | SideValues] = Field(default_factory=dict)
    strides: int = 12
    days_ago: float = 3
    previous: Earlier | None = None
    captures: list[Capture] = Field(default_factory=list)
    orders: list[Order] = Field(default_factory=list)

    def on(self, base: Given) -> Given:
        """This given on top of ``base``: fields set here win; measures merge."""
        merged = base.model_dump(exclude_unset=True) | self.model_dump(exclude_unset=True)
        merged["measures"] = {**base.measures, **self.measures}
        merged["base"] = None
        return Given.model_validate(merged)


class ExpectedCard(_Model):
    rule: Name
    indicator: Literal["info", "warning", "critical"]
    sides: list[Side] | None = None
    attached: list[Name] | None = None

    def matches(self, got: CardOutcome) -> bool:
        return (
            got.rule == self.rule
            and got.indicator == self.indicator
            and (self.sides is None or sorted(self.sides) == sorted(got.sides))
            and (self.attached is None or sorted(self.attached) == sorted(got.attached))
        )

    def describe(self) -> str:
        return _describe(self.rule, self.indicator, self.sides, self.attached)


class Scenario(_Model):
    name: str = Field(min_length=1)
    description: str = ""
    hook: Hook = "patient-view"
    given: Given
    expect: list[ExpectedCard]


class ScenarioFile(_Model):
    bases: dict[Name, Given] = Field(default_factory=dict)
    scenarios: list[Scenario] = Field(default_factory=list)

    def resolved(self, scenario: Scenario) -> Given:
        base = scenario.given.base
        return scenario.given.on(self.bases[base]) if base else scenario.given


def _describe(
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
    for i, dx in enumerate(given.diagnoses):
        name = dx if isinstance(dx, str) else dx.value_set
        if name not in pack.pack.value_sets:
            out.append(
                PackProblem(
                    "pack-scenario-unknown-value-set",
                    (*loc, "diagnoses", i),
                    f"value set {name!r} is not defined in the pack",
                    did_you_mean(name, pack.pack.value_sets) or "use a name from value_sets:",
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
        strides = cap.strides
        if strides is None and m.group == "run-form":
            strides = self.given.strides
        value: Value = cap.value if cap.value is not None else 0.0
        obs = metric_observation(
            PATIENT_ID,
            cap.metric,
            value,
            cap.unit,
            effective=self.at(cap.days_ago),
            side=cap.side,
            strides=strides,
        )
        if cap.absent is not None or cap.value is None:
            obs.pop("valueQuantity", None)
            obs.pop("valueCodeableConcept", None)
            obs["dataAbsentReason"] = {"text": cap.absent or "not measured"}
        self.resources.append(obs)

    def condition(self, dx: str | Diagnosis) -> dict[str, Any]:
        dx = Diagnosis(value_set=dx) if isinstance(dx, str) else dx
        code = self.pack.pack.value_sets[dx.value_set][0]
        since = None if dx.days_ago is None else self.at(dx.days_ago)
        return condition(
            PATIENT_ID, code.system, code.code, since=since, condition_id=f"dx-{dx.value_set}"
        )

    def data(self) -> ClinicalData:
        for code, value in self.given.measures.items():
            self.measure(code, value, self.given.days_ago)
        if self.given.previous is not None:
            for code, value in self.given.previous.measures.items():
                self.measure(code, value, self.given.previous.days_ago)
        for cap in self.given.captures:
            self.capture(cap)
        observations, bad = parse_entries(self.resources, "scenario", Observation)
        conditions, _ = parse_entries(
            [self.condition(d) for d in self.given.diagnoses], "scenario", Condition
        )
        orders = [
            plan_order(
                PATIENT_ID,
                o.plan,
                status=o.status,
                started=None if o.days_ago is None else self.at(o.days_ago),
                order_id=f"{o.status}-{o.plan}-{i}",
            )
            for i, o in enumerate(self.given.orders)
        ]
        parsed_orders, _ = parse_entries(orders, "scenario", ServiceRequest)
        person = Patient.model_validate(
            patient(PATIENT_ID, age_years=self.given.age, gender=self.given.sex)
        )
        drafts: list[ServiceRequest | CarePlan] = [o for o in parsed_orders if o.status == "draft"]
        return ClinicalData(
            patient=person,
            observations=observations,
            conditions=conditions,
            draft_orders=drafts,
            active_orders=[o for o in parsed_orders if o.status != "draft"],
            unreadable=bad,
        )


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
            f"+ {_describe(g.rule, g.indicator, g.sides, g.attached)}" for g in self.unexpected
        ]
        return lines


def run_scenario(
    pack: CompiledPack, file: ScenarioFile, scenario: Scenario, engine: RuleEngine
) -> ScenarioResult:
    now = datetime.now(UTC)
    given = file.resolved(scenario)
    try:
        data = _Builder(pack, given, now).data()
        facts = build_facts(data, pack.policy, now=now)
        decision = decide(pack, engine, facts, hook=scenario.hook, patient_id=PATIENT_ID)
    except CdsError as exc:
        return ScenarioResult(scenario.name, scenario.expect, [], error=exc.message)
    return ScenarioResult(scenario.name, scenario.expect, decision.outcomes())


def run_scenarios(
    pack: CompiledPack, file: ScenarioFile, engine: RuleEngine | None = None
) -> list[ScenarioResult]:
    """Run every scenario of ``file`` on ``pack`` through the real engine."""
    engine = engine or RuleEngine()
    return [run_scenario(pack, file, sc, engine) for sc in file.scenarios]
