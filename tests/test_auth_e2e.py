"""JWT bearer authentication per CDS Hooks 2.0: in-process, and over real HTTP where
it matters (the JWK Set fetched over TLS, the replay cache shared by two processes)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from cds.client import JwtSigner
from cds.examples import hook_request
from tests.conftest import ES_ISSUER, LiveService

PV = "runform-patient-view"


def _get(live: LiveService, url: str, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return live.get(url, headers=headers)


def _send(url: str, token: str) -> httpx.Response:
    """Over a new connection to a real port."""
    return httpx.get(url, headers={"Authorization": f"Bearer {token}"})


def _assert_bare_401(r: httpx.Response) -> None:
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert r.json()["issue"][0]["diagnostics"] == "unauthorized"


def test_es384_and_rs384_are_accepted(live: LiveService, rs_signer: JwtSigner) -> None:
    assert live.client.discovery().status_code == 200
    rs_client = live.cds_client(rs_signer)
    assert rs_client.call(PV, hook_request("patient-view", "p1")).status_code == 200


def test_no_token_is_401(live: LiveService) -> None:
    _assert_bare_401(_get(live, live.url + "/cds-services", None))


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_alg_none_is_rejected(live: LiveService) -> None:
    url = live.url + "/cds-services"
    now = int(time.time())
    header = {"alg": "none", "typ": "JWT", "kid": "k"}
    claims = {"iss": ES_ISSUER, "aud": url, "iat": now, "exp": now + 60, "jti": "n1"}
    _assert_bare_401(_get(live, url, f"{_b64(header)}.{_b64(claims)}."))


def test_hmac_is_rejected_even_with_the_public_key_as_secret(
    live: LiveService, es_signer: JwtSigner
) -> None:
    url = live.url + "/cds-services"
    now = int(time.time())
    secret = json.dumps(es_signer.jwks()["keys"][0]).encode()
    header = {"alg": "HS384", "typ": "JWT", "kid": es_signer.kid}
    claims = {"iss": ES_ISSUER, "aud": url, "iat": now, "exp": now + 60, "jti": "h1"}
    signing_input = f"{_b64(header)}.{_b64(claims)}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha384).digest()
    signature = base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    _assert_bare_401(_get(live, url, f"{signing_input}.{signature}"))


@pytest.mark.parametrize(
    "claims",
    [
        {"aud": "http://127.0.0.1:1/cds-services"},  # another URL
        {"iss": "https://evil.example.org"},  # not on the allowlist
        {"exp": int(time.time()) - 120, "iat": int(time.time()) - 400},  # expired
        {"iat": int(time.time()) + 600, "exp": int(time.time()) + 900},  # issued in the future
        {"exp": int(time.time()) + 7200},  # lifetime over one hour
        {"jti": None},  # no jti
    ],
)
def test_bad_claims_are_401(
    live: LiveService, es_signer: JwtSigner, claims: dict[str, Any]
) -> None:
    url = live.url + "/cds-services"
    overrides = {k: v for k, v in claims.items() if v is not None}
    token = es_signer.token(url, **overrides)
    if claims.get("jti", "") is None:
        payload = jwt.decode(token, options={"verify_signature": False})
        payload.pop("jti")
        token = jwt.encode(
            payload,
            es_signer.key,
            algorithm="ES384",  # type: ignore[arg-type]
            headers={"kid": es_signer.kid, "typ": "JWT"},
        )
    _assert_bare_401(_get(live, url, token))


def test_aud_must_be_the_exact_endpoint(live: LiveService, es_signer: JwtSigner) -> None:
    token = es_signer.token(live.url + "/cds-services")
    r = live.post_raw(
        f"{live.url}/cds-services/{PV}",
        json=hook_request("patient-view", "p1"),
        headers={"Authorization": f"Bearer {token}"},
    )
    _assert_bare_401(r)


def test_replayed_jti_is_rejected(live: LiveService, es_signer: JwtSigner) -> None:
    url = live.url + "/cds-services"
    token = es_signer.token(url)
    assert _get(live, url, token).status_code == 200
    _assert_bare_401(_get(live, url, token))


def test_signature_from_another_key_with_same_kid_is_rejected(
    live: LiveService, es_signer: JwtSigner
) -> None:
    impostor = JwtSigner(iss=ES_ISSUER, alg="ES384", kid=es_signer.kid)
    url = live.url + "/cds-services"
    _assert_bare_401(_get(live, url, impostor.token(url)))


def test_feedback_endpoint_checks_its_own_audience(live: LiveService, es_signer: JwtSigner) -> None:
    url = f"{live.url}/cds-services/{PV}"
    r = live.post_raw(
        url + "/feedback",
        json={"feedback": []},
        headers={"Authorization": f"Bearer {es_signer.token(url)}"},
    )
    _assert_bare_401(r)


def test_jku_keys_are_fetched_from_the_allowlisted_url(
    service_factory: Any, tmp_path: Path
) -> None:
    from fastapi import FastAPI

    from tests.servers import free_port, make_tls, serve

    signer = JwtSigner(iss="https://jku-ehr.example.org", alg="ES384")
    jwks_app = FastAPI()
    jwks_app.get("/jwks.json")(lambda: signer.jwks())
    port = free_port()
    tls = make_tls(tmp_path)
    with serve(jwks_app, port, tls=tls) as jwks_url:
        live = service_factory(
            auth={"clients": [{"iss": signer.iss, "jku": f"{jwks_url}/jwks.json"}]},
            server={"ca_file": str(tls.ca)},
        )
        client = live.cds_client(signer)
        assert client.discovery().status_code == 200
        wrong = JwtSigner(iss=signer.iss, alg="ES384")
        assert live.cds_client(wrong).discovery().status_code == 401


def test_auth_off_needs_explicit_setting_and_warns(
    service_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    live = service_factory(auth={"required": False})
    assert live.get("/cds-services").status_code == 200
    assert any("authentication is OFF" in r.message for r in caplog.records)


def test_tokens_never_reach_the_store_or_logs(
    fhir_live: Any, es_signer: JwtSigner, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    caplog.set_level(logging.DEBUG)
    live, base, behaviour = fhir_live
    body = hook_request("patient-view", "p1")
    from cds.examples import patient

    behaviour.resources["Patient"] = [patient("p1")]
    body["prefetch"].pop("patient")
    body["fhirServer"] = base
    body["fhirAuthorization"] = {
        "access_token": "SECRET-ACCESS-TOKEN-123",
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "user/Patient.read",
        "subject": "cds",
    }
    url = f"{live.url}/cds-services/{PV}"
    token = es_signer.token(url)
    r = live.post_raw(url, json=body, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200
    assert behaviour.requests[0]["authorization"] == "Bearer SECRET-ACCESS-TOKEN-123"
    db = Path(live.settings.store.url.removeprefix("sqlite:///")).read_bytes()
    wal = Path(live.settings.store.url.removeprefix("sqlite:///") + "-wal")
    everything = db + (wal.read_bytes() if wal.exists() else b"")
    for secret in ("SECRET-ACCESS-TOKEN-123", token):
        assert secret.encode() not in everything
        assert secret not in caplog.text


def test_replay_is_refused_across_worker_processes(tmp_path: Path, es_signer: JwtSigner) -> None:
    """Two `serve --workers 2` processes share the replay cache through the store."""
    from tests.servers import ServiceProcess

    svc = ServiceProcess(tmp_path, es_signer, f"sqlite:///{tmp_path}/t.db", workers=2)
    try:
        url = f"{svc.base}/cds-services"
        for _ in range(10):  # fresh connections spread over both workers
            token = es_signer.token(url)
            assert _send(url, token).status_code == 200
            statuses = {_send(url, token).status_code for _ in range(4)}
            assert statuses == {401}
    finally:
        svc.stop()
