"""Lean, strict R4 models for the inbound resources the rules read.

Inbound resources are parsed with these small pydantic dataclasses instead of
the full ``fhir.resources`` classes: they check exactly the elements we use and
are about ten times faster (see ``benchmarks/``), which matters on the
CDS Hooks hot path. Resources are slotted dataclasses rather than ``BaseModel``s
because pydantic builds those about twice as fast, and the elements inside them
(codings, quantities, periods, components: over 600 in a 60-Observation
prefetch) are ``TypedDict``s, which pydantic builds as plain dicts, about twice
as fast again; :func:`validate` is their ``model_validate``. The
:class:`Observation`, of which a prefetch holds dozens, is a msgspec ``Struct``
read by msgspec, with pydantic for what msgspec refuses (see :func:`validate`).
Everything we *emit* is validated with ``fhir.resources.R4B``
(see :mod:`cds.fhir.resources`).

One unreadable resource never sinks the others: :func:`parse_entries` returns
what parsed plus an :class:`Unreadable` record for each failure.
"""

from __future__ import annotations

from dataclasses import field
from datetime import UTC, date, datetime
from types import UnionType
from typing import (
    Annotated,
    Any,
    Literal,
    Required,
    TypeVar,
    Union,
    get_args,
    get_origin,
    get_type_hints,
)

import msgspec
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass
from pydantic_core import ErrorDetails
from typing_extensions import TypedDict

__all__ = [
    "CarePlan",
    "CodeableConcept",
    "Coding",
    "Condition",
    "Observation",
    "ObservationComponent",
    "Patient",
    "Quantity",
    "Resource",
    "ServiceRequest",
    "Unreadable",
    "bundle_resources",
    "codes",
    "parse_entries",
    "parse_resource",
    "validate",
]

# "ignore": keeping unknown elements costs 3x the parse time and we never read them
_element = dataclass(config=ConfigDict(extra="ignore"), slots=True, kw_only=True)


def _fhir_datetime(value: Any) -> Any:
    """FHIR dateTime allows partial dates (YYYY, YYYY-MM); read them as their first instant."""
    if isinstance(value, str):
        text = value.replace("Z", "+00:00")
        if len(text) == 4:
            text += "-01-01"
        elif len(text) == 7:
            text += "-01"
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            return value  # let pydantic report it
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return value


#: msgspec (see :class:`Observation`) reads only an RFC 3339 date-time with its offset;
#: anything else FHIR allows, a partial date say, takes the lenient path of :func:`validate`
FhirDateTime = Annotated[datetime, BeforeValidator(_fhir_datetime), msgspec.Meta(tz=True)]
#: a FHIR date: YYYY, YYYY-MM or YYYY-MM-DD (a partial date is not a day)
FhirDate = Annotated[str, Field(pattern=r"^\d{4}(-(0[1-9]|1[0-2])(-(0[1-9]|[12]\d|3[01]))?)?$")]


class Coding(TypedDict, total=False):
    system: str | None
    code: str | None


class CodeableConcept(TypedDict, total=False):
    coding: list[Coding]


class Quantity(TypedDict, total=False):
    value: float | None
    unit: str | None
    system: str | None
    code: str | None


class Meta(TypedDict, total=False):
    versionId: str | None


class Period(TypedDict, total=False):
    start: FhirDateTime | None
    end: FhirDateTime | None


def codes(concept: CodeableConcept | None, system: str) -> list[str]:
    """The codes ``concept`` carries from ``system``, in their order."""
    if concept is None:
        return []
    return [
        code
        for c in concept.get("coding", ())
        if c.get("system") == system and (code := c.get("code"))
    ]


@_element
class _Resource:
    id: str | None = None
    meta: Meta | None = None

    @property
    def version_id(self) -> str | None:
        return self.meta.get("versionId") if self.meta else None


class ObservationComponent(TypedDict, total=False):
    code: Required[CodeableConcept]
    valueQuantity: Quantity | None
    valueCodeableConcept: CodeableConcept | None


