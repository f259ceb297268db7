"""CDS Hooks latency benchmark: patient-view with a 60-Observation prefetch.

Drives the real service (uvicorn, SQLite traces, signed ES384 JWTs)
with wrk at concurrency 1, 10 and 50 over loopback, next to a bare echo
endpoint of the same app that parses and returns the same payload, and prints
p50/p99 latency, throughput and the ratio between the two; then the cost of
each stage of one call (``stages.py``).

    ./benchmarks/run latency [--seconds 12] [--rounds 3] [--workers N[,M]] [--baseline REF]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx

from cds.client import JwtSigner
from cds.examples import demo_observations, hook_request, patient, pfp_condition, searchset
from cds.fhir.codes import METRICS_SYSTEM
from cds.fhir.parse import codes

ROOT = Path(__file__).resolve().parent.parent
SERVICE = "runform-patient-view"


def sixty_observations(pid: str) -> list[dict]:
    """60 Observations: five visits a week apart, each the demo runner's 12 (running
    pain, hip drop, hip adduction, knee flexion and overstride on both sides, cadence,
    eccentric hip abduction strength), with the hip drop and weakness larger at each
    earlier visit, so the latest-value and baseline logic has work to do and the rules
    take the clinical path: a strengthening plus gait-retraining card with its FHIR
    suggestions, and "no detectable change" cards for what has not moved.
    """
    out = []
    for visit, days_ago in enumerate((3, 10, 17, 24, 31)):
        observations = demo_observations(
            pid, days_ago=days_ago, right_pelvic_drop=7.5 + 1.5 * visit,
            right_abduction=1.2 - 0.05 * visit,
        )  # fmt: skip
        out += [
            o
            for o in observations
            if "foot-inclination-initial-contact" not in codes(o["code"], METRICS_SYSTEM)
        ]
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


def machine_ticks() -> tuple[int, int]:
    """(idle, all) clock ticks of every core so far, from /proc/stat (idle counts
    I/O wait; all counts steal and interrupts)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return fields[3] + fields[4], sum(fields[:8])


