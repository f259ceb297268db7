"""Print stored traces so a person can read them (``audit show`` and ``audit list``).

Stored text came in from callers; terminal control characters (which could
rewrite the screen of whoever reads the trace) are removed before printing.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterable, Iterator
from typing import Any

from cds.audit.reading import (
    PROVENANCE_LABELS,
    age_text,
    decided_lines,
    diagnosis_lines,
    feedback_view,
    order_lines,
    rule_fate,
    rule_verdict,
)
from cds.audit.store import StoredRecord
from cds.audit.trace import Trace
from cds.rules.records import CardShown

__all__ = ["list_lines", "render_records", "terminal_safe"]

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
Integrity = dict[int, str | None]


def terminal_safe(text: str) -> str:
    """``text`` without control characters (newlines and tabs are kept)."""
    return _CONTROL.sub("", text)


def _line(label: str, value: Any) -> str:
    return f"  {label:<14} {value}"


def _check(rec: StoredRecord, integrity: Integrity | None) -> str:
    if integrity is None or rec.seq not in integrity:
        return ""
    problem = integrity[rec.seq]
    return "  [record verifies]" if problem is None else f"  [RECORD DOES NOT VERIFY: {problem}]"


def _head(rec: StoredRecord, integrity: Integrity | None) -> list[str]:
    b = rec.trace
    where = f"record #{rec.seq}, hash {rec.hash[:16]}…"
    out = [f"TRACE {b.get('trace_id')}  ({where}){_check(rec, integrity)}"]
    out.append(_line("hook", f"{b.get('hook')} via {b.get('service')}"))
    out.append(_line("hookInstance", b.get("hook_instance")))
    out.append(_line("received", b.get("received_at")))
    out.append(_line("patient", f"{b.get('patient')} (age {age_text(b)})"))
    out.append(_line("user", b.get("user")))
    for p in b.get("packs", []):
        pack = f"{p['id']} {p['version']} ({p['status']}) sha256 {p['sha256'][:16]}…"
        out.append(_line("rule pack", pack))
    outcome = b.get("outcome", {})
    status = f"HTTP {outcome.get('status')} {outcome.get('message', '')}".rstrip()
    out.append(_line("outcome", status))
    prefetch = b.get("prefetch", {})
    if prefetch:
        out.append(_line("prefetch", ", ".join(f"{k}: {v}" for k, v in prefetch.items())))
    return out


def _inputs(b: Trace) -> list[str]:
    inputs = b.get("inputs", {})
    out = ["  inputs used:"]
    for i in inputs.get("used", []):
        side = f" [{i['side']}]" if i.get("side") else ""
        out.append(
            f"    - {i.get('code')}{side} = {i.get('value')} {i.get('unit', '')}  ({i['resource']})"
        )
    if inputs.get("excluded"):
        out.append("  inputs excluded:")
        out += [
            f"    - {i.get('code') or i['resource']}: {i.get('reason')}" for i in inputs["excluded"]
        ]
    diagnoses = diagnosis_lines(b)
    if diagnoses:
        out.append("  diagnoses matched:")
        out += [f"    - {line}" for line in diagnoses]
    orders = order_lines(b)
    if orders:
        out.append("  orders considered:")
        out += [f"    - {line}" for line in orders]
    return out


def _rules(b: Trace) -> list[str]:
    out = ["  rules fired:"]
    for r in b.get("rules_fired", []):
        sides = f" on {', '.join(r['sides'])}" if r.get("sides") else ""
        out.append(f"    - {r['rule_id']}{sides} -> {rule_fate(r, b)}")
        out += [f"        {line}" for line in decided_lines(r)]
    return out


def _card(c: CardShown) -> list[str]:
    made = f"{c.get('uuid')}, rule {c.get('rule_id')}"
    out = [f"    - [{c.get('indicator')}] {c.get('summary')}  ({made})"]
    for para in str(c.get("detail") or "").splitlines():
        out += textwrap.wrap(para, 96, initial_indent="        ", subsequent_indent="        ")
    for s in c.get("suggestions", []):
        if isinstance(s, dict):
            out.append(f"        suggestion: {s.get('label')} ({s.get('uuid')})")
    for link in c.get("links", []):
        out.append(f"        link: {link.get('label')} <{link.get('url')}>")
    source = c.get("source") or {}
    out.append(
        f"        source: {source.get('label')}"
        + (f" <{source['url']}>" if source.get("url") else "")
    )
    if c.get("attached_rules"):
        out.append(f"        text attached by: {', '.join(c['attached_rules'])}")
    return out


def _trace(rec: StoredRecord, integrity: Integrity | None) -> list[str]:
    b = rec.trace
    out = _head(rec, integrity) + _inputs(b) + _rules(b)
    out.append("  cards, as returned:")
    for c in b.get("cards", []):
        out += _card(c)
    if not b.get("cards"):
        out.append("    (none)")
    if any(r.get("decided") or r.get("thresholds") for r in b.get("rules_fired", [])):
        out.append(
            "  threshold labels: " + "; ".join(f"{k} = {v}" for k, v in PROVENANCE_LABELS.items())
        )
    return out


def _feedback(rec: StoredRecord, trace: Trace, integrity: Integrity | None) -> list[str]:
    v = feedback_view(rec.body, trace)
    head = f"FEEDBACK on {v.card_name}: {v.outcome} at {v.at}"
    out = [f"{head}  (record #{rec.seq}){_check(rec, integrity)}"]
    if v.client:
        out.append(_line("from client", v.client))
    for accepted in v.accepted:
        out.append(_line("accepted", accepted))
    if v.reason_code or v.reason_display:
        out.append(
            _line("reason", v.reason + (f"  [{v.reason_system}]" if v.reason_system else ""))
        )
    if v.comment:
        out.append(_line("comment", v.comment))
    return out


def render_records(records: list[StoredRecord], integrity: Integrity | None = None) -> str:
    """A trace and its feedback, in the order recorded."""
    lines: list[str] = []
    trace: Trace = {}
    for rec in records:
        if rec.kind == "trace":
            trace = rec.trace
            lines.extend(_trace(rec, integrity))
        else:
            lines.extend(_feedback(rec, trace, integrity))
        lines.append("")
    return terminal_safe("\n".join(lines))


def _list_row(rec: StoredRecord, feedback: list[StoredRecord], flag: str, rule: str | None) -> str:
    b = rec.trace
    pack = (b.get("packs") or [{}])[0]
    cards = ", ".join(f"{c.get('indicator')}:{c.get('rule_id')}" for c in b.get("cards", []))
    fb = ", ".join(str(f.body.get("outcome")) for f in feedback)
    row = (
        f"{flag:<2}{rec.recorded_at[:19]:<20} {rec.hook_instance or '-':<36} "
        f"{str(b.get('patient'))[:20]:<20} {pack.get('id', '-')}@{pack.get('version', '-'):<8} "
        f"{b.get('outcome', {}).get('status', '-'):>6}  {cards or '-'}" + (f" / {fb}" if fb else "")
    )
    return row + (f"\n    {rule_verdict(b, rule)}" if rule else "")


def list_lines(
    pages: Iterable[tuple[list[tuple[StoredRecord, list[StoredRecord]]], Integrity]],
    rule: str | None = None,
) -> Iterator[str]:
    """One line per trace (time, hookInstance, patient, pack, cards, feedback), page by
    page as the store yields them; ``!`` in the first column marks a trace or feedback
    record that does not verify."""
    yield (
        f"  {'recorded':<20} {'hookInstance':<36} {'patient':<20} {'pack':<18} "
        f"{'status':>6}  cards / feedback"
    )
    count = bad = 0
    for items, integrity in pages:
        for rec, feedback in items:
            broken = any(integrity.get(r.seq) for r in (rec, *feedback))
            count, bad = count + 1, bad + broken
            yield terminal_safe(_list_row(rec, feedback, "!" if broken else "", rule))
    yield f"{count} trace(s)"
    if bad:
        yield (
            f"! {bad} trace(s) hold a record that does NOT verify: "
            "see `audit show` and `audit verify`"
        )
