"""What a decision writes: the CDS Hooks cards it returns and the records of the rules
it fired, as types.

The trace (:mod:`cds.audit.trace`) stores these as JSON and the audit tools read
them back; a key renamed here and not where it is written or read fails
``mypy --strict``. ``total=False`` where a key is left out when empty, and because
traces written by earlier releases may lack later keys.
"""

from __future__ import annotations

from typing import Any, TypedDict

from cds.fhir.fields import Fact

__all__ = [
    "Card",
    "CardLink",
    "CardShown",
    "CardSource",
    "DecidedEntry",
    "FiredRuleEntry",
    "OverrideReason",
    "ThresholdEntry",
]


class CardSource(TypedDict, total=False):
    label: str
    url: str


class CardLink(TypedDict):
    label: str
    url: str
    type: str


class OverrideReason(TypedDict):
    system: str
    code: str
    display: str


class Card(TypedDict, total=False):
    """A CDS Hooks 2.0 card, as the service returns it."""

    uuid: str
    summary: str
    detail: str
    indicator: str
    source: CardSource
    #: CDS Hooks suggestions; their FHIR resources are validated when emitted
    suggestions: list[dict[str, Any]]
    selectionBehavior: str
    overrideReasons: list[OverrideReason]
    links: list[CardLink]


class CardShown(Card, total=False):
    """A card as the trace records it: with the rule that made it and the rules whose
    text was attached to it."""

    rule_id: str | None
    attached_rules: list[str]


class ThresholdEntry(TypedDict):
    """A threshold a fired rule used, as its pack states it."""

    name: str
    value: float
    unit: str
    provenance: str
    label: str
    citation: str | None


class DecidedEntry(TypedDict, total=False):
    """One threshold test that decided a match: what was measured against which limit."""

    threshold: str
    subject: str
    op: str
    value: float
    unit: str
    #: the side of the fact the test was made on (absent: a patient-level fact)
    side: str
    #: whether the value passed ``op`` (False: the rule asked for it not to)
    crossed: bool
    limit: float
    limit_unit: str
    label: str


class FiredRuleEntry(TypedDict, total=False):
    """A rule that fired: on which facts, decided by which tests, and what became of it."""

    #: the pack (``id@version#sha``) the rule belongs to
    pack: str
    rule_id: str
    category: str
    sides: list[str]
    #: the fields of each matched fact the rule reads
    matched: list[Fact]
    thresholds: list[ThresholdEntry]
    decided: list[DecidedEntry]
    card_uuid: str
    suppressed_by: str
    held_back: list[str]
    attached_to: list[str]
