"""Loading and compiling rule packs: every problem is reported with where and why."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cds.errors import PackError
from cds.rules.compile import alternatives
from cds.rules.load import load_pack, load_serving_packs
from tests.packs import core_data, write_pack


def _rule(data: dict[str, Any], rule_id: str) -> dict[str, Any]:
    return next(r for r in data["rules"] if r["id"] == rule_id)


def test_core_pack_loads_and_every_rule_has_evidence(core_pack: Any) -> None:
    assert core_pack.pack.status == "active"
    ids = {r.rule.id for r in core_pack.rules}
    assert {
        "weakness-and-run-form-same-side",
        "strengthening-order-without-gait-retraining",
        "run-form-without-weakness",
        "weakness-without-run-form-impairment",
        "remeasure-too-few-strides",
        "under-18-route-to-clinician",
    } <= ids
    for r in core_pack.rules:
        assert r.rule.card.source.url and r.rule.card.evidence.strength in "ABCD"


def test_unverified_thresholds_are_not_labelled_evidence(core_pack: Any) -> None:
    t = core_pack.pack.thresholds
    assert t["hip_adduction_high"].provenance == "research"
    for name in ("pelvic_drop_high", "hip_abduction_low", "strength_lsi_low"):
        assert t[name].provenance == "placeholder"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda d: _rule(d, "remeasure-stale")["card"].update(summary="x" * 140),
            "must be under 140 characters",
        ),
        (
            lambda d: d["findings"]["run_form_impaired"]["any"].append(
                {"metric": "pelvic-dorp", "at_least": "pelvic_drop_high"}
            ),
            "unknown metric 'pelvic-dorp'",
        ),
        (
            lambda d: d["findings"]["run_form_impaired"]["any"].append(
                {"metric": "peak-hip-adduction", "at_least": "no_such"}
            ),
            "threshold 'no_such' is not defined",
        ),
        (lambda d: d["thresholds"]["pelvic_drop_high"].update(unit="N"), "does not fit"),
        (lambda d: d["rules"].append(d["rules"][0]), "duplicate rule id"),
        (
            lambda d: (
                d["findings"].update(loop={"finding": "loop"})
                or _rule(d, "remeasure-stale").update(when={"finding": "loop"})
            ),
            "refers to itself",
        ),
        (
            lambda d: _rule(d, "remeasure-stale")["card"].update(detail="{nonsense}"),
            "unknown placeholder",
        ),
        (
            lambda d: _rule(d, "remeasure-stale").update(when={"order": "yoga"}),
            "unknown plan 'yoga'",
        ),
        (
            lambda d: _rule(d, "remeasure-stale").update(when={"diagnosis": "gout"}),
            "value set 'gout' is not defined",
        ),
    ],
)
def test_semantic_problems_are_reported(tmp_path: Path, mutate: Any, message: str) -> None:
    data = core_data()
    mutate(data)
    with pytest.raises(PackError, match=message):
        load_pack(write_pack(tmp_path, data))


def test_schema_problems_carry_file_line_and_column(tmp_path: Path) -> None:
    data = core_data()
    data["rules"][0]["card"]["indicator"] = "urgent"
    path = write_pack(tmp_path, data)
    with pytest.raises(PackError) as info:
        load_pack(path)
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "urgent" in text)
    assert f"{path}:{line}:" in info.value.message
    assert "indicator" in info.value.message


def test_yaml_syntax_error_has_position(tmp_path: Path) -> None:
    path = tmp_path / "pack.yaml"
    path.write_text("id: x\nrules: [\n")
    with pytest.raises(PackError, match=r"pack.yaml:\d+:\d+: not valid YAML"):
        load_pack(path)


def test_overly_complex_rule_is_refused_before_the_engine_sees_it(tmp_path: Path) -> None:
    data = core_data()
    leaves = [
        {"not": {"metric": m, "below": "hip_abduction_low"}}
        for m in (
            "hip-abduction-strength",
            "hip-extension-strength",
            "hip-external-rotation-strength",
        )
    ]
    big = {"all": [{"any": [{"not": {"finding": "run_form_impaired"}}, *leaves]}] * 4}
    _rule(data, "remeasure-stale")["when"] = big
    with pytest.raises(PackError, match="too complex"):
        load_pack(write_pack(tmp_path, data))


def test_alternatives_counts_dnf_terms() -> None:
    leaf = {"$gt": {"a": 1}}
    assert alternatives({"$and": [{"$or": [leaf, leaf]}, {"$or": [leaf, leaf, leaf]}]}) == 6
    assert alternatives(leaf) == 1


def test_only_active_packs_in_their_period_serve(tmp_path: Path) -> None:
    active = core_data()
    draft = {**core_data(), "id": "draft-pack", "status": "draft"}
    future = {**core_data(), "id": "future-pack", "effective": {"start": "2999-01-01"}}
    for name, data in (("a", active), ("b", draft), ("c", future)):
        (tmp_path / name).mkdir()
        write_pack(tmp_path / name, data)
    assert [p.pack.id for p in load_serving_packs(tmp_path)] == ["runform-core"]
    ids = {p.pack.id for p in load_serving_packs(tmp_path, allow_drafts=True)}
    assert ids == {"runform-core", "draft-pack"}


def test_a_broken_pack_does_not_stop_the_good_ones(tmp_path: Path) -> None:
    (tmp_path / "good").mkdir()
    write_pack(tmp_path / "good", core_data())
    (tmp_path / "bad.yaml").write_text("id: [\n")
    assert [p.pack.id for p in load_serving_packs(tmp_path)] == ["runform-core"]


def test_no_serving_pack_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(PackError, match="no serving rule pack"):
        load_serving_packs(tmp_path)
