"""How evaluation cost grows with the number of rules and with observations per call.

    ./benchmarks/run rules [--repeat N]

Rule count: the core pack's rules are cloned (new ids, same conditions) to
10 ... 1,000 rules and evaluated on the demo patient through ``decide``
(engine, independent cross-check and cards). Observations: 10 ... 5,000
Observations per call (repeat captures of the demo metrics on older dates)
go through parsing, fact building and ``decide`` on the bundled pack. Each
table compares every row with its first row (the baseline) in the same run.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cds.examples import demo_observations, patient, pfp_condition  # noqa: E402
from cds.fhir.codes import SITE_SIDES  # noqa: E402
from cds.fhir.facts import ClinicalData, FactSet, build_facts  # noqa: E402
from cds.fhir.observations import metric_observation  # noqa: E402
from cds.fhir.parse import Condition, Observation, Patient, parse_entries, validate  # noqa: E402
from cds.rules.compile import CompiledPack  # noqa: E402
from cds.rules.decide import decide  # noqa: E402
from cds.rules.engine import RuleEngine  # noqa: E402
from cds.rules.load import load_pack  # noqa: E402

CORE = ROOT / "rule_packs" / "runform-core" / "pack.yaml"
PATIENT = "bench"


def _timed(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up (registers rulesets)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def _service_call_ms(n_rules: int, folder: Path, calls: int) -> float:
    """Median ms of a patient-view call through the real app (JWT, prefetch, facts,
    engine, cross-check, cards, trace) with a pack of ``n_rules`` rules, in-process."""
    import asyncio

    import httpx

    from cds.client import JwtSigner
    from cds.config import Settings
    from cds.examples import hook_request, searchset
    from cds.service.app import create_app

    packs = folder / f"packs-{n_rules}"
    packs.mkdir()
    _pack_with(n_rules, packs)
    signer = JwtSigner(iss="urn:bench", alg="ES384")
    jwks = signer.write_jwks(folder / f"jwks-{n_rules}.json")
    settings = Settings.model_validate({
        "server": {"base_url": "http://bench"},
        "store": {"url": f"sqlite:///{folder}/traces-{n_rules}.db"},
        "packs": {"dir": str(packs), "watch_interval_s": 0, "allow_drafts": True},
        "auth": {"clients": [{"iss": "urn:bench", "jwks_file": str(jwks)}]},
    })  # fmt: skip
    app = create_app(settings)
    body = hook_request("patient-view", PATIENT, observations=demo_observations(PATIENT))
    body["prefetch"]["orders"] = body["prefetch"]["careplans"] = searchset([])
    url = "http://bench/cds-services/runform-patient-view"

    async def run() -> list[float]:
        times = []
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://bench") as client,
        ):
            for _ in range(calls + 1):
                headers = {"Authorization": f"Bearer {signer.token(url)}"}
                began = time.perf_counter()
                r = await client.post(url, json=body, headers=headers)
                times.append(time.perf_counter() - began)
                assert r.status_code == 200, r.text
        return times[1:]

    return statistics.median(asyncio.run(run())) * 1000


def _pack_with(n_rules: int, folder: Path) -> CompiledPack:
    data = yaml.safe_load(CORE.read_text())
    plain = [r for r in data["rules"] if not r.get("attach_to")]
    rules = []
    for i in range(n_rules):
        rule = copy.deepcopy(plain[i % len(plain)])
        rule["id"] = f"{rule['id']}-{i}"
        rules.append(rule)
    data["rules"] = rules
    data["version"] = f"0.0.{n_rules}-bench"
    path = folder / f"bench-{n_rules}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_pack(path, with_scenarios=False)


def _data(n_obs: int) -> ClinicalData:
    base = demo_observations(PATIENT)
    raw = list(base)
    now = datetime.now(UTC)
    i = 0
    while len(raw) < n_obs:
        src = base[i % len(base)]
        code = src["code"]["coding"][0]["code"]
        site = src.get("bodySite", {}).get("coding", [{}])[0].get("code")
        side = SITE_SIDES[site][0] if site in SITE_SIDES else None
        value = src.get("valueQuantity", {}).get("value", 1.0)
        raw.append(
            metric_observation(
                PATIENT,
                code,
                value,
                src["valueQuantity"]["code"],
                effective=now - timedelta(days=4 + i // len(base)),
                side=side,
                strides=12,
            )
        )
        i += 1
    observations, _ = parse_entries(raw[:n_obs], "bench", Observation)
    conditions, _ = parse_entries([pfp_condition(PATIENT)], "bench", Condition)
    return ClinicalData(
        patient=validate(Patient, patient(PATIENT)),
        observations=observations,
        conditions=conditions,
    )


def _table(title: str, unit: str, rows: list[tuple[int, float]]) -> None:
    base = rows[0][1]
    print(f"\n{title}")
    print(f"  {unit:>14}  {'median ms':>10}  {'x baseline':>10}  {'ms per item':>11}")
    for n, ms in rows:
        print(f"  {n:>14,}  {ms:>10.2f}  {ms / base:>10.2f}  {ms / n:>11.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    engine = RuleEngine()
    demo = _data(len(demo_observations(PATIENT)))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (10, 30, 100, 300, 1000):
            pack = _pack_with(n, Path(tmp))
            facts = build_facts(demo, pack.policy)

            def call(pack: CompiledPack = pack, facts: FactSet = facts) -> object:
                return decide(pack, engine, facts, hook="patient-view", patient_id=PATIENT)

            ms = _timed(call, args.repeat)
            rows.append((n, ms))
    _table("Rules per pack (demo patient, decide: engine + cross-check + cards)", "rules", rows)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [(n, _service_call_ms(n, Path(tmp), 7)) for n in (36, 1000)]
    _table("A patient-view call through the service (the app in-process: JWT, prefetch, "
           "facts, decide, trace)", "rules", rows)  # fmt: skip

    core = load_pack(CORE, with_scenarios=False)
    rows = []
    for n in (10, 100, 500, 1000, 5000):
        data = _data(n)

        def call(data: ClinicalData = data) -> object:
            facts = build_facts(data, core.policy)
            return decide(core, engine, facts, hook="patient-view", patient_id=PATIENT)

        rows.append((n, _timed(call, max(3, args.repeat // (1 + n // 1000)))))
    _table("Observations per call (runform-core, facts + decide)", "observations", rows)
    print(
        "\nBaseline = first row of each table, measured in this run. Rules scale with the "
        "number of single-pattern rules; observations are reduced to a fixed number of facts "
        "(latest value and baseline per metric and side) before the engine sees them."
    )


if __name__ == "__main__":
    main()
