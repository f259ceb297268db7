"""A real FHIR R4 server for the tests: Medplum's FHIR router under Node, on loopback.

``tests/fhir_server/server.mjs`` hosts ``@medplum/fhir-router`` with its
in-memory repository (installed by ``./scripts/test`` with ``npm ci``). It
requires a bearer token, caps ``_count`` like production servers do (so
paging is real), and has test controls outside the FHIR base: reset, inject
failures on a path, list the requests it was sent.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.servers import free_port

SERVER_DIR = Path(__file__).resolve().parent / "fhir_server"
TOKEN = "medplum-test-token"


class Medplum:
    """A running Medplum FHIR server: its base URL, the token it wants, test controls."""

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self.base = f"{origin}/fhir"
        self.token = TOKEN
        self._http = httpx.Client(
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/fhir+json"},
            timeout=10.0,
        )

    def reset(self) -> None:
        self._http.post(f"{self.origin}/__test/reset").raise_for_status()

    def put(self, *resources: dict[str, Any]) -> None:
        """Store resources under their own ids (update-as-create)."""
        for res in resources:
            url = f"{self.base}/{res['resourceType']}/{res['id']}"
            self._http.put(url, json=res).raise_for_status()

    def search(self, query: str) -> dict[str, Any]:
        response = self._http.get(f"{self.base}/{query}")
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def fail(self, path: str, status: int, times: int = 1) -> None:
        """The next ``times`` requests to ``path`` (e.g. ``/fhir/Observation``) get ``status``."""
        fault = {"path": path, "status": status, "times": times}
        self._http.post(f"{self.origin}/__test/fault", json=fault).raise_for_status()

    def requests(self) -> list[dict[str, Any]]:
        """What the server was asked under the FHIR base since the last reset."""
        answer: list[dict[str, Any]] = self._http.get(f"{self.origin}/__test/requests").json()
        return answer

    def forget_requests(self) -> None:
        self._http.delete(f"{self.origin}/__test/requests").raise_for_status()

    def close(self) -> None:
        self._http.close()


def _check_installed() -> str:
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("the FHIR server tests need Node.js 20+ (`node` is not on PATH)")
    if not (SERVER_DIR / "node_modules" / "@medplum" / "fhir-router").is_dir():
        raise RuntimeError(
            f"Medplum is not installed: run `npm ci --prefix {SERVER_DIR}` (./scripts/test does)"
        )
    return node


def _wait_until_up(server: Medplum, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            server.requests()
            return
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            output = proc.stdout.read() if proc.stdout and proc.poll() is not None else ""
            raise RuntimeError(f"the Medplum FHIR server did not start: {output}")
        time.sleep(0.1)


@contextmanager
def medplum_server(max_count: int = 10) -> Iterator[Medplum]:
    """Start the server on a free loopback port; stop it afterwards."""
    port = free_port()
    cmd = [_check_installed(), "server.mjs", "--port", str(port), "--token", TOKEN]
    proc = subprocess.Popen(
        [*cmd, "--max-count", str(max_count)],
        cwd=SERVER_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    server = Medplum(f"http://127.0.0.1:{port}")
    try:
        _wait_until_up(server, proc)
        yield server
    finally:
        server.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
