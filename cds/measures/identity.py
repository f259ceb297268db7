"""Keep one person: reject identity jumps, and find the runner when no ROI is given.

Legacy MediaPipe Pose follows the "most prominent" person and may jump to
another one mid-clip (on Sports2D's demo it follows a person on a roof for
5 s before switching to the walker). A jump shows as the hip centre or the
body size changing more in one frame than a body can.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from cds.measures.track import Track, View
from cds.measures.video import Roi

__all__ = ["Segment", "gait_steps", "keep_one_person", "roi_around", "segments"]

#: hip-centre displacement between consecutive frames, in leg lengths, that no gait produces
MAX_JUMP_LEG_LENGTHS = 0.3
#: relative change of leg length between consecutive frames that marks another body
MAX_SCALE_CHANGE = 0.35
#: continuation after a gap: how fast (leg lengths per second) the person may have moved
MAX_SPEED_LEG_LENGTHS_S = 8.0
#: shoulders, hips and legs: what the region must hold (arms and hands swing wide)
_TRUNK_AND_LEGS = [11, 12, *range(23, 33)]
#: longest gap (s) the speed allowance grows over; a longer absence gets no more room
MAX_ALLOWANCE_S = 1.0
#: a body seen again after another person must stay this long (s) to be taken back
MIN_RETURN_S = 0.25


@dataclass(frozen=True)
class Segment:
    """Consecutive frames that follow one body without a jump."""

    start: int
    stop: int  # exclusive

    @property
    def frames(self) -> int:
        return self.stop - self.start


def _per_frame_leg(track: Track) -> NDArray[np.float64]:
    """The longer leg in each frame (NaN where neither is seen)."""
    stacked = np.vstack([track.leg_lengths("left"), track.leg_lengths("right")])
    out: NDArray[np.float64] = np.where(
        np.isnan(stacked).all(axis=0), np.nan, np.nan_to_num(stacked, nan=-1.0).max(axis=0)
    )
    return out


def segments(track: Track) -> list[Segment]:
    """Split the present frames wherever the body jumps or changes size abruptly."""
    hip = track.midpoint("hip")
    leg = _per_frame_leg(track)
    present = track.present()
    out: list[Segment] = []
    start: int | None = None
    for i in range(track.frames):
        if not present[i]:
            if start is not None:
                out.append(Segment(start, i))
                start = None
            continue
        if start is not None and _jumped(hip[i - 1], hip[i], leg[i - 1], leg[i]):
            out.append(Segment(start, i))
            start = None
        if start is None:
            start = i
    if start is not None:
        out.append(Segment(start, track.frames))
    return out


def _jumped(
    hip_a: NDArray[np.float64], hip_b: NDArray[np.float64], leg_a: float, leg_b: float
) -> bool:
    scale = max(leg_a, leg_b)
    if not scale > 0:
        return False
    moved = float(np.linalg.norm(hip_b - hip_a)) / scale
    resized = abs(leg_b - leg_a) / scale
    return moved > MAX_JUMP_LEG_LENGTHS or resized > MAX_SCALE_CHANGE


def gait_steps(track: Track, seg: Segment) -> int:
    """Alternations of which foot is lower or in front: roughly the steps taken.

    Standing, squats and hops score about 0 (the feet move together).
    """
    leg = track.leg_length()
    left, right = (
        track.point("ankle", "left")[seg.start : seg.stop],
        track.point("ankle", "right")[seg.start : seg.stop],
    )
    diff = left - right
    return max(_alternations(diff[:, 0], 0.1 * leg), _alternations(diff[:, 1], 0.05 * leg))


def _alternations(signal: NDArray[np.float64], hysteresis: float) -> int:
    state, count = 0, 0
    for value in signal:
        if np.isnan(value):
            continue
        sign = 1 if value > hysteresis else -1 if value < -hysteresis else 0
        if sign and sign != state:
            count += state != 0
            state = sign
    return count


def _consistent(track: Track, before: Segment, after: Segment) -> bool:
    """Could ``after`` be the same body as ``before``, given the time between them?"""
    a, b = before.stop - 1, after.start
    hip = track.midpoint("hip")
    leg = _per_frame_leg(track)
    scale = max(leg[a], leg[b])
    seconds = (b - a) / track.fps
    allowed = MAX_JUMP_LEG_LENGTHS + MAX_SPEED_LEG_LENGTHS_S * min(seconds, MAX_ALLOWANCE_S)
    moved = float(np.linalg.norm(hip[b] - hip[a])) / scale
    return bool(moved <= allowed and abs(leg[b] - leg[a]) / scale <= MAX_SCALE_CHANGE)


def keep_one_person(track: Track) -> Track:
    """Keep the walking/running body with the most steps; blank frames showing anyone else.

    Segments before and after the chosen one are kept when they continue the
    last kept one plausibly; after another person was followed in between, the
    return must also last ``MIN_RETURN_S``. The rest are marked ``rejected``,
    never merged.
    """
    parts = segments(track)
    if not parts:
        return track
    best = max(range(len(parts)), key=lambda i: (gait_steps(track, parts[i]), parts[i].frames))
    kept = {best}
    min_frames = MIN_RETURN_S * track.fps
    for direction in (-1, 1):
        last = best
        i = best + direction
        while 0 <= i < len(parts):
            pair = (parts[i], parts[last]) if direction < 0 else (parts[last], parts[i])
            # after someone else was tracked in between, only a sustained return counts
            returning = abs(i - last) == 1 or parts[i].frames >= min_frames
            if returning and _consistent(track, *pair):
                kept.add(i)
                last = i
            i += direction
    data = track.data.copy()
    rejected = np.zeros(track.frames, dtype=bool)
    for i, seg in enumerate(parts):
        if i not in kept:
            data[seg.start : seg.stop] = np.nan
            rejected[seg.start : seg.stop] = True
    out = track.with_data(data)
    out.rejected = rejected
    return out


def roi_around(track: Track, view: View) -> Roi | None:
    """A region that holds the chosen person through the clip and little else.

    Side view: the full width (the person crosses the frame), the rows the body
    uses plus a margin. Posterior view: the body's box plus a margin.
    """
    body = track.data[:, _TRUNK_AND_LEGS, :2].reshape(-1, 2)
    body = body[~np.isnan(body).any(axis=1)]
    if body.size == 0:
        return None
    leg = track.leg_length()
    # robust extent (a stray landmark must not widen it), then room for head and feet
    (x0, y0), (x1, y1) = np.percentile(body, 1, axis=0), np.percentile(body, 99, axis=0)
    x0, x1 = x0 - 0.5 * leg, x1 + 0.5 * leg
    y0, y1 = y0 - 0.6 * leg, y1 + 0.2 * leg
    if view == "side":
        x0, x1 = 0, track.width
    x0, y0 = max(0, int(x0)), max(0, int(y0))
    x1, y1 = min(track.width, int(x1)), min(track.height, int(y1))
    return Roi(x0, y0, x1 - x0, y1 - y0)
