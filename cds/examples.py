"""Example patients and CDS Hooks requests, dated relative to now.

Used by the demo (``runform-cds demo``), the benchmark and the tests.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

from cds.fhir.codes import ICD10CM_SYSTEM, PLANS_SYSTEM
from cds.fhir.observations import coded_component, metric_observation

__all__ = [
    "condition",
    "demo_observations",
    "hook_request",
    "patient",
    "pfp_condition",
    "plan_order",
    "searchset",
    "strengthening_order",
]


def patient(
    patient_id: str, *, age_years: int | None = 29, gender: str | None = "female"
) -> dict[str, Any]:
    out: dict[str, Any] = {"resourceType": "Patient", "id": patient_id}
    if gender is not None:
        out["gender"] = gender
    if age_years is not None:
        today = datetime.now(UTC).date()
        # 40 days past the birthday, clear of leap days and month ends
        birth = date(today.year - age_years, today.month, 1) - timedelta(days=40)
        out["birthDate"] = birth.isoformat()
    return out


def condition(
    patient_id: str,
    system: str,
    code: str,
    *,
    since: datetime | None = None,
    condition_id: str | None = None,
) -> dict[str, Any]:
    """An active Condition coded ``system|code``, with its onset if known."""
    out: dict[str, Any] = {
        "resourceType": "Condition",
        "id": condition_id or f"{patient_id}-{code.lower().replace('.', '')}",
        "clinicalStatus": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                    "code": "active",
                }
            ]
        },
        "code": {"coding": [{"system": system, "code": code}]},
        "subject": {"reference": f"Patient/{patient_id}"},
    }
    if since is not None:
        out["onsetDateTime"] = since.isoformat()
    return out


def pfp_condition(patient_id: str, code: str = "M22.2X1") -> dict[str, Any]:
    return condition(patient_id, ICD10CM_SYSTEM, code, condition_id=f"{patient_id}-pfp")


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
    running_pain: float | None = 4,
) -> list[dict[str, Any]]:
    """A runner with right-stance hip drop and right hip abductor weakness, filmed
    running from behind and from the side (landing within the clinic's
    thresholds), tested with eccentric dynamometry, with moderate running pain."""
    when = datetime.now(UTC) - timedelta(days=days_ago)

    def obs(code: str, value: float, unit: str, side: Any = None, n: int | None = None) -> Any:
        return metric_observation(
            patient_id, code, value, unit, effective=when, side=side, strides=n,
            gait_mode="running" if n is not None else None,
        )  # fmt: skip

    def strength(value: float, side: str) -> Any:
        out = obs("hip-abduction-strength", value, "N.m/kg", side)
        out["component"] = [coded_component("contraction-type", "eccentric")]
        return out

    pain = [] if running_pain is None else [obs("running-pain", running_pain, "{score}")]
    return [
        *pain,
        obs("contralateral-pelvic-drop", right_pelvic_drop, "deg", "right", strides),
        obs("contralateral-pelvic-drop", 3.1, "deg", "left", strides),
        obs("peak-hip-adduction", 21.0, "deg", "right", strides),
        obs("peak-hip-adduction", 14.5, "deg", "left", strides),
        strength(right_abduction, "right"),
        strength(1.65, "left"),
        obs("cadence", 164, "/min", None, strides),
        *(
            obs(code, value, unit, side, strides)
            for side in ("left", "right")
            for code, value, unit in (
                ("knee-flexion-initial-contact", 19.0, "deg"),
                ("foot-inclination-initial-contact", 8.0, "deg"),
                ("overstride", 9.0, "%"),
            )
        ),
    ]


def plan_order(
    patient_id: str,
    plan: str,
    *,
    status: str = "draft",
    started: datetime | None = None,
    order_id: str | None = None,
) -> dict[str, Any]:
    """A ServiceRequest for one of our plans."""
    out: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "id": order_id or f"{status}-{plan}",
        "status": status,
        "intent": "order",
        "code": {"coding": [{"system": PLANS_SYSTEM, "code": plan}]},
        "subject": {"reference": f"Patient/{patient_id}"},
    }
    if started is not None:
        out["authoredOn"] = started.isoformat()
    return out


def strengthening_order(patient_id: str) -> dict[str, Any]:
    return plan_order(patient_id, "hip-strengthening-program", order_id="draft-hip-strength")


def hook_request(
    hook: str,
    patient_id: str,
    *,
    observations: list[dict[str, Any]] | None = None,
    conditions: list[dict[str, Any]] | None = None,
    age_years: int | None = 29,
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
