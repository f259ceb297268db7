"""Card templates -> CDS Hooks 2.0 cards.

Templates fill in values through a closed set of placeholders, never code:

* ``{side}``: the side(s) the rule fired for ("left", "right", "left and right");
* ``{value:METRIC}``: the measured value(s) of a metric with its unit;
* ``{change:METRIC}``: the latest value(s) against the previous capture;
* ``{threshold:NAME}``: a threshold of the pack with its unit;
* ``{age}``: the patient's age in years;
* ``{quality}``: which inputs were set aside, and why.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any

from cds.fhir.codes import Metric, metric, plan_display
from cds.fhir.facts import order_field
from cds.fhir.resources import plan_resource
from cds.rules.compile import CompiledPack, CompiledRule
from cds.rules.template import PLACEHOLDER

__all__ = ["Attachment", "CardContext", "build_card"]


@dataclass(frozen=True)
class CardContext:
    pack: CompiledPack
    patient_id: str


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float | int) else str(value)


def _sides(facts: list[dict[str, Any]]) -> str:
    names = [f["side"] for f in facts if "side" in f]
    return " and ".join(names)


def _render(text: str, ctx: CardContext, facts: list[dict[str, Any]]) -> str:
    def sub(match: re.Match[str]) -> str:
        kind, arg = match.group(1), match.group(2)
        if kind == "side":
            return _sides(facts) or "either"
        if kind == "quality":
            return str(facts[0].get("q_notes", "none"))
        if kind == "age":
            return _fmt(facts[0].get("age_years", "unknown"))
        if kind == "threshold":
            t = ctx.pack.pack.thresholds.get(arg)
            return f"{_fmt(t.value)} {t.unit.strip('{}')}" if t else match.group(0)
        m = metric(arg)
        if m is None:
            return match.group(0)
        show = _show_change if kind == "change" else _show_value
        parts = [show(f, m) for f in facts if m.field in f]
        return ", ".join(dict.fromkeys(parts)) or "not measured"

    return PLACEHOLDER.sub(sub, text)


def _side_prefix(fact: dict[str, Any], m: Metric) -> str:
    return f"{fact['side']} " if "side" in fact and m.lateral else ""


def _show_value(fact: dict[str, Any], m: Metric) -> str:
    return f"{_side_prefix(fact, m)}{_fmt(fact[m.field])} {m.unit}"


def _show_change(fact: dict[str, Any], m: Metric) -> str:
    delta = fact.get(f"{m.field}__increase")
    if not isinstance(delta, int | float):
        return f"{_show_value(fact, m)} (no earlier capture)"
    before = round(fact[m.field] - delta, 4)
    return f"{_show_value(fact, m)} (was {_fmt(before)}, change {delta:+g} {m.unit})"


_LOWER = {"A": "B", "B": "C", "C": "D", "D": "D"}


@dataclass(frozen=True)
class Attachment:
    """A rule whose text is added to another rule's card."""

    rule: CompiledRule
    facts: list[dict[str, Any]]


def _strength(rule: CompiledRule, attachments: list[Attachment]) -> str:
    strength: str = rule.rule.card.evidence.strength
    for att in attachments:
        if att.rule.rule.lower_evidence:
            strength = _LOWER[strength]
    return strength


def _footer(rule: CompiledRule, deciding: list[str], attachments: list[Attachment]) -> str:
    card = rule.rule.card
    strength = _strength(rule, attachments)
    lowered = (
        f" (lowered from {card.evidence.strength})" if strength != card.evidence.strength else ""
    )
    lines = [f"**Evidence strength: {strength}{lowered}.** {card.evidence.label}"]
    for used in (rule.thresholds[name] for name in deciding):
        t = used.threshold
        if not t.validated:
            kind = (
                "a research inclusion criterion" if t.provenance == "research" else "a placeholder"
            )
            lines.append(
                f"Threshold `{used.name}` ({_fmt(t.value)} {t.unit}) is clinic-configured, "
                f"not validated ({kind})."
            )
    rules = ", ".join(f"`{r}`" for r in [rule.rule.id, *(a.rule.rule.id for a in attachments)])
    lines.append(f"Rules: {rules}.")
    return "\n\n---\n" + "\n\n".join(lines)


def _summary(text: str) -> str:
    return text if len(text) < 140 else text[:138].rstrip() + "…"


def _already_ordered(plans: list[str], fact: dict[str, Any]) -> bool:
    return all(
        fact.get(order_field(p, "active")) == 1 or fact.get(order_field(p, "draft")) == 1
        for p in plans
    )


def _suggestions(
    rule: CompiledRule, ctx: CardContext, fact: dict[str, Any]
) -> tuple[list[Any], list[str]]:
    """Suggestions, leaving out orders that already exist (draft or active)."""
    out: list[Any] = []
    skipped: list[str] = []
    for s in rule.rule.card.suggestions:
        actions = []
        for a in s.actions:
            if _already_ordered(a.plans, fact):
                skipped.extend(plan_display(p) or p for p in a.plans)
                continue
            resource = plan_resource(a.resource, a.plans, ctx.patient_id, a.description)
            actions.append({"type": "create", "description": a.description, "resource": resource})
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
        tpl = att.rule.rule.card
        summary = _render(tpl.summary, ctx, att.facts)
        parts.append(f"**{summary}** {_render(tpl.detail, ctx, att.facts).strip()}")
    return "".join(f"\n\n{p}" for p in parts)


def build_card(
    rule: CompiledRule,
    facts: list[dict[str, Any]],
    ctx: CardContext,
    deciding: list[str],
    attachments: list[Attachment] | None = None,
) -> dict[str, Any]:
    """One card for ``rule`` fired on ``facts`` (one fact per side, or the patient fact).

    ``deciding`` names the thresholds whose test decided the match; the card says
    which of them are not validated. ``attachments`` add their text (and may lower
    the evidence strength). Orders that already exist are not suggested again.
    """
    attachments = attachments or []
    tpl = rule.rule.card
    suggestions, skipped = _suggestions(rule, ctx, facts[0])
    detail = _render(tpl.detail, ctx, facts).rstrip() + _attached_text(attachments, ctx)
    if skipped:
        detail += f"\n\nNot suggested again, already ordered: {', '.join(skipped)}."
    card: dict[str, Any] = {
        "uuid": str(uuid.uuid4()),
        "summary": _summary(_render(tpl.summary, ctx, facts)),
        "detail": detail + _footer(rule, deciding, attachments),
        "indicator": tpl.indicator,
        "source": {"label": tpl.source.label} | ({"url": tpl.source.url} if tpl.source.url else {}),
    }
    if suggestions:
        card["suggestions"] = suggestions
        card["selectionBehavior"] = tpl.selection
    if tpl.override_reasons:
        card["overrideReasons"] = [
            {"system": r.system, "code": r.code, "display": r.display} for r in tpl.override_reasons
        ]
    if tpl.links:
        card["links"] = [{"label": x.label, "url": x.url, "type": "absolute"} for x in tpl.links]
    return card
