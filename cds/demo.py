"""``runform-cds demo``: start the service on embedded defaults and show cards.

A throw-away ES384 key pair is generated for a demo EHR client; nothing is
downloaded and no secret is kept.
"""

from __future__ import annotations

import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from cds.audit.render import render_records
from cds.audit.store import TraceStore
from cds.client import CdsClient, JwtSigner
from cds.config import AuthClient, Settings
from cds.examples import demo_observations, hook_request
from cds.service.app import create_app
from cds.service.server import server_config

__all__ = ["DEMO_ISSUER", "demo_settings", "run_demo"]

DEMO_ISSUER = "urn:runform-cds:demo-ehr"


def demo_settings(settings: Settings, port: int, jwks: Path) -> Settings:
    data = settings.model_dump()
    data["server"].update(base_url=f"http://127.0.0.1:{port}", port=port, host="127.0.0.1")
    data["auth"]["required"] = True
    data["auth"]["clients"] = [*settings.auth.clients, AuthClient(iss=DEMO_ISSUER, jwks_file=jwks)]
    return Settings.model_validate(data)


def _scenarios() -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (
            "Runner with patellofemoral pain, right hip weakness and right-stance hip drop",
            "runform-patient-view",
            hook_request("patient-view", "demo-runner"),
        ),
        (
            "Same runner: clinician selects a hip-strengthening order only",
            "runform-order-select",
            hook_request("order-select", "demo-runner"),
        ),
        (
            "16-year-old runner with the same findings",
            "runform-patient-view",
            hook_request("patient-view", "demo-teen", age_years=16),
        ),
        (
            "Same findings, but no birth date on record (age unknown: the plan waits)",
            "runform-patient-view",
            hook_request("patient-view", "demo-no-dob", age_years=None),
        ),
        (
            "Capture too short (5 strides per side)",
            "runform-patient-view",
            hook_request(
                "patient-view",
                "demo-short",
                observations=demo_observations("demo-short", strides=5),
            ),
        ),
    ]


def _print_cards(title: str, response: httpx.Response) -> None:
    print(f"\n=== {title}")
    if response.status_code != 200:
        print(f"  HTTP {response.status_code}: {response.text}")
        return
    cards = response.json()["cards"]
    if not cards:
        print("  (no cards)")
    for card in cards:
        print(f"  [{card['indicator'].upper()}] {card['summary']}")
        print(f"      source: {card['source']['label']}")
        for s in card.get("suggestions", []):
            print(f"      suggestion: {s['label']}")
        first = card["detail"].split("\n\n")[0].replace("\n", " ")
        print(textwrap.indent(textwrap.fill(first, 90), "      "))


def _wait_until_up(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"service did not start at {url}")


def _show(
    settings: Settings,
    signer: JwtSigner,
    server: uvicorn.Server,
    store: TraceStore,
    keep_serving: bool,
) -> None:
    base = settings.server.public_base
    _wait_until_up(base)
    client = CdsClient(base, signer)
    try:
        services = client.discovery().json()["services"]
        print(f"\nCDS Hooks discovery at {base}/cds-services:")
        for s in services:
            print(f"  {s['id']:<24} hook={s['hook']:<14} {s['title']}")
        first = ""
        for title, service_id, body in _scenarios():
            _print_cards(title, client.call(service_id, body))
            first = first or body["hookInstance"]
        print(f"\n=== Audit trace of the first call (runform-cds audit show {first}):\n")
        print(render_records(store.records_for(first)))
    finally:
        client.close()
    if keep_serving:
        print(f"Service running at {base} (Ctrl-C to stop).")
    else:
        server.should_exit = True


def run_demo(settings: Settings, *, port: int = 8080, keep_serving: bool = True) -> None:
    with tempfile.TemporaryDirectory(prefix="runform-demo-") as tmp:
        signer = JwtSigner(iss=DEMO_ISSUER, alg="ES384")
        jwks = signer.write_jwks(Path(tmp) / "demo-ehr-jwks.json")
        settings = demo_settings(settings, port, jwks)
        app = create_app(settings)
        server = uvicorn.Server(
            server_config(app, settings, host="127.0.0.1", port=port, log_level="warning")
        )
        shower = threading.Thread(
            target=_show,
            args=(settings, signer, server, app.state.runtime.store, keep_serving),
            daemon=True,
        )
        shower.start()
        server.run()
