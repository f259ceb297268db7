"""The video pipeline: pose, person selection, cleaning, events, metrics."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cds.errors import MeasureError
from cds.measures.clean import CleaningReport, clean_track, facing_direction, mask_invisible
from cds.measures.events import GaitEvents, detect_events, fit_floor, gait_mode
from cds.measures.geometry import Geometry
from cds.measures.identity import keep_one_person, roi_around
from cds.measures.metrics import MetricResult, compute_metrics, static_offsets
from cds.measures.pose import Progress, estimate_track, search_track
from cds.measures.settings import MeasureSettings
from cds.measures.track import Side, Track, View
from cds.measures.video import Roi, VideoInfo, probe_video

__all__ = ["Analysis", "ProgressFactory", "TrackAnalysis", "analyze_track", "analyze_video"]

#: samples per second searched for the runner when no region of interest is given
SEARCH_RATE_HZ = 10.0
#: called once per stage with its name and number of frames; returns the per-frame callback
ProgressFactory = Callable[[str, int], Progress]
RoiSource = Literal["given", "auto", "full-frame"]


@dataclass
class TrackAnalysis:
    """What the pipeline makes of one person's landmarks."""

    view: View
    track: Track
    cleaning: CleaningReport
    events: GaitEvents
    geometry: Geometry
    results: list[MetricResult]

    def result(self, code: str, side: Side | None = None) -> MetricResult:
        for r in self.results:
            if r.code == code and r.side == side:
                return r
        raise KeyError((code, side))


@dataclass
class Analysis(TrackAnalysis):
    video: VideoInfo
    raw: Track
    roi: Roi | None
    roi_source: RoiSource
    static: VideoInfo | None
    offsets: dict[tuple[str, Side], float]

    @property
    def rejected_frames(self) -> int:
        return int(self.raw.rejected.sum())


def _geometry(track: Track, view: View, facing: int, settings: MeasureSettings) -> Geometry:
    return Geometry(
        track, view, facing, fit_floor(track),
        track.leg_length(percentile=90 if view == "posterior" else 50),
        settings.min_visibility,
    )  # fmt: skip


def _clean(
    track: Track, view: View, facing: int, settings: MeasureSettings, cutoff: float
) -> tuple[Track, CleaningReport]:
    return clean_track(
        track, view, facing=facing, min_visibility=settings.min_visibility,
        max_gap_s=settings.max_gap_s, cutoff_hz=cutoff,
    )  # fmt: skip


def analyze_track(
    raw: Track,
    view: View,
    settings: MeasureSettings | None = None,
    offsets: dict[tuple[str, Side], float] | None = None,
) -> TrackAnalysis:
    """Clean, find events and compute metrics for one person's raw landmarks.

    Walking or running is decided from the raw landmarks (the stride period
    is an autocorrelation, robust to jitter); the clip is then cleaned with
    the cutoff that suits it.
    """
    settings = settings or MeasureSettings()
    visible, _ = mask_invisible(raw.data, settings.min_visibility)
    mode = gait_mode(raw.with_data(visible), view, settings.running_cadence)
    cutoff = settings.cutoff_running_hz if mode == "running" else settings.cutoff_walking_hz
    facing = facing_direction(raw)
    track, report = _clean(raw, view, facing, settings, cutoff)
    geo = _geometry(track, view, facing, settings)
    events = detect_events(track, view, geo.facing, settings.edge_s, mode)
    results = compute_metrics(geo, events, settings, offsets)
    return TrackAnalysis(view, track, report, events, geo, results)


def _progress(factory: ProgressFactory | None, stage: str, total: int) -> Progress | None:
    return factory(stage, total) if factory else None


def _person_track(
    info: VideoInfo, view: View, roi: Roi | None, workers: int, progress: ProgressFactory | None
) -> tuple[Track, Roi | None, RoiSource]:
    """Landmarks of the runner; without a ROI, a first pass finds them and sets one."""
    source: RoiSource = "given"
    if roi is None:
        finding = _progress(progress, "finding the runner", info.frames)
        every = max(1, round(info.fps / SEARCH_RATE_HZ))
        searched = search_track(info, every, finding, workers=workers)
        roi = roi_around(keep_one_person(searched), view)
        source = "auto" if roi is not None else "full-frame"
    raw = estimate_track(
        info, roi, workers=workers, progress=_progress(progress, "pose", info.frames)
    )
    return keep_one_person(raw), roi, source


def _offsets(
    static: Path | None,
    view: View,
    roi: Roi | None,
    settings: MeasureSettings,
    progress: ProgressFactory | None,
) -> tuple[VideoInfo | None, dict[tuple[str, Side], float]]:
    """Static-trial medians; the clip is filmed with the same camera, so the same ROI."""
    if static is None:
        return None, {}
    info = probe_video(static)
    if roi is not None:
        roi = roi.clip(info.width, info.height)
    raw = estimate_track(info, roi, progress=_progress(progress, "static clip", info.frames))
    standing = keep_one_person(raw)
    facing = facing_direction(standing)
    track, _ = _clean(standing, view, facing, settings, settings.cutoff_walking_hz)
    offsets = static_offsets(_geometry(track, view, facing, settings))
    if not offsets:
        raise MeasureError(f"{static}: no usable standing posture found in the static clip")
    return info, offsets


def analyze_video(
    path: Path,
    view: View,
    *,
    roi: Roi | None = None,
    static: Path | None = None,
    settings: MeasureSettings | None = None,
    workers: int | None = None,
    progress: ProgressFactory | None = None,
) -> Analysis:
    """Measure the runner in ``path`` (a posterior or side view)."""
    settings = settings or MeasureSettings()
    workers = workers or min(2, os.cpu_count() or 1)
    info = probe_video(path)
    static_info, offsets = _offsets(static, view, roi, settings, progress)
    raw, used_roi, source = _person_track(info, view, roi, workers, progress)
    core = analyze_track(raw, view, settings, offsets)
    return Analysis(
        view=view, track=core.track, cleaning=core.cleaning, events=core.events,
        geometry=core.geometry, results=core.results, video=info, raw=raw, roi=used_roi,
        roi_source=source, static=static_info, offsets=offsets,
    )  # fmt: skip
