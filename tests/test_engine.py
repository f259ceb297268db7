"""The durable-rules adapter, and the engine against the independent evaluator."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from cds.errors import EngineError
from cds.fhir.codes import metrics
from cds.fhir.facts import FactSet
from cds.rules import engine as engine_mod
from cds.rules.compile import RULESET_SIZE, CompiledPack
from cds.rules.decide import decide, stamp_facts
from cds.rules.engine import RuleEngine
from cds.rules.load import load_pack
from cds.rules.scenario import scenario_facts
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
    stamped = stamp_facts(facts, "patient-view")
    first = engine.evaluate(core_pack, stamped)
    for _ in range(50):
        again = engine.evaluate(core_pack, stamped)
        assert [(f.rule_id, f.index) for f in again.firings] == [
            (f.rule_id, f.index) for f in first.firings
        ]
    assert first.firings


def test_durable_rules_runs_no_background_threads(core_pack: CompiledPack) -> None:
    """durable's Host polled every ruleset from a new thread every 0.2 s, without a lock,
    into the engine an evaluation was using; ours starts none."""
    facts = _factset({"contralateral_pelvic_drop": 8.0}, {}, {"dx_patellofemoral_pain": 1})
    assert RuleEngine().evaluate(core_pack, stamp_facts(facts, "patient-view")).firings
    time.sleep(0.5)  # more than the dispatch cycle
    durable_threads = [
        t
        for t in threading.enumerate()
        if isinstance(t, threading.Timer) and t.function.__module__ == "durable.engine"
    ]
    assert durable_threads == []


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
    names = [name for stage in engine.load(core_pack) for name in stage]
    engine.evaluate(core_pack, [{"kind": "patient", "hook": "patient-view", "q_stale": 1, "n": 0}])
    host = engine_mod._shared_host()
    assert len(sids) == len(names)
    for name, sid in zip(names, sids, strict=True):
        with pytest.raises(Exception, match="309"):
            host.get_state(name, sid)


def test_an_exception_in_a_rule_action_fails_the_evaluation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = core_data()
    data["version"] = "9.9.9-action-failure"
    pack = load_pack(write_pack(tmp_path, data))

    def broken(rule_id: str, matched: dict[str, Any]) -> None:
        if rule_id != "__session__":
            raise RuntimeError(f"boom in {rule_id}")

    monkeypatch.setattr(engine_mod, "_run_action", broken)
    with pytest.raises(EngineError, match=r"a rule action failed.*boom in "):
        RuleEngine().evaluate(
            pack, [{"kind": "patient", "hook": "patient-view", "q_stale": 1, "n": 0}]
        )


def test_reloading_the_same_pack_version_is_idempotent(core_pack: CompiledPack) -> None:
    engine = RuleEngine()
    assert engine.load(core_pack) == engine.load(core_pack)


def test_large_packs_are_split_into_small_rulesets(tmp_path: Path) -> None:
    data = core_data()
    data["version"] = "9.9.9-large"
    template = next(r for r in data["rules"] if r["id"] == "q2-stale")
    data["rules"] = [{**template, "id": f"stale-{i}", "priority": i % 100} for i in range(120)]
    pack = load_pack(write_pack(tmp_path, data))
    engine = RuleEngine()
    _findings, rules = engine.load(pack)
    assert len(rules) == -(-120 // RULESET_SIZE)
    result = engine.evaluate(
        pack, [{"kind": "patient", "hook": "patient-view", "q_stale": 2, "n": 0}]
    )
    assert len({f.rule_id for f in result.firings}) == 120


_COMPARISONS = {"$gte", "$gt", "$lt", "$lte", "$neq", "$ex", "$nex"}


def _tested_values(pattern: Any, out: dict[str, set[Any]]) -> None:
    """Every fact field a compiled pattern tests, with the values it compares against."""
    if isinstance(pattern, list):
        for part in pattern:
            _tested_values(part, out)
        return
    for key, arg in pattern.items():
        if key in ("$and", "$or"):
            _tested_values(arg, out)
        elif key in _COMPARISONS:
            for fld, value in arg.items():
                out.setdefault(fld, set()).add(1 if key in ("$ex", "$nex") else value)
        else:
            out.setdefault(key, set()).add(arg)


def _fuzz_fields(pack: CompiledPack) -> tuple[dict[str, list[Any]], dict[str, list[Any]]]:
    """(lateral fields, patient-wide fields) the pack tests, engine-set flags left out."""
    tested: dict[str, set[Any]] = {}
    for item in [*pack.rules, *pack.findings]:
        _tested_values(item.pattern, tested)
    lateral_prefixes = tuple(m.field for m in metrics().values() if m.lateral)
    lateral, shared = {}, {}
    for fld, values in tested.items():
        if fld in ("kind", "hook") or fld.startswith("f_"):
            continue
        target = lateral if fld.startswith(lateral_prefixes) else shared
        target[fld] = sorted(values, key=str)
    return lateral, shared


def _random_value(rng: random.Random, candidates: list[Any]) -> Any:
    pick = rng.choice(candidates)
    if isinstance(pick, str):
        return rng.choice([*candidates, "good"])
    if pick == 1 and len(candidates) == 1:
        return 1
    if pick == 0:  # a count tested with "> 0"
        return rng.randint(0, 3)
    return pick if rng.random() < 0.2 else round(pick * rng.uniform(0.3, 1.7), 2)


def _random_fields(rng: random.Random, fields: dict[str, list[Any]], p: float) -> dict[str, Any]:
    return {f: _random_value(rng, c) for f, c in fields.items() if rng.random() < p}


@pytest.mark.parametrize("hook", ["patient-view", "order-select", "order-sign"])
def test_engine_agrees_with_the_independent_evaluator_on_random_facts(
    core_pack: CompiledPack, hook: str
) -> None:
    """decide() cross-checks every call and raises EngineError on any disagreement."""
    rng = random.Random(hook)
    engine = RuleEngine()
    lateral, shared = _fuzz_fields(core_pack)
    fired_rules: set[str] = set()
    for _ in range(400):
        patient = _random_fields(rng, shared, 0.3)
        left, right = _random_fields(rng, lateral, 0.5), _random_fields(rng, lateral, 0.5)
        facts = _factset(left, right, patient)
        decision = decide(core_pack, engine, facts, hook=hook, patient_id="p")
        fired_rules.update(f.rule_id for f in decision.fired)
    expected = {r.rule.id for r in core_pack.rules if hook in r.rule.hooks}
    assert fired_rules == expected  # every rule for the hook was exercised


def test_h35_cross_check_catches_an_engine_that_misses(
    core_pack: CompiledPack, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = RuleEngine.evaluate

    def lossy(self: RuleEngine, pack: CompiledPack, facts: list[dict[str, Any]]) -> Any:
        result = real(self, pack, facts)
        result.firings = result.firings[1:]
        return result

    monkeypatch.setattr(RuleEngine, "evaluate", lossy)
    facts = _factset({}, {}, {"q_stale": 1})
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


def test_every_engine_rule_matches_exactly_one_fact(core_pack: CompiledPack) -> None:
    """Join rules abort durable-rules at scale. Measured on what durable-rules is given
    (the registered rulesets) and on what it fires: one pattern per rule, and every
    firing is one whole fact of the call, never a combination."""
    from cds.rules.engine import _ruleset

    for stage in core_pack.stages():
        for chunk in stage:
            for rule_id, definition in _ruleset(chunk).items():
                assert set(definition) == {"all", "pri", "run"}, rule_id  # no "any"
                (pattern,) = definition["all"]
                assert set(pattern) == {"m"}, rule_id  # one fact, named m
    assert core_pack.scenarios is not None
    engine, fired = RuleEngine(), 0
    for scenario in core_pack.scenarios.scenarios[:60]:
        facts = scenario_facts(core_pack, core_pack.scenarios, scenario)
        stamped = stamp_facts(facts, scenario.hook)
        result = engine.evaluate(core_pack, stamped)
        for firing in [*result.findings, *result.firings]:
            fired += 1
            given = stamped[firing.index]
            assert {k: v for k, v in firing.fact.items() if k in given} == given
    assert fired > 100


# not "{strides}": the minimum stride count is a gate of fact building, not a limit the
# compiler converts (the gate is re-checked on the Observations: test_reread)
@pytest.mark.parametrize("unit", ["deg", "%", "N.m/kg", "s", "a", "d", "{score}"])
def test_a_bug_planted_in_the_compilers_unit_conversion_is_caught(
    unit: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reference evaluator converts units with its own table: a compiler that
    converted one unit wrongly (here 10 % off) gives the engine other limits, and
    the cross-check of the fuzzed calls exposes it, for every unit the pack uses."""
    from cds.errors import EngineDisagreementError
    from cds.fhir import units
    from cds.rules import compile as compiler
    from cds.rules.load import load_pack

    real = units.convert

    def off(value: float, given: str, dims: tuple[str, ...]) -> tuple[float, str]:
        converted, dim = real(value, given, dims)
        return (converted * 1.1 if given == unit else converted), dim

    monkeypatch.setattr(compiler, "convert", off)
    pack = load_pack(Path(__file__).resolve().parent.parent / "rule_packs" / "runform-core")
    pack.sha256 = f"planted-{unit}-{pack.sha256}"  # its own rulesets, not the real pack's
    rng, engine = random.Random(unit), RuleEngine()
    lateral, shared = _fuzz_fields(pack)
    for _ in range(2000):
        left, right = _random_fields(rng, lateral, 0.5), _random_fields(rng, lateral, 0.5)
        facts = _factset(left, right, _random_fields(rng, shared, 0.3))
        try:
            decide(pack, engine, facts, hook="patient-view", patient_id="p")
        except EngineDisagreementError as exc:
            assert "engine and reference evaluator disagree" in exc.message
            return
    pytest.fail(f"a wrong {unit!r} conversion in the compiler went unnoticed")


