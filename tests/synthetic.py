"""Synthetic landmark tracks with known geometry, and the exact answers they imply.

A gait is built from the feet up: each foot rests on the floor during stance
(moving backward as on a treadmill) and swings forward in an arc; the knee is
placed by two-link inverse kinematics, so knee flexion follows from the
hip-ankle distance by the law of cosines. The posterior view is built from
the hips down with chosen pelvic drop, thigh and shank angles. Every expected
value is computed here from the generating parameters, not by the code under
test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from cds.measures.track import JOINTS, LR_PAIRS, Track

SEG = 100.0  # thigh = shank length, pixels
SIDES = ("left", "right")


def _idx(joint: str, side: str) -> int:
    return JOINTS[joint][0 if side == "left" else 1]


@dataclass
class Truth:
    """What the generator put in: event times (s) and per-stride values by side."""

    ic: dict[str, list[float]] = field(default_factory=lambda: {"left": [], "right": []})
    to: dict[str, list[float]] = field(default_factory=lambda: {"left": [], "right": []})
    values: dict[tuple[str, str | None], list[float]] = field(default_factory=dict)

    def add(self, code: str, side: str | None, value: float) -> None:
        self.values.setdefault((code, side), []).append(value)

    def mean(self, code: str, side: str | None = None) -> float:
        return float(np.mean(self.values[(code, side)]))


@dataclass
class Gait:
    fps: float = 120.0
    seconds: float = 12.0
    cadence: float = 170.0  # steps/min
    duty: float = 0.36  # stance share of the stride
    reach: float = 45.0  # ankle ahead of the hip at IC (px)
    trail: float = 60.0  # ankle behind the hip at TO (px)
    clearance: float = 50.0  # swing height of the ankle (px)
    hip_height: float = 190.0  # hip above the floor (px)
    ankle_height: float = 10.0
    heel_back: float = 12.0
    toe_forward: float = 30.0
    strike_deg: float = 12.0  # foot inclination at IC, toes up
    trunk_lean_deg: float = 8.0  # forward (side) or toward the stance side (posterior)
    facing: int = 1
    width: int = 1280
    height: int = 720

    @property
    def stride_s(self) -> float:
        return 120.0 / self.cadence

    def phase(self, t: float, side: str) -> float:
        offset = 0.0 if side == "left" else 0.5
        return (t / self.stride_s + offset) % 1.0


def _empty(frames: int) -> np.ndarray:
    data = np.full((frames, 33, 4), np.nan)
    data[:, 11:33, 3] = 0.99
    return data


def _set(
    data: np.ndarray, t: int, joint: str, side: str, x: float, y: float, z: float = 0.0
) -> None:
    data[t, _idx(joint, side), :3] = (x, y, z)


def _ankle_side_view(g: Gait, p: float) -> tuple[float, float, float]:
    """Ankle (forward offset from hip, height above floor) and foot angle at phase ``p``."""
    # smooth (C1) paths, as real limbs move: eased at both ends of stance and swing
    if p < g.duty:
        s = p / g.duty
        forward = g.reach - (g.reach + g.trail) * (1 - math.cos(math.pi * s)) / 2
        angle = g.strike_deg * math.cos(math.pi / 2 * min(1.0, s / 0.3)) ** 2
        return forward, g.ankle_height, angle
    s = (p - g.duty) / (1 - g.duty)
    forward = -g.trail + (g.reach + g.trail) * (1 - math.cos(math.pi * s)) / 2
    height = g.ankle_height + g.clearance * math.sin(math.pi * s)  # lands moving down
    angle = g.strike_deg * math.sin(math.pi / 2 * s) ** 2  # toes come up through swing
    return forward, height, angle


def _knee_flexion(hip: tuple[float, float], ankle: tuple[float, float]) -> float:
    d = min(math.dist(hip, ankle), 2 * SEG - 1e-6)
    return 180.0 - math.degrees(math.acos(1 - d * d / (2 * SEG * SEG)))


def side_view(g: Gait) -> tuple[Track, Truth]:
    """A runner (or walker) on a treadmill, camera to their side."""
    frames = int(g.seconds * g.fps)
    data = _empty(frames)
    truth = Truth()
    hip_x, floor = g.width / 2, g.height - 60.0
    near = "left" if g.facing < 0 else "right"
    for t in range(frames):
        time = t / g.fps
        hip_up = g.hip_height + 4 * math.cos(4 * math.pi * time / g.stride_s)
        hip = (0.0, hip_up)  # body frame: x forward, y up, floor at 0
        for side in SIDES:
            forward, up, angle = _ankle_side_view(g, g.phase(time, side))
            ankle = (forward, up)
            d = math.dist(hip, ankle)
            half = math.sqrt(max(SEG * SEG - d * d / 4, 0.0))
            mid = ((hip[0] + ankle[0]) / 2, (hip[1] + ankle[1]) / 2)
            nx, ny = (ankle[1] - hip[1]) / d, -(ankle[0] - hip[0]) / d  # normal, knee forward
            if nx < 0:
                nx, ny = -nx, -ny
            knee = (mid[0] + half * nx, mid[1] + half * ny)
            a = math.radians(angle)
            heel = (ankle[0] - g.heel_back, up - g.ankle_height)
            toe = (heel[0] + (g.heel_back + g.toe_forward) * math.cos(a),
                   heel[1] + (g.heel_back + g.toe_forward) * math.sin(a))  # fmt: skip
            z = -30.0 if side == near else 30.0
            for joint, (fx, fy) in (("hip", hip), ("knee", knee), ("ankle", ankle),
                                    ("heel", heel), ("toe", toe)):  # fmt: skip
                _set(data, t, joint, side, hip_x + g.facing * fx, floor - fy, z)
        lean = math.radians(g.trunk_lean_deg)
        for side in SIDES:
            z = -30.0 if side == near else 30.0
            _set(data, t, "shoulder", side, hip_x + g.facing * 160 * math.sin(lean),
                 floor - hip_up - 160 * math.cos(lean), z)  # fmt: skip
    _side_truth(g, truth, frames)
    return Track(data, g.fps, g.width, g.height), truth


def _event_truth(g: Gait, truth: Truth) -> None:
    n = int(g.seconds / g.stride_s) + 2
    for side in SIDES:
        offset = 0.0 if side == "left" else 0.5
        for k in range(n):
            ic = (k - offset) * g.stride_s
            if 0 <= ic < g.seconds:
                truth.ic[side].append(ic)
                truth.to[side].append(ic + g.duty * g.stride_s)


def _side_truth(g: Gait, truth: Truth, frames: int) -> None:
    _event_truth(g, truth)
    for side in SIDES:
        for ic in truth.ic[side]:
            hip_up = g.hip_height + 4 * math.cos(4 * math.pi * ic / g.stride_s)
            truth.add("knee-flexion-initial-contact", side,
                      _knee_flexion((0.0, hip_up), (g.reach, g.ankle_height)))  # fmt: skip
            truth.add("overstride", side, 100 * (g.reach - g.heel_back) / (2 * SEG))
            truth.add("foot-inclination-initial-contact", side, g.strike_deg)
    truth.add("trunk-forward-lean", None, g.trunk_lean_deg)
    truth.add("cadence", None, g.cadence)


@dataclass
class Frontal:
    """Posterior-view parameters: peaks reached at midstance of each side."""

    drop_deg: dict[str, float] = field(default_factory=lambda: {"left": 4.0, "right": 8.0})
    thigh_deg: dict[str, float] = field(default_factory=lambda: {"left": 6.0, "right": 9.0})
    shank_deg: dict[str, float] = field(default_factory=lambda: {"left": 2.0, "right": 1.0})
    pelvis_width: float = 60.0  # also the heel-to-heel width at contact (legs vertical then)


def _bump(g: Gait, p: float) -> float:
    """0 outside stance, rising to 1 at midstance."""
    return math.sin(math.pi * p / g.duty) if p < g.duty else 0.0


def _swing_lift(g: Gait, p: float) -> float:
    """0 in stance, rising to 1 at mid-swing."""
    return 0.0 if p < g.duty else math.sin(math.pi * (p - g.duty) / (1 - g.duty))


def posterior_view(g: Gait, f: Frontal) -> tuple[Track, Truth]:
    """A runner seen from behind: the runner's left is the image's left."""
    frames = int(g.seconds * g.fps)
    data = _empty(frames)
    truth = Truth()
    cx, floor = g.width / 2, g.height - 60.0
    medial = {"left": 1.0, "right": -1.0}
    for t in range(frames):
        time = t / g.fps
        phases = {s: g.phase(time, s) for s in SIDES}
        stance = min(SIDES, key=lambda s: phases[s] if phases[s] < g.duty else 9.0)
        lift = {s: _swing_lift(g, phases[s]) for s in SIDES}
        angles = {
            s: (math.radians(f.thigh_deg[s] * _bump(g, phases[s])),
                math.radians(f.shank_deg[s] * _bump(g, phases[s])))
            for s in SIDES
        }  # fmt: skip
        drop = math.radians(f.drop_deg[stance] * _bump(g, phases[stance]))
        # the stance foot is on the floor: its hip height follows from its leg
        a, b = angles[stance]
        stance_hip_y = floor - g.ankle_height - SEG * (math.cos(a) + math.cos(b))
        stance_hip_x = cx - medial[stance] * f.pelvis_width / 2
        other = "right" if stance == "left" else "left"
        hips = {
            stance: (stance_hip_x, stance_hip_y),
            other: (stance_hip_x + medial[stance] * f.pelvis_width * math.cos(drop),
                    stance_hip_y + f.pelvis_width * math.sin(drop)),
        }  # fmt: skip
        for side in SIDES:
            hx, hy = hips[side]
            a, b = angles[side]
            shorten = 1 - 0.35 * lift[side]
            knee = (hx + medial[side] * SEG * math.sin(a), hy + SEG * math.cos(a) * shorten)
            ankle = (
                knee[0] + medial[side] * SEG * math.sin(b),
                knee[1] + SEG * math.cos(b) * shorten,
            )
            for joint, (x, y) in (("hip", (hx, hy)), ("knee", knee), ("ankle", ankle),
                                  ("heel", (ankle[0], ankle[1] + g.ankle_height)),
                                  ("toe", (ankle[0], ankle[1] + g.ankle_height - 4))):  # fmt: skip
                _set(data, t, joint, side, x, y)
        pelvis = (
            (hips["left"][0] + hips["right"][0]) / 2,
            (hips["left"][1] + hips["right"][1]) / 2,
        )
        lean = math.radians(g.trunk_lean_deg * _bump(g, phases[stance]))
        for side in SIDES:
            toward = -medial[stance]  # image direction of the stance side
            _set(data, t, "shoulder", side,
                 pelvis[0] + toward * 160 * math.sin(lean) - medial[side] * 40,
                 pelvis[1] - 160 * math.cos(lean))  # fmt: skip
    _event_truth(g, truth)
    for side in SIDES:
        truth.add("contralateral-pelvic-drop", side, f.drop_deg[side])
        truth.add("peak-hip-adduction", side, f.thigh_deg[side] + f.drop_deg[side])
        truth.add("knee-fppa", side, f.thigh_deg[side] - f.shank_deg[side])
        truth.add("trunk-lateral-lean", side, g.trunk_lean_deg)
    truth.add("cadence", None, g.cadence)
    truth.add("step-width", None, 100 * f.pelvis_width / (2 * SEG))
    return Track(data, g.fps, g.width, g.height), truth


def jitter(track: Track, sigma_px: float, seed: int = 1) -> Track:
    rng = np.random.default_rng(seed)
    data = track.data.copy()
    data[:, :, :2] += rng.normal(0, sigma_px, data[:, :, :2].shape)
    return track.with_data(data)


def swap_labels(track: Track, spans: list[tuple[int, int]]) -> Track:
    """MediaPipe-style left/right label swaps over frame ``spans``."""
    data = track.data.copy()
    for a, b in spans:
        for left, right in LR_PAIRS:
            data[a:b, [left, right]] = data[a:b, [right, left]]
    return track.with_data(data)


def drop_frames(
    track: Track, spans: list[tuple[int, int]], landmarks: list[int] | None = None
) -> Track:
    """Occlusion: landmarks invisible over ``spans``."""
    data = track.data.copy()
    for a, b in spans:
        cols = landmarks if landmarks is not None else list(range(33))
        data[a:b, cols, 3] = 0.05
        data[a:b, cols, :3] = np.random.default_rng(a).uniform(0, 500, (b - a, len(cols), 3))
    return track.with_data(data)


def spikes(track: Track, frames: list[int], px: float = 60.0) -> Track:
    data = track.data.copy()
    for t in frames:
        data[t, 25:29, :2] += px
    return track.with_data(data)


def other_person(track: Track, span: tuple[int, int], shift: float = 500.0) -> Track:
    """Another, smaller person tracked over ``span`` (an identity jump)."""
    data = track.data.copy()
    a, b = span
    centre = np.nanmean(data[a:b, 23:25, :2], axis=(0, 1))
    data[a:b, :, :2] = (data[a:b, :, :2] - centre) * 0.5 + centre + np.array([shift, -200.0])
    return track.with_data(data)
