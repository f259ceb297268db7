"""The service app plus a bare echo endpoint, for the latency benchmark.

``uvicorn benchmarks.bench_app:app`` with ``RUNFORM_CDS_CONFIG`` set.
The echo endpoint parses the same JSON payload and sends it back, with no
auth, rules or trace: the floor the framework itself costs.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from cds.config import load_settings
from cds.service.app import create_app

app = create_app(load_settings())


@app.post("/bench/echo")
async def echo(request: Request) -> Any:
    body = json.loads(await request.body())
    return Response(
        json.dumps({"cards": [], "echo": len(body["prefetch"])}), media_type="application/json"
    )
