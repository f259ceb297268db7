"""Clinic-configurable parameters of the measurement pipeline.

None of these is a validated clinical threshold: they are quality gates and
signal-processing choices taken from the sources in
``../docs/measures.md``; a clinic may change each in the ``[measures]``
section of its configuration.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["MeasureSettings"]


class MeasureSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: landmarks less visible than this are treated as missing (MediaPipe visibility)
    min_visibility: float = Field(default=0.5, ge=0, le=1)
    #: strides per side below which a value is marked "too few strides" (Dingenen 2018: ~6.3)
    min_strides: int = Field(default=7, ge=1)
    #: share of analysed frames whose landmarks must be visible for a confident value
    min_visible_fraction: float = Field(default=0.8, ge=0, le=1)
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
    min_fps: dict[str, float] = Field(
        default_factory=lambda: {"foot-inclination-initial-contact": 120.0}
    )
    #: the same, for running only (stance lasts 0.2-0.3 s)
    min_fps_running: dict[str, float] = Field(
        default_factory=lambda: {"knee-flexion-initial-contact": 60.0, "overstride": 60.0}
    )

    def required_fps(self, code: str, running: bool) -> float:
        base = self.min_fps.get(code, 0.0)
        return max(base, self.min_fps_running.get(code, 0.0)) if running else base
