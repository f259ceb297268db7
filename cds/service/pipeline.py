"""One CDS call, start to finish: prefetch -> facts -> rules -> cards -> trace.

The trace is written durably before the response is returned; if it cannot be
written, the call fails rather than return untraced guidance. A call that
fails leaves a trace too: for a 5xx the caller gets only an error id, and the
trace holds what happened under that id.
"""

from __future__ import annotations

import logging
import platform
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from importlib import metadata
from typing import Any

import anyio
import httpx

from cds.audit.store import TraceStore
from cds.audit.trace import Trace
from cds.audit.writer import TraceAppender
from cds.config import Settings
from cds.errors import CdsError, InternalError, PayloadTooLargeError
from cds.fhir.facts import ClinicalData, FactSet, build_facts
from cds.fhir.fetch import FetchBudget, FhirAccess
from cds.fhir.parse import (
    CarePlan,
    Condition,
    Observation,
    Patient,
    ServiceRequest,
    Unreadable,
    bundle_resources,
    parse_entries,
    parse_resource,
)
from cds.rules.compile import CompiledPack
from cds.rules.decide import Decision, decide
from cds.rules.engine import RuleEngine
from cds.rules.records import Card, CardShown
from cds.service.auth import ClientIdentity
from cds.service.hooks import HookRequest, Service
from cds.service.metrics import ServiceMetrics
from cds.service.operations import current_request_id
from cds.service.prefetch import Prefetched, resolve_prefetch
from cds.service.turns import Turns

__all__ = ["Runtime", "run_call"]

log = logging.getLogger("cds.service")


def _engine_info() -> dict[str, str]:
    return {
        "name": "durable-rules",
        "version": metadata.version("durable-rules"),
        "python": platform.python_version(),
        "runform_cds": metadata.version("runform-cds"),
    }


@dataclass
class Runtime:
    """Everything a call needs, built once at start-up."""

    settings: Settings
    packs: list[CompiledPack]
    store: TraceStore
    writer: TraceAppender
    http: httpx.AsyncClient
    engine: RuleEngine = field(default_factory=RuleEngine)
    engine_info: dict[str, str] = field(default_factory=_engine_info)
    metrics: ServiceMetrics = field(default_factory=ServiceMetrics)
    turns: Turns = field(default_factory=Turns)


def _search(value: Any) -> list[Any]:
    if isinstance(value, dict) and value.get("resourceType") == "Bundle":
        return bundle_resources(value)
    return [value] if isinstance(value, dict) else []


def _clinical_data(req: HookRequest, pre: Prefetched) -> ClinicalData:
    data = ClinicalData()
    raw_patient = pre.data.get("patient")
    if raw_patient is not None:
        parsed = parse_resource(raw_patient, "prefetch.patient")
        if isinstance(parsed, Patient):
            data.patient = parsed
        elif isinstance(parsed, Unreadable):
            data.unreadable.append(parsed.model_copy(update={"expected": "Patient"}))
    data.observations, bad_obs = parse_entries(
        _search(pre.data.get("observations")), "prefetch.observations", Observation
    )
    data.conditions, bad_cond = parse_entries(
        _search(pre.data.get("conditions")), "prefetch.conditions", Condition
    )
    data.unreadable += bad_obs + bad_cond
    requests, _ = parse_entries(_search(pre.data.get("orders")), "prefetch.orders", ServiceRequest)
    plans, _ = parse_entries(_search(pre.data.get("careplans")), "prefetch.careplans", CarePlan)
    data.orders = [*requests, *plans]
    for i, raw in enumerate(_search(req.context.get("draftOrders"))):
        parsed = parse_resource(raw, f"context.draftOrders.entry[{i}]")
        if isinstance(parsed, ServiceRequest | CarePlan):
            data.draft_orders.append(parsed)
        elif isinstance(parsed, Unreadable) and parsed.resource_type in (
            "ServiceRequest",
            "CarePlan",
        ):
            data.unreadable.append(parsed)
        elif isinstance(raw, dict):
            data.other_draft_orders.append(f"{raw.get('resourceType', '?')}/{raw.get('id', '?')}")
    return data


def _trace(
    req: HookRequest,
    svc: Service,
    rt: Runtime,
    packs: list[CompiledPack],
    received: datetime,
    client: ClientIdentity | None,
) -> Trace:
    return {
        "trace_id": str(uuid.uuid4()),
        "request_id": current_request_id(),
        "hook_instance": req.hookInstance,
        "service": svc.id,
        "hook": svc.hook,
        "received_at": received.isoformat(),
        "client": client.as_trace() if client else None,
        "fhir_server": req.fhirServer,
        "patient": f"Patient/{req.patient_id}",
        "user": req.context.get("userId"),
        "engine": rt.engine_info,
        "packs": [
            {
                "id": p.pack.id,
                "url": p.pack.url,
                "version": p.pack.version,
                "sha256": p.sha256,
                "status": p.pack.status,
            }
            for p in packs
        ],
    }


def _record_decisions(trace: Trace, facts: FactSet, decisions: list[Decision]) -> None:
    trace["inputs"] = {
        "used": [r.as_dict() for r in facts.used],
        "excluded": [r.as_dict() for r in facts.excluded],
    }
    trace["facts"] = facts.all_facts()
    trace["diagnoses"] = [d.as_trace() for d in facts.diagnoses]
    trace["orders"] = facts.orders
    trace["rules_fired"] = [
        {"pack": d.pack.key, **f.as_trace()} for d in decisions for f in d.fired
    ]
    trace["cards"] = [_card_as_shown(d, c) for d in decisions for c in d.cards]


