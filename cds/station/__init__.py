"""The live gait-retraining station: real-time feedback on the treadmill, faded over
sessions, recorded as FHIR.

    runform-cds retrain --source 0 --view posterior

Names are imported on first use: the CDS service never loads the video stack.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cds._lazy import lazy_exports

if TYPE_CHECKING:
    from cds.station.live import LiveAnalyzer, StrideValue
    from cds.station.record import session_bundle
    from cds.station.schedule import Schedule, load_schedule
    from cds.station.session import Session, Setup
    from cds.station.source import FrameSource, open_source
    from cds.station.worker import Station

__all__ = [
    "FrameSource",
    "LiveAnalyzer",
    "Schedule",
    "Session",
    "Setup",
    "Station",
    "StrideValue",
    "load_schedule",
    "open_source",
    "session_bundle",
]

_HOMES = {
    "LiveAnalyzer": "live",
    "StrideValue": "live",
    "session_bundle": "record",
    "Schedule": "schedule",
    "load_schedule": "schedule",
    "Session": "session",
    "Setup": "session",
    "FrameSource": "source",
    "open_source": "source",
    "Station": "worker",
}

__getattr__, __dir__ = lazy_exports(__name__, _HOMES)
