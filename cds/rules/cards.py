"""Card templates -> CDS Hooks 2.0 cards.

Templates fill in values through a closed set of placeholders, never code:

* ``{side}``: the side(s) the rule fired for ("left", "right", "left and right");
* ``{value:METRIC}``: the measured value(s) of a metric with its unit;
* ``{threshold:NAME}``: a threshold of the pack with its unit;
* ``{age}``: the patient's age in years;
* ``{quality}``: which inputs were set aside, and why.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any

from cds.fhir.codes import metric
from cds.fhir.resources import plan_resource
from cds.rules.compile import CompiledPack, CompiledRule
from cds.rules.template import PLACEHOLDER

__all__ = ["CardContext", "build_card"]


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
        parts = [
            (f"{f['side']} " if "side" in f and m.lateral else "") + f"{_fmt(f[m.field])} {m.unit}"
            for f in facts
            if m.field in f
        ]
        return ", ".join(dict.fromkeys(parts)) or "not measured"

    return PLACEHOLDER.sub(sub, text)


def _footer(rule: CompiledRule, deciding: list[str]) -> str:
    card = rule.rule.card
    lines = [f"**Evidence strength: {card.evidence.strength}.** {card.evidence.label}"]
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
    lines.append(f"Rule `{rule.rule.id}`.")
    return "\n\n---\n" + "\n\n".join(lines)


def _summary(text: str) -> str:
    return text if len(text) < 140 else text[:138].rstrip() + "…"


def build_card(
    rule: CompiledRule, facts: list[dict[str, Any]], ctx: CardContext, deciding: list[str]
) -> dict[str, Any]:
    """One card for ``rule`` fired on ``facts`` (one fact per side, or the patient fact).

    ``deciding`` names the thresholds whose test decided the match; the card says
    which of them are not validated.
    """
    tpl = rule.rule.card
    card: dict[str, Any] = {
        "uuid": str(uuid.uuid4()),
        "summary": _summary(_render(tpl.summary, ctx, facts)),
        "detail": _render(tpl.detail, ctx, facts).rstrip() + _footer(rule, deciding),
        "indicator": tpl.indicator,
        "source": {"label": tpl.source.label} | ({"url": tpl.source.url} if tpl.source.url else {}),
    }
    suggestions = [
        {
            "label": s.label,
            "uuid": str(uuid.uuid4()),
            "isRecommended": s.recommended,
            "actions": [
                {
                    "type": "create",
                    "description": a.description,
                    "resource": plan_resource(a.resource, a.plans, ctx.patient_id, a.description),
                }
                for a in s.actions
            ],
        }
        for s in tpl.suggestions
    ]
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
