"""Real HTTP servers on loopback for the tests: our service and a small FHIR server."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

if TYPE_CHECKING:
    from cds.client import JwtSigner


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Tls:
    """A throw-away CA and a certificate for 127.0.0.1 signed by it (PEM files)."""

    ca: Path
    cert: Path
    key: Path


def make_tls(folder: Path) -> Tls:
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    now = dt.datetime.now(dt.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder().subject_name(name("test CA")).issuer_name(name("test CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    cert = (
        x509.CertificateBuilder().subject_name(name("127.0.0.1")).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    out = Tls(folder / "ca.pem", folder / "cert.pem", folder / "key.pem")
    out.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    out.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    out.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return out


@contextmanager
def serve(app: Any, port: int, settings: Any = None, tls: Tls | None = None) -> Iterator[str]:
    """Run ``app`` with uvicorn on 127.0.0.1:``port`` in a thread; with ``settings``,
    configured as the service runs in production (cds.service.server); with ``tls``,
    over https."""
    options: dict[str, Any] = {
        "host": "127.0.0.1", "port": port, "log_level": "warning", "lifespan": "on",
    }  # fmt: skip
    if tls is not None:
        options.update(ssl_certfile=str(tls.cert), ssl_keyfile=str(tls.key))
    if settings is not None:
        from cds.service.server import server_config

        config = server_config(app, settings, **options)
    else:
        config = uvicorn.Config(app, **options)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("server did not start")
        time.sleep(0.02)
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}"
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
    transactions: list[dict[str, Any]] = field(default_factory=list)


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

    @app.post("/fhir")
    async def transaction(request: Request) -> Any:
        if (early := await _prelude(request)) is not None:
            return early
        body = await request.json()
        if body.get("resourceType") != "Bundle" or body.get("type") != "transaction":
            return JSONResponse(
                {
                    "resourceType": "OperationOutcome",
                    "issue": [
                        {"severity": "error", "code": "invalid", "diagnostics": "not a transaction"}
                    ],
                },
                status_code=400,
            )
        behaviour.transactions.append(body)
        entries = []
        for n, entry in enumerate(body["entry"], start=1):
            rtype = entry["resource"]["resourceType"]
            behaviour.resources.setdefault(rtype, []).append({**entry["resource"], "id": f"t{n}"})
            entries.append(
                {"response": {"status": "201 Created", "location": f"{rtype}/t{n}/_history/1"}}
            )
        return {"resourceType": "Bundle", "type": "transaction-response", "entry": entries}

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


_ROOT = Path(__file__).resolve().parent.parent


class ServiceProcess:
    """`runform-cds serve` in a child process, with its log captured to a file."""

    def __init__(
        self,
        tmp: Path,
        signer: JwtSigner,
        store_url: str,
        workers: int = 1,
        fhir_servers: tuple[str, ...] = (),
        server_extra: str = "",
    ) -> None:
        """``server_extra``: more lines for the ``[server]`` section of the config."""
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        jwks = signer.write_jwks(tmp / "jwks.json")
        self.config = tmp / "svc.toml"
        allowed = ", ".join(f'"{url}"' for url in fhir_servers)
        self.config.write_text(
            f'[server]\nbase_url = "{self.base}"\n{server_extra}\n[store]\nurl = "{store_url}"\n'
            f'[packs]\ndir = "{_ROOT / "rule_packs"}"\n'
            f"[fhir]\nallow_http_loopback = {'true' if fhir_servers else 'false'}\n"
            f'[[auth.clients]]\niss = "{signer.iss}"\njwks_file = "{jwks}"\n'
            f"fhir_servers = [{allowed}]\n"
        )
        self.workers = workers
        self.log = tmp / "service.log"
        self._log = self.log.open("w")
        self.start()

    def start(self) -> None:
        """Start (or start again, on the same port) and wait until it is healthy."""
        command = [sys.executable, "-m", "cds", "serve", "--port", str(self.port),
                   "--config", str(self.config), "--workers", str(self.workers)]  # fmt: skip
        self.proc = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(self.log.read_text())
            time.sleep(0.2)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)
        self._log.close()


class _InProcess(httpx.BaseTransport):
    """httpx's ASGITransport for a sync client: each request runs on one event-loop
    thread (an anyio blocking portal), the app in the same process, no socket."""

    def __init__(self, app: Any, portal: Any) -> None:
        self._asgi = httpx.ASGITransport(app=app)
        self._portal = portal

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        async def send() -> httpx.Response:
            response = await self._asgi.handle_async_request(request)
            content = await response.aread()
            return httpx.Response(response.status_code, headers=response.headers,
                                  content=content, request=request)  # fmt: skip

        result: httpx.Response = self._portal.call(send)
        return result


@contextmanager
def in_process_transport(app: Any) -> Iterator[httpx.BaseTransport]:
    """A transport for sync httpx clients that calls ``app`` in-process, its lifespan
    running while the block runs."""
    from anyio.from_thread import start_blocking_portal

    with (
        start_blocking_portal() as portal,
        portal.wrap_async_context_manager(app.router.lifespan_context(app)),
    ):
        yield _InProcess(app, portal)
