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
    "Atom",
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
    # the docstring under each field is its description in ``packs schema``
    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, use_attribute_docstrings=True
    )


#: what a threshold's one-letter label means, wherever a trace shows it
PROVENANCE_LABELS = {
    "E": "evidence: derived from published evidence",
    "R": "research: a research inclusion criterion, not a clinical cut-off",
    "X": "placeholder: expert opinion, set by the clinic, not validated",
}


class Threshold(_Model):
    value: float
    """The number a measured value is compared with, in `unit`."""
    unit: str
    """UCUM unit of `value` (deg, %, N.m/kg, d, wk, a, {score} ...); it must fit the metric
    compared with it."""
    provenance: Literal["evidence", "research", "placeholder"]
    """Where the number comes from: evidence (published evidence, E), research (a research
    inclusion criterion, not a clinical cut-off, R), placeholder (expert opinion set by the
    clinic, X). Cards say so when a research or placeholder threshold decides them."""
    citation: str = Field(min_length=1)
    """The source of the number, or why it was chosen."""
    note: str | None = None
    """Anything else a reviewer should know about this threshold."""

    @property
    def validated(self) -> bool:
        return self.provenance == "evidence"

    @property
    def label(self) -> str:
        return {"evidence": "E", "research": "R", "placeholder": "X"}[self.provenance]


class _Compare(_Model):
    at_least: Name | None = None
    """Holds when the value is at least (>=) the named threshold."""
    above: Name | None = None
    """Holds when the value is above (>) the named threshold."""
    below: Name | None = None
    """Holds when the value is below (<) the named threshold."""
    at_most: Name | None = None
    """Holds when the value is at most (<=) the named threshold."""

    @property
    def comparison(self) -> tuple[str, str] | None:
        for op in ("at_least", "above", "below", "at_most"):
            name = getattr(self, op)
            if name is not None:
                return op, name
        return None


class MetricCondition(_Compare):
    metric: str
    """The metric code (CodeSystem runform-cds metrics), e.g. contralateral-pelvic-drop. Side
    metrics are checked per side."""
    measure: Literal["value", "lsi", "asymmetry", "change", "increase", "norm"] = "value"
    """What of the metric is compared: value (the latest), lsi (limb symmetry index, this side /
    other side in %), asymmetry (this side minus the other), change or increase (since the
    previous capture), norm (standard deviations from the pack's norm, where it fits)."""
    is_: str | None = Field(default=None, alias="is")
    """Holds when the coded result is this word (e.g. poor, positive)."""
    present: bool | None = None
    """true: holds when the metric was measured; false: when it was not."""

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
    age: _Compare | Literal["unknown"]
    """A comparison of the age in completed years with a threshold (at_least, above, below,
    at_most), or `unknown` (no exact birth date, or no readable Patient)."""

    @model_validator(mode="after")
    def _one_test(self) -> AgeCondition:
        if self.age != "unknown" and self.age.comparison is None:
            raise ValueError("age needs one of at_least, above, below, at_most, or unknown")
        return self


class DiagnosisCondition(_Model):
    diagnosis: Name
    """A value set defined under value_sets."""
    within: Name | None = None
    """Only a diagnosis whose onset is at most this threshold (in days, weeks, months or years)
    ago."""
    certainty: Literal["confirmed", "possible"] = "confirmed"
    """confirmed: an active, confirmed record (with a recorded onset if `within` is given);
    possible: a record that is not confirmed, or whose onset is needed and missing."""
    side: Literal["any", "this", "other", "unknown"] = "any"
    """this or other: a confirmed record whose laterality names this side (or the other); unknown:
    one without laterality; any: either."""

    @model_validator(mode="after")
    def _side_needs_confirmed(self) -> DiagnosisCondition:
        if self.side != "any" and self.certainty != "confirmed":
            raise ValueError("side applies to confirmed diagnoses only")
        return self


class OrderCondition(_Model):
    order: str
    """A plan code (see plans:) an order names."""
    state: Literal["any", "draft", "active", "on-hold", "completed"] = "any"
    """The order's state: draft (being placed now), active, on-hold, completed, or any."""
    older_than: Name | None = None
    """Only an order started at least this threshold ago."""


class SexCondition(_Model):
    sex: Literal["female", "male", "other", "unknown"]
    """Holds when the patient's recorded sex is this."""


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
    """Holds when the inputs have this quality problem (too few strides, stale, excluded,
    unreadable, walking capture, unknown gait mode ...)."""


