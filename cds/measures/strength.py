"""Hip strength tests recorded by hand: from flags or a CSV/JSON form to Observations.

Hand-held dynamometry (abduction, extension, external rotation) is turned
into torque per body mass (force x lever arm / mass, N.m/kg) when lever arm
and mass are known, force per body mass (N/kg) when only the mass is, raw
force (N) otherwise; % body weight and the limb symmetry index (this side /
other side x 100) travel as components.
"""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cds.errors import MeasureError
from cds.fhir.observations import coded_component, metric_observation, quantity_component
from cds.measures.bundle import Transaction, patient_id, software_device

__all__ = ["StrengthEntry", "StrengthForm", "limb_symmetry", "read_form", "strength_bundle"]

GRAVITY = 9.80665
TestName = Literal[
    "hip-abduction", "hip-extension", "hip-external-rotation",
    "side-plank", "single-leg-squat", "trendelenburg",
]  # fmt: skip
HHD_TESTS = ("hip-abduction", "hip-extension", "hip-external-rotation")
_REQUIRED = {
    "hip-abduction": ("force_n",),
    "hip-extension": ("force_n",),
    "hip-external-rotation": ("force_n",),
    "side-plank": ("hold_s",),
    "trendelenburg": ("result",),
}
FIELDS = (
    "test", "side", "force_n", "lever_arm_m", "contraction", "hold_s", "rating", "fppa_deg",
    "result",
)  # fmt: skip
Contraction = Literal["isometric", "eccentric"]


class StrengthEntry(BaseModel):
    """One test on one side."""

    model_config = ConfigDict(extra="forbid")

    test: TestName
    side: Literal["left", "right"]
    force_n: float | None = Field(default=None, gt=0, le=3000)
    lever_arm_m: float | None = Field(default=None, gt=0.05, le=1.5)
    #: isometric (make test) or eccentric (break test); norms are specific to it
    contraction: Contraction | None = None
    hold_s: float | None = Field(default=None, ge=0, le=1800)
    rating: Literal["good", "fair", "poor"] | None = None
    fppa_deg: float | None = Field(default=None, ge=-60, le=60)
    result: Literal["positive", "negative"] | None = None

    @model_validator(mode="after")
    def _has_its_measure(self) -> StrengthEntry:
        needed = _REQUIRED.get(self.test)
        if needed and getattr(self, needed[0]) is None:
            raise ValueError(f"{self.test} needs {needed[0]}")
        if self.test == "single-leg-squat" and self.rating is None and self.fppa_deg is None:
            raise ValueError("single-leg-squat needs rating (good/fair/poor) or fppa_deg")
        return self


class StrengthForm(BaseModel):
    model_config = ConfigDict(extra="forbid")

    body_mass_kg: float | None = Field(default=None, gt=15, le=350)
    #: the dynamometry tests' contraction type, unless an entry gives its own
    contraction: Contraction | None = None
    tests: list[StrengthEntry]


def _problem(place: str, exc: ValidationError, row: bool = False) -> MeasureError:
    """``place: field F: message``; for a CSV row the form's ``tests.0.`` is left out."""
    first = exc.errors()[0]
    loc = [str(p) for p in first["loc"]]
    if row and loc[:2] == ["tests", "0"]:
        loc = loc[2:]
    return MeasureError(f"{place}: field {'.'.join(loc) or '(row)'}: {first['msg']}")


def _read_csv(path: Path) -> StrengthForm:
    entries: list[StrengthEntry] = []
    masses: set[float] = set()
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        unknown = set(reader.fieldnames or ()) - {*FIELDS, "body_mass_kg"}
        if unknown:
            raise MeasureError(f"{path}:1: unknown column(s) {sorted(unknown)}; use {FIELDS}")
        for row in reader:
            cells = {k: v.strip() for k, v in row.items() if k and v and v.strip()}
            mass = cells.pop("body_mass_kg", None)
            try:  # each row is a one-test form, so the mass is checked like a form's
                one = StrengthForm.model_validate({"body_mass_kg": mass, "tests": [cells]})
            except ValidationError as exc:
                raise _problem(f"{path}:line {reader.line_num}", exc, row=True) from None
            entries += one.tests
            if one.body_mass_kg is not None:
                masses.add(one.body_mass_kg)
    if len(masses) > 1:
        raise MeasureError(f"{path}: body_mass_kg differs between rows: {sorted(masses)}")
    return StrengthForm(body_mass_kg=masses.pop() if masses else None, tests=entries)


