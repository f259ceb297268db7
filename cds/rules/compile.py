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
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, assert_never

from cds.errors import PackError
from cds.fhir.codes import Metric, code_system, metric, metrics, plan_display
from cds.fhir.diagnoses import DiagnosisCode, ValueSet
from cds.fhir.fields import (
    AGE,
    AGE_UNKNOWN,
    HOOK,
    KIND,
    diagnosis_field,
    finding_field,
    lsi_field,
    measure_field,
    order_days_field,
    order_field,
    present_field,
    quality_field,
    sex_field,
)
from cds.fhir.norms import Norm
from cds.fhir.policy import FactPolicy
from cds.fhir.units import UnitError, convert, dimension_of
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
    Rule,
    SexCondition,
    Threshold,
)
from cds.rules.problems import Loc, PackProblem, did_you_mean
from cds.rules.records import ThresholdEntry
from cds.rules.template import check_placeholders

if TYPE_CHECKING:
    from cds.rules.scenario import ScenarioFile
    from cds.rules.source import Source

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

#: which HTI-1 data-use declaration each kind of input needs
_DATA_USE = {"age": "date_of_birth", "sex": "sex", "symptom": "health_status_assessments"}
_OPS = {"at_least": "$gte", "above": "$gt", "below": "$lt", "at_most": "$lte"}
_NEGATED = {"at_least": "below", "above": "at_most", "below": "at_least", "at_most": "above"}


@dataclass(frozen=True)
class UsedThreshold:
    name: str
    threshold: Threshold
    canonical: float

    def as_trace(self) -> ThresholdEntry:
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
    #: value sets the condition reads (through its findings too)
    value_sets: set[str] = field(default_factory=set)
    #: findings with a ``says`` line that the condition reads, in order
    said: list[str] = field(default_factory=list)

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
        self.value_sets |= other.value_sets
        self.say(*other.said)

    def say(self, *names: str) -> None:
        self.said += [n for n in names if n not in self.said]


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


@dataclass
class CompiledPack:
    pack: Pack
    sha256: str
    rules: list[CompiledRule]
    policy: FactPolicy
    findings: list[CompiledFinding] = field(default_factory=list)
    #: value sets each finding reads, through the findings it uses
    finding_value_sets: dict[str, set[str]] = field(default_factory=dict)
    path: Path | None = None
    scenarios: ScenarioFile | None = None
    #: the scenarios file as read (for file:line in test reports)
    scenario_source: Source | None = None

    @property
    def key(self) -> str:
        return f"{self.pack.id}@{self.pack.version}#{self.sha256[:12]}"

    def rule(self, rule_id: str) -> CompiledRule:
        return self._by_id[rule_id]

    @cached_property
    def _by_id(self) -> dict[str, CompiledRule]:
        return {r.engine_id: r for r in self.rules}

    @cached_property
    def finding_names(self) -> list[tuple[str, str]]:
        """(engine id, name) of each finding: what the reference evaluator checks the
        engine's findings against."""
        return [(f.engine_id, f.name) for f in self.findings]

    @cached_property
    def rule_conditions(self) -> list[tuple[str, str, list[str], Condition]]:
        """(id, scope, hooks, condition) of each rule, in order: what the reference
        evaluator checks the engine's firings against."""
        return [(r.rule.id, r.scope, list(r.rule.hooks), r.rule.when) for r in self.rules]

    def stages(self) -> list[list[list[Compiled]]]:
        """Findings first, then rules; each split into rulesets of bounded size."""
        return [_chunked(list(self.findings)), _chunked(list(self.rules))]


def _chunked(items: list[Compiled]) -> list[list[Compiled]]:
    return [items[i : i + RULESET_SIZE] for i in range(0, len(items), RULESET_SIZE)]


def resolve_metric_fields(cond: MetricCondition, unit: str | None) -> list[str]:
    """Fact fields a metric condition reads; ``unit`` is the threshold's (for ``norm``:
    the norm's unit, which names the dimension the norm applies to)."""
    m = metric(cond.metric)
    assert m is not None
    if cond.measure == "lsi":
        return [lsi_field(m)]
    if unit is None:
        return [present_field(m)]
    _, dim = convert(0.0, unit, m.dimensions)
    return [measure_field(m, dim, cond.measure)]


