"""The deployment recipe in deploy/: validated, consistent, and its configuration runs.

Kubernetes manifests are checked against the API's own schemas (kubernetes-validate,
offline) for the oldest supported and the newest bundled version; the compose file
by Debian's docker-compose; the configuration both ship starts the real service.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml

from cds.config import Settings
from tests.servers import free_port

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = sorted((DEPLOY / "k8s").glob("*.yaml"))
OLDEST_K8S = "1.30.0"  # the preStop sleep action is on by default from 1.30


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _resource(kind: str) -> dict[str, Any]:
    return next(d for p in K8S for d in _docs(p) if d.get("kind") == kind)


@pytest.mark.parametrize("version", [OLDEST_K8S, kubernetes_validate.latest_version()])
@pytest.mark.parametrize("path", [p for p in K8S if p.name != "kustomization.yaml"],
                         ids=lambda p: p.name)  # fmt: skip
def test_manifest_is_valid_kubernetes(path: Path, version: str) -> None:
    for doc in _docs(path):
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_validator_refuses_a_broken_manifest() -> None:
    deployment = _resource("Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbe"]["httpGett"] = container["readinessProbe"].pop("httpGet")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, OLDEST_K8S, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    listed = set(_docs(DEPLOY / "k8s" / "kustomization.yaml")[0]["resources"])
    assert listed == {p.name for p in K8S} - {"kustomization.yaml"}


def test_probes_ports_and_budget_fit_the_service() -> None:
    deployment, service = _resource("Deployment"), _resource("Service")
    pdb = _resource("PodDisruptionBudget")
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    port = _config()["server"]["port"]
    assert container["ports"][0]["containerPort"] == port
    assert service["spec"]["ports"][0]["targetPort"] == container["ports"][0]["name"]
    labels = pod["metadata"]["labels"]
    for selector in (service["spec"]["selector"], pdb["spec"]["selector"]["matchLabels"]):
        assert selector.items() <= labels.items()
    assert 1 <= pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    secret_keys = set(_resource("Secret")["stringData"])
    assert {"RUNFORM_CDS__STORE__URL", "RUNFORM_CDS__SERVER__METRICS_TOKEN"} == secret_keys


def test_the_configmap_ships_the_recipe_configuration() -> None:
    data = _resource("ConfigMap")["data"]
    assert data["runform.toml"] == (DEPLOY / "runform.toml").read_text()
    assert data["ehr-jwks.json"] == (DEPLOY / "ehr-jwks.json").read_text()


def _config() -> dict[str, Any]:
    return tomllib.loads((DEPLOY / "runform.toml").read_text())


def test_the_recipe_configuration_starts_the_service(tmp_path: Path) -> None:
    """runform.toml as the containers mount it, with the Secret's variables set."""
    text = (DEPLOY / "runform.toml").read_text()
    text = text.replace("/etc/runform-cds/", f"{tmp_path}/").replace(
        "/opt/runform-cds/rule_packs", str(ROOT / "rule_packs")
    )
    (tmp_path / "runform.toml").write_text(text)
    shutil.copy(DEPLOY / "ehr-jwks.json", tmp_path)
    port = free_port()
    env = {
        "PATH": "/usr/bin:/bin",
        "RUNFORM_CDS__STORE__URL": f"sqlite:///{tmp_path / 'traces.db'}",
        "RUNFORM_CDS__SERVER__METRICS_TOKEN": "a-metrics-token-for-the-test",
        "RUNFORM_CDS__SERVER__HOST": "127.0.0.1",
        "RUNFORM_CDS__SERVER__PORT": str(port),
    }
    Settings.model_validate(tomllib.loads(text))
    serve = [sys.executable, "-m", "cds", "serve", "--config", str(tmp_path / "runform.toml")]
    proc = subprocess.Popen(
        serve, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_ready(f"{url}/readyz", proc)
        assert httpx.get(f"{url}/livez").status_code == 200
        metrics = httpx.get(f"{url}/metrics")
        assert metrics.status_code == 401  # the token from the Secret guards it
        auth = {"Authorization": "Bearer a-metrics-token-for-the-test"}
        assert httpx.get(f"{url}/metrics", headers=auth).status_code == 200
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0]
    assert '"level": "info"' in output  # log_format json: one event per line


def _wait_ready(url: str, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"the service did not become ready at {url}")


def _compose_config(folder: Path) -> subprocess.CompletedProcess[str]:
    compose = shutil.which("docker-compose")
    assert compose, "docker-compose (Debian package) is needed: ./scripts/test installs it"
    return subprocess.run([compose, "-f", str(folder / "compose.yaml"), "config", "-q"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def _recipe_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "deploy"
    shutil.copytree(DEPLOY, folder)
    shutil.copy(folder / "secrets.env.example", folder / "secrets.env")
    (folder / "postgres_password.txt").write_text("a-password\n")
    return folder


def test_the_compose_file_is_valid(tmp_path: Path) -> None:
    done = _compose_config(_recipe_copy(tmp_path))
    assert done.returncode == 0, done.stderr


def test_the_compose_validator_refuses_a_broken_file(tmp_path: Path) -> None:
    folder = _recipe_copy(tmp_path)
    compose = folder / "compose.yaml"
    compose.write_text(compose.read_text().replace("stop_grace_period:", "stop_grace_periods:"))
    done = _compose_config(folder)
    assert done.returncode != 0 and "stop_grace_periods" in done.stderr


def test_compose_load_balancer_and_replicas_agree() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    replicas = sorted(s for s in compose["services"] if s.startswith("cds"))
    lb = compose["services"]["lb"]["environment"]
    haproxy = (DEPLOY / "haproxy.cfg").read_text()
    assert len(replicas) >= 2
    for i, name in enumerate(replicas, start=1):
        assert lb[f"CDS{i}"] == f"{name}:{_config()['server']['port']}"
        assert f'server {name} "${{CDS{i}}}" check' in haproxy
    assert "option httpchk GET /readyz" in haproxy


def test_the_dockerfile_runs_the_service_unprivileged() -> None:
    lines = [ln.strip() for ln in (DEPLOY / "Dockerfile").read_text().splitlines()]
    froms = [ln.split()[1] for ln in lines if ln.startswith("FROM ")]
    assert froms and all(f.startswith("python:3.11") for f in froms)  # durable-rules: 3.11 only
    user = next(ln.split()[1] for ln in lines if ln.startswith("USER "))
    assert user.isdigit() and int(user) > 0
    assert f"EXPOSE {_config()['server']['port']}" in lines
    assert any("/readyz" in ln for ln in lines if ln.startswith(("HEALTHCHECK", "CMD")))
    for ln in lines:
        if ln.startswith("COPY ") and "--from=" not in ln:
            for source in ln.split()[1:-1]:
                assert (ROOT / source).exists(), f"Dockerfile copies {source}, which is missing"