def _read_json(path: Path) -> StrengthForm:
    try:
        data = json.loads(path.read_text("utf-8"))
    except json.JSONDecodeError as exc:
        raise MeasureError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from None
    try:
        return StrengthForm.model_validate(data)
    except ValidationError as exc:
        raise _problem(str(path), exc) from None


def read_form(path: Path) -> StrengthForm:
    """A strength form from a CSV or JSON file; errors name the file, line and field."""
    if not path.is_file():
        raise MeasureError(f"{path}: no such form file")
    if path.suffix.lower() == ".json":
        return _read_json(path)
    if path.suffix.lower() == ".csv":
        return _read_csv(path)
    raise MeasureError(f"{path}: a strength form is a .csv or .json file")


def _hhd_value(entry: StrengthEntry, mass: float | None) -> tuple[float, str]:
    force = entry.force_n or 0.0
    if mass and entry.lever_arm_m:
        return force * entry.lever_arm_m / mass, "N.m/kg"
    if mass:
        return force / mass, "N/kg"
    return force, "N"


def _value(entry: StrengthEntry, mass: float | None) -> tuple[str, float | str, str | None]:
    """(metric code, value, unit) of one entry."""
    if entry.test in HHD_TESTS:
        value, unit = _hhd_value(entry, mass)
        return f"{entry.test}-strength", value, unit
    if entry.test == "side-plank":
        return "side-plank-hold", entry.hold_s or 0.0, "s"
    if entry.test == "trendelenburg":
        return "trendelenburg-test", entry.result or "", None
    if entry.rating is not None:
        return "single-leg-squat-rating", entry.rating, None
    return "single-leg-squat-fppa", entry.fppa_deg or 0.0, "deg"


def limb_symmetry(form: StrengthForm) -> dict[tuple[str, str], float]:
    """LSI (%) of each side of each numeric test measured on both sides."""
    values: dict[tuple[str, str], float] = {}
    for entry in form.tests:
        if entry.test not in (*HHD_TESTS, "side-plank"):
            continue  # ratings, results and FPPA have no meaningful ratio
        code, value, _ = _value(entry, form.body_mass_kg)
        if isinstance(value, float) and value > 0:
            values[(code, entry.side)] = value
    out = {}
    for (code, side), value in values.items():
        other = values.get((code, "right" if side == "left" else "left"))
        if other:
            out[(code, side)] = 100 * value / other
    return out


def _observation(
    entry: StrengthEntry, form: StrengthForm, pid: str, when: datetime, lsi: float | None
) -> dict[str, Any]:
    code, value, unit = _value(entry, form.body_mass_kg)
    rounded = round(value, 3) if isinstance(value, float) else value
    obs = metric_observation(pid, code, rounded, unit, effective=when, side=entry.side)
    components = []
    if entry.test in HHD_TESTS and entry.force_n:
        components.append(quantity_component("measured-force", entry.force_n, "N"))
        contraction = entry.contraction or form.contraction
        if contraction:
            components.append(coded_component("contraction-type", contraction))
        if entry.lever_arm_m:
            components.append(quantity_component("lever-arm", entry.lever_arm_m, "m"))
        if form.body_mass_kg:
            components.append(quantity_component("body-mass", form.body_mass_kg, "kg"))
            bw = 100 * entry.force_n / (form.body_mass_kg * GRAVITY)
            components.append(quantity_component("percent-body-weight", bw, "%"))
        test = f"{contraction} " if contraction else ""
        obs["method"] = {"text": f"hand-held dynamometer, {test}test; torque = force x lever arm"}
    if lsi is not None:
        components.append(quantity_component("limb-symmetry-index", lsi, "%"))
    if components:
        obs["component"] = components
    return obs


def strength_bundle(
    form: StrengthForm, patient: str, *, when: datetime | None = None
) -> dict[str, Any]:
    """A transaction Bundle with one Observation per test and side."""
    if not form.tests:
        raise MeasureError("the strength form holds no tests")
    pid = patient_id(patient)
    when = when or datetime.now(UTC)
    lsi = limb_symmetry(form)
    tx = Transaction()
    device = tx.add(software_device({}))
    for entry in form.tests:
        obs = _observation(entry, form, pid, when, lsi.get((_value(entry, None)[0], entry.side)))
        obs["device"] = {"reference": device}
        tx.add(obs)
    return tx.bundle()
