from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cds.config import load_settings
from cds.errors import ConfigError
from tests.conftest import ROOT
from tests.servers import free_port

FULL = """
[server]
base_url = "https://cds.example.org/"
[store]
url = "sqlite:///traces/runform.db"
[packs]
dir = "packs"
[auth]
required = true
[[auth.clients]]
iss = "https://ehr.example.org"
jwks_file = "ehr-jwks.json"
[[auth.clients]]
iss = "https://other.example.org"
jku = "https://other.example.org/.well-known/jwks.json"
[fhir]
timeout_s = 2.5
[cors]
origins = ["https://sandbox.cds-hooks.org"]
"""


def test_full_config_loads_and_resolves_paths_next_to_the_file(tmp_path: Path) -> None:
    path = tmp_path / "runform.toml"
    path.write_text(FULL)
    s = load_settings(path)
    assert s.server.public_base == "https://cds.example.org"
    assert s.store.url == f"sqlite:///{tmp_path / 'traces' / 'runform.db'}"
    assert s.packs.dir == tmp_path / "packs"
    assert s.auth.clients[0].jwks_file == tmp_path / "ehr-jwks.json"
    assert s.auth.clients[1].jku and s.fhir.timeout_s == 2.5
    assert s.cors.origins == ["https://sandbox.cds-hooks.org"]


def test_env_var_points_to_the_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[fhir]\ntimeout_s = 1.5\n")
    monkeypatch.setenv("RUNFORM_CDS_CONFIG", str(path))
    assert load_settings().fhir.timeout_s == 1.5


def test_defaults_use_embedded_storage_and_require_auth() -> None:
    s = load_settings()
    assert s.store.url.startswith("sqlite:///") and s.auth.required


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[server\n", "not valid TOML"),
        ("[fhir]\ntimeout_s = -1\n", "fhir.timeout_s"),
        ("[auth]\nalgorithms = ['HS256']\n", "no 'none', no HMAC"),
        ("[[auth.clients]]\niss = 'x'\n", "exactly one of jwks_file or jku"),
        ("[nonsense]\nx = 1\n", "nonsense"),
    ],
)
def test_bad_config_names_the_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_settings(path)
    assert str(path) in info.value.message


def test_cli_reports_config_errors_without_traceback(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[fhir]\ntimeout_s = 'slow'\n")
    done = subprocess.run(
        [sys.executable, "-m", "cds", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "fhir.timeout_s" in done.stderr and "Traceback" not in done.stderr


def test_demo_starts_the_service_and_shows_cards(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    config = tmp_path / "demo.toml"
    config.write_text(
        f'[store]\nurl = "sqlite:///{tmp_path}/demo.db"\n[packs]\ndir = "{ROOT / "rule_packs"}"\n'
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "cds",
            "demo",
            "--exit",
            "--port",
            str(port),
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "runform-patient-view" in out and "hook=order-select" in out
    assert "[WARNING] Hip drop/adduction while running (right)" in out
    assert "[WARNING] Strengthening alone is unlikely to change running mechanics" in out
    assert "[WARNING] Confirm before planning" in out  # the runner without a birth date
    assert "route to clinician" in out and "re-capture" in out
    assert "TRACE" in out and "r1-hip-drop-symptomatic on right" in out


def test_cors_preflight_and_headers(service_factory: Any) -> None:
    live = service_factory(cors={"origins": ["https://sandbox.cds-hooks.org"]})
    pre = live.fresh().options(
        f"{live.url}/cds-services/runform-patient-view",
        headers={
            "Origin": "https://sandbox.cds-hooks.org",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert pre.status_code == 200
    assert pre.headers["access-control-allow-origin"] == "https://sandbox.cds-hooks.org"
    assert "authorization" in pre.headers["access-control-allow-headers"].lower()
    other = live.fresh().options(
        f"{live.url}/cds-services",
        headers={"Origin": "https://evil.example.org", "Access-Control-Request-Method": "GET"},
    )
    assert "access-control-allow-origin" not in other.headers
    r = live.client.discovery()
    assert r.status_code == 200


def test_unknown_path_is_an_operation_outcome(live: Any) -> None:
    r = live.get("/nope")
    assert r.status_code == 404 and r.json()["resourceType"] == "OperationOutcome"
