import json
from pathlib import Path

import pytest
from fhir.resources.R4B.codesystem import CodeSystem

from cds.fhir.codes import code_system, metric, metrics
from cds.fhir.units import UnitError, convert

REQUIRED = [
    "contralateral-pelvic-drop",
    "peak-hip-adduction",
    "knee-fppa",
    "knee-flexion-initial-contact",
    "peak-knee-flexion-stance",
    "foot-inclination-initial-contact",
    "overstride",
    "trunk-forward-lean",
    "trunk-lateral-lean",
    "cadence",
    "step-width",
    "hip-abduction-strength",
    "hip-extension-strength",
    "hip-external-rotation-strength",
    "side-plank-hold",
    "single-leg-squat-rating",
    "single-leg-squat-fppa",
    "trendelenburg-test",
    "running-pain",
    "post-run-pain-duration",
    "strides-analyzed",
    "visible-fraction",
    "frame-rate",
    "between-stride-sd",
    "measured-force",
    "lever-arm",
    "body-mass",
    "percent-body-weight",
    "limb-symmetry-index",
    "night-pain",
    "gait-mode",
    "capture-view",
    "contraction-type",
    "real-time-feedback",
    "strides-in-band",
    "pain-before-session",
    "pain-after-session",
]


def test_metrics_code_system_has_every_contract_code_with_definition_and_unit() -> None:
    for code in REQUIRED:
        m = metric(code)
        assert m is not None, code
        assert len(m.definition) > 40 and m.unit
    assert set(metrics()) == set(REQUIRED)


@pytest.mark.parametrize("name", ["metrics", "plans", "findings"])
def test_shipped_code_systems_validate_as_r4(name: str) -> None:
    CodeSystem.model_validate(code_system(name))


def test_plans_code_system_has_the_contract_plans() -> None:
    codes = {c["code"] for c in code_system("plans")["concept"]}
    assert codes >= {
        "hip-strengthening-program",
        "gait-retraining-video-feedback",
        "cadence-retraining",
        "single-leg-squat-training",
    }


@pytest.mark.parametrize(
    ("value", "unit", "dims", "expected", "dimension"),
    [
        (1.0, "rad", ("angle",), 57.29578, "angle"),
        (10.0, "deg", ("angle",), 10.0, "angle"),
        (3.0, "/s", ("rate",), 180.0, "rate"),
        (2.0, "min", ("time",), 120.0, "time"),
        (20.0, "%", ("torque_per_mass", "force_per_mass"), 1.96133, "force_per_mass"),
        (1.2, "N.m/kg", ("torque_per_mass", "force_per_mass"), 1.2, "torque_per_mass"),
        (0.25, "1", ("fraction",), 25.0, "fraction"),
    ],
)
def test_convert(
    value: float, unit: str, dims: tuple[str, ...], expected: float, dimension: str
) -> None:
    got, dim = convert(value, unit, dims)
    assert got == pytest.approx(expected, rel=1e-5)
    assert dim == dimension


@pytest.mark.parametrize(
    ("unit", "dims"), [("cm", ("angle",)), ("furlong", ("time",)), ("deg", ("force",))]
)
def test_unknown_or_mismatched_units_raise(unit: str, dims: tuple[str, ...]) -> None:
    with pytest.raises(UnitError, match="does not fit"):
        convert(1.0, unit, dims)


def test_code_system_files_are_json() -> None:
    data_dir = Path(__file__).resolve().parent.parent / "cds" / "fhir" / "data"
    for f in data_dir.glob("*.json"):
        assert json.loads(f.read_text())["resourceType"] == "CodeSystem"
