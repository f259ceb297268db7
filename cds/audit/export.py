"""Export traces for auditors: CSV (one row per card) and a FHIR R4 Bundle.

In the Bundle each call is a GuidanceResponse (``moduleCanonical`` = pack
url|version, ``requestIdentifier`` = hookInstance, ``outputParameters`` -> a
Parameters resource listing the fired rules, what became of each, and every
measured value against the threshold that decided it), a Provenance (the
Observations used, Conditions matched and orders considered -> the
GuidanceResponse) and an AuditEvent for the call. Each
feedback record is one more AuditEvent (subtype ``cds-feedback``) whose entity
is the GuidanceResponse and whose ``entity.detail`` carries the card, the
outcome, the accepted suggestions, the override reason (code and display) and
the comment. Pseudonymise the items first (:class:`cds.audit.pseudonym.Pseudonymiser`).
"""

from __future__ import annotations

import csv
import io
import uuid
from typing import Any

from fhir.resources.R4B.bundle import Bundle

from cds.audit.reading import (
    FeedbackView,
    age_text,
    decided_lines,
    diagnosis_lines,
    feedback_view,
    order_lines,
    rule_fate,
)
from cds.audit.store import StoredRecord
from cds.audit.trace import Trace
from cds.rules.records import FiredRuleEntry

__all__ = ["CSV_COLUMNS", "to_csv", "to_fhir_bundle"]

Items = list[tuple[StoredRecord, list[StoredRecord]]]
AUDIT_CODES = "http://runform-cds.org/fhir/CodeSystem/audit"

CSV_COLUMNS = [
    "recorded_at",
    "trace_id",
    "hook_instance",
    "service",
    "hook",
    "user",
    "patient",
    "age",
    "pack",
    "pack_version",
    "pack_sha256",
    "status",
    "diagnoses",
    "orders",
    "rule_id",
    "sides",
    "thresholds",
    "attached_rules",
    "suppressed_rules",
    "card_uuid",
    "indicator",
    "summary",
    "feedback_outcome",
    "feedback_time",
    "accepted_suggestion",
    "override_code",
    "override_display",
    "override_comment",
]

_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: Any) -> Any:
    """A spreadsheet does not run a cell that starts with ' (CSV/formula injection)."""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


class _SafeWriter(csv.DictWriter):  # type: ignore[type-arg]
    def writerow(self, rowdict: Any) -> Any:
        return super().writerow({k: _cell(v) for k, v in rowdict.items()})


def _joined(values: list[str]) -> str:
    return " | ".join(v for v in values if v)


def _feedback_columns(views: list[FeedbackView]) -> dict[str, str]:
    return {
        "feedback_outcome": _joined([v.outcome for v in views]),
        "feedback_time": _joined([v.at for v in views]),
        "accepted_suggestion": _joined([", ".join(v.accepted) for v in views]),
        "override_code": _joined(
            [f"{v.reason_system}|{v.reason_code}" if v.reason_code else "" for v in views]
        ),
        "override_display": _joined([v.reason_display for v in views]),
        "override_comment": _joined([v.comment for v in views]),
    }


def _rule_columns(b: Trace, rule_id: str | None) -> dict[str, str]:
    fired = next(
        (r for r in b.get("rules_fired", []) if r.get("rule_id") == rule_id), FiredRuleEntry()
    )
    return {
        "sides": ", ".join(fired.get("sides", [])),
        "thresholds": _joined(decided_lines(fired)),
    }


