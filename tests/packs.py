"""Helpers to write variants of the core pack for tests."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

CORE = Path(__file__).resolve().parent.parent / "rule_packs" / "runform-core" / "pack.yaml"


def core_data() -> dict[str, Any]:
    return copy.deepcopy(yaml.safe_load(CORE.read_text()))  # type: ignore[no-any-return]


def write_pack(tmp: Path, data: dict[str, Any], name: str = "pack.yaml") -> Path:
    path = tmp / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
