"""The HTTP service: CDS Hooks 2.0 discovery, service and feedback endpoints.

Closed by default: every route needs the CDS client's JWT (a dependency of the
CDS router, so a new route inherits it) or the trace viewer's session, except
the health endpoints. FastAPI's generated docs are off; ``server.openapi``
serves ``/openapi.json`` behind the JWT. Every response carries headers that
keep it out of frames, sniffers and caches.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import anyio
import httpx
import orjson
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from cds.audit.process_writer import ProcessTraceWriter
from cds.audit.store import TraceStore, open_store
from cds.audit.viewer import viewer_router
from cds.audit.writer import TraceAppender, TraceWriter
from cds.config import Settings, load_settings
from cds.errors import (
    AuthError,
    CdsError,
    InternalError,
    PayloadTooLargeError,
    RequestError,
    operation_outcome,
)
from cds.rules.compile import CompiledPack
from cds.rules.load import load_serving_packs
from cds.service.auth import ClientIdentity, JwtVerifier
from cds.service.edge import EdgeMiddleware
from cds.service.feedback import parse_feedback, record_feedback
from cds.service.hooks import discovery, parse_request, service
from cds.service.metrics import ServiceMetrics
from cds.service.operations import (
    configure_logging,
    freeze_startup_objects,
    operations_routes,
)
from cds.service.pipeline import Runtime, run_call
from cds.service.reload import PackReloader

__all__ = ["PUBLIC_PATHS", "app_from_env", "create_app"]

log = logging.getLogger("cds.service")
JSON = "application/json"
#: the only paths answered without a CDS client JWT or a viewer session
PUBLIC_PATHS = frozenset({"/livez", "/readyz", "/healthz", "/audit/login"})


def _error(exc: CdsError) -> JSONResponse:
    if isinstance(exc, AuthError):
        log.info("rejected credentials: %s", exc.message)
        body = operation_outcome("unauthorized", code="security")
        return JSONResponse(body, status_code=401, headers={"WWW-Authenticate": "Bearer"})
    return JSONResponse(exc.to_operation_outcome(), status_code=exc.status)


async def _read_json(request: Request, limit: int) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"request body over {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"request body over {limit} bytes")
        chunks.append(chunk)
    try:
        return orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError as exc:
        raise RequestError(f"the request body is not valid JSON: {exc}") from None


def _client_dependency(
    settings: Settings, verifier: JwtVerifier
) -> Callable[[Request], Awaitable[None]]:
    """Verify the CDS client's JWT; the identity is kept on the request for the handler."""
    bases = settings.server.public_bases

    async def authenticate(request: Request) -> None:
        request.state.client = (
            await verifier.verify(
                request.headers.get("authorization"),
                [base + request.url.path for base in bases],
            )
            if settings.auth.required
            else None
        )

    return authenticate


def _client(request: Request) -> ClientIdentity | None:
    client: ClientIdentity | None = request.state.client
    return client


def _exception_handlers(app: FastAPI) -> None:
    @app.exception_handler(CdsError)
    async def cds_error(_: Request, exc: CdsError) -> JSONResponse:
        return _error(exc)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        code = "not-found" if exc.status_code == 404 else "not-supported"
        body = operation_outcome(str(exc.detail), code=code)
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(RequestError(str(exc.errors()[0].get("msg", "invalid request"))))

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        error_id = uuid.uuid4().hex[:12]
        log.exception("unexpected error (error id %s)", error_id)
        return _error(InternalError.for_id(error_id))


async def _trace_failure(
    runtime: Runtime, service_id: str, client: ClientIdentity | None, exc: Exception
) -> CdsError:
    """A feedback call that failed unexpectedly still leaves a trace, under an error id."""
    error_id = uuid.uuid4().hex[:12]
    log.error("feedback to %s failed (error id %s)", service_id, error_id, exc_info=exc)
    await runtime.writer.append(
        {
            "trace_id": str(uuid.uuid4()),
            "hook_instance": None,
            "service": f"{service_id}/feedback",
            "received_at": datetime.now(UTC).isoformat(),
            "client": client.as_trace() if client else None,
            "outcome": {
                "status": 500,
                "error": InternalError.code,
                "error_id": error_id,
                "message": f"{type(exc).__name__}: {exc}",
            },
        }
    )
    return InternalError.for_id(error_id)


def _cds_router(
    settings: Settings, runtime: Runtime, authenticate: Callable[[Request], Awaitable[None]]
) -> APIRouter:
    """Discovery, feedback and the OpenAPI document: the client is authenticated first."""
    router = APIRouter(dependencies=[Depends(authenticate)])
    limit = settings.server.max_body_bytes

    @router.get("/cds-services")
    @router.get("/cds-services/", include_in_schema=False)  # no redirect: the aud is the URL
    async def get_discovery() -> dict[str, Any]:
        return discovery()

    @router.post("/cds-services/{service_id}/feedback")
    async def feedback(service_id: str, request: Request) -> Response:
        client = _client(request)
        service(service_id)
        body = parse_feedback(await _read_json(request, limit))
        cap = settings.server.max_feedback_items
        if len(body.feedback) > cap:
            raise PayloadTooLargeError(f"{len(body.feedback)} feedback items; the limit is {cap}")
        try:
            await anyio.to_thread.run_sync(record_feedback, runtime.store, service_id, client, body)
        except CdsError:
            raise
        except Exception as exc:
            raise await _trace_failure(runtime, service_id, client, exc) from exc
        return JSONResponse({}, status_code=200)

    if settings.server.openapi:

        @router.get("/openapi.json", include_in_schema=False)
        async def openapi(request: Request) -> dict[str, Any]:
            schema: dict[str, Any] = request.app.openapi()
            return schema

    return router


