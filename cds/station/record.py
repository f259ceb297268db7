"""A finished retraining session as FHIR R4: a Procedure and what was measured in it.

- **Procedure**: the session (code: our plans CodeSystem's
  ``gait-retraining-video-feedback``), ``basedOn`` the ServiceRequest that
  ordered it, the performed period, completed or stopped early, with the
  session number, schedule and target in its note.
- **Observations**, ``partOf`` the Procedure: pain before and after (0-10), and
  the target metric per block (and per side): the mean over its strides, with
  ``strides-analyzed``, ``between-stride-sd``, ``strides-in-band`` and
  ``real-time-feedback`` (given or withheld) components and the target band as
  ``referenceRange``, so retention without feedback is visible. The CDS
  service never takes a block with feedback given as the runner's form.

The Bundle is a transaction, validated, and posted by the same code as
``runform-cds measure --post``.
"""

from __future__ import annotations

import statistics
from datetime import UTC, datetime
from importlib.metadata import version
from typing import Any

from cds.fhir.codes import PLANS_SYSTEM, plan_display
from cds.fhir.observations import coded_component, metric_observation, quantity_component
from cds.measures.bundle import Transaction, patient_id, software_device
from cds.measures.pose import MODEL_COMPLEXITY, mediapipe_version
from cds.measures.track import Side
from cds.rules.cards import RETRAINING_PLAN
from cds.station.session import BlockRecord, Session, Setup
from cds.station.targets import target

__all__ = ["session_bundle"]


def _when(epoch: float | None, fallback: datetime) -> str:
    return (datetime.fromtimestamp(epoch, UTC) if epoch else fallback).isoformat()


def _procedure(session: Session, setup: Setup, pid: str, minutes: float) -> dict[str, Any]:
    assert session.plan is not None and session.started_at and session.stopped_at
    t = target(setup.metric)
    done = minutes >= session.plan.minutes - 0.05
    side = "both sides" if setup.side == "both" else f"{setup.side} side"
    proc: dict[str, Any] = {
        "resourceType": "Procedure",
        "status": "completed" if done else "stopped",
        "code": {
            "coding": [
                {
                    "system": PLANS_SYSTEM,
                    "code": RETRAINING_PLAN,
                    "display": plan_display(RETRAINING_PLAN),
                }
            ],
            "text": f"Gait retraining session {setup.session} of {len(session.schedule.sessions)}",
        },
        "subject": {"reference": f"Patient/{pid}"},
        "performedPeriod": {
            "start": session.started_at.isoformat(),
            "end": session.stopped_at.isoformat(),
        },
        "note": [
            {
                "text": (
                    f"Session {setup.session} of {len(session.schedule.sessions)} "
                    f"({session.schedule.name}); {minutes:.1f} of {session.plan.minutes:g} "
                    f"minutes on the treadmill; feedback planned for "
                    f"{session.plan.feedback_share:.0%} of the session. Target: "
                    f"{t.display if t else setup.metric}, {side}, {setup.low:g}-{setup.high:g} "
                    f"{t.unit if t else ''}." + (f" Cue: {setup.cue}" if setup.cue else "")
                )
            }
        ],
    }
    if not done:
        proc["statusReason"] = {
            "text": f"stopped after {minutes:.1f} of {session.plan.minutes:g} minutes"
        }
    if setup.service_request:
        proc["basedOn"] = [{"reference": setup.service_request}]
    return proc


def _pain(pid: str, code: str, value: float, when: datetime, procedure: str) -> dict[str, Any]:
    obs = metric_observation(pid, code, value, None, effective=when)
    obs["partOf"] = [{"reference": procedure}]
    return obs


def _block_observation(
    block: BlockRecord,
    setup: Setup,
    side: Side | None,
    pid: str,
    refs: dict[str, str],
    start: datetime,
) -> dict[str, Any] | None:
    """The block's mean on ``side`` (None: a whole-body metric, both sides' strides)."""
    values = [v.value for v in block.values if side is None or v.side == side]
    if not values:
        return None
    t = target(setup.metric)
    unit = t.unit if t else ""
    obs = metric_observation(
        pid, setup.metric, round(statistics.fmean(values), 2), None, effective=start,
        side=side, strides=len(values), gait_mode="running",
    )  # fmt: skip
    obs.pop("effectiveDateTime")
    obs["effectivePeriod"] = {
        "start": _when(block.started_at, start),
        "end": _when(block.ended_at, start),
    }
    obs["partOf"] = [{"reference": refs["procedure"]}]
    obs["device"] = {"reference": refs["device"]}
    obs["method"] = {"text": f"live 2D video on the treadmill, block {block.index + 1}"}
    in_band = sum(setup.low <= v <= setup.high for v in values)
    if t is not None:
        obs["component"].append(coded_component("capture-view", t.view))
    obs["component"] += [
        coded_component("real-time-feedback", "given" if block.feedback else "withheld"),
        quantity_component("strides-in-band", 100 * in_band / len(values), "%"),
    ]
    if len(values) > 1:
        sd = statistics.stdev(values)
        obs["component"].append(quantity_component("between-stride-sd", sd, unit or "1"))
    obs["referenceRange"] = [
        {
            "low": {"value": setup.low, "unit": unit, "system": "http://unitsofmeasure.org",
                    "code": unit or "1"},
            "high": {"value": setup.high, "unit": unit, "system": "http://unitsofmeasure.org",
                     "code": unit or "1"},
            "text": "target band set by the clinician for this session",
        }
    ]  # fmt: skip
    return obs


def session_bundle(session: Session) -> dict[str, Any]:
    """The stopped session as a validated transaction Bundle."""
    setup = session.setup
    assert setup is not None and session.started_at and session.stopped_at
    pid = patient_id(setup.patient)
    tx = Transaction()
    device = software_device(
        {"mediapipe": mediapipe_version(),
         "pose model": f"BlazePose Full, model_complexity={MODEL_COMPLEXITY}",
         "opencv": version("opencv-contrib-python")}
    )  # fmt: skip
    device["deviceName"] = [{"name": "runform-cds retrain", "type": "user-friendly-name"}]
    refs = {"device": tx.add(device)}
    refs["procedure"] = tx.add(_procedure(session, setup, pid, session.elapsed_s / 60))
    if session.pain_before is not None:
        tx.add(_pain(pid, "pain-before-session", session.pain_before, session.started_at,
                     refs["procedure"]))  # fmt: skip
    if session.pain_after is not None:
        tx.add(_pain(pid, "pain-after-session", session.pain_after, session.stopped_at,
                     refs["procedure"]))  # fmt: skip
    t = target(setup.metric)
    sides: list[Side | None] = (
        [None] if t is not None and not t.sided
        else ["left", "right"] if setup.side == "both"
        else [setup.side]
    )  # fmt: skip
    for block in session.blocks:
        for side in sides:
            obs = _block_observation(block, setup, side, pid, refs, session.started_at)
            if obs is not None:
                tx.add(obs)
    return tx.bundle()
