"""Clinic-configurable parameters of the measurement pipeline.

None of these is a validated clinical threshold: they are quality gates and
signal-processing choices taken from the sources in
``../docs/measures.md``; a clinic may change each in the ``[measures]``
section of its configuration.
"""

from __future__ import annotations

from types import MappingProxyType

from pydantic import BaseModel, ConfigDict, Field

from cds.fhir.policy import CaptureLimits

__all__ = ["MeasureSettings"]

_LIMITS = CaptureLimits()


class MeasureSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: landmarks less visible than this are treated as missing (MediaPipe visibility)
    min_visibility: float = Field(default=0.5, ge=0, le=1)
    #: strides per side below which a value is marked "too few strides" (Dingenen 2018: ~6.3)
    min_strides: int = Field(default=7, ge=1)
    #: share of analysed frames whose landmarks must be visible for a confident value
    min_visible_fraction: float = Field(default=_LIMITS.min_visible_fraction, ge=0, le=1)
    #: longest gap (s) filled by interpolation; longer gaps stay missing
    max_gap_s: float = Field(default=0.25, gt=0)
    #: low-pass cutoff (Hz): walking 6 (Sports2D, Pose2Sim), running 10 (Pose2Sim 6-15, OpenCap 12)
    cutoff_walking_hz: float = Field(default=6.0, gt=0)
    cutoff_running_hz: float = Field(default=10.0, gt=0)
    #: cadence (steps/min) from which a clip is analysed as running, not walking
    running_cadence: float = Field(default=140.0, gt=0)
    #: events this close (s) to the clip's ends or a gap are dropped
    edge_s: float = Field(default=0.3, ge=0)
    #: lowest frame rate (fps) at which a metric is reported as a number
    min_fps: dict[str, float] = Field(default_factory=lambda: dict(_LIMITS.min_fps))
    #: the same, for running only (stance lasts 0.2-0.3 s)
    min_fps_running: dict[str, float] = Field(default_factory=lambda: dict(_LIMITS.min_fps_running))

    def capture_limits(self) -> CaptureLimits:
        """The same limits, for the service to honour on what measure wrote."""
        return CaptureLimits(
            min_fps=MappingProxyType(dict(self.min_fps)),
            min_fps_running=MappingProxyType(dict(self.min_fps_running)),
            min_visible_fraction=self.min_visible_fraction,
        )

    def required_fps(self, code: str, running: bool) -> float:
        return self.capture_limits().required_fps(code, running)
