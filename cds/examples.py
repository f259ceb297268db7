"""Example patients and CDS Hooks requests, dated relative to now.

Used by the demo (``runform-cds demo``), the benchmark and the tests.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from cds.fhir.codes import ICD10CM_SYSTEM, PLANS_SYSTEM
from cds.fhir.observations import metric_observation

__all__ = [
    "demo_observations",
    "hook_request",
    "patient",
    "pfp_condition",
    "searchset",
    "strengthening_order",
]


def patient(patient_id: str, *, age_years: int = 29, gender: str = "female") -> dict[str, Any]:
    today = datetime.now(UTC).date()
    birth = today.replace(year=today.year - age_years) - timedelta(days=40)
    return {
        "resourceType": "Patient",
        "id": patient_id,
        "gender": gender,
        "birthDate": birth.isoformat(),
    }


def pfp_condition(patient_id: str, code: str = "M22.2X1") -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "id": f"{patient_id}-pfp",
        "clinicalStatus": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                    "code": "active",
                }
            ]
        },
        "code": {
            "coding": [
                {
                    "system": ICD10CM_SYSTEM,
                    "code": code,
                    "display": "Patellofemoral disorders, right knee",
                }
            ]
        },
        "subject": {"reference": f"Patient/{patient_id}"},
    }


def searchset(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "entry": [{"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": r} for r in resources],
    }


def demo_observations(
    patient_id: str,
    *,
    days_ago: float = 3,
    strides: int = 12,
    right_pelvic_drop: float = 7.5,
    right_abduction: float = 1.2,
) -> list[dict[str, Any]]:
    """A runner with right-stance hip drop and right hip abductor weakness."""
    when = datetime.now(UTC) - timedelta(days=days_ago)

    def obs(code: str, value: float, unit: str, side: Any = None, n: int | None = None) -> Any:
        return metric_observation(
            patient_id, code, value, unit, effective=when, side=side, strides=n
        )

    return [
        obs("contralateral-pelvic-drop", right_pelvic_drop, "deg", "right", strides),
        obs("contralateral-pelvic-drop", 3.1, "deg", "left", strides),
        obs("peak-hip-adduction", 21.0, "deg", "right", strides),
        obs("peak-hip-adduction", 14.5, "deg", "left", strides),
        obs("hip-abduction-strength", right_abduction, "N.m/kg", "right"),
        obs("hip-abduction-strength", 1.65, "N.m/kg", "left"),
        obs("cadence", 164, "/min", None, strides),
    ]


def strengthening_order(patient_id: str) -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "id": "draft-hip-strength",
        "status": "draft",
        "intent": "order",
        "code": {"coding": [{"system": PLANS_SYSTEM, "code": "hip-strengthening-program"}]},
        "subject": {"reference": f"Patient/{patient_id}"},
    }


def hook_request(
    hook: str,
    patient_id: str,
    *,
    observations: list[dict[str, Any]] | None = None,
    conditions: list[dict[str, Any]] | None = None,
    age_years: int = 29,
    draft_orders: list[dict[str, Any]] | None = None,
    prefetch: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A complete CDS Hooks request with every prefetch key filled in."""
    obs = observations if observations is not None else demo_observations(patient_id)
    conds = conditions if conditions is not None else [pfp_condition(patient_id)]
    context: dict[str, Any] = {"userId": "Practitioner/pt-1", "patientId": patient_id}
    if hook in ("order-select", "order-sign"):
        orders = draft_orders if draft_orders is not None else [strengthening_order(patient_id)]
        context["draftOrders"] = {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": o} for o in orders],
        }
        if hook == "order-select":
            context["selections"] = [f"ServiceRequest/{o['id']}" for o in orders]
    return {
        "hook": hook,
        "hookInstance": str(uuid.uuid4()),
        "context": context,
        "prefetch": prefetch
        if prefetch is not None
        else {
            "patient": patient(patient_id, age_years=age_years),
            "observations": searchset(obs),
            "conditions": searchset(conds),
        },
    }
