"""Every FHIR resource the cards suggest is valid R4, checked in full, even though the
service validates each shape of resource only once (``cds.fhir.resources``)."""

from __future__ import annotations

from typing import Any

import pytest
from fhir.resources.R4B.careplan import CarePlan
from fhir.resources.R4B.servicerequest import ServiceRequest

from cds.fhir import resources
from cds.rules.compile import CompiledPack
from cds.rules.engine import RuleEngine
from cds.rules.scenario import decide_scenario

MODELS: dict[str, Any] = {"ServiceRequest": ServiceRequest, "CarePlan": CarePlan}


def test_every_suggested_resource_of_every_scenario_validates_in_full(
    core_pack: CompiledPack,
) -> None:
    engine = RuleEngine()
    assert core_pack.scenarios is not None
    emitted = [
        action["resource"]
        for scenario in core_pack.scenarios.scenarios
        for card in decide_scenario(core_pack, core_pack.scenarios, scenario, engine).cards
        for suggestion in card.get("suggestions", [])
        for action in suggestion["actions"]
    ]
    assert len(emitted) > 50
    for resource in emitted:
        MODELS[resource["resourceType"]].model_validate(resource)  # no shape cache here


def _request(instruction: str) -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest", "status": "draft", "intent": "proposal",
        "subject": {"reference": "Patient/p1"}, "patientInstruction": instruction,
    }  # fmt: skip


def test_a_known_shape_with_empty_text_is_still_refused() -> None:
    resources.validate_resource(_request("Side plank, three sets"))
    resources.validate_resource(_request("Hip band series"))  # same shape: not revalidated
    with pytest.raises(ValueError, match="invalid ServiceRequest"):
        resources.validate_resource(_request(""))  # empty text is another shape


def test_a_new_shape_is_validated_in_full() -> None:
    bad = _request("Side plank") | {"subject": "Patient/p1"}  # a string, not a Reference
    with pytest.raises(ValueError, match="invalid ServiceRequest"):
        resources.validate_resource(bad)
