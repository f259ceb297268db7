"""CDS Hooks latency benchmark: patient-view with a 60-Observation prefetch.

Drives the real service (uvicorn, SQLite traces, signed ES384 JWTs)
with wrk at concurrency 1, 10 and 50 over loopback, next to a bare echo
endpoint of the same app that parses and returns the same payload, and prints
p50/p99 latency, throughput and the ratio between the two; then the cost of
each stage of one call (``stages.py``).

    ./benchmarks/run latency [--seconds 10]
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
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import httpx

from cds.client import JwtSigner
from cds.examples import hook_request, patient, pfp_condition, searchset
from cds.fhir.observations import metric_observation

ROOT = Path(__file__).resolve().parent.parent
SERVICE = "runform-patient-view"


def sixty_observations(pid: str) -> list[dict]:
    """60 Observations: 10 visits x 6 metrics, so the latest-value logic has work to do."""
    from datetime import UTC, datetime, timedelta

    out = []
    for visit in range(10):
        when = datetime.now(UTC) - timedelta(days=2 + visit * 5)
        for code, unit, side, value in [
            ("contralateral-pelvic-drop", "deg", "right", 7.5),
            ("contralateral-pelvic-drop", "deg", "left", 3.1),
            ("peak-hip-adduction", "deg", "right", 21.0),
            ("peak-hip-adduction", "deg", "left", 14.5),
            ("hip-abduction-strength", "N.m/kg", "right", 1.2),
            ("hip-abduction-strength", "N.m/kg", "left", 1.65),
        ]:
            out.append(
                metric_observation(
                    pid, code, value + visit * 0.1, unit, side=side, strides=12, effective=when
                )
            )
    return out


def _sign(args: tuple[bytes, str, str, str, int]) -> list[str]:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    pem, kid, iss, aud, n = args
    key = load_pem_private_key(pem, password=None)
    signer = JwtSigner(iss=iss, alg="ES384", kid=kid, key=key)  # type: ignore[arg-type]
    return [signer.token(aud) for _ in range(n)]


def make_tokens(signer: JwtSigner, audience: str, n: int) -> list[str]:
    from cryptography.hazmat.primitives import serialization

    pem = signer.key.private_bytes(  # type: ignore[union-attr]
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    parts = [(pem, signer.kid, signer.iss, audience, n // 2 + 1)] * 2
    with ProcessPoolExecutor(2) as pool:
        return [t for chunk in pool.map(_sign, parts) for t in chunk]


def wrk(url: str, path: str, bench_dir: Path, connections: int, seconds: int, auth: bool) -> dict:
    threads = min(connections, 2)
    env = {
        **os.environ,
        "BENCH_DIR": str(bench_dir),
        "BENCH_THREADS": str(threads),
        "BENCH_PATH": path,
        "BENCH_AUTH": "1" if auth else "0",
    }
    cmd = [
        "wrk",
        "-t",
        str(threads),
        "-c",
        str(connections),
        "-d",
        f"{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(Path(__file__).with_name("wrk_cds.lua")),
        url,
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed: {done.stdout}\n{done.stderr}")
    out = done.stdout
    line = next(x for x in out.splitlines() if x.startswith("RESULT"))
    reqs, status_err, sock_err, p50, p99, dur_us = line.split()[1:]
    return {
        "requests": int(reqs),
        "non2xx": int(status_err),
        "socket_errors": int(sock_err),
        "p50_ms": float(p50) / 1000,
        "p99_ms": float(p99) / 1000,
        "rps": int(reqs) / (float(dur_us) / 1e6),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--levels", default="1,10,50")
    parser.add_argument("--workers", type=int, default=1, help="service processes")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install wrk", file=sys.stderr)
        return 2
    port = 18000 + os.getpid() % 1000
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="runform-bench-") as tmp:
        tmpdir = Path(tmp)
        signer = JwtSigner(iss="urn:bench-ehr", alg="ES384", lifetime_s=900)
        jwks = signer.write_jwks(tmpdir / "jwks.json")
        config = tmpdir / "bench.toml"
        config.write_text(
            f'[server]\nbase_url = "{base}"\n[store]\nurl = "sqlite:///{tmpdir}/traces.db"\n'
            f'[packs]\ndir = "{ROOT / "rule_packs"}"\n'
            f'[[auth.clients]]\niss = "urn:bench-ehr"\njwks_file = "{jwks}"\n'
        )
        body = hook_request("patient-view", "bench-1", observations=sixty_observations("bench-1"))
        body["prefetch"]["patient"] = patient("bench-1")
        body["prefetch"]["conditions"] = searchset([pfp_condition("bench-1")])
        body["hookInstance"] = "HOOK_INSTANCE"
        (tmpdir / "body.json").write_text(json.dumps(body))
        (tmpdir / "tokens.txt").write_text("")
        env = {**os.environ, "RUNFORM_CDS_CONFIG": str(config), "PYTHONPATH": str(ROOT)}
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "benchmarks.bench_app:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
                "--no-access-log",
                "--workers",
                str(args.workers),
            ],
            env=env,
            cwd=ROOT,
        )
        try:
            for _ in range(200):
                try:
                    if httpx.get(f"{base}/healthz").status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            else:
                raise RuntimeError("the service did not start")
            print(
                f"payload: {len(json.dumps(body)) / 1024:.0f} KiB, 60 Observations; "
                f"{args.seconds} s per run; {args.workers} service process(es); "
                "SQLite traces (fsync)"
            )
            print(
                f"{'conc':>4} {'endpoint':<22} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
                f"{'errors':>6}"
            )
            for level in [int(x) for x in args.levels.split(",")]:
                rows = {}
                for name, path, auth in (
                    ("bare echo", "/bench/echo", False),
                    ("patient-view", f"/cds-services/{SERVICE}", True),
                ):
                    if auth:
                        n = int(2500 * args.seconds * 1.5)
                        tokens = make_tokens(signer, base + path, n)
                        (tmpdir / "tokens.txt").write_text("\n".join(tokens) + "\n")
                    r = wrk(base, path, tmpdir, level, args.seconds, auth)
                    rows[name] = r
                    errors = r["non2xx"] + r["socket_errors"]
                    print(
                        f"{level:>4} {name:<22} {r['rps']:>8.0f} {r['p50_ms']:>8.2f} "
                        f"{r['p99_ms']:>8.2f} {errors:>6}"
                    )
                pv, bare = rows["patient-view"], rows["bare echo"]
                print(
                    f"{level:>4} {'ratio (pv / echo)':<22} {pv['rps'] / bare['rps']:>8.2f} "
                    f"{pv['p50_ms'] / bare['p50_ms']:>8.1f} {pv['p99_ms'] / bare['p99_ms']:>8.1f}"
                )
        finally:
            server.terminate()
            server.wait(timeout=10)
    sys.path.insert(0, str(ROOT))
    from benchmarks.stages import measure, print_table

    print("\nwhere one call's CPU goes (in-process, mean of 300 calls):")
    print_table(measure(300))
    return 0


if __name__ == "__main__":
    sys.exit(main())
