"""The station's web server: the two pages, the live picture, live state and the controls.

Every page and call needs the station key (printed at start, or ``station.key``
in the config): given once as ``?key=``, it is kept in an HttpOnly cookie. The
station binds to loopback unless told otherwise.
"""

from __future__ import annotations

import asyncio
import hmac
import html
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cds.errors import CdsError, StationError
from cds.station.defaults import session_defaults
from cds.station.pages import CONSOLE_PAGE, KEY_PAGE, RUNNER_PAGE
from cds.station.session import Setup
from cds.station.targets import TARGETS
from cds.station.worker import Station

__all__ = ["StartBody", "station_app"]

COOKIE = "runform_station"
#: the live picture is sent at most this often (it is the newest processed frame)
PICTURE_FPS = 20.0


class StartBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    patient: str
    metric: str
    side: Literal["left", "right", "both"]
    low: float
    high: float
    session: int = Field(ge=1)
    cue: str = Field(default="", max_length=200)
    service_request: str | None = Field(
        default=None, pattern=r"^ServiceRequest/[A-Za-z0-9\-.]{1,64}$"
    )
    metronome: bool = False
    pain_before: float = Field(ge=0, le=10)


class StopBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pain_after: float = Field(ge=0, le=10)


class WatchBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    metric: str


def _problem(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _parse(model: type[BaseModel], body: Any) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "body"
        raise StationError(f"{where}: {err['msg']}") from None


def _metric_options(station: Station) -> str:
    return "".join(
        f'<option value="{code}"{" selected" if code == station.metric else ""}>'
        f"{html.escape(t.display)}</option>"
        for code, t in TARGETS.items()
        if t.view == station.view
    )


def station_app(
    station: Station,
    *,
    key: str,
    records: Path,
    record: Callable[[Station], dict[str, str]],
    fhir_base: str | None = None,
    pack: Any = None,
) -> FastAPI:
    """The web app of ``station``; ``record`` writes a stopped session and says where."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def need_key(request: Request, call_next: Callable[[Request], Any]) -> Response:
        given = request.query_params.get("key") or request.cookies.get(COOKIE) or ""
        if not hmac.compare_digest(given.encode(), key.encode()):
            if request.method == "GET" and request.url.path in ("/", "/console", "/runner"):
                target = request.url.path + (
                    "?" + _without_key(request) if _without_key(request) else ""
                )
                return HTMLResponse(KEY_PAGE.replace("__NEXT__", html.escape(target)), 401)
            return _problem("the station key is missing or wrong", 401)
        if "key" in request.query_params:  # keep it in a cookie, and out of the address bar
            nxt = request.query_params.get("next") or request.url.path
            local = nxt.startswith("/") and not nxt.startswith(("//", "/\\"))
            url = nxt if local else "/console"  # never a redirect off the station
            if url == request.url.path and _without_key(request):
                url += "?" + _without_key(request)
            answer = RedirectResponse(url, status_code=303)
            answer.set_cookie(COOKIE, key, httponly=True, samesite="strict")
            return answer
        response: Response = await call_next(request)
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Frame-Options"] = "DENY"
        return response

    @app.exception_handler(CdsError)
    async def cds_error(request: Request, exc: CdsError) -> JSONResponse:
        return _problem(exc.message)

    @app.get("/")
    async def home() -> RedirectResponse:
        return RedirectResponse("/console", status_code=303)

    @app.get("/runner")
    async def runner() -> HTMLResponse:
        return HTMLResponse(RUNNER_PAGE)

    @app.get("/console")
    async def console() -> HTMLResponse:
        page = CONSOLE_PAGE.replace("__METRICS__", _metric_options(station))
        page = page.replace("__SESSIONS__", str(len(station.session.schedule.sessions)))
        return HTMLResponse(page)

    @app.get("/api/state")
    async def state() -> dict[str, Any]:
        return station.state()

    @app.get("/events")
    async def events(request: Request) -> StreamingResponse:
        queue = station.broadcast.subscribe()

        async def stream() -> AsyncIterator[bytes]:
            try:
                yield b"retry: 1000\n\n"
                yield f"data: {json.dumps(station.state())}\n\n".encode()
                while not await request.is_disconnected():
                    try:
                        message = await asyncio.wait_for(queue.get(), timeout=5.0)
                    except TimeoutError:
                        message = station.state()  # a heartbeat, with the clock moved on
                    yield f"data: {json.dumps(message)}\n\n".encode()
            finally:
                station.broadcast.unsubscribe(queue)

        return StreamingResponse(stream(), media_type="text/event-stream")

    @app.get("/video.mjpg")
    async def video(request: Request) -> StreamingResponse:
        async def frames() -> AsyncIterator[bytes]:
            sent = -1
            while not await request.is_disconnected():
                if station.jpeg_number != sent and station.jpeg:
                    sent, jpeg = station.jpeg_number, station.jpeg
                    yield (b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                           + str(len(jpeg)).encode() + b"\r\n\r\n" + jpeg + b"\r\n")  # fmt: skip
                await asyncio.sleep(1 / PICTURE_FPS)

        return StreamingResponse(frames(), media_type="multipart/x-mixed-replace; boundary=frame")

    @app.get("/api/defaults")
    async def defaults(patient: str, metric: str) -> dict[str, Any]:
        found = await anyio.to_thread.run_sync(
            lambda: session_defaults(patient, metric, fhir_base=fhir_base, pack=pack)
        )
        return found.as_dict()

    @app.post("/api/watch")
    async def watch(request: Request) -> dict[str, Any]:
        body = _parse(WatchBody, await _json(request))
        t = TARGETS.get(body.metric)
        if t is None or t.view != station.view:
            raise StationError(f"{body.metric!r} cannot be measured from the {station.view} view")
        station.watch(body.metric)
        return station.state()

    @app.post("/api/start")
    async def start(request: Request) -> dict[str, Any]:
        body = _parse(StartBody, await _json(request))
        setup = Setup(
            body.patient.strip(), body.metric, body.side, body.low, body.high, body.session,
            body.cue.strip(), body.service_request, body.metronome,
        )  # fmt: skip
        station.session.start(setup, body.pain_before, station.view)
        station.watch(body.metric)
        return station.state()

    @app.post("/api/pause")
    async def pause() -> dict[str, Any]:
        station.session.pause()
        return station.state()

    @app.post("/api/resume")
    async def resume() -> dict[str, Any]:
        station.session.resume()
        return station.state()

    @app.post("/api/stop")
    async def stop(request: Request) -> dict[str, Any]:
        body = _parse(StopBody, await _json(request))
        station.session.stop(body.pain_after)
        written = await anyio.to_thread.run_sync(record, station)
        station.broadcast.publish(station.state())
        return written

    @app.get("/records/{patient}/{name}")
    async def records_file(patient: str, name: str) -> Response:
        path = (records / patient / name).resolve()
        if records.resolve() not in path.parents or not path.is_file():
            return _problem("no such record", 404)
        return FileResponse(path)

    return app


async def _json(request: Request) -> Any:
    try:
        return await request.json()
    except ValueError:
        raise StationError("the body is not JSON") from None


def _without_key(request: Request) -> str:
    return "&".join(
        f"{quote(k)}={quote(v)}" for k, v in request.query_params.multi_items()
        if k not in ("key", "next")
    )  # fmt: skip
