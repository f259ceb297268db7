"""Card templates -> CDS Hooks 2.0 cards.

A card says what to do and why in a few lines; the evidence grade, the
thresholds that decided it (with their provenance) and the rule ids follow
in one compact footer, and the audit trace is a link away. Templates fill in
values through a closed set of placeholders, never code:

* ``{side}``: the side(s) the rule fired for ("left", "right", "left and right");
* ``{value:METRIC}``: the measured value(s) of a metric with its unit;
* ``{change:METRIC}``: the latest value(s) against the previous capture, and
  whether the change exceeds the smallest detectable difference;
* ``{norm:METRIC}``: the value against the pack's norm, or why the norm was not applied;
* ``{threshold:NAME}``: a threshold of the pack with its unit;
* ``{plan:PLAN}``: the one-line summary of a plan the pack defines;
* ``{age}``: the patient's age in years;
* ``{quality}``: which inputs were set aside, and why;
* ``{findings}``: the ``says`` lines of the findings the rule reads that hold;
* ``{diagnoses}``: the value sets the rule reads that are on record, and how sure.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from cds.fhir.codes import Metric, Side, metric, plan_display
from cds.fhir.diagnoses import DiagnosisMatch
from cds.fhir.facts import FactSet
from cds.fhir.fields import (
    AGE,
    SIDE,
    Fact,
    OrderState,
    derived_field,
    diagnosis_field,
    lsi_field,
    norm_note_field,
    order_field,
)
from cds.fhir.resources import PlanRequest, plan_resource
from cds.rules.compile import CompiledPack, CompiledRule
from cds.rules.evaluate import holds
from cds.rules.pack import ActionTemplate, Evidence
from cds.rules.records import Card, CardLink
from cds.rules.template import PLACEHOLDER

__all__ = ["RETRAINING_PLAN", "Attachment", "CardContext", "build_card"]

_IN_PLACE: tuple[OrderState, ...] = ("draft", "active", "on-hold", "completed")
_SIDES: tuple[Side, Side] = ("left", "right")
_LOWER = {"A": "B", "B": "C", "C": "D", "D": "D"}
_LABELS = {"research": "R, a research inclusion criterion", "placeholder": "X, a placeholder"}


@dataclass(frozen=True)
class CardContext:
    pack: CompiledPack
    patient_id: str
    facts: FactSet | None = None
    #: where the audit trace of this call can be read (None: no viewer configured)
    trace_url: str | None = None
    #: the gait-retraining station's address (None: no station configured)
    station_url: str | None = None


#: the plan the retraining station delivers: its cards link to the station
RETRAINING_PLAN = "gait-retraining-video-feedback"


@dataclass(frozen=True)
class Attachment:
    """A rule whose text is added to another rule's card."""

    rule: CompiledRule
    facts: list[Fact]
    #: False when an earlier card of the response already carries the text
    show_text: bool = True


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float | int) else str(value)


def _sides(facts: list[Fact]) -> str:
    names = [str(f[SIDE]) for f in facts if SIDE in f]
    return " and ".join(names)


_UNIT_WORDS = {"{score}": "", "{SD}": "SD"}


def _unit(unit: str) -> str:
    return _UNIT_WORDS.get(unit, unit.strip("{}"))


def _quantity(value: Any, unit: str) -> str:
    """``7.5 deg``, ``90%``, ``4`` (a 0-10 score)."""
    word = _unit(unit)
    if not word:
        return _fmt(value)
    return f"{_fmt(value)}{'' if word == '%' else ' '}{word}"


def _side_prefix(fact: Fact, m: Metric) -> str:
    return f"{fact[SIDE]} " if fact.get("_both") and m.lateral else ""


def _show_value(fact: Fact, m: Metric) -> str:
    return f"{_side_prefix(fact, m)}{_quantity(fact[m.field], m.unit)}"


