"""Check a :class:`Pack` for meaning and compile it for the engine.

Checks that pydantic cannot do alone: every threshold, finding, value set,
metric and plan that a rule names exists, units fit the metric, summaries are
short enough. Then each rule's condition becomes one durable-rules pattern over
a single fact (negations pushed to the leaves), and rules are split into
rulesets of bounded size.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal

from cds.errors import PackError
from cds.fhir.codes import code_system, metric, metrics, plan_display
from cds.fhir.facts import DiagnosisCode, FactPolicy, order_field
from cds.fhir.units import UnitError, convert
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
    Rule,
    Threshold,
)
from cds.rules.problems import Loc, PackProblem, did_you_mean
from cds.rules.template import check_placeholders

__all__ = ["RULESET_SIZE", "CompiledPack", "CompiledRule", "compile_pack", "resolve_metric_fields"]

RULESET_SIZE = 50  # durable-rules aborts on large rulesets; keep each one small
#: durable-rules expands each pattern to disjunctive normal form and refuses
#: patterns past 2**14 alternatives; we stop far earlier with a clear message.
MAX_ALTERNATIVES = 1024
SUMMARY_LIMIT = 140
Scope = Literal["side", "patient"]

_OPS = {"at_least": "$gte", "above": "$gt", "below": "$lt", "at_most": "$lte"}
_NEGATED = {"at_least": "below", "above": "at_most", "below": "at_least", "at_most": "above"}


@dataclass(frozen=True)
class UsedThreshold:
    name: str
    threshold: Threshold
    canonical: float

    def as_trace(self) -> dict[str, Any]:
        t = self.threshold
        return {
            "name": self.name,
            "value": t.value,
            "unit": t.unit,
            "provenance": t.provenance,
            "label": t.label,
            "citation": t.citation,
        }


@dataclass
class CompiledRule:
    rule: Rule
    scope: Scope
    pattern: dict[str, Any]
    fields: set[str] = field(default_factory=set)
    thresholds: dict[str, UsedThreshold] = field(default_factory=dict)


@dataclass
class CompiledPack:
    pack: Pack
    sha256: str
    rules: list[CompiledRule]
    policy: FactPolicy

    @property
    def key(self) -> str:
        return f"{self.pack.id}@{self.pack.version}#{self.sha256[:12]}"

    def rule(self, rule_id: str) -> CompiledRule:
        return next(r for r in self.rules if r.rule.id == rule_id)

    def chunks(self) -> list[list[CompiledRule]]:
        return [self.rules[i : i + RULESET_SIZE] for i in range(0, len(self.rules), RULESET_SIZE)]


def resolve_metric_fields(cond: MetricCondition, unit: str | None) -> list[str]:
    """Fact fields a metric condition reads (several for a dimension-free LSI)."""
    m = metric(cond.metric)
    assert m is not None
    if cond.measure == "lsi":
        return [f"{m.field}__lsi"]
    if unit is None:
        return [f"{m.field}__present"]
    _, dim = convert(0.0, unit, m.dimensions)
    suffix = "__asym" if cond.measure == "asymmetry" else ""
    return [m.field_for(dim) + suffix]


class _Compiler:
    def __init__(self, pack: Pack) -> None:
        self.pack = pack
        self.problems: list[PackProblem] = []

    def fail(self, code: str, loc: Loc, message: str, hint: str | None = None) -> None:
        self.problems.append(PackProblem(code, loc, message, hint))

    # -- atoms ----------------------------------------------------------------
    def _threshold(self, loc: Loc, name: str, dims: tuple[str, ...], out: CompiledRule) -> float:
        t = self.pack.thresholds.get(name)
        if t is None:
            hint = did_you_mean(name, self.pack.thresholds) or "define it under thresholds:"
            self.fail("pack-unknown-threshold", loc, f"threshold {name!r} is not defined", hint)
            return 0.0
        try:
            value, _ = convert(t.value, t.unit, dims)
        except UnitError as exc:
            self.fail(
                "pack-unit-mismatch",
                ("thresholds", name, "unit"),
                f"threshold {name!r} is used at {_path(loc)} but its {exc}",
                "give the threshold a unit of the metric's kind (see the data contract)",
            )
            return 0.0
        out.thresholds[name] = UsedThreshold(name, t, value)
        return value

    def _metric(self, loc: Loc, c: MetricCondition, neg: bool, out: CompiledRule) -> Any:
        m = metric(c.metric)
        if m is None or m.group == "quality":
            known = [k for k, v in metrics().items() if v.group != "quality"]
            self.fail(
                "pack-unknown-metric",
                (*loc, "metric"),
                f"unknown metric {c.metric!r}",
                did_you_mean(c.metric, known) or "see docs/data-contract.md for the codes",
            )
            return _INVALID
        if m.lateral:
            out.scope = "side"
        if c.present is not None:
            fields = resolve_metric_fields(c, None)
            present = c.present != neg
            leaves = [{"$ex" if present else "$nex": {f: 1}} for f in fields]
            return _join("$or" if present else "$and", leaves)
        if c.is_ is not None:
            out.fields.add(m.field)
            if neg:
                return {"$or": [{"$neq": {m.field: c.is_}}, {"$nex": {m.field: 1}}]}
            return {m.field: c.is_}
        comparison = c.comparison
        assert comparison is not None
        op, name = comparison
        if m.coded:
            self.fail(
                "pack-coded-metric-comparison",
                (*loc, op),
                f"metric {c.metric!r} is a coded result and cannot be compared with {op!r}",
                "use is: poor (or good, fair, positive, negative)",
            )
            return _INVALID
        t = self.pack.thresholds.get(name)
        dims = ("fraction",) if c.measure == "lsi" else m.dimensions
        value = self._threshold((*loc, op), name, dims, out)
        unit = t.unit if t is not None and c.measure != "lsi" else None
        try:
            fields = resolve_metric_fields(c, unit)
        except UnitError:
            return _INVALID
        out.fields.update(fields)
        return _join("$or", [_compare(f, op, value, neg) for f in fields])

    def _atom(self, loc: Loc, c: Condition, neg: bool, out: CompiledRule) -> Any:
        if isinstance(c, MetricCondition):
            return self._metric(loc, c, neg, out)
        if isinstance(c, AgeCondition):
            comparison = c.age.comparison
            assert comparison is not None
            op, name = comparison
            value = self._threshold((*loc, "age", op), name, ("years",), out)
            out.fields.add("age_years")
            return _compare("age_years", op, value, neg)
        if isinstance(c, DiagnosisCondition):
            if c.diagnosis not in self.pack.value_sets:
                self.fail(
                    "pack-unknown-value-set",
                    (*loc, "diagnosis"),
                    f"value set {c.diagnosis!r} is not defined",
                    did_you_mean(c.diagnosis, self.pack.value_sets)
                    or "define it under value_sets:",
                )
            return _flag(f"dx_{c.diagnosis.replace('-', '_')}", neg, out)
        if isinstance(c, OrderCondition):
            self._plan((*loc, "order"), c.order)
            return _flag(order_field(c.order, c.state), neg, out)
        if isinstance(c, QualityCondition):
            fld = f"q_{c.quality}"
            out.fields.add(fld)
            return {"$nex": {fld: 1}} if neg else {"$gt": {fld: 0}}
        raise TypeError(type(c))

    def _plan(self, loc: Loc, plan: str) -> None:
        if plan_display(plan) is None:
            codes = [c["code"] for c in code_system("plans")["concept"]]
            self.fail(
                "pack-unknown-plan",
                loc,
                f"unknown plan {plan!r}",
                did_you_mean(plan, codes) or f"known plans: {', '.join(codes)}",
            )

    # -- tree -------------------------------------------------------------------
    def expr(
        self, loc: Loc, c: Condition, neg: bool, out: CompiledRule, seen: tuple[str, ...]
    ) -> Any:
        if isinstance(c, NotOf):
            return self.expr((*loc, "not"), c.not_, not neg, out, seen)
        if isinstance(c, AllOf | AnyOf):
            key = "all" if isinstance(c, AllOf) else "any"
            items = c.all if isinstance(c, AllOf) else c.any
            conj = isinstance(c, AllOf) != neg
            parts = [self.expr((*loc, key, i), x, neg, out, seen) for i, x in enumerate(items)]
            return _join("$and" if conj else "$or", parts)
        if isinstance(c, FindingCondition):
            if c.finding in seen:
                self.fail(
                    "pack-finding-cycle",
                    (*loc, "finding"),
                    f"finding {c.finding!r} refers to itself",
                    "a finding may not use itself, directly or through another finding",
                )
                return _INVALID
            sub = self.pack.findings.get(c.finding)
            if sub is None:
                self.fail(
                    "pack-unknown-finding",
                    (*loc, "finding"),
                    f"finding {c.finding!r} is not defined",
                    did_you_mean(c.finding, self.pack.findings) or "define it under findings:",
                )
                return _INVALID
            return self.expr(("findings", c.finding), sub, neg, out, (*seen, c.finding))
        return self._atom(loc, c, neg, out)

    def rule(self, index: int, rule: Rule) -> CompiledRule:
        loc: Loc = ("rules", index)
        out = CompiledRule(rule=rule, scope="patient", pattern={})
        cond = self.expr((*loc, "when"), rule.when, False, out, ())
        hooks = _join("$or", [{"hook": h} for h in rule.hooks])
        out.pattern = {"$and": [{"kind": out.scope}, hooks, cond]}
        size = alternatives(cond)
        if size > MAX_ALTERNATIVES:
            self.fail(
                "pack-too-complex",
                (*loc, "when"),
                f"rule {rule.id!r} is too complex for the engine: {size} alternative "
                f"matches (limit {MAX_ALTERNATIVES})",
                "split the rule in two, or avoid 'not' around large findings",
            )
        self._check_card(loc, rule)
        return out

    def _check_card(self, loc: Loc, rule: Rule) -> None:
        card = (*loc, "card")
        names = set(self.pack.thresholds)
        for part in ("summary", "detail"):
            for problem in check_placeholders(getattr(rule.card, part), names):
                self.fail(
                    "pack-unknown-placeholder",
                    (*card, part),
                    problem,
                    "placeholders: {side}, {value:METRIC}, {threshold:NAME}, {age}, {quality}",
                )
        if len(rule.card.summary) >= SUMMARY_LIMIT:
            self.fail(
                "pack-summary-too-long",
                (*card, "summary"),
                f"summary is {len(rule.card.summary)} characters; CDS Hooks needs fewer "
                f"than {SUMMARY_LIMIT}",
                "shorten it; put the rest in detail",
            )
        if not rule.card.source.url:
            self.fail(
                "pack-missing-citation",
                (*card, "source"),
                f"rule {rule.id!r} cites no evidence",
                "add source.url with the DOI (https://doi.org/...) or URL of the evidence",
            )
        for i, s in enumerate(rule.card.suggestions):
            for j, a in enumerate(s.actions):
                for plan in a.plans:
                    self._plan((*card, "suggestions", i, "actions", j, "plans"), plan)

    def policy(self) -> FactPolicy:
        out = CompiledRule(rule=self.pack.rules[0], scope="patient", pattern={})
        min_strides = self._threshold(
            ("quality", "min_strides"), self.pack.quality.min_strides, ("count",), out
        )
        max_age = self._threshold(("quality", "max_age"), self.pack.quality.max_age, ("days",), out)
        diagnoses = {
            name: tuple(DiagnosisCode(c.system, c.code, c.match == "prefix") for c in codes)
            for name, codes in self.pack.value_sets.items()
        }
        return FactPolicy(min_strides=min_strides, max_age_days=max_age, diagnoses=diagnoses)


_INVALID: dict[str, Any] = {"$ex": {"__invalid__": 1}}


def _path(loc: Loc) -> str:
    return PackProblem("", loc, "").path


def alternatives(expr: Any) -> int:
    """How many alternatives a pattern has in disjunctive normal form."""
    if isinstance(expr, dict) and len(expr) == 1:
        ((op, arg),) = expr.items()
        if op == "$and":
            total = 1
            for part in arg:
                total *= alternatives(part)
            return total
        if op == "$or":
            return sum(alternatives(part) for part in arg)
    return 1


def _join(op: str, parts: list[Any]) -> Any:
    return parts[0] if len(parts) == 1 else {op: parts}


def _compare(fld: str, op: str, value: float, neg: bool) -> Any:
    if not neg:
        return {_OPS[op]: {fld: value}}
    return {"$or": [{_OPS[_NEGATED[op]]: {fld: value}}, {"$nex": {fld: 1}}]}


def _flag(fld: str, neg: bool, out: CompiledRule) -> Any:
    out.fields.add(fld)
    return {"$nex": {fld: 1}} if neg else {fld: 1}


def compile_pack(pack: Pack, source_bytes: bytes) -> CompiledPack:
    """Check ``pack`` and compile it; raise :class:`PackError` listing every problem."""
    compiler = _Compiler(pack)
    first: dict[str, int] = {}
    rules = []
    for i, rule in enumerate(pack.rules):
        if rule.id in first:
            compiler.fail(
                "pack-duplicate-rule",
                ("rules", i, "id"),
                f"duplicate rule id {rule.id!r} (also rules[{first[rule.id]}])",
                "every rule needs its own id",
            )
        first.setdefault(rule.id, i)
        rules.append(compiler.rule(i, rule))
    policy = compiler.policy()
    if compiler.problems:
        raise PackError(
            f"rule pack {pack.id!r} has {len(compiler.problems)} problem(s)",
            problems=compiler.problems,
        )
    rules.sort(key=lambda r: (r.rule.priority, r.rule.id))
    digest = hashlib.sha256(source_bytes).hexdigest()
    return CompiledPack(pack=pack, sha256=digest, rules=rules, policy=policy)
