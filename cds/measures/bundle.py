"""Measurements as a FHIR R4 transaction Bundle, validated, and optionally posted.

Each metric on each side becomes one Observation of our metrics CodeSystem
(``cds.fhir.observations.metric_observation``), extended with what a reader
needs to judge it: the method (view, model, filter, event method), the
analysing software as a Device, quality components (strides, gait mode,
camera view, between-stride SD, visible fraction, frame rate) and
``derivedFrom`` a DocumentReference
carrying the video's hash. A value that is not reliable carries a
``dataAbsentReason`` instead of a number, with the reason in its text.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from typing import TYPE_CHECKING, Any

import httpx
from fhir.resources.R4B.bundle import Bundle
from pydantic import ValidationError

from cds.errors import FhirPostError, MeasureError
from cds.fhir.observations import coded_component, metric_observation, quantity_component

if TYPE_CHECKING:  # the video stack is optional (runform-cds[measure]); strength needs none
    from cds.measures.analyze import Analysis
    from cds.measures.metrics import MetricResult
    from cds.measures.video import VideoInfo

__all__ = [
    "PostResult",
    "Transaction",
    "measurement_bundle",
    "method_text",
    "patient_id",
    "post_bundle",
    "software_device",
    "validate_bundle",
]

DATA_ABSENT = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
_PATIENT = re.compile(r"^Patient/([A-Za-z0-9\-.]{1,64})$")


def patient_id(reference: str) -> str:
    """The id of a ``Patient/ID`` reference; a MeasureError for anything else."""
    match = _PATIENT.match(reference.strip())
    if match is None:
        raise MeasureError(
            f"--patient must be Patient/ID (id: letters, digits, '-' or '.'), got {reference!r}"
        )
    return match.group(1)


class Transaction:
    """Resources collected for one transaction Bundle, referenced by urn:uuid."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    def add(self, resource: dict[str, Any]) -> str:
        """Add ``resource`` as a POST; returns its ``urn:uuid:`` for references."""
        resource = {k: v for k, v in resource.items() if k not in ("id", "meta")}
        full_url = f"urn:uuid:{uuid.uuid4()}"
        self.entries.append(
            {
                "fullUrl": full_url,
                "resource": resource,
                "request": {"method": "POST", "url": resource["resourceType"]},
            }
        )
        return full_url

    def bundle(self) -> dict[str, Any]:
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": self.entries}
        validate_bundle(bundle)
        return bundle


def validate_bundle(bundle: dict[str, Any]) -> None:
    """Validate with fhir.resources (R4B); a MeasureError names the first problems."""
    try:
        Bundle.model_validate(bundle)
    except ValidationError as exc:
        where = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5]
        )
        raise MeasureError(f"the Bundle built does not validate as FHIR R4: {where}") from exc


def software_device(components: dict[str, str]) -> dict[str, Any]:
    """The analysing software as an R4 Device, with every version that shaped the numbers."""
    versions = {"runform-cds": version("runform-cds"), **components}
    return {
        "resourceType": "Device",
        "status": "active",
        "deviceName": [{"name": "runform-cds measure", "type": "user-friendly-name"}],
        "type": {"text": "software"},
        "version": [{"type": {"text": name}, "value": value} for name, value in versions.items()],
    }


def _video_document(info: VideoInfo, patient: str, title: str, when: datetime) -> dict[str, Any]:
    return {
        "resourceType": "DocumentReference",
        "status": "current",
        "identifier": [{"system": "urn:runform-cds:sha256", "value": info.sha256}],
        "type": {"text": title},
        "subject": {"reference": f"Patient/{patient}"},
        "date": when.isoformat(),
        "description": (
            f"{info.path.name}: {info.width}x{info.height}, {info.fps:.2f} fps, "
            f"{info.frames} frames ({info.duration_s:.1f} s); kept at the clinic, not uploaded"
        ),
        "content": [
            {
                "attachment": {
                    "contentType": _content_type(info),
                    "title": info.path.name,
                    "size": info.size_bytes,
                    "hash": info.sha1_b64,
                }
            }
        ],
    }


def _content_type(info: VideoInfo) -> str:
    suffix = info.path.suffix.lower()
    return {".mov": "video/quicktime", ".avi": "video/x-msvideo", ".webm": "video/webm"}.get(
        suffix, "video/mp4"
    )


def _pose_model() -> tuple[str, int]:
    """MediaPipe's version and the pose model's complexity (the video stack loads on use)."""
    from cds.measures.pose import MODEL_COMPLEXITY, mediapipe_version

    return mediapipe_version(), MODEL_COMPLEXITY


