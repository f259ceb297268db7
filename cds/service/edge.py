"""What every request passes through on its way in and out, in one pure ASGI layer.

- a request id (the caller's ``X-Request-ID`` when it is a plain token, else a
  new one): set for the logs and the trace while the request runs, and sent back;
- the request's duration and status, for ``/metrics``;
- security headers on every answer (a page may set its own CSP);
- a log line when a browser origin that is not allowed calls a CDS service.

One plain ASGI class rather than Starlette's ``BaseHTTPMiddleware`` (a task
group and two memory streams per request, per middleware): about 1 ms a call.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.datastructures import Headers, MutableHeaders

from cds.service.metrics import ServiceMetrics
from cds.service.operations import GOOD_REQUEST_ID, request_id_scope

__all__ = ["EdgeMiddleware"]

log = logging.getLogger("cds.service")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Cache-Control": "no-store",
}


class EdgeMiddleware:
    def __init__(
        self, app: ASGIApp, *, metrics: ServiceMetrics, allowed_origins: list[str]
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.allowed_origins = frozenset(allowed_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        given = headers.get("x-request-id", "")
        rid = given if GOOD_REQUEST_ID.match(given) else uuid.uuid4().hex
        self._check_origin(headers.get("origin"), scope["path"])
        status = 500  # what the client gets if the app raises before it answers
        began = time.perf_counter()

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                out = MutableHeaders(scope=message)
                for name, value in _SECURITY_HEADERS.items():
                    out.setdefault(name, value)
                out["X-Request-ID"] = rid
            await send(message)

        try:
            with request_id_scope(rid):
                await self.app(scope, receive, send_with_headers)
        finally:
            route = getattr(scope.get("route"), "path", "(unmatched)")
            self.metrics.requests.labels(route, str(status)).observe(time.perf_counter() - began)

    def _check_origin(self, origin: str | None, path: str) -> None:
        """Say in the log why a browser-based client (a CDS Hooks sandbox) gets no answer."""
        if origin and origin not in self.allowed_origins and path.startswith("/cds-services"):
            log.info("CORS: origin %r is not in cors.origins; the browser will not show the "
                     "answer", origin[:200])  # fmt: skip
