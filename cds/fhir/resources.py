"""FHIR R4 resources we emit, built as dicts and validated with fhir.resources (R4B)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from fhir.resources.R4B.careplan import CarePlan
from fhir.resources.R4B.servicerequest import ServiceRequest
from pydantic import ValidationError

from cds.fhir.codes import PLANS_SYSTEM, SNOMED_SYSTEM, Side, plan_display, site_coding

__all__ = ["PERFORMERS", "PlanRequest", "plan_resource", "validate_resource"]

_VALIDATORS: dict[str, Any] = {"ServiceRequest": ServiceRequest, "CarePlan": CarePlan}
#: performer types by the name a pack uses, as SNOMED CT occupations
PERFORMERS: dict[str, tuple[str, str]] = {"physiotherapist": ("36682004", "Physiotherapist")}


@dataclass(frozen=True)
class PlanRequest:
    """Everything a suggested plan says: what, for whom, why, where, when and by whom."""

    kind: str
    plan: str
    patient_id: str
    description: str
    instruction: str
    #: FHIR Timing.repeat (count, frequency, period, periodUnit)
    timing: dict[str, Any] | None = None
    performer: str | None = None
    sides: tuple[Side, ...] = ()
    region: str = "hip"
    #: references of the Conditions (or a symptom Observation) the plan treats
    reasons: tuple[str, ...] = field(default_factory=tuple)


def _plan_concept(plan: str) -> dict[str, Any]:
    display = plan_display(plan) or plan
    return {"coding": [{"system": PLANS_SYSTEM, "code": plan, "display": display}], "text": display}


def _performer(name: str) -> dict[str, Any]:
    code, display = PERFORMERS[name]
    return {"coding": [{"system": SNOMED_SYSTEM, "code": code, "display": display}]}


def _service_request(req: PlanRequest) -> dict[str, Any]:
    out: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "status": "draft",
        "intent": "proposal",
        "code": _plan_concept(req.plan),
        "subject": {"reference": f"Patient/{req.patient_id}"},
        "patientInstruction": req.instruction,
        "note": [{"text": req.description}],
    }
    if req.reasons:
        out["reasonReference"] = [{"reference": r} for r in req.reasons]
    if req.sides:
        out["bodySite"] = [{"coding": [site_coding(s, req.region)]} for s in req.sides]
    if req.timing:
        out["occurrenceTiming"] = {"repeat": req.timing}
    if req.performer:
        out["performerType"] = _performer(req.performer)
    return out


def _care_plan(req: PlanRequest) -> dict[str, Any]:
    detail: dict[str, Any] = {
        "code": _plan_concept(req.plan),
        "status": "not-started",
        "description": req.instruction,
    }
    if req.timing:
        detail["scheduledTiming"] = {"repeat": req.timing}
    out: dict[str, Any] = {
        "resourceType": "CarePlan",
        "status": "draft",
        "intent": "proposal",
        "title": plan_display(req.plan) or req.plan,
        "description": req.description,
        "subject": {"reference": f"Patient/{req.patient_id}"},
        "activity": [{"detail": detail}],
    }
    conditions = [r for r in req.reasons if r.startswith("Condition/")]
    if conditions:
        out["addresses"] = [{"reference": r} for r in conditions]
    return out


def plan_resource(req: PlanRequest) -> dict[str, Any]:
    """A draft ServiceRequest or CarePlan proposing one plan, validated as R4."""
    resource = _service_request(req) if req.kind == "ServiceRequest" else _care_plan(req)
    validate_resource(resource)
    return resource


#: elements whose value is free text or a reference: a FHIR string, valid when not empty
_TEXT = frozenset({"description", "patientInstruction", "text", "reference", "title"})
#: shapes already validated (a pack emits a handful: one per plan, sides and timing)
_VALID_SHAPES: set[bytes] = set()


def _shape(value: Any, key: str = "") -> Any:
    """``value`` with its free text and references reduced to whether they are empty:
    two resources of one shape are valid or invalid together."""
    if isinstance(value, dict):
        return {k: _shape(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(v, key) for v in value]
    if key in _TEXT and isinstance(value, str):
        return "<text>" if value.strip() else value
    return value


def validate_resource(resource: dict[str, Any]) -> None:
    """Raise ``ValueError`` if ``resource`` is not a valid R4 resource of its type.

    Validating with fhir.resources costs about 0.4 ms a resource; each shape is
    validated in full once per process, and later resources of the same shape
    differ only in non-empty text, which FHIR strings allow.
    """
    model = _VALIDATORS.get(resource.get("resourceType", ""))
    if model is None:
        raise ValueError(f"no validator for {resource.get('resourceType')!r}")
    shape = orjson.dumps(_shape(resource), option=orjson.OPT_SORT_KEYS)
    if shape in _VALID_SHAPES:
        return
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        raise ValueError(f"invalid {resource['resourceType']}: {exc}") from exc
    if len(_VALID_SHAPES) < 10_000:
        _VALID_SHAPES.add(shape)
