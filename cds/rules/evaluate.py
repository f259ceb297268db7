"""A small evaluator of pack conditions written independently of the engine.

It reads the condition tree directly (no durable-rules, no compiled JSON) and
is used to cross-check what the engine fired, and to name the thresholds that
actually decided a match for the card and the trace.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

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

__all__ = ["Explanation", "expected_firings", "holds"]

_TESTS = {
    "at_least": lambda a, b: a >= b,
    "above": lambda a, b: a > b,
    "below": lambda a, b: a < b,
    "at_most": lambda a, b: a <= b,
}


@dataclass
class Explanation:
    """Thresholds whose test decided the outcome (crossed, or not crossed under ``not``)."""

    thresholds: list[str] = field(default_factory=list)

    def add(self, name: str) -> None:
        if name not in self.thresholds:
            self.thresholds.append(name)


def _compare(
    pack: Pack, fact: dict[str, Any], fields: list[str], op: str, name: str, dims: tuple[str, ...]
) -> bool:
    t = pack.thresholds[name]
    limit, _ = convert(t.value, t.unit, dims)
    values = [fact[f] for f in fields if isinstance(fact.get(f), int | float)]
    return any(_TESTS[op](v, limit) for v in values)


def _metric(pack: Pack, c: MetricCondition, fact: dict[str, Any]) -> tuple[bool, str | None]:
    m = metric(c.metric)
    assert m is not None
    if c.present is not None:
        return (fact.get(present_field(m)) == 1) == c.present, None
    if c.is_ is not None:
        return fact.get(m.field) == c.is_, None
    comparison = c.comparison
    assert comparison is not None
    op, name = comparison
    if c.measure == "lsi":
        return _compare(pack, fact, resolve_metric_fields(c, None), op, name, ("fraction",)), name
    if c.measure == "norm":
        fields = resolve_metric_fields(c, pack.norms[c.metric].unit)
        return _compare(pack, fact, fields, op, name, ("sd",)), name
    fields = resolve_metric_fields(c, pack.thresholds[name].unit)
    return _compare(pack, fact, fields, op, name, m.dimensions), name


def _within(pack: Pack, fact: dict[str, Any], fld: str, limit: str) -> bool:
    return _compare(pack, fact, [fld], "at_most", limit, ("days",))


def _diagnosis(pack: Pack, c: DiagnosisCondition, fact: dict[str, Any]) -> bool:
    def has(part: Any) -> bool:
        return fact.get(diagnosis_field(c.diagnosis, part)) == 1

    def within(part: Any) -> bool:
        assert c.within is not None
        return _within(pack, fact, diagnosis_field(c.diagnosis, part), c.within)

    if c.certainty == "possible":
        if c.within is None:
            return has("possible")
        return (has("possible") and within("possible_days")) or within("undated_days")
    if not has(""):
        return False
    if c.within is not None and not within("days"):
        return False
    part = {"this": "here", "other": "there", "unknown": "unsided"}.get(c.side)
    return part is None or has(part)


def _order(pack: Pack, c: OrderCondition, fact: dict[str, Any]) -> bool:
    if fact.get(order_field(c.order, c.state)) != 1:
        return False
    if c.older_than is None:
        return True
    started = order_days_field(c.order, c.state)
    return _compare(pack, fact, [started], "at_least", c.older_than, ("days",))


def _atom(pack: Pack, c: Condition, fact: dict[str, Any]) -> tuple[bool, str | None]:
    if isinstance(c, MetricCondition):
        return _metric(pack, c, fact)
    if isinstance(c, AgeCondition):
        if c.age == "unknown":
            return fact.get(AGE_UNKNOWN) == 1, None
        comparison = c.age.comparison
        assert comparison is not None
        op, name = comparison
        return _compare(pack, fact, [AGE], op, name, ("years",)), name
    if isinstance(c, SexCondition):
        return fact.get(sex_field(c.sex)) == 1, None
    if isinstance(c, DiagnosisCondition):
        # the window decided only if a record was there to be dated
        dated = c.within if _diagnosis(pack, c.model_copy(update={"within": None}), fact) else None
        return _diagnosis(pack, c, fact), dated
    if isinstance(c, OrderCondition):
        ordered = fact.get(order_field(c.order, c.state)) == 1
        return _order(pack, c, fact), c.older_than if ordered else None
    if isinstance(c, QualityCondition):
        value = fact.get(quality_field(c.quality))
        return isinstance(value, int) and value > 0, None
    raise TypeError(type(c))


def holds(
    pack: Pack,
    cond: Condition,
    fact: dict[str, Any],
    why: Explanation | None = None,
    negated: bool = False,
) -> bool:
    """Whether ``cond`` holds on ``fact``; ``why`` collects the deciding thresholds."""
    if isinstance(cond, NotOf):
        return not holds(pack, cond.not_, fact, why, not negated)
    if isinstance(cond, FindingCondition):
        return holds(pack, pack.findings[cond.finding].when, fact, why, negated)
    if isinstance(cond, AllOf | AnyOf):
        items = cond.all if isinstance(cond, AllOf) else cond.any
        results = [holds(pack, c, fact, why, negated) for c in items]
        return all(results) if isinstance(cond, AllOf) else any(results)
    result, name = _atom(pack, cond, fact)
    if why is not None and name is not None and result != negated:
        why.add(name)
    return result


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
