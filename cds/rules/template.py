"""The closed set of placeholders a card template may use (no code, no format specs)."""

from __future__ import annotations

import re

from cds.fhir.codes import metric

__all__ = ["PLACEHOLDER", "check_placeholders"]

PLACEHOLDER = re.compile(r"\{([a-z_]+)(?::([A-Za-z0-9_-]+))?\}")
KINDS = {"side", "value", "change", "threshold", "age", "quality"}


def check_placeholders(text: str, pack_thresholds: set[str]) -> list[str]:
    """Problems with the placeholders of ``text`` (empty when all are known)."""
    problems = []
    for kind, arg in PLACEHOLDER.findall(text):
        if kind not in KINDS:
            problems.append(f"unknown placeholder {{{kind}}}")
        elif kind in ("value", "change") and (metric(arg) is None):
            problems.append(f"{{{kind}:{arg}}} names an unknown metric")
        elif kind == "threshold" and arg not in pack_thresholds:
            problems.append(f"{{threshold:{arg}}} names an undefined threshold")
    return problems
