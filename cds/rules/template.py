"""The closed set of placeholders a card template may use (no code, no format specs)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from cds.fhir.codes import metric

if TYPE_CHECKING:
    from cds.rules.pack import Pack

__all__ = ["KINDS", "PLACEHOLDER", "check_placeholders"]

PLACEHOLDER = re.compile(r"\{([a-z_]+)(?::([A-Za-z0-9_-]+))?\}")
#: kind -> what its argument names (None: takes no argument)
KINDS: dict[str, str | None] = {
    "side": None,
    "age": None,
    "quality": None,
    "findings": None,
    "diagnoses": None,
    "value": "metric",
    "change": "metric",
    "norm": "metric",
    "threshold": "threshold",
    "plan": "plan",
}


def check_placeholders(text: str, pack: Pack) -> list[str]:
    """Problems with the placeholders of ``text`` (empty when all are known)."""
    problems = []
    for kind, arg in PLACEHOLDER.findall(text):
        if kind not in KINDS:
            problems.append(f"unknown placeholder {{{kind}}}")
            continue
        needs = KINDS[kind]
        if needs is None and arg:
            problems.append(f"{{{kind}}} takes no argument")
        elif needs == "metric" and metric(arg) is None:
            problems.append(f"{{{kind}:{arg}}} names an unknown metric")
        elif needs == "threshold" and arg not in pack.thresholds:
            problems.append(f"{{threshold:{arg}}} names an undefined threshold")
        elif needs == "plan" and arg not in pack.plans:
            problems.append(f"{{plan:{arg}}} names a plan not defined under plans:")
        elif kind == "norm" and arg not in pack.norms:
            problems.append(f"{{norm:{arg}}} names a metric without a norm")
    return problems
