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
from cds.fhir.facts import diagnosis_field, order_field
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
        return (fact.get(f"{m.field}__present") == 1) == c.present, None
    if c.is_ is not None:
        return fact.get(m.field) == c.is_, None
    comparison = c.comparison
    assert comparison is not None
    op, name = comparison
    t = pack.thresholds[name]
    if c.measure == "lsi":
        return _compare(pack, fact, resolve_metric_fields(c, None), op, name, ("fraction",)), name
    fields = resolve_metric_fields(c, t.unit)
    return _compare(pack, fact, fields, op, name, m.dimensions), name


def _dated(
    pack: Pack, fact: dict[str, Any], fld: str, op: str, limit: str | None
) -> tuple[bool, str | None]:
    if fact.get(fld) != 1:
        return False, None
    if limit is None:
        return True, None
    return _compare(pack, fact, [f"{fld}__days"], op, limit, ("days",)), limit


def _atom(pack: Pack, c: Condition, fact: dict[str, Any]) -> tuple[bool, str | None]:
    if isinstance(c, MetricCondition):
        return _metric(pack, c, fact)
    if isinstance(c, AgeCondition):
        comparison = c.age.comparison
        assert comparison is not None
        op, name = comparison
        return _compare(pack, fact, ["age_years"], op, name, ("years",)), name
    if isinstance(c, SexCondition):
        return fact.get(f"sex_{c.sex}") == 1, None
    if isinstance(c, DiagnosisCondition):
        return _dated(pack, fact, diagnosis_field(c.diagnosis), "at_most", c.within)
    if isinstance(c, OrderCondition):
        return _dated(pack, fact, order_field(c.order, c.state), "at_least", c.older_than)
    if isinstance(c, QualityCondition):
        value = fact.get(f"q_{c.quality}")
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
        return holds(pack, pack.findings[cond.finding], fact, why, negated)
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
