"""Loading and compiling rule packs: every problem is reported with where and why."""

from __future__ import annotations

import re
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
        "r1-hip-drop-symptomatic",
        "t1-strengthening-order-alone",
        "r3-deviation-normal-strength",
        "r4-hip-weakness-acceptable-form",
        "q1-too-few-strides",
        "s2-under-18",
    } <= ids
    for r in core_pack.rules:
        assert r.rule.card.source.url
        assert all(ev.strength in "ABCD" for ev in r.rule.card.evidence)


def test_unverified_thresholds_are_not_labelled_evidence(core_pack: Any) -> None:
    t = core_pack.pack.thresholds
    assert t["hip_adduction_high"].provenance == "research"
    for name in (
        "pelvic_drop_high",
        "strength_norm_cut",
        "strength_lsi_low",
        "severe_running_pain",
    ):
        assert t[name].provenance == "placeholder"


def _reported(path: Path, message: str) -> list[tuple[str, str, str]]:
    """(text of the reported line, code, hint) for each problem in ``message``."""
    lines = path.read_text().splitlines()
    out = []
    for block in message.split(f"{path}:")[1:]:
        line_no = int(block.split(":")[0])
        code = re.search(r"\[((?:pack|scenario)-[a-z-]+)\]", block).group(1)  # type: ignore[union-attr]
        hint = block.split("hint: ")[1].strip() if "hint: " in block else ""
        out.append((lines[line_no - 1], code, hint))
    return out


def _summary_too_long(d: dict[str, Any]) -> None:
    _rule(d, "q2-stale")["card"]["summary"] = "LONG " + "x" * 140


def _unknown_metric(d: dict[str, Any]) -> None:
    d["findings"]["run_form_impaired"]["when"]["any"].append(
        {"metric": "contralateral-pelvic-dorp", "at_least": "pelvic_drop_high"}
    )


def _undefined_threshold(d: dict[str, Any]) -> None:
    d["findings"]["run_form_impaired"]["when"]["any"].append(
        {"metric": "peak-hip-adduction", "at_least": "hip_adduction_hihg"}
    )


def _wrong_unit(d: dict[str, Any]) -> None:
    d["thresholds"]["pelvic_drop_high"]["unit"] = "N"


def _duplicate(d: dict[str, Any]) -> None:
    d["rules"].append({**d["rules"][0], "title": "DUPLICATE"})


def _no_citation(d: dict[str, Any]) -> None:
    _rule(d, "q2-stale")["card"]["source"] = {"label": "NO-CITATION"}


def _cycle(d: dict[str, Any]) -> None:
    d["findings"]["loop"] = {"finding": "loop"}
    _rule(d, "q2-stale")["when"] = {"finding": "loop"}


def _placeholder(d: dict[str, Any]) -> None:
    _rule(d, "q2-stale")["card"]["detail"] = "PLACEHOLDER {nonsense}"


def _unknown_plan(d: dict[str, Any]) -> None:
    _rule(d, "q2-stale")["when"] = {"order": "gait-retrainng-video-feedback"}


def _unknown_value_set(d: dict[str, Any]) -> None:
    _rule(d, "q2-stale")["when"] = {"diagnosis": "patellofemoral-pian"}


def _attach_unknown(d: dict[str, Any]) -> None:
    _rule(d, "r9-education")["attach_to"].append("r1-hip-drop-symptomatc")


def _undeclared_data_use(d: dict[str, Any]) -> None:
    d["source_attributes"]["data_use"]["sex"] = False


def _norm_missing(d: dict[str, Any]) -> None:
    d["findings"]["hip_weakness"]["when"]["any"].append(
        {"metric": "hip-extension-strength", "measure": "norm", "below": "strength_norm_cut"}
    )


def _plan_undefined(d: dict[str, Any]) -> None:
    del d["plans"]["cadence-retraining"]


def _never_shows(d: dict[str, Any]) -> None:
    _rule(d, "q2-stale")["show"] = "when-suppressing"


def _plan_placeholder(d: dict[str, Any]) -> None:
    _rule(d, "q2-stale")["card"]["detail"] = "PLAN {plan:gait-retrainig}"


def _evidence_value_set(d: dict[str, Any]) -> None:
    _rule(d, "q2-stale")["card"]["evidence"] = [
        {"strength": "D", "label": "x", "diagnoses": ["patellofemoral-pian"]}
    ]


