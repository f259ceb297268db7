"""Real clients connect without workarounds: the CDS Hooks sandbox's habits (a jku header
with pinned keys, a trailing slash, another host name), diagnosable refusals, and draft
orders the pack does not know."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest

from cds.client import JwtSigner
from cds.examples import hook_request
from tests.conftest import ES_ISSUER, LiveService

SANDBOX_JKU = "https://sandbox.cds-hooks.org/.well-known/jwks.json"


def _get(
    live: LiveService, url: str, signer: JwtSigner, aud: str | None = None, **header: Any
) -> httpx.Response:
    token = signer.token(aud or url, **header)
    return live.get(url, headers={"Authorization": f"Bearer {token}"}, follow_redirects=False)


def _refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "rejected credentials" in r.getMessage()]


def test_a_pinned_client_sending_a_jku_header_is_accepted_and_nothing_is_fetched(
    service_factory: Any, es_signer: JwtSigner, caplog: pytest.LogCaptureFixture
) -> None:
    live = service_factory()
    url = f"{live.url}/cds-services"
    # the sandbox always sends its jku; this machine cannot reach it, and need not
    assert _get(live, url, es_signer, jku=SANDBOX_JKU).status_code == 200


def test_a_pinned_client_can_require_its_jku(
    service_factory: Any, es_signer: JwtSigner, caplog: pytest.LogCaptureFixture, tmp_path: Any
) -> None:
    caplog.set_level(logging.INFO)
    jwks = es_signer.write_jwks(tmp_path / "pinned.json")
    live = service_factory(auth={"clients": [
        {"iss": ES_ISSUER, "jwks_file": str(jwks), "accepted_jku": [SANDBOX_JKU]}]})  # fmt: skip
    url = f"{live.url}/cds-services"
    assert _get(live, url, es_signer, jku=SANDBOX_JKU).status_code == 200
    assert _get(live, url, es_signer).status_code == 200  # no jku header: the pinned keys decide
    refused = _get(live, url, es_signer, jku="https://attacker.example/jwks.json")
    assert (
        refused.status_code == 401 and refused.json()["issue"][0]["diagnostics"] == "unauthorized"
    )
    assert any("attacker.example" in m and "accepted_jku" in m for m in _refusals(caplog))


def test_discovery_with_a_trailing_slash_answers_without_a_redirect(
    service_factory: Any, es_signer: JwtSigner
) -> None:
    live = service_factory()
    answer = _get(live, f"{live.url}/cds-services/", es_signer)
    assert answer.status_code == 200 and answer.json()["services"]


def test_every_configured_base_url_is_a_valid_audience(
    service_factory: Any, es_signer: JwtSigner, caplog: pytest.LogCaptureFixture
) -> None:
    """A proxy or a second host name: the client signs for the address it knows."""
    caplog.set_level(logging.INFO)
    internal = "https://cds.internal.example"
    plain = service_factory()
    url = f"{plain.url}/cds-services"
    assert _get(plain, url, es_signer, aud=f"{internal}/cds-services").status_code == 401
    [why] = [m for m in _refusals(caplog) if "audience mismatch" in m]
    assert f"'{internal}/cds-services'" in why and f"'{url}'" in why  # received, expected
    aliased = service_factory(server={"base_url_aliases": [internal, "http://localhost:8080"]})
    url = f"{aliased.url}/cds-services"
    assert _get(aliased, url, es_signer, aud=f"{internal}/cds-services").status_code == 200
    assert _get(aliased, url, es_signer).status_code == 200  # base_url still works
    assert (
        _get(aliased, url, es_signer, aud="https://other.example/cds-services").status_code == 401
    )


def test_unknown_issuers_kids_and_origins_are_logged_with_their_values(
    service_factory: Any, es_signer: JwtSigner, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    live = service_factory(cors={"origins": ["https://sandbox.cds-hooks.org"]})
    url = f"{live.url}/cds-services"
    stranger = JwtSigner(iss="https://stranger.example", alg="ES384")
    assert _get(live, url, stranger).status_code == 401
    rotated = JwtSigner(iss=ES_ISSUER, alg="ES384", kid="rotated-key-7")
    assert _get(live, url, rotated).status_code == 401
    signed = {"Authorization": f"Bearer {es_signer.token(url)}"}
    answer = live.get(url, headers={"Origin": "https://evil.example", **signed})
    assert "access-control-allow-origin" not in answer.headers
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "issuer 'https://stranger.example' not on the allowlist" in logged
    assert "unknown kid 'rotated-key-7'" in logged
    assert "CORS: origin 'https://evil.example' is not in cors.origins" in logged
    token = es_signer.token(url)
    assert token not in logged  # values, never tokens


def test_a_draft_order_the_pack_does_not_know_is_traced_as_no_recognised_order(
    service_factory: Any,
) -> None:
    live = service_factory()
    medication = {"resourceType": "MedicationRequest", "id": "med-1", "status": "draft",
                  "intent": "proposal", "subject": {"reference": "Patient/p-7"},
                  "medicationCodeableConcept": {"text": "ibuprofen"}}  # fmt: skip
    imaging = {"resourceType": "ServiceRequest", "id": "mri-1", "status": "draft",
               "intent": "proposal", "subject": {"reference": "Patient/p-7"},
               "code": {"text": "MRI knee"}}  # fmt: skip
    body = hook_request("order-sign", "p-7", draft_orders=[medication, imaging])
    assert live.post("runform-order-sign", body).status_code == 200
    [trace] = [r for r in live.store.records_for(body["hookInstance"]) if r.kind == "trace"]
    unknown = {o["reference"]: o for o in trace.body["orders"] if o.get("recognised") is False}
    assert set(unknown) == {"MedicationRequest/med-1", "ServiceRequest/mri-1"}
