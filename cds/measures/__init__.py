"""Run-form metrics from 2D video and hip strength tests, as FHIR R4 Observations.

from cds.measures import analyze_video, measurement_bundle
analysis = analyze_video(Path("run.mp4"), "posterior")
bundle = measurement_bundle(analysis, "Patient/123")
"""

from cds.measures.analyze import Analysis, TrackAnalysis, analyze_track, analyze_video
from cds.measures.metrics import MetricResult
from cds.measures.settings import MeasureSettings
from cds.measures.track import Track
from cds.measures.video import Roi, VideoInfo, probe_video

__all__ = [
    "Analysis",
    "MeasureSettings",
    "MetricResult",
    "Roi",
    "Track",
    "TrackAnalysis",
    "VideoInfo",
    "analyze_track",
    "analyze_video",
    "probe_video",
]