class _Renderer:
    def __init__(self, ctx: CardContext, rule: CompiledRule, facts: list[Fact]) -> None:
        self.ctx = ctx
        self.rule = rule
        # values name their side only when the card speaks of both
        both = sum(SIDE in f for f in facts) > 1
        self.facts = [{**f, "_both": True} for f in facts] if both else facts

    def __call__(self, text: str) -> str:
        return PLACEHOLDER.sub(self._sub, text)

    def _side(self) -> str:
        return _sides(self.facts) or "either"

    def _quality(self) -> str:
        return str(self.facts[0].get("q_notes", "none"))

    def _age(self) -> str:
        return _fmt(self.facts[0].get(AGE, "unknown"))

    def _sub(self, match: re.Match[str]) -> str:
        kind, arg = match.group(1), match.group(2)
        simple = _SIMPLE.get(kind)
        if simple is not None:
            return simple(self)
        if kind == "threshold":
            t = self.ctx.pack.pack.thresholds[arg]
            return _quantity(t.value, t.unit)
        if kind == "plan":
            return self.ctx.pack.pack.plans[arg].summary
        m = metric(arg)
        assert m is not None
        show = {"change": self._change, "norm": self._norm}.get(kind, _show_value)
        parts = [show(f, m) for f in self.facts if m.field in f or norm_note_field(m) in f]
        return ", ".join(dict.fromkeys(p for p in parts if p)) or "not measured"

    def _change(self, fact: Fact, m: Metric) -> str:
        if m.field not in fact:
            return ""
        now, delta = fact[m.field], fact.get(derived_field(m.field, "increase"))
        if not isinstance(delta, int | float) or not isinstance(now, int | float):
            return f"{_show_value(fact, m)} (no earlier capture to compare)"
        before = round(now - delta, 4)
        sdd = self.ctx.pack.policy.smallest_detectable_difference.get(m.field)
        verdict = ""
        if sdd is not None:
            verdict = (
                "; more than the smallest detectable difference"
                if abs(delta) >= sdd
                else "; no detectable change"
            )
        change = _quantity(f"{delta:+g}", m.unit)
        return f"{_show_value(fact, m)} (was {_fmt(before)}, change {change}{verdict})"

    def _norm(self, fact: Fact, m: Metric) -> str:
        """The value against its norm (or why none applies), and its symmetry."""
        note = fact.get(norm_note_field(m))
        if note is None:
            return ""
        value = f"{_quantity(fact[m.field], m.unit)}, " if m.field in fact else ""
        lsi = fact.get(lsi_field(m))
        symmetry = f"; limb symmetry {_fmt(round(lsi))}%" if isinstance(lsi, int | float) else ""
        return f"{_side_prefix(fact, m)}{value}{note}{symmetry}"

    def _holding(self) -> list[str]:
        """The findings with a ``says`` line that the rule reads and that hold."""
        pack = self.ctx.pack.pack
        return [
            name
            for name in self.rule.said
            if any(holds(pack, pack.findings[name].when, f) for f in self.facts)
        ]

    def _findings(self) -> str:
        says = self.ctx.pack.pack.findings
        return "\n".join(f"- {says[name].says}" for name in self._holding()) or "- (none)"

    def _diagnoses(self) -> str:
        """What is on record behind the findings listed (or, without any, the rule)."""
        matches = self.ctx.facts.diagnoses if self.ctx.facts else []
        named = self._holding()
        wanted = (
            set().union(*(self.ctx.pack.finding_value_sets.get(n, set()) for n in named))
            if named
            else self.rule.value_sets
        )
        lines: dict[str, str] = {}
        for d in matches:
            if d.value_set not in wanted:
                continue
            state = "confirmed" if d.confirmed else f"not confirmed ({d.doubt})"
            if d.confirmed and d.onset_days is None:
                state += ", onset date not recorded"
            lines.setdefault(f"{d.value_set}:{state}", f"- {d.title} ({d.code}): {state}")
        return "\n".join(lines.values()) or "- (none on record)"


