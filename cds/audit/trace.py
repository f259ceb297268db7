"""What a call's trace holds, as a type: the service writes it, the store keeps it as
JSON, and the audit tools (terminal, viewer, exports) read it.

``total=False``: a failed call stops filling it where it failed, and traces
written by earlier releases may lack later keys; readers use ``.get``. A key
renamed here and not where it is written or read fails ``mypy --strict``.
The nested records are typed where they are made: cards and fired rules in
:mod:`cds.rules.records`, facts in :mod:`cds.fhir.fields`, inputs in
:mod:`cds.fhir.measurements`, diagnoses in :mod:`cds.fhir.diagnoses`, orders in
:mod:`cds.fhir.facts`.
"""

from __future__ import annotations

from typing import Any, TypedDict

from cds.fhir.diagnoses import DiagnosisEntry
from cds.fhir.facts import OrderEntry
from cds.fhir.fields import Fact
from cds.fhir.measurements import InputEntry
from cds.rules.records import CardShown, FiredRuleEntry

__all__ = ["Inputs", "Outcome", "PackRef", "Trace"]


class PackRef(TypedDict, total=False):
    """A rule pack version that served the call."""

    id: str
    url: str | None
    version: str
    sha256: str
    status: str


class Outcome(TypedDict, total=False):
    status: int
    #: the error code (``cds.errors``), for a failed call
    error: str
    message: str
    detail: str
    #: for a 5xx: the id the caller was given
    error_id: str


class Inputs(TypedDict):
    used: list[InputEntry]
    excluded: list[InputEntry]


class Trace(TypedDict, total=False):
    trace_id: str
    request_id: str | None
    hook_instance: str | None  # None: a failed feedback call
    service: str
    hook: str
    received_at: str
    responded_at: str
    client: dict[str, str] | None
    fhir_server: str | None
    patient: str
    user: Any
    engine: dict[str, str]
    packs: list[PackRef]
    #: how each prefetch key was obtained (provided, fetched, null, unavailable ...)
    prefetch: dict[str, str]
    notes: list[str]
    inputs: Inputs
    facts: list[Fact]
    diagnoses: list[DiagnosisEntry]
    orders: list[OrderEntry]
    rules_fired: list[FiredRuleEntry]
    cards: list[CardShown]
    outcome: Outcome