def _hook_router(
    settings: Settings, runtime: Runtime, authenticate: Callable[[Request], Awaitable[None]]
) -> APIRouter:
    """The service calls, authenticated by a direct call rather than a dependency (FastAPI
    resolves one per call, at about 2 % of a call's CPU)."""
    router = APIRouter()
    limit = settings.server.max_body_bytes

    @router.post("/cds-services/{service_id}")
    async def call_service(service_id: str, request: Request) -> Response:
        await runtime.turns.take()
        await authenticate(request)
        svc = service(service_id)
        body = await _read_json(request, limit)
        result = await run_call(runtime, svc, parse_request(svc, body), _client(request))
        return Response(orjson.dumps(result), media_type=JSON)

    return router


def _tls_context(settings: Settings) -> ssl.SSLContext:
    """The system's trusted CAs, plus the operator's own (an internal CA, say)."""
    context = ssl.create_default_context()
    if settings.server.ca_file is not None:
        context.load_verify_locations(cafile=str(settings.server.ca_file))
    return context


def _trace_writer(
    settings: Settings, store: TraceStore, handed_in: bool, metrics: ServiceMetrics
) -> TraceAppender:
    """A child process commits the traces (``store.writer = "process"``), unless the
    store was handed in (tests, embedding: it is written where it is) or is in memory."""

    def observe(seconds: float, _: int) -> None:
        metrics.trace_commit.observe(seconds)

    url = settings.store.url
    if not handed_in and settings.store.writer == "process" and ":memory:" not in url:
        return ProcessTraceWriter(url, on_commit=observe)
    return TraceWriter(store, on_commit=observe)


def create_app(
    settings: Settings,
    *,
    packs: list[CompiledPack] | None = None,
    store: TraceStore | None = None,
) -> FastAPI:
    """Build the ASGI app. Packs and store default to what ``settings`` names."""
    if not settings.auth.required:
        log.warning(
            "!!! JWT authentication is OFF (auth.required = false): "
            "any caller can use this service. Never do this in production. !!!"
        )
    given = store is not None
    store = store if store is not None else open_store(settings.store.url)
    # packs handed in (tests, benchmarks) are fixed; packs read from the folder are watched
    interval = 0.0 if packs is not None else settings.packs.watch_interval_s
    packs = (
        packs
        if packs is not None
        else load_serving_packs(
            settings.packs.dir, allow_drafts=settings.packs.allow_drafts, registry=store
        )
    )
    http = httpx.AsyncClient(follow_redirects=False, verify=_tls_context(settings))
    metrics = ServiceMetrics()
    writer = _trace_writer(settings, store, given, metrics)
    runtime = Runtime(
        settings=settings, packs=packs, store=store, writer=writer, http=http, metrics=metrics
    )
    verifier = JwtVerifier(settings.auth, http, store.claim_jti)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        watcher = None
        if interval:
            reloader = PackReloader(
                settings.packs.dir,
                runtime.packs,
                allow_drafts=settings.packs.allow_drafts,
                registry=store,
                engine=runtime.engine,
            )
            watcher = asyncio.create_task(reloader.watch(interval, runtime))
        frozen = freeze_startup_objects()
        log.debug("%d start-up objects frozen out of garbage collection", frozen)
        yield
        if watcher is not None:
            watcher.cancel()
        await http.aclose()
        writer.close()
        store.close()

    app = FastAPI(
        title="runform-cds",
        version=runtime.engine_info["runform_cds"],
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.runtime = runtime
    if settings.cors.origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors.origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type"],
            max_age=600,
        )
    if settings.viewer.enabled:
        secure = settings.server.base_url.startswith("https://")
        app.include_router(viewer_router(settings.viewer, store, secure))
    _exception_handlers(app)
    operations_routes(app, runtime, metrics)
    authenticate = _client_dependency(settings, verifier)
    app.include_router(_cds_router(settings, runtime, authenticate))
    app.include_router(_hook_router(settings, runtime, authenticate))
    # added last, so outermost: its headers and request id reach every answer
    app.add_middleware(EdgeMiddleware, metrics=metrics, allowed_origins=settings.cors.origins)
    return app


def app_from_env() -> FastAPI:
    """App factory for ``uvicorn --factory`` worker processes (reads $RUNFORM_CDS_CONFIG)."""
    settings = load_settings()
    configure_logging(settings.server.log_format)
    return create_app(settings)
