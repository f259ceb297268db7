"""Conditions matched against a pack's value sets, in three states.

A diagnosis that decides whether a plan applies is *confirmed* (an active
record, not provisional), *possible* (a record whose status is unconfirmed,
or whose onset date is needed and missing) or *absent*. "Possible" never
counts as absent: the packs hold plans back and ask. Each match also carries
its sides, from the ICD-10-CM laterality character or a SNOMED CT body site.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, TypedDict

from cds._entries import drop_empty
from cds.fhir.codes import ICD10CM_SYSTEM, LATERALITY_SIDES, SITE_SIDES, SNOMED_SYSTEM, Side
from cds.fhir.fields import diagnosis_field
from cds.fhir.parse import CodeableConcept, Condition, codes

__all__ = [
    "DiagnosisCode",
    "DiagnosisEntry",
    "DiagnosisMatch",
    "ValueSet",
    "as_datetime",
    "diagnosis_facts",
    "match_conditions",
]

SIDES: tuple[Side, Side] = ("left", "right")
_PAIRS: tuple[tuple[Side, Side], ...] = (("left", "right"), ("right", "left"))
_CLINICAL_ACTIVE = {"active", "recurrence", "relapse"}
_CLINICAL_ENDED = {"inactive", "remission", "resolved"}
_VERIFICATION_UNSURE = {"provisional", "differential", "unconfirmed"}
_VERIFICATION_VOID = {"refuted", "entered-in-error"}
#: ICD-10-CM laterality character: 1 right, 2 left, 3 bilateral (0 and 9: unspecified)
_ICD_LATERALITY: dict[str, tuple[Side, ...]] = {
    "1": ("right",),
    "2": ("left",),
    "3": ("left", "right"),
}
_REFERENCE_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


@dataclass(frozen=True)
class DiagnosisCode:
    """One code of a value set; ``laterality`` is the 1-based position of the
    ICD-10-CM laterality character, counted without the dot."""

    system: str
    code: str
    prefix: bool = False
    laterality: int | None = None

    def matches(self, system: str | None, code: str | None) -> bool:
        if system != self.system or not code:
            return False
        return code.startswith(self.code) if self.prefix else code == self.code

    def sides_of(self, code: str) -> tuple[Side, ...] | None:
        """Sides named by ``code``'s laterality character, or None when it names none."""
        if self.laterality is None:
            return None
        compact = code.replace(".", "")
        if len(compact) < self.laterality:
            return None
        return _ICD_LATERALITY.get(compact[self.laterality - 1])


@dataclass(frozen=True)
class ValueSet:
    name: str
    title: str
    codes: tuple[DiagnosisCode, ...]


class DiagnosisEntry(TypedDict, total=False):
    """One Condition that matched one value set, as the trace records it."""

    value_set: str
    title: str
    code: str
    reference: str | None
    confirmed: bool
    doubt: str | None
    onset_days: float | None
    least_days: float
    sides: tuple[Side, ...] | list[Side] | None


@dataclass(frozen=True)
class DiagnosisMatch:
    """One Condition that matched one value set: what the trace and the cards show."""

    value_set: str
    title: str
    code: str
    reference: str | None
    confirmed: bool
    #: why the match is only "possible" (None when confirmed)
    doubt: str | None
    #: days since the recorded onset (None: no onset recorded)
    onset_days: float | None
    #: fewest days that may have passed since the onset (the recorded date bounds it)
    least_days: float
    #: sides the record names (None: no laterality recorded)
    sides: tuple[Side, ...] | None

    def as_trace(self) -> DiagnosisEntry:
        return drop_empty(
            DiagnosisEntry(
                value_set=self.value_set, title=self.title, code=self.code,
                reference=self.reference, confirmed=self.confirmed, doubt=self.doubt,
                onset_days=self.onset_days, least_days=self.least_days, sides=self.sides,
            )
        )  # fmt: skip


def as_datetime(value: datetime | date | None) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime(value.year, value.month, value.day, tzinfo=UTC)


def _days(when: datetime | None, now: datetime) -> float | None:
    if when is None:
        return None
    return max(0.0, round((now - when).total_seconds() / 86400, 2))


def _status(concept: CodeableConcept | None) -> set[str]:
    coding = concept.get("coding", ()) if concept is not None else ()
    return {code for c in coding if (code := c.get("code"))}