def method_text(analysis: Analysis) -> str:
    mediapipe, complexity = _pose_model()
    events = analysis.events
    event_method = {
        "zeni": "Zeni heel/toe-relative-to-pelvis events",
        "foot-height": "foot-height contact events",
    }[events.method]
    roi = {"given": f"ROI {analysis.roi}", "auto": f"auto ROI {analysis.roi}"}.get(
        analysis.roi_source, "full frame"
    )
    static = f"static offset from {analysis.static.path.name}" if analysis.static else "no static"
    return (
        f"2D video, {analysis.view} view ({events.mode}); BlazePose Full via MediaPipe "
        f"{mediapipe} legacy Pose, model_complexity={complexity}, no built-in "
        f"smoothing; {roi}; Hampel + gap fill + 4th-order zero-phase Butterworth "
        f"{analysis.cleaning.cutoff_hz:g} Hz; {event_method}; {static}"
    )


def _observation(
    result: MetricResult, analysis: Analysis, patient: str, when: datetime, refs: dict[str, str]
) -> dict[str, Any]:
    obs = metric_observation(
        patient, result.code, round(result.mean, 2), result.unit, effective=when,
        side=result.side, strides=result.strides_per_side, gait_mode=analysis.events.mode,
    )  # fmt: skip
    obs["component"].append(coded_component("capture-view", analysis.view))
    obs["method"] = {"text": method_text(analysis)}
    obs["device"] = {"reference": refs["device"]}
    obs["derivedFrom"] = [{"reference": refs["video"]}]
    if result.n > 1:
        obs["component"].append(quantity_component("between-stride-sd", result.sd, result.unit))
    obs["component"] += [
        quantity_component("visible-fraction", 100 * result.visible_fraction, "%"),
        quantity_component("frame-rate", analysis.video.fps, "/s"),
    ]
    notes = list(result.cautions)
    if not result.usable:
        obs.pop("valueQuantity")
        estimate = f" (estimate {result.mean:.1f} {result.unit})" if result.n else ""
        obs["dataAbsentReason"] = {
            "coding": [{"system": DATA_ABSENT, "code": "unknown"}],
            "text": "; ".join(result.problems) + estimate,
        }
    if notes:
        obs["note"] = [{"text": n} for n in notes]
    return obs


def measurement_bundle(
    analysis: Analysis, patient: str, *, when: datetime | None = None
) -> dict[str, Any]:
    """The transaction Bundle for one analysed video (``patient`` is ``Patient/ID``)."""
    pid = patient_id(patient)
    when = when or datetime.fromtimestamp(analysis.video.path.stat().st_mtime, UTC)
    mediapipe, complexity = _pose_model()
    tx = Transaction()
    refs = {
        "device": tx.add(
            software_device(
                {
                    "mediapipe": mediapipe,
                    "pose model": f"BlazePose Full, model_complexity={complexity}",
                    "opencv": version("opencv-contrib-python"),
                    "scipy": version("scipy"),
                }
            )
        ),
        "video": tx.add(
            _video_document(analysis.video, pid, f"Running video, {analysis.view} view", when)
        ),
    }
    for result in analysis.results:
        tx.add(_observation(result, analysis, pid, when, refs))
    return tx.bundle()


@dataclass(frozen=True)
class PostResult:
    status: int
    locations: list[str]


def post_bundle(
    bundle: dict[str, Any], base: str, *, token: str | None = None, timeout_s: float = 30.0
) -> PostResult:
    """POST ``bundle`` to the FHIR server at ``base``; what the server created."""
    headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        response = httpx.post(base.rstrip("/"), json=bundle, headers=headers, timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise FhirPostError(f"could not reach the FHIR server at {base}: {exc}") from exc
    body = _json(response)
    if response.status_code >= 300:
        raise FhirPostError(
            f"FHIR server at {base} answered HTTP {response.status_code}: {_diagnostics(body)}"
        )
    if body.get("resourceType") != "Bundle" or body.get("type") != "transaction-response":
        raise FhirPostError(f"FHIR server at {base} did not answer with a transaction-response")
    replies = [e.get("response") or {} for e in body.get("entry", [])]
    locations = [str(r.get("location") or r.get("status") or "?") for r in replies]
    return PostResult(response.status_code, locations)


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _diagnostics(body: dict[str, Any]) -> str:
    if body.get("resourceType") == "OperationOutcome":
        issues = body.get("issue") or [{}]
        return str(issues[0].get("diagnostics") or issues[0].get("code") or "OperationOutcome")
    return "no OperationOutcome in the reply"
