"""Pose tracks: MediaPipe's 33 landmarks per frame, in image pixels."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
from numpy.typing import NDArray

__all__ = ["JOINTS", "LR_PAIRS", "Side", "Track", "View", "other_side"]

Side = Literal["left", "right"]
View = Literal["posterior", "side"]

Array = NDArray[np.float64]

#: MediaPipe PoseLandmark indices (left, right): the person's anatomical sides.
JOINTS: dict[str, tuple[int, int]] = {
    "shoulder": (11, 12),
    "hip": (23, 24),
    "knee": (25, 26),
    "ankle": (27, 28),
    "heel": (29, 30),
    "toe": (31, 32),
}

#: every left/right landmark pair of the 33 (face, arms and legs)
LR_PAIRS: tuple[tuple[int, int], ...] = (
    (1, 4), (2, 5), (3, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16), (17, 18),
    (19, 20), (21, 22), (23, 24), (25, 26), (27, 28), (29, 30), (31, 32),
)  # fmt: skip

X, Y, Z, VIS = 0, 1, 2, 3


def other_side(side: Side) -> Side:
    return "right" if side == "left" else "left"


@dataclass
class Track:
    """Landmarks of one person over a clip.

    ``data`` has shape (frames, 33, 4): x and y in pixels of the full frame
    (y pointing down), MediaPipe's relative depth z scaled like x, and the
    visibility in [0, 1]. Frames without a pose are NaN.
    """

    data: Array
    fps: float
    width: int
    height: int
    #: frames dropped because the tracker had moved to another person
    rejected: NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, dtype=bool))

    def __post_init__(self) -> None:
        if self.rejected.shape != (len(self.data),):
            self.rejected = np.zeros(len(self.data), dtype=bool)

    @property
    def frames(self) -> int:
        return len(self.data)

    @property
    def times(self) -> Array:
        return np.arange(self.frames, dtype=float) / self.fps

    def point(self, joint: str, side: Side) -> Array:
        """(frames, 2) pixel positions of ``joint`` on ``side``."""
        return self.data[:, JOINTS[joint][0 if side == "left" else 1], :2]

    def visibility(self, joint: str, side: Side) -> Array:
        return self.data[:, JOINTS[joint][0 if side == "left" else 1], VIS]

    def midpoint(self, joint: str) -> Array:
        return (self.point(joint, "left") + self.point(joint, "right")) / 2

    def present(self) -> NDArray[np.bool_]:
        """Frames with a pose."""
        out: NDArray[np.bool_] = ~np.isnan(self.data[:, 23, X])
        return out

    def leg_lengths(self, side: Side) -> Array:
        """Hip-knee plus knee-ankle length of ``side`` in each frame, in pixels."""
        out: Array = np.linalg.norm(
            self.point("hip", side) - self.point("knee", side), axis=1
        ) + np.linalg.norm(self.point("knee", side) - self.point("ankle", side), axis=1)
        return out

    def leg_length(self, percentile: float = 50) -> float:
        """The legs' length in pixels over the clip (median of both sides' frames).

        From behind, the leg looks shorter while it swings (the knee flexes
        toward the camera): a high percentile then gives its straight length.
        """
        values = np.concatenate([self.leg_lengths("left"), self.leg_lengths("right")])
        values = values[~np.isnan(values)]
        return float(np.percentile(values, percentile)) if values.size else float("nan")

    def with_data(self, data: Array) -> Track:
        return replace(self, data=data)
