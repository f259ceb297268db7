"""Run-form metrics from 2D video and hip strength tests, as FHIR R4 Observations.

    from cds.measures import analyze_video, measurement_bundle
    analysis = analyze_video(Path("run.mp4"), "posterior")
    bundle = measurement_bundle(analysis, "Patient/123")

Names are imported on first use (as pydantic does): the CDS service reads
``MeasureSettings`` from its configuration without loading OpenCV, SciPy or
MediaPipe.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cds._lazy import lazy_exports

if TYPE_CHECKING:
    from cds.measures.analyze import Analysis, TrackAnalysis, analyze_track, analyze_video
    from cds.measures.bundle import measurement_bundle, post_bundle, validate_bundle
    from cds.measures.metrics import MetricResult
    from cds.measures.settings import MeasureSettings
    from cds.measures.strength import StrengthEntry, StrengthForm, read_form, strength_bundle
    from cds.measures.track import Track
    from cds.measures.video import Roi, VideoInfo, probe_video

__all__ = [
    "Analysis",
    "MeasureSettings",
    "MetricResult",
    "Roi",
    "StrengthEntry",
    "StrengthForm",
    "Track",
    "TrackAnalysis",
    "VideoInfo",
    "analyze_track",
    "analyze_video",
    "measurement_bundle",
    "post_bundle",
    "probe_video",
    "read_form",
    "strength_bundle",
    "validate_bundle",
]

_HOMES = {
    "Analysis": "analyze",
    "TrackAnalysis": "analyze",
    "analyze_track": "analyze",
    "analyze_video": "analyze",
    "measurement_bundle": "bundle",
    "post_bundle": "bundle",
    "validate_bundle": "bundle",
    "MetricResult": "metrics",
    "MeasureSettings": "settings",
    "StrengthEntry": "strength",
    "StrengthForm": "strength",
    "read_form": "strength",
    "strength_bundle": "strength",
    "Track": "track",
    "Roi": "video",
    "VideoInfo": "video",
    "probe_video": "video",
}


__getattr__, __dir__ = lazy_exports(__name__, _HOMES)
