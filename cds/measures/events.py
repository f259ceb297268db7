"""Gait events (initial contact IC, toe-off TO) and strides, for walking and running.

Two detectors:

* ``foot-height``: a foot is on the ground while its lowest point (heel or
  toe) is near the floor line; IC is where it comes down, TO where it leaves.
  Works for walking and running, in side and posterior views.
* ``zeni`` (Zeni et al. 2008): IC at the heel's most forward position
  relative to the pelvis, TO at the toe's most backward one. Validated for
  walking within one frame at 60 Hz, biased for running, so it is used only
  for side-view walking.

Whether the clip is walking or running comes from the cadence, read off the
period of the feet's alternation (autocorrelation), against a clinic-set
boundary (default 140 steps/min): event detectors are not reliable enough to
decide it by duty factor on 2D video.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from scipy.signal import find_peaks

from cds.measures.track import Side, Track, View

__all__ = ["GaitEvents", "Stride", "detect_events", "fit_floor", "gait_mode", "stride_period_s"]

Array = NDArray[np.float64]
Mode = Literal["walking", "running"]
SIDES: tuple[Side, Side] = ("left", "right")

#: share of each foot's height range (p5..p95) under which it counts as on the floor
CONTACT_HEIGHT_FRACTION = 0.2
#: share of that range under which the foot has landed (refines IC and TO)
CONTACT_TOUCH_FRACTION = 0.05
#: shortest stance (s) accepted as a contact, not a tracking wobble
MIN_STANCE_S = 0.06
#: accepted stride durations (s) for walking and running
STRIDE_RANGE_S = (0.4, 2.5)


@dataclass(frozen=True)
class Floor:
    """The floor as an image line y = slope * x + intercept (pixels, y down)."""

    slope: float
    intercept: float

    @property
    def angle_deg(self) -> float:
        """Tilt of the floor line, positive when it rises to the right (y up)."""
        return float(np.degrees(np.arctan(-self.slope)))

    def height(self, points: Array) -> Array:
        """Height above the floor (pixels, up positive) of (n, 2) image points."""
        out: Array = self.slope * points[:, 0] + self.intercept - points[:, 1]
        return out


@dataclass(frozen=True)
class Stride:
    side: Side
    ic: float  # frame index, sub-frame
    to: float
    next_ic: float

    @property
    def frames(self) -> float:
        return self.next_ic - self.ic

    def stance_frames(self) -> NDArray[np.int64]:
        return np.arange(int(np.ceil(self.ic)), int(np.floor(self.to)) + 1)


@dataclass(frozen=True)
class GaitEvents:
    ic: dict[Side, Array]
    to: dict[Side, Array]
    method: str
    mode: Mode
    floor: Floor
    strides: list[Stride]

    def side_strides(self, side: Side) -> list[Stride]:
        return [s for s in self.strides if s.side == side]


def _foot_low(track: Track, side: Side) -> Array:
    """The lower of heel and toe (image y is down, so the larger y), with its x."""
    heel, toe = track.point("heel", side), track.point("toe", side)
    lower_is_toe = toe[:, 1] > heel[:, 1]
    out: Array = np.where(lower_is_toe[:, None], toe, heel)
    return out


def fit_floor(track: Track) -> Floor:
    """Fit the floor line through the lowest foot positions across the frame.

    The foot points are binned along x; in each bin the lowest points (90th
    percentile of y) lie on the floor. Over a narrow x range (treadmill) the
    floor is taken as level.
    """
    points = np.vstack([_foot_low(track, s) for s in SIDES])
    points = points[~np.isnan(points).any(axis=1)]
    if len(points) == 0:
        return Floor(0.0, float(track.height))
    span = np.ptp(points[:, 0])
    if span < 1.5 * track.leg_length():
        return Floor(0.0, float(np.percentile(points[:, 1], 90)))
    edges = np.linspace(points[:, 0].min(), points[:, 0].max(), 9)
    xs, ys = [], []
    for lo, hi in itertools.pairwise(edges):
        inside = points[(points[:, 0] >= lo) & (points[:, 0] <= hi)]
        if len(inside) >= 3:
            xs.append(float(np.median(inside[:, 0])))
            ys.append(float(np.percentile(inside[:, 1], 90)))
    if len(xs) < 2:
        return Floor(0.0, float(np.percentile(points[:, 1], 90)))
    slope, intercept = np.polyfit(xs, ys, 1)
    return Floor(float(slope), float(intercept))


def _crossings(signal: Array, threshold: float, downward: bool) -> Array:
    """Sub-frame times where ``signal`` crosses ``threshold`` (down or up)."""
    below = signal < threshold
    a = (
        np.flatnonzero(below[1:] & ~below[:-1])
        if downward
        else np.flatnonzero(~below[1:] & below[:-1])
    )
    a = a[~np.isnan(signal[a]) & ~np.isnan(signal[a + 1])]
    frac = (signal[a] - threshold) / (signal[a] - signal[a + 1])
    out: Array = a + frac
    return out


def _height_events(track: Track, floor: Floor, side: Side) -> tuple[Array, Array]:
    height = floor.height(_foot_low(track, side))
    valid = height[~np.isnan(height)]
    if valid.size < 10:
        return np.zeros(0), np.zeros(0)
    p5, p95 = np.percentile(valid, [5, 95])
    threshold = p5 + CONTACT_HEIGHT_FRACTION * (p95 - p5)
    touch = p5 + CONTACT_TOUCH_FRACTION * (p95 - p5)
    ics = _crossings(height, threshold, downward=True)
    tos = _crossings(height, threshold, downward=False)
    touch_down = _crossings(height, touch, downward=True)
    lift_off = _crossings(height, touch, downward=False)
    min_stance = MIN_STANCE_S * track.fps
    keep_ic, keep_to = [], []
    for ic in ics:
        to = _next_after(tos, ic)
        if not np.isfinite(to) or to - ic < min_stance:
            continue
        # the foot is found near the floor at the upper threshold; it lands at the lower one
        landed = _next_after(touch_down, ic)
        keep_ic.append(landed if landed < to else ic)
        left = _last_before(lift_off, to)
        keep_to.append(left if left > ic else to)
    return np.array(keep_ic), np.array(keep_to)


def _next_after(times: Array, t: float) -> float:
    later = times[times > t]
    return float(later[0]) if later.size else float("inf")


def _last_before(times: Array, t: float) -> float:
    earlier = times[times < t]
    return float(earlier[-1]) if earlier.size else float("-inf")


def _peaks(signal: Array, fps: float, min_distance_s: float) -> Array:
    valid = signal[~np.isnan(signal)]
    if valid.size < 10:
        return np.zeros(0)
    filled = np.where(np.isnan(signal), np.nanmin(signal), signal)
    idx, _ = find_peaks(
        filled, distance=max(1, int(min_distance_s * fps)), prominence=0.1 * np.ptp(valid)
    )
    idx = idx[(idx > 0) & (idx < len(signal) - 1)]
    # parabolic interpolation of the true peak between frames
    y0, y1, y2 = signal[idx - 1], signal[idx], signal[idx + 1]
    denom = y0 - 2 * y1 + y2
    with np.errstate(all="ignore"):
        shift = np.where(denom != 0, 0.5 * (y0 - y2) / denom, 0.0)
    out: Array = idx + np.clip(np.nan_to_num(shift), -0.5, 0.5)
    return out


def _zeni_events(track: Track, side: Side, facing: int) -> tuple[Array, Array]:
    pelvis_x = track.midpoint("hip")[:, 0]
    heel = (track.point("heel", side)[:, 0] - pelvis_x) * float(facing)
    toe = (track.point("toe", side)[:, 0] - pelvis_x) * float(facing)
    return _peaks(heel, track.fps, 0.5), _peaks(-toe, track.fps, 0.5)


def _away_from_edges(times: Array, valid: NDArray[np.bool_], edge_frames: int) -> Array:
    """Events with valid data for ``edge_frames`` on both sides (clip ends, gaps)."""
    keep = []
    for t in times:
        lo, hi = int(np.floor(t)) - edge_frames, int(np.ceil(t)) + edge_frames
        if lo >= 0 and hi < len(valid) and valid[lo : hi + 1].all():
            keep.append(t)
    return np.array(keep)


def _strides(side: Side, ics: Array, tos: Array, fps: float) -> list[Stride]:
    out = []
    lo, hi = STRIDE_RANGE_S[0] * fps, STRIDE_RANGE_S[1] * fps
    for a, b in itertools.pairwise(ics):
        to = _next_after(tos, a)
        if lo <= b - a <= hi and to < b:
            out.append(Stride(side, float(a), to, float(b)))
    if len(out) >= 3:  # drop strides far from the typical one (a missed or extra event)
        median = np.median([s.frames for s in out])
        out = [s for s in out if 0.7 * median <= s.frames <= 1.4 * median]
    return out


def stride_period_s(track: Track, view: View) -> float:
    """Dominant period (s) of the left/right foot alternation; NaN if there is none.

    Side view: the horizontal distance between the heels; posterior view: the
    height difference of the ankles. Both repeat once per stride.
    """
    if view == "side":
        signal = track.point("heel", "left")[:, 0] - track.point("heel", "right")[:, 0]
    else:
        signal = track.point("ankle", "left")[:, 1] - track.point("ankle", "right")[:, 1]
    valid = ~np.isnan(signal)
    if valid.sum() < 3 * STRIDE_RANGE_S[0] * track.fps:
        return float("nan")
    x = np.interp(np.arange(len(signal)), np.flatnonzero(valid), signal[valid])
    x = x[valid.argmax() : len(valid) - valid[::-1].argmax()]
    x = x - x.mean()
    acf = np.correlate(x, x, mode="full")[len(x) - 1 :]
    acf = acf / np.arange(len(x), 0, -1)  # unbiased: later lags average fewer products
    lo = int(STRIDE_RANGE_S[0] * track.fps)
    hi = min(len(acf) - 1, int(STRIDE_RANGE_S[1] * track.fps))
    if hi <= lo + 2:
        return float("nan")
    peaks, _ = find_peaks(acf[lo:hi])
    if peaks.size == 0:
        return float("nan")
    heights = acf[lo:hi][peaks]
    # the first strong peak: later multiples of the period are about as high
    first = peaks[np.flatnonzero(heights >= 0.8 * heights.max())[0]]
    return float((lo + first) / track.fps)


def gait_mode(track: Track, view: View, running_cadence: float) -> Mode:
    period = stride_period_s(track, view)
    cadence = 120.0 / period if period > 0 else float("nan")
    return "running" if cadence >= running_cadence else "walking"


def detect_events(track: Track, view: View, facing: int, edge_s: float, mode: Mode) -> GaitEvents:
    """Events and complete strides of each side, clear of clip ends and gaps."""
    floor = fit_floor(track)
    ic: dict[Side, Array] = {}
    to: dict[Side, Array] = {}
    for side in SIDES:
        ic[side], to[side] = _height_events(track, floor, side)
    method = "foot-height"
    if view == "side" and mode == "walking":
        method = "zeni"
        for side in SIDES:
            ic[side], to[side] = _zeni_events(track, side, facing)
    edge = max(1, round(edge_s * track.fps))
    strides: list[Stride] = []
    for side in SIDES:
        valid = ~np.isnan(_foot_low(track, side)).any(axis=1) & track.present()
        valid &= ~np.isnan(track.midpoint("hip")).any(axis=1)
        ic[side] = _away_from_edges(ic[side], valid, edge)
        to[side] = _away_from_edges(to[side], valid, edge)
        strides += _strides(side, ic[side], to[side], track.fps)
    strides.sort(key=lambda s: s.ic)
    return GaitEvents(ic, to, method, mode, floor, strides)
