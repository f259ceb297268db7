"""The fading schedule: sessions, their length, and blocks with feedback on or off.

A schedule is data a clinic owns (YAML, with a JSON Schema for editors). The
default follows the retraining trials; its fading proportions are a
placeholder (``provenance: placeholder``) because the trials say only that
feedback was removed progressively.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cds.errors import PackError, StationError
from cds.rules.source import read_source, schema_problems

__all__ = [
    "DEFAULT_SCHEDULE",
    "Block",
    "Schedule",
    "SessionPlan",
    "load_schedule",
    "schedule_schema",
]

DEFAULT_SCHEDULE = "default-schedule.yaml"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class Block(_Model):
    minutes: float = Field(gt=0)
    """How long the block lasts."""
    feedback: bool
    """true: the runner sees the live gauge and values; false: a neutral screen (the
    clinician still sees everything)."""


class SessionPlan(_Model):
    minutes: float = Field(gt=0)
    """Treadmill time of the session."""
    blocks: list[Block] = Field(min_length=1)
    """The blocks, in order; their minutes add up to the session's."""

    @model_validator(mode="after")
    def _blocks_fill_the_session(self) -> SessionPlan:
        total = sum(b.minutes for b in self.blocks)
        if abs(total - self.minutes) > 0.01:
            raise ValueError(
                f"the blocks add up to {total:g} minutes, the session lasts {self.minutes:g}"
            )
        return self

    @property
    def feedback_share(self) -> float:
        return sum(b.minutes for b in self.blocks if b.feedback) / self.minutes

    def block_at(self, elapsed_s: float) -> tuple[int, Block | None]:
        """The block running ``elapsed_s`` into the session (None: the session is over)."""
        start = 0.0
        for i, block in enumerate(self.blocks):
            start += block.minutes * 60
            if elapsed_s < start:
                return i, block
        return len(self.blocks), None

    def block_start_s(self, index: int) -> float:
        return 60 * sum(b.minutes for b in self.blocks[:index])


class Schedule(_Model):
    name: str = Field(min_length=1)
    """What the schedule is, in one line."""
    description: str = ""
    """How it fades feedback, for the clinician."""
    provenance: Literal["evidence", "research", "placeholder"] = "placeholder"
    """Where its numbers come from, as for thresholds: placeholder unless your clinic
    has evidence for them."""
    sessions: list[SessionPlan] = Field(min_length=1)
    """Session 1, 2, ... in order."""

    def session(self, number: int) -> SessionPlan:
        if not 1 <= number <= len(self.sessions):
            raise StationError(
                f"session {number} is not in the schedule (it has {len(self.sessions)})"
            )
        return self.sessions[number - 1]


def load_schedule(path: Path | None = None) -> Schedule:
    """The schedule in ``path`` (default: the bundled one); StationError with
    file:line:column for anything that does not validate."""
    if path is None:
        path = Path(str(files("cds.station") / "data" / DEFAULT_SCHEDULE))
    if not path.exists():
        raise StationError(f"{path}: no such schedule file")
    try:
        source = read_source(path, kind="schedule")
        try:
            return Schedule.model_validate(source.data)
        except ValidationError as exc:
            raise source.error(schema_problems(exc, Schedule, source.data, "schedule")) from None
    except PackError as exc:
        raise StationError(exc.message) from None


def schedule_schema() -> dict[str, Any]:
    schema = Schedule.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "runform-cds retraining schedule"
    return schema
