"""The metrics a runner can retrain with live feedback, and which way is better.

The defaults a console offers come from here and from the patient's record;
every band is the clinician's to change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cds.fhir.codes import metric
from cds.measures.track import View

__all__ = ["TARGETS", "Target", "target"]

Direction = Literal["lower", "higher", "band"]


@dataclass(frozen=True)
class Target:
    code: str
    view: View
    #: lower or higher is better, or the value should stay in a band (cadence)
    better: Direction
    #: the rule pack's threshold for it, when the pack has one
    threshold: str | None
    #: the far end of a default band, from the threshold (lower: 0 .. threshold)
    spread: float
    cue: str
    sided: bool = True

    @property
    def display(self) -> str:
        m = metric(self.code)
        return m.display if m else self.code

    @property
    def unit(self) -> str:
        m = metric(self.code)
        return m.unit.strip("{}") if m else ""


TARGETS: dict[str, Target] = {
    t.code: t
    for t in (
        Target("contralateral-pelvic-drop", "posterior", "lower", "pelvic_drop_high", 0,
               "Keep your pelvis level: squeeze your buttocks as each foot lands."),
        Target("peak-hip-adduction", "posterior", "lower", "hip_adduction_high", 8,
               "Run with your knees apart, kneecaps in line with your toes."),
        Target("knee-fppa", "posterior", "lower", "running_knee_fppa_high", 0,
               "Keep your knee over your foot as you land."),
        Target("step-width", "posterior", "higher", None, 0,
               "Run with your feet a little apart, as on two lines.", sided=False),
        Target("cadence", "side", "band", None, 0,
               "Take quicker, shorter steps: land with the beat.", sided=False),
        Target("overstride", "side", "lower", "overstride_high", 0,
               "Land with your foot under your hips."),
        Target("knee-flexion-initial-contact", "side", "higher",
               "knee_flexion_initial_contact_low", 25,
               "Land softly with your knee bent."),
    )
}  # fmt: skip


def target(code: str) -> Target | None:
    return TARGETS.get(code)
