"""Security regression tests: real attacks on the running service, all on loopback.

A small recording server stands in for the hosts an attacker would like the
service to reach; no traffic leaves 127.0.0.0/8. Each test is named after the
control it checks (docs/security.md lists them).
"""

from __future__ import annotations

import asyncio
import csv
import io
import os
import re
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.routing import APIRoute

from cds.audit.passwords import hash_password
from cds.audit.store import StoredRecord
from cds.client import JwtSigner
from cds.config import Settings
from cds.errors import ConfigError
from cds.examples import demo_observations, hook_request, patient, searchset
from cds.fhir.fetch import FetchError, _check_destination
from cds.service.app import PUBLIC_PATHS, create_app
from cds.service.server import MAX_HEADER_BYTES
from tests.conftest import ES_ISSUER, ROOT, LiveService
from tests.servers import free_port, serve

PV = "runform-patient-view"
OSIGN = "runform-order-sign"
PASSWORD = "correct horse battery"
AUTH = {
    "access_token": "TOKEN-FOR-THE-EHR",
    "token_type": "Bearer",
    "expires_in": 300,
    "scope": "user/Patient.read",
    "subject": "cds",
}


# -- a host the attacker would like us to reach ----------------------------------------------------


@dataclass
class Recorder:
    requests: list[dict[str, Any]] = field(default_factory=list)
    big_bytes: int = 0
    redirect_to: str | None = None


def recorder_app(rec: Recorder) -> FastAPI:
    app = FastAPI()

    @app.api_route("/{path:path}", methods=["GET", "POST"])
    async def anything(path: str, request: Request) -> Response:
        rec.requests.append(
            {"path": "/" + path, "authorization": request.headers.get("authorization")}
        )
        if rec.redirect_to:
            return RedirectResponse(rec.redirect_to, status_code=302)
        if rec.big_bytes:

            async def chunks() -> Any:
                yield b'{"resourceType": "Bundle", "type": "searchset", "entry": ['
                sent = 0
                piece = b'{"resource": {"resourceType": "Basic"}},' * 1000
                while sent < rec.big_bytes:
                    yield piece
                    sent += len(piece)
                yield b'{"resource": {"resourceType": "Basic"}}]}'

            return StreamingResponse(chunks(), media_type="application/fhir+json")
        if path.startswith("fhir/Patient"):
            return JSONResponse(patient("p1"))
        return JSONResponse(searchset([]))

    return app


@pytest.fixture
def recorder() -> Iterator[tuple[str, Recorder]]:
    rec = Recorder()
    with serve(recorder_app(rec), free_port()) as url:
        yield url, rec


def _fetch_body(fhir_server: str, pid: str = "p1") -> dict[str, Any]:
    body = hook_request("patient-view", pid)
    body["prefetch"].pop("patient")
    body["fhirServer"] = fhir_server
    body["fhirAuthorization"] = AUTH
    return body


def _trace(live: LiveService, body: dict[str, Any]) -> dict[str, Any]:
    [record] = live.store.records_for(body["hookInstance"])
    return record.body


# -- closed by default -----------------------------------------------------------------------------


def _app(tmp_path: Path, **sections: Any) -> FastAPI:
    data: dict[str, Any] = {
        "store": {"url": f"sqlite:///{tmp_path / 'routes.db'}"},
        "packs": {"dir": str(ROOT / "rule_packs")},
        "auth": {"clients": [{"iss": ES_ISSUER, "jwks_file": str(tmp_path / "jwks.json")}]},
        "viewer": {"users": [{"name": "a", "password_hash": hash_password("x", iterations=1000)}]},
        **sections,
    }
    JwtSigner(iss=ES_ISSUER).write_jwks(tmp_path / "jwks.json")
    return create_app(Settings.model_validate(data))