def test_the_reference_evaluator_compiles_safely_on_many_threads(
    core_pack: CompiledPack,
) -> None:
    """Calls run on several threads; a fresh pack's conditions are compiled while
    they do. Every thread must get what one thread alone gets."""
    import sys
    import threading

    from cds.rules.evaluate import ReferenceEvaluator

    assert core_pack.scenarios is not None
    facts = [
        fact
        for sc in core_pack.scenarios.scenarios[:40]
        for fact in stamp_facts(scenario_facts(core_pack, core_pack.scenarios, sc), "patient-view")
    ]
    rules = [(r.rule.id, r.scope, list(r.rule.hooks), r.rule.when) for r in core_pack.rules]
    alone = ReferenceEvaluator(core_pack.pack).expected_firings(rules, facts, "patient-view")
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        for _ in range(10):
            shared = ReferenceEvaluator(core_pack.pack)
            start, results = threading.Barrier(6), []

            def run(
                shared: ReferenceEvaluator = shared, start: Any = start, out: Any = results
            ) -> None:
                start.wait()
                out.append(shared.expected_firings(rules, facts, "patient-view"))

            threads = [threading.Thread(target=run) for _ in range(6)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert len(results) == 6 and all(r.keys() == alone.keys() for r in results)
    finally:
        sys.setswitchinterval(interval)


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        ('{"hip-drop":{"m":{"kind":"side","x":1.5,"id":"5f3a-12"}}}', ("hip-drop", 12)),
        ('{"finding:in_scope":{"m":{"id":"5f3a-0","kind":"patient"}}}', ("finding:in_scope", 0)),
        ('{"__session__":{"m":{"kind":"__session__","id":"5f3a-open"}}}', ("__session__", -1)),
        # another layout (spaces): parsed in full, with the same answer
        ('{"hip-drop": {"m": {"id": "5f3a-7", "kind": "side"}}}', ("hip-drop", 7)),
        # a value that looks like another session's id is not this session's marker
        ('{"r":{"m":{"note":"\\"id\\":\\"9e-4","id":"5f3a-2"}}}', ("r", 2)),
    ],
)
def test_an_action_is_read_for_its_rule_and_the_position_of_its_fact(
    action: str, expected: tuple[str, int]
) -> None:
    assert engine_mod._fired(action, "5f3a") == expected
