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
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from cds.errors import PackError
from cds.fhir.codes import code_system, metric, metrics, plan_display
from cds.fhir.facts import DiagnosisCode, FactPolicy, diagnosis_field, order_field
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
    SexCondition,
    Threshold,
)
from cds.rules.problems import Loc, PackProblem, did_you_mean
from cds.rules.template import check_placeholders

if TYPE_CHECKING:
    from cds.rules.scenario import ScenarioFile

__all__ = [
    "RULESET_SIZE",
    "Compiled",
    "CompiledFinding",
    "CompiledPack",
    "CompiledRule",
    "compile_pack",
    "finding_field",
    "resolve_metric_fields",
]

RULESET_SIZE = 50  # durable-rules aborts on large rulesets; keep each one small
#: durable-rules expands each pattern to disjunctive normal form and refuses
#: patterns past 2**14 alternatives; we stop far earlier with a clear message.
MAX_ALTERNATIVES = 1024
SUMMARY_LIMIT = 140
Scope = Literal["side", "patient"]

_MEASURE_SUFFIX = {
    "value": "",
    "asymmetry": "__asym",
    "change": "__change",
    "increase": "__increase",
}
#: which HTI-1 data-use declaration each kind of input needs
_DATA_USE = {"age": "date_of_birth", "sex": "sex", "symptom": "health_status_assessments"}
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
class Compiled:
    """A condition compiled to one engine pattern over a single fact."""

    scope: Scope
    pattern: dict[str, Any]
    fields: set[str] = field(default_factory=set)
    thresholds: dict[str, UsedThreshold] = field(default_factory=dict)

    @property
    def engine_id(self) -> str:
        raise NotImplementedError

    @property
    def priority(self) -> int:
        raise NotImplementedError

    def absorb(self, other: Compiled) -> None:
        if other.scope == "side":
            self.scope = "side"
        self.fields |= other.fields
        self.thresholds |= other.thresholds


@dataclass(kw_only=True)
class CompiledRule(Compiled):
    rule: Rule

    @property
    def engine_id(self) -> str:
        return self.rule.id

    @property
    def priority(self) -> int:
        return self.rule.priority


@dataclass(kw_only=True)
class CompiledFinding(Compiled):
    """A named finding, evaluated on every fact before the rules; firing sets ``flag``."""

    name: str

    @property
    def engine_id(self) -> str:
        return f"finding:{self.name}"

    @property
    def flag(self) -> str:
        return finding_field(self.name)

    @property
    def priority(self) -> int:
        return 0


def finding_field(name: str) -> str:
    """Fact field the engine sets when finding ``name`` holds on that fact."""
    return f"f_{name.replace('-', '_')}"


@dataclass
class CompiledPack:
    pack: Pack
    sha256: str
    rules: list[CompiledRule]
    policy: FactPolicy
    findings: list[CompiledFinding] = field(default_factory=list)
    path: Path | None = None
    scenarios: ScenarioFile | None = None

    @property
    def key(self) -> str:
        return f"{self.pack.id}@{self.pack.version}#{self.sha256[:12]}"

    def rule(self, rule_id: str) -> CompiledRule:
        return next(r for r in self.rules if r.engine_id == rule_id)

    def stages(self) -> list[list[list[Compiled]]]:
        """Findings first, then rules; each split into rulesets of bounded size."""
        return [_chunked(list(self.findings)), _chunked(list(self.rules))]


def _chunked(items: list[Compiled]) -> list[list[Compiled]]:
    return [items[i : i + RULESET_SIZE] for i in range(0, len(items), RULESET_SIZE)]


def resolve_metric_fields(cond: MetricCondition, unit: str | None) -> list[str]:
    """Fact fields a metric condition reads (several for a dimension-free LSI)."""
    m = metric(cond.metric)
    assert m is not None
    if cond.measure == "lsi":
        return [f"{m.field}__lsi"]
    if unit is None:
        return [f"{m.field}__present"]
    _, dim = convert(0.0, unit, m.dimensions)
    return [m.field_for(dim) + _MEASURE_SUFFIX[cond.measure]]


