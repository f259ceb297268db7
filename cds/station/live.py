"""Run-form values as each stride completes, from a live stream of landmarks.

The station reuses the batch pipeline of ``cds.measures`` unchanged: every few
frames it analyses the last seconds of landmarks (person lock, cleaning,
events, metrics) and reports the strides that completed since the last
report. Only frames already seen are used, so it is causal; a stride is
reported once it is far enough from the newest frame that later frames no
longer move its events (the settle time).

Frames arrive when the pose model has finished them, not on a fixed clock (the
station drops frames rather than fall behind), so the window is resampled
onto a uniform grid at the source's frame rate before analysis; gaps longer
than the measure pipeline fills stay missing.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from cds.measures.analyze import analyze_track
from cds.measures.identity import keep_one_person
from cds.measures.metrics import Offsets, stride_values
from cds.measures.settings import MeasureSettings
from cds.measures.track import Side, Track, View

__all__ = ["LiveAnalyzer", "StrideValue", "resample"]

Array = NDArray[np.float64]
SIDES: tuple[Side, Side] = ("left", "right")
HIP = 23


@dataclass(frozen=True)
class StrideValue:
    """One stride's value of the target metric."""

    side: Side
    value: float
    #: capture times (s, the source's clock) of the stride's initial contact and of the next
    started: float
    ended: float
    #: capture time of the newest frame in the analysis that reported it
    seen_at: float


def resample(times: Array, data: Array, rate: float, max_gap_s: float) -> Array:
    """Landmarks (n, 33, 4) taken at ``times`` onto a grid at ``rate`` Hz from
    ``times[0]``; grid points farther than ``max_gap_s`` from any sample are NaN."""
    grid = times[0] + np.arange(int(np.floor((times[-1] - times[0]) * rate)) + 1) / rate
    flat = data.reshape(len(times), -1)
    out = np.full((len(grid), flat.shape[1]), np.nan)
    present = ~np.isnan(data[:, HIP, 0])  # a frame has a pose when its hip does (as Track)
    if present.sum() >= 2:
        t = times[present]
        for col in range(flat.shape[1]):
            out[:, col] = np.interp(grid, t, flat[present, col])
        nearest = np.abs(grid[:, None] - t[None, :]).min(axis=1)
        after = np.searchsorted(t, grid).clip(1, len(t) - 1)
        gap = t[after] - t[after - 1]
        out[(nearest > max_gap_s / 2) & (gap > max_gap_s)] = np.nan
        out[(grid < t[0]) | (grid > t[-1])] = np.nan
    return out.reshape(len(grid), *data.shape[1:])


class LiveAnalyzer:
    """Feed it landmarks frame by frame; ``update()`` returns the strides completed
    since it was last called, for one metric on the chosen sides."""

    def __init__(
        self,
        view: View,
        metric: str,
        *,
        rate: float,
        width: int,
        height: int,
        settings: MeasureSettings | None = None,
        offsets: Offsets | None = None,
        window_s: float = 6.0,
        settle_s: float = 0.1,
    ) -> None:
        self.view, self.metric, self.rate = view, metric, rate
        self.width, self.height = width, height
        self.settings = settings or MeasureSettings()
        self.offsets = offsets or {}
        self.window_s, self.settle_s = window_s, settle_s
        self._times: deque[float] = deque()
        self._frames: deque[Array] = deque()
        self._last_ic: dict[Side, float] = {side: -np.inf for side in SIDES}

    def add(self, t: float, landmarks: Array) -> None:
        """A processed frame captured at ``t`` (s): (33, 4) landmarks, NaN if no pose."""
        self._times.append(t)
        self._frames.append(landmarks)
        while self._times and self._times[0] < t - self.window_s:
            self._times.popleft()
            self._frames.popleft()

    def _window(self) -> Track | None:
        if len(self._times) < 2 or self._times[-1] - self._times[0] < 2.0:
            return None
        times = np.fromiter(self._times, dtype=float)
        data = resample(times, np.stack(self._frames), self.rate, self.settings.max_gap_s)
        return keep_one_person(Track(data, self.rate, self.width, self.height))

    def update(self) -> list[StrideValue]:
        """Analyse the window; the strides newly complete and settled, oldest first."""
        track = self._window()
        if track is None or not track.present().any():
            return []
        try:
            analysis = analyze_track(track, self.view, self.settings, self.offsets)
        except (ValueError, IndexError, np.linalg.LinAlgError):
            return []  # too little of a gait in the window yet: try again with more frames
        start, newest = self._times[0], self._times[-1]
        out = []
        for side in SIDES:
            for stride, value in stride_values(
                analysis.geometry, analysis.events, self.metric, side, self.offsets
            ):
                began = start + stride.ic / self.rate
                ended = start + stride.next_ic / self.rate
                if ended > newest - self.settle_s:
                    continue  # later frames may still move its events
                if began <= self._last_ic[side] + 0.25 * (ended - began):
                    continue  # reported already (its events move a little between windows)
                self._last_ic[side] = began
                out.append(StrideValue(side, value, began, ended, newest))
        return sorted(out, key=lambda v: v.started)
