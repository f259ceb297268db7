"""Per-frame angles and distances of one cleaned track (the formulas of each metric).

All image points are turned "y up" first. Side view: points are also rotated
so the fitted floor is level and mirrored so the person faces +x, so
"forward" and "up" mean the same whatever the walking direction or camera
roll. Posterior view: the camera is behind the runner, so the runner's left is
the image's left and medial is +x for the left leg, -x for the right.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from cds.measures.events import Floor
from cds.measures.track import Side, Track, View, other_side

__all__ = ["Geometry"]

Array = NDArray[np.float64]


def _deg(y: Array, x: Array) -> Array:
    out: Array = np.degrees(np.arctan2(y, x))
    return out


def _between(a: Array, b: Array) -> Array:
    """Unsigned angle (deg) between row vectors of ``a`` and ``b``."""
    cross = a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]
    dot = (a * b).sum(axis=1)
    return np.abs(_deg(cross, dot))


@dataclass(frozen=True)
class Geometry:
    track: Track
    view: View
    facing: int  # +1: faces image-right (side view)
    floor: Floor
    leg_length: float
    #: landmark visibility counted as "seen" (quality, not geometry; kept here for one source)
    min_visibility: float = 0.5

    def point(self, joint: str, side: Side) -> Array:
        """Position in the metric frame: y up; side view also levelled and facing +x."""
        p: Array = self.track.point(joint, side) * np.array([1.0, -1.0])
        if self.view != "side":
            return p
        theta = np.radians(-self.floor.angle_deg)
        rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
        out: Array = (p @ rot.T) * np.array([float(self.facing), 1.0])
        return out

    def mid(self, joint: str) -> Array:
        return (self.point(joint, "left") + self.point(joint, "right")) / 2

    def _medial(self, side: Side) -> float:
        return 1.0 if side == "left" else -1.0

    # --- posterior view -------------------------------------------------------------

    def pelvic_obliquity(self, stance: Side) -> Array:
        """Angle of the pelvis line, positive when the contralateral hip is lower."""
        s, c = self.point("hip", stance), self.point("hip", other_side(stance))
        return _deg(s[:, 1] - c[:, 1], np.abs(s[:, 0] - c[:, 0]))

    def hip_adduction(self, side: Side) -> Array:
        """Thigh angle from the pelvis perpendicular, positive toward the midline."""
        hip, other = self.point("hip", side), self.point("hip", other_side(side))
        u = other - hip
        u = u / np.linalg.norm(u, axis=1, keepdims=True)
        down = np.column_stack([u[:, 1], -u[:, 0]])
        down = np.where((down[:, 1] > 0)[:, None], -down, down)
        thigh = self.point("knee", side) - hip
        return _deg((thigh * u).sum(axis=1), (thigh * down).sum(axis=1))

    def knee_fppa(self, side: Side) -> Array:
        """180 deg minus the hip-knee-ankle angle, positive when the knee is medial."""
        hip, knee, ankle = (self.point(j, side) for j in ("hip", "knee", "ankle"))
        magnitude = _between(knee - hip, ankle - knee)
        line = ankle - hip
        t = ((knee - hip) * line).sum(axis=1) / (line * line).sum(axis=1)
        offset = (knee - (hip + t[:, None] * line))[:, 0] * self._medial(side)
        out: Array = magnitude * np.sign(offset)
        return out

    def trunk_lateral_lean(self, side: Side) -> Array:
        """Trunk (hip centre to shoulder centre) from vertical, positive toward ``side``."""
        trunk = self.mid("shoulder") - self.mid("hip")
        return _deg(-trunk[:, 0] * self._medial(side), trunk[:, 1])

    # --- side view --------------------------------------------------------------------

    def knee_flexion(self, side: Side) -> Array:
        """Thigh-shank angle, 0 when straight, negative in hyperextension."""
        hip, knee, ankle = (self.point(j, side) for j in ("hip", "knee", "ankle"))
        thigh, shank = knee - hip, ankle - knee
        cross = thigh[:, 0] * shank[:, 1] - thigh[:, 1] * shank[:, 0]
        out: Array = _between(thigh, shank) * np.where(cross > 0, -1.0, 1.0)
        return out

    def foot_inclination(self, side: Side) -> Array:
        """Heel-to-toe angle above the floor line, positive toes up."""
        foot = self.point("toe", side) - self.point("heel", side)
        return _deg(foot[:, 1], foot[:, 0])

    def overstride(self, side: Side) -> Array:
        """Heel ahead of the hip centre, in % of leg length."""
        ahead = self.point("heel", side)[:, 0] - self.mid("hip")[:, 0]
        out: Array = 100 * ahead / self.leg_length
        return out

    def trunk_forward_lean(self, side: Side | None = None) -> Array:
        """Trunk from vertical, positive forward (``side`` is ignored: whole body)."""
        trunk = self.mid("shoulder") - self.mid("hip")
        return _deg(trunk[:, 0], trunk[:, 1])

    def heel_x(self, side: Side) -> Array:
        out: Array = self.point("heel", side)[:, 0]
        return out
