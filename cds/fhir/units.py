"""UCUM unit conversion for the quantities the rules compare.

Values are converted, never assumed: a unit that is unknown, or of another
dimension than the metric accepts, raises :class:`UnitError`.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = [
    "STANDARD_GRAVITY",
    "UnitError",
    "canonical_unit",
    "convert",
    "dimension_of",
    "known_units",
]

STANDARD_GRAVITY = 9.80665  # m/s2: turns "% of body weight" into N/kg

# dimension -> {UCUM code: factor to the canonical unit (first entry)}
_UNITS: dict[str, dict[str, float]] = {
    "angle": {"deg": 1.0, "rad": 57.29577951308232},
    "rate": {"/min": 1.0, "{steps}/min": 1.0, "{step}/min": 1.0, "/s": 60.0},
    "frequency": {"/s": 1.0, "Hz": 1.0, "{frames}/s": 1.0},
    "time": {"s": 1.0, "ms": 0.001, "min": 60.0, "h": 3600.0},
    "force": {"N": 1.0, "kN": 1000.0, "[lbf_av]": 4.4482216152605},
    "torque": {"N.m": 1.0},
    "torque_per_mass": {"N.m/kg": 1.0, "%{BW}.m": STANDARD_GRAVITY / 100.0},
    "force_per_mass": {
        "N/kg": 1.0,
        "%": STANDARD_GRAVITY / 100.0,
        "%{BW}": STANDARD_GRAVITY / 100.0,
    },
    "fraction": {"%": 1.0, "1": 100.0},
    "length": {"cm": 1.0, "m": 100.0, "mm": 0.1},
    "count": {"{strides}": 1.0, "{steps}": 1.0, "1": 1.0},
    "days": {"d": 1.0, "wk": 7.0, "mo": 30.4375, "a": 365.25, "h": 1 / 24, "min": 1 / 1440},
    "years": {"a": 1.0},
    "score": {"{score}": 1.0, "1": 1.0},
    #: standard deviations from a norm's predicted value
    "sd": {"{SD}": 1.0},
    "rating": {},
    "result": {},
}


class UnitError(ValueError):
    """A unit is unknown or does not fit the quantity."""


class _Found(NamedTuple):  # a frozen dataclass costs more to build than the conversion
    dimension: str
    factor: float


def _lookup(unit: str, dimensions: tuple[str, ...]) -> _Found:
    for dim in dimensions:
        factor = _UNITS.get(dim, {}).get(unit)
        if factor is not None:
            return _Found(dim, factor)
    accepted = sorted({u for d in dimensions for u in _UNITS.get(d, {})})
    raise UnitError(f"unit {unit!r} does not fit (accepted: {', '.join(accepted)})")


def dimension_of(unit: str, dimensions: tuple[str, ...]) -> str:
    """Which of ``dimensions`` the UCUM ``unit`` belongs to."""
    return _lookup(unit, dimensions).dimension


def known_units() -> list[str]:
    """Every UCUM unit a value or threshold may be given in."""
    return sorted({unit for units in _UNITS.values() for unit in units})


def canonical_unit(dimension: str) -> str:
    return next(iter(_UNITS[dimension]))


def convert(value: float, unit: str, dimensions: tuple[str, ...]) -> tuple[float, str]:
    """Convert ``value unit`` to the canonical unit of its dimension.

    Returns ``(value, dimension)``. ``dimensions`` lists the dimensions the
    quantity may have, in order of preference (``%`` is ambiguous between
    fraction and force-per-mass, so order decides).
    """
    found = _lookup(unit, dimensions)
    return value * found.factor, found.dimension