def _call_columns(rec: StoredRecord) -> dict[str, Any]:
    b = rec.trace
    pack = (b.get("packs") or [{}])[0]
    suppressed = [
        f"{r['rule_id']} by {r['suppressed_by']}"
        for r in b.get("rules_fired", [])
        if r.get("suppressed_by")
    ]
    return {
        "recorded_at": rec.recorded_at,
        "trace_id": rec.trace_id,
        "hook_instance": rec.hook_instance,
        "service": b.get("service"),
        "hook": b.get("hook"),
        "user": b.get("user"),
        "patient": b.get("patient"),
        "age": age_text(b),
        "pack": pack.get("id"),
        "pack_version": pack.get("version"),
        "pack_sha256": pack.get("sha256"),
        "status": b.get("outcome", {}).get("status"),
        "diagnoses": _joined(diagnosis_lines(b)),
        "orders": _joined(order_lines(b)),
        "suppressed_rules": _joined(suppressed),
    }


def to_csv(items: Items) -> str:
    """One row per card shown (one row for a call that showed none)."""
    out = io.StringIO()
    writer = _SafeWriter(out, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    for rec, feedback in items:
        b = rec.trace
        call = _call_columns(rec)
        views = [feedback_view(f.body, b) for f in feedback]
        for card in b.get("cards") or [{}]:
            rule_id = card.get("rule_id")
            writer.writerow(
                call
                | _rule_columns(b, rule_id)
                | _feedback_columns([v for v in views if v.card == card.get("uuid")])
                | {
                    "rule_id": rule_id,
                    "attached_rules": ", ".join(card.get("attached_rules", [])),
                    "card_uuid": card.get("uuid"),
                    "indicator": card.get("indicator"),
                    "summary": card.get("summary"),
                }
            )
    return out.getvalue()


def _input_refs(body: Trace) -> list[str]:
    """The Observations used, the Conditions matched and the orders that counted."""
    refs = [str(u.get("resource", "")) for u in body.get("inputs", {}).get("used", [])]
    refs += [str(d.get("reference", "")) for d in body.get("diagnoses", [])]
    refs += [str(o.get("reference", "")) for o in body.get("orders", [])]
    plain = [r.split("/_history/")[0] for r in refs]
    return list(dict.fromkeys(r for r in plain if "/" in r and not r.endswith("/?")))


def _guidance_response(rec: StoredRecord, params_id: str) -> dict[str, Any]:
    b = rec.trace
    pack = (b.get("packs") or [{}])[0]
    ok = b.get("outcome", {}).get("status", 200) == 200
    resource: dict[str, Any] = {
        "resourceType": "GuidanceResponse",
        "id": rec.trace_id,
        "requestIdentifier": {
            "system": "urn:ietf:rfc:3986",
            "value": f"urn:uuid:{rec.hook_instance}",
        },
        "identifier": [{"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{rec.trace_id}"}],
        "moduleCanonical": f"{pack.get('url')}|{pack.get('version')}",
        "status": "success" if ok else "failure",
        "occurrenceDateTime": b.get("received_at") or rec.recorded_at,
        "outputParameters": {"reference": f"urn:uuid:{params_id}"},
    }
    if b.get("patient"):
        resource["subject"] = {"reference": b["patient"]}
    return resource


def _string(name: str, value: Any) -> dict[str, Any]:
    return {"name": name, "valueString": str(value)}


def _fired_part(fired: FiredRuleEntry, trace: Trace) -> dict[str, Any]:
    part = [
        _string("rule", fired["rule_id"]),
        _string("category", fired.get("category", "")),
        _string("outcome", rule_fate(fired, trace)),
    ]
    if fired.get("card_uuid"):
        part.append(_string("card", fired["card_uuid"]))
    if fired.get("suppressed_by"):
        part.append(_string("suppressedBy", fired["suppressed_by"]))
    part += [_string("side", side) for side in fired.get("sides", [])]
    part += [
        _string("threshold", f"{t['name']} {t['value']} {t['unit']} ({t['label']})")
        for t in fired.get("thresholds", [])
    ]
    part += [_string("measured", line) for line in decided_lines(fired)]
    return {"name": "firedRule", "part": part}


def _parameters(rec: StoredRecord, params_id: str) -> dict[str, Any]:
    parts = [_fired_part(f, rec.trace) for f in rec.trace.get("rules_fired", [])]
    params: dict[str, Any] = {"resourceType": "Parameters", "id": params_id}
    if parts:
        params["parameter"] = parts
    return params


def _provenance(rec: StoredRecord) -> dict[str, Any]:
    engine = rec.trace.get("engine", {})
    prov: dict[str, Any] = {
        "resourceType": "Provenance",
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"provenance:{rec.trace_id}")),
        "target": [{"reference": f"urn:uuid:{rec.trace_id}"}],
        "recorded": rec.recorded_at,
        "agent": [
            {
                "who": {
                    "display": f"runform-cds {engine.get('runform_cds', '')} "
                    f"(durable-rules {engine.get('version', '')})"
                }
            }
        ],
    }
    entities = [{"role": "source", "what": {"reference": r}} for r in _input_refs(rec.trace)]
    if entities:
        prov["entity"] = entities
    return prov


