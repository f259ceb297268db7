"""Export traces for auditors: CSV (one row per card) and a FHIR R4 Bundle.

In the Bundle each call is a GuidanceResponse (module = pack canonical|version,
requestIdentifier = hookInstance, outputParameters -> a Parameters resource
listing the fired rules), with a Provenance (input Observations -> the
GuidanceResponse) and an AuditEvent. With ``pseudonymise``, patient ids are
replaced by a keyed hash, stable within one export key.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import uuid
from typing import Any

from fhir.resources.R4B.bundle import Bundle

from cds.audit.store import StoredRecord

__all__ = ["Pseudonymiser", "to_csv", "to_fhir_bundle"]

CSV_COLUMNS = [
    "recorded_at",
    "trace_id",
    "hook_instance",
    "service",
    "patient",
    "pack",
    "pack_version",
    "status",
    "rule_id",
    "card_uuid",
    "indicator",
    "summary",
    "feedback",
    "override_reason",
]


class Pseudonymiser:
    def __init__(self, key: bytes | None) -> None:
        self._key = key

    def patient(self, reference: str | None) -> str | None:
        if reference is None or self._key is None:
            return reference
        digest = hmac.new(self._key, reference.encode(), hashlib.sha256).hexdigest()[:20]
        return f"Patient/pseudo-{digest}"


def _feedback_text(feedback: list[StoredRecord], card_uuid: str) -> tuple[str, str]:
    outcomes, reasons = [], []
    for f in feedback:
        if f.body.get("card") == card_uuid:
            outcomes.append(str(f.body.get("outcome")))
            reason = f.body.get("overrideReason") or {}
            text = (reason.get("reason") or {}).get("display") or reason.get("userComment")
            if text:
                reasons.append(str(text))
    return ";".join(outcomes), ";".join(reasons)


_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: Any) -> Any:
    """A spreadsheet does not run a cell that starts with ' (CSV/formula injection)."""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


class _SafeWriter(csv.DictWriter):  # type: ignore[type-arg]
    def writerow(self, rowdict: Any) -> Any:
        return super().writerow({k: _cell(v) for k, v in rowdict.items()})


def to_csv(items: list[tuple[StoredRecord, list[StoredRecord]]], pseudo: Pseudonymiser) -> str:
    out = io.StringIO()
    writer = _SafeWriter(out, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    for rec, feedback in items:
        b = rec.body
        pack = (b.get("packs") or [{}])[0]
        base = {
            "recorded_at": rec.recorded_at,
            "trace_id": rec.trace_id,
            "hook_instance": rec.hook_instance,
            "service": b.get("service"),
            "patient": pseudo.patient(b.get("patient")),
            "pack": pack.get("id"),
            "pack_version": pack.get("version"),
            "status": b.get("outcome", {}).get("status"),
        }
        cards = b.get("cards") or [{}]
        for card in cards:
            outcome, reason = _feedback_text(feedback, card.get("uuid", ""))
            writer.writerow(
                base
                | {
                    "rule_id": card.get("rule_id"),
                    "card_uuid": card.get("uuid"),
                    "indicator": card.get("indicator"),
                    "summary": card.get("summary"),
                    "feedback": outcome,
                    "override_reason": reason,
                }
            )
    return out.getvalue()


def _observation_refs(body: dict[str, Any]) -> list[str]:
    refs = []
    for used in body.get("inputs", {}).get("used", []):
        ref = str(used.get("resource", "")).split("/_history/")[0]
        if ref.startswith("Observation/") and ref != "Observation/?":
            refs.append(ref)
    return refs


def _guidance_response(rec: StoredRecord, pseudo: Pseudonymiser, params_id: str) -> dict[str, Any]:
    b = rec.body
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
    patient = pseudo.patient(b.get("patient"))
    if patient:
        resource["subject"] = {"reference": patient}
    return resource


def _parameters(rec: StoredRecord, params_id: str) -> dict[str, Any]:
    parts = []
    for fired in rec.body.get("rules_fired", []):
        part = [
            {"name": "rule", "valueString": fired["rule_id"]},
            {"name": "category", "valueString": fired.get("category", "")},
        ]
        if fired.get("card_uuid"):
            part.append({"name": "card", "valueString": fired["card_uuid"]})
        if fired.get("suppressed_by"):
            part.append({"name": "suppressedBy", "valueString": fired["suppressed_by"]})
        for side in fired.get("sides", []):
            part.append({"name": "side", "valueString": side})
        for t in fired.get("thresholds", []):
            part.append(
                {
                    "name": "threshold",
                    "valueString": f"{t['name']} {t['value']} {t['unit']} ({t['label']})",
                }
            )
        parts.append({"name": "firedRule", "part": part})
    params: dict[str, Any] = {"resourceType": "Parameters", "id": params_id}
    if parts:
        params["parameter"] = parts
    return params


def _provenance(rec: StoredRecord, pseudo: Pseudonymiser) -> dict[str, Any]:
    engine = rec.body.get("engine", {})
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
    entities = [{"role": "source", "what": {"reference": r}} for r in _observation_refs(rec.body)]
    if entities:
        prov["entity"] = entities
    return prov


def _audit_event(rec: StoredRecord, pseudo: Pseudonymiser) -> dict[str, Any]:
    b = rec.body
    ok = b.get("outcome", {}).get("status", 200) == 200
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"audit:{rec.trace_id}")),
        "type": {
            "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
            "code": "rest",
            "display": "RESTful Operation",
        },
        "action": "E",
        "recorded": rec.recorded_at,
        "outcome": "0" if ok else "8",
        "agent": [{"who": {"display": str(b.get("user") or "unknown user")}, "requestor": True}],
        "source": {"observer": {"display": f"runform-cds service {b.get('service')}"}},
        "entity": [{"what": {"reference": f"urn:uuid:{rec.trace_id}"}}],
    }
    patient = pseudo.patient(b.get("patient"))
    if patient:
        event["entity"].append({"what": {"reference": patient}})
    return event


def to_fhir_bundle(
    items: list[tuple[StoredRecord, list[StoredRecord]]], pseudo: Pseudonymiser
) -> dict[str, Any]:
    entries = []
    for rec, _ in items:
        params_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"parameters:{rec.trace_id}"))
        for resource in (
            _guidance_response(rec, pseudo, params_id),
            _parameters(rec, params_id),
            _provenance(rec, pseudo),
            _audit_event(rec, pseudo),
        ):
            entries.append({"fullUrl": f"urn:uuid:{resource['id']}", "resource": resource})
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "collection"}
    if entries:
        bundle["entry"] = entries
    Bundle.model_validate(bundle)
    return bundle
