"""The CDS Hooks 2.0 card checklist (C1-C14 in the reference notes) as assertions."""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import urlsplit

from fhir.resources.R4B.careplan import CarePlan
from fhir.resources.R4B.servicerequest import ServiceRequest

_MODELS = {"ServiceRequest": ServiceRequest, "CarePlan": CarePlan}


def _no_empty(value: Any, where: str) -> None:
    assert value not in (None, "", [], {}), f"{where} is null or empty (C13)"
    if isinstance(value, dict):
        for k, v in value.items():
            _no_empty(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _no_empty(v, f"{where}[{i}]")


def assert_valid_card(card: dict[str, Any]) -> None:
    _no_empty(card, "card")
    uuid.UUID(card["uuid"])  # C12
    assert len(card["summary"]) < 140  # C1
    assert card["indicator"] in ("info", "warning", "critical")  # C2
    assert card["source"]["label"]  # C3
    if "url" in card["source"]:
        assert urlsplit(card["source"]["url"]).scheme in ("http", "https")
    assert isinstance(card["detail"], str)  # C4
    suggestions = card.get("suggestions", [])
    if suggestions:
        assert card["selectionBehavior"] in ("at-most-one", "any")  # C5
        if card["selectionBehavior"] == "at-most-one":
            assert sum(bool(s.get("isRecommended")) for s in suggestions) <= 1  # C6
    for s in suggestions:
        assert s["label"]  # C7
        uuid.UUID(s["uuid"])
        assert s["actions"]
        for a in s["actions"]:
            assert a["type"] in ("create", "update", "delete") and a["description"]  # C8
            if a["type"] == "delete":
                assert "resourceId" in a and "resource" not in a  # C9
            else:
                _MODELS[a["resource"]["resourceType"]].model_validate(a["resource"])
    for r in card.get("overrideReasons", []):
        assert r["code"] and r["system"] and r["display"]  # C10
    for link in card.get("links", []):
        assert link["label"] and link["url"] and link["type"] in ("absolute", "smart")  # C11
        if link["type"] != "smart":
            assert "appContext" not in link


def assert_valid_response(body: dict[str, Any]) -> None:
    assert isinstance(body["cards"], list)  # C14
    for card in body["cards"]:
        assert_valid_card(card)