def _event(event_id: str, recorded: str, ok: bool, who: str, observer: str) -> dict[str, Any]:
    return {
        "resourceType": "AuditEvent",
        "id": event_id,
        "type": {
            "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
            "code": "rest",
            "display": "RESTful Operation",
        },
        "action": "E",
        "recorded": recorded,
        "outcome": "0" if ok else "8",
        "agent": [{"who": {"display": who}, "requestor": True}],
        "source": {"observer": {"display": observer}},
    }


def _call_event(rec: StoredRecord) -> dict[str, Any]:
    b = rec.trace
    event = _event(
        str(uuid.uuid5(uuid.NAMESPACE_URL, f"audit:{rec.trace_id}")),
        rec.recorded_at,
        b.get("outcome", {}).get("status", 200) == 200,
        str(b.get("user") or "unknown user"),
        f"runform-cds service {b.get('service')}",
    )
    event["entity"] = [{"what": {"reference": f"urn:uuid:{rec.trace_id}"}}]
    if b.get("patient"):
        event["entity"].append({"what": {"reference": b["patient"]}})
    return event


def _feedback_event(rec: StoredRecord, trace: StoredRecord, index: int) -> dict[str, Any]:
    view = feedback_view(rec.body, trace.trace)
    event = _event(
        str(uuid.uuid5(uuid.NAMESPACE_URL, f"feedback:{trace.trace_id}:{index}")),
        rec.recorded_at,
        True,
        view.client or "CDS client",
        f"runform-cds service {rec.body.get('service')}",
    )
    event["subtype"] = [
        {"system": AUDIT_CODES, "code": "cds-feedback", "display": "CDS Hooks card feedback"}
    ]
    event["action"] = "C"
    details = [
        ("card", view.card_name),
        ("outcome", view.outcome),
        ("outcomeTimestamp", view.at),
        *(("acceptedSuggestion", a) for a in view.accepted),
        (
            "overrideReasonCode",
            f"{view.reason_system}|{view.reason_code}" if view.reason_code else "",
        ),
        ("overrideReasonDisplay", view.reason_display),
        ("overrideComment", view.comment),
    ]
    event["entity"] = [
        {
            "what": {"reference": f"urn:uuid:{trace.trace_id}"},
            "detail": [{"type": k, "valueString": v} for k, v in details if v],
        }
    ]
    return event


def to_fhir_bundle(items: Items) -> dict[str, Any]:
    """A ``collection`` Bundle, validated as R4 before it is returned."""
    entries = []
    for rec, feedback in items:
        params_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"parameters:{rec.trace_id}"))
        resources = [
            _guidance_response(rec, params_id),
            _parameters(rec, params_id),
            _provenance(rec),
            _call_event(rec),
            *(_feedback_event(f, rec, i) for i, f in enumerate(feedback)),
        ]
        entries += [{"fullUrl": f"urn:uuid:{r['id']}", "resource": r} for r in resources]
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "collection"}
    if entries:
        bundle["entry"] = entries
    Bundle.model_validate(bundle)
    return bundle
