"""The session report: one self-contained page for the clinician and the runner.

It shows the target metric stride by stride against the band, with the blocks
without feedback shaded, a table per block, and the trend across this
patient's earlier sessions (read from the session records the station kept).
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt

from cds.fhir.codes import METRICS_SYSTEM
from cds.station.session import Session
from cds.station.targets import target

__all__ = ["SessionSummary", "earlier_sessions", "html_report"]

_SESSION = re.compile(r"session (\d+) of (\d+)")


@dataclass(frozen=True)
class SessionSummary:
    """One recorded session of a patient, as read back from its Bundle."""

    date: str
    number: int
    with_feedback: float | None
    without_feedback: float | None


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _metric_code(obs: dict[str, Any]) -> str | None:
    for coding in obs.get("code", {}).get("coding", []):
        if coding.get("system") == METRICS_SYSTEM:
            return str(coding.get("code"))
    return None


def _feedback(obs: dict[str, Any]) -> str | None:
    for comp in obs.get("component", []):
        codes = [c.get("code") for c in comp.get("code", {}).get("coding", [])]
        if "real-time-feedback" in codes:
            found = comp.get("valueCodeableConcept", {}).get("coding", [{}])
            return str(found[0].get("code"))
    return None


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _summary(bundle: dict[str, Any], metric: str) -> SessionSummary | None:
    resources = [e.get("resource", {}) for e in bundle.get("entry", [])]
    procedure = next((r for r in resources if r.get("resourceType") == "Procedure"), None)
    if procedure is None:
        return None
    found = _SESSION.search(str(procedure.get("code", {}).get("text", "")))
    by_feedback: dict[str, list[float]] = {"given": [], "withheld": []}
    for r in resources:
        if r.get("resourceType") == "Observation" and _metric_code(r) == metric:
            value = r.get("valueQuantity", {}).get("value")
            kind = _feedback(r)
            if isinstance(value, int | float) and kind in by_feedback:
                by_feedback[kind].append(float(value))
    return SessionSummary(
        str(procedure.get("performedPeriod", {}).get("start", ""))[:10],
        int(found.group(1)) if found else 0,
        _mean(by_feedback["given"]),
        _mean(by_feedback["withheld"]),
    )


def earlier_sessions(folder: Path, metric: str) -> list[SessionSummary]:
    """The sessions recorded in ``folder`` (one Bundle file each), oldest first; files
    that cannot be read are skipped."""
    out = []
    for path in sorted(folder.glob("session-*.json")):
        try:
            summary = _summary(json.loads(path.read_text("utf-8")), metric)
        except (OSError, ValueError):
            continue
        if summary is not None and (summary.with_feedback or summary.without_feedback):
            out.append(summary)
    return out


def _session_plot(session: Session) -> str:
    setup = session.setup
    assert setup is not None
    fig, ax = plt.subplots(figsize=(8, 3))
    for block in session.blocks:
        if not block.feedback:
            ax.axvspan(block.start_s / 60, block.end_s / 60, color="#dddddd", lw=0)
    ax.axhspan(setup.low, setup.high, color="#2e7d32", alpha=0.15, lw=0)
    start = session.started_at.timestamp() if session.started_at else 0.0
    for side, colour in (("left", "#1f77b4"), ("right", "#d62728")):
        points = [
            ((v.ended - start) / 60, v.value)
            for b in session.blocks
            for v in b.values
            if v.side == side
        ]
        if points:
            ax.plot(*zip(*points, strict=True), "o", ms=3, color=colour, label=side)
    t = target(setup.metric)
    ax.set_xlabel("minutes (grey: no feedback on the runner's screen)")
    ax.set_ylabel(f"{t.display if t else setup.metric} ({t.unit if t else ''})")
    ax.legend(loc="upper right", fontsize=8)
    return _png(fig)


def _trend_plot(history: list[SessionSummary]) -> str:
    fig, ax = plt.subplots(figsize=(8, 2.6))
    numbers = [h.number for h in history]
    given = [h.with_feedback for h in history]
    withheld = [h.without_feedback for h in history]
    ax.plot(
        numbers, [g if g is not None else float("nan") for g in given], "o-", label="with feedback"
    )
    ax.plot(numbers, [w if w is not None else float("nan") for w in withheld], "s--",
            label="without feedback")  # fmt: skip
    ax.set_xlabel("session")
    ax.legend(fontsize=8)
    return _png(fig)


def _rows(session: Session) -> str:
    setup = session.setup
    assert setup is not None
    rows = []
    for b in session.blocks:
        s = b.summary(setup.low, setup.high)
        share = f"{100 * s['in_band'] / s['strides']:.0f}%" if s["strides"] else "-"
        rows.append(
            f"<tr><td>{b.index + 1}</td><td>{b.start_s / 60:.0f}-{b.end_s / 60:.0f} min</td>"
            f"<td>{'on' if b.feedback else 'off'}</td><td>{s['strides']}</td>"
            f"<td>{s['mean'] if s['mean'] is not None else '-'}</td>"
            f"<td>{s['sd'] if s['sd'] is not None else '-'}</td><td>{share}</td></tr>"
        )
    return "\n".join(rows)


def html_report(session: Session, path: Path, history: list[SessionSummary]) -> Path:
    setup = session.setup
    assert setup is not None and session.plan is not None
    t = target(setup.metric)
    trend = (
        f"<h2>Across sessions</h2><img alt='trend across sessions' src='{_trend_plot(history)}'>"
        if len(history) > 1
        else "<p class='small'>The trend across sessions appears from the second session.</p>"
    )
    page = _TEMPLATE.format(
        patient=html.escape(setup.patient), session=setup.session,
        sessions=len(session.schedule.sessions),
        date=session.started_at.date().isoformat() if session.started_at else "",
        minutes=session.elapsed_s / 60, planned=session.plan.minutes,
        metric=html.escape(t.display if t else setup.metric), unit=html.escape(t.unit if t else ""),
        side=setup.side, low=setup.low, high=setup.high, cue=html.escape(setup.cue),
        before=session.pain_before, after=session.pain_after, rows=_rows(session),
        plot=_session_plot(session), trend=trend, schedule=html.escape(session.schedule.name),
    )  # fmt: skip
    path.write_text(page, "utf-8")
    return path


_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Retraining session {session}: {patient}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 60rem; margin: 1.5rem auto; color: #222; }}
h1 {{ font-size: 1.4rem; margin-bottom: 0.2rem; }} h2 {{ font-size: 1.1rem; }}
.meta {{ color: #555; font-size: 0.9rem; }} img {{ max-width: 100%; }}
table {{ border-collapse: collapse; width: 100%; font-size: 0.9rem; margin: 1rem 0; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 0.35rem; text-align: left; }}
.small {{ font-size: 0.8rem; color: #555; }}
</style></head><body>
<h1>Gait retraining: session {session} of {sessions}</h1>
<p class="meta">{patient} &middot; {date} &middot; {minutes:.1f} of {planned:g} minutes
&middot; schedule: {schedule}</p>
<p>Target: <b>{metric}</b> ({side}) between <b>{low:g} and {high:g} {unit}</b>.
Cue: <em>{cue}</em>. Pain before {before}/10, after {after}/10.</p>
<img alt="the session stride by stride" src="{plot}">
<p class="small">Each dot is one stride; the green band is the target. Grey stretches had no
feedback on the runner's screen: what the runner holds there on their own is what lasts.</p>
<table><tr><th>Block</th><th>Time</th><th>Feedback</th><th>Strides</th><th>Mean</th><th>SD</th>
<th>In band</th></tr>
{rows}
</table>
{trend}
<p class="small">Screening measurements from ordinary video during treadmill running; read them
with the runner's symptoms and examination.</p>
</body></html>
"""