#: placeholders that take no argument, by kind
_SIMPLE: dict[str, Callable[[_Renderer], str]] = {
    "side": _Renderer._side,
    "quality": _Renderer._quality,
    "age": _Renderer._age,
    "findings": _Renderer._findings,
    "diagnoses": _Renderer._diagnoses,
}


def _grades(evidence: list[Evidence], fact: Fact) -> list[Evidence]:
    """Per recommendation (``for``): the grades for the patient's confirmed diagnoses,
    or, when none is specific to them, the general grades."""
    groups: dict[str | None, list[Evidence]] = {}
    for ev in evidence:
        groups.setdefault(ev.for_, []).append(ev)
    chosen = []
    for entries in groups.values():
        specific = [
            e for e in entries
            if any(fact.get(diagnosis_field(vs)) == 1 for vs in e.diagnoses)
        ]  # fmt: skip
        chosen += specific or [e for e in entries if not e.diagnoses]
    return chosen


def _evidence_line(rule: CompiledRule, fact: Fact, attachments: list[Attachment]) -> str:
    lowered = any(a.rule.rule.lower_evidence for a in attachments)
    parts = []
    for ev in _grades(rule.rule.card.evidence, fact):
        grade = _LOWER[ev.strength] if lowered else ev.strength
        note = f" (lowered from {ev.strength})" if grade != ev.strength else ""
        scope = f"{ev.for_}: " if ev.for_ else ""
        parts.append(f"{scope}{grade}{note}, {ev.label}")
    return "**Evidence strength:** " + "; ".join(parts)


def _footer(
    rule: CompiledRule,
    fact: Fact,
    deciding: list[str],
    attachments: list[Attachment],
) -> str:
    lines = [_evidence_line(rule, fact, attachments)]
    unvalidated = [
        f"`{name}` {_quantity(t.threshold.value, t.threshold.unit)} "
        f"({_LABELS[t.threshold.provenance]})"
        for name in deciding
        if not (t := rule.thresholds[name]).threshold.validated
    ]
    if unvalidated:
        lines.append("Thresholds clinic-configured, not validated: " + "; ".join(unvalidated) + ".")
    ids = [rule.rule.id, *(a.rule.rule.id for a in attachments)]
    lines.append("Rules: " + ", ".join(f"`{r}`" for r in ids) + ".")
    return "\n\n---\n" + "\n\n".join(lines)


def _summary(text: str) -> str:
    return text if len(text) < 140 else text[:138].rstrip() + "…"


def _in_place(plan: str, fact: Fact) -> str | None:
    """The state of an order for ``plan`` already in the chart or being placed."""
    return next((s for s in _IN_PLACE if fact.get(order_field(plan, s)) == 1), None)


def _targets(facts: list[Fact]) -> tuple[Side, ...]:
    sides = {f[SIDE] for f in facts if SIDE in f}
    return tuple(s for s in _SIDES if s in sides)


def _reasons(rule: CompiledRule, ctx: CardContext, sides: tuple[Side, ...]) -> tuple[str, ...]:
    """The Conditions behind the rule on the targeted sides, else a pain rating."""
    facts = ctx.facts
    if facts is None:
        return ()
    refs = [
        d.reference
        for d in _confirmed(facts.diagnoses, rule.value_sets)
        if d.reference and (d.sides is None or not sides or set(d.sides) & set(sides))
    ]
    if not refs:
        refs = [r.resource for r in facts.used if r.code == "running-pain"][-1:]
    return tuple(dict.fromkeys(refs))


def _confirmed(matches: Iterable[DiagnosisMatch], value_sets: set[str]) -> list[DiagnosisMatch]:
    return [d for d in matches if d.confirmed and d.value_set in value_sets]


