"""What a stored trace means, in words: shared by ``audit show``, the viewer and exports.

Stored traces are read defensively: a record written by an older version may
lack a field, and that is shown as missing, never as a crash.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cds.audit.trace import Trace
from cds.rules.pack import PROVENANCE_LABELS
from cds.rules.records import CardShown, FiredRuleEntry

__all__ = [
    "PROVENANCE_LABELS",
    "FeedbackView",
    "age_text",
    "decided_lines",
    "diagnosis_lines",
    "feedback_view",
    "order_lines",
    "rule_fate",
    "rule_verdict",
]

_OPS = {"at_least": "at least", "above": "above", "below": "below", "at_most": "at most"}


def _cards_by_uuid(trace: Trace) -> dict[str, CardShown]:
    return {c["uuid"]: c for c in trace.get("cards", []) if isinstance(c, dict) and "uuid" in c}


def _card_name(trace: Trace, uuid: str) -> str:
    card = _cards_by_uuid(trace).get(uuid)
    maker = card.get("rule_id") if card else None
    return f"the {maker} card ({uuid})" if maker else f"card {uuid}"


def rule_fate(r: FiredRuleEntry, trace: Trace | None = None) -> str:
    """What became of a fired rule: its card, attached to cards, held back, or no card."""
    trace = trace or {}
    held = f"; held back {', '.join(r['held_back'])}" if r.get("held_back") else ""
    if r.get("suppressed_by"):
        return f"suppressed by {r['suppressed_by']}{held}"
    if r.get("card_uuid"):
        return f"card {r['card_uuid']}{held}"
    if r.get("attached_to"):
        cards = ", ".join(_card_name(trace, u) for u in r["attached_to"])
        return f"its text was attached to {cards}"
    return "no card (it shows only while it holds another card back)"


def rule_verdict(trace: Trace, rule_id: str) -> str:
    """For ``--rule``: whether ``rule_id`` fired and showed, or was suppressed, and by what."""
    for r in trace.get("rules_fired", []):
        if r.get("rule_id") == rule_id:
            state = "suppressed" if r.get("suppressed_by") else "fired"
            return f"{rule_id} {state}: {rule_fate(r, trace)}"
    return f"{rule_id} did not fire"


def diagnosis_lines(b: Trace) -> list[str]:
    """The Conditions matched to the pack's value sets, with how sure and which side."""
    out = []
    for d in b.get("diagnoses", []):
        state = "confirmed" if d.get("confirmed") else f"possible ({d.get('doubt')})"
        onset = f"onset {d['onset_days']:g} days ago" if "onset_days" in d else "no onset recorded"
        sides = "/".join(d.get("sides") or ()) or "side not recorded"
        ref = d.get("reference", "Condition/?")
        out.append(f"{d['value_set']} ({d['code']}): {state}, {onset}, {sides}  ({ref})")
    return out


_UNITLESS = {"score", "1", ""}


def order_lines(b: Trace) -> list[str]:
    """The orders that counted (being placed, or in the chart), with their plans."""
    out = []
    for o in b.get("orders", []):
        if o.get("recognised") is False:
            out.append(f"{o.get('reference')}: {o.get('state')}, no recognised order "
                       "(it names no plan the pack knows)")  # fmt: skip
            continue
        age = f", started {o['started_days']:g} days ago" if "started_days" in o else ""
        out.append(f"{o.get('reference')}: {o.get('state')}, {', '.join(o.get('plans', []))}{age}")
    return out


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, int | float) else str(value)


def _quantity(value: Any, unit: Any) -> str:
    unit = str(unit or "").strip("{}")
    return _number(value) if unit in _UNITLESS else f"{_number(value)} {unit}"


def decided_lines(r: FiredRuleEntry) -> list[str]:
    """Each measured value against the threshold that decided the rule, per side:
    ``left: hip abduction strength (hip-abd) 0.21 kg/kg is below weak (0.25 kg/kg) [X]``."""
    out = []
    for d in r.get("decided", []):
        side = f"{d['side']}: " if d.get("side") else ""
        op = _OPS.get(d.get("op", ""), d.get("op", "?"))
        if d.get("value") is None:
            measured = "not measured"
        else:
            verb = "is" if d.get("crossed", True) else "is not"
            measured = f"{_quantity(d['value'], d.get('unit'))} {verb} {op}"
        limit = _quantity(d.get("limit"), d.get("limit_unit"))
        out.append(
            f"{side}{d.get('subject', '?')}: {measured} {d.get('threshold')} ({limit}) "
            f"[{d.get('label', '?')}]"
        )
    return out


def age_text(trace: Trace) -> str:
    """The patient's age in completed years when the call was answered."""
    for fact in trace.get("facts", []):
        if isinstance(fact, dict) and fact.get("kind") == "patient":
            age = fact.get("age_years")
            if isinstance(age, int | float):
                return f"{age:g} years"
            return "unknown (no readable birth date)"
    return "not recorded"


@dataclass(frozen=True)
class FeedbackView:
    """One feedback record in full: what the clinician did with which card."""

    outcome: str
    card: str
    card_name: str
    at: str
    accepted: list[str] = field(default_factory=list)
    reason_code: str = ""
    reason_system: str = ""
    reason_display: str = ""
    comment: str = ""
    client: str = ""

    @property
    def reason(self) -> str:
        """``code (display)`` of the override reason, or empty."""
        if not self.reason_code:
            return self.reason_display
        return (
            f"{self.reason_code} ({self.reason_display})"
            if self.reason_display
            else self.reason_code
        )


def _suggestion_label(trace: Trace, card: str, suggestion: str) -> str:
    for s in _cards_by_uuid(trace).get(card, {}).get("suggestions", []):
        if isinstance(s, dict) and s.get("uuid") == suggestion:
            return f"{s.get('label', '?')} ({suggestion})"
    return f"suggestion {suggestion}"


def feedback_view(feedback: dict[str, Any], trace: Trace) -> FeedbackView:
    card = str(feedback.get("card", ""))
    override = feedback.get("overrideReason") or {}
    coding = override.get("reason") or {}
    client = feedback.get("client") or {}
    return FeedbackView(
        outcome=str(feedback.get("outcome", "?")),
        card=card,
        card_name=_card_name(trace, card),
        at=str(feedback.get("outcomeTimestamp", "")),
        accepted=[
            _suggestion_label(trace, card, str(a.get("id")))
            for a in feedback.get("acceptedSuggestions") or []
            if isinstance(a, dict)
        ],
        reason_code=str(coding.get("code") or ""),
        reason_system=str(coding.get("system") or ""),
        reason_display=str(coding.get("display") or ""),
        comment=str(override.get("userComment") or ""),
        client=str(client.get("iss") or ""),
    )
