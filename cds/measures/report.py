"""What a clinician looks at: gait-cycle plots, an overlay video and a one-page report."""

from __future__ import annotations

import base64
import html
from collections.abc import Callable
from pathlib import Path

import cv2
import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from numpy.typing import NDArray

from cds.fhir.codes import metric
from cds.measures.analyze import Analysis
from cds.measures.metrics import MetricResult
from cds.measures.track import Side
from cds.measures.video import read_frames

__all__ = ["html_report", "plot_cycles", "write_overlay"]

COLOURS: dict[Side, str] = {"left": "#1f77b4", "right": "#d62728"}
_BGR: dict[Side, tuple[int, int, int]] = {"left": (180, 119, 31), "right": (40, 39, 214)}
_BONES = [
    ("shoulder", "hip"), ("hip", "knee"), ("knee", "ankle"), ("ankle", "heel"), ("heel", "toe"),
    ("ankle", "toe"),
]  # fmt: skip


def _cycle_results(analysis: Analysis) -> list[MetricResult]:
    """One result per plotted waveform (IC and peak of the same angle share one)."""
    seen: set[tuple[str, Side | None]] = set()
    out = []
    for r in analysis.results:
        if r.cycles is None or not len(r.cycles):
            continue
        key = ("knee-flexion" if "knee-flexion" in r.code else r.code, r.side)
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def plot_cycles(analysis: Analysis, path: Path) -> Path:
    """Each metric's signal over the normalised gait cycle, left vs right, mean +/- SD."""
    results = _cycle_results(analysis)
    codes = list(dict.fromkeys(r.code for r in results))
    fig, axes = plt.subplots(
        max(1, len(codes)), 1, figsize=(7, 2.4 * max(1, len(codes))), squeeze=False
    )
    for ax, code in zip(axes[:, 0], codes, strict=False):
        for r in (r for r in results if r.code == code):
            _plot_one(ax, r, analysis)
        m = metric(code)
        title = m.display if m else code
        ax.set_title(title.replace("at initial contact", "").strip(), fontsize=10)
        ax.set_ylabel(_unit_label(results, code))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper right")
    axes[-1, 0].set_xlabel("% of gait cycle (initial contact to next initial contact)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _unit_label(results: list[MetricResult], code: str) -> str:
    unit = next(r.unit for r in results if r.code == code)
    return {"deg": "degrees", "%": "% leg length"}.get(unit, unit)


def _plot_one(ax: Axes, r: MetricResult, analysis: Analysis) -> None:
    assert r.cycles is not None
    x = np.linspace(0, 100, r.cycles.shape[1])
    mean, sd = r.cycles.mean(axis=0), r.cycles.std(axis=0)
    side: Side = r.side or "left"
    label = f"{r.side or 'both'} (n={len(r.cycles)})" + ("" if r.usable else ", not reliable")
    style = "-" if r.usable else ":"
    ax.plot(x, mean, style, color=COLOURS[side], label=label)
    ax.fill_between(x, mean - sd, mean + sd, color=COLOURS[side], alpha=0.15)
    strides = analysis.events.side_strides(side)
    if strides:
        toe_off = 100 * float(np.mean([(s.to - s.ic) / s.frames for s in strides]))
        ax.axvline(toe_off, color=COLOURS[side], linestyle="--", linewidth=0.8)


def _event_labels(analysis: Analysis, frames: int) -> dict[int, list[str]]:
    """Frame -> event labels to show, each held for a few frames so it can be seen."""
    hold = max(2, round(0.1 * analysis.video.fps))
    labels: dict[int, list[str]] = {}
    for side in ("left", "right"):
        for name, times in (("IC", analysis.events.ic[side]), ("TO", analysis.events.to[side])):
            for t in times:
                for f in range(round(t), min(frames, round(t) + hold)):
                    labels.setdefault(f, []).append(f"{name} {side[0].upper()}")
    return labels


def _live_angles(analysis: Analysis) -> list[tuple[str, Side, NDArray[np.float64]]]:
    geo = analysis.geometry
    if analysis.view == "side":
        return [("knee", s, geo.knee_flexion(s)) for s in ("left", "right")]
    # one pelvis angle: the right one is its negative
    pelvis: list[tuple[str, Side, NDArray[np.float64]]] = [
        ("pelvis", "left", geo.pelvic_obliquity("left"))
    ]
    return pelvis + [("FPPA", s, geo.knee_fppa(s)) for s in ("left", "right")]


def write_overlay(
    analysis: Analysis, path: Path, progress: Callable[[int], None] | None = None
) -> Path:
    """The video with the cleaned skeleton, live angles and gait events drawn on it."""
    info, track = analysis.video, analysis.track
    writer = cv2.VideoWriter(
        str(path), cv2.VideoWriter.fourcc(*"mp4v"), info.fps, (info.width, info.height)
    )
    labels = _event_labels(analysis, info.frames)
    angles = _live_angles(analysis)
    scale = max(1.0, info.height / 720)
    try:
        for index, frame in enumerate(read_frames(info.path)):
            if index >= track.frames:
                break
            _draw(frame, analysis, index, labels.get(index, []), angles, scale)
            writer.write(frame)
            if progress:
                progress(1)
    finally:
        writer.release()
    return path


def _draw(
    frame: NDArray[np.uint8], analysis: Analysis, index: int, labels: list[str],
    angles: list[tuple[str, Side, NDArray[np.float64]]], scale: float,
) -> None:  # fmt: skip
    track = analysis.track
    font, thick = cv2.FONT_HERSHEY_SIMPLEX, max(1, int(2 * scale))
    if analysis.roi is not None:
        r = analysis.roi
        cv2.rectangle(frame, (r.x, r.y), (r.x + r.w, r.y + r.h), (200, 200, 200), 1)
    if analysis.raw.rejected[index]:
        cv2.putText(
            frame, "other person: ignored", (20, int(40 * scale)), font, scale, (0, 0, 255), thick
        )
    for side in ("left", "right"):
        for a, b in _BONES:
            p, q = track.point(a, side)[index], track.point(b, side)[index]
            if not (np.isnan(p).any() or np.isnan(q).any()):
                cv2.line(frame, tuple(p.astype(int)), tuple(q.astype(int)), _BGR[side], thick + 1)
    lines = [f"{name} {side[0].upper()}: {values[index]:5.1f} deg" for name, side, values in angles
             if not np.isnan(values[index])]  # fmt: skip
    lines += labels
    for i, text in enumerate(lines):
        y = int((80 + 34 * i) * scale)
        cv2.putText(frame, text, (20, y), font, 0.8 * scale, (255, 255, 255), thick + 2)
        cv2.putText(frame, text, (20, y), font, 0.8 * scale, (0, 0, 0), thick)


def _png_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def key_frame(analysis: Analysis, path: Path) -> Path | None:
    """A still of the first analysed initial contact, skeleton drawn, cropped to the runner."""
    if not analysis.events.strides:
        return None
    index = round(analysis.events.strides[0].ic)
    frame = next(read_frames(analysis.video.path, index, index + 1), None)
    if frame is None:
        return None
    frame = frame.copy()
    _draw(frame, analysis, index, [], _live_angles(analysis), max(1.0, frame.shape[0] / 720))
    if analysis.roi is not None:
        r = analysis.roi
        frame = frame[r.y : r.y + r.h, r.x : r.x + r.w]
    ok, encoded = cv2.imencode(".png", frame)
    if not ok:
        return None
    path.write_bytes(encoded.tobytes())
    return path


def _row(r: MetricResult) -> str:
    m = metric(r.code)
    name = html.escape(m.display if m else r.code)
    side = r.side or "whole body"
    if r.usable:
        value = (
            f"{r.mean:.1f} &plusmn; {r.sd:.1f} {html.escape(r.unit)}"
            if r.n > 1
            else f"{r.mean:.1f}"
        )
        status = "ok" if not r.cautions else "caution"
        note = "; ".join(r.cautions)
    else:
        value, status, note = "not reported", "absent", "; ".join(r.problems)
    return (
        f"<tr class='{status}'><td>{name}</td><td>{side}</td><td>{value}</td>"
        f"<td>{r.n}</td><td>{r.visible_fraction:.0%}</td><td>{html.escape(note)}</td></tr>"
    )


def html_report(
    analysis: Analysis, patient: str, path: Path, plots: Path, still: Path | None, method: str
) -> Path:
    """One self-contained page (images embedded) a clinician can hand to the runner."""
    v = analysis.video
    rows = "\n".join(_row(r) for r in analysis.results)
    still_html = f"<img alt='initial contact' src='{_png_data_uri(still)}'>" if still else ""
    page = _TEMPLATE.format(
        patient=html.escape(patient), view=analysis.view, mode=analysis.events.mode,
        video=html.escape(v.path.name), sha=v.sha256[:16], fps=v.fps, frames=v.frames,
        duration=v.duration_s, rows=rows, plots=_png_data_uri(plots), still=still_html,
        method=html.escape(method), rejected=analysis.rejected_frames,
        swapped=analysis.cleaning.swapped_frames,
    )  # fmt: skip
    path.write_text(page, "utf-8")
    return path


_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Running form report: {patient}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 60rem; margin: 1.5rem auto; color: #222; }}
h1 {{ font-size: 1.4rem; margin-bottom: 0.2rem; }}
.meta {{ color: #555; font-size: 0.9rem; }}
table {{ border-collapse: collapse; width: 100%; font-size: 0.9rem; margin: 1rem 0; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 0.35rem; text-align: left; vertical-align: top; }}
tr.absent td {{ color: #888; }} tr.caution td:nth-child(3) {{ color: #a15c00; }}
.pics {{ display: flex; gap: 1rem; flex-wrap: wrap; }} .pics img {{ max-width: 100%; }}
.small {{ font-size: 0.8rem; color: #555; }}
@media print {{ body {{ margin: 0; }} }}
</style></head><body>
<h1>Running form: what the video shows</h1>
<p class="meta">{patient} &middot; {view} view, {mode} &middot; {video}
({fps:.0f} fps, {frames} frames, {duration:.1f} s, SHA-256 {sha}&hellip;)</p>
<p>Each number is the average over the strides listed, with how much it varied from stride to
stride (&plusmn;). Values marked <em>not reported</em> could not be measured reliably from this
video; the reason is given. These are screening measurements from ordinary video, to be read by
your clinician together with your history and examination.</p>
<table><tr><th>Measure</th><th>Side</th><th>Value</th><th>Strides</th><th>Landmarks seen</th>
<th>Notes</th></tr>
{rows}
</table>
<div class="pics">{still}<img alt="gait-cycle plots" src="{plots}"></div>
<p class="small">Plots: each line is the average over strides (shaded: &plusmn; 1 SD), from initial
contact (0 %) to the next initial contact of the same foot (100 %); dashed lines mark toe-off.
Frames showing another person, ignored: {rejected}. Frames whose left and right labels
were corrected: {swapped}.</p>
<p class="small">Method: {method}</p>
</body></html>
"""
