"""What operators run the service by: health checks, metrics, request ids, JSON logs.

- ``/livez``: the process answers (no dependency is checked).
- ``/readyz`` (and ``/healthz``): ready for calls: a rule pack is loaded, the
  trace store answers, and the trace writer is not stuck (a call is answered
  only after its trace is committed, so a stuck writer means "send no calls").
  Neither says anything about the packs or the store.
- ``/metrics``: Prometheus text format (:mod:`cds.service.metrics`), off unless
  ``server.metrics`` is ``token`` (a bearer token) or ``open``.
- Every request gets an id (``X-Request-ID``, taken from the caller when it is
  a plain token, else made); it is in the response header, every log line of
  the request and the call's trace.
"""

from __future__ import annotations

import contextvars
import gc
import hmac
import json
import logging
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from cds.service.metrics import CONTENT_TYPE, ServiceMetrics

__all__ = [
    "CALL_GC_THRESHOLDS",
    "GOOD_REQUEST_ID",
    "configure_logging",
    "current_request_id",
    "freeze_startup_objects",
    "operations_routes",
    "request_id_scope",
]

_REQUEST_ID = contextvars.ContextVar[str | None]("request_id", default=None)
#: a caller's X-Request-ID is kept when it is a plain token
GOOD_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


@contextmanager
def request_id_scope(rid: str) -> Iterator[None]:
    """``rid`` is the current request id (logs, trace) while the block runs."""
    token = _REQUEST_ID.set(rid)
    try:
        yield
    finally:
        _REQUEST_ID.reset(token)


def freeze_startup_objects() -> int:
    """Take what start-up allocated (modules, FHIR model classes, compiled packs: about
    100,000 objects) out of the garbage collector's view, and set the collector's
    thresholds for serving calls; returns how many objects were frozen.

    A full collection otherwise walks all of them, about 50 ms on a 2-core machine,
    every few seconds under load: the stall behind a p99 several times the p50.
    Objects that calls allocate are still collected as before.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*CALL_GC_THRESHOLDS)
    return gc.get_freeze_count()


#: Collector thresholds for a serving process (CPython's default is 700, 10, 10). A call
#: allocates thousands of short-lived containers, so at 700 the young generation was
#: collected about 4 times a call, promoting each in-flight call's objects, and a full
#: collection ran every ~30 calls: 0.3 ms a call at concurrency 1, 0.8 ms at 50. With a
#: young generation of 10,000 most of them are freed before any pass: 0.1 and 0.4 ms
#: (``benchmarks/latency.py``). The older generations keep CPython's ratios: raising
#: those too made a call with a 1,000-rule pack slower (``benchmarks/rules.py``).
CALL_GC_THRESHOLDS = (10_000, 10, 10)


def current_request_id() -> str | None:
    return _REQUEST_ID.get()


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = _REQUEST_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id, exception."""

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id:
            event["request_id"] = request_id
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        return json.dumps(event, ensure_ascii=False)


def configure_logging(fmt: str = "text") -> None:
    """The root logger for the service: ``text`` for people, ``json`` for collectors."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RequestIdFilter())
    if fmt == "json":
        formatter: logging.Formatter = JsonFormatter()
        formatter.converter = time.gmtime
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("httpx").setLevel(logging.WARNING)


def operations_routes(app: FastAPI, runtime: Any, metrics: ServiceMetrics) -> None:
    """Health checks, metrics and request ids on ``app``."""
    settings = runtime.settings.server

    @app.get("/livez", include_in_schema=False)
    async def livez() -> dict[str, str]:
        return {"status": "ok"}

    async def ready() -> JSONResponse:
        problems = []
        if not runtime.packs:
            problems.append("no rule pack loaded")
        try:
            await anyio.to_thread.run_sync(runtime.store.hash_at, 1)
        except Exception:  # any store failure means "not ready"
            problems.append("trace store unreachable")
        await runtime.writer.revive()
        if runtime.writer.stuck():
            problems.append("trace writer stuck")
        status = 503 if problems else 200
        return JSONResponse({"status": "fail" if problems else "ok", "problems": problems},
                            status_code=status)  # fmt: skip

    app.add_api_route("/readyz", ready, methods=["GET"], include_in_schema=False)
    app.add_api_route("/healthz", ready, methods=["GET"], include_in_schema=False)

    @app.get("/metrics", include_in_schema=False)
    async def scrape(request: Request) -> Response:
        if settings.metrics == "off":
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        if settings.metrics == "token":
            sent = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            expected = settings.metrics_token or ""
            if not (expected and hmac.compare_digest(sent.encode(), expected.encode())):
                return JSONResponse({"detail": "unauthorized"}, status_code=401)
        metrics.packs_serving(runtime.packs)
        metrics.trace_queue.set(runtime.writer.depth)
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)
