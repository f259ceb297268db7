"""Print stored traces so a person can read them.

Stored text came in from callers; terminal control characters (which could
rewrite the screen of whoever reads the trace) are removed before printing.
"""

from __future__ import annotations

import re
from typing import Any

from cds.audit.store import StoredRecord

__all__ = ["diagnosis_lines", "render_records", "rule_fate", "terminal_safe"]

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def terminal_safe(text: str) -> str:
    """``text`` without control characters (newlines and tabs are kept)."""
    return _CONTROL.sub("", text)


def _line(label: str, value: Any) -> str:
    return f"  {label:<14} {value}"


def rule_fate(r: dict[str, Any]) -> str:
    """What became of a fired rule: its card, attached to cards, held back, or no card."""
    held = f"; held back {', '.join(r['held_back'])}" if r.get("held_back") else ""
    if r.get("suppressed_by"):
        return f"suppressed by {r['suppressed_by']}{held}"
    if r.get("card_uuid"):
        return f"card {r['card_uuid']}{held}"
    if r.get("attached_to"):
        return f"text attached to card {', '.join(r['attached_to'])}"
    return "no card (it shows only while it holds another card back)"


def diagnosis_lines(b: dict[str, Any]) -> list[str]:
    """The Conditions matched to the pack's value sets, with how sure and which side."""
    out = []
    for d in b.get("diagnoses", []):
        state = "confirmed" if d.get("confirmed") else f"possible ({d.get('doubt')})"
        onset = f"onset {d['onset_days']:g} days ago" if "onset_days" in d else "no onset recorded"
        sides = "/".join(d["sides"]) if d.get("sides") else "side not recorded"
        ref = d.get("reference", "Condition/?")
        out.append(f"{d['value_set']} ({d['code']}): {state}, {onset}, {sides}  ({ref})")
    return out


def _trace(rec: StoredRecord) -> list[str]:
    b = rec.body
    out = [f"TRACE {b['trace_id']}  (record #{rec.seq}, hash {rec.hash[:16]}…)"]
    out.append(_line("hook", f"{b.get('hook')} via {b.get('service')}"))
    out.append(_line("received", b.get("received_at")))
    out.append(_line("patient", b.get("patient")))
    out.append(_line("user", b.get("user")))
    for p in b.get("packs", []):
        out.append(
            _line(
                "rule pack", f"{p['id']} {p['version']} ({p['status']}) sha256 {p['sha256'][:16]}…"
            )
        )
    outcome = b.get("outcome", {})
    out.append(
        _line("outcome", f"HTTP {outcome.get('status')} {outcome.get('message', '')}".rstrip())
    )
    prefetch = b.get("prefetch", {})
    if prefetch:
        out.append(_line("prefetch", ", ".join(f"{k}: {v}" for k, v in prefetch.items())))
    inputs = b.get("inputs", {})
    out.append("  inputs used:")
    for i in inputs.get("used", []):
        side = f" [{i['side']}]" if i.get("side") else ""
        out.append(
            f"    - {i.get('code')}{side} = {i.get('value')} {i.get('unit', '')}  ({i['resource']})"
        )
    if inputs.get("excluded"):
        out.append("  inputs excluded:")
        for i in inputs["excluded"]:
            out.append(f"    - {i.get('code') or i['resource']}: {i.get('reason')}")
    diagnoses = diagnosis_lines(b)
    if diagnoses:
        out.append("  diagnoses matched:")
        out += [f"    - {line}" for line in diagnoses]
    out.append("  rules fired:")
    for r in b.get("rules_fired", []):
        sides = f" on {', '.join(r['sides'])}" if r.get("sides") else ""
        out.append(f"    - {r['rule_id']}{sides} -> {rule_fate(r)}")
        for t in r.get("thresholds", []):
            out.append(f"        threshold {t['name']} = {t['value']} {t['unit']} ({t['label']})")
    out.append("  cards:")
    for c in b.get("cards", []):
        out.append(f"    - [{c['indicator']}] {c['summary']}  ({c['uuid']})")
    return out


def _feedback(rec: StoredRecord) -> list[str]:
    b = rec.body
    reason = b.get("overrideReason", {})
    why = reason.get("reason", {}).get("display") or reason.get("userComment") or ""
    return [
        f"FEEDBACK on card {b.get('card')}: {b.get('outcome')} {why}".rstrip()
        + f"  at {b.get('outcomeTimestamp')}  (record #{rec.seq})"
    ]


def render_records(records: list[StoredRecord]) -> str:
    lines: list[str] = []
    for rec in records:
        lines.extend(_trace(rec) if rec.kind == "trace" else _feedback(rec))
        lines.append("")
    return terminal_safe("\n".join(lines))


def render_list(items: list[tuple[StoredRecord, list[StoredRecord]]]) -> str:
    """One line per trace: time, hookInstance, patient, pack, cards, feedback."""
    lines = [
        f"{'recorded':<20} {'hookInstance':<36} {'patient':<20} {'pack':<18} "
        f"{'status':>6}  cards / feedback"
    ]
    for rec, feedback in items:
        b = rec.body
        pack = (b.get("packs") or [{}])[0]
        cards = ", ".join(f"{c['indicator']}:{c.get('rule_id')}" for c in b.get("cards", []))
        fb = ", ".join(str(f.body.get("outcome")) for f in feedback)
        lines.append(
            f"{rec.recorded_at[:19]:<20} {rec.hook_instance or '-':<36} "
            f"{str(b.get('patient'))[:20]:<20} {pack.get('id', '-')}@{pack.get('version', '-'):<8} "
            f"{b.get('outcome', {}).get('status', '-'):>6}  {cards or '-'}"
            + (f" / {fb}" if fb else "")
        )
    lines.append(f"{len(items)} trace(s)")
    return terminal_safe("\n".join(lines))
