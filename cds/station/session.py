"""One retraining session: its setup, the clock, the blocks and the strides in them.

The session runs on the station's clock (paused time does not count). Each
stride of the target metric on the chosen side goes into the block running
when it ended, whether the runner saw feedback then or not: the blocks without
feedback show what the runner holds on their own (retention).
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from cds.errors import MeasureError, StationError
from cds.measures.bundle import patient_id
from cds.measures.track import View
from cds.station.live import StrideValue
from cds.station.schedule import Schedule, SessionPlan
from cds.station.targets import target

__all__ = ["BlockRecord", "Session", "Setup"]

State = Literal["idle", "running", "paused", "done", "stopped"]
SideChoice = Literal["left", "right", "both"]


@dataclass(frozen=True)
class Setup:
    """What the clinician chose on the console."""

    patient: str
    metric: str
    side: SideChoice
    low: float
    high: float
    session: int
    cue: str = ""
    service_request: str | None = None
    metronome: bool = False

    def check(self, view: View, schedule: Schedule) -> None:
        try:
            patient_id(self.patient)
        except MeasureError:
            raise StationError(
                "the patient must be Patient/ID (letters, digits, '-' or '.'), "
                f"got {self.patient!r}"
            ) from None
        t = target(self.metric)
        if t is None:
            raise StationError(f"{self.metric!r} cannot be retrained live")
        if t.view != view:
            raise StationError(
                f"{t.display} needs the {t.view} view; this camera films the {view} view"
            )
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low >= self.high:
            raise StationError(f"the target band {self.low:g}..{self.high:g} is empty")
        schedule.session(self.session)
        if self.side != "both" and not t.sided:
            raise StationError(f"{t.display} is one value for both sides: choose 'both'")


@dataclass
class BlockRecord:
    index: int
    feedback: bool
    #: seconds into the session
    start_s: float
    end_s: float
    #: capture times (s since the epoch) of the block's start and end
    started_at: float | None = None
    ended_at: float | None = None
    values: list[StrideValue] = field(default_factory=list)

    def in_band(self, low: float, high: float) -> int:
        return sum(low <= v.value <= high for v in self.values)

    def summary(self, low: float, high: float) -> dict[str, Any]:
        values = [v.value for v in self.values]
        return {
            "index": self.index,
            "feedback": self.feedback,
            "start_s": self.start_s,
            "end_s": self.end_s,
            "strides": len(values),
            "mean": round(statistics.fmean(values), 2) if values else None,
            "sd": round(statistics.stdev(values), 2) if len(values) > 1 else None,
            "in_band": self.in_band(low, high),
        }


class Session:
    """Thread-safe: the station's worker adds strides, the web pages read snapshots."""

    def __init__(self, schedule: Schedule) -> None:
        self.schedule = schedule
        self._lock = threading.Lock()
        self.state: State = "idle"
        self.setup: Setup | None = None
        self.plan: SessionPlan | None = None
        self.blocks: list[BlockRecord] = []
        self.pain_before: float | None = None
        self.pain_after: float | None = None
        self.started_at: datetime | None = None
        self.stopped_at: datetime | None = None
        self._elapsed = 0.0
        self._resumed: float | None = None
        self.recent: list[StrideValue] = []
        self.view: View | None = None

    # -- control ------------------------------------------------------------------------------
    def start(self, setup: Setup, pain_before: float, view: View) -> None:
        setup.check(view, self.schedule)
        _check_pain(pain_before, "pain before")
        with self._lock:
            if self.state in ("running", "paused"):
                raise StationError("a session is running: stop it before starting another")
            self.setup, self.plan = setup, self.schedule.session(setup.session)
            self.view = view
            self.pain_before, self.pain_after = pain_before, None
            self.started_at, self.stopped_at = datetime.now(UTC), None
            self._elapsed, self._resumed = 0.0, time.monotonic()
            self.blocks = [
                BlockRecord(i, b.feedback, self.plan.block_start_s(i),
                            self.plan.block_start_s(i + 1))
                for i, b in enumerate(self.plan.blocks)
            ]  # fmt: skip
            self.blocks[0].started_at = time.time()
            self.recent = []
            self.state = "running"

    def pause(self) -> None:
        with self._lock:
            if self.state != "running":
                raise StationError("no running session to pause")
            self._elapsed = self._elapsed_now()
            self._resumed, self.state = None, "paused"

    def resume(self) -> None:
        with self._lock:
            if self.state != "paused":
                raise StationError("no paused session to resume")
            self._resumed, self.state = time.monotonic(), "running"

    def stop(self, pain_after: float) -> None:
        _check_pain(pain_after, "pain after")
        with self._lock:
            if self.state not in ("running", "paused", "done"):
                raise StationError("no session to stop")
            self._elapsed = self._elapsed_now()
            self._resumed, self.state = None, "stopped"
            self.pain_after, self.stopped_at = pain_after, datetime.now(UTC)
            now = time.time()
            for block in self.blocks:
                if block.started_at is not None and block.ended_at is None:
                    block.ended_at = now

    # -- the clock and the strides ---------------------------------------------------------------
    @property
    def elapsed_s(self) -> float:
        """Treadmill time so far (pauses do not count)."""
        with self._lock:
            return self._elapsed_now()

    def _elapsed_now(self) -> float:
        if self._resumed is None:
            return self._elapsed
        return self._elapsed + time.monotonic() - self._resumed

    def _current(self) -> tuple[int, bool]:
        """The running block's index and whether it gives feedback (updates the state)."""
        assert self.plan is not None
        index, block = self.plan.block_at(self._elapsed_now())
        now = time.time()
        for b in self.blocks[:index]:
            b.ended_at = b.ended_at or now
            b.started_at = b.started_at or now
        if block is None:
            if self.state == "running":
                self.state = "done"  # the schedule's time is up; the clinician stops it
            return len(self.blocks) - 1, False
        self.blocks[index].started_at = self.blocks[index].started_at or now
        return index, block.feedback

    def add(self, values: list[StrideValue]) -> None:
        with self._lock:
            if self.state != "running" or self.setup is None:
                return
            index, _ = self._current()
            wanted = [v for v in values if self.setup.side in ("both", v.side)]
            if self.state == "running":
                self.blocks[index].values.extend(wanted)
            self.recent = (self.recent + wanted)[-8:]

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return self._snapshot()

    def _snapshot(self) -> dict[str, Any]:
        out: dict[str, Any] = {"state": self.state}
        if self.setup is None or self.plan is None:
            return out
        s = self.setup
        index, feedback = self._current() if self.state in ("running", "paused") else (0, False)
        elapsed = self._elapsed_now()
        t = target(s.metric)
        out |= {
            "patient": s.patient,
            "metric": s.metric,
            "display": t.display if t else s.metric,
            "unit": t.unit if t else "",
            "side": s.side,
            "low": s.low,
            "high": s.high,
            "cue": s.cue,
            "session": s.session,
            "sessions": len(self.schedule.sessions),
            "metronome": s.metronome,
            "feedback": feedback and self.state == "running",
            "block": index,
            "elapsed_s": round(elapsed, 1),
            "remaining_s": round(max(0.0, self.plan.minutes * 60 - elapsed), 1),
            "blocks": [b.summary(s.low, s.high) for b in self.blocks],
            "recent": [
                {
                    "side": v.side,
                    "value": round(v.value, 2),
                    "seen_at": v.seen_at,
                    "in_band": s.low <= v.value <= s.high,
                }
                for v in self.recent
            ],
            "pain_before": self.pain_before,
            "pain_after": self.pain_after,
        }
        return out


def _check_pain(value: float, what: str) -> None:
    if not (isinstance(value, int | float) and 0 <= value <= 10):
        raise StationError(f"{what} must be a rating from 0 to 10, got {value!r}")