class FindingCondition(_Model):
    finding: Name
    """Holds when the finding of this name (under findings:) holds."""


class AllOf(_Model):
    all: list[Condition] = Field(min_length=1)
    """Holds when every condition in the list holds."""


class AnyOf(_Model):
    any: list[Condition] = Field(min_length=1)
    """Holds when at least one condition in the list holds."""


class NotOf(_Model):
    not_: Condition = Field(alias="not")
    """Holds when the condition does not hold. A test on a value that was not measured does not
    hold, so `not` of it does."""


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


#: the leaves of the condition tree; every walk over a tree handles ``AllOf``,
#: ``AnyOf``, ``NotOf`` and ``FindingCondition`` and hands the rest to its atom
#: function, which must handle each of these (``match`` + ``assert_never``: a new
#: kind of condition fails mypy in every walk until each one handles it)
Atom = (
    MetricCondition
    | AgeCondition
    | DiagnosisCondition
    | OrderCondition
    | SexCondition
    | QualityCondition
)

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
    """Evidence strength of the recommendation: A (strongest) to D (expert opinion)."""
    label: str = Field(min_length=1)
    """What the grade rests on, in one line (studies, guideline)."""
    for_: str | None = Field(default=None, alias="for")
    """What the grade is for (e.g. gait retraining), when a card carries several."""
    diagnoses: list[Name] = Field(default_factory=list)
    """Value sets this grade is specific to; a grade without them is shown only when no grade
    specific to the patient's diagnoses applies."""


class Source(_Model):
    label: str = Field(min_length=1)
    """The source shown on the card (CDS Hooks card.source.label)."""
    url: str | None = Field(default=None, pattern=r"^https?://")
    """A link to the source (https)."""


class OverrideReason(_Model):
    code: str
    """The code the EHR sends back when the clinician overrides the card for this reason."""
    display: str = Field(min_length=1)
    """The reason as the clinician reads it."""
    system: str = "http://runform-cds.org/fhir/CodeSystem/override-reasons"
    """The code system of `code`."""


class ActionTemplate(_Model):
    plan: str
    """A plan defined under plans:; its resource, timing and instruction come from there."""
    description: str | None = None
    """The action's description (default: the plan's summary)."""


class SuggestionTemplate(_Model):
    label: str = Field(min_length=1)
    """The suggestion's button text in the EHR."""
    recommended: bool = False
    """Mark this suggestion as the recommended one."""
    actions: list[ActionTemplate] = Field(min_length=1)
    """What accepting the suggestion creates: one plan each."""


class LinkTemplate(_Model):
    label: str = Field(min_length=1)
    """The link text on the card."""
    url: str = Field(pattern=r"^https?://")
    """The link (https)."""


class CardTemplate(_Model):
    indicator: Literal["info", "warning", "critical"]
    """How urgent the card is: info, warning or critical."""
    summary: str = Field(min_length=1)
    """One line, at most 140 characters; placeholders such as {side} allowed."""
    detail: str = Field(min_length=1)
    """Markdown: what was measured, the plan and why, in a few lines; placeholders allowed."""
    evidence: list[Evidence] = Field(min_length=1)
    """One grade, or one per recommendation and diagnosis."""
    source: Source
    """Where the guidance comes from."""
    suggestions: list[SuggestionTemplate] = Field(default_factory=list)
    """Orders the clinician can accept from the card."""
    selection: Literal["any", "at-most-one"] = "any"
    """any: several suggestions may be accepted; at-most-one: only one."""
    override_reasons: list[OverrideReason] = Field(default_factory=list)
    """Reasons a clinician may give for not following the card."""
    links: list[LinkTemplate] = Field(default_factory=list)
    """Further reading linked from the card."""

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
    """The rule's id: lower case, digits and - or _ (e.g. r1-hip-drop-symptomatic). Traces and
    scenarios name rules by it."""
    title: str = Field(min_length=1)
    """A short title for reviewers."""
    description: str = Field(min_length=1)
    """What the rule does and why, for reviewers."""
    hooks: list[Hook] = Field(min_length=1)
    """The CDS Hooks the rule answers: patient-view, order-select, order-sign."""
    category: Category
    """quality (inputs), safety (red flags, exclusions), check (what to confirm before a plan),
    recommendation (plans) or info."""
    priority: int = Field(default=50, ge=0, le=1000)
    """Order of cards: higher comes first (0-1000)."""
    suppresses: list[Category] = Field(default_factory=list)
    """While this rule's card shows, cards of these categories are held back."""
    show: Literal["always", "when-suppressing"] = "always"
    """always, or when-suppressing: the card shows only while it holds another rule's card back."""
    attach_to: list[Name] = Field(default_factory=list)
    """No card of its own: the text is added to the cards of these rules when they fire."""
    lower_evidence: bool = False
    """When attached, lower the evidence strength of the target cards by one level."""
    when: Condition
    """The condition under which the rule fires."""
    card: CardTemplate
    """The card shown when the rule fires."""