@pytest.mark.parametrize(
    ("mutate", "code", "on_line", "hint"),
    [
        (
            _attach_unknown,
            "pack-unknown-rule",
            "symptomatc",
            "did you mean 'r1-hip-drop-symptomatic'",
        ),
        (_undeclared_data_use, "pack-undeclared-data-use", "sex: false", "HTI-1"),
        (_norm_missing, "pack-no-norm", "measure: norm", "define it under norms"),
        (_plan_undefined, "pack-undefined-plan", "plan: cadence-retraining", "under plans:"),
        (_never_shows, "pack-show-never", "show: when-suppressing", "suppresses"),
        (_plan_placeholder, "pack-unknown-placeholder", "PLAN", "{plan:PLAN}"),
        (_evidence_value_set, "pack-unknown-value-set", "patellofemoral-pian", "did you mean"),
        (_summary_too_long, "pack-summary-too-long", "LONG", "shorten"),
        (
            _unknown_metric,
            "pack-unknown-metric",
            "pelvic-dorp",
            "did you mean 'contralateral-pelvic-drop'",
        ),
        (
            _undefined_threshold,
            "pack-unknown-threshold",
            "hip_adduction_hihg",
            "did you mean 'hip_adduction_high'",
        ),
        (_wrong_unit, "pack-unit-mismatch", "unit: N", "unit of the metric's kind"),
        (_duplicate, "pack-duplicate-rule", "id: q1-too-few-strides", "own id"),
        (_no_citation, "pack-missing-citation", "source", "DOI"),
        (_cycle, "pack-finding-cycle", "finding: loop", "may not use itself"),
        (_placeholder, "pack-unknown-placeholder", "PLACEHOLDER", "{side}"),
        (_unknown_plan, "pack-unknown-plan", "gait-retrainng", "did you mean"),
        (
            _unknown_value_set,
            "pack-unknown-value-set",
            "patellofemoral-pian",
            "did you mean 'patellofemoral-pain'",
        ),
    ],
)
def test_problems_name_file_line_column_code_and_a_fix(
    tmp_path: Path, mutate: Any, code: str, on_line: str, hint: str
) -> None:
    data = core_data()
    mutate(data)
    path = write_pack(tmp_path, data)
    with pytest.raises(PackError) as info:
        load_pack(path)
    reported = _reported(path, info.value.message)
    matching = [r for r in reported if r[1] == code]
    assert matching, info.value.message
    line, _, fix = matching[0]
    assert on_line in line, (line, info.value.message)
    assert hint in fix


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
    _rule(data, "q2-stale")["when"] = big
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


def test_packs_validate_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cds.cli import main
    from tests.conftest import ROOT

    assert main(["packs", "validate", str(ROOT / "rule_packs")]) == 0
    assert f"OK  runform-core {core_data()['version']}" in capsys.readouterr().out
    data = core_data()
    _unknown_metric(data)
    path = write_pack(tmp_path, data)
    assert main(["packs", "validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}:" in err and "[pack-unknown-metric]" in err and "did you mean" in err


def test_packs_schema_is_a_json_schema_of_the_format(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from cds.cli import main

    out = tmp_path / "schema.json"
    assert main(["packs", "schema", "--out", str(out)]) == 0
    schema = json.loads(out.read_text())
    assert schema["type"] == "object"
    assert {"id", "version", "rules", "thresholds"} <= set(schema["properties"])


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_a_changed_active_pack_without_a_new_version_is_refused(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    from cds.audit.store import open_store

    url = (
        request.getfixturevalue("pg_url")
        if backend == "postgres"
        else f"sqlite:///{tmp_path / 't.db'}"
    )
    store = open_store(url)
    folder = tmp_path / "packs"
    folder.mkdir()
    data = core_data()
    write_pack(folder, data, name="core.yaml")
    assert load_serving_packs(folder, registry=store)[0].pack.version == data["version"]
    data["thresholds"]["pelvic_drop_high"]["value"] = 6
    write_pack(folder, data, name="core.yaml")
    with pytest.raises(PackError, match="no serving rule pack"):
        load_serving_packs(folder, registry=store)
    data["version"] = "3.0.1"
    write_pack(folder, data, name="core.yaml")
    assert load_serving_packs(folder, registry=store)[0].pack.version == "3.0.1"
    data["status"] = "draft"  # drafts may change freely
    data["thresholds"]["pelvic_drop_high"]["value"] = 7
    write_pack(folder, data, name="core.yaml")
    assert load_serving_packs(folder, registry=store, allow_drafts=True)[0].pack.status == "draft"
    store.close()
