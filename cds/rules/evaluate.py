"""A small evaluator of pack conditions written independently of the engine.

It reads the condition tree directly (no durable-rules, no compiled JSON) and
is used to cross-check what the engine fired, and to name the thresholds that
actually decided a match for the card and the trace. Each pack's conditions are
compiled once into Python closures, and a finding read by many rules is
evaluated once per fact: the cross-check costs less than the engine it checks.

It shares no resolution code with the compiler: it converts threshold units with
its own table and resolves each metric test's fact fields itself (field names
come from :mod:`cds.fhir.fields`, the one place they are made). Before it reads
the facts, :mod:`cds.rules.reread` re-derives their metric fields from the parsed
Observations with the same table and its own metric and side resolution, so fact
building is checked too.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, assert_never

from cds.fhir.codes import Metric, metric
from cds.fhir.fields import (
    AGE,
    AGE_UNKNOWN,
    KIND,
    SIDE,
    DiagnosisPart,
    Fact,
    diagnosis_field,
    lsi_field,
    measure_field,
    order_days_field,
    order_field,
    present_field,
    quality_field,
    sex_field,
)
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
from cds.rules.records import DecidedEntry

__all__ = [
    "Decided",
    "Explanation",
    "ReferenceEvaluator",
    "canonical_value",
    "evaluator",
    "holds",
]

_TESTS: dict[str, Callable[[float, float], bool]] = {
    "at_least": lambda a, b: a >= b,
    "above": lambda a, b: a > b,
    "below": lambda a, b: a < b,
    "at_most": lambda a, b: a <= b,
}


class Decided(NamedTuple):
    """One threshold test that decided a match: what was measured against which limit.

    A named tuple: made and hashed by the hundred in every call's cross-check, where a
    frozen dataclass cost three times as much."""

    threshold: str
    subject: str
    op: str
    value: float | None
    unit: str
    #: the side of the fact the test was made on (None: a patient-level fact)
    side: str | None = None
    #: whether the value passed ``op`` (False: the rule asked for it not to)
    crossed: bool = True

    def as_trace(self) -> DecidedEntry:
        entry = DecidedEntry(
            threshold=self.threshold, subject=self.subject, op=self.op, unit=self.unit,
            crossed=self.crossed,
        )  # fmt: skip
        if self.value is not None:
            entry["value"] = self.value
        if self.side is not None:
            entry["side"] = self.side
        return entry


@dataclass
class Explanation:
    """Thresholds whose test decided the outcome (crossed, or not crossed under ``not``),
    with the values measured against them."""

    thresholds: list[str] = field(default_factory=list)
    decided: list[Decided] = field(default_factory=list)
    _seen: set[Decided] = field(default_factory=set, repr=False, compare=False)

    def add(self, name: str, test: Decided | None = None) -> None:
        if name not in self.thresholds:
            self.thresholds.append(name)
        if test is not None and test not in self._seen:
            self._seen.add(test)
            self.decided.append(test)

    def add_tests(self, tests: Iterable[Decided]) -> Explanation:
        """Add each deciding test under its threshold; returns ``self``."""
        for test in tests:
            self.add(test.threshold, test)
        return self


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

#: The evaluator's own unit table: threshold units to each dimension's canonical unit,
#: written apart from ``cds.fhir.units`` (which the compiler uses) so that a mistake
#: in either shows as a disagreement. ``g``: standard gravity, m/s2.
_G = 9.80665
_TO_CANONICAL: dict[str, dict[str, float]] = {
    "angle": {"deg": 1.0, "rad": 180.0 / math.pi},
    "rate": {"/min": 1.0, "{steps}/min": 1.0, "{step}/min": 1.0, "/s": 60.0},
    "frequency": {"/s": 1.0, "Hz": 1.0, "{frames}/s": 1.0},
    "time": {"s": 1.0, "ms": 1e-3, "min": 60.0, "h": 3600.0},
    "force": {"N": 1.0, "kN": 1e3, "[lbf_av]": 0.45359237 * _G},
    "torque": {"N.m": 1.0},
    "torque_per_mass": {"N.m/kg": 1.0, "%{BW}.m": _G / 100},
    "force_per_mass": {"N/kg": 1.0, "%": _G / 100, "%{BW}": _G / 100},
    "fraction": {"%": 1.0, "1": 100.0},
    "length": {"cm": 1.0, "m": 100.0, "mm": 0.1},
    "count": {"{strides}": 1.0, "{steps}": 1.0, "1": 1.0},
    "days": {"d": 1.0, "wk": 7.0, "mo": 365.25 / 12, "a": 365.25, "h": 1 / 24, "min": 1 / 1440},
    "years": {"a": 1.0},
    "score": {"{score}": 1.0, "1": 1.0},
    "sd": {"{SD}": 1.0},
}


def canonical_value(value: float, unit: str, dims: tuple[str, ...]) -> tuple[float, str]:
    """``value unit`` in the canonical unit of the first of ``dims`` it belongs to, and
    that dimension (the evaluator's own conversion; ValueError for a unit it lacks)."""
    for dim in dims:
        factor = _TO_CANONICAL.get(dim, {}).get(unit)
        if factor is not None:
            return value * factor, dim
    raise ValueError(f"the reference evaluator cannot read unit {unit!r} as {' or '.join(dims)}")


def _metric_fields(m: Metric, measure: str, unit: str | None) -> list[str]:
    """The fact fields a metric test reads: the evaluator's own resolution."""
    if measure == "lsi":
        return [lsi_field(m)]
    if unit is None:
        return [present_field(m)]
    return [measure_field(m, canonical_value(0.0, unit, m.dimensions)[1], measure)]


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


# Every part is evaluated, with no short cut: each may name a deciding test.
def _all_of(parts: list[Check]) -> Check:
    def all_of(fact: Fact, run: _Run) -> bool:
        held = True
        for part in parts:
            if not part(fact, run):
                held = False
        return held

    return all_of


def _any_of(parts: list[Check]) -> Check:
    def any_of(fact: Fact, run: _Run) -> bool:
        held = False
        for part in parts:
            if part(fact, run):
                held = True
        return held

    return any_of


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
        # calls are evaluated on several threads: compiling is done under this lock (a
        # finding's cycle guard must never be seen by another thread as its check)
        self._lock = threading.RLock()
        self._compiling: set[tuple[str, bool]] = set()  # findings being compiled (cycles)

    # -- evaluation ----------------------------------------------------------------
    def holds(
        self, cond: Condition, fact: Fact, why: Explanation | None = None, *,
        memo: dict[tuple[str, bool], tuple[bool, list[Decided]]] | None = None,
    ) -> bool:  # fmt: skip
        """Whether ``cond`` holds on ``fact``; ``why`` collects the deciding thresholds."""
        run = _Run({} if memo is None else memo)
        result = self.compile(cond, False)(fact, run)
        if why is not None:
            why.add_tests(run.sink)
        return result

    def holding_findings(
        self, findings: Sequence[tuple[str, str]], facts: list[Fact], memos: list[dict[Any, Any]]
    ) -> set[tuple[str, int]]:
        """Which (finding id, fact index) pairs hold; ``findings`` lists (id, name).
        ``memos``: per fact, where the findings' outcomes are kept for the rules."""
        checks = [(finding_id, self._finding(name, False)) for finding_id, name in findings]
        out = set()
        for i, fact in enumerate(facts):
            run = _Run(memos[i])  # its deciding tests are not wanted: a rule collects its own
            for finding_id, check in checks:
                if check(fact, run):
                    out.add((finding_id, i))
        return out

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
            check = self.compile(cond, False)
            for i, fact in enumerate(facts):
                if fact.get(KIND) != scope:
                    continue
                run = _Run(memos[i])
                if check(fact, run):
                    out[(rule_id, i)] = Explanation().add_tests(run.sink)
        return out

    # -- compilation ---------------------------------------------------------------
    def compile(self, cond: Condition, negated: bool) -> Check:
        key = id(cond), negated
        cached = self._compiled.get(key)
        if cached is None:
            with self._lock:
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
                return _all_of(parts) if isinstance(cond, AllOf) else _any_of(parts)
            case _:
                return self._atom(cond, negated)

    def _finding(self, name: str, negated: bool) -> Check:
        key = name, negated
        found = self._findings.get(key)
        if found is not None:
            return found
        with self._lock:
            found = self._findings.get(key)
            if found is not None:  # compiled by another thread meanwhile
                return found
            if key in self._compiling:  # a cycle (the compiler refuses such packs)
                return _always(False)
            self._compiling.add(key)
            try:
                inner = self.compile(self.pack.findings[name].when, negated)
            finally:
                self._compiling.discard(key)
            check = self._findings[key] = self._finding_check(key, inner)
            return check

    @staticmethod
    def _finding_check(key: tuple[str, bool], inner: Check) -> Check:

        def check(fact: Fact, run: _Run) -> bool:
            known = run.memo.get(key)
            if known is None:
                outer, run.sink = run.sink, []
                known = run.memo[key] = (inner(fact, run), run.sink)
                run.sink = outer
            run.sink.extend(known[1])
            return known[0]

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
        limit, _ = canonical_value(t.value, t.unit, dims)
        passes = _TESTS[op]

        if len(fields) == 1:  # nearly every test: one field, no list to build
            (only,) = fields

            def compare_one(fact: Fact) -> tuple[bool, float | None]:
                v = fact.get(only)
                if isinstance(v, int | float):
                    return passes(v, limit), v
                return False, None

            return compare_one

        def compare(fact: Fact) -> tuple[bool, float | None]:
            values = [v for f in fields if isinstance(v := fact.get(f), int | float)]
            for v in values:
                if passes(v, limit):
                    return True, v
            return False, values[0] if values else None

        return compare

    def _unit(self, name: str, dims: tuple[str, ...]) -> str:
        t = self.pack.thresholds[name]
        _, dim = canonical_value(t.value, t.unit, dims)
        return _UNITS.get(dim, t.unit.strip("{}"))

    @staticmethod
    def _decides(compare: Compare, negated: bool, name: str, subject: str, op: str, unit: str,
                 lateral: bool = False) -> Check:  # fmt: skip
        """A threshold test that records itself when it decides the outcome."""

        def check(fact: Fact, run: _Run) -> bool:
            result, shown = compare(fact)
            if result != negated:
                side = fact.get(SIDE) if lateral else None
                side = side if isinstance(side, str) else None
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
            fields, dims = _metric_fields(m, "lsi", None), ("fraction",)
        elif c.measure == "norm":
            fields, dims = _metric_fields(m, "norm", self.pack.norms[c.metric].unit), ("sd",)
        else:
            unit = self.pack.thresholds[name].unit
            fields, dims = _metric_fields(m, c.measure, unit), m.dimensions
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
_EVALUATORS_LOCK = threading.Lock()


def evaluator(pack: Pack) -> ReferenceEvaluator:
    """The compiled evaluator of ``pack`` (compiled on first use, then kept)."""
    found = _EVALUATORS.get(id(pack))
    if found is None or found.pack is not pack:
        with _EVALUATORS_LOCK:
            found = _EVALUATORS.get(id(pack))
            if found is None or found.pack is not pack:
                if len(_EVALUATORS) > 32:  # packs replaced by hot reloads
                    _EVALUATORS.clear()
                found = _EVALUATORS[id(pack)] = ReferenceEvaluator(pack)
    return found


def holds(pack: Pack, cond: Condition, fact: Fact, why: Explanation | None = None) -> bool:
    """Whether ``cond`` holds on ``fact``; ``why`` collects the deciding thresholds."""
    return evaluator(pack).holds(cond, fact, why)