class DiagnosisCode(_Model):
    system: str
    """The code system (ICD-10-CM or SNOMED CT URI)."""
    code: str
    """The code."""
    match: Literal["exact", "prefix"] = "exact"
    """exact: this code only; prefix: every code that starts with it."""
    laterality: int | None = Field(default=None, ge=4, le=7)
    """1-based position (the dot not counted) of the ICD-10-CM character that gives the side."""
    verified: bool = False
    """true when checked against an edition of the code system; false: verify before use."""
    note: str | None = None
    """Anything a reviewer should know about this code."""


class ValueSetDef(_Model):
    title: str = Field(min_length=1)
    """The diagnosis as a clinician names it."""
    codes: list[DiagnosisCode] = Field(min_length=1)
    """The codes that count as this diagnosis."""


class Finding(_Model):
    """A named condition; with ``says``, a line a card can list with ``{findings}``."""

    when: Condition
    """The condition this finding names (a finding may also be written as the bare condition)."""
    says: str | None = Field(default=None, min_length=1)
    """A line cards can list with {findings} when this finding holds."""
    means: str | None = Field(default=None, min_length=1)
    """What it means when it holds, in a reviewer's words (packs explain)."""
    means_not: str | None = Field(default=None, min_length=1)
    """What it means when it does not hold; packs explain uses it under `not`."""

    @model_validator(mode="before")
    @classmethod
    def _bare_condition(cls, value: Any) -> Any:
        if isinstance(value, dict) and "when" not in value:
            return {"when": value}
        return value


class NormAges(_Model):
    from_: float = Field(alias="from", ge=0)
    """The youngest age (years) the norm was derived for."""
    to: float = Field(gt=0)
    """The oldest age (years) the norm was derived for."""


class NormDef(_Model):
    """``mean = intercept + per_year_of_age x age + male x (1 for men)``, spread ``sd``."""

    test: Literal["isometric", "eccentric"]
    """The strength test the norm is for: isometric or eccentric. A norm is never applied to
    another test."""
    unit: str
    """UCUM unit of the norm's values (e.g. N.m/kg)."""
    intercept: float
    """Predicted mean at age 0 for women."""
    per_year_of_age: float = 0.0
    """Change of the predicted mean per year of age."""
    male: float = 0.0
    """Added to the predicted mean for men."""
    sd: float = Field(gt=0)
    """Standard deviation around the predicted mean."""
    sexes: list[Literal["female", "male"]] = Field(min_length=1)
    """The sexes the norm was derived for."""
    ages: NormAges
    """The ages the norm was derived for."""
    provenance: Literal["evidence", "research", "placeholder"]
    """evidence, research or placeholder (as for thresholds)."""
    citation: str = Field(min_length=1)
    """The study the norm comes from."""


class Timing(_Model):
    """``count`` sessions, ``frequency`` per ``period`` ``period_unit``."""

    count: int = Field(ge=1)
    """How many sessions in total."""
    frequency: int = Field(ge=1)
    """Sessions per period."""
    period: float = Field(gt=0)
    """The length of the period."""
    period_unit: Literal["d", "wk", "mo"]
    """d (days), wk (weeks) or mo (months)."""


class PlanDef(_Model):
    """How a plan is suggested: always the same resource, wherever a card suggests it."""

    resource: Literal["ServiceRequest", "CarePlan"] = "ServiceRequest"
    """The FHIR resource a suggestion creates: ServiceRequest or CarePlan."""
    summary: str = Field(min_length=1)
    """One line for the card and the suggestion's description."""
    instruction: str = Field(min_length=1)
    """The patient instruction: dose, cues, fading and pain rule (placeholders allowed)."""
    timing: Timing | None = None
    """How often and how many sessions."""
    performer: Literal["physiotherapist"] | None = None
    """Who delivers it."""
    sided: bool = False
    """The suggestion names the side(s) it targets (bodySite in `region`)."""
    region: Literal["hip", "knee"] = "hip"
    """The body region of a sided plan: hip or knee."""


