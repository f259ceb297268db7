"""Run-form metrics per side and per stride, with their quality verdicts."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from cds.measures.events import GaitEvents, Stride
from cds.measures.geometry import Geometry
from cds.measures.settings import MeasureSettings
from cds.measures.track import JOINTS, VIS, Side, View, other_side

__all__ = [
    "SPECS",
    "MetricResult",
    "MetricSpec",
    "Offsets",
    "compute_metrics",
    "spec_for",
    "static_offsets",
    "stride_values",
]

Array = NDArray[np.float64]
Extract = Literal["peak_stance", "at_ic", "mean_stance", "midstance"]
SIDES: tuple[Side, Side] = ("left", "right")
#: static-trial medians by (metric code, side)
Offsets = dict[tuple[str, Side], float]
CYCLE_POINTS = 101
#: share of stance (from initial contact) searched for stance peaks
LOADING_SHARE = 0.7


@dataclass(frozen=True)
class MetricSpec:
    code: str
    view: View
    joints: tuple[str, ...]
    signal: Callable[[Geometry, Side], Array]
    extract: Extract
    unit: str = "deg"
    #: subtract the static standing trial (segment orientations)
    static_offset: bool = False
    #: one value for the whole body, pooled over both sides' strides
    whole_body: bool = False
    caution: str | None = None


SPECS: tuple[MetricSpec, ...] = (
    MetricSpec(
        "contralateral-pelvic-drop", "posterior", ("hip",), Geometry.pelvic_obliquity,
        "peak_stance", static_offset=True,
    ),
    MetricSpec(
        "peak-hip-adduction", "posterior", ("hip", "knee"), Geometry.hip_adduction, "peak_stance"
    ),
    MetricSpec(
        "knee-fppa", "posterior", ("hip", "knee", "ankle"), Geometry.knee_fppa, "peak_stance",
        caution="2D frontal-plane projection angle: a screening sign, not 3D knee abduction",
    ),
    MetricSpec(
        "trunk-lateral-lean", "posterior", ("shoulder", "hip"), Geometry.trunk_lateral_lean,
        "midstance", static_offset=True,
    ),
    MetricSpec(
        "knee-flexion-initial-contact", "side", ("hip", "knee", "ankle"), Geometry.knee_flexion,
        "at_ic",
    ),
    MetricSpec(
        "peak-knee-flexion-stance", "side", ("hip", "knee", "ankle"), Geometry.knee_flexion,
        "peak_stance",
    ),
    MetricSpec(
        "foot-inclination-initial-contact", "side", ("heel", "toe"), Geometry.foot_inclination,
        "at_ic", static_offset=True,
    ),
    MetricSpec("overstride", "side", ("hip", "heel"), Geometry.overstride, "at_ic", unit="%"),
    MetricSpec(
        "trunk-forward-lean", "side", ("shoulder", "hip"), Geometry.trunk_forward_lean,
        "mean_stance", static_offset=True, whole_body=True,
    ),
)  # fmt: skip


@dataclass
class MetricResult:
    """One metric on one side (or the whole body): per-stride values and verdicts."""

    code: str
    side: Side | None
    unit: str
    values: list[float]
    visible_fraction: float
    #: reasons the number must not be used (reported as dataAbsentReason)
    problems: list[str] = field(default_factory=list)
    #: caveats that travel with the number (notes)
    cautions: list[str] = field(default_factory=list)
    #: the per-frame signal over each stride, resampled to 0..100 % of the gait cycle
    cycles: Array | None = None
    #: sides whose strides are pooled in ``values`` (whole-body metrics)
    sides_pooled: int = 1

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def strides_per_side(self) -> int:
        """What the data contract's ``strides-analyzed`` means: strides of one side."""
        return self.n // self.sides_pooled

    @property
    def mean(self) -> float:
        return float(np.mean(self.values)) if self.values else float("nan")

    @property
    def sd(self) -> float:
        return float(np.std(self.values, ddof=1)) if self.n > 1 else float("nan")

    @property
    def usable(self) -> bool:
        return not self.problems and self.n > 0


def _interp(signal: Array, t: float) -> float:
    i = int(np.floor(t))
    if i + 1 >= len(signal):
        return float(signal[min(i, len(signal) - 1)])
    return float(signal[i] + (t - i) * (signal[i + 1] - signal[i]))


