"""What decides which inputs the rules may use: the pack's policy and the clinic's
capture limits."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from cds.fhir.diagnoses import ValueSet
from cds.fhir.norms import Norm

__all__ = ["CaptureLimits", "FactPolicy", "GaitModeMissing"]

#: what a run-form value without a recorded gait mode is taken to be
GaitModeMissing = Literal["ask", "running"]


def _frozen(values: dict[str, float]) -> Mapping[str, float]:
    return MappingProxyType(values)


@dataclass(frozen=True)
class CaptureLimits:
    """The capture requirements of each metric, as ``runform-cds measure`` applies them
    (the ``[measures]`` section of the configuration); the service honours the same."""

    #: lowest frame rate (fps) at which a metric is a number, walking or running
    min_fps: Mapping[str, float] = field(
        default_factory=lambda: _frozen({"foot-inclination-initial-contact": 120.0})
    )
    #: the same, for running only (stance lasts 0.2-0.3 s)
    min_fps_running: Mapping[str, float] = field(
        default_factory=lambda: _frozen({"knee-flexion-initial-contact": 60.0, "overstride": 60.0})
    )
    #: share (0-1) of the analysed frames in which the metric's landmarks must be visible
    min_visible_fraction: float = 0.8

    def required_fps(self, code: str, running: bool) -> float:
        base = self.min_fps.get(code, 0.0)
        return max(base, self.min_fps_running.get(code, 0.0)) if running else base


@dataclass(frozen=True)
class FactPolicy:
    """What the rule pack says about input quality, diagnoses and norms (canonical units)."""

    min_strides: float = 7
    max_age_days: float = 90
    #: a shorter window while an order is active (None: same as ``max_age_days``)
    max_age_in_care_days: float | None = None
    #: captures of one metric and side this close together are trials of one session
    session_window_days: float = 2 / 24
    gait_mode_missing: GaitModeMissing = "ask"
    #: smallest detectable difference (canonical unit) by fact field: repeat trials that
    #: differ by more disagree, and a smaller change between visits is not a change
    smallest_detectable_difference: Mapping[str, float] = field(default_factory=lambda: _frozen({}))
    value_sets: Mapping[str, ValueSet] = field(default_factory=lambda: MappingProxyType({}))
    norms: Mapping[str, Norm] = field(default_factory=lambda: MappingProxyType({}))
