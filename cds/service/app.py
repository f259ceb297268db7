"""The HTTP service: CDS Hooks 2.0 discovery, service and feedback endpoints."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from cds.audit.store import TraceStore, open_store
from cds.audit.viewer import viewer_router
from cds.audit.writer import TraceWriter
from cds.config import Settings, load_settings
from cds.errors import AuthError, CdsError, PayloadTooLargeError, RequestError, operation_outcome
from cds.rules.compile import CompiledPack
from cds.rules.load import load_serving_packs
from cds.service.auth import JwtVerifier
from cds.service.feedback import parse_feedback, record_feedback
from cds.service.hooks import discovery, parse_request, service
from cds.service.pipeline import Runtime, run_call
from cds.service.reload import PackReloader

__all__ = ["app_from_env", "create_app"]

log = logging.getLogger("cds.service")
JSON = "application/json"


def _error(exc: CdsError) -> JSONResponse:
    if isinstance(exc, AuthError):
        log.info("rejected credentials: %s", exc.message)
        body = operation_outcome("unauthorized", code="security")
        return JSONResponse(body, status_code=401, headers={"WWW-Authenticate": "Bearer"})
    if exc.status >= 500:
        log.error("%s: %s", exc.code, exc.message)
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


def _auth_check(settings: Settings, verifier: JwtVerifier) -> Callable[[Request], Awaitable[None]]:
    base = settings.server.public_base

    async def check(request: Request) -> None:
        if settings.auth.required:
            await verifier.verify(request.headers.get("authorization"), base + request.url.path)

    return check


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
    http = httpx.AsyncClient(follow_redirects=False)
    writer = TraceWriter(store)
    runtime = Runtime(settings=settings, packs=packs, store=store, writer=writer, http=http)
    authenticate = _auth_check(settings, JwtVerifier(settings.auth, http, store.claim_jti))

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
        yield
        if watcher is not None:
            watcher.cancel()
        await http.aclose()
        writer.close()
        store.close()

    app = FastAPI(
        title="runform-cds", version=runtime.engine_info["runform_cds"], lifespan=lifespan
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
        log.exception("unexpected error")
        return JSONResponse(operation_outcome("internal error", code="exception"), status_code=500)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "packs": [p.key for p in runtime.packs]}

    @app.get("/cds-services")
    async def get_discovery(request: Request) -> dict[str, Any]:
        await authenticate(request)
        return discovery()

    @app.post("/cds-services/{service_id}")
    async def call_service(service_id: str, request: Request) -> Response:
        await authenticate(request)
        svc = service(service_id)
        body = await _read_json(request, settings.server.max_body_bytes)
        result = await run_call(runtime, svc, parse_request(svc, body))
        return Response(orjson.dumps(result), media_type=JSON)

    @app.post("/cds-services/{service_id}/feedback")
    async def feedback(service_id: str, request: Request) -> Response:
        await authenticate(request)
        service(service_id)
        body = parse_feedback(await _read_json(request, settings.server.max_body_bytes))
        await anyio.to_thread.run_sync(record_feedback, store, service_id, body)
        return JSONResponse({}, status_code=200)

    return app


def app_from_env() -> FastAPI:
    """App factory for ``uvicorn --factory`` worker processes (reads $RUNFORM_CDS_CONFIG)."""
    return create_app(load_settings())