def _extract(signal: Array, stride: Stride, how: Extract) -> float:
    if how == "at_ic":
        return _interp(signal, stride.ic)
    if how == "midstance":
        return _interp(signal, (stride.ic + stride.to) / 2)
    stance = signal[stride.stance_frames()]
    if how == "peak_stance":
        # the loading part of stance: in walking the knee already flexes for swing by toe-off
        loading = stance[: max(1, int(np.ceil(LOADING_SHARE * len(stance))))]
        return float(np.max(loading))
    return float(np.mean(stance))


def cycle(signal: Array, stride: Stride) -> Array:
    """``signal`` over one stride, resampled to 101 points (0..100 % of the cycle)."""
    t = np.linspace(stride.ic, stride.next_ic, CYCLE_POINTS)
    frames = np.arange(len(signal))
    out: Array = np.interp(t, frames, signal)
    return out


def _visible_fraction(
    geo: Geometry, strides: list[Stride], side: Side, joints: tuple[str, ...]
) -> float:
    """Share of the strides' frames in which every landmark of ``joints`` was visible."""
    if not strides:
        return 0.0
    frames = np.unique(
        np.concatenate([np.arange(int(s.ic), int(np.ceil(s.next_ic)) + 1) for s in strides])
    )
    frames = frames[frames < geo.track.frames]
    if frames.size == 0:
        return 0.0
    indices = [JOINTS[j][0 if side == "left" else 1] for j in joints]
    vis = geo.track.data[np.ix_(frames, indices)][:, :, VIS]
    return float(np.mean(np.all(vis >= geo.min_visibility, axis=1)))


def _far_side(geo: Geometry) -> Side | None:
    """In a side view the limb away from the camera (facing image-left shows the left)."""
    if geo.view != "side":
        return None
    return "right" if geo.facing < 0 else "left"


def compute_metrics(
    geo: Geometry,
    events: GaitEvents,
    settings: MeasureSettings,
    offsets: Offsets | None = None,
) -> list[MetricResult]:
    """Every metric of ``geo.view`` for both sides, plus cadence (and step width)."""
    offsets = offsets or {}
    far = _far_side(geo)
    running = events.mode == "running"
    results: list[MetricResult] = []
    for spec in SPECS:
        if spec.view != geo.view:
            continue
        sides: tuple[Side, ...] = (other_side(far),) if spec.whole_body and far else SIDES
        if spec.whole_body:
            strides = [s for s in events.strides if s.side in sides]
            results.append(_spec_result(geo, spec, strides, None, offsets, pooled=sides))
            continue
        for side in sides:
            result = _spec_result(geo, spec, events.side_strides(side), side, offsets)
            if side == far:
                result.problems.append(
                    "far limb in a side view: occluded and underestimated; film the other side"
                )
            results.append(result)
    results.append(_cadence(geo, events, far))
    if geo.view == "posterior":
        results.append(_step_width(geo, events))
    for result in results:
        _judge(result, settings, running, geo.track.fps)
    return results


def spec_for(code: str) -> MetricSpec | None:
    return next((s for s in SPECS if s.code == code), None)


def _signal(geo: Geometry, spec: MetricSpec, side: Side, offsets: Offsets) -> Array:
    signal = spec.signal(geo, side)
    if spec.static_offset:
        signal = signal - offsets.get((spec.code, side), 0.0)
    return signal


def stride_values(
    geo: Geometry,
    events: GaitEvents,
    code: str,
    side: Side,
    offsets: Offsets | None = None,
) -> list[tuple[Stride, float]]:
    """Each complete stride of ``side`` with its value of metric ``code`` (cadence
    included), by the same definitions as :func:`compute_metrics`; the live station
    reads strides one at a time through this."""
    if side == _far_side(geo):
        return []  # occluded and underestimated, as the batch pipeline reports it
    strides = events.side_strides(side)
    if code == "cadence":
        return [(s, 120.0 * geo.track.fps / s.frames) for s in strides]
    if code == "step-width":
        if geo.view != "posterior":
            return []
        by_contact = {round(s.ic, 3): s for s in strides}
        return [
            (by_contact[round(t, 3)], v)
            for t, s, v in _steps(geo, events)
            if s == side and round(t, 3) in by_contact
        ]
    spec = spec_for(code)
    if spec is None or spec.view != geo.view:
        return []
    signal = _signal(geo, spec, side, offsets or {})
    pairs = [(s, _extract(signal, s, spec.extract)) for s in strides]
    return [(s, v) for s, v in pairs if np.isfinite(v)]


