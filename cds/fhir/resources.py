"""FHIR R4 resources we emit, built as dicts and validated with fhir.resources (R4B)."""

from __future__ import annotations

from typing import Any

from fhir.resources.R4B.careplan import CarePlan
from fhir.resources.R4B.servicerequest import ServiceRequest
from pydantic import ValidationError

from cds.fhir.codes import PLANS_SYSTEM, plan_display

__all__ = ["plan_resource", "validate_resource"]

_VALIDATORS: dict[str, Any] = {"ServiceRequest": ServiceRequest, "CarePlan": CarePlan}


def _plan_concept(plan: str) -> dict[str, Any]:
    display = plan_display(plan) or plan
    return {"coding": [{"system": PLANS_SYSTEM, "code": plan, "display": display}], "text": display}


def plan_resource(kind: str, plans: list[str], patient_id: str, note: str) -> dict[str, Any]:
    """A draft ServiceRequest (one plan) or CarePlan (one activity per plan)."""
    subject = {"reference": f"Patient/{patient_id}"}
    if kind == "ServiceRequest":
        resource: dict[str, Any] = {
            "resourceType": "ServiceRequest",
            "status": "draft",
            "intent": "proposal",
            "code": _plan_concept(plans[0]),
            "subject": subject,
            "note": [{"text": note}],
        }
    else:
        resource = {
            "resourceType": "CarePlan",
            "status": "draft",
            "intent": "proposal",
            "title": " + ".join(plan_display(p) or p for p in plans),
            "description": note,
            "subject": subject,
            "activity": [
                {"detail": {"code": _plan_concept(p), "status": "not-started"}} for p in plans
            ],
        }
    validate_resource(resource)
    return resource


def validate_resource(resource: dict[str, Any]) -> None:
    """Raise ``ValueError`` if ``resource`` is not a valid R4 resource of its type."""
    model = _VALIDATORS.get(resource.get("resourceType", ""))
    if model is None:
        raise ValueError(f"no validator for {resource.get('resourceType')!r}")
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        raise ValueError(f"invalid {resource['resourceType']}: {exc}") from exc
