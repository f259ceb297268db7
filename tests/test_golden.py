"""Every bundled scenario decides exactly what it decided before a change: the facts,
the inputs used and set aside, the rules fired with their deciding values, and the
cards, ignoring ids and times (``tests/golden.py`` explains how to update)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.golden import GOLDEN, decisions


@pytest.fixture(scope="module")
def now_decided() -> dict[str, Any]:
    return decisions()


def test_every_scenario_is_captured(now_decided: dict[str, Any]) -> None:
    golden = json.loads(GOLDEN.read_text())
    assert sorted(now_decided) == sorted(golden)
    assert len(golden) >= 170


def test_every_scenario_decides_as_before(now_decided: dict[str, Any]) -> None:
    golden = json.loads(GOLDEN.read_text())
    changed = [k for k in golden if now_decided.get(k) != golden[k]]
    for key in changed[:1]:
        for part in golden[key]:
            assert now_decided[key][part] == golden[key][part], f"{key}: {part} changed"
    assert changed == []


def test_the_comparison_sees_a_changed_value(now_decided: dict[str, Any]) -> None:
    key, record = next((k, r) for k, r in now_decided.items() if r["cards"])
    altered = json.loads(json.dumps(record))
    altered["cards"][0]["summary"] += "!"
    assert altered != json.loads(GOLDEN.read_text())[key]