def _spec_result(
    geo: Geometry,
    spec: MetricSpec,
    strides: list[Stride],
    side: Side | None,
    offsets: Offsets,
    pooled: tuple[Side, ...] = (),
) -> MetricResult:
    """``spec`` over ``strides``: of ``side``, or (``side`` None) of the ``pooled`` sides."""
    signal_side = side or pooled[0]
    signal = _signal(geo, spec, signal_side, offsets)
    values = [_extract(signal, s, spec.extract) for s in strides]
    seen = (side,) if side else SIDES
    result = MetricResult(
        spec.code, side, spec.unit, [v for v in values if np.isfinite(v)],
        min(_visible_fraction(geo, strides, s, spec.joints) for s in seen),
        cycles=np.array([cycle(signal, s) for s in strides]) if strides else None,
        sides_pooled=max(1, len(pooled)),
    )  # fmt: skip
    _add_cautions(result, spec, offsets)
    return result


def _add_cautions(result: MetricResult, spec: MetricSpec, offsets: Offsets) -> None:
    if spec.caution:
        result.cautions.append(spec.caution)
    if spec.static_offset and not offsets:
        result.cautions.append(
            "no static standing trial: absolute segment angle, includes landmark offsets"
        )


def _cadence(geo: Geometry, events: GaitEvents, far: Side | None) -> MetricResult:
    strides = [s for s in events.strides if s.side != far]
    values = [120.0 * geo.track.fps / s.frames for s in strides]
    sides: tuple[Side, ...] = tuple(s for s in SIDES if s != far)
    fraction = min(_visible_fraction(geo, strides, side, ("heel", "toe")) for side in sides)
    return MetricResult("cadence", None, "/min", values, fraction, sides_pooled=len(sides))


def _steps(geo: Geometry, events: GaitEvents) -> list[tuple[float, Side, float]]:
    """Each step: the contact that ends it (frame, side) and the step width there, right
    heel minus left heel (medio-lateral) at the two contacts, in % of leg length."""
    contacts = sorted((t, side) for side in SIDES for t in events.ic[side])
    out = []
    for (t0, s0), (t1, s1) in itertools.pairwise(contacts):
        if s0 == s1 or (t1 - t0) > 1.5 * geo.track.fps:
            continue
        x = {s0: _interp(geo.heel_x(s0), t0), s1: _interp(geo.heel_x(s1), t1)}
        value = 100 * (x["right"] - x["left"]) / geo.leg_length
        if np.isfinite(value):
            out.append((t1, s1, value))
    return out


def _step_width(geo: Geometry, events: GaitEvents) -> MetricResult:
    values = [v for _, _, v in _steps(geo, events)]
    fraction = min(_visible_fraction(geo, events.strides, side, ("heel",)) for side in SIDES)
    result = MetricResult("step-width", None, "%", values, fraction, sides_pooled=2)
    result.cautions.append("2D step width from a posterior camera; 0 or less means crossover")
    return result


def _judge(result: MetricResult, settings: MeasureSettings, running: bool, fps: float) -> None:
    if result.n == 0:
        result.problems.append("no complete stride could be analysed")
    elif result.strides_per_side < settings.min_strides:
        result.cautions.append(
            f"measured over {result.strides_per_side} strides per side, fewer than the "
            f"{settings.min_strides} "
            "per side needed for a stable mean: not used for decisions"
        )
    if result.visible_fraction < settings.min_visible_fraction:
        result.problems.append(
            f"landmarks visible in {result.visible_fraction:.0%} of the analysed frames "
            f"(needs {settings.min_visible_fraction:.0%})"
        )
    need = settings.required_fps(result.code, running)
    if fps < need:
        result.problems.append(f"filmed at {fps:.0f} fps; this metric needs {need:.0f} fps or more")


def static_offsets(geo: Geometry) -> Offsets:
    """Median of each offset-corrected metric over a static standing clip."""
    out: Offsets = {}
    for spec in SPECS:
        if spec.view != geo.view or not spec.static_offset:
            continue
        for side in SIDES:
            values = spec.signal(geo, side)
            values = values[np.isfinite(values)]
            if values.size:
                out[(spec.code, side)] = float(np.median(values))
    return out
