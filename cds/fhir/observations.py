"""Build Observations that follow our data contract (docs/data-contract.md)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from cds.fhir.codes import FINDINGS_SYSTEM, METRICS_SYSTEM, Side, metric, site_coding

__all__ = ["coded_component", "metric_observation", "quantity_component"]

UCUM = "http://unitsofmeasure.org"


def _quantity(value: float, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


def quantity_component(code: str, value: float, unit: str) -> dict[str, Any]:
    """An Observation component: metric ``code`` of our CodeSystem, a UCUM quantity."""
    return {
        "code": {"coding": [{"system": METRICS_SYSTEM, "code": code}]},
        "valueQuantity": _quantity(round(value, 3), unit),
    }


def coded_component(code: str, value: str) -> dict[str, Any]:
    """An Observation component: metric ``code`` of our CodeSystem, a findings code."""
    return {
        "code": {"coding": [{"system": METRICS_SYSTEM, "code": code}]},
        "valueCodeableConcept": {"coding": [{"system": FINDINGS_SYSTEM, "code": value}]},
    }


def metric_observation(
    patient_id: str,
    code: str,
    value: float | str,
    unit: str | None,
    *,
    effective: datetime,
    side: Side | None = None,
    strides: int | None = None,
    gait_mode: str | None = None,
    obs_id: str | None = None,
) -> dict[str, Any]:
    """One Observation of metric ``code`` (a coded finding when ``value`` is a str);
    ``gait_mode`` (walking or running) is recorded for run-form metrics."""
    m = metric(code)
    if m is None:
        raise ValueError(f"unknown metric {code!r}")
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "id": obs_id or uuid.uuid4().hex[:16],
        "meta": {"versionId": "1"},
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "exam",
                    }
                ]
            }
        ],
        "code": {
            "coding": [{"system": METRICS_SYSTEM, "code": code, "display": m.display}],
            "text": m.display + (f" ({side})" if side else ""),
        },
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": effective.isoformat(),
    }
    if side is not None:
        obs["bodySite"] = {"coding": [site_coding(side, m.site)]}
    if isinstance(value, str):
        obs["valueCodeableConcept"] = {"coding": [{"system": FINDINGS_SYSTEM, "code": value}]}
    else:
        obs["valueQuantity"] = _quantity(value, unit or m.unit)
    components = []
    if strides is not None:
        components.append(quantity_component("strides-analyzed", strides, "{strides}"))
    if gait_mode is not None:
        components.append(coded_component("gait-mode", gait_mode))
    if components:
        obs["component"] = components
    return obs
