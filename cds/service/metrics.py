"""``/metrics`` in the Prometheus text format: what an SRE watches.

Each service process keeps its own figures (scrape every worker, or run one
worker per container as the deployment recipe does). Off unless configured:
``server.metrics = "token"`` wants ``Authorization: Bearer <server.metrics_token>``;
``"open"`` serves it unauthenticated, for a port only the monitoring network reaches.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from cds.audit.trace import Trace

__all__ = ["CONTENT_TYPE", "ServiceMetrics"]

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ServiceMetrics:
    """The service's counters, in a registry of its own (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Histogram(
            "runform_http_request_duration_seconds", "HTTP requests by route and status",
            ["route", "status"], buckets=_LATENCY, registry=r,
        )  # fmt: skip
        self.cards = Counter(
            "runform_cards", "Cards returned, by rule and indicator", ["rule", "indicator"],
            registry=r,
        )  # fmt: skip
        self.engine_failures = Counter(
            "runform_engine_failures", "Calls that failed in the rule engine, by kind "
            "(engine, cross-check: the engine and the reference evaluator disagreed)",
            ["kind"], registry=r,
        )  # fmt: skip
        self.prefetch = Counter(
            "runform_prefetch", "Prefetch keys by how they were obtained "
            "(provided, fetched, null, unavailable, failed)", ["key", "outcome"], registry=r,
        )  # fmt: skip
        self.trace_queue = Gauge(
            "runform_trace_queue_depth", "Traces waiting to be committed", registry=r
        )
        self.trace_commit = Histogram(
            "runform_trace_commit_seconds", "Time to commit a batch of traces durably",
            buckets=_LATENCY, registry=r,
        )  # fmt: skip
        self.pack = Gauge(
            "runform_pack_active", "Rule packs serving (1), by id, version and content hash",
            ["pack", "version", "sha256"], registry=r,
        )  # fmt: skip

    def packs_serving(self, packs: list[Any]) -> None:
        self.pack.clear()
        for p in packs:
            self.pack.labels(p.pack.id, p.pack.version, p.sha256[:12]).set(1)

    def call(self, trace: Trace) -> None:
        """Count what one call's trace shows: its cards, prefetch and engine outcome."""
        for card in trace.get("cards", []):
            self.cards.labels(str(card.get("rule_id")), str(card.get("indicator"))).inc()
        for key, how in (trace.get("prefetch") or {}).items():
            self.prefetch.labels(key, str(how).split(" ")[0].rstrip(":")).inc()
        error = (trace.get("outcome") or {}).get("error")
        if error == "prefetch-unavailable":
            self.prefetch.labels("(any)", "failed").inc()
        if error in ("engine-failed", "engine-disagreement"):
            kind = "cross-check" if error == "engine-disagreement" else "engine"
            self.engine_failures.labels(kind).inc()

    def exposition(self) -> bytes:
        return bytes(generate_latest(self.registry))
