"""Turn raw landmarks into trajectories fit for angles and events.

Order matters: mask unreliable points, fix left/right swaps (before any
filter mixes the two legs), remove spikes, fill short gaps, then low-pass with
a zero-phase Butterworth whose cutoff suits the gait and stays below Nyquist.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.signal import butter, sosfiltfilt

from cds.measures.track import JOINTS, LR_PAIRS, VIS, Track, View

__all__ = [
    "CleaningReport",
    "butterworth",
    "clean_track",
    "correct_swaps",
    "effective_cutoff",
    "fill_gaps",
    "hampel",
    "mask_invisible",
]

Array = NDArray[np.float64]

#: first landmark cleaned (11, the left shoulder): face landmarks are carried, not used
BODY_FROM = 11
#: the cutoff never exceeds this fraction of the Nyquist frequency
MAX_NYQUIST_FRACTION = 0.8
#: MediaPipe landmark used to tell near from far leg in a side view (hip, knee, ankle)
_LEG_INDICES = [JOINTS[j] for j in ("hip", "knee", "ankle")]


@dataclass(frozen=True)
class CleaningReport:
    masked_fraction: float
    swapped_frames: int
    spikes_removed: int
    gaps_filled: int
    cutoff_hz: float


def mask_invisible(data: Array, min_visibility: float) -> tuple[Array, int]:
    """NaN the coordinates of landmarks whose visibility is below ``min_visibility``."""
    out = data.copy()
    low = out[:, :, VIS] < min_visibility
    out[:, :, :3][low] = np.nan
    return out, int(low.sum())


def _swap(frame: Array) -> None:
    for left, right in LR_PAIRS:
        frame[[left, right]] = frame[[right, left]]


def correct_swaps(data: Array, view: View, facing: int) -> tuple[Array, int]:
    """Relabel frames whose left and right legs MediaPipe has exchanged.

    Posterior view: the camera is behind the runner, so the left hip is on the
    image's left; a frame with the hips the other way round is mirrored.
    Side view: the limb nearer the camera is fixed by the direction the person
    faces (facing image-left shows the left side); MediaPipe's depth z tells
    which labelled leg is the near one in each frame.
    """
    out = data.copy()
    swapped = 0
    for t in range(len(out)):
        if _mislabelled(out[t], view, facing):
            _swap(out[t])
            swapped += 1
        elif view == "posterior" and _legs_crossed(out[t]):
            for joint in ("knee", "ankle", "heel", "toe"):
                left, right = JOINTS[joint]
                out[t, [left, right]] = out[t, [right, left]]
            swapped += 1
    return out, swapped


def _mislabelled(frame: Array, view: View, facing: int) -> bool:
    if view == "posterior":
        (lh, rh) = JOINTS["hip"]
        return bool(frame[lh, 0] > frame[rh, 0])
    pairs = [(frame[left, 2], frame[right, 2]) for left, right in _LEG_INDICES]
    pairs = [(lz, rz) for lz, rz in pairs if not (np.isnan(lz) or np.isnan(rz))]
    if not pairs:
        return False
    left_z = sum(lz for lz, _ in pairs)
    right_z = sum(rz for _, rz in pairs)
    near_is_left = facing < 0
    # smaller z = nearer the camera
    return bool(left_z > right_z) if near_is_left else bool(right_z > left_z)


def _legs_crossed(frame: Array) -> bool:
    """Posterior view: both knees and ankles on the wrong side of each other."""
    lk, rk = JOINTS["knee"]
    la, ra = JOINTS["ankle"]
    return bool(frame[lk, 0] > frame[rk, 0] and frame[la, 0] > frame[ra, 0])


def hampel(series: Array, window: int = 7, n_sigmas: float = 3.0) -> tuple[Array, int]:
    """NaN points further than ``n_sigmas`` scaled MADs from their window's median.

    ``series`` is (frames,) or (frames, channels); each channel is treated alone.
    """
    values = series.reshape(len(series), -1)
    half = window // 2
    padded = np.pad(values, ((half, half), (0, 0)), constant_values=np.nan)
    windows = np.lib.stride_tricks.sliding_window_view(padded, window, axis=0)
    with np.errstate(all="ignore"):
        median = _nanmedian_of_rows(windows)
        mad = 1.4826 * _nanmedian_of_rows(np.abs(windows - median[..., None]))
        enough = (~np.isnan(windows)).sum(axis=-1) >= 3
        spike = enough & (mad > 0) & (np.abs(values - median) > n_sigmas * mad)
    out = values.copy()
    out[spike] = np.nan
    return out.reshape(series.shape), int(spike.sum())


def _nanmedian_of_rows(windows: Array) -> Array:
    """``np.nanmedian(windows, axis=-1)`` for short last axes, without its slow
    masked path and its all-NaN warnings (those rows give NaN)."""
    ordered = np.sort(windows, axis=-1)  # NaN sorts last
    count = (~np.isnan(windows)).sum(axis=-1, keepdims=True)
    low = np.take_along_axis(ordered, np.maximum(count - 1, 0) // 2, axis=-1)
    high = np.take_along_axis(ordered, count // 2 - (count == 0), axis=-1)
    middle = np.where(count > 0, (low + high) / 2, np.nan)
    return np.asarray(middle[..., 0])


def fill_gaps(series: Array, max_gap: int) -> tuple[Array, int]:
    """Linearly interpolate interior NaN runs of at most ``max_gap`` samples."""
    out = series.copy()
    valid = np.flatnonzero(~np.isnan(series))
    filled = 0
    for a, b in itertools.pairwise(valid):
        gap = b - a - 1
        if 0 < gap <= max_gap:
            out[a + 1 : b] = np.interp(np.arange(a + 1, b), [a, b], [series[a], series[b]])
            filled += 1
    return out, filled


def effective_cutoff(cutoff_hz: float, fps: float) -> float:
    return min(cutoff_hz, MAX_NYQUIST_FRACTION * fps / 2)


@functools.lru_cache(maxsize=16)
def _lowpass(order: int, cutoff_hz: float, fps: float) -> Array:
    return np.asarray(butter(order, cutoff_hz, fs=fps, output="sos"))


def butterworth(series: Array, cutoff_hz: float, fps: float, order: int = 4) -> Array:
    """Zero-phase low-pass of every NaN-free run long enough to filter.

    ``series`` is (frames,) or (frames, channels); channels with the same
    gaps are filtered together, in one call.
    """
    sos = _lowpass(order, effective_cutoff(cutoff_hz, fps), fps)
    values = series.reshape(len(series), -1)
    valid = ~np.isnan(values)
    out = values.copy()
    pad = 3 * (2 * len(sos) + 1)
    same_gaps: dict[bytes, list[int]] = {}
    for channel in range(values.shape[1]):
        same_gaps.setdefault(valid[:, channel].tobytes(), []).append(channel)
    for channels in same_gaps.values():
        for start, stop in _runs(valid[:, channels[0]]):
            if stop - start > pad:
                out[start:stop, channels] = sosfiltfilt(sos, values[start:stop, channels], axis=0)
    return out.reshape(series.shape)


def _runs(mask: NDArray[np.bool_]) -> list[tuple[int, int]]:
    edges = np.diff(np.concatenate([[0], mask.astype(int), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True))


def facing_direction(track: Track) -> int:
    """+1 if the person faces image-right, -1 if left (side view).

    Overground: the way the hips travel. On a treadmill (hips stay): the way
    the toes point from the heels.
    """
    hip_x = track.midpoint("hip")[:, 0]
    valid = hip_x[~np.isnan(hip_x)]
    if valid.size > 1 and abs(valid[-1] - valid[0]) > track.leg_length():
        return 1 if valid[-1] > valid[0] else -1
    toe_ahead = np.nansum(
        [track.point("toe", s)[:, 0] - track.point("heel", s)[:, 0] for s in ("left", "right")]
    )
    return 1 if toe_ahead >= 0 else -1


def clean_track(
    track: Track,
    view: View,
    *,
    facing: int,
    min_visibility: float,
    max_gap_s: float,
    cutoff_hz: float,
) -> tuple[Track, CleaningReport]:
    """The full cleaning chain; the visibility column keeps the raw values.

    ``facing`` (side view) is ``facing_direction`` of the raw track.
    """
    data, masked = mask_invisible(track.data, min_visibility)
    data, swapped = correct_swaps(data, view, facing)
    max_gap = max(1, round(max_gap_s * track.fps))
    body = slice(BODY_FROM, data.shape[1])  # the face is never measured
    flat, spikes = hampel(data[:, body, :3].reshape(len(data), -1))
    gaps = 0
    for channel in range(flat.shape[1]):
        flat[:, channel], filled = fill_gaps(flat[:, channel], max_gap)
        gaps += filled
    data[:, body, :3] = butterworth(flat, cutoff_hz, track.fps).reshape(len(data), -1, 3)
    report = CleaningReport(
        masked_fraction=masked / max(1, track.data[:, :, VIS].size),
        swapped_frames=swapped,
        spikes_removed=spikes,
        gaps_filled=gaps,
        cutoff_hz=effective_cutoff(cutoff_hz, track.fps),
    )
    return track.with_data(data), report
