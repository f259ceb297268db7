"""A small evaluator of pack conditions written independently of the engine.

It reads the condition tree directly (no durable-rules, no compiled JSON) and
is used to cross-check what the engine fired, and to name the thresholds that
actually decided a match for the card and the trace. Each pack's conditions are
compiled once into Python closures, and a finding read by many rules is
evaluated once per fact: the cross-check costs less than the engine it checks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, assert_never

from cds.fhir.codes import metric
from cds.fhir.fields import (
    AGE,
    AGE_UNKNOWN,
    KIND,
    SIDE,
    DiagnosisPart,
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

__all__ = [
    "Decided",
    "Explanation",
    "ReferenceEvaluator",
    "evaluator",
    "expected_firings",
    "holds",
]

_TESTS: dict[str, Callable[[float, float], bool]] = {
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


Fact = dict[str, Any]
#: a compiled condition: whether it holds on a fact; deciding tests go to the run's sink
Check = Callable[[Fact, "_Run"], bool]
#: a compiled threshold test: whether it passed, and the value shown for it
Compare = Callable[[Fact], tuple[bool, float | None]]

_MEASURE_WORDS = {
    "value": "{m}",
    "lsi": "limb symmetry of {m}",
    "asymmetry": "{m}, this side minus the other",
    "change": "change in {m} since the previous capture",
    "increase": "rise in {m} since the previous capture",
    "norm": "{m} against its norm",
}
_UNITS = {"fraction": "%", "sd": "SD", "days": "days", "years": "years"}
_SIDE_PART: dict[str, DiagnosisPart] = {"this": "here", "other": "there", "unknown": "unsided"}


class _Run:
    """One evaluation on one fact: the deciding tests found so far, and the findings
    already evaluated on this fact (a finding read by many rules is evaluated once)."""

    __slots__ = ("memo", "sink")

    def __init__(self, memo: dict[tuple[str, bool], tuple[bool, list[Decided]]]) -> None:
        self.memo = memo
        self.sink: list[Decided] = []


def _always(result: bool) -> Check:
    return lambda fact, run: result


class ReferenceEvaluator:
    """The pack's conditions compiled once into plain Python checks.

    Each condition is compiled for the polarity it is read under (a ``not`` flips
    it), so a check knows whether its test decides the outcome when it passes or
    when it fails, and records it then. Limits are converted and field names and
    wording made once, at compile time; a call only compares numbers.
    """

    def __init__(self, pack: Pack) -> None:
        self.pack = pack
        self._findings: dict[tuple[str, bool], Check] = {}
        self._compiled: dict[tuple[int, bool], Check] = {}  # by (id of the condition, polarity)

    # -- evaluation ----------------------------------------------------------------
    def holds(
        self, cond: Condition, fact: Fact, why: Explanation | None = None, *,
        memo: dict[tuple[str, bool], tuple[bool, list[Decided]]] | None = None,
    ) -> bool:  # fmt: skip
        """Whether ``cond`` holds on ``fact``; ``why`` collects the deciding thresholds."""
        run = _Run({} if memo is None else memo)
        result = self.compile(cond, False)(fact, run)
        if why is not None:
            for test in run.sink:
                why.add(test.threshold, test)
        return result

    def finding_holds(self, name: str, fact: Fact, memo: dict[Any, Any] | None = None) -> bool:
        return self._finding(name, False)(fact, _Run({} if memo is None else memo))

    def expected_firings(
        self,
        rules: Sequence[tuple[str, str, Sequence[str], Condition]],
        facts: list[Fact],
        hook: str,
        memos: list[dict[Any, Any]] | None = None,
    ) -> dict[tuple[str, int], Explanation]:
        """Which (rule id, fact index) pairs should fire, with why; ``rules`` lists
        ``(rule id, scope, hooks, condition)``; ``memos``: per fact, findings known."""
        memos = memos or [{} for _ in facts]
        out: dict[tuple[str, int], Explanation] = {}
        for rule_id, scope, hooks, cond in rules:
            if hook not in hooks:
                continue
            for i, fact in enumerate(facts):
                why = Explanation()
                if fact.get(KIND) == scope and self.holds(cond, fact, why, memo=memos[i]):
                    out[(rule_id, i)] = why
        return out

    # -- compilation ---------------------------------------------------------------
    def compile(self, cond: Condition, negated: bool) -> Check:
        key = id(cond), negated
        cached = self._compiled.get(key)
        if cached is None:
            cached = self._compiled[key] = self._tree(cond, negated)
        return cached

    def _tree(self, cond: Condition, negated: bool) -> Check:
        match cond:
            case NotOf():
                inner = self.compile(cond.not_, not negated)
                return lambda fact, run: not inner(fact, run)
            case FindingCondition():
                return self._finding(cond.finding, negated)
            case AllOf() | AnyOf():
                items = cond.all if isinstance(cond, AllOf) else cond.any
                parts = [self.compile(c, negated) for c in items]
                # every part is evaluated (no short cut): each may name a deciding test
                if isinstance(cond, AllOf):
                    return lambda fact, run: all([p(fact, run) for p in parts])
                return lambda fact, run: any([p(fact, run) for p in parts])
            case _:
                return self._atom(cond, negated)

    def _finding(self, name: str, negated: bool) -> Check:
        key = name, negated
        if key in self._findings:
            return self._findings[key]
        self._findings[key] = _always(False)  # a cycle (refused by the compiler) ends here
        inner = self.compile(self.pack.findings[name].when, negated)

        def check(fact: Fact, run: _Run) -> bool:
            known = run.memo.get(key)
            if known is None:
                outer, run.sink = run.sink, []
                known = run.memo[key] = (inner(fact, run), run.sink)
                run.sink = outer
            run.sink.extend(known[1])
            return known[0]

        self._findings[key] = check
        return check

    def _atom(self, c: Atom, negated: bool) -> Check:
        match c:
            case MetricCondition():
                return self._metric(c, negated)
            case AgeCondition():
                if c.age == "unknown":
                    return _flag(AGE_UNKNOWN)
                op, name = _comparison(c.age.comparison)
                return self._decides(self._compare([AGE], op, name, ("years",)), negated,
                                     name, "age", op, self._unit(name, ("years",)))  # fmt: skip
            case SexCondition():
                return _flag(sex_field(c.sex))
            case DiagnosisCondition():
                return self._diagnosis(c, negated)
            case OrderCondition():
                return self._order(c, negated)
            case QualityCondition():
                fld = quality_field(c.quality)
                return lambda fact, run: _positive_int(fact.get(fld))
            case _:
                assert_never(c)

    def _compare(self, fields: list[str], op: str, name: str, dims: tuple[str, ...]) -> Compare:
        t = self.pack.thresholds[name]
        limit, _ = convert(t.value, t.unit, dims)
        passes = _TESTS[op]

        def compare(fact: Fact) -> tuple[bool, float | None]:
            values = [fact[f] for f in fields if isinstance(fact.get(f), int | float)]
            for v in values:
                if passes(v, limit):
                    return True, v
            return False, values[0] if values else None

        return compare

    def _unit(self, name: str, dims: tuple[str, ...]) -> str:
        t = self.pack.thresholds[name]
        _, dim = convert(t.value, t.unit, dims)
        return _UNITS.get(dim, t.unit.strip("{}"))

    @staticmethod
    def _decides(compare: Compare, negated: bool, name: str, subject: str, op: str, unit: str,
                 lateral: bool = False) -> Check:  # fmt: skip
        """A threshold test that records itself when it decides the outcome."""

        def check(fact: Fact, run: _Run) -> bool:
            result, shown = compare(fact)
            if result != negated:
                side = fact.get(SIDE) if lateral else None
                run.sink.append(Decided(name, subject, op, shown, unit, side, result))
            return result

        return check

    def _metric(self, c: MetricCondition, negated: bool) -> Check:
        m = metric(c.metric)
        assert m is not None
        if c.present is not None:
            present, wanted = present_field(m), c.present
            return lambda fact, run: (fact.get(present) == 1) == wanted
        if c.is_ is not None:
            fld, value = m.field, c.is_
            return lambda fact, run: fact.get(fld) == value
        op, name = _comparison(c.comparison)
        subject = _MEASURE_WORDS[c.measure].format(m=f"{m.display.lower()} ({m.code})")
        dims: tuple[str, ...]
        if c.measure == "lsi":
            fields, dims = resolve_metric_fields(c, None), ("fraction",)
        elif c.measure == "norm":
            fields, dims = resolve_metric_fields(c, self.pack.norms[c.metric].unit), ("sd",)
        else:
            fields, dims = resolve_metric_fields(c, self.pack.thresholds[name].unit), m.dimensions
        lateral = m.lateral and c.measure != "lsi"
        compare = self._compare(fields, op, name, dims)
        return self._decides(compare, negated, name, subject, op, self._unit(name, dims), lateral)

    def _diagnosis(self, c: DiagnosisCondition, negated: bool) -> Check:
        """The diagnosis test; its window (if any) is the deciding threshold once a
        record was there to be dated."""

        def has(part: DiagnosisPart) -> Callable[[Fact], bool]:
            fld = diagnosis_field(c.diagnosis, part)
            return lambda fact: fact.get(fld) == 1

        def within(part: DiagnosisPart) -> Check:
            assert c.within is not None
            vs = self.pack.value_sets.get(c.diagnosis)
            subject = f"days since the onset of {(vs.title if vs else '') or c.diagnosis}"
            compare = self._compare([diagnosis_field(c.diagnosis, part)], "at_most", c.within,
                                    ("days",))  # fmt: skip
            unit = self._unit(c.within, ("days",))
            return self._decides(compare, negated, c.within, subject, "at_most", unit)

        possible, confirmed = has("possible"), has("")
        if c.certainty == "possible":
            if c.within is None:
                return lambda fact, run: possible(fact)
            unconfirmed, undated = within("possible_days"), within("undated_days")

            def possibly(fact: Fact, run: _Run) -> bool:
                # the confirmed-but-undated window decides when the possible one does not
                if possible(fact):
                    before = len(run.sink)
                    if unconfirmed(fact, run):
                        return True
                    del run.sink[before:]
                return undated(fact, run)

            return possibly
        part = _SIDE_PART.get(c.side)
        sided = has(part) if part is not None else (lambda fact: True)
        if c.within is None:
            return lambda fact, run: confirmed(fact) and sided(fact)
        vs = self.pack.value_sets.get(c.diagnosis)
        subject = f"days since the onset of {(vs.title if vs else '') or c.diagnosis}"
        window = self._compare([diagnosis_field(c.diagnosis, "days")], "at_most", c.within,
                               ("days",))  # fmt: skip
        unit, limit = self._unit(c.within, ("days",)), c.within

        def dated(fact: Fact, run: _Run) -> bool:
            if not confirmed(fact):
                return False
            inside, shown = window(fact)
            result = inside and sided(fact)
            if result != negated:  # the window decided, whichever side the record is on
                run.sink.append(Decided(limit, subject, "at_most", shown, unit, None, result))
            return result

        return dated

    def _order(self, c: OrderCondition, negated: bool) -> Check:
        flag = order_field(c.order, c.state)
        if c.older_than is None:
            return lambda fact, run: fact.get(flag) == 1
        subject = f"days since the {c.state} order for {c.order} started"
        started = order_days_field(c.order, c.state)
        compare = self._compare([started], "at_least", c.older_than, ("days",))
        unit = self._unit(c.older_than, ("days",))
        test = self._decides(compare, negated, c.older_than, subject, "at_least", unit)
        return lambda fact, run: fact.get(flag) == 1 and test(fact, run)


def _comparison(comparison: tuple[str, str] | None) -> tuple[str, str]:
    assert comparison is not None
    return comparison


def _flag(fld: str) -> Check:
    return lambda fact, run: fact.get(fld) == 1


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and value > 0


_EVALUATORS: dict[int, ReferenceEvaluator] = {}


def evaluator(pack: Pack) -> ReferenceEvaluator:
    """The compiled evaluator of ``pack`` (compiled on first use, then kept)."""
    found = _EVALUATORS.get(id(pack))
    if found is None or found.pack is not pack:
        if len(_EVALUATORS) > 32:  # packs replaced by hot reloads
            _EVALUATORS.clear()
        found = _EVALUATORS[id(pack)] = ReferenceEvaluator(pack)
    return found


def holds(pack: Pack, cond: Condition, fact: Fact, why: Explanation | None = None) -> bool:
    """Whether ``cond`` holds on ``fact``; ``why`` collects the deciding thresholds."""
    return evaluator(pack).holds(cond, fact, why)


def expected_firings(
    pack: Pack,
    rules: Sequence[tuple[str, str, Sequence[str], Condition]],
    facts: list[Fact],
    hook: str,
) -> dict[tuple[str, int], Explanation]:
    """Which (rule id, fact index) pairs should fire, with why.

    ``rules`` lists ``(rule id, scope, hooks, condition)``.
    """
    return evaluator(pack).expected_firings(rules, facts, hook)
