"""Plain-language views of a pack for the people who review it: explain and diff."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Any, assert_never

from cds.errors import CdsError
from cds.fhir.codes import metric, plan_display
from cds.rules.compile import CompiledPack
from cds.rules.engine import RuleEngine
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
)
from cds.rules.scenario import ScenarioFile, decide_scenario, describe_card

__all__ = ["PackDiff", "diff_packs", "explain_pack", "explain_rule"]

_OPS = {
    "at_least": "is at least",
    "above": "is above",
    "below": "is below",
    "at_most": "is at most",
}
#: the test that holds exactly when ``op`` does not (for a value that was measured)
_OPPOSITE = {"at_least": "below", "above": "at_most", "below": "at_least", "at_most": "above"}
_MEASURES = {
    "value": "{m}",
    "lsi": "the limb symmetry index of {m}",
    "asymmetry": "{m} minus the other side's",
    "change": "the change in {m} since the previous capture",
    "increase": "the rise in {m} since the previous capture",
    "norm": "{m} in standard deviations from its norm",
}
_QUALITY = {
    "low_strides": "some run-form values were measured over too few strides",
    "stale": "some measurements are older than the freshness window",
    "excluded": "some Observations were left out (no value, unit, side, view or frame rate)",
    "unreadable": "some resources could not be read",
    "unnormalised": "hip strength was recorded without body mass",
    "walking": "a run-form capture was of walking, not running",
    "gait_mode_unknown": "a run-form capture does not say whether it was walking or running",
    "trials_disagree": "repeat trials of one session disagree",
    "conditions_unreadable": "some Conditions (the problem list) could not be read",
    "patient_missing": "the Patient record was not available or could not be read",
    "norm_unfit": "a strength norm does not fit this patient or test",
}
_QUALITY_NOT = {
    "low_strides": "every run-form value was measured over enough strides",
    "stale": "every measurement is within the freshness window",
    "excluded": "no Observation was left out",
    "unreadable": "every resource could be read",
    "unnormalised": "hip strength was recorded per body mass (or not recorded)",
    "walking": "no run-form capture was of walking",
    "gait_mode_unknown": "every run-form capture says whether it was walking or running",
    "trials_disagree": "repeat trials of one session agree (or there was one)",
    "conditions_unreadable": "the whole problem list could be read",
    "patient_missing": "the Patient record was available and readable",
    "norm_unfit": "every strength norm fits this patient and test (or none applies)",
}
_SIDES = {
    "this": ", on this side",
    "other": ", on the other side only",
    "unknown": ", with no side recorded",
}
_ARTICLE = {"info": "an info card", "warning": "a warning", "critical": "a critical alert"}
_PER_SIDE = (
    "  Checked for each side on its own: that side's measurements and diagnoses, and what "
    "is known of the whole patient (age, pain, diagnoses without a side). The card names "
    "the side or sides where it holds."
)


def _threshold(pack: Pack, name: str) -> str:
    t = pack.thresholds.get(name)
    if t is None:
        return f"{name} (undefined)"
    unit = t.unit.strip("{}")
    value = f"{t.value:g}" if unit in ("score", "1") else f"{t.value:g} {unit}"
    return f"{value} ({name}, {t.provenance})"


def _metric(pack: Pack, c: MetricCondition, negated: bool) -> str:
    m = metric(c.metric)
    label = m.display.lower() if m else c.metric
    if c.present is not None:
        measured = c.present != negated
        return f"{label} was {'measured' if measured else 'not measured'}"
    if c.is_ is not None:
        if negated:
            return f"{label} is not {c.is_!r}, or was not recorded"
        return f"{label} is {c.is_!r}"
    comparison = c.comparison
    assert comparison is not None
    op, name = comparison
    subject = _MEASURES[c.measure].format(m=label)
    if negated:  # a value that is missing does not pass the test, so "not" holds for it
        return f"{subject} {_OPS[_OPPOSITE[op]]} {_threshold(pack, name)}, or was not measured"
    return f"{subject} {_OPS[op]} {_threshold(pack, name)}"


def _age(pack: Pack, c: AgeCondition, negated: bool) -> str:
    if c.age == "unknown":
        return "the patient's exact age is " + ("known" if negated else "not known")
    comparison = c.age.comparison
    assert comparison is not None
    op, name = comparison
    if negated:
        return f"the patient's age {_OPS[_OPPOSITE[op]]} {_threshold(pack, name)}, or is not known"
    return f"the patient's age {_OPS[op]} {_threshold(pack, name)}"


def _order(pack: Pack, c: OrderCondition, negated: bool) -> str:
    state = "" if c.state == "any" else f"{c.state} "
    what = f"{state}order for {plan_display(c.order) or c.order}"
    since = f", started at least {_threshold(pack, c.older_than)} ago" if c.older_than else ""
    return f"there is no {what}{since}" if negated else f"there is an {what}{since}"


def _atom(pack: Pack, c: Atom, negated: bool = False) -> str:
    match c:
        case MetricCondition():
            return _metric(pack, c, negated)
        case AgeCondition():
            return _age(pack, c, negated)
        case SexCondition():
            return f"the patient's recorded sex is {'not ' if negated else ''}{c.sex}"
        case DiagnosisCondition():
            text = _diagnosis(pack, c)
            return f"there is no {text.removeprefix('a ')}" if negated else text
        case OrderCondition():
            return _order(pack, c, negated)
        case QualityCondition():
            return (_QUALITY_NOT if negated else _QUALITY)[c.quality]
        case _:
            assert_never(c)


def _diagnosis(pack: Pack, c: DiagnosisCondition) -> str:
    vs = pack.value_sets.get(c.diagnosis)
    name = f"{vs.title} ({c.diagnosis})" if vs else repr(c.diagnosis)
    if c.certainty == "possible":
        text = f"a possible {name}: recorded but not confirmed"
        if c.within:
            text += ", or confirmed without an onset date, that may have begun within " + (
                _threshold(pack, c.within)
            )
        return text
    text = f"a confirmed, active {name}"
    if c.within:
        text += f", begun within {_threshold(pack, c.within)}"
    return text + _SIDES.get(c.side, "")


def _finding(pack: Pack, c: FindingCondition, depth: int, negated: bool) -> list[str]:
    pad = "  " * depth
    sub = pack.findings.get(c.finding)
    title = c.finding.replace("_", " ")
    if sub is None:
        return [f"{pad}- {'not ' if negated else ''}{title} (undefined finding)"]
    said = sub.means_not if negated else sub.means
    head = said or (f"not {title}" if negated else title)
    return [f"{pad}- {head} [{c.finding}], that is:", *_lines(pack, sub.when, depth + 1, negated)]


def _lines(pack: Pack, c: Condition, depth: int, negated: bool = False) -> list[str]:
    """The condition as an indented list; a ``not`` is pushed down to the tests (all of
    becomes any of, at least becomes below ...), so no line says "not not"."""
    pad = "  " * depth
    match c:
        case NotOf():
            return _lines(pack, c.not_, depth, not negated)
        case AllOf() | AnyOf():
            items = c.all if isinstance(c, AllOf) else c.any
            every = isinstance(c, AllOf) != negated
            out = [f"{pad}- {'all of' if every else 'any of'}:"]
            for item in items:
                out += _lines(pack, item, depth + 1, negated)
            return out
        case FindingCondition():
            return _finding(pack, c, depth, negated)
        case _:
            return [f"{pad}- {_atom(pack, c, negated)}"]


def _relations(pack: CompiledPack, rule: Rule) -> list[str]:
    """The rules that add to, hold back, or are held back by ``rule``."""
    others = [r.rule for r in pack.rules if r.rule.id != rule.id]
    out = []
    attachers = [r.id for r in others if rule.id in r.attach_to]
    if attachers:
        out.append(
            f"  These rules add their text to its card when they hold: {', '.join(attachers)}."
        )
    blockers = [r.id for r in others if rule.category in r.suppresses]
    if blockers:
        out.append(
            f"  Its card is held back while any of these shows its own: {', '.join(blockers)}."
        )
    if rule.suppresses:
        held = [r.id for r in others if r.category in rule.suppresses]
        out.append(
            f"  While it shows, no {' or '.join(rule.suppresses)} cards are shown"
            + (f" ({', '.join(held)})." if held else ".")
        )
    return out


def explain_rule(pack: CompiledPack, rule: Rule) -> str:
    """A rule in plain language: "When ... show a warning: ..."."""
    card = rule.card
    lines = [f"{rule.id}: {rule.title}", f"  {rule.description.strip()}", ""]
    lines.append(f"  On {', '.join(rule.hooks)}, when")
    lines += _lines(pack.pack, rule.when, 2)
    if pack.rule(rule.id).scope == "side":
        lines.append(_PER_SIDE)
    if rule.attach_to:
        lines.append(f"  add this text to the cards of {', '.join(rule.attach_to)}:")
    else:
        lines.append(f"  show {_ARTICLE[card.indicator]}:")
    lines.append(f'    "{card.summary}"')
    for s in card.suggestions:
        plans = ", ".join(plan_display(a.plan) or a.plan for a in s.actions)
        lines.append(f"  suggesting: {s.label} ({plans})")
    for ev in card.evidence:
        scope = f" for {ev.for_}" if ev.for_ else ""
        scope += f" (only with {', '.join(ev.diagnoses)})" if ev.diagnoses else ""
        lines.append(f"  Evidence strength {ev.strength}{scope}: {ev.label}")
    lines.append(
        f"  Source: {card.source.label}" + (f" <{card.source.url}>" if card.source.url else "")
    )
    lines += _relations(pack, rule)
    if rule.show == "when-suppressing":
        lines.append("  Its card shows only while it holds back another rule's card.")
    if rule.lower_evidence:
        lines.append("  It lowers the evidence strength of those cards by one level.")
    return "\n".join(lines)


def explain_pack(pack: CompiledPack, rule_id: str | None = None) -> str:
    p = pack.pack
    rules = [r for r in p.rules if rule_id is None or r.id == rule_id]
    if not rules:
        raise KeyError(rule_id)
    head = f"{p.title} - {p.id} {p.version} ({p.status})\n"
    return head + "\n\n".join(explain_rule(pack, r) for r in rules) + "\n"


# -- diff ------------------------------------------------------------------------------


def _dump(model: Any) -> Any:
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


def _text_diff(label: str, old: str, new: str) -> list[str]:
    if old == new:
        return []
    lines = difflib.unified_diff(old.splitlines(), new.splitlines(), lineterm="", n=1)
    return [f"    {label}:", *(f"      {x}" for x in list(lines)[2:])]


def _rule_changes(old: Rule, new: Rule) -> list[str]:
    out: list[str] = []
    a, b = _dump(old), _dump(new)
    for key in (
        "title", "description", "hooks", "category", "priority", "suppresses", "show", "attach_to",
    ):  # fmt: skip
        if a.get(key) != b.get(key):
            out.append(f"    {key}: {a.get(key)!r} -> {b.get(key)!r}")
    if a["when"] != b["when"]:
        out += ["    conditions changed:", f"      - {a['when']}", f"      + {b['when']}"]
    ca, cb = a["card"], b["card"]
    if ca["indicator"] != cb["indicator"]:
        out.append(f"    indicator: {ca['indicator']} -> {cb['indicator']}")
    out += _text_diff("card summary", ca["summary"], cb["summary"])
    out += _text_diff("card detail", ca["detail"], cb["detail"])
    for key in ("evidence", "source", "suggestions", "override_reasons", "links"):
        if ca.get(key) != cb.get(key):
            out.append(f"    card {key} changed")
    return out


def _named_changes(kind: str, old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    out = [f"  + {kind} {k}" for k in new if k not in old]
    out += [f"  - {kind} {k}" for k in old if k not in new]
    for k in old.keys() & new.keys():
        a, b = _dump_any(old[k]), _dump_any(new[k])
        if a != b:
            keys = sorted(x for x in a.keys() | b.keys() if a.get(x) != b.get(x))
            out.append(f"  ~ {kind} {k}: {', '.join(keys)} changed")
    return sorted(out)


def _dump_any(value: Any) -> Any:
    if isinstance(value, list):
        return [_dump_any(v) for v in value]
    return _dump(value) if hasattr(value, "model_dump") else value


def _users(pack: CompiledPack, name: str) -> list[str]:
    """The rules a threshold decides, directly or through findings."""
    return [r.rule.id for r in pack.rules if name in r.thresholds]


def _thresholds(old: CompiledPack, new: CompiledPack) -> list[str]:
    out = []
    a_all, b_all = old.pack.thresholds, new.pack.thresholds
    for name in sorted(a_all.keys() | b_all.keys()):
        a, b = a_all.get(name), b_all.get(name)
        if a == b:
            continue
        if a is None and b is not None:
            out.append(f"  + {name}: {b.value:g} {b.unit} ({b.provenance})")
        elif b is None and a is not None:
            out.append(f"  - {name}: {a.value:g} {a.unit} ({a.provenance})")
        elif a is not None and b is not None:
            out.append(
                f"  ~ {name}: {a.value:g} {a.unit} ({a.provenance}) -> "
                f"{b.value:g} {b.unit} ({b.provenance})"
            )
        users = sorted(set(_users(old, name)) | set(_users(new, name)))
        out.append(f"      decides: {', '.join(users) or 'no rule'}")
    return out


def _version(text: str) -> tuple[int, ...] | None:
    parts = re.findall(r"\d+", text)
    return tuple(int(p) for p in parts) if parts else None


def _version_problem(old: Pack, new: Pack) -> str | None:
    """Why the new version number does not mark a change (None: it does)."""
    if _dump(old) == _dump(new):
        return None
    if old.version == new.version:
        return (
            f"content changed but the version was not bumped: give the new pack a version "
            f"after {old.version}"
        )
    a, b = _version(old.version), _version(new.version)
    if a is not None and b is not None and b < a:
        return (
            f"the version goes down ({old.version} -> {new.version}): "
            f"give it one after {old.version}"
        )
    return None


def _outcomes(pack: CompiledPack, engine: RuleEngine, file: ScenarioFile, scenario: Any) -> str:
    """The cards ``pack`` shows for ``scenario``, in one line."""
    try:
        decision = decide_scenario(pack, file, scenario, engine)
    except CdsError as exc:
        return f"cannot run: {exc.message}"
    shown = [describe_card(o.rule, o.indicator, o.sides, o.attached) for o in decision.outcomes()]
    return "; ".join(shown) or "no card"


def _scenario_runs(old: CompiledPack, new: CompiledPack) -> list[tuple[CompiledPack, int]]:
    """Every scenario of both versions' files, once: the new file's, then those of the
    old file that the new one dropped or changed (they hold the old boundaries)."""
    runs = [(new, i) for i in range(len(new.scenarios.scenarios))] if new.scenarios else []
    kept = {sc.model_dump_json() for sc in new.scenarios.scenarios} if new.scenarios else set()
    if old.scenarios is not None:
        runs += [
            (old, i)
            for i, sc in enumerate(old.scenarios.scenarios)
            if sc.model_dump_json() not in kept
        ]
    return runs


def _scenario_changes(old: CompiledPack, new: CompiledPack) -> list[str]:
    """The scenarios whose cards differ between the two versions."""
    runs = _scenario_runs(old, new)
    if not runs:
        return ["Scenario outcomes: no scenarios file, so no outcome could be compared"]
    engine = RuleEngine()
    out = []
    for owner, i in runs:
        assert owner.scenarios is not None
        scenario = owner.scenarios.scenarios[i]
        before = _outcomes(old, engine, owner.scenarios, scenario)
        after = _outcomes(new, engine, owner.scenarios, scenario)
        if before == after:
            continue
        source = owner.scenario_source
        where = f"  ({source.path}:{source.locate(('scenarios', i))[0]})" if source else ""
        out += [f"  ~ {scenario.name}{where}", f"      before: {before}", f"      after:  {after}"]
    changed = len(out) // 3
    if not changed:
        return [f"Scenario outcomes: none of the {len(runs)} scenarios changes"]
    return [f"Scenario outcomes: {changed} of {len(runs)} scenarios change:", *out]


@dataclass
class PackDiff:
    """What changed between two versions of a pack; ``ok`` is False when the version
    number does not show that the content changed."""

    lines: list[str] = field(default_factory=list)
    version_problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.version_problem is None


def diff_packs(old: CompiledPack, new: CompiledPack, *, scenarios: bool = True) -> PackDiff:
    """What changed between two versions of a pack, for review before sign-off: the
    thresholds and the rules each decides, findings, rules and card text, and the
    scenarios whose cards change."""
    a, b = old.pack, new.pack
    diff = PackDiff([f"{a.id} {a.version} ({a.status}) -> {b.id} {b.version} ({b.status})"])
    diff.version_problem = _version_problem(a, b)
    if diff.version_problem:
        diff.lines.append(f"  ! {diff.version_problem}")
    thresholds = _thresholds(old, new)
    if thresholds:
        diff.lines += ["Thresholds:", *thresholds]
    sets = _named_changes("value set", a.value_sets, b.value_sets)
    sets += _named_changes("finding", a.findings, b.findings)
    sets += _named_changes("norm", a.norms, b.norms)
    sets += _named_changes("plan", a.plans, b.plans)
    if sets:
        diff.lines += ["Value sets and findings:", *sets]
    old_rules, new_rules = {r.id: r for r in a.rules}, {r.id: r for r in b.rules}
    rules = [f"  + {r} ({new_rules[r].title})" for r in new_rules if r not in old_rules]
    rules += [f"  - {r} ({old_rules[r].title})" for r in old_rules if r not in new_rules]
    for rid in [r for r in old_rules if r in new_rules]:
        changes = _rule_changes(old_rules[rid], new_rules[rid])
        if changes:
            rules += [f"  ~ {rid}", *changes]
    if rules:
        diff.lines += ["Rules:", *rules]
    if len(diff.lines) == 1:
        diff.lines.append("  no changes")
    elif scenarios:
        diff.lines += _scenario_changes(old, new)
    return diff