def connections_by_process(port: int) -> list[int]:
    """How many established connections to ``port`` each service process holds, most
    first (from ``ss``; empty if it is missing)."""
    try:
        listing = subprocess.run(
            ["ss", "-tnpH", "state", "established", f"( sport = :{port} )"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return []
    return sorted(Counter(re.findall(r"pid=(\d+)", listing)).values(), reverse=True)


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
    before, ticks_before = resource.getrusage(resource.RUSAGE_CHILDREN), machine_ticks()
    running = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    time.sleep(min(1.0, seconds / 2))
    held = connections_by_process(int(url.rsplit(":", 1)[1]))
    stdout, stderr = running.communicate()
    done = subprocess.CompletedProcess(cmd, running.returncode, stdout, stderr)
    after, ticks_after = resource.getrusage(resource.RUSAGE_CHILDREN), machine_ticks()
    idle = (ticks_after[0] - ticks_before[0]) / max(ticks_after[1] - ticks_before[1], 1)
    wrk_cpu_s = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
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
        #: cores wrk itself kept busy (it shares the machine with the service)
        "wrk_cores": wrk_cpu_s / (float(dur_us) / 1e6),
        #: cores nothing used meanwhile
        "idle_cores": idle * (os.cpu_count() or 1),
        #: the share of wrk's connections held by the busiest service process
        "busiest_share": held[0] / sum(held) if held else 1.0,
    }


def process_cpu_s(pid: int) -> float:
    """CPU seconds used so far by ``pid`` and its living descendants (uvicorn workers)."""
    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    used: dict[int, float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # the process ended while we looked
            continue
        fields = text[text.rindex(")") + 2 :].split()
        child = int(stat.parent.name)
        parents[child] = int(fields[1])
        used[child] = (int(fields[11]) + int(fields[12])) / tick
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        kids = [c for c, p in parents.items() if p == parent and c not in tree]
        tree.update(kids)
        frontier += kids
    return sum(used.get(p, 0.0) for p in tree)


def source_tree(ref: str, into: Path) -> Path:
    """The files of commit ``ref``, unpacked into ``into`` (no worktree left behind)."""
    into.mkdir()
    archive = subprocess.run(["git", "archive", ref], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def trees_to_measure(baseline: str | None, tmpdir: Path) -> list[tuple[str, Path]]:
    """(label, source tree) of each service to measure: this tree, after the tree of
    commit ``baseline`` if one is named."""
    trees = [("current", ROOT)]
    if baseline:
        trees.insert(0, (baseline[:9], source_tree(baseline, tmpdir / "baseline")))
    return trees


@contextmanager
def running_service(code: Path, config: Path, port: int, workers: int) -> Iterator[int]:
    """``benchmarks.bench_app`` from the source tree ``code``, served as ``runform-cds
    serve`` serves the service (``serve_bench.py``); yields its pid."""
    env = {**os.environ, "RUNFORM_CDS_CONFIG": str(config), "PYTHONPATH": str(code)}
    launcher = Path(__file__).with_name("serve_bench.py")
    cmd = [sys.executable, str(launcher), str(port), str(workers)]
    server = subprocess.Popen(cmd, env=env, cwd=code)
    try:
        for _ in range(300):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            raise RuntimeError(f"the service from {code} did not start")
        yield server.pid
    finally:
        server.terminate()
        server.wait(timeout=10)


def write_inputs(tmpdir: Path, signer: JwtSigner) -> None:
    """The request body wrk sends, and the key set the services trust."""
    signer.write_jwks(tmpdir / "jwks.json")
    body = hook_request("patient-view", "bench-1", observations=sixty_observations("bench-1"))
    body["prefetch"]["patient"] = patient("bench-1")
    body["prefetch"]["conditions"] = searchset([pfp_condition("bench-1")])
    body["hookInstance"] = "HOOK_INSTANCE"
    (tmpdir / "body.json").write_text(json.dumps(body))
    (tmpdir / "tokens.txt").write_text("")


def write_config(tmpdir: Path, name: str, base: str) -> Path:
    """One service's config: its address, its own trace store, the packs."""
    config = tmpdir / f"bench-{name}.toml"
    config.write_text(
        f'[server]\nbase_url = "{base}"\n[store]\nurl = "sqlite:///{tmpdir}/traces-{name}.db"\n'
        f'[packs]\ndir = "{ROOT / "rule_packs"}"\n'
        f'[[auth.clients]]\niss = "urn:bench-ehr"\njwks_file = "{tmpdir / "jwks.json"}"\n'
    )
    return config


Row = dict[str, float]


def measure_level(
    pid: int, base: str, level: int, tmpdir: Path, signer: JwtSigner, seconds: int
) -> dict[str, Row]:
    """wrk at one concurrency on the echo and on patient-view, with the service's CPU."""
    rows = {}
    for name, path, auth in (
        ("bare echo", "/bench/echo", False),
        ("patient-view", f"/cds-services/{SERVICE}", True),
    ):
        if auth:
            tokens = make_tokens(signer, base + path, 1200 * seconds)  # over any rate seen
            (tmpdir / "tokens.txt").write_text("\n".join(tokens) + "\n")
        cpu_before = process_cpu_s(pid)
        r = wrk(base, path, tmpdir, level, seconds, auth)
        r["cpu_ms"] = (process_cpu_s(pid) - cpu_before) * 1000 / max(r["requests"], 1)
        rows[name] = r
    return rows


def combine(rounds: list[Row]) -> Row:
    """Several rounds as one run: calls and CPU summed, latency percentiles averaged."""
    calls = sum(r["requests"] for r in rounds)
    seconds = sum(r["requests"] / r["rps"] for r in rounds if r["rps"])
    return {
        "requests": calls,
        "rps": calls / seconds if seconds else 0.0,
        "p50_ms": sum(r["p50_ms"] for r in rounds) / len(rounds),
        "p99_ms": sum(r["p99_ms"] for r in rounds) / len(rounds),
        "cpu_ms": sum(r["cpu_ms"] * r["requests"] for r in rounds) / max(calls, 1),
        "errors": sum(r["non2xx"] + r["socket_errors"] for r in rounds),
        "wrk_cores": sum(r["wrk_cores"] for r in rounds) / len(rounds),
        "idle_cores": sum(r["idle_cores"] for r in rounds) / len(rounds),
        "busiest_share": max(r["busiest_share"] for r in rounds),
    }


def print_level(label: str, level: int, rows: dict[str, Row]) -> None:
    for name, r in rows.items():
        print(
            f"{label:<11} {level:>4} {name:<20} {r['rps']:>7.0f} {r['p50_ms']:>8.2f} "
            f"{r['p99_ms']:>8.2f} {r['cpu_ms']:>7.2f} {r['errors']:>6.0f}"
        )
    pv, bare = rows["patient-view"], rows["bare echo"]
    print(
        f"{label:<11} {level:>4} {'ratio (pv / echo)':<20} {pv['rps'] / bare['rps']:>7.2f} "
        f"{pv['p50_ms'] / bare['p50_ms']:>8.1f} {pv['p99_ms'] / bare['p99_ms']:>8.1f} "
        f"{pv['cpu_ms'] / bare['cpu_ms']:>7.1f}"
    )
    left = (os.cpu_count() or 1) - pv["wrk_cores"]
    print(
        f"{label:<11} {level:>4} {'machine bound':<20} {left / pv['cpu_ms'] * 1000:>7.0f}"
        f"   (wrk used {pv['wrk_cores']:.2f} of {os.cpu_count()} cores; the {left:.2f} "
        f"left, all busy at {pv['cpu_ms']:.2f} ms a call; {pv['idle_cores']:.2f} idle)"
    )
    if pv["busiest_share"] < 1:
        print(
            f"{label:<11} {level:>4} {'connections':<20} {pv['busiest_share']:>7.0%}"
            "   (the most of wrk's connections one worker held, in any round)"
        )


def _spin(rounds: int) -> int:
    """The same small step ``rounds`` times (small integers only: each step costs alike)."""
    x = 1
    for _ in range(rounds):
        x = (x * 31 + 7) & 0xFFFF
    return x


def machine_jitter(task_ms: float, seconds: float = 6.0) -> tuple[float, float]:
    """p50 and p99 milliseconds of a fixed pure-CPU task of about ``task_ms``, run back
    to back on one core: what the machine alone does to a call that long (a VM's
    neighbours and the host take the core away at times)."""
    probe = 20_000
    for _ in range(50):  # the interpreter specialises the loop in its first runs
        _spin(probe)
    timings = []
    for _ in range(9):
        began = time.perf_counter()
        _spin(probe)
        timings.append(time.perf_counter() - began)
    per_round_s = sorted(timings)[len(timings) // 2] / probe
    rounds = max(1, int(task_ms / 1000 / per_round_s))
    taken: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        began = time.perf_counter()
        _spin(rounds)
        taken.append((time.perf_counter() - began) * 1000)
    taken.sort()
    return taken[len(taken) // 2], taken[min(len(taken) - 1, int(len(taken) * 0.99))]


def print_jitter(task_ms: float) -> None:
    """The floor this machine sets, right now, under p99/p50 at concurrency 1."""
    p50, p99 = machine_jitter(task_ms)
    print(
        f"{'machine':<11} {1:>4} {'fixed CPU task':<20} {'':>7} {p50:>8.2f} {p99:>8.2f}"
        f"   (p99/p50 {p99 / p50:.1f}: the same work every time, as long as a call at"
        " concurrency 1; above 1.0 is the machine's own jitter)"
    )


def print_scaling(tree: str, level: int, rows: list[Row], sizes: list[int]) -> None:
    """Calls/s of each service size against the first, with the bound the machine sets:
    the cores wrk leaves over the cores the first size kept busy."""
    first, cores = rows[0], os.cpu_count() or 1
    used = first["rps"] * first["cpu_ms"] / 1000
    for size, row in zip(sizes[1:], rows[1:], strict=True):
        bound = (cores - row["wrk_cores"]) / used
        print(
            f"{tree:<11} {level:>4} {f'calls/s x{size} / x{sizes[0]}':<20} "
            f"{row['rps'] / first['rps']:>7.2f}"
            f"   (bound {bound:.2f}: the {cores - row['wrk_cores']:.2f} cores wrk leaves over"
            f" the {used:.2f} that x{sizes[0]} kept busy)"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=12, help="per endpoint and concurrency")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="split each run into this many rounds, taken in turn on every service, so"
        " the machine's drift in speed hits them alike",
    )
    parser.add_argument("--levels", default="1,10,50")
    parser.add_argument(
        "--workers",
        default="1",
        help="service processes; a list (1,2) runs a service of each size side by side",
    )
    parser.add_argument(
        "--baseline",
        metavar="REF",
        help="also run the service as of this git commit, in the same run, in turn with"
        " the current one at each concurrency",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install wrk", file=sys.stderr)
        return 2
    first_port = 18000 + os.getpid() % 1000 * 4
    with tempfile.TemporaryDirectory(prefix="runform-bench-") as tmp, ExitStack() as running:
        tmpdir = Path(tmp)
        signer = JwtSigner(iss="urn:bench-ehr", alg="ES384", lifetime_s=900)
        write_inputs(tmpdir, signer)
        trees = trees_to_measure(args.baseline, tmpdir)
        sizes = [int(x) for x in args.workers.split(",")]
        services = []  # (label, pid, base): all started first, then measured in turn
        for i, ((label, code), workers) in enumerate(itertools.product(trees, sizes)):
            base = f"http://127.0.0.1:{first_port + i}"
            config = write_config(tmpdir, f"s{i}", base)
            pid = running.enter_context(running_service(code, config, first_port + i, workers))
            services.append((f"{label} x{workers}" if len(sizes) > 1 else label, pid, base))
        print(
            f"payload: {(tmpdir / 'body.json').stat().st_size / 1024:.0f} KiB, 60 Observations; "
            f"{args.seconds} s per run, in {args.rounds} rounds; {args.workers} process(es); "
            "SQLite traces (fsync); cpu = service CPU ms per call (wrk shares the cores)"
        )
        if len(services) > 1:
            print(
                "each concurrency is run on every service in turn, round by round, so drift"
                " hits them alike; latency percentiles are the mean of the rounds'"
            )
        print(
            f"{'code':<11} {'conc':>4} {'endpoint':<20} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8} "
            f"{'cpu ms':>7} {'errors':>6}"
        )
        share = max(1, args.seconds // args.rounds)
        for level in [int(x) for x in args.levels.split(",")]:
            taken: dict[str, list[dict[str, Row]]] = {label: [] for label, _, _ in services}
            for _ in range(args.rounds):
                for label, pid, base in services:
                    taken[label].append(measure_level(pid, base, level, tmpdir, signer, share))
            combined = {}
            for label, rounds in taken.items():
                names = rounds[0].keys()
                combined[label] = {n: combine([r[n] for r in rounds]) for n in names}
                print_level(label, level, combined[label])
            if level == 1:
                print_jitter(combined[services[-1][0]]["patient-view"]["p50_ms"])
            if len(sizes) > 1:
                for tree, _ in trees:
                    runs = [combined[f"{tree} x{w}"]["patient-view"] for w in sizes]
                    print_scaling(tree, level, runs, sizes)
    sys.path.insert(0, str(ROOT))
    from benchmarks.stages import measure, print_table

    print("\nwhere one call's CPU goes (in-process, mean of 300 calls):")
    print_table(measure(300))
    return 0


if __name__ == "__main__":
    sys.exit(main())