async def _unauthenticated(app: FastAPI, method: str, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8080") as c:
        return await c.request(method, path, data={} if method == "POST" else None)


def _routes(routes: list[Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    """Every (method, path) of the app, through included routers."""
    for r in routes:
        if isinstance(r, APIRoute):
            yield from ((m, prefix + r.path) for m in r.methods)
        elif hasattr(r, "original_router"):  # FastAPI includes routers lazily
            yield from _routes(r.original_router.routes, prefix + r.include_context.prefix)
        else:
            raise AssertionError(f"a route of an unexpected kind: {r!r}")


def test_every_route_needs_a_jwt_or_a_viewer_session(tmp_path: Path) -> None:
    """Enumerates the app's routes, so a route added later cannot slip through."""
    # /metrics has its own credential (a bearer token): unauthenticated, it is refused too
    app = _app(tmp_path, server={"openapi": True, "metrics": "token",
                                 "metrics_token": "a-metrics-token-for-tests"})  # fmt: skip
    routes = list(_routes(app.routes))
    assert len(routes) >= 12
    for method, template in routes:
        path = re.sub(r"\{[^}]+\}", "x", template)
        r = asyncio.run(_unauthenticated(app, method, path))
        if template in PUBLIC_PATHS:
            assert r.status_code < 500, (method, template)
        elif template.startswith("/audit"):
            # no session: the login page, or (a form post without its CSRF token) refused
            assert r.status_code in (303, 403), (method, template, r.status_code)
            if r.status_code == 303:
                assert r.headers["location"] == "/audit/login"
        else:
            assert r.status_code == 401, (method, template, r.status_code)
    assert {"/livez", "/readyz", "/healthz"} <= {p for _, p in routes}


def test_generated_docs_are_off_by_default(tmp_path: Path) -> None:
    app = _app(tmp_path)
    for path in ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"):
        assert asyncio.run(_unauthenticated(app, "GET", path)).status_code == 404, path


def test_openapi_when_enabled_is_behind_the_jwt(service_factory: Any, es_signer: Any) -> None:
    live = service_factory(server={"openapi": True})
    assert live.get("/openapi.json").status_code == 401
    url = f"{live.url}/openapi.json"
    r = live.get(url, headers={"Authorization": f"Bearer {es_signer.token(url)}"})
    assert r.status_code == 200 and r.json()["info"]["title"] == "runform-cds"


def test_health_endpoints_reveal_no_pack(live: LiveService) -> None:
    for path in ("/livez", "/readyz", "/healthz"):
        r = live.get(path)
        assert r.status_code == 200, path
        assert "runform-core" not in r.text and "sha256" not in r.text


def test_hardening_headers_and_no_server_header(service_factory: Any) -> None:
    users = [{"name": "a", "password_hash": hash_password("x", iterations=1000)}]
    live = service_factory(viewer={"users": users}, real_port=True)  # uvicorn's own headers
    for path in ("/livez", "/cds-services", "/audit/login", "/no-such-route"):
        r = live.get(path)
        assert r.headers["x-frame-options"] == "DENY", path
        assert r.headers["x-content-type-options"] == "nosniff", path
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"], path
        assert "server" not in r.headers, path


# -- 5xx leaves a trace ----------------------------------------------------------------------------


def test_a_5xx_carries_an_error_id_that_the_trace_holds(
    live: LiveService, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cds.rules.engine import RuleEngine

    def broken(*_: Any) -> Any:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(RuleEngine, "evaluate", broken)
    body = hook_request("patient-view", "p500")
    r = live.post(PV, body)
    assert r.status_code == 500
    text = r.json()["issue"][0]["diagnostics"]
    error_id = re.search(r"internal error (\w+)", text).group(1)  # type: ignore[union-attr]
    assert "disk on fire" not in text
    outcome = _trace(live, body)["outcome"]
    assert outcome["status"] == 500 and outcome["error_id"] == error_id
    assert "disk on fire" in outcome["message"]


def test_malformed_prefetch_is_a_4xx_with_a_trace(live: LiveService) -> None:
    body = hook_request("patient-view", "p-bad")
    body["prefetch"]["observations"] = {"resourceType": "Bundle", "type": "searchset", "entry": 5}
    r = live.post(PV, body)
    assert r.status_code == 400
    issue = r.json()["issue"][0]
    assert issue["expression"] == ["prefetch.observations.entry"]
    assert _trace(live, body)["outcome"]["status"] == 400


# -- finding 1: SSRF through fhirServer ------------------------------------------------------------


@pytest.mark.parametrize("listed", [(), ("https://fhir.hospital.example/r4",)])
def test_an_unlisted_fhir_server_is_never_contacted(
    service_factory: Any, recorder: tuple[str, Recorder], listed: tuple[str, ...]
) -> None:
    url, rec = recorder
    live = service_factory(fhir_servers=listed)
    body = _fetch_body(f"{url}/fhir")
    r = live.post(PV, body)
    assert r.status_code == 412
    assert rec.requests == []  # nothing reached the host, no token leaked
    diagnostics = r.json()["issue"][0]["diagnostics"]
    assert "127.0.0.1" not in diagnostics and "allowed" not in diagnostics
    detail = _trace(live, body)["outcome"]["detail"]
    assert ("not allowed for this client" if listed else "may not have the service fetch") in (
        detail
    )


def test_a_listed_server_over_plain_http_needs_the_loopback_development_switch(
    tmp_path: Path,
) -> None:
    clients = [{"iss": ES_ISSUER, "jwks_file": "j.json", "fhir_servers": ["http://10.0.0.5/fhir"]}]
    with pytest.raises(ValueError, match="must be https"):
        Settings.model_validate({"auth": {"clients": clients}})
    loopback = [{**clients[0], "fhir_servers": ["http://127.0.0.1:9/fhir"]}]
    with pytest.raises(ValueError, match="must be https"):
        Settings.model_validate({"auth": {"clients": loopback}})
    Settings.model_validate({"auth": {"clients": loopback}, "fhir": {"allow_http_loopback": True}})
    with pytest.raises(ValueError, match="must be https"):
        Settings.model_validate(
            {"auth": {"clients": clients}, "fhir": {"allow_http_loopback": True}}
        )


def test_credentials_in_fhir_server_are_refused_and_never_echoed_or_stored(
    live: LiveService,
) -> None:
    body = _fetch_body("https://admin:S3cretPassw0rd@127.0.0.1:9/fhir")
    r = live.post(PV, body)
    assert r.status_code == 400
    assert "S3cretPassw0rd" not in r.text
    db = Path(live.settings.store.url.removeprefix("sqlite:///"))
    stored = b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))
    assert b"S3cretPassw0rd" not in stored


def test_a_next_link_off_the_listed_base_is_not_followed(
    service_factory: Any, recorder: tuple[str, Recorder], fhir_server: Any
) -> None:
    attacker, rec = recorder
    base, behaviour = fhir_server
    live = service_factory(fhir_servers=(base,))
    behaviour.resources = {"Observation": demo_observations("p1"), "Patient": [patient("p1")]}
    behaviour.page_size = 2
    behaviour.next_link_base = attacker
    body = _fetch_body(base)
    body["prefetch"].pop("observations")
    assert live.post(PV, body).status_code == 412
    assert rec.requests == []


def test_redirects_are_not_followed(service_factory: Any, recorder: tuple[str, Recorder]) -> None:
    url, rec = recorder
    live = service_factory(fhir_servers=(f"{url}/fhir",))
    rec.redirect_to = "http://169.254.169.254/latest/meta-data/"
    body = _fetch_body(f"{url}/fhir")
    assert live.post(PV, body).status_code == 412
    assert len(rec.requests) == 1  # the listed server was asked once; the redirect was not taken
    assert "302" in _trace(live, body)["outcome"]["detail"]


@pytest.mark.parametrize(
    ("address", "loopback_ok", "refused"),
    [
        ("169.254.169.254", False, True),  # cloud metadata
        ("fe80::1", False, True),
        ("0.0.0.0", False, True),
        ("224.0.0.1", False, True),
        ("127.0.0.1", False, True),  # loopback, when the listed base is not
        ("127.0.0.1", True, False),
        ("10.1.2.3", False, False),  # a hospital's FHIR server on its own network
    ],
)
def test_destinations_are_checked_after_resolution(
    address: str, loopback_ok: bool, refused: bool
) -> None:
    host = f"[{address}]" if ":" in address else address
    check = _check_destination(f"https://{host}:8443/fhir", loopback_ok)
    if refused:
        with pytest.raises(FetchError, match="not allowed"):
            asyncio.run(check)
    else:
        asyncio.run(check)


# -- finding 2: unbounded responses ----------------------------------------------------------------


def test_an_oversized_fhir_response_is_cut_off_with_a_412_and_a_trace(
    service_factory: Any, recorder: tuple[str, Recorder]
) -> None:
    url, rec = recorder
    live = service_factory(fhir_servers=(f"{url}/fhir",), fhir={"max_response_bytes": 200_000})
    rec.big_bytes = 50_000_000  # 50 MB would be read whole without the budget
    body = _fetch_body(f"{url}/fhir")
    body["prefetch"].pop("observations")
    r = live.post(PV, body)
    assert r.status_code == 412
    assert "byte budget" in _trace(live, body)["outcome"]["detail"]


def test_fetched_resources_count_against_the_call_cap(
    service_factory: Any, fhir_server: Any
) -> None:
    base, behaviour = fhir_server
    live = service_factory(fhir_servers=(base,), server={"max_resources": 30})
    behaviour.resources = {"Observation": demo_observations("p1") * 3, "Patient": [patient("p1")]}
    body = _fetch_body(base)
    body["prefetch"].pop("observations")
    assert live.post(PV, body).status_code == 412
    assert "resource budget" in _trace(live, body)["outcome"]["detail"]


def test_too_many_resources_sent_is_a_413_with_a_trace(service_factory: Any) -> None:
    live = service_factory(server={"max_resources": 10})
    body = hook_request("patient-view", "p-many")
    r = live.post(PV, body)
    assert r.status_code == 413
    assert _trace(live, body)["outcome"]["status"] == 413


# -- finding 3: inbound strings in card text -------------------------------------------------------


def test_inbound_strings_never_reach_card_text(live: LiveService) -> None:
    evil = "](javascript:alert(1)) <img src=x onerror=alert(1)>"
    obs = demo_observations("p-x")
    obs[1]["valueQuantity"].update(unit=evil, code=evil)  # a pelvic drop in a nonsense unit
    obs[2]["id"] = "evil"
    obs[2]["code"]["coding"][0]["code"] = evil  # an unknown metric code
    squat = {
        **obs[5],
        "id": "squat",
        "code": {"coding": [{"system": obs[5]["code"]["coding"][0]["system"],
                             "code": "single-leg-squat-rating"}]},
        "valueCodeableConcept": {
            "coding": [{"system": "http://runform-cds.org/fhir/CodeSystem/findings", "code": evil}]
        },
    }  # fmt: skip
    squat.pop("valueQuantity")
    obs.append(squat)
    r = live.post(PV, hook_request("patient-view", "p-x", observations=obs))
    assert r.status_code == 200
    text = " ".join(c["summary"] + c["detail"] for c in r.json()["cards"])
    assert "could not be used" in text  # the set-aside inputs are reported ...
    for part in ("javascript", "<img", "onerror", "](", "<"):
        assert part not in text, part  # ... in our own words only


# -- finding 4: who called -------------------------------------------------------------------------


def test_traces_and_feedback_record_the_verified_client(
    live: LiveService, es_signer: JwtSigner
) -> None:
    body = hook_request("patient-view", "p-who")
    card = live.post(PV, body).json()["cards"][0]
    assert _trace(live, body)["client"]["iss"] == es_signer.iss
    item = {"card": card["uuid"], "outcome": "accepted",
            "acceptedSuggestions": [{"id": card["suggestions"][0]["uuid"]}],
            "outcomeTimestamp": "2026-11-30T10:00:00Z"}  # fmt: skip
    assert live.client.feedback(PV, [item]).status_code == 200
    feedback = live.store.records_for(body["hookInstance"])[1].body
    assert feedback["client"]["iss"] == es_signer.iss


def _override(card: dict[str, Any]) -> dict[str, Any]:
    return {
        "card": card["uuid"],
        "outcome": "overridden",
        "overrideReason": {"userComment": "x"},
        "outcomeTimestamp": "2026-11-30T10:00:00Z",
    }


def test_feedback_only_from_the_client_and_service_that_produced_the_card(
    live: LiveService, rs_signer: JwtSigner
) -> None:
    body = hook_request("patient-view", "p-own")
    card = live.post(PV, body).json()["cards"][0]
    item = _override(card)
    other = live.cds_client(rs_signer)
    try:
        assert other.feedback(PV, [item]).status_code == 404  # another client's card
    finally:
        other.close()
    assert live.client.feedback(OSIGN, [item]).status_code == 404  # another service
    assert len(live.store.records_for(body["hookInstance"])) == 1  # nothing recorded


def test_feedback_is_all_or_nothing_and_capped(service_factory: Any) -> None:
    live = service_factory(server={"max_feedback_items": 3})
    body = hook_request("patient-view", "p-fb")
    card = live.post(PV, body).json()["cards"][0]
    good = _override(card)
    unknown = {**good, "card": "00000000-0000-0000-0000-000000000000"}
    assert live.client.feedback(PV, [good, unknown]).status_code == 404
    assert len(live.store.records_for(body["hookInstance"])) == 1  # the good one was not kept
    many = [{**good, "overrideReason": {"userComment": str(i)}} for i in range(4)]
    assert live.client.feedback(PV, many).status_code == 413
    assert live.client.feedback(PV, many[:3]).status_code == 200
    assert len(live.store.records_for(body["hookInstance"])) == 4


# -- findings 5, 7, 11: the viewer -----------------------------------------------------------------


def _viewer(service_factory: Any, **viewer: Any) -> LiveService:
    users = [
        {"name": "auditor", "password_hash": hash_password(PASSWORD, iterations=1000)},
        {"name": "second", "password_hash": hash_password(PASSWORD, iterations=1000)},
    ]
    live: LiveService = service_factory(
        viewer={"users": users, "session_secret": "s" * 40, **viewer}
    )
    return live


def _login(client: httpx.Client, user: str, password: str) -> httpx.Response:
    page = client.get("/audit/login")
    token = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    return client.post("/audit/login", data={"username": user, "password": password, "csrf": token})


def test_viewer_logins_are_throttled_per_user_and_per_address(service_factory: Any) -> None:
    live = _viewer(service_factory, max_failures_per_user=5, max_failures_per_address=8)
    with live.fresh() as c:
        for _ in range(5):
            assert _login(c, "auditor", "wrong").headers["location"].endswith("error=1")
        locked = _login(c, "auditor", PASSWORD)  # the right password, too late
        assert locked.status_code == 429 and int(locked.headers["retry-after"]) > 0
        assert _login(c, "second", PASSWORD).status_code == 303  # another user still can
        for _ in range(3):
            _login(c, "nobody", "wrong")
        assert _login(c, "second", PASSWORD).status_code == 429  # the address is now locked


def test_unknown_and_known_users_cost_the_same_hash(
    monkeypatch: pytest.MonkeyPatch, service_factory: Any
) -> None:
    from cds.audit import viewer

    checked: list[str] = []
    real = viewer.verify_password

    def spy(password: str, stored: str) -> bool:
        checked.append(stored)
        return real(password, stored)

    monkeypatch.setattr(viewer, "verify_password", spy)
    live = _viewer(service_factory)
    with live.fresh() as c:
        _login(c, "nobody-by-this-name", "x")
        _login(c, "auditor", "x")
    assert len(checked) == 2
    assert checked[0].startswith("pbkdf2_sha256$240000$")  # the dummy costs the full work


def test_login_needs_the_csrf_token_and_refuses_cross_site_posts(service_factory: Any) -> None:
    live = _viewer(service_factory)
    with live.fresh() as c:
        c.get("/audit/login")
        no_token = c.post("/audit/login", data={"username": "auditor", "password": PASSWORD})
        assert no_token.status_code == 403
        page = c.get("/audit/login")
        token = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
        cross = c.post(
            "/audit/login",
            data={"username": "auditor", "password": PASSWORD, "csrf": token},
            headers={"Origin": "https://evil.example"},
        )
        assert cross.status_code == 403
        assert _login(c, "auditor", PASSWORD).status_code == 303


def test_a_session_ends_at_logout_everywhere_and_when_its_user_is_removed(
    service_factory: Any, tmp_path: Path
) -> None:
    live = _viewer(service_factory)
    with live.fresh() as c:
        assert _login(c, "auditor", PASSWORD).status_code == 303
        stolen = c.cookies.get("runform_audit")
        assert c.get("/audit/").status_code == 200
        page = c.get("/audit/")
        token = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
        assert c.post("/audit/logout", data={"csrf": token}).status_code == 303
    with live.fresh(cookies={"runform_audit": stolen}) as thief:
        assert thief.get("/audit/").status_code == 303  # the copied cookie no longer works
    # a second service on the same store and secret, with the user removed from its config
    with live.fresh() as c:
        _login(c, "second", PASSWORD)
        cookie = c.cookies.get("runform_audit")
    users = [{"name": "auditor", "password_hash": hash_password(PASSWORD, iterations=1000)}]
    other = service_factory(
        store={"url": live.settings.store.url},
        viewer={"users": users, "session_secret": "s" * 40},
    )
    with other.fresh(cookies={"runform_audit": cookie}) as c:
        assert c.get("/audit/").status_code == 303


def test_the_viewer_list_is_paged(service_factory: Any) -> None:
    live = _viewer(service_factory)
    for i in range(5):
        live.post(PV, hook_request("patient-view", f"p-page-{i}"))
    from cds.audit.store import TraceFilter

    first, more = live.store.search_page(TraceFilter(), size=2)
    second, _ = live.store.search_page(TraceFilter(), before=more, size=2)
    assert [r.seq for r, _ in first] == sorted((r.seq for r, _ in first), reverse=True)
    assert max(r.seq for r, _ in second) < min(r.seq for r, _ in first)
    with live.fresh() as c:
        _login(c, "auditor", PASSWORD)
        assert c.get("/audit/").status_code == 200


# -- finding 9: JWKS -------------------------------------------------------------------------------


def test_jku_over_plain_http_is_refused_in_the_configuration(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[[auth.clients]]\niss = "x"\njku = "http://127.0.0.1:9/jwks.json"\n')
    from cds.config import load_settings

    with pytest.raises(ConfigError, match="jku must be an https"):
        load_settings(config)


def test_one_bad_key_in_a_jwk_set_is_skipped_not_a_500(
    service_factory: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    signer = JwtSigner(iss="https://keys.example.org")
    jwks = signer.jwks()
    jwks["keys"].insert(0, {"kty": "EC", "kid": "broken", "crv": "P-384", "x": "AA", "y": "!"})
    path = tmp_path / "mixed-jwks.json"
    path.write_text(__import__("json").dumps(jwks))
    live = service_factory(auth={"clients": [{"iss": signer.iss, "jwks_file": str(path)}]})
    client = live.cds_client(signer)
    stranger = live.cds_client(JwtSigner(iss=signer.iss))  # an unknown kid
    try:
        assert client.discovery().status_code == 200
        assert stranger.discovery().status_code == 401
    finally:
        client.close()
        stranger.close()
    assert any("key 'broken' skipped" in r.getMessage() for r in caplog.records)


# -- finding 10: output injection ------------------------------------------------------------------


def test_csv_cells_that_a_spreadsheet_would_run_are_neutralised() -> None:
    from cds.audit.export import to_csv

    body = {
        "trace_id": "t", "service": "=cmd|'/C calc'!A0", "patient": "+1+1",
        "cards": [{"uuid": "u", "rule_id": "@SUM(1)", "indicator": "-2+3", "summary": "ok"}],
        "outcome": {"status": 200},
    }  # fmt: skip
    rec = StoredRecord(1, "trace", "t", "h", "2026-11-30", body, "0", "1")
    rows = list(csv.DictReader(io.StringIO(to_csv([(rec, [])]))))
    for column in ("service", "patient", "rule_id", "indicator"):
        assert rows[0][column].startswith("'"), column
    assert rows[0]["summary"] == "ok"


def test_audit_show_strips_terminal_control_characters(live: LiveService, tmp_path: Path) -> None:
    obs = demo_observations("p-esc")
    obs[1]["valueQuantity"].update(unit="\x1b[2J\x1b[31mdeg", code="\x1b[2J\x1b[31mdeg")
    body = hook_request("patient-view", "p-esc", observations=obs)
    assert live.post(PV, body).status_code == 200
    done = subprocess.run(
        [sys.executable, "-m", "cds", "audit", "show", body["hookInstance"], "--store",
         live.settings.store.url],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "does not fit" in done.stdout and "\x1b" not in done.stdout


# -- finding 11: the server ------------------------------------------------------------------------


def _closed_while_trickling(conn: socket.socket, byte: bytes = b"X") -> bool:
    """Send ``byte`` at a time until the server closes ``conn`` (True) or 8 s pass
    (False)."""
    started = time.monotonic()
    while time.monotonic() - started < 8:
        try:
            conn.sendall(byte)
            conn.settimeout(0.3)
            if conn.recv(1) == b"":
                return True
        except TimeoutError:
            continue
        except OSError:
            return True
    return False


def _answer(conn: socket.socket) -> bytes:
    """One whole HTTP answer with a Content-Length body, read from ``conn``."""
    conn.settimeout(8)

    def more() -> bytes:
        chunk = conn.recv(65536)
        if not chunk:
            raise AssertionError("the server closed the connection before it answered")
        return chunk

    data = b""
    while b"\r\n\r\n" not in data:
        data += more()
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        body += more()
    return head


def test_a_slow_client_is_cut_off(service_factory: Any) -> None:
    live = service_factory(server={"request_timeout_s": 1.0}, real_port=True)
    port = int(live.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as slow:
        slow.sendall(b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        assert _closed_while_trickling(slow), "a client trickling its headers kept the connection"
    with socket.create_connection(("127.0.0.1", port)) as kept:
        kept.sendall(b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert _answer(kept).startswith(b"HTTP/1.1 200")
        kept.sendall(b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # the next request
        assert _closed_while_trickling(kept), "a kept-alive connection trickled for ever"
    with socket.create_connection(("127.0.0.1", port)) as blank:
        blank.sendall(b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert _answer(blank).startswith(b"HTTP/1.1 200")
        # blank lines between requests are skipped by the parser, and begin no request
        assert _closed_while_trickling(blank, b"\r\n"), "blank lines held the connection"
    with socket.create_connection(("127.0.0.1", port)) as idle:
        idle.settimeout(8)
        assert idle.recv(1) == b""  # connected, sent nothing: closed too


def test_a_pipelined_request_waits_for_the_answer_before_it() -> None:
    """The deadline is for receiving a request, not for our own answer to the one
    before it: that answer is sent, then the half-sent request is cut off."""
    app = FastAPI()

    @app.get("/slow")
    async def slow() -> dict[str, bool]:
        await asyncio.sleep(2.0)  # past the deadline
        return {"ok": True}

    settings = Settings.model_validate({"server": {"request_timeout_s": 1.0}})
    with serve(app, free_port(), settings) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as conn:
            conn.sendall(b"GET /slow HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                         b"GET /slow HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # fmt: skip
            assert _answer(conn).startswith(b"HTTP/1.1 200")
            assert _closed_while_trickling(conn), "the half-sent request was kept for ever"


def test_request_headers_over_the_cap_get_a_400(service_factory: Any) -> None:
    live = service_factory(real_port=True)
    port = int(live.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        for _ in range(MAX_HEADER_BYTES // 1000 + 1):  # in pieces, as a slow client would
            conn.sendall(b"X-Padding: " + b"a" * 1000 + b"\r\n")
            time.sleep(0.01)
        assert _answer(conn).startswith(b"HTTP/1.1 400")
        assert conn.recv(1) == b""  # and the connection is closed
    with socket.create_connection(("127.0.0.1", port)) as conn:  # a long header just under
        padding = b"X-Padding: " + b"a" * (MAX_HEADER_BYTES - 200) + b"\r\n"
        conn.sendall(b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\n" + padding + b"\r\n")
        assert _answer(conn).startswith(b"HTTP/1.1 200")
    assert httpx.get(f"{live.url}/livez").status_code == 200


def test_trace_stores_are_created_owner_only(tmp_path: Path) -> None:
    from cds.audit.store import open_store

    path = tmp_path / "new" / "traces.db"
    store = open_store(f"sqlite:///{path}")
    store.append_trace({"trace_id": "t", "hook_instance": "h", "patient": "Patient/p"})
    for f in [path, *path.parent.glob("traces.db-*")]:
        assert stat.S_IMODE(os.stat(f).st_mode) == 0o600, f
    store.close()


def test_every_test_the_security_page_names_exists() -> None:
    page = (ROOT / "docs" / "security.md").read_text()
    named = set(re.findall(r"`(test_\w+)`", page))
    tests = "\n".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py"))
    assert len(named) >= 25
    missing = sorted(n for n in named if f"def {n}(" not in tests)
    assert missing == []
