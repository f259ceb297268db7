"""What the console proposes for a patient: the order, the latest value, a band.

From the FHIR server (when one is configured): the active gait-retraining
ServiceRequest and the latest measured value of the metric on each side. From
the rule pack: the metric's threshold. Everything is a proposal the clinician
edits; anything that cannot be read is simply not proposed, and the reason is
given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx

from cds.fhir.codes import METRICS_SYSTEM, PLANS_SYSTEM
from cds.measures.bundle import patient_id
from cds.rules.cards import RETRAINING_PLAN
from cds.rules.pack import Pack
from cds.station.targets import Target, target

__all__ = ["Defaults", "session_defaults"]

SIDE_SITES = {"287679003": "left", "82169009": "left", "287579007": "right", "6757004": "right"}


@dataclass
class Defaults:
    service_request: str | None = None
    latest: dict[str, float] = field(default_factory=dict)
    low: float | None = None
    high: float | None = None
    cue: str = ""
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def _entries(client: httpx.Client, base: str, query: str) -> list[dict[str, Any]]:
    response = client.get(f"{base}/{query}", headers={"Accept": "application/fhir+json"})
    response.raise_for_status()
    body = response.json()
    return [e.get("resource", {}) for e in body.get("entry", []) if isinstance(e, dict)]


def _codes(concept: dict[str, Any], system: str) -> set[str]:
    return {str(c.get("code")) for c in concept.get("coding", []) if c.get("system") == system}


def _subject_is(resource: dict[str, Any], pid: str) -> bool:
    return bool(resource.get("subject", {}).get("reference") == f"Patient/{pid}")


def _side(obs: dict[str, Any]) -> str:
    sites = {str(c.get("code")) for c in obs.get("bodySite", {}).get("coding", [])}
    return next((SIDE_SITES[s] for s in sites if s in SIDE_SITES), "both")


def _from_record(d: Defaults, base: str, pid: str, metric: str) -> None:
    with httpx.Client(timeout=5.0) as client:
        orders = _entries(client, base, f"ServiceRequest?patient={pid}&status=active")
        for sr in orders:  # a server may ignore search parameters: check what came back
            if (_subject_is(sr, pid) and sr.get("status") == "active"
                    and RETRAINING_PLAN in _codes(sr.get("code", {}), PLANS_SYSTEM)):  # fmt: skip
                d.service_request = f"ServiceRequest/{sr.get('id')}"
        query = f"Observation?patient={pid}&code={METRICS_SYSTEM}|{metric}&_sort=-date&_count=50"
        observations = [
            o for o in _entries(client, base, query)
            if _subject_is(o, pid) and metric in _codes(o.get("code", {}), METRICS_SYSTEM)
            and isinstance(o.get("valueQuantity", {}).get("value"), int | float)
        ]  # fmt: skip
    observations.sort(key=lambda o: str(o.get("effectiveDateTime") or ""), reverse=True)
    for obs in observations:
        d.latest.setdefault(_side(obs), float(obs["valueQuantity"]["value"]))


def _band(d: Defaults, t: Target, pack: Pack | None) -> None:
    threshold = pack.thresholds.get(t.threshold) if pack and t.threshold else None
    if t.better == "band":
        if d.latest:
            now = sum(d.latest.values()) / len(d.latest)
            d.low, d.high = round(now * 1.05), round(now * 1.10)
            d.notes.append("band: +5 to +10% of the latest step rate (Heiderscheit 2011)")
        else:
            d.notes.append("no step rate on record: set the band from a first capture")
        return
    if threshold is None:
        d.notes.append("no threshold in the rule pack for this metric: set the band yourself")
        return
    value = threshold.value
    if t.better == "lower":
        d.low, d.high = max(0.0, value - t.spread) if t.spread else 0.0, value
    else:
        d.low, d.high = value, value + t.spread
    d.notes.append(f"band from the pack's {t.threshold} ({value:g}, {threshold.provenance})")


def session_defaults(
    patient: str, metric: str, *, fhir_base: str | None, pack: Pack | None
) -> Defaults:
    """Proposals for ``patient`` (``Patient/ID``) and ``metric``."""
    pid = patient_id(patient)
    t = target(metric)
    d = Defaults(cue=t.cue if t else "")
    if t is None:
        d.notes.append(f"{metric} cannot be retrained live")
        return d
    if fhir_base:
        try:
            _from_record(d, fhir_base.rstrip("/"), pid, metric)
        except (httpx.HTTPError, ValueError) as exc:
            d.notes.append(f"the FHIR server could not be read ({type(exc).__name__})")
    else:
        d.notes.append("no FHIR server configured: nothing read from the record")
    _band(d, t, pack)
    return d