class _Compiler:
    def __init__(self, pack: Pack) -> None:
        self.pack = pack
        self.problems: list[PackProblem] = []
        self.data_used: dict[str, Loc] = {}
        self.findings: dict[str, CompiledFinding] = {}
        #: value sets each finding reads (for the cards that list what is on record)
        self.finding_value_sets: dict[str, set[str]] = {}

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

    def _known_metric(self, loc: Loc, code: str) -> Metric | None:
        m = metric(code)
        if m is None or m.group == "quality":
            known = [k for k, v in metrics().items() if v.group != "quality"]
            self.fail(
                "pack-unknown-metric",
                loc,
                f"unknown metric {code!r}",
                did_you_mean(code, known) or "see docs/data-contract.md for the codes",
            )
            return None
        return m

    def _metric(self, loc: Loc, c: MetricCondition, neg: bool, out: Compiled) -> Any:
        m = self._known_metric((*loc, "metric"), c.metric)
        if m is None:
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
        known, unit = self._compared_unit(loc, c)
        if not known:
            return _INVALID
        dims = {"lsi": ("fraction",), "norm": ("sd",)}.get(c.measure, m.dimensions)
        value = self._threshold((*loc, op), name, dims, out)
        try:
            fields = resolve_metric_fields(c, unit)
        except UnitError:
            return _INVALID
        out.fields.update(fields)
        return _join("$or", [_compare(f, op, value, neg) for f in fields])

    def _compared_unit(self, loc: Loc, c: MetricCondition) -> tuple[bool, str | None]:
        """The unit that picks the compared field (the threshold's, or the norm's);
        False when the condition cannot be compiled."""
        if c.measure == "lsi":
            return True, None
        if c.measure == "norm":
            norm = self.pack.norms.get(c.metric)
            if norm is None:
                self.fail(
                    "pack-no-norm",
                    (*loc, "measure"),
                    f"measure: norm needs a norm for {c.metric!r}",
                    "define it under norms:, or compare the value with a threshold",
                )
                return False, None
            return True, norm.unit
        comparison = c.comparison
        assert comparison is not None
        t = self.pack.thresholds.get(comparison[1])
        return True, t.unit if t is not None else None

    def _diagnosis(self, loc: Loc, c: DiagnosisCondition, neg: bool, out: Compiled) -> Any:
        if c.diagnosis not in self.pack.value_sets:
            self.fail(
                "pack-unknown-value-set",
                (*loc, "diagnosis"),
                f"value set {c.diagnosis!r} is not defined",
                did_you_mean(c.diagnosis, self.pack.value_sets) or "define it under value_sets:",
            )
        out.value_sets.add(c.diagnosis)

        def fld(part: Any) -> str:
            return diagnosis_field(c.diagnosis, part)

        days = (
            None
            if c.within is None
            else self._threshold((*loc, "within"), c.within, ("days",), out)
        )
        if c.certainty == "possible":
            if days is None:
                return _flag(fld("possible"), neg, out)
            unconfirmed = _all(
                [_flag(fld("possible"), neg, out),
                 _compare(fld("possible_days"), "at_most", days, neg)], neg
            )  # fmt: skip
            out.fields.update({fld("possible_days"), fld("undated_days")})
            return _any([unconfirmed, _compare(fld("undated_days"), "at_most", days, neg)], neg)
        parts = [_flag(fld(""), neg, out)]
        if days is not None:
            out.fields.add(fld("days"))
            parts.append(_compare(fld("days"), "at_most", days, neg))
        side_part = {"this": "here", "other": "there", "unknown": "unsided"}.get(c.side)
        if side_part is not None:
            if c.side != "unknown":
                out.scope = "side"
            parts.append(_flag(fld(side_part), neg, out))
        return _all(parts, neg)

    def _atom(self, loc: Loc, c: Atom, neg: bool, out: Compiled) -> Any:
        match c:
            case MetricCondition():
                return self._metric(loc, c, neg, out)
            case AgeCondition():
                return self._age(loc, c, neg, out)
            case SexCondition():
                self.uses("sex", loc)
                return _flag(sex_field(c.sex), neg, out)
            case DiagnosisCondition():
                return self._diagnosis(loc, c, neg, out)
            case OrderCondition():
                return self._order(loc, c, neg, out)
            case QualityCondition():
                fld = quality_field(c.quality)
                out.fields.add(fld)
                return {"$nex": {fld: 1}} if neg else {"$gt": {fld: 0}}
            case _:
                assert_never(c)

    def _age(self, loc: Loc, c: AgeCondition, neg: bool, out: Compiled) -> Any:
        self.uses("age", loc)
        if c.age == "unknown":
            return _flag(AGE_UNKNOWN, neg, out)
        comparison = c.age.comparison
        assert comparison is not None
        op, name = comparison
        value = self._threshold((*loc, "age", op), name, ("years",), out)
        out.fields.add(AGE)
        return _compare(AGE, op, value, neg)

    def _order(self, loc: Loc, c: OrderCondition, neg: bool, out: Compiled) -> Any:
        self._plan((*loc, "order"), c.order)
        flag = _flag(order_field(c.order, c.state), neg, out)
        if c.older_than is None:
            return flag
        days = self._threshold((*loc, "older_than"), c.older_than, ("days",), out)
        started = order_days_field(c.order, c.state)
        out.fields.add(started)
        return _all([flag, _compare(started, "at_least", days, neg)], neg)

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
        match c:
            case NotOf():
                return self.expr((*loc, "not"), c.not_, not neg, out, seen)
            case AllOf() | AnyOf():
                key = "all" if isinstance(c, AllOf) else "any"
                items = c.all if isinstance(c, AllOf) else c.any
                conj = isinstance(c, AllOf) != neg
                parts = [self.expr((*loc, key, i), x, neg, out, seen) for i, x in enumerate(items)]
                return _join("$and" if conj else "$or", parts)
            case FindingCondition():
                return self._finding_ref(loc, c, neg, out, seen)
            case _:
                return self._atom(loc, c, neg, out)

    def _finding_ref(
        self, loc: Loc, c: FindingCondition, neg: bool, out: Compiled, seen: tuple[str, ...]
    ) -> Any:
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
        if sub.says:
            out.say(c.finding)
        if seen:  # inside a finding: expand in place
            inline = Compiled(scope="patient", pattern={})
            pattern = self.expr(("findings", c.finding), sub.when, neg, inline, (*seen, c.finding))
            self.finding_value_sets[c.finding] = set(inline.value_sets)
            out.absorb(inline)
            return pattern
        compiled = self.finding(c.finding, sub.when)
        out.absorb(compiled)
        return _flag(compiled.flag, neg, out)

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
        self.finding_value_sets[name] = set(out.value_sets)
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
        hooks = _join("$or", [{HOOK: h} for h in rule.hooks])
        out.pattern = {"$and": [{KIND: out.scope}, hooks, cond]}
        self._check_size((*loc, "when"), f"rule {rule.id!r}", cond)
        self._check_card(loc, rule)
        if rule.show == "when-suppressing" and not rule.suppresses:
            self.fail(
                "pack-show-never",
                (*loc, "show"),
                f"rule {rule.id!r} shows only when it suppresses, but suppresses nothing",
                "add suppresses: [recommendation], or remove show:",
            )
        return out

    def _text(self, loc: Loc, text: str) -> None:
        for problem in check_placeholders(text, self.pack):
            self.fail(
                "pack-unknown-placeholder",
                loc,
                problem,
                "placeholders: {side}, {value:METRIC}, {change:METRIC}, {norm:METRIC}, "
                "{threshold:NAME}, {plan:PLAN}, {age}, {quality}, {findings}, {diagnoses}",
            )

    def _check_card(self, loc: Loc, rule: Rule) -> None:
        card = (*loc, "card")
        for part in ("summary", "detail"):
            self._text((*card, part), getattr(rule.card, part))
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
        for i, ev in enumerate(rule.card.evidence):
            for j, vs in enumerate(ev.diagnoses):
                if vs not in self.pack.value_sets:
                    self.fail(
                        "pack-unknown-value-set",
                        (*card, "evidence", i, "diagnoses", j),
                        f"value set {vs!r} is not defined",
                        did_you_mean(vs, self.pack.value_sets) or "define it under value_sets:",
                    )
        for i, s in enumerate(rule.card.suggestions):
            for j, a in enumerate(s.actions):
                self._suggested_plan((*card, "suggestions", i, "actions", j, "plan"), a.plan)

    def _suggested_plan(self, loc: Loc, plan: str) -> None:
        self._plan(loc, plan)
        if plan_display(plan) is not None and plan not in self.pack.plans:
            self.fail(
                "pack-undefined-plan",
                loc,
                f"plan {plan!r} is suggested but not defined under plans:",
                "add it under plans: with its summary, instruction, timing and performer",
            )

    def check_plans(self) -> None:
        for code, plan in self.pack.plans.items():
            self._plan(("plans", code), code)
            self._text(("plans", code, "instruction"), plan.instruction)
            self._text(("plans", code, "summary"), plan.summary)

    def value_sets(self) -> dict[str, ValueSet]:
        return {
            name: ValueSet(
                name,
                vs.title,
                tuple(
                    DiagnosisCode(c.system, c.code, c.match == "prefix", c.laterality)
                    for c in vs.codes
                ),
            )
            for name, vs in self.pack.value_sets.items()
        }

    def norms(self) -> dict[str, Norm]:
        out: dict[str, Norm] = {}
        for code, n in self.pack.norms.items():
            loc: Loc = ("norms", code)
            m = self._known_metric(loc, code)
            if m is None:
                continue
            try:
                dim = dimension_of(n.unit, m.dimensions)
            except UnitError as exc:
                self.fail("pack-unit-mismatch", (*loc, "unit"), f"norm for {code!r}: {exc}")
                continue
            out[code] = Norm(
                metric=code,
                test=n.test,
                unit=n.unit,
                dimension=dim,
                intercept=n.intercept,
                per_year=n.per_year_of_age,
                male=n.male,
                sd=n.sd,
                sexes=tuple(n.sexes),
                min_age=n.ages.from_,
                max_age=n.ages.to,
                source=n.citation.split(";")[0].strip(),
            )
        return out

    def smallest_detectable_difference(self, out: Compiled) -> dict[str, float]:
        limits: dict[str, float] = {}
        for code, name in self.pack.quality.smallest_detectable_difference.items():
            loc: Loc = ("quality", "smallest_detectable_difference", code)
            m = self._known_metric(loc, code)
            t = self.pack.thresholds.get(name)
            if m is None:
                continue
            value = self._threshold(loc, name, m.dimensions, out)
            if t is not None and name in out.thresholds:
                limits[m.field_for(dimension_of(t.unit, m.dimensions))] = value
        return limits

    def policy(self) -> FactPolicy:
        out = Compiled(scope="patient", pattern={})
        q = self.pack.quality
        min_strides = self._threshold(("quality", "min_strides"), q.min_strides, ("count",), out)
        max_age = self._threshold(("quality", "max_age"), q.max_age, ("days",), out)

        def days(key: str, name: str | None) -> float | None:
            return None if name is None else self._threshold(("quality", key), name, ("days",), out)

        window = days("session_window", q.session_window)
        return FactPolicy(
            min_strides=min_strides,
            max_age_days=max_age,
            max_age_in_care_days=days("max_age_in_care", q.max_age_in_care),
            session_window_days=window if window is not None else FactPolicy.session_window_days,
            gait_mode_missing=q.gait_mode_missing,
            smallest_detectable_difference=self.smallest_detectable_difference(out),
            value_sets=self.value_sets(),
            norms=self.norms(),
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


def _all(parts: list[Any], neg: bool) -> Any:
    """Every part holds (parts already negated when ``neg``: then any fails)."""
    return _join("$or" if neg else "$and", parts)


def _any(parts: list[Any], neg: bool) -> Any:
    return _join("$and" if neg else "$or", parts)


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
    compiler.check_plans()
    if compiler.problems:
        raise PackError(
            f"rule pack {pack.id!r} has {len(compiler.problems)} problem(s)",
            problems=compiler.problems,
        )
    rules.sort(key=lambda r: (r.priority, r.engine_id))
    digest = hashlib.sha256(source_bytes).hexdigest()
    findings = sorted(compiler.findings.values(), key=lambda f: f.name)
    return CompiledPack(
        pack=pack,
        sha256=digest,
        rules=rules,
        policy=policy,
        findings=findings,
        finding_value_sets=compiler.finding_value_sets,
    )
