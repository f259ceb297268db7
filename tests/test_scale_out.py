"""Scale-out for real: three ``runform-cds serve`` replicas on loopback behind HAProxy
(Debian's package, running ``deploy/haproxy.cfg`` itself), one PostgreSQL.

Under continuous load one replica is killed with SIGKILL and started again: no
acknowledged call loses its trace, the chain verifies, a jti used at one
replica is refused by another, and HAProxy's /readyz checks take the dead
replica out and put it back. The failed-request count is reported.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cds.audit.store import open_store
from cds.client import JwtSigner
from cds.examples import hook_request
from tests.load import PV, Load
from tests.servers import ServiceProcess, free_port

ROOT = Path(__file__).resolve().parent.parent
LOAD_THREADS = 6


class HAProxy:
    """``haproxy -f deploy/haproxy.cfg`` in the foreground, its admin socket for state."""

    def __init__(self, folder: Path, port: int, replicas: list[ServiceProcess]) -> None:
        executable = shutil.which("haproxy") or "/usr/sbin/haproxy"
        if not Path(executable).exists():
            pytest.fail("haproxy (Debian package) is needed: ./scripts/test installs it")
        self.url = f"http://127.0.0.1:{port}"
        self.socket = folder / "haproxy.sock"
        env = os.environ | {"LB_BIND": f"127.0.0.1:{port}", "STATS_SOCK": str(self.socket)}
        env |= {f"CDS{i}": f"127.0.0.1:{r.port}" for i, r in enumerate(replicas, start=1)}
        self.log = (folder / "haproxy.log").open("w")
        self.proc = subprocess.Popen(
            [executable, "-db", "-f", str(ROOT / "deploy" / "haproxy.cfg")],
            env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def servers(self) -> dict[str, dict[str, str]]:
        """``show stat`` for the backend's servers: name -> columns (status, stot …)."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(self.socket))
            sock.sendall(b"show stat\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        rows = csv.DictReader(data.decode().lstrip("# ").splitlines())
        return {
            r["svname"]: r for r in rows if r["pxname"] == "replicas" and r["svname"] != "BACKEND"
        }

    def wait(self, what: str, check: Callable[[dict[str, dict[str, str]]], bool],
             timeout: float = 20) -> float:  # fmt: skip
        """Seconds until ``check(servers)`` holds."""
        began = time.monotonic()
        while time.monotonic() - began < timeout:
            try:
                if check(self.servers()):
                    return time.monotonic() - began
            except OSError:  # the socket is not there yet
                pass
            time.sleep(0.05)
        raise AssertionError(f"HAProxy: {what} within {timeout} s")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture
def topology(tmp_path: Path, es_signer: JwtSigner, pg_url: str) -> Iterator[Any]:
    lb_port = free_port()
    alias = f'base_url_aliases = ["http://127.0.0.1:{lb_port}"]'
    replicas = []
    for i in range(3):
        folder = tmp_path / f"replica{i + 1}"
        folder.mkdir()
        replicas.append(ServiceProcess(folder, es_signer, pg_url, server_extra=alias))
    lb = HAProxy(tmp_path, lb_port, replicas)
    try:
        yield replicas, lb
    finally:
        lb.stop()
        for replica in replicas:
            replica.stop()


def _up(name: str) -> Callable[[dict[str, dict[str, str]]], bool]:
    return lambda servers: servers[name]["status"].startswith("UP")


def _down(name: str) -> Callable[[dict[str, dict[str, str]]], bool]:
    return lambda servers: servers[name]["status"].startswith("DOWN")


def test_a_replica_killed_under_load_loses_no_acknowledged_trace(
    topology: Any, es_signer: JwtSigner, pg_url: str, record_property: Any
) -> None:
    replicas, lb = topology
    for name in ("cds1", "cds2", "cds3"):
        lb.wait(f"{name} up", _up(name))

    with Load(lb.url, es_signer, threads=LOAD_THREADS) as load:
        load.wait_for(60)
        _replay_is_refused_by_another_replica(replicas, lb.url, es_signer)

        victim = replicas[0]
        killed_at = time.monotonic()
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait(timeout=10)
        taken_out = lb.wait("the killed replica out", _down("cds1"))
        before = len(load.answered)
        load.wait_for(before + 40)  # the other two carry the load
        failed_during_kill = len(load.failed)

        victim.start()
        put_back = lb.wait("the restarted replica back", _up("cds1"))
        served = int(lb.servers()["cds1"]["stot"])
        lb.wait("calls on the restarted replica", lambda s: int(s["cds1"]["stot"]) > served + 5)
        load.wait_for(len(load.answered) + 40)

    kinds = Counter(call.detail for call in load.failed)
    report = (
        f"{len(load.answered)} calls answered, {len(load.failed)} failed {dict(kinds)} "
        f"({failed_during_kill} around the kill, {LOAD_THREADS} calls in flight at most); "
        f"dead replica out after {taken_out:.2f} s, back {put_back:.2f} s after its restart"
    )
    print(report)
    record_property("scale_out", report)
    # only calls in flight on the killed replica may fail, and only around the kill
    assert len(load.failed) <= LOAD_THREADS, load.failed
    assert all(call.at >= killed_at for call in load.failed), load.failed
    store = open_store(pg_url)
    try:
        lost = [h for h in load.answered if not store.records_for(h)]
        assert lost == []
        assert store.verify().ok
    finally:
        store.close()


def _replay_is_refused_by_another_replica(
    replicas: list[ServiceProcess], lb_url: str, signer: JwtSigner
) -> None:
    """One token, sent to replica 2 and then to replica 3 directly: the second is a replay."""
    token = signer.token(f"{lb_url}/cds-services/{PV}")
    body = hook_request("patient-view", "p1")
    headers = {"Authorization": f"Bearer {token}"}
    first = httpx.post(f"{replicas[1].base}/cds-services/{PV}", json=body, headers=headers)
    again = httpx.post(f"{replicas[2].base}/cds-services/{PV}", json=body, headers=headers)
    assert first.status_code == 200, first.text
    assert again.status_code == 401
    assert "jti replayed" in replicas[2].log.read_text()
