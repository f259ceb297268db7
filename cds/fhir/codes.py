"""Our CodeSystems (shipped as FHIR resources in ``cds/fhir/data``), SNOMED CT
body sites that carry laterality, and the diagnosis codes the rules recognise."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache, cached_property
from importlib import resources
from typing import Any, Literal

__all__ = [
    "FINDINGS_SYSTEM",
    "ICD10CM_SYSTEM",
    "LATERALITY_SIDES",
    "METRICS_SYSTEM",
    "PLANS_SYSTEM",
    "SITE_SIDES",
    "SNOMED_SYSTEM",
    "Metric",
    "Side",
    "code_system",
    "finding_codes",
    "metric",
    "metrics",
    "plan_display",
    "site_coding",
]

METRICS_SYSTEM = "http://runform-cds.org/fhir/CodeSystem/metrics"
PLANS_SYSTEM = "http://runform-cds.org/fhir/CodeSystem/plans"
FINDINGS_SYSTEM = "http://runform-cds.org/fhir/CodeSystem/findings"
SNOMED_SYSTEM = "http://snomed.info/sct"
ICD10CM_SYSTEM = "http://hl7.org/fhir/sid/icd-10-cm"

Side = Literal["left", "right"]

#: SNOMED CT laterality-specific body sites -> (side, region)
SITE_SIDES: dict[str, tuple[Side, str]] = {
    "287679003": ("left", "hip"),
    "287579007": ("right", "hip"),
    "82169009": ("left", "knee"),
    "6757004": ("right", "knee"),
}
#: SNOMED CT laterality qualifiers, as they may appear in Condition.bodySite
LATERALITY_SIDES: dict[str, tuple[Side, ...]] = {
    "24028007": ("right",),
    "7771000": ("left",),
    "51440002": ("left", "right"),
}
_SITE_DISPLAY = {
    "287679003": "Left hip region structure",
    "287579007": "Right hip region structure",
    "82169009": "Structure of left knee region",
    "6757004": "Structure of right knee region",
}


@dataclass(frozen=True)
class Metric:
    """One concept of the metrics CodeSystem, with what the rules need to know."""

    code: str
    display: str
    definition: str
    unit: str
    dimensions: tuple[str, ...]
    site: str  # "hip", "knee" or "none" (whole-body)
    group: str  # "run-form", "strength", "symptom" or "quality"
    #: camera view a run-form metric needs ("posterior" or "side"); None: any view
    view: str | None = None

    @cached_property
    def field(self) -> str:
        """Name of the fact field carrying this metric's canonical value."""
        return self.code.replace("-", "_")

    @cached_property
    def dimension_fields(self) -> dict[str, str]:
        """The fact field of each dimension the metric may be measured in."""
        return {d: self.field_for(d) for d in self.dimensions}

    @property
    def lateral(self) -> bool:
        return self.site != "none"

    @property
    def coded(self) -> bool:
        return self.dimensions[0] in ("rating", "result")

    def field_for(self, dimension: str) -> str:
        return self.field if dimension == self.dimensions[0] else f"{self.field}__{dimension}"


@cache
def code_system(name: str) -> dict[str, Any]:
    """The shipped CodeSystem resource ``name`` (metrics, plans or findings)."""
    text = resources.files("cds.fhir").joinpath(f"data/CodeSystem-{name}.json").read_text("utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def _props(concept: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for prop in concept.get("property", []):
        out[prop["code"]] = prop.get("valueString") or prop.get("valueCode") or ""
    return out


@cache
def metrics() -> dict[str, Metric]:
    """Every metric of the metrics CodeSystem, by code."""
    out: dict[str, Metric] = {}
    for concept in code_system("metrics")["concept"]:
        props = _props(concept)
        out[concept["code"]] = Metric(
            code=concept["code"],
            display=concept["display"],
            definition=concept["definition"],
            unit=props["unit"],
            dimensions=tuple(props["dimensions"].split("|")),
            site=props["site"],
            group=props["group"],
            view=props.get("view"),
        )
    return out


def metric(code: str) -> Metric | None:
    return metrics().get(code)


@cache
def finding_codes() -> frozenset[str]:
    """The codes of the findings CodeSystem (coded results and capture properties)."""
    return frozenset(c["code"] for c in code_system("findings")["concept"])


@cache
def plan_display(code: str) -> str | None:
    for concept in code_system("plans")["concept"]:
        if concept["code"] == code:
            return str(concept["display"])
    return None


def site_coding(side: Side, region: str) -> dict[str, str]:
    """The SNOMED CT coding for ``side`` of ``region`` (hip or knee)."""
    for code, (site_side, site_region) in SITE_SIDES.items():
        if site_side == side and site_region == region:
            return {"system": SNOMED_SYSTEM, "code": code, "display": _SITE_DISPLAY[code]}
    raise ValueError(f"no SNOMED site for {side} {region}")