class Observation(msgspec.Struct, kw_only=True):
    """The Observation elements the rules read.

    A msgspec ``Struct`` rather than a pydantic dataclass: a prefetch holds dozens of
    Observations, and msgspec reads one in about 40 % of pydantic's time (see
    :func:`validate`, which falls back to pydantic for what msgspec does not take).
    """

    resourceType: Literal["Observation"]
    id: str | None = None
    meta: Meta | None = None
    status: Literal[
        "registered",
        "preliminary",
        "final",
        "amended",
        "corrected",
        "cancelled",
        "entered-in-error",
        "unknown",
    ]
    code: CodeableConcept
    effectiveDateTime: FhirDateTime | None = None
    effectivePeriod: Period | None = None
    effectiveInstant: FhirDateTime | None = None
    issued: FhirDateTime | None = None
    valueQuantity: Quantity | None = None
    valueCodeableConcept: CodeableConcept | None = None
    valueBoolean: bool | None = None
    dataAbsentReason: CodeableConcept | None = None
    bodySite: CodeableConcept | None = None
    component: list[ObservationComponent] = msgspec.field(default_factory=list)

    @property
    def version_id(self) -> str | None:
        return self.meta.get("versionId") if self.meta else None

    @property
    def effective(self) -> datetime | None:
        if self.effectiveDateTime is not None:
            return self.effectiveDateTime
        if self.effectiveInstant is not None:
            return self.effectiveInstant
        if self.effectivePeriod is not None:
            return self.effectivePeriod.get("end") or self.effectivePeriod.get("start")
        return self.issued


@_element
class Patient(_Resource):
    resourceType: Literal["Patient"]
    birthDate: FhirDate | None = None
    gender: str | None = None

    @property
    def birth_date(self) -> date | None:
        """The birth date when it is a full day; None when absent or partial."""
        if self.birthDate is None or len(self.birthDate) != 10:
            return None
        try:
            return date.fromisoformat(self.birthDate)
        except ValueError:  # 2001-02-30 passes the pattern
            return None


@_element
class Condition(_Resource):
    resourceType: Literal["Condition"]
    clinicalStatus: CodeableConcept | None = None
    verificationStatus: CodeableConcept | None = None
    code: CodeableConcept | None = None
    bodySite: list[CodeableConcept] = field(default_factory=list)
    onsetDateTime: FhirDateTime | None = None
    onsetPeriod: Period | None = None
    recordedDate: FhirDateTime | None = None

    @property
    def onset(self) -> datetime | None:
        """When the condition began, if the record says (never the recorded date)."""
        if self.onsetDateTime is not None:
            return self.onsetDateTime
        return self.onsetPeriod.get("start") if self.onsetPeriod is not None else None


@_element
class ServiceRequest(_Resource):
    resourceType: Literal["ServiceRequest"]
    status: str
    intent: str
    code: CodeableConcept | None = None
    authoredOn: FhirDateTime | None = None
    occurrencePeriod: Period | None = None

    @property
    def started(self) -> datetime | date | None:
        start = self.occurrencePeriod.get("start") if self.occurrencePeriod else None
        return start if start is not None else self.authoredOn


class CarePlanActivityDetail(TypedDict, total=False):
    code: CodeableConcept | None


class CarePlanActivity(TypedDict, total=False):
    detail: CarePlanActivityDetail | None


@_element
class CarePlan(_Resource):
    resourceType: Literal["CarePlan"]
    status: str
    intent: str
    category: list[CodeableConcept] = field(default_factory=list)
    activity: list[CarePlanActivity] = field(default_factory=list)
    period: Period | None = None
    created: FhirDateTime | None = None

    @property
    def started(self) -> datetime | date | None:
        start = self.period.get("start") if self.period else None
        return start if start is not None else self.created


Resource = _Resource | Observation

_MODELS: dict[str, type[Resource]] = {
    "Observation": Observation,
    "Patient": Patient,
    "Condition": Condition,
    "ServiceRequest": ServiceRequest,
    "CarePlan": CarePlan,
}

R = TypeVar("R", bound=Resource)
M = TypeVar("M")


_adapters: dict[type[Any], TypeAdapter[Any]] = {}


def validate(model: type[M], raw: Any) -> M:
    """``raw`` (JSON-like data) as a ``model``; raises pydantic's ``ValidationError``.

    A msgspec ``Struct`` is read by msgspec where it can. What msgspec refuses (it
    takes types as they are, and only zoned RFC 3339 date-times) is read by pydantic
    as every other model is: lax types, partial and zone-less dates, and its wording
    of what is wrong. Both paths give the same resource (to the microsecond: a
    fraction of a second beyond six digits is rounded by msgspec, cut by pydantic).
    """
    if issubclass(model, msgspec.Struct):
        try:
            return msgspec.convert(raw, model)
        except msgspec.ValidationError:
            lenient = validate(_lenient_twin(model), raw)
            return msgspec.convert(lenient, model, strict=False)
    adapter = _adapters.get(model)
    if adapter is None:
        adapter = _adapters[model] = TypeAdapter(model)
    parsed: M = adapter.validate_python(raw)
    return parsed


