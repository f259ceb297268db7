"""Plain-language views of a pack for the people who review it: explain and diff."""

from __future__ import annotations

import difflib
from typing import Any

from cds.fhir.codes import metric, plan_display
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
)

__all__ = ["diff_packs", "explain_pack", "explain_rule"]

_OPS = {
    "at_least": "is at least",
    "above": "is above",
    "below": "is below",
    "at_most": "is at most",
}
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
_SIDES = {
    "this": ", on this side",
    "other": ", on the other side only",
    "unknown": ", with no side recorded",
}
_ARTICLE = {"info": "an info card", "warning": "a warning", "critical": "a critical alert"}


def _threshold(pack: Pack, name: str) -> str:
    t = pack.thresholds.get(name)
    if t is None:
        return f"{name} (undefined)"
    return f"{t.value:g} {t.unit.strip('{}')} ({name}, {t.provenance})"


def _metric(pack: Pack, c: MetricCondition) -> str:
    m = metric(c.metric)
    label = m.display.lower() if m else c.metric
    if c.present is not None:
        return f"{label} was {'measured' if c.present else 'not measured'}"
    if c.is_ is not None:
        return f"{label} is {c.is_!r}"
    comparison = c.comparison
    assert comparison is not None
    op, name = comparison
    subject = _MEASURES[c.measure].format(m=label)
    return f"{subject} {_OPS[op]} {_threshold(pack, name)}"


def _atom(pack: Pack, c: Condition) -> str:
    if isinstance(c, MetricCondition):
        return _metric(pack, c)
    if isinstance(c, AgeCondition):
        if c.age == "unknown":
            return "the patient's exact age is not known"
        comparison = c.age.comparison
        assert comparison is not None
        return f"the patient's age {_OPS[comparison[0]]} {_threshold(pack, comparison[1])}"
    if isinstance(c, SexCondition):
        return f"the patient's recorded sex is {c.sex}"
    if isinstance(c, DiagnosisCondition):
        return _diagnosis(pack, c)
    if isinstance(c, OrderCondition):
        state = "" if c.state == "any" else f"{c.state} "
        text = f"a {state}order for {plan_display(c.order) or c.order}"
        return text + (
            f", started at least {_threshold(pack, c.older_than)} ago" if c.older_than else ""
        )
    if isinstance(c, QualityCondition):
        return _QUALITY[c.quality]
    raise TypeError(type(c))


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


def _lines(pack: Pack, c: Condition, depth: int, negated: bool = False) -> list[str]:
    pad = "  " * depth
    if isinstance(c, NotOf):
        return _lines(pack, c.not_, depth, not negated)
    if isinstance(c, AllOf | AnyOf):
        items = c.all if isinstance(c, AllOf) else c.any
        if negated:
            head = "not all of:" if isinstance(c, AllOf) else "none of:"
        else:
            head = "all of:" if isinstance(c, AllOf) else "any of:"
        out = [f"{pad}- {head}"]
        for item in items:
            out += _lines(pack, item, depth + 1)
        return out
    if isinstance(c, FindingCondition):
        title = c.finding.replace("_", " ")
        head = f"{pad}- {'NOT ' if negated else ''}{title}"
        sub = pack.findings.get(c.finding)
        if sub is None:
            return [head + " (undefined finding)"]
        return [head + ", that is:", *_lines(pack, sub.when, depth + 1)]
    return [f"{pad}- {'NOT: ' if negated else ''}{_atom(pack, c)}"]


def explain_rule(pack: Pack, rule: Rule) -> str:
    """A rule in plain language: "When ... show a warning: ..."."""
    card = rule.card
    lines = [f"{rule.id}: {rule.title}", f"  {rule.description.strip()}", ""]
    lines.append(f"  On {', '.join(rule.hooks)}, when")
    lines += _lines(pack, rule.when, 2)
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
    if rule.suppresses:
        lines.append(f"  While it shows, no {' or '.join(rule.suppresses)} cards are shown.")
    if rule.show == "when-suppressing":
        lines.append("  Its card shows only while it holds back another rule's card.")
    if rule.lower_evidence:
        lines.append("  It lowers the evidence strength of those cards by one level.")
    return "\n".join(lines)


def explain_pack(pack: Pack, rule_id: str | None = None) -> str:
    rules = [r for r in pack.rules if rule_id is None or r.id == rule_id]
    if not rules:
        raise KeyError(rule_id)
    head = f"{pack.title} - {pack.id} {pack.version} ({pack.status})\n"
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
        if _dump_any(old[k]) != _dump_any(new[k]):
            out.append(f"  ~ {kind} {k}")
    return sorted(out)


def _dump_any(value: Any) -> Any:
    if isinstance(value, list):
        return [_dump_any(v) for v in value]
    return _dump(value) if hasattr(value, "model_dump") else value


def _thresholds(old: Pack, new: Pack) -> list[str]:
    out = []
    for name in sorted(old.thresholds.keys() | new.thresholds.keys()):
        a, b = old.thresholds.get(name), new.thresholds.get(name)
        if a is None and b is not None:
            out.append(f"  + {name}: {b.value:g} {b.unit} ({b.provenance})")
        elif b is None and a is not None:
            out.append(f"  - {name}: {a.value:g} {a.unit} ({a.provenance})")
        elif a is not None and b is not None and a != b:
            out.append(
                f"  ~ {name}: {a.value:g} {a.unit} ({a.provenance}) -> "
                f"{b.value:g} {b.unit} ({b.provenance})"
            )
    return out


def diff_packs(old: Pack, new: Pack) -> list[str]:
    """What changed between two versions of a pack, for review before sign-off."""
    out = [f"{old.id} {old.version} ({old.status}) -> {new.id} {new.version} ({new.status})"]
    if old.version == new.version and _dump(old) != _dump(new):
        out.append("  ! content changed but the version was not bumped")
    thresholds = _thresholds(old, new)
    if thresholds:
        out += ["Thresholds:", *thresholds]
    sets = _named_changes("value set", old.value_sets, new.value_sets)
    sets += _named_changes("finding", old.findings, new.findings)
    sets += _named_changes("norm", old.norms, new.norms)
    sets += _named_changes("plan", old.plans, new.plans)
    if sets:
        out += ["Value sets and findings:", *sets]
    old_rules, new_rules = {r.id: r for r in old.rules}, {r.id: r for r in new.rules}
    rules = [f"  + {r} ({new_rules[r].title})" for r in new_rules if r not in old_rules]
    rules += [f"  - {r} ({old_rules[r].title})" for r in old_rules if r not in new_rules]
    for rid in [r for r in old_rules if r in new_rules]:
        changes = _rule_changes(old_rules[rid], new_rules[rid])
        if changes:
            rules += [f"  ~ {rid}", *changes]
    if rules:
        out += ["Rules:", *rules]
    if len(out) == 1:
        out.append("  no changes")
    return out
