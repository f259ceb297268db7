"""A small evaluator of pack conditions written independently of the engine.

It reads the condition tree directly (no durable-rules, no compiled JSON) and
is used to cross-check what the engine fired, and to name the thresholds that
actually decided a match for the card and the trace.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, assert_never

from cds.fhir.codes import metric
from cds.fhir.fields import (
    AGE,
    AGE_UNKNOWN,
    diagnosis_field,
    order_days_field,
    order_field,
    present_field,
    quality_field,
    sex_field,
)
from cds.fhir.units import convert
from cds.rules.compile import resolve_metric_fields
from cds.rules.pack import (
    AgeCondition,
    AllOf,
    AnyOf,
    Atom,
    Condition,
    DiagnosisCondition,
    FindingCondition,
    MetricCondition,
    NotOf,
    OrderCondition,
    Pack,
    QualityCondition,
    SexCondition,
)

__all__ = ["Decided", "Explanation", "expected_firings", "holds"]

_TESTS = {
    "at_least": lambda a, b: a >= b,
    "above": lambda a, b: a > b,
    "below": lambda a, b: a < b,
    "at_most": lambda a, b: a <= b,
}


@dataclass(frozen=True)
class Decided:
    """One threshold test that decided a match: what was measured against which limit."""

    threshold: str
    subject: str
    op: str
    value: float | None
    unit: str
    #: the side of the fact the test was made on (None: a patient-level fact)
    side: str | None = None
    #: whether the value passed ``op`` (False: the rule asked for it not to)
    crossed: bool = True

    def as_trace(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class Explanation:
    """Thresholds whose test decided the outcome (crossed, or not crossed under ``not``),
    with the values measured against them."""

    thresholds: list[str] = field(default_factory=list)
    decided: list[Decided] = field(default_factory=list)

    def add(self, name: str, test: Decided | None = None) -> None:
        if name not in self.thresholds:
            self.thresholds.append(name)
        if test is not None and test not in self.decided:
            self.decided.append(test)


@dataclass(frozen=True)
class _Test:
    result: bool
    decided: Decided | None = None

    @property
    def threshold(self) -> str | None:
        return self.decided.threshold if self.decided else None


_MEASURE_WORDS = {
    "value": "{m}",
    "lsi": "limb symmetry of {m}",
    "asymmetry": "{m}, this side minus the other",
    "change": "change in {m} since the previous capture",
    "increase": "rise in {m} since the previous capture",
    "norm": "{m} against its norm",
}
_UNITS = {"fraction": "%", "sd": "SD", "days": "days", "years": "years"}


def _compare(
    pack: Pack,
    fact: dict[str, Any],
    fields: list[str],
    op: str,
    name: str,
    dims: tuple[str, ...],
    subject: str,
) -> _Test:
    """Whether any of ``fields`` passes ``op`` against threshold ``name``, and the value."""
    t = pack.thresholds[name]
    limit, dim = convert(t.value, t.unit, dims)
    values = [fact[f] for f in fields if isinstance(fact.get(f), int | float)]
    passing = [v for v in values if _TESTS[op](v, limit)]
    shown = passing[0] if passing else (values[0] if values else None)
    unit = _UNITS.get(dim, t.unit.strip("{}"))
    return _Test(bool(passing), Decided(name, subject, op, shown, unit))


def _metric(pack: Pack, c: MetricCondition, fact: dict[str, Any]) -> _Test:
    m = metric(c.metric)
    assert m is not None
    if c.present is not None:
        return _Test((fact.get(present_field(m)) == 1) == c.present)
    if c.is_ is not None:
        return _Test(fact.get(m.field) == c.is_)
    comparison = c.comparison
    assert comparison is not None
    op, name = comparison
    subject = _MEASURE_WORDS[c.measure].format(m=f"{m.display.lower()} ({m.code})")
    if c.measure == "lsi":
        test = _compare(
            pack, fact, resolve_metric_fields(c, None), op, name, ("fraction",), subject
        )
    elif c.measure == "norm":
        fields = resolve_metric_fields(c, pack.norms[c.metric].unit)
        test = _compare(pack, fact, fields, op, name, ("sd",), subject)
    else:
        fields = resolve_metric_fields(c, pack.thresholds[name].unit)
        test = _compare(pack, fact, fields, op, name, m.dimensions, subject)
    if test.decided is None or not m.lateral or c.measure == "lsi":
        return test
    return _Test(test.result, replace(test.decided, side=fact.get("side")))


def _within(pack: Pack, fact: dict[str, Any], fld: str, limit: str, subject: str) -> _Test:
    return _compare(pack, fact, [fld], "at_most", limit, ("days",), subject)


def _diagnosis(pack: Pack, c: DiagnosisCondition, fact: dict[str, Any]) -> _Test:
    """The diagnosis test; its window (if any) is the deciding threshold once a record
    was there to be dated."""

    def has(part: Any) -> bool:
        return fact.get(diagnosis_field(c.diagnosis, part)) == 1

    def within(part: Any) -> _Test:
        assert c.within is not None
        title = pack.value_sets[c.diagnosis].title if c.diagnosis in pack.value_sets else ""
        subject = f"days since the onset of {title or c.diagnosis}"
        return _within(pack, fact, diagnosis_field(c.diagnosis, part), c.within, subject)

    if c.certainty == "possible":
        if c.within is None:
            return _Test(has("possible"))
        unconfirmed = within("possible_days") if has("possible") else _Test(False)
        if unconfirmed.result:
            return unconfirmed
        undated = within("undated_days")
        return undated if undated.result or undated.decided else unconfirmed
    if not has(""):
        return _Test(False)
    dated = within("days") if c.within is not None else _Test(True)
    part = {"this": "here", "other": "there", "unknown": "unsided"}.get(c.side)
    return _Test(dated.result and (part is None or has(part)), dated.decided)


def _order(pack: Pack, c: OrderCondition, fact: dict[str, Any]) -> _Test:
    if fact.get(order_field(c.order, c.state)) != 1:
        return _Test(False)
    if c.older_than is None:
        return _Test(True)
    started = order_days_field(c.order, c.state)
    subject = f"days since the {c.state} order for {c.order} started"
    return _compare(pack, fact, [started], "at_least", c.older_than, ("days",), subject)


def _age(pack: Pack, c: AgeCondition, fact: dict[str, Any]) -> _Test:
    if c.age == "unknown":
        return _Test(fact.get(AGE_UNKNOWN) == 1)
    comparison = c.age.comparison
    assert comparison is not None
    op, name = comparison
    return _compare(pack, fact, [AGE], op, name, ("years",), "age")


def _atom(pack: Pack, c: Atom, fact: dict[str, Any]) -> _Test:
    match c:
        case MetricCondition():
            return _metric(pack, c, fact)
        case AgeCondition():
            return _age(pack, c, fact)
        case SexCondition():
            return _Test(fact.get(sex_field(c.sex)) == 1)
        case DiagnosisCondition():
            return _diagnosis(pack, c, fact)
        case OrderCondition():
            return _order(pack, c, fact)
        case QualityCondition():
            value = fact.get(quality_field(c.quality))
            return _Test(isinstance(value, int) and value > 0)
        case _:
            assert_never(c)


def holds(
    pack: Pack,
    cond: Condition,
    fact: dict[str, Any],
    why: Explanation | None = None,
    negated: bool = False,
) -> bool:
    """Whether ``cond`` holds on ``fact``; ``why`` collects the deciding thresholds."""
    match cond:
        case NotOf():
            return not holds(pack, cond.not_, fact, why, not negated)
        case FindingCondition():
            return holds(pack, pack.findings[cond.finding].when, fact, why, negated)
        case AllOf() | AnyOf():
            items = cond.all if isinstance(cond, AllOf) else cond.any
            results = [holds(pack, c, fact, why, negated) for c in items]
            return all(results) if isinstance(cond, AllOf) else any(results)
        case _:
            test = _atom(pack, cond, fact)
    if why is not None and test.decided is not None and test.result != negated:
        why.add(test.decided.threshold, replace(test.decided, crossed=test.result))
    return test.result


def expected_firings(
    pack: Pack,
    rules: Sequence[tuple[str, str, Sequence[str], Condition]],
    facts: list[dict[str, Any]],
    hook: str,
) -> dict[tuple[str, int], Explanation]:
    """Which (rule id, fact index) pairs should fire, with why.

    ``rules`` lists ``(rule id, scope, hooks, condition)``.
    """
    out: dict[tuple[str, int], Explanation] = {}
    for rule_id, scope, hooks, cond in rules:
        if hook not in hooks:
            continue
        for i, fact in enumerate(facts):
            why = Explanation()
            if fact.get("kind") == scope and holds(pack, cond, fact, why):
                out[(rule_id, i)] = why
    return out