class Effective(_Model):
    start: date
    """The first day the pack may serve."""
    end: date | None = None
    """The last day the pack may serve (none: open-ended)."""


class QualityGates(_Model):
    min_strides: Name
    """Threshold: the fewest strides a run-form value must be measured over."""
    max_age: Name
    """Threshold: the oldest a measurement may be to count."""
    max_age_in_care: Name | None = None
    """Threshold: a shorter freshness window while an order is active."""
    session_window: Name | None = None
    """Threshold: captures of one metric and side this close together are trials of one session."""
    gait_mode_missing: Literal["ask", "running"] = "ask"
    """A run-form value without a gait mode: ask for one, or take it as running."""
    smallest_detectable_difference: dict[str, Name] = Field(default_factory=dict)
    """Per metric, a threshold: repeat trials agree within it, and a smaller change between visits
    is no detectable change."""


class DataUse(_Model):
    """ONC HTI-1 source attributes: which patient data the intervention uses."""

    race: bool
    """Whether the intervention uses race."""
    ethnicity: bool
    """Whether it uses ethnicity."""
    language: bool
    """Whether it uses language."""
    sexual_orientation: bool
    """Whether it uses sexual orientation."""
    gender_identity: bool
    """Whether it uses gender identity."""
    sex: bool
    """Whether it uses sex."""
    date_of_birth: bool
    """Whether it uses date of birth (age)."""
    social_determinants: bool
    """Whether it uses social determinants of health."""
    health_status_assessments: bool
    """Whether it uses health status assessments."""


class SourceAttributes(_Model):
    """ONC HTI-1 evidence-based decision support source attributes (45 CFR 170.315(b)(11))."""

    bibliographic_citation: str = Field(min_length=1)
    """The citation of the intervention's evidence."""
    developer: str = Field(min_length=1)
    """Who developed the intervention."""
    funding_source: str = Field(min_length=1)
    """Who funded its development."""
    release_date: date
    """When it was first released."""
    revision_date: date | None = None
    """When it was last revised."""
    data_use: DataUse
    """Which patient data it uses."""


_SEMVER = re.compile(r"^\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?$")


class Pack(_Model):
    id: Name
    """The pack's id (lower case, digits, - or _)."""
    url: str = Field(pattern=r"^https?://")
    """The canonical URL of the pack (traces and exports cite url|version)."""
    version: str
    """Semantic version MAJOR.MINOR.PATCH. Any change to an active pack needs a new version."""
    title: str
    """The pack's title."""
    status: Literal["draft", "active", "retired"]
    """draft (not served unless drafts are allowed), active, or retired."""
    effective: Effective
    """The days the pack may serve."""
    description: str = ""
    """What the pack encodes, for reviewers."""
    authors: list[str] = Field(default_factory=list)
    """Who wrote it."""
    reviewers: list[str] = Field(default_factory=list)
    """Who reviewed it."""
    approval_date: date | None = None
    """When it was approved for use."""
    changelog: list[dict[str, Any]] = Field(default_factory=list)
    """One entry per version: version, date, summary."""
    source_attributes: SourceAttributes
    """ONC HTI-1 source attributes."""
    quality: QualityGates
    """Quality gates for the inputs."""
    thresholds: dict[Name, Threshold]
    """Named numbers the rules compare values with, each with unit, provenance and citation."""
    value_sets: dict[Name, ValueSetDef] = Field(default_factory=dict)
    """Named diagnoses: the codes that count as each."""
    findings: dict[Name, Finding] = Field(default_factory=dict)
    """Named, reusable conditions."""
    norms: dict[str, NormDef] = Field(default_factory=dict)
    """Strength norms per metric code."""
    plans: dict[str, PlanDef] = Field(default_factory=dict)
    """How each plan is suggested, the same on every card."""
    rules: list[Rule] = Field(min_length=1)
    """When a card is shown, and the card."""

    @field_validator("version")
    @classmethod
    def _semver(cls, v: str) -> str:
        if not _SEMVER.match(v):
            raise ValueError("version must be semantic: MAJOR.MINOR.PATCH")
        return v

    @property
    def canonical(self) -> str:
        return f"{self.url}|{self.version}"
