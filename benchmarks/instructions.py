"""Instructions per served call: the latency benchmark's call, counted by valgrind.

    ./benchmarks/run instructions [--calls 30] [--baseline REF]

This VM's speed drifts by up to 2x within minutes, so CPU time per call moves
with it. The number of instructions a call executes does not: each service
(this tree, and with ``--baseline`` the tree of an older commit) is started
under valgrind's callgrind with counting off, warmed up with a few calls, and
then counted over ``--calls`` patient-view calls (60-Observation prefetch, a
fresh ES384 JWT and hookInstance each, SQLite traces), one at a time over
loopback, and over as many calls of the bare echo endpoint. Every thread of the
service process is counted, the trace writer too (run here as a thread, as
``store.writer = "thread"`` does, rather than in its own process); the kernel's
work (fsync, sockets) is not. The trees are run side by side, since a count does
not depend on what else the machine is doing.

Instructions are not time: under valgrind, OpenSSL picks its portable code
paths, so the ES384 verification and SHA-256 count more than they cost on the
real CPU. The figure to read is the ratio between two trees.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from cds.client import JwtSigner

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.latency import (  # noqa: E402
    SERVICE,
    trees_to_measure,
    write_config,
    write_inputs,
)

WARM_UP = 5
ENDPOINTS = {"patient-view": f"/cds-services/{SERVICE}", "bare echo": "/bench/echo"}


def _control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True)


def _wait_until_up(base: str, server: subprocess.Popen[bytes]) -> None:
    for _ in range(900):
        if server.poll() is not None:
            raise RuntimeError(f"the service exited with status {server.returncode}")
        try:
            if httpx.get(f"{base}/healthz", timeout=60).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.5)
    raise RuntimeError("the service did not start under valgrind")


class _Caller:
    """Sends the latency benchmark's body, with a fresh hookInstance and JWT per call."""

    def __init__(self, base: str, body: dict[str, object], signer: JwtSigner) -> None:
        self.base, self.body, self.signer = base, body, signer
        self.http = httpx.Client(timeout=300)

    def call(self, path: str) -> None:
        headers = {"content-type": "application/json"}
        if path.startswith("/cds-services/"):
            headers["authorization"] = f"Bearer {self.signer.token(self.base + path)}"
        body = json.dumps({**self.body, "hookInstance": str(uuid.uuid4())})
        answer = self.http.post(self.base + path, content=body, headers=headers)
        if answer.status_code != 200:
            raise RuntimeError(f"{path} answered {answer.status_code}: {answer.text[:300]}")


def _counted(dump: Path) -> int:
    for line in dump.read_text().splitlines():
        if line.startswith("summary:"):
            return int(line.split()[1])
    raise RuntimeError(f"{dump} holds no summary line")


def count(code: Path, port: int, calls: int, tmpdir: Path, signer: JwtSigner) -> dict[str, float]:
    """Instructions per call of each endpoint, for the service from source tree ``code``."""
    base = f"http://127.0.0.1:{port}"
    config = write_config(tmpdir, f"vg{port}", base)
    out = tmpdir / f"callgrind-{port}"
    env = {**os.environ, "RUNFORM_CDS_CONFIG": str(config), "PYTHONPATH": str(code),
           "PYTHONHASHSEED": "0"}  # fmt: skip
    if (code / "cds" / "audit" / "process_writer.py").exists():
        # valgrind watches one process: the trace writer runs as its thread, so that
        # its work is counted (by default it is a child process of its own)
        env["RUNFORM_CDS__STORE__WRITER"] = "thread"
    cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}.%p",
           sys.executable, str(ROOT / "benchmarks" / "serve_bench.py"), str(port), "1"]  # fmt: skip
    server = subprocess.Popen(
        cmd, env=env, cwd=code, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait_until_up(base, server)
        caller = _Caller(base, json.loads((tmpdir / "body.json").read_text()), signer)
        for path in ENDPOINTS.values():
            for _ in range(WARM_UP):
                caller.call(path)
        _control(server.pid, "--instr=on")
        per_call = {}
        for i, (name, path) in enumerate(ENDPOINTS.items(), start=1):
            for _ in range(calls):
                caller.call(path)
            time.sleep(0.5)  # the trace writer commits the last trace
            _control(server.pid, "--dump")
            per_call[name] = _counted(Path(f"{out}.{server.pid}.{i}")) / calls
        return per_call
    finally:
        server.terminate()
        server.wait(timeout=300)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=30, help="counted calls per endpoint")
    parser.add_argument("--baseline", metavar="REF", help="also count the service of this commit")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        print("valgrind is not installed: apt-get install valgrind", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="runform-instr-") as tmp:
        tmpdir = Path(tmp)
        signer = JwtSigner(iss="urn:bench-ehr", alg="ES384", lifetime_s=3600)
        write_inputs(tmpdir, signer)
        trees = trees_to_measure(args.baseline, tmpdir)
        first_port = 18600 + os.getpid() % 1000 * 2
        print(f"counting {args.calls} calls per endpoint, one at a time, under callgrind...")
        with ThreadPoolExecutor(len(trees)) as pool:
            jobs = [
                pool.submit(count, code, first_port + i, args.calls, tmpdir, signer)
                for i, (_, code) in enumerate(trees)
            ]
            counts = {label: job.result() for (label, _), job in zip(trees, jobs, strict=True)}
    print(f"{'code':<11} {'endpoint':<14} {'M instructions per call':>24}")
    for label, per_call in counts.items():
        for name, n in per_call.items():
            print(f"{label:<11} {name:<14} {n / 1e6:>24.2f}")
    if args.baseline:
        before, after = (counts[label]["patient-view"] for label, _ in trees)
        print(f"patient-view: {before / after:.2f}x fewer instructions per call than {trees[0][0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