def _card_as_shown(decision: Decision, card: Card) -> CardShown:
    """The card exactly as returned, with the rule that made it and the rules whose
    text was attached to it."""
    maker = next((f.rule_id for f in decision.fired if f.card_uuid == card["uuid"]), None)
    attached = [f.rule_id for f in decision.fired if card["uuid"] in (f.attached_to or [])]
    return CardShown(**card, rule_id=maker, attached_rules=attached)


def _resource_count(req: HookRequest) -> int:
    """Resources the client sent: prefetch entries (or single resources) and draft orders."""
    values = [*(req.prefetch or {}).values(), req.context.get("draftOrders")]
    count = 0
    for value in values:
        if isinstance(value, dict):
            entries = value.get("entry") if value.get("resourceType") == "Bundle" else None
            count += len(entries) if isinstance(entries, list) else 1
    return count


def _fhir_access(rt: Runtime, client: ClientIdentity | None) -> FhirAccess | None:
    """The FHIR servers the calling client may have us read from (None: none)."""
    if client is None:
        return None
    configured = next((c for c in rt.settings.auth.clients if c.iss == client.iss), None)
    if configured is None or not configured.fhir_servers:
        return None
    return FhirAccess(
        tuple(configured.fhir_servers),
        rt.settings.fhir.allow_http_loopback,
        typed_patient_search=configured.patient_search == "reference",
    )


async def _answer(
    rt: Runtime,
    svc: Service,
    req: HookRequest,
    trace: Trace,
    packs: list[CompiledPack],
    client: ClientIdentity | None,
) -> dict[str, Any]:
    limit = rt.settings.server.max_resources
    sent = _resource_count(req)
    if sent > limit:
        raise PayloadTooLargeError(f"the request carries {sent} resources; the limit is {limit}")
    pre = await resolve_prefetch(
        req,
        rt.http,
        timeout_s=rt.settings.fhir.timeout_s,
        max_pages=rt.settings.fhir.max_pages,
        access=_fhir_access(rt, client),
        budget=FetchBudget(rt.settings.fhir.max_response_bytes, limit - sent),
    )
    trace["prefetch"] = pre.how
    trace["notes"] = pre.notes
    data = _clinical_data(req, pre)
    evaluate = partial(_evaluate, rt, packs, svc, req, data, _trace_url(rt, trace))
    if _is_quick(rt.settings, packs, data):
        decisions, facts = evaluate()
    else:  # off the event loop: health checks and other calls keep being answered meanwhile
        decisions, facts = await anyio.to_thread.run_sync(evaluate)
    _record_decisions(trace, facts, decisions)
    return {"cards": [c for d in decisions for c in d.cards]}


def _is_quick(settings: Settings, packs: list[CompiledPack], data: ClinicalData) -> bool:
    """Whether evaluating this call takes little enough time to run on the event loop."""
    server = settings.server
    rules = sum(len(p.rules) + len(p.findings) for p in packs)
    most = server.inline_evaluation_max_resources
    return most > 0 and data.resource_count <= most and rules <= server.inline_evaluation_max_rules


def _failed(trace: Trace, exc: Exception) -> CdsError:
    """Record why the call failed; the error the caller gets (5xx: only an error id)."""
    if isinstance(exc, CdsError) and exc.status < 500:
        trace["outcome"] = {"status": exc.status, "error": exc.code, "message": exc.message}
        if exc.detail:
            trace["outcome"]["detail"] = exc.detail
        return exc
    error_id = uuid.uuid4().hex[:12]
    what = exc.message if isinstance(exc, CdsError) else f"{type(exc).__name__}: {exc}"
    code = exc.code if isinstance(exc, CdsError) else InternalError.code
    trace["outcome"] = {"status": 500, "error": code, "error_id": error_id, "message": what}
    log.error("call %s failed (error id %s): %s", trace["hook_instance"], error_id, what,
              exc_info=not isinstance(exc, CdsError))  # fmt: skip
    return InternalError.for_id(error_id)


async def run_call(
    rt: Runtime, svc: Service, req: HookRequest, client: ClientIdentity | None = None
) -> dict[str, Any]:
    """Answer one service call; the trace (even of a failed call) is durably stored first."""
    received = datetime.now(UTC)
    packs = rt.packs  # a hot reload swaps the list; this call keeps the one it started with
    trace = _trace(req, svc, rt, packs, received, client)
    try:
        result = await _answer(rt, svc, req, trace, packs, client)
    except Exception as exc:  # every failure leaves a trace, then the caller hears of it
        error = _failed(trace, exc)
        await rt.writer.append(trace)
        rt.metrics.call(trace)
        raise error from exc
    trace["outcome"] = {"status": 200}
    trace["responded_at"] = datetime.now(UTC).isoformat()
    await rt.writer.append(trace)
    rt.metrics.call(trace)
    return result


def _trace_url(rt: Runtime, trace: Trace) -> str | None:
    """The viewer page of this call's trace, when the viewer is on."""
    if not rt.settings.viewer.enabled:
        return None
    return f"{rt.settings.server.public_base}/audit/trace/{trace['trace_id']}"


def _evaluate(
    rt: Runtime,
    packs: list[CompiledPack],
    svc: Service,
    req: HookRequest,
    data: ClinicalData,
    trace_url: str | None,
) -> tuple[list[Decision], FactSet]:
    decisions = []
    facts: FactSet | None = None
    limits = rt.settings.measures.capture_limits()
    for pack in packs:
        facts = build_facts(data, pack.policy, limits=limits)
        decisions.append(
            decide(
                pack,
                rt.engine,
                facts,
                hook=svc.hook,
                patient_id=req.patient_id,
                trace_url=trace_url,
                station_url=rt.settings.station.base_url,
            )
        )
    assert facts is not None
    return decisions, facts
