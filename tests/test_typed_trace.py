"""The trace is typed (``cds.audit.trace.Trace`` and the records it holds, in
``cds.rules.records``, ``cds.fhir.measurements`` ...): a key renamed where its type is
defined, and not where the service writes it and the audit tools read it, fails
``mypy --strict``. These tests rename one in a copy of the package and run mypy."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

RENAMES = {
    # a trace key: written by the service, read by the terminal view, viewer and exports
    "trace": (
        "audit/trace.py",
        "    rules_fired: list[FiredRuleEntry]\n",
        "    fired_rules: list[FiredRuleEntry]\n",
        'TypedDict "Trace" has no key "rules_fired"',
        {
            "cds/service/pipeline.py",
            "cds/audit/reading.py",
            "cds/audit/render.py",
            "cds/audit/viewer.py",
            "cds/audit/export.py",
        },
    ),
    # a key of a nested record: made by the decision, read by the audit tools
    "fired rule": (
        "rules/records.py",
        "    decided: list[DecidedEntry]\n",
        "    deciding: list[DecidedEntry]\n",
        'Extra key "decided" for TypedDict "FiredRuleEntry"',
        {"cds/rules/decide.py", "cds/audit/reading.py"},
    ),
    "card": (
        "rules/records.py",
        "    indicator: str\n",
        "    urgency: str\n",
        'has no key "indicator"',
        {"cds/rules/cards.py"},
    ),
}


@pytest.mark.parametrize("which", list(RENAMES))
def test_renaming_a_trace_key_fails_the_type_check_where_it_is_written_and_read(
    which: str, tmp_path: Path
) -> None:
    module, old, new, message, places = RENAMES[which]
    shutil.copytree(ROOT / "cds", tmp_path / "cds", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    typed = tmp_path / "cds" / module
    text = typed.read_text()
    assert text.count(old) == 1
    typed.write_text(text.replace(old, new))

    cmd = [sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / ".mypy"), "cds"]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 1, done.stdout + done.stderr
    assert message in done.stdout
    flagged = set(re.findall(r"^(cds/[\w/]+\.py):\d+: error:", done.stdout, re.M))
    assert places <= flagged, done.stdout


def test_an_input_entry_has_exactly_the_fields_of_an_input_record_but_the_observation() -> None:
    """``InputRecord.as_dict`` copies the record's own fields, not ``InputEntry``'s keys:
    a field renamed on one side only would change what traces hold without mypy seeing
    it, so the two are held together here."""
    from dataclasses import fields
    from typing import get_type_hints

    from cds.fhir.measurements import InputEntry, InputRecord

    record_fields = [f.name for f in fields(InputRecord) if f.name != "observation"]
    assert record_fields == list(get_type_hints(InputEntry))


def test_an_input_entry_leaves_out_what_is_not_known_and_the_observation() -> None:
    from cds.fhir.measurements import InputRecord

    rec = InputRecord(resource="Observation/o1", source="observation", value=0.0, unit="deg")
    rec.observation = object()  # type: ignore[assignment]
    entry = rec.as_dict()
    assert entry == {"resource": "Observation/o1", "source": "observation", "value": 0.0,
                     "unit": "deg"}  # fmt: skip
    assert list(entry) == ["resource", "source", "value", "unit"]