class _Compiler:
    def __init__(self, pack: Pack) -> None:
        self.pack = pack
        self.problems: list[PackProblem] = []
        self.data_used: dict[str, Loc] = {}
        self.findings: dict[str, CompiledFinding] = {}

    def uses(self, kind: str, loc: Loc) -> None:
        self.data_used.setdefault(_DATA_USE[kind], loc)

    def fail(self, code: str, loc: Loc, message: str, hint: str | None = None) -> None:
        self.problems.append(PackProblem(code, loc, message, hint))

    # -- atoms ----------------------------------------------------------------
    def _threshold(self, loc: Loc, name: str, dims: tuple[str, ...], out: Compiled) -> float:
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

    def _metric(self, loc: Loc, c: MetricCondition, neg: bool, out: Compiled) -> Any:
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
        if m.group == "symptom":
            self.uses("symptom", loc)
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

    def _atom(self, loc: Loc, c: Condition, neg: bool, out: Compiled) -> Any:
        if isinstance(c, MetricCondition):
            return self._metric(loc, c, neg, out)
        if isinstance(c, AgeCondition):
            comparison = c.age.comparison
            assert comparison is not None
            op, name = comparison
            value = self._threshold((*loc, "age", op), name, ("years",), out)
            out.fields.add("age_years")
            self.uses("age", loc)
            return _compare("age_years", op, value, neg)
        if isinstance(c, SexCondition):
            self.uses("sex", loc)
            return _flag(f"sex_{c.sex}", neg, out)
        if isinstance(c, DiagnosisCondition):
            if c.diagnosis not in self.pack.value_sets:
                self.fail(
                    "pack-unknown-value-set",
                    (*loc, "diagnosis"),
                    f"value set {c.diagnosis!r} is not defined",
                    did_you_mean(c.diagnosis, self.pack.value_sets)
                    or "define it under value_sets:",
                )
            fld = diagnosis_field(c.diagnosis)
            return self._dated(loc, fld, "at_most", c.within, "within", neg, out)
        if isinstance(c, OrderCondition):
            self._plan((*loc, "order"), c.order)
            fld = order_field(c.order, c.state)
            return self._dated(loc, fld, "at_least", c.older_than, "older_than", neg, out)
        if isinstance(c, QualityCondition):
            fld = f"q_{c.quality}"
            out.fields.add(fld)
            return {"$nex": {fld: 1}} if neg else {"$gt": {fld: 0}}
        raise TypeError(type(c))

    def _dated(
        self, loc: Loc, fld: str, op: str, limit: str | None, key: str, neg: bool, out: Compiled
    ) -> Any:
        """A flag, optionally with its age in days compared with a threshold."""
        if limit is None:
            return _flag(fld, neg, out)
        days = self._threshold((*loc, key), limit, ("days",), out)
        out.fields.add(f"{fld}__days")
        parts = [_flag(fld, neg, out), _compare(f"{fld}__days", op, days, neg)]
        return _join("$or" if neg else "$and", parts)

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
    def expr(self, loc: Loc, c: Condition, neg: bool, out: Compiled, seen: tuple[str, ...]) -> Any:
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
            if seen:  # inside a finding: expand in place
                return self.expr(("findings", c.finding), sub, neg, out, (*seen, c.finding))
            compiled = self.finding(c.finding, sub)
            out.absorb(compiled)
            return _flag(compiled.flag, neg, out)
        return self._atom(loc, c, neg, out)

    def finding(self, name: str, cond: Condition) -> CompiledFinding:
        """Compile finding ``name`` once; rules then test the flag it sets."""
        known = self.findings.get(name)
        if known is not None:
            return known
        loc: Loc = ("findings", name)
        out = CompiledFinding(scope="patient", pattern={}, name=name)
        out.pattern = self.expr(loc, cond, False, out, (name,))
        self._check_size(loc, f"finding {name!r}", out.pattern)
        self.findings[name] = out
        return out

    def _check_size(self, loc: Loc, what: str, pattern: Any) -> None:
        size = alternatives(pattern)
        if size > MAX_ALTERNATIVES:
            self.fail(
                "pack-too-complex",
                loc,
                f"{what} is too complex for the engine: {size} alternative "
                f"matches (limit {MAX_ALTERNATIVES})",
                "split it in two, or move the part under 'not' into a finding of its own",
            )

    def rule(self, index: int, rule: Rule) -> CompiledRule:
        loc: Loc = ("rules", index)
        out = CompiledRule(scope="patient", pattern={}, rule=rule)
        cond = self.expr((*loc, "when"), rule.when, False, out, ())
        hooks = _join("$or", [{"hook": h} for h in rule.hooks])
        out.pattern = {"$and": [{"kind": out.scope}, hooks, cond]}
        self._check_size((*loc, "when"), f"rule {rule.id!r}", cond)
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
                    "placeholders: {side}, {value:METRIC}, {change:METRIC}, {threshold:NAME}, "
                    "{age}, {quality}",
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
        out = Compiled(scope="patient", pattern={})
        min_strides = self._threshold(
            ("quality", "min_strides"), self.pack.quality.min_strides, ("count",), out
        )
        max_age = self._threshold(("quality", "max_age"), self.pack.quality.max_age, ("days",), out)
        in_care = self.pack.quality.max_age_in_care
        max_age_in_care = (
            None
            if in_care is None
            else self._threshold(("quality", "max_age_in_care"), in_care, ("days",), out)
        )
        diagnoses = {
            name: tuple(DiagnosisCode(c.system, c.code, c.match == "prefix") for c in codes)
            for name, codes in self.pack.value_sets.items()
        }
        return FactPolicy(
            min_strides=min_strides,
            max_age_days=max_age,
            max_age_in_care_days=max_age_in_care,
            diagnoses=diagnoses,
        )

    def check_attachments(self) -> None:
        ids = {r.id: r for r in self.pack.rules}
        for i, rule in enumerate(self.pack.rules):
            for j, target in enumerate(rule.attach_to):
                loc: Loc = ("rules", i, "attach_to", j)
                if target not in ids:
                    self.fail(
                        "pack-unknown-rule",
                        loc,
                        f"rule {rule.id!r} attaches to unknown rule {target!r}",
                        did_you_mean(target, ids) or "name the id of a rule in this pack",
                    )
                elif ids[target].attach_to:
                    self.fail(
                        "pack-attach-chain",
                        loc,
                        f"rule {target!r} is itself attached to other rules",
                        "attach only to rules that show their own card",
                    )

    def check_data_use(self) -> None:
        declared = self.pack.source_attributes.data_use
        for kind, loc in self.data_used.items():
            if not getattr(declared, kind):
                self.fail(
                    "pack-undeclared-data-use",
                    ("source_attributes", "data_use", kind),
                    f"the rules use {kind.replace('_', ' ')} (first at {_path(loc)}) but the "
                    f"source attributes declare {kind}: false",
                    f"set {kind}: true; ONC HTI-1 requires declaring every use",
                )


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


def _flag(fld: str, neg: bool, out: Compiled) -> Any:
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
    compiler.check_attachments()
    compiler.check_data_use()
    if compiler.problems:
        raise PackError(
            f"rule pack {pack.id!r} has {len(compiler.problems)} problem(s)",
            problems=compiler.problems,
        )
    rules.sort(key=lambda r: (r.priority, r.engine_id))
    digest = hashlib.sha256(source_bytes).hexdigest()
    findings = sorted(compiler.findings.values(), key=lambda f: f.name)
    return CompiledPack(pack=pack, sha256=digest, rules=rules, policy=policy, findings=findings)
