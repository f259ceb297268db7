"""Where one patient-view call spends its CPU: the stages of the service's own path,
timed in-process on the latency benchmark's payload (60 Observations).

    ./benchmarks/run stages [--calls 300]

Stages, in the order a call runs them: JSON (orjson), JWT (verify an ES384 token,
claim its jti), request (validate the CDS Hooks body), parse (prefetch into FHIR
models), facts, engine (durable-rules), cross-check (the reference evaluator),
cards (with the reference's re-reading of the used Observations), trace (append to
a SQLite store and fsync). ``latency.py`` prints this
table after its wrk runs.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.latency import sixty_observations  # noqa: E402
from cds.audit.store import open_store  # noqa: E402
from cds.client import JwtSigner  # noqa: E402
from cds.config import AuthSettings  # noqa: E402
from cds.examples import hook_request, patient, pfp_condition, searchset  # noqa: E402
from cds.fhir.facts import build_facts  # noqa: E402
from cds.rules import decide as decide_module  # noqa: E402
from cds.rules.engine import RuleEngine  # noqa: E402
from cds.rules.load import load_pack  # noqa: E402
from cds.service.auth import JwtVerifier  # noqa: E402
from cds.service.hooks import SERVICES, parse_request  # noqa: E402
from cds.service.operations import freeze_startup_objects  # noqa: E402
from cds.service.pipeline import _clinical_data  # noqa: E402
from cds.service.prefetch import Prefetched  # noqa: E402

STAGES = ("json", "jwt", "request", "parse", "facts", "engine", "cross-check", "cards", "trace")


class Clock:
    """Sums the time spent in each stage over many calls."""

    def __init__(self) -> None:
        self.spent: dict[str, list[float]] = defaultdict(list)

    def time(self, stage: str, fn: Callable[[], Any]) -> Any:
        began = time.perf_counter()
        out = fn()
        self.spent[stage].append(time.perf_counter() - began)
        return out

    def wrap(self, module: Any, name: str, stage: str) -> None:
        """Time every call of ``module.name`` as ``stage`` (inside another stage)."""
        inner = getattr(module, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            return self.time(stage, lambda: inner(*args, **kwargs))

        setattr(module, name, timed)


def _body() -> bytes:
    body = hook_request("patient-view", "bench-1", observations=sixty_observations("bench-1"))
    body["prefetch"]["patient"] = patient("bench-1")
    body["prefetch"]["conditions"] = searchset([pfp_condition("bench-1")])
    return orjson.dumps(body)


def measure(calls: int) -> dict[str, float]:
    """Mean milliseconds per call in each stage."""
    pack = load_pack(ROOT / "rule_packs" / "runform-core")
    engine = RuleEngine()
    svc = SERVICES["runform-patient-view"]
    raw = _body()
    signer = JwtSigner(iss="urn:bench", alg="ES384")
    clock = Clock()
    engine_evaluate = engine.evaluate
    engine.evaluate = lambda *a, **k: clock.time("engine", lambda: engine_evaluate(*a, **k))  # type: ignore[method-assign]
    clock.wrap(decide_module, "_cross_check", "cross-check")
    with tempfile.TemporaryDirectory() as tmp:
        jwks = signer.write_jwks(Path(tmp) / "jwks.json")
        auth = AuthSettings.model_validate(
            {"clients": [{"iss": "urn:bench", "jwks_file": str(jwks)}]}
        )
        store = open_store(f"sqlite:///{tmp}/traces.db")
        verifier = JwtVerifier(auth, httpx.AsyncClient(), store.claim_jti)
        aud = "http://127.0.0.1/cds-services/runform-patient-view"
        tokens = [f"Bearer {signer.token(aud)}" for _ in range(calls + 20)]
        loop = asyncio.new_event_loop()
        for i in range(calls + 20):
            if i == 20:  # warm-up done: rulesets registered, caches filled
                freeze_startup_objects()  # as the service does once it has started
                clock.spent.clear()
            body = clock.time("json", lambda: orjson.loads(raw))
            clock.time("jwt", lambda i=i: loop.run_until_complete(verifier.verify(tokens[i], aud)))
            req = clock.time("request", lambda b=body: parse_request(svc, b))
            data = clock.time(
                "parse", lambda r=req, b=body: _clinical_data(r, Prefetched(data=b["prefetch"]))
            )
            facts = clock.time("facts", lambda d=data: build_facts(d, pack.policy))
            decision = clock.time(
                "decide",
                lambda f=facts: decide_module.decide(
                    pack, engine, f, hook="patient-view", patient_id="bench-1"
                ),
            )
            trace = {"trace_id": f"t{i}", "hook_instance": f"h{i}", "cards": decision.cards}
            clock.time("trace", lambda t=trace: store.append_trace(t))
        loop.close()
        store.close()
    spent = {k: sum(v) / calls * 1000 for k, v in clock.spent.items()}
    inner = spent["engine"] + spent["cross-check"]
    spent["cards"] = spent.pop("decide") - inner
    return {stage: spent[stage] for stage in STAGES}


def print_table(spent: dict[str, float]) -> None:
    total = sum(spent.values())
    print(f"{'stage':<12} {'ms/call':>8} {'share':>6}")
    for stage, ms in spent.items():
        print(f"{stage:<12} {ms:>8.2f} {ms / total:>6.0%}")
    print(f"{'total':<12} {total:>8.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    spent = measure(args.calls)
    print(f"one patient-view call, 60 Observations, mean of {args.calls} calls, in-process")
    print_table(spent)

    return 0


if __name__ == "__main__":
    sys.exit(main())
