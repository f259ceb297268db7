"""What a clinician editing a pack sees when they make a mistake: one message per
mistake, at the line of the mistake, with a code and a plain hint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from cds.cli import main
from tests.packs import CORE

TEXT = CORE.read_text()


def _edit(tmp_path: Path, old: str, new: str, count: int = 1) -> tuple[Path, int]:
    """The core pack with ``old`` replaced, and the line the replacement starts on."""
    assert old in TEXT
    index = TEXT.index(old)
    path = tmp_path / "pack.yaml"
    path.write_text(TEXT.replace(old, new, count))
    return path, TEXT[:index].count("\n") + 1


def _validate(path: Path, capsys: pytest.CaptureFixture[str]) -> list[str]:
    assert main(["packs", "validate", str(path)]) == 1
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def _problems(lines: list[str], path: Path) -> list[str]:
    return [line for line in lines if line.startswith(str(path))]


def test_an_indentation_mistake_is_located_and_explained(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, line = _edit(tmp_path, '    says: "Cauda equina', '     says: "Cauda equina')
    lines = _validate(path, capsys)
    [problem] = _problems(lines, path)
    assert problem.startswith(f"{path}:{line}:") and "[pack-yaml-syntax]" in problem
    assert any(f"{line:>5} |      says:" in x for x in lines)  # the line itself, with a caret
    hint = next(x for x in lines if "hint:" in x)
    assert f"line {line} is indented 5 spaces" in hint and "same column" in hint


@pytest.mark.parametrize(
    ("old", "new", "hint"),
    [
        ("title: Run form and hip strength", "title:\tRun form", "tab"),
        ("title: Run form and hip strength", 'title: "Run form and hip strength', "quote"),
        ("title: Run form and hip strength", "title: Run form: hip strength", "double quotes"),
    ],
    ids=["tab", "unclosed-quote", "colon-in-text"],
)
def test_other_yaml_mistakes_get_a_plain_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], old: str, new: str, hint: str
) -> None:
    path, line = _edit(tmp_path, old, new)
    lines = _validate(path, capsys)
    [problem] = _problems(lines, path)
    assert problem.startswith(f"{path}:{line}:")  # the line of the mistake
    assert "[pack-yaml-syntax]" in problem
    assert hint in next(x for x in lines if "hint:" in x)


def test_a_key_written_twice_is_an_error_not_silently_the_last(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, line = _edit(tmp_path, "  pelvic_drop_high:\n    value: 5\n",
                       "  pelvic_drop_high:\n    value: 5\n    value: 8\n")  # fmt: skip
    [problem] = _problems(_validate(path, capsys), path)
    assert problem.startswith(f"{path}:{line + 2}:") and "[pack-duplicate-key]" in problem
    assert f"'value' is written twice in the same place (first at line {line + 1})" in problem


def test_an_unknown_key_in_a_rule_is_one_message_with_the_rule_id_and_a_guess(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = TEXT.index("\nrules:")
    typo = TEXT.index("at_least: pelvic_drop_high", rules)
    text = TEXT[:typo] + "at_leats" + TEXT[typo + len("at_least") :]
    path = tmp_path / "pack.yaml"
    path.write_text(text)
    line = TEXT[:typo].count("\n") + 1
    owner = TEXT[: TEXT[:typo].rindex("\n  - id: ")].count("\n") + 2
    rule_id = TEXT.splitlines()[owner - 1].split("id: ")[1].strip()
    [problem] = _problems(_validate(path, capsys), path)
    assert problem.startswith(f"{path}:{line}:")
    assert "unknown key 'at_leats' — did you mean 'at_least'?" in problem
    assert f"(at rule {rule_id}, field when." in problem and "[pack-unknown-key]" in problem


def test_a_misspelt_required_key_is_not_also_reported_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = _edit(tmp_path, "    title: Hip drop or adduction in a symptomatic runner",
                    "    titel: Hip drop or adduction in a symptomatic runner")  # fmt: skip
    lines = _validate(path, capsys)
    [problem] = _problems(lines, path)
    assert "unknown key 'titel' — did you mean 'title'?" in problem
    assert "at rule r1-hip-drop-symptomatic, field titel" in problem


def test_a_word_that_is_not_allowed_gets_a_guess_and_the_choices(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = TEXT.index("\nrules:")
    at = TEXT.index("indicator: warning", rules)
    path = tmp_path / "pack.yaml"
    path.write_text(TEXT[:at] + "indicator: warnin" + TEXT[at + len("indicator: warning") :])
    lines = _validate(path, capsys)
    [problem] = _problems(lines, path)
    assert "'warnin' is not allowed here — did you mean 'warning'?" in problem
    assert "'info', 'warning' or 'critical'" in next(x for x in lines if "hint:" in x)


def test_a_mapping_that_is_no_condition_says_which_keys_a_condition_needs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = TEXT.index("\nrules:")
    at = TEXT.index("{metric: ", rules)
    path = tmp_path / "pack.yaml"
    path.write_text(TEXT[:at] + "{metrc: " + TEXT[at + len("{metric: ") :])
    lines = _validate(path, capsys)
    [problem] = _problems(lines, path)
    assert "not a condition (keys: metrc" in problem and "[pack-not-a-condition]" in problem
    assert "did you mean 'metric'?" in next(x for x in lines if "hint:" in x)


# -- the editor schema --------------------------------------------------------------------------


def _schema(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    assert main(["packs", "schema", *argv]) == 0
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def _undescribed(schema: dict[str, Any]) -> list[str]:
    places = [("(top)", schema), *schema["$defs"].items()]
    return [
        f"{name}.{prop}"
        for name, model in places
        for prop, spec in model.get("properties", {}).items()
        if not spec.get("description")
    ]


@pytest.mark.parametrize("scenarios", [False, True], ids=["pack", "scenarios"])
def test_the_schema_describes_every_field(
    capsys: pytest.CaptureFixture[str], scenarios: bool
) -> None:
    schema = _schema(capsys, *(["--scenarios"] if scenarios else []))
    assert _undescribed(schema) == []
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def _pack_json() -> Any:
    return json.loads(json.dumps(yaml.safe_load(TEXT), default=str))


def test_the_bundled_pack_and_scenarios_satisfy_their_schema(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for argv, data in [
        ((), _pack_json()),
        (("--pack", str(CORE)), _pack_json()),
        (("--scenarios", "--pack", str(CORE)),
         yaml.safe_load(CORE.with_name("scenarios.yaml").read_text())),
    ]:  # fmt: skip
        errors = list(Draft202012Validator(_schema(capsys, *argv)).iter_errors(data))
        assert [e.message for e in errors] == [], argv


def test_an_editor_flags_a_misspelt_metric_unit_or_threshold_name(
    capsys: pytest.CaptureFixture[str],
) -> None:
    schema = _schema(capsys, "--pack", str(CORE))
    metric = schema["$defs"]["MetricCondition"]["properties"]["metric"]
    assert "contralateral-pelvic-drop" in metric["enum"]
    assert "pelvic_drop_high" in json.dumps(
        schema["$defs"]["MetricCondition"]["properties"]["at_least"]
    )
    validator = Draft202012Validator(schema)
    for typo in (
        ("contralateral-pelvic-drop", "contralateral-pelvic-dorp"),  # metric
        ("at_least: pelvic_drop_high", "at_least: pelvic_drop_hihg"),  # threshold name
        ("unit: deg", "unit: degrees"),  # unit
    ):
        data = json.loads(json.dumps(yaml.safe_load(TEXT.replace(*typo, 1)), default=str))
        messages = [e.message for e in validator.iter_errors(data)]
        assert messages, typo
