"""One CDS call, start to finish: prefetch -> facts -> rules -> cards -> trace.

The trace is written durably before the response is returned; if it cannot be
written, the call fails rather than return untraced guidance.
"""

from __future__ import annotations

import platform
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

import httpx

from cds.audit.store import TraceStore
from cds.audit.writer import TraceWriter
from cds.config import Settings
from cds.errors import CdsError
from cds.fhir.facts import ClinicalData, FactSet, build_facts
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
from cds.service.hooks import HookRequest, Service
from cds.service.prefetch import Prefetched, resolve_prefetch

__all__ = ["Runtime", "run_call"]


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
    writer: TraceWriter
    http: httpx.AsyncClient
    engine: RuleEngine = field(default_factory=RuleEngine)
    engine_info: dict[str, str] = field(default_factory=_engine_info)


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
    return data


def _trace(
    req: HookRequest, svc: Service, rt: Runtime, packs: list[CompiledPack], received: datetime
) -> dict[str, Any]:
    return {
        "trace_id": str(uuid.uuid4()),
        "hook_instance": req.hookInstance,
        "service": svc.id,
        "hook": svc.hook,
        "received_at": received.isoformat(),
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


def _record_decisions(trace: dict[str, Any], facts: FactSet, decisions: list[Decision]) -> None:
    trace["inputs"] = {
        "used": [r.as_dict() for r in facts.used],
        "excluded": [r.as_dict() for r in facts.excluded],
    }
    trace["facts"] = facts.all_facts()
    trace["diagnoses"] = [d.as_trace() for d in facts.diagnoses]
    trace["rules_fired"] = [
        {"pack": d.pack.key, **f.as_trace()} for d in decisions for f in d.fired
    ]
    trace["cards"] = [
        {
            "uuid": c["uuid"],
            "summary": c["summary"],
            "indicator": c["indicator"],
            "source": c["source"],
            "rule_id": f.rule_id,
            "suggestions": [s["uuid"] for s in c.get("suggestions", [])],
        }
        for d in decisions
        for f in d.fired
        for c in d.cards
        if c["uuid"] == f.card_uuid
    ]


async def run_call(rt: Runtime, svc: Service, req: HookRequest) -> dict[str, Any]:
    """Answer one service call; the trace is durably stored before returning."""
    received = datetime.now(UTC)
    packs = rt.packs  # a hot reload swaps the list; this call keeps the one it started with
    trace = _trace(req, svc, rt, packs, received)
    try:
        pre = await resolve_prefetch(
            req, rt.http, timeout_s=rt.settings.fhir.timeout_s, max_pages=rt.settings.fhir.max_pages
        )
        trace["prefetch"] = pre.how
        trace["notes"] = pre.notes
        data = _clinical_data(req, pre)
        # CPU-bound and short: a thread would add a hop and gain nothing under the GIL
        decisions, facts = _evaluate(rt, packs, svc, req, data, _trace_url(rt, trace))
        _record_decisions(trace, facts, decisions)
        cards = [c for d in decisions for c in d.cards]
        trace["outcome"] = {"status": 200}
    except CdsError as exc:
        trace["outcome"] = {"status": exc.status, "error": exc.code, "message": exc.message}
        await rt.writer.append(trace)
        raise
    trace["responded_at"] = datetime.now(UTC).isoformat()
    await rt.writer.append(trace)
    return {"cards": cards}


def _trace_url(rt: Runtime, trace: dict[str, Any]) -> str | None:
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
            )
        )
    assert facts is not None
    return decisions, facts
