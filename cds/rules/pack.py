"""The rule-pack format: pydantic models of what a clinician writes in YAML.

A pack holds metadata, named thresholds (each with its provenance), value
sets, reusable findings, rules with card templates and the quality gates.
Conditions are a small tree (``all`` / ``any`` / ``not`` over atoms); there is
no code in a pack. See ``docs/rule-packs.md``.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "HOOKS",
    "AllOf",
    "AnyOf",
    "CardTemplate",
    "Condition",
    "NotOf",
    "Pack",
    "Rule",
    "SourceAttributes",
    "Threshold",
]

HOOKS = ("patient-view", "order-select", "order-sign")
Hook = Literal["patient-view", "order-select", "order-sign"]
Category = Literal["quality", "safety", "recommendation", "info"]
_NAME = r"^[a-z][a-z0-9_-]*$"
Name = Annotated[str, Field(pattern=_NAME)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Threshold(_Model):
    value: float
    unit: str
    provenance: Literal["evidence", "research", "placeholder"]
    citation: str = Field(min_length=1)
    note: str | None = None

    @property
    def validated(self) -> bool:
        return self.provenance == "evidence"

    @property
    def label(self) -> str:
        return {"evidence": "E", "research": "R", "placeholder": "X"}[self.provenance]


class _Compare(_Model):
    at_least: Name | None = None
    above: Name | None = None
    below: Name | None = None
    at_most: Name | None = None

    @property
    def comparison(self) -> tuple[str, str] | None:
        for op in ("at_least", "above", "below", "at_most"):
            name = getattr(self, op)
            if name is not None:
                return op, name
        return None


class MetricCondition(_Compare):
    metric: str
    measure: Literal["value", "lsi", "asymmetry", "change", "increase"] = "value"
    is_: str | None = Field(default=None, alias="is")
    present: bool | None = None

    @model_validator(mode="after")
    def _one_test(self) -> MetricCondition:
        tests = [self.comparison is not None, self.is_ is not None, self.present is not None]
        ops = [self.at_least, self.above, self.below, self.at_most]
        if sum(tests) != 1 or sum(o is not None for o in ops) > 1:
            raise ValueError(
                "a metric condition needs exactly one test: at_least, above, below, "
                "at_most, is or present"
            )
        return self


class AgeCondition(_Model):
    age: _Compare

    @model_validator(mode="after")
    def _one_test(self) -> AgeCondition:
        if self.age.comparison is None:
            raise ValueError("age needs one of at_least, above, below, at_most")
        return self


class DiagnosisCondition(_Model):
    diagnosis: Name
    #: only a diagnosis whose onset (or recording) is at most this threshold ago
    within: Name | None = None


class OrderCondition(_Model):
    order: str
    state: Literal["any", "draft", "active", "completed"] = "any"
    #: only an order started at least this threshold ago
    older_than: Name | None = None


class SexCondition(_Model):
    sex: Literal["female", "male", "other", "unknown"]


class QualityCondition(_Model):
    quality: Literal["low_strides", "stale", "excluded", "unreadable", "unnormalised"]


class FindingCondition(_Model):
    finding: Name


class AllOf(_Model):
    all: list[Condition] = Field(min_length=1)


class AnyOf(_Model):
    any: list[Condition] = Field(min_length=1)


class NotOf(_Model):
    not_: Condition = Field(alias="not")


Condition = (
    AllOf
    | AnyOf
    | NotOf
    | MetricCondition
    | AgeCondition
    | DiagnosisCondition
    | OrderCondition
    | SexCondition
    | QualityCondition
    | FindingCondition
)


class Evidence(_Model):
    strength: Literal["A", "B", "C", "D"]
    label: str = Field(min_length=1)


class Source(_Model):
    label: str = Field(min_length=1)
    url: str | None = Field(default=None, pattern=r"^https?://")


class OverrideReason(_Model):
    code: str
    display: str = Field(min_length=1)
    system: str = "http://runform-cds.org/fhir/CodeSystem/override-reasons"


class ActionTemplate(_Model):
    resource: Literal["ServiceRequest", "CarePlan"]
    plans: list[str] = Field(min_length=1)
    description: str = Field(min_length=1)


class SuggestionTemplate(_Model):
    label: str = Field(min_length=1)
    recommended: bool = False
    actions: list[ActionTemplate] = Field(min_length=1)


class LinkTemplate(_Model):
    label: str = Field(min_length=1)
    url: str = Field(pattern=r"^https?://")


class CardTemplate(_Model):
    indicator: Literal["info", "warning", "critical"]
    summary: str = Field(min_length=1)
    detail: str = Field(min_length=1)
    evidence: Evidence
    source: Source
    suggestions: list[SuggestionTemplate] = Field(default_factory=list)
    selection: Literal["any", "at-most-one"] = "any"
    override_reasons: list[OverrideReason] = Field(default_factory=list)
    links: list[LinkTemplate] = Field(default_factory=list)

    @model_validator(mode="after")
    def _at_most_one_recommended(self) -> CardTemplate:
        if self.selection == "at-most-one" and sum(s.recommended for s in self.suggestions) > 1:
            raise ValueError("selection at-most-one allows at most one recommended suggestion")
        return self


class Rule(_Model):
    id: Name
    title: str = Field(min_length=1)
    description: str = Field(min_length=1)
    hooks: list[Hook] = Field(min_length=1)
    category: Category
    priority: int = Field(default=50, ge=0, le=1000)
    suppresses: list[Category] = Field(default_factory=list)
    #: no card of its own: the text is added to these rules' cards when they fire
    attach_to: list[Name] = Field(default_factory=list)
    #: when attached, lower the evidence strength of the target cards one level
    lower_evidence: bool = False
    when: Condition
    card: CardTemplate


class DiagnosisCode(_Model):
    system: str
    code: str
    match: Literal["exact", "prefix"] = "exact"
    note: str | None = None


class Effective(_Model):
    start: date
    end: date | None = None


class QualityGates(_Model):
    min_strides: Name
    max_age: Name
    #: a shorter freshness window while an order is active
    max_age_in_care: Name | None = None


class DataUse(_Model):
    """ONC HTI-1 source attributes: which patient data the intervention uses."""

    race: bool
    ethnicity: bool
    language: bool
    sexual_orientation: bool
    gender_identity: bool
    sex: bool
    date_of_birth: bool
    social_determinants: bool
    health_status_assessments: bool


class SourceAttributes(_Model):
    """ONC HTI-1 evidence-based decision support source attributes (45 CFR 170.315(b)(11))."""

    bibliographic_citation: str = Field(min_length=1)
    developer: str = Field(min_length=1)
    funding_source: str = Field(min_length=1)
    release_date: date
    revision_date: date | None = None
    data_use: DataUse


_SEMVER = re.compile(r"^\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?$")


class Pack(_Model):
    id: Name
    url: str = Field(pattern=r"^https?://")
    version: str
    title: str
    status: Literal["draft", "active", "retired"]
    effective: Effective
    description: str = ""
    authors: list[str] = Field(default_factory=list)
    reviewers: list[str] = Field(default_factory=list)
    approval_date: date | None = None
    changelog: list[dict[str, Any]] = Field(default_factory=list)
    source_attributes: SourceAttributes
    quality: QualityGates
    thresholds: dict[Name, Threshold]
    value_sets: dict[Name, list[DiagnosisCode]] = Field(default_factory=dict)
    findings: dict[Name, Condition] = Field(default_factory=dict)
    rules: list[Rule] = Field(min_length=1)

    @field_validator("version")
    @classmethod
    def _semver(cls, v: str) -> str:
        if not _SEMVER.match(v):
            raise ValueError("version must be semantic: MAJOR.MINOR.PATCH")
        return v

    @property
    def canonical(self) -> str:
        return f"{self.url}|{self.version}"