def _action(
    a: ActionTemplate, rule: CompiledRule, ctx: CardContext, facts: list[Fact]
) -> dict[str, Any]:
    plan = ctx.pack.pack.plans[a.plan]
    render = _Renderer(ctx, rule, facts)
    sides = _targets(facts) if plan.sided else ()
    timing = (
        None
        if plan.timing is None
        else {
            "count": plan.timing.count,
            "frequency": plan.timing.frequency,
            "period": plan.timing.period,
            "periodUnit": plan.timing.period_unit,
        }
    )
    description = render(a.description or plan.summary)
    request = PlanRequest(
        kind=plan.resource,
        plan=a.plan,
        patient_id=ctx.patient_id,
        description=description,
        instruction=render(plan.instruction).strip(),
        timing=timing,
        performer=plan.performer,
        sides=sides,
        region=plan.region,
        reasons=_reasons(rule, ctx, sides),
    )
    return {"type": "create", "description": description, "resource": plan_resource(request)}


def _suggestions(
    rule: CompiledRule, ctx: CardContext, facts: list[Fact]
) -> tuple[list[Any], list[str]]:
    """Suggestions, leaving out plans already in place (draft, active, on hold or done)."""
    out: list[Any] = []
    skipped: list[str] = []
    for s in rule.rule.card.suggestions:
        actions = []
        for a in s.actions:
            state = _in_place(a.plan, facts[0])
            if state is not None:
                skipped.append(f"{plan_display(a.plan) or a.plan} ({state})")
                continue
            actions.append(_action(a, rule, ctx, facts))
        if actions:
            out.append(
                {
                    "label": s.label,
                    "uuid": str(uuid.uuid4()),
                    "isRecommended": s.recommended,
                    "actions": actions,
                }
            )
    return out, list(dict.fromkeys(skipped))


def _attached_text(attachments: list[Attachment], ctx: CardContext) -> str:
    parts = []
    for att in attachments:
        if not att.show_text:
            continue
        tpl = att.rule.rule.card
        render = _Renderer(ctx, att.rule, att.facts)
        parts.append(f"**{render(tpl.summary)}** {render(tpl.detail).strip()}")
    return "".join(f"\n\n{p}" for p in parts)


def build_card(
    rule: CompiledRule,
    facts: list[Fact],
    ctx: CardContext,
    deciding: list[str],
    attachments: list[Attachment] | None = None,
) -> Card:
    """One card for ``rule`` fired on ``facts`` (one fact per side, or the patient fact).

    ``deciding`` names the thresholds whose test decided the match; the footer
    says which of them are not validated. ``attachments`` add their text (once
    per response) and may lower the evidence strength. Plans already in place
    are not suggested again.
    """
    attachments = attachments or []
    tpl = rule.rule.card
    render = _Renderer(ctx, rule, facts)
    suggestions, skipped = _suggestions(rule, ctx, facts)
    detail = render(tpl.detail).rstrip() + _attached_text(attachments, ctx)
    if skipped:
        detail += f"\n\nNot suggested again, already in place: {', '.join(skipped)}."
    card: Card = {
        "uuid": str(uuid.uuid4()),
        "summary": _summary(render(tpl.summary)),
        "detail": detail + _footer(rule, facts[0], deciding, attachments),
        "indicator": tpl.indicator,
        "source": {"label": tpl.source.label},
    }
    if tpl.source.url:
        card["source"]["url"] = tpl.source.url
    if suggestions:
        card["suggestions"] = suggestions
        card["selectionBehavior"] = tpl.selection
    if tpl.override_reasons:
        card["overrideReasons"] = [
            {"system": r.system, "code": r.code, "display": r.display} for r in tpl.override_reasons
        ]
    links: list[CardLink] = [
        {"label": x.label, "url": x.url, "type": "absolute"} for x in tpl.links
    ]
    if ctx.station_url and RETRAINING_PLAN in {a.plan for s in tpl.suggestions for a in s.actions}:
        console = f"{ctx.station_url.rstrip('/')}/console?patient=Patient/{ctx.patient_id}"
        links.append(
            {"label": "Open the gait-retraining station for this patient", "url": console,
             "type": "absolute"}
        )  # fmt: skip
    if ctx.trace_url:
        links.append(
            {"label": "Why this card: inputs, thresholds, rules", "url": ctx.trace_url,
             "type": "absolute"}
        )  # fmt: skip
    if links:
        card["links"] = links
    return card
