"""The durable-rules adapter, and the engine against the independent evaluator."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from cds.errors import EngineError
from cds.fhir.facts import FactSet
from cds.rules import engine as engine_mod
from cds.rules.compile import RULESET_SIZE, CompiledPack
from cds.rules.decide import decide
from cds.rules.engine import RuleEngine
from cds.rules.load import load_pack
from tests.packs import core_data, write_pack


def _factset(left: dict[str, Any], right: dict[str, Any], patient: dict[str, Any]) -> FactSet:
    return FactSet(
        patient={"kind": "patient", **patient},
        sides={
            "left": {"kind": "side", "side": "left", **patient, **left},
            "right": {"kind": "side", "side": "right", **patient, **right},
        },
        used=[],
        excluded=[],
    )


def test_same_facts_twice_never_trigger_duplicate_errors(core_pack: CompiledPack) -> None:
    engine = RuleEngine()
    facts = _factset(
        {"contralateral_pelvic_drop": 8.0, "contralateral_pelvic_drop__present": 1},
        {},
        {"dx_patellofemoral_pain": 1},
    )
    stamped = [{**f, "hook": "patient-view", "n": i} for i, f in enumerate(facts.all_facts())]
    first = engine.evaluate(core_pack, stamped)
    for _ in range(50):
        again = engine.evaluate(core_pack, stamped)
        assert [(f.rule_id, f.fact_id.split("-")[0] != "") for f in again.firings] == [
            (f.rule_id, True) for f in first.firings
        ]


def test_session_state_is_deleted_after_each_evaluation(
    core_pack: CompiledPack, monkeypatch: pytest.MonkeyPatch
) -> None:
    sids: list[str] = []
    real = engine_mod.uuid.uuid4

    def spy() -> Any:
        value = real()
        sids.append(value.hex)
        return value

    monkeypatch.setattr(engine_mod.uuid, "uuid4", spy)
    engine = RuleEngine()
    names = engine.load(core_pack)
    engine.evaluate(core_pack, [{"kind": "patient", "hook": "patient-view", "q_stale": 1, "n": 0}])
    host = engine_mod._shared_host()
    assert sids
    for name, sid in zip(names, sids, strict=False):
        with pytest.raises(Exception, match="309"):
            host.get_state(name, sid)


def test_an_exception_in_a_rule_action_fails_the_evaluation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = core_data()
    data["version"] = "9.9.9-action-failure"
    pack = load_pack(write_pack(tmp_path, data))

    def broken(rule_id: str) -> Any:
        def run(c: Any) -> None:
            raise RuntimeError(f"boom in {rule_id}")

        return run

    monkeypatch.setattr(engine_mod, "_action", broken)
    with pytest.raises(EngineError, match=r"a rule action failed.*boom in remeasure-stale"):
        RuleEngine().evaluate(
            pack, [{"kind": "patient", "hook": "patient-view", "q_stale": 1, "n": 0}]
        )


def test_reloading_the_same_pack_version_is_idempotent(core_pack: CompiledPack) -> None:
    engine = RuleEngine()
    assert engine.load(core_pack) == engine.load(core_pack)


def test_large_packs_are_split_into_small_rulesets(tmp_path: Path) -> None:
    data = core_data()
    data["version"] = "9.9.9-large"
    template = next(r for r in data["rules"] if r["id"] == "remeasure-stale")
    data["rules"] = [{**template, "id": f"stale-{i}", "priority": i % 100} for i in range(120)]
    pack = load_pack(write_pack(tmp_path, data))
    engine = RuleEngine()
    names = engine.load(pack)
    assert len(names) == -(-120 // RULESET_SIZE)
    result = engine.evaluate(
        pack, [{"kind": "patient", "hook": "patient-view", "q_stale": 2, "n": 0}]
    )
    assert len({f.rule_id for f in result.firings}) == 120


_METRIC_FIELDS = {
    "contralateral_pelvic_drop": (0.0, 12.0),
    "peak_hip_adduction": (5.0, 30.0),
    "hip_abduction_strength": (0.6, 2.4),
}


def _random_side(rng: random.Random) -> dict[str, Any]:
    side: dict[str, Any] = {}
    for fld, (lo, hi) in _METRIC_FIELDS.items():
        if rng.random() < 0.7:
            side[fld] = round(rng.uniform(lo, hi), 1)
            side[f"{fld}__present"] = 1
    if rng.random() < 0.5:
        side["contralateral_pelvic_drop__asym"] = round(rng.uniform(-6, 6), 1)
    if rng.random() < 0.5:
        side["hip_abduction_strength__lsi"] = round(rng.uniform(60, 140), 1)
    if rng.random() < 0.3:
        side["hip_extension_strength__lsi"] = round(rng.uniform(60, 140), 1)
    return side


def _random_patient(rng: random.Random) -> dict[str, Any]:
    p: dict[str, Any] = {}
    if rng.random() < 0.9:
        p["age_years"] = rng.choice([12, 17, 18, 30, 60])
    for key in (
        "dx_patellofemoral_pain",
        "dx_iliotibial_band_syndrome",
        "order_draft_hip_strengthening_program",
        "order_gait_retraining_video_feedback",
    ):
        if rng.random() < 0.4:
            p[key] = 1
    for key in ("q_low_strides", "q_stale", "q_excluded", "q_unreadable"):
        if rng.random() < 0.15:
            p[key] = rng.randint(1, 3)
    return p


@pytest.mark.parametrize("hook", ["patient-view", "order-select", "order-sign"])
def test_engine_agrees_with_the_independent_evaluator_on_random_facts(
    core_pack: CompiledPack, hook: str
) -> None:
    """decide() cross-checks every call and raises EngineError on any disagreement."""
    rng = random.Random(hook)
    engine = RuleEngine()
    fired_rules: set[str] = set()
    for _ in range(300):
        facts = _factset(_random_side(rng), _random_side(rng), _random_patient(rng))
        decision = decide(core_pack, engine, facts, hook=hook, patient_id="p")
        fired_rules.update(f.rule_id for f in decision.fired)
    expected = {r.rule.id for r in core_pack.rules if hook in r.rule.hooks}
    assert fired_rules == expected  # every rule for the hook was exercised


def test_cross_check_catches_an_engine_that_misses(
    core_pack: CompiledPack, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = RuleEngine.evaluate

    def lossy(self: RuleEngine, pack: CompiledPack, facts: list[dict[str, Any]]) -> Any:
        result = real(self, pack, facts)
        result.firings = result.firings[1:]
        return result

    monkeypatch.setattr(RuleEngine, "evaluate", lossy)
    facts = _factset({}, {}, {"age_years": 12})
    with pytest.raises(EngineError, match="disagree"):
        decide(core_pack, RuleEngine(), facts, hook="patient-view", patient_id="p")


def test_evaluation_where_nothing_matches_does_not_crash_the_process() -> None:
    """Regression: durable-rules' delete_state on a session where nothing matched aborts.

    Run in a child process so that a crash fails this test instead of killing pytest.
    """
    import subprocess
    import sys

    code = (
        "from cds.rules.load import load_pack\n"
        "from cds.rules.engine import RuleEngine\n"
        "p = load_pack('rule_packs/runform-core')\n"
        "e = RuleEngine()\n"
        "for _ in range(20):\n"
        "    r = e.evaluate(p, [{'kind': 'patient', 'hook': 'patient-view', 'n': 0}])\n"
        "    assert r.firings == [] and r.unmatched == 1\n"
        "print('survived')\n"
    )
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "survived" in done.stdout


def test_compiled_rules_are_single_pattern(core_pack: CompiledPack) -> None:
    """Join rules abort durable-rules at scale; the compiler never emits them."""
    for r in core_pack.rules:
        assert set(r.pattern) == {"$and"}
        assert r.pattern["$and"][0] == {"kind": r.scope}
