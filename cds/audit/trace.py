"""What a call's trace holds, as a type: the service writes it, the store keeps it as
JSON, and the audit tools (terminal, viewer, exports) read it.

``total=False``: a failed call stops filling it where it failed, and traces
written by earlier releases may lack later keys; readers use ``.get``. A key
renamed here and not where it is written or read fails ``mypy --strict``.
Nested records (cards, fired rules, inputs) stay plain dicts: their shapes are
made by :mod:`cds.rules.decide` and :mod:`cds.fhir.measurements`.
"""

from __future__ import annotations

from typing import Any, TypedDict

__all__ = ["Outcome", "PackRef", "Trace"]


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
    used: list[dict[str, Any]]
    excluded: list[dict[str, Any]]


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
    facts: list[dict[str, Any]]
    diagnoses: list[dict[str, Any]]
    orders: Any
    rules_fired: list[dict[str, Any]]
    cards: list[dict[str, Any]]
    outcome: Outcome
