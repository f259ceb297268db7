"""The names of fact fields, made in one place.

The fact builder writes these fields, the compiler and the reference
evaluator read them and the card renderer shows them; every name comes from
a function here, so a renamed field changes in one place.
"""

from __future__ import annotations

from typing import Literal

from cds.fhir.codes import Metric

__all__ = [
    "AGE",
    "AGE_UNKNOWN",
    "HOOK",
    "KIND",
    "MEASURE_SUFFIX",
    "POSITION",
    "SIDE",
    "DiagnosisPart",
    "Fact",
    "FactValue",
    "Measure",
    "OrderState",
    "derived_field",
    "diagnosis_field",
    "finding_field",
    "lsi_field",
    "measure_field",
    "norm_note_field",
    "order_days_field",
    "order_field",
    "present_field",
    "quality_field",
    "sex_field",
]

#: a fact field holds a number (a value, a flag set to 1, a count) or a word (kind, side)
FactValue = int | float | str
#: one fact: the patient, or one side; its field names come from the functions below
Fact = dict[str, FactValue]

KIND = "kind"
SIDE = "side"
#: set on each fact for one evaluation: the hook called, and the fact's position
HOOK = "hook"
POSITION = "n"
AGE = "age_years"
#: set when no exact age can be computed (no Patient, no or a partial birth date)
AGE_UNKNOWN = "age_unknown"

Measure = Literal["value", "lsi", "asymmetry", "change", "increase", "norm"]
MEASURE_SUFFIX: dict[str, str] = {
    "value": "",
    "asymmetry": "__asym",
    "change": "__change",
    "increase": "__increase",
    "norm": "__norm",
}

#: the facts kept per value set (see :mod:`cds.fhir.diagnoses`)
DiagnosisPart = Literal[
    "", "days", "possible", "possible_days", "undated_days", "unsided", "here", "there"
]
OrderState = Literal["any", "draft", "active", "on-hold", "completed"]


def measure_field(m: Metric, dimension: str, measure: str = "value") -> str:
    """Field of metric ``m`` measured in ``dimension`` (value, change, asymmetry or norm)."""
    return m.field_for(dimension) + MEASURE_SUFFIX[measure]


def derived_field(value_field: str, measure: str) -> str:
    """The field of ``measure`` (change, increase, asymmetry, norm) of the value held in
    ``value_field``."""
    return value_field + MEASURE_SUFFIX[measure]


def lsi_field(m: Metric) -> str:
    """Limb symmetry index of ``m`` (this side / other side x 100), whatever its unit."""
    return f"{m.field}__lsi"


def present_field(m: Metric) -> str:
    """Set to 1 when ``m`` has a usable value on the fact."""
    return f"{m.field}__present"


def norm_note_field(m: Metric) -> str:
    """Why the pack's norm for ``m`` was not applied (text for the card, not for rules)."""
    return f"{m.field}__norm_note"


def sex_field(sex: str) -> str:
    return f"sex_{sex}"


def diagnosis_field(value_set: str, part: DiagnosisPart = "") -> str:
    """Field of value set ``value_set``; ``part`` names one of its facts.

    ``""`` a confirmed active diagnosis; ``days`` days since its recorded
    onset; ``possible`` a matching record that is not confirmed;
    ``possible_days`` and ``undated_days`` the fewest days that may have
    passed since the onset of an unconfirmed or an undated record;
    ``unsided`` a confirmed record without laterality; ``here`` and
    ``there`` (side facts) a confirmed record on this or the other side.
    """
    base = f"dx_{value_set.replace('-', '_')}"
    return f"{base}__{part}" if part else base


def order_field(plan: str, state: OrderState) -> str:
    """Flag of an order for ``plan`` in ``state`` (``any``: in any of them)."""
    prefix = "order" if state == "any" else f"order_{state.replace('-', '_')}"
    return f"{prefix}_{plan.replace('-', '_')}"


def order_days_field(plan: str, state: OrderState) -> str:
    """Days since the oldest such order started."""
    return f"{order_field(plan, state)}__days"


def quality_field(kind: str) -> str:
    """Count of inputs set aside for quality reason ``kind``."""
    return f"q_{kind}"


def finding_field(name: str) -> str:
    """Flag the engine sets on a fact when finding ``name`` holds on it."""
    return f"f_{name.replace('-', '_')}"
