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

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

__all__ = [
    "CONDITION_KEYS",
    "HOOKS",
    "PROVENANCE_LABELS",
    "QUALITY_KINDS",
    "AllOf",
    "AnyOf",
    "CardTemplate",
    "Condition",
    "Finding",
    "NormDef",
    "NotOf",
    "Pack",
    "PlanDef",
    "Rule",
    "SourceAttributes",
    "Threshold",
    "ValueSetDef",
]

HOOKS = ("patient-view", "order-select", "order-sign")
Hook = Literal["patient-view", "order-select", "order-sign"]
#: quality: inputs; safety: red flags and exclusions; check: what must be confirmed
#: before a plan; recommendation: plans; info: everything else
Category = Literal["quality", "safety", "check", "recommendation", "info"]
_NAME = r"^[a-z][a-z0-9_-]*$"
Name = Annotated[str, Field(pattern=_NAME)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


#: what a threshold's one-letter label means, wherever a trace shows it
PROVENANCE_LABELS = {
    "E": "evidence: derived from published evidence",
    "R": "research: a research inclusion criterion, not a clinical cut-off",
    "X": "placeholder: expert opinion, set by the clinic, not validated",
}


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
    #: norm: standard deviations from the pack's norm for the metric (where it fits)
    measure: Literal["value", "lsi", "asymmetry", "change", "increase", "norm"] = "value"
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
    #: a comparison, or ``unknown`` (no exact birth date, or no readable Patient)
    age: _Compare | Literal["unknown"]

    @model_validator(mode="after")
    def _one_test(self) -> AgeCondition:
        if self.age != "unknown" and self.age.comparison is None:
            raise ValueError("age needs one of at_least, above, below, at_most, or unknown")
        return self


class DiagnosisCondition(_Model):
    diagnosis: Name
    #: only a diagnosis whose onset is at most this threshold ago
    within: Name | None = None
    #: confirmed: an active, confirmed record (with a recorded onset if ``within``);
    #: possible: a record that is not confirmed, or whose onset is needed and missing
    certainty: Literal["confirmed", "possible"] = "confirmed"
    #: this/other: a confirmed record whose laterality names this side (or the other);
    #: unknown: one without laterality
    side: Literal["any", "this", "other", "unknown"] = "any"

    @model_validator(mode="after")
    def _side_needs_confirmed(self) -> DiagnosisCondition:
        if self.side != "any" and self.certainty != "confirmed":
            raise ValueError("side applies to confirmed diagnoses only")
        return self


class OrderCondition(_Model):
    order: str
    state: Literal["any", "draft", "active", "on-hold", "completed"] = "any"
    #: only an order started at least this threshold ago
    older_than: Name | None = None


class SexCondition(_Model):
    sex: Literal["female", "male", "other", "unknown"]


QualityKind = Literal[
    "low_strides",
    "stale",
    "excluded",
    "unreadable",
    "unnormalised",
    "walking",
    "gait_mode_unknown",
    "trials_disagree",
    "conditions_unreadable",
    "patient_missing",
    "norm_unfit",
]
QUALITY_KINDS: tuple[str, ...] = QualityKind.__args__  # type: ignore[attr-defined]


class QualityCondition(_Model):
    quality: QualityKind


class FindingCondition(_Model):
    finding: Name


class AllOf(_Model):
    all: list[Condition] = Field(min_length=1)


class AnyOf(_Model):
    any: list[Condition] = Field(min_length=1)


class NotOf(_Model):
    not_: Condition = Field(alias="not")


#: the key that says what kind of condition a mapping is, and the model it becomes
CONDITION_KEYS: dict[str, type[_Model]] = {
    "all": AllOf,
    "any": AnyOf,
    "not": NotOf,
    "metric": MetricCondition,
    "age": AgeCondition,
    "diagnosis": DiagnosisCondition,
    "order": OrderCondition,
    "sex": SexCondition,
    "quality": QualityCondition,
    "finding": FindingCondition,
}
CONDITION_KIND_ERROR = "condition_kind"


def _condition_kind(value: Any) -> str | None:
    """The member of the condition union a value is, from its first telling key: one
    precise error for a mistake inside a condition, not one per kind it is not."""
    if isinstance(value, dict):
        return next((m.__name__ for k, m in CONDITION_KEYS.items() if k in value), None)
    return type(value).__name__


Condition = Annotated[
    Annotated[AllOf, Tag("AllOf")]
    | Annotated[AnyOf, Tag("AnyOf")]
    | Annotated[NotOf, Tag("NotOf")]
    | Annotated[MetricCondition, Tag("MetricCondition")]
    | Annotated[AgeCondition, Tag("AgeCondition")]
    | Annotated[DiagnosisCondition, Tag("DiagnosisCondition")]
    | Annotated[OrderCondition, Tag("OrderCondition")]
    | Annotated[SexCondition, Tag("SexCondition")]
    | Annotated[QualityCondition, Tag("QualityCondition")]
    | Annotated[FindingCondition, Tag("FindingCondition")],
    Discriminator(
        _condition_kind,
        custom_error_type=CONDITION_KIND_ERROR,
        custom_error_message="not a condition: it needs one of the keys "
        + ", ".join(CONDITION_KEYS),
    ),
]


for _tree in (AllOf, AnyOf, NotOf):  # their fields name Condition, defined after them
    _tree.model_rebuild(force=True)


class Evidence(_Model):
    strength: Literal["A", "B", "C", "D"]
    label: str = Field(min_length=1)
    #: what the grade is for (e.g. "gait retraining"), when a card carries several
    for_: str | None = Field(default=None, alias="for")
    #: value sets this grade is specific to; a grade without them is shown for a
    #: recommendation only when no grade specific to the patient's diagnoses is
    diagnoses: list[Name] = Field(default_factory=list)


class Source(_Model):
    label: str = Field(min_length=1)
    url: str | None = Field(default=None, pattern=r"^https?://")


class OverrideReason(_Model):
    code: str
    display: str = Field(min_length=1)
    system: str = "http://runform-cds.org/fhir/CodeSystem/override-reasons"


class ActionTemplate(_Model):
    #: a plan defined under ``plans:``; its resource, timing and instruction come from there
    plan: str
    #: the action's description (default: the plan's summary)
    description: str | None = None


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
    #: one grade, or one per recommendation and diagnosis
    evidence: list[Evidence] = Field(min_length=1)
    source: Source
    suggestions: list[SuggestionTemplate] = Field(default_factory=list)
    selection: Literal["any", "at-most-one"] = "any"
    override_reasons: list[OverrideReason] = Field(default_factory=list)
    links: list[LinkTemplate] = Field(default_factory=list)

    @field_validator("evidence", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict) else value

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
    #: when-suppressing: the card shows only while it holds back another rule's card
    show: Literal["always", "when-suppressing"] = "always"
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
    #: 1-based position (dot not counted) of the ICD-10-CM laterality character
    laterality: int | None = Field(default=None, ge=4, le=7)
    #: checked against an edition of the code system (false: verify before use)
    verified: bool = False
    note: str | None = None


class ValueSetDef(_Model):
    title: str = Field(min_length=1)
    codes: list[DiagnosisCode] = Field(min_length=1)


class Finding(_Model):
    """A named condition; with ``says``, a line a card can list with ``{findings}``."""

    when: Condition
    says: str | None = Field(default=None, min_length=1)
    #: what it means when it holds, in a reviewer's words (``packs explain``)
    means: str | None = Field(default=None, min_length=1)
    #: what it means when it does not hold: ``packs explain`` uses it for ``not``
    means_not: str | None = Field(default=None, min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _bare_condition(cls, value: Any) -> Any:
        if isinstance(value, dict) and "when" not in value:
            return {"when": value}
        return value


class NormAges(_Model):
    from_: float = Field(alias="from", ge=0)
    to: float = Field(gt=0)


class NormDef(_Model):
    """``mean = intercept + per_year_of_age x age + male x (1 for men)``, spread ``sd``."""

    test: Literal["isometric", "eccentric"]
    unit: str
    intercept: float
    per_year_of_age: float = 0.0
    male: float = 0.0
    sd: float = Field(gt=0)
    sexes: list[Literal["female", "male"]] = Field(min_length=1)
    ages: NormAges
    provenance: Literal["evidence", "research", "placeholder"]
    citation: str = Field(min_length=1)


class Timing(_Model):
    """``count`` sessions, ``frequency`` per ``period`` ``period_unit``."""

    count: int = Field(ge=1)
    frequency: int = Field(ge=1)
    period: float = Field(gt=0)
    period_unit: Literal["d", "wk", "mo"]


class PlanDef(_Model):
    """How a plan is suggested: always the same resource, wherever a card suggests it."""

    resource: Literal["ServiceRequest", "CarePlan"] = "ServiceRequest"
    #: one line for the card and the suggestion's description
    summary: str = Field(min_length=1)
    #: the patient instruction of the suggested resource (placeholders allowed)
    instruction: str = Field(min_length=1)
    timing: Timing | None = None
    performer: Literal["physiotherapist"] | None = None
    #: the suggestion names the side(s) it targets (bodySite, in this body region)
    sided: bool = False
    region: Literal["hip", "knee"] = "hip"


class Effective(_Model):
    start: date
    end: date | None = None


class QualityGates(_Model):
    min_strides: Name
    max_age: Name
    #: a shorter freshness window while an order is active
    max_age_in_care: Name | None = None
    #: captures of one metric and side this close together are trials of one session
    session_window: Name | None = None
    #: a run-form value without a gait mode: ask for one, or take it as running
    gait_mode_missing: Literal["ask", "running"] = "ask"
    #: per metric: repeat trials of a session agree when they differ by at most this,
    #: and a change between visits smaller than this is "no detectable change"
    smallest_detectable_difference: dict[str, Name] = Field(default_factory=dict)


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
    value_sets: dict[Name, ValueSetDef] = Field(default_factory=dict)
    findings: dict[Name, Finding] = Field(default_factory=dict)
    norms: dict[str, NormDef] = Field(default_factory=dict)
    plans: dict[str, PlanDef] = Field(default_factory=dict)
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
