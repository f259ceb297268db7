"""Scenarios, packs test / explain / diff, and the HTI-1 source attributes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from cds.cli import main
from cds.errors import PackError
from cds.rules.compile import CompiledPack
from cds.rules.load import find_pack_files, load_pack
from cds.rules.scenario import run_scenarios
from tests.conftest import ROOT
from tests.packs import CORE, core_data, write_pack

BUNDLED = find_pack_files(ROOT / "rule_packs")


@pytest.mark.parametrize("path", BUNDLED, ids=[p.parent.name for p in BUNDLED])
def test_every_bundled_pack_passes_its_scenarios_through_the_real_engine(path: Path) -> None:
    compiled = load_pack(path)
    assert compiled.scenarios is not None and compiled.scenarios.scenarios
    failures = {
        r.name: r.diff() for r in run_scenarios(compiled, compiled.scenarios) if not r.passed
    }
    assert failures == {}


@pytest.mark.parametrize("path", BUNDLED, ids=[p.parent.name for p in BUNDLED])
def test_every_rule_has_a_scenario_where_it_shows_and_one_where_it_does_not(path: Path) -> None:
    compiled = load_pack(path)
    assert compiled.scenarios is not None
    scenarios = compiled.scenarios.scenarios
    for r in compiled.rules:
        shown = [
            sc.name
            for sc in scenarios
            if any(r.rule.id in (c.rule, *(c.attached or [])) for c in sc.expect)
        ]
        assert shown, f"no scenario shows {r.rule.id}"
        assert len(shown) < len(scenarios)
    assert any(sc.expect == [] for sc in scenarios)


def _with_scenarios(tmp_path: Path, scenarios: dict[str, Any]) -> Path:
    pack = write_pack(tmp_path, core_data(), name="clinic.yaml")
    (tmp_path / "clinic.scenarios.yaml").write_text(yaml.safe_dump(scenarios, sort_keys=False))
    return pack


def _scenario(expect: list[dict[str, Any]], **given: Any) -> dict[str, Any]:
    base = {"age": 30, "diagnoses": ["patellofemoral-pain"]}
    return {"name": "hip drop", "given": {**base, **given}, "expect": expect}


HIP_DROP = {
    "running-pain": 4,
    "contralateral-pelvic-drop": {"left": 3, "right": 7},
    "peak-hip-adduction": {"left": 12, "right": 21},
    "knee-flexion-initial-contact": {"left": 20, "right": 20},
}


def test_a_scenario_naming_an_unknown_rule_is_reported_with_its_line(tmp_path: Path) -> None:
    pack = _with_scenarios(
        tmp_path,
        {"scenarios": [_scenario([{"rule": "r1-hip-drop-symptomatik", "indicator": "warning"}])]},
    )
    with pytest.raises(PackError) as info:
        load_pack(pack)
    text = (tmp_path / "clinic.scenarios.yaml").read_text().splitlines()
    line = next(i for i, t in enumerate(text, 1) if "symptomatik" in t)
    assert f"clinic.scenarios.yaml:{line}:" in info.value.message
    assert "[pack-scenario-unknown-rule]" in info.value.message
    assert "did you mean 'r1-hip-drop-symptomatic'" in info.value.message


def test_scenario_metric_typo_and_missing_side_are_reported(tmp_path: Path) -> None:
    sc = _scenario([], measures={"contralateral-pelvic-dorp": {"left": 3}, "peak-hip-adduction": 9})
    with pytest.raises(PackError) as info:
        load_pack(_with_scenarios(tmp_path, {"scenarios": [sc]}))
    assert "[pack-scenario-unknown-metric]" in info.value.message
    assert "[pack-scenario-needs-side]" in info.value.message


def test_packs_test_prints_pass_and_a_readable_diff_on_failure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = _scenario(
        [
            {
                "rule": "r1-hip-drop-symptomatic",
                "indicator": "warning",
                "sides": ["right"],
                "attached": ["r7-cadence-alternative", "r9-education"],
            }
        ],
        measures=HIP_DROP,
    )
    wrong = {
        **good,
        "name": "wrong indicator",
        "expect": [{"rule": "r1-hip-drop-symptomatic", "indicator": "info"}],
    }
    nothing = {**good, "name": "expects nothing", "expect": []}
    pack = _with_scenarios(tmp_path, {"scenarios": [good, wrong, nothing]})
    assert main(["packs", "test", str(pack)]) == 1
    out = capsys.readouterr().out
    assert "PASS  hip drop" in out
    assert "FAIL  wrong indicator" in out
    assert "- info     r1-hip-drop-symptomatic" in out
    assert (
        "+ warning  r1-hip-drop-symptomatic [right] + r7-cadence-alternative, r9-education" in out
    )
    assert "FAIL  expects nothing" in out
    assert "1 passed, 2 failed" in out


def test_packs_test_on_the_bundled_packs_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["packs", "test", str(ROOT / "rule_packs")]) == 0
    out = capsys.readouterr().out
    assert "0 failed" in out and "FAIL" not in out


def test_a_pack_without_scenarios_fails_packs_test(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pack = write_pack(tmp_path, core_data(), name="bare.yaml")
    assert main(["packs", "test", str(pack)]) == 1
    assert "no scenarios" in capsys.readouterr().out


def test_explain_renders_a_rule_in_plain_language(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["packs", "explain", str(CORE), "q6-running-fppa-alone"]) == 0
    out = capsys.readouterr().out
    assert "On patient-view, when" in out
    assert "knee frontal plane projection angle (running) is at least 10 deg" in out
    assert "(running_knee_fppa_high, placeholder)" in out
    assert 'show an info card:\n    "Running knee FPPA' in out
    assert "r1-hip-drop-symptomatic" not in out
    # no double negatives: "not" is pushed down to the tests, which say what holds
    assert "NOT" not in out and "not not" not in out
    assert "pelvic drop and hip adduction are under their thresholds on this side" in out
    assert (
        "contralateral pelvic drop is below 5 deg (pelvic_drop_high, placeholder), "
        "or was not measured" in out
    )
    assert "Checked for each side on its own" in out


def test_explain_says_what_a_negated_finding_means_and_names_related_rules(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["packs", "explain", str(CORE), "r1-hip-drop-symptomatic"]) == 0
    out = capsys.readouterr().out
    assert "NOT" not in out
    assert (
        "the hip abductors are weak on this side, their strength is not known, or the "
        "single-leg squat is poor [strength_normal]" in out
    )
    assert "there is no active order for Hip and knee strengthening program" in out
    assert "These rules add their text to its card when they hold: " in out
    assert "r9-education" in out.split("add their text to its card")[1]
    held = out.split("Its card is held back while any of these shows its own: ")[1]
    assert "s1-red-flags" in held and "g1-confirm-before-planning" in held
    assert main(["packs", "explain", str(CORE), "s1-red-flags"]) == 0
    out = capsys.readouterr().out
    assert "While it shows, no " in out and "r1-hip-drop-symptomatic" in out


def test_explain_names_the_rules_when_the_id_is_unknown(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["packs", "explain", str(CORE), "r99"]) == 2
    assert "no rule 'r99'" in capsys.readouterr().err


def test_diff_lists_rules_thresholds_and_card_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = core_data()
    data["version"] = "3.2.0"
    data["thresholds"]["pelvic_drop_high"]["value"] = 6
    data["rules"] = [r for r in data["rules"] if r["id"] != "r11-isolated-trendelenburg"]
    r1 = next(r for r in data["rules"] if r["id"] == "r1-hip-drop-symptomatic")
    r1["card"]["summary"] = "Hip drop ({side}): strengthen and retrain"
    extra = {**r1, "id": "r12-new-rule", "title": "A new rule"}
    data["rules"].append(extra)
    new = write_pack(tmp_path, data)
    assert main(["packs", "diff", str(CORE), str(new)]) == 0
    out = capsys.readouterr().out
    assert f"runform-core {core_data()['version']} (active) -> runform-core 3.2.0 (active)" in out
    assert "~ pelvic_drop_high: 5 deg (placeholder) -> 6 deg (placeholder)" in out
    # the rules each changed threshold decides, directly or through findings
    decides = out.split("pelvic_drop_high: 5 deg")[1].splitlines()[1]
    assert decides.strip().startswith("decides: ") and "r1-hip-drop-symptomatic" in decides
    assert "s5-screening-finding" in decides and "r9-education" not in decides
    assert "- r11-isolated-trendelenburg" in out
    assert "+ r12-new-rule (A new rule)" in out
    assert "~ r1-hip-drop-symptomatic" in out
    assert "+Hip drop ({side}): strengthen and retrain" in out
    # the bundled scenarios are run on both versions; those whose cards change are named
    changes = out.split("Scenario outcomes: ")[1]
    assert "R1 boundary - pelvic drop of exactly 5 deg" in changes
    assert "scenarios.yaml:" in changes and "before: " in changes and "after:  " in changes


@pytest.mark.parametrize(("version", "why"), [(None, "was not bumped"), ("2.9.0", "goes down")])
def test_diff_fails_when_the_version_does_not_show_the_change(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], version: str | None, why: str
) -> None:
    data = core_data()
    data["thresholds"]["hip_adduction_high"]["value"] = 22
    if version:
        data["version"] = version
    assert (
        main(["packs", "diff", "--no-scenarios", str(CORE), str(write_pack(tmp_path, data))]) == 1
    )
    assert why in capsys.readouterr().out


def test_diff_of_identical_packs_passes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["packs", "diff", str(CORE), str(CORE)]) == 0
    assert "no changes" in capsys.readouterr().out


def test_packs_test_failures_give_the_scenario_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenarios = {
        "scenarios": [
            _scenario([], measures=HIP_DROP),  # R1 shows, so "no card" fails
            {**_scenario([], measures={"running-pain": 0}), "name": "quiet"},
        ]
    }
    pack = _with_scenarios(tmp_path, scenarios)
    assert main(["packs", "test", str(pack)]) == 1
    out = capsys.readouterr().out
    text = (tmp_path / "clinic.scenarios.yaml").read_text().splitlines()
    line = next(i for i, t in enumerate(text, 1) if "hip drop" in t)
    assert f"FAIL  hip drop  ({tmp_path / 'clinic.scenarios.yaml'}:{line})" in out
    assert "PASS  quiet\n" in out


def test_hti1_source_attributes_are_required_and_declared(core_pack: CompiledPack) -> None:
    attrs = core_pack.pack.source_attributes
    assert attrs.bibliographic_citation and attrs.developer and attrs.funding_source
    assert attrs.data_use.sex and attrs.data_use.date_of_birth
    assert not attrs.data_use.race and not attrs.data_use.ethnicity


def test_a_pack_without_source_attributes_is_refused(tmp_path: Path) -> None:
    data = core_data()
    del data["source_attributes"]
    with pytest.raises(PackError, match="source_attributes"):
        load_pack(write_pack(tmp_path, data))


def test_packs_schema_for_scenario_files(tmp_path: Path) -> None:
    import json

    out = tmp_path / "scenarios.schema.json"
    assert main(["packs", "schema", "--scenarios", "--out", str(out)]) == 0
    schema = json.loads(out.read_text())
    assert schema["title"] == "runform-cds scenarios file"
    assert {"bases", "scenarios"} <= set(schema["properties"])


def test_a_capture_of_a_sided_metric_without_a_side_is_reported(tmp_path: Path) -> None:
    sc = _scenario([], captures=[{"metric": "peak-hip-adduction", "value": 21}])
    with pytest.raises(PackError) as info:
        load_pack(_with_scenarios(tmp_path, {"scenarios": [sc]}))
    assert "[pack-scenario-needs-side]" in info.value.message
    assert "add side: right" in info.value.message


def test_the_change_a_threshold_walkthrough_shows_real_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/rule-packs.md walks a clinician through a threshold change: its printed
    output must be what the tools print (regenerate the doc when this fails)."""
    import shutil

    doc = (ROOT / "docs" / "rule-packs.md").read_text()
    monkeypatch.chdir(tmp_path)
    shutil.copytree(CORE.parent, tmp_path / "rule_packs" / "runform-core")
    work = tmp_path / "work" / "runform-core"
    shutil.copytree(CORE.parent, work)
    pack = (work / "pack.yaml").read_text()
    at = pack.index("value: 5", pack.index("  pelvic_drop_high:"))
    old = "hip strengthening PLUS gait retraining with real-time feedback"
    new = "strengthen the hips AND retrain gait with real-time video feedback"
    edited = (pack[:at] + "valeu: 6" + pack[at + 8 :]).replace(old, new)
    (work / "pack.yaml").write_text(edited)

    def shown(*argv: str) -> list[str]:
        main(list(argv))
        out = capsys.readouterr()
        return [line for line in (out.out + out.err).splitlines() if line.strip()]

    lines = shown("packs", "validate", "work/runform-core")
    (work / "pack.yaml").write_text(edited.replace("valeu: 6", "value: 6"))
    lines += shown("packs", "validate", "work/runform-core")
    lines += [x for x in shown("packs", "test", "work/runform-core") if "PASS" not in x]
    scenarios = (work / "scenarios.yaml").read_text()
    scenarios = scenarios.replace(
        "pelvic drop of exactly 5 deg (with", "pelvic drop of exactly 6 deg (with"
    )
    scenarios = scenarios.replace(
        "{left: 3, right: 5}}}\n    expect:\n      - {rule: q5",
        "{left: 3, right: 6}}}\n    expect:\n      - {rule: q5",
        1,
    )
    (work / "scenarios.yaml").write_text(scenarios)
    assert shown("packs", "test", "work/runform-core")[-1].endswith(" passed, 0 failed")
    lines += shown("packs", "diff", "rule_packs/runform-core", "work/runform-core")
    assert len(lines) > 20
    missing = [line for line in lines if line not in doc]
    assert missing == [], f"docs/rule-packs.md walkthrough is out of date: {missing}"