_twins: dict[type[Any], Any] = {}


def _lenient_twin(struct: type[Any]) -> Any:
    """A TypedDict with the elements of msgspec ``Struct`` ``struct``, for pydantic."""
    twin = _twins.get(struct)
    if twin is None:
        hints = get_type_hints(struct, include_extras=True)
        elements = {
            f.name: Required[hints[f.name]] if f.required else hints[f.name]
            for f in msgspec.structs.fields(struct)
        }
        twin = _twins[struct] = TypedDict(struct.__name__, elements, total=False)  # type: ignore[operator]
    return twin


class Unreadable(BaseModel):
    """A resource we could not use, and why (goes into the trace)."""

    resource_type: str | None
    id: str | None
    source: str
    reason: str
    #: the resource type the list it came from should hold
    expected: str | None = None


def _bare(kind: Any) -> Any:
    """X of ``X | None``, ``list[X]`` and ``Required[X]``."""
    while get_origin(kind) in (UnionType, Union, list, Required):
        kind = next(a for a in get_args(kind) if a is not type(None))
    return kind


def _element_at(model: type[Any], loc: tuple[int | str, ...]) -> Any:
    """The type the element at ``loc`` of a ``model`` should have (None if unknown)."""
    kind: Any = model
    for step in loc:
        if isinstance(step, str):
            kind = _bare(get_type_hints(kind).get(step) if isinstance(kind, type) else None)
    return kind


def _message(err: ErrorDetails, model: type[Any]) -> str:
    """Worded as for a model (the traces' wording since the first release)."""
    name = err.get("ctx", {}).get("class_name")
    if err["type"] == "dict_type":
        name = getattr(_element_at(model, err["loc"]), "__name__", None)
    if err["type"] in ("dataclass_type", "dict_type") and name:
        return f"Input should be a valid dictionary or instance of {name}"
    return err["msg"]


def _describe(exc: ValidationError, model: type[Any]) -> str:
    parts = []
    for err in exc.errors()[:3]:
        where = ".".join(str(p) for p in err["loc"])
        parts.append(f"{where}: {_message(err, model)}")
    return "; ".join(parts)


def parse_resource(raw: Any, source: str) -> Resource | Unreadable:
    """Parse one resource with the model named by its ``resourceType``."""
    if not isinstance(raw, dict):
        return Unreadable(resource_type=None, id=None, source=source, reason="not a JSON object")
    rtype = raw.get("resourceType")
    rid = raw.get("id") if isinstance(raw.get("id"), str) else None
    model = _MODELS.get(rtype) if isinstance(rtype, str) else None
    if model is None:
        rtype_s = rtype if isinstance(rtype, str) else None
        reason = f"unsupported resourceType {rtype!r}"
        return Unreadable(resource_type=rtype_s, id=rid, source=source, reason=reason)
    try:
        return validate(model, raw)
    except ValidationError as exc:
        return Unreadable(resource_type=rtype, id=rid, source=source, reason=_describe(exc, model))


def bundle_resources(bundle: dict[str, Any]) -> list[Any]:
    """The ``entry[].resource`` values of a Bundle (anything else is skipped)."""
    entries = bundle.get("entry", [])
    if not isinstance(entries, list):
        return []
    return [e.get("resource") for e in entries if isinstance(e, dict)]


def parse_entries(raws: list[Any], source: str, want: type[R]) -> tuple[list[R], list[Unreadable]]:
    """Parse ``raws``, keeping resources of type ``want``; report the others."""
    good: list[R] = []
    bad: list[Unreadable] = []
    for i, raw in enumerate(raws):
        parsed = parse_resource(raw, f"{source}[{i}]")
        if isinstance(parsed, want):
            good.append(parsed)
        elif isinstance(parsed, Unreadable):
            bad.append(parsed.model_copy(update={"expected": want.__name__}))
        elif not (isinstance(raw, dict) and raw.get("resourceType") == "OperationOutcome"):
            bad.append(
                Unreadable(
                    resource_type=type(parsed).__name__,
                    id=parsed.id,
                    source=f"{source}[{i}]",
                    reason=f"expected {want.__name__}",
                    expected=want.__name__,
                )
            )
    return good, bad