def _doubt(cond: Condition) -> str | bool | None:
    """False: ignore the record; None: confirmed; a string: why it is only possible."""
    verification = _status(cond.verificationStatus)
    if verification & _VERIFICATION_VOID:
        return False
    clinical = _status(cond.clinicalStatus)
    if clinical & _CLINICAL_ENDED and not clinical & _CLINICAL_ACTIVE:
        return False
    if verification & _VERIFICATION_UNSURE:
        return f"recorded as {sorted(verification & _VERIFICATION_UNSURE)[0]}"
    if not clinical & _CLINICAL_ACTIVE:
        return "clinical status not recorded"
    return None


def _site_sides(cond: Condition) -> tuple[Side, ...] | None:
    sides: set[Side] = set()
    for site in cond.bodySite:
        for code in codes(site, SNOMED_SYSTEM):
            if code in SITE_SIDES:
                sides.add(SITE_SIDES[code][0])
            sides.update(LATERALITY_SIDES.get(code, ()))
    return tuple(s for s in SIDES if s in sides) or None


def _sides(code: DiagnosisCode, coded: str, cond: Condition) -> tuple[Side, ...] | None:
    """Laterality from the code, else from bodySite; records that disagree name none."""
    from_code = code.sides_of(coded) if code.system == ICD10CM_SYSTEM else None
    from_site = _site_sides(cond)
    if from_code and from_site and set(from_code) != set(from_site):
        return None
    return from_code or from_site


def _reference(cond: Condition) -> str | None:
    return f"Condition/{cond.id}" if cond.id and _REFERENCE_ID.match(cond.id) else None


def match_conditions(
    conditions: Iterable[Condition], value_sets: Iterable[ValueSet], now: datetime
) -> list[DiagnosisMatch]:
    """Every (Condition, value set) match, with its certainty, dates and sides."""
    sets = list(value_sets)
    out: list[DiagnosisMatch] = []
    for cond in conditions:
        doubt = _doubt(cond)
        if doubt is False or cond.code is None:
            continue
        onset = _days(as_datetime(cond.onset), now)
        recorded = _days(as_datetime(cond.recordedDate), now)
        least = onset if onset is not None else (recorded or 0.0)
        for vs in sets:
            hit = next(
                ((dc, code) for c in cond.code.get("coding", ()) for dc in vs.codes
                 if (code := c.get("code")) and dc.matches(c.get("system"), code)),
                None,
            )  # fmt: skip
            if hit is None:
                continue
            dc, coded = hit
            out.append(
                DiagnosisMatch(
                    value_set=vs.name,
                    title=vs.title,
                    code=dc.code + ("*" if dc.prefix else ""),
                    reference=_reference(cond),
                    confirmed=doubt is None,
                    doubt=doubt if isinstance(doubt, str) else None,
                    onset_days=onset,
                    least_days=least,
                    sides=_sides(dc, coded, cond) if doubt is None else None,
                )
            )
    return out


@dataclass
class DiagnosisFacts:
    patient: dict[str, Any] = field(default_factory=dict)
    sides: dict[Side, dict[str, Any]] = field(default_factory=lambda: {"left": {}, "right": {}})


def _least(fields: dict[str, Any], key: str, days: float) -> None:
    fields[key] = min(days, fields.get(key, days))


def diagnosis_facts(matches: Iterable[DiagnosisMatch]) -> DiagnosisFacts:
    """The fact fields of ``matches`` (see :func:`cds.fhir.fields.diagnosis_field`)."""
    out = DiagnosisFacts()
    for m in matches:
        p = out.patient
        if not m.confirmed:
            p[diagnosis_field(m.value_set, "possible")] = 1
            _least(p, diagnosis_field(m.value_set, "possible_days"), m.least_days)
            continue
        p[diagnosis_field(m.value_set)] = 1
        if m.onset_days is not None:
            _least(p, diagnosis_field(m.value_set, "days"), m.onset_days)
        else:
            _least(p, diagnosis_field(m.value_set, "undated_days"), m.least_days)
        if m.sides is None:
            p[diagnosis_field(m.value_set, "unsided")] = 1
            continue
        for side, other in _PAIRS:
            if side in m.sides:
                out.sides[side][diagnosis_field(m.value_set, "here")] = 1
            if other in m.sides:
                out.sides[side][diagnosis_field(m.value_set, "there")] = 1
    return out
