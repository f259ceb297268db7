"""Real HTTP servers on loopback for the tests: our service and a small FHIR server."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve(app: Any, port: int) -> Iterator[str]:
    """Run ``app`` with uvicorn on 127.0.0.1:``port`` in a thread."""
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@dataclass
class FhirBehaviour:
    """How the fake FHIR server answers; tests change it per case."""

    resources: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    page_size: int = 100
    delay_s: float = 0.0
    fail_status: int | None = None
    next_link_base: str | None = None  # send next links to another origin
    requests: list[dict[str, Any]] = field(default_factory=list)


def fhir_app(behaviour: FhirBehaviour) -> FastAPI:
    """A minimal FHIR R4 server: read Patient, search Observation and Condition, with paging."""
    app = FastAPI()

    async def _prelude(request: Request) -> JSONResponse | None:
        behaviour.requests.append(
            {
                "path": request.url.path,
                "query": str(request.url.query),
                "authorization": request.headers.get("authorization"),
            }
        )
        if behaviour.delay_s:
            await asyncio.sleep(behaviour.delay_s)
        if behaviour.fail_status:
            return JSONResponse(
                {
                    "resourceType": "OperationOutcome",
                    "issue": [{"severity": "error", "code": "exception"}],
                },
                status_code=behaviour.fail_status,
            )
        return None

    @app.get("/fhir/Patient/{pid}")
    async def read_patient(pid: str, request: Request) -> Any:
        if (early := await _prelude(request)) is not None:
            return early
        for p in behaviour.resources.get("Patient", []):
            if p["id"] == pid:
                return p
        return JSONResponse(
            {
                "resourceType": "OperationOutcome",
                "issue": [{"severity": "error", "code": "not-found"}],
            },
            status_code=404,
        )

    @app.get("/fhir/{rtype}")
    async def search(rtype: str, request: Request) -> Any:
        if (early := await _prelude(request)) is not None:
            return early
        offset = int(request.query_params.get("_offset", "0"))
        items = behaviour.resources.get(rtype, [])
        page = items[offset : offset + behaviour.page_size]
        bundle: dict[str, Any] = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(items),
            "entry": [{"resource": r} for r in page],
        }
        if offset + behaviour.page_size < len(items):
            base = behaviour.next_link_base or str(request.base_url).rstrip("/")
            bundle["link"] = [
                {
                    "relation": "next",
                    "url": f"{base}/fhir/{rtype}?_offset={offset + behaviour.page_size}",
                }
            ]
        return bundle

    return app
