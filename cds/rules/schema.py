"""JSON Schemas of the pack and scenario formats, for editors that check YAML as it
is typed (VS Code's YAML extension, JetBrains, vim with a language server).

Every field carries its description (the docstrings of the format's models), and
the words an author picks from are enums: metric codes, UCUM units, plan codes
and, given a pack, its threshold, value-set, finding and rule names, so a
misspelt name is underlined where it is typed.
"""

from __future__ import annotations

from typing import Any

from cds.fhir.codes import code_system, metrics
from cds.fhir.units import known_units
from cds.rules.pack import Pack
from cds.rules.scenario import ScenarioFile

__all__ = ["pack_schema", "scenarios_schema"]

DRAFT = "https://json-schema.org/draft/2020-12/schema"


def _restrict(prop: dict[str, Any], values: list[str]) -> None:
    """Limit a string property (or the strings of a list, optional or map) to ``values``."""
    if not values:
        return
    if prop.get("type") == "string":
        prop["enum"] = values
        prop.pop("pattern", None)
    elif prop.get("type") == "array" and isinstance(prop.get("items"), dict):
        _restrict(prop["items"], values)
    elif prop.get("type") == "object":
        prop["propertyNames"] = {"enum": values}
    for branch in prop.get("anyOf", []):
        _restrict(branch, values)


def _set(defs: dict[str, Any], model: str, fields: list[str], values: list[str]) -> None:
    props = defs.get(model, {}).get("properties", {})
    for name in fields:
        if name in props:
            _restrict(props[name], values)


def _plan_codes() -> list[str]:
    return sorted(str(c["code"]) for c in code_system("plans")["concept"])


_COMPARES = ["at_least", "above", "below", "at_most"]


def _names(pack: Pack | None) -> dict[str, list[str]]:
    if pack is None:
        return {"thresholds": [], "value_sets": [], "findings": [], "rules": [], "plans": []}
    return {
        "thresholds": sorted(pack.thresholds),
        "value_sets": sorted(pack.value_sets),
        "findings": sorted(pack.findings),
        "rules": [r.id for r in pack.rules],
        "plans": sorted(pack.plans),
    }


def _finish(schema: dict[str, Any], title: str, pack: Pack | None) -> dict[str, Any]:
    schema["$schema"] = DRAFT
    schema["title"] = title + (f" ({pack.id} {pack.version})" if pack else "")
    return schema


def pack_schema(pack: Pack | None = None) -> dict[str, Any]:
    """The pack format; with ``pack``, names are limited to the ones it defines."""
    schema = Pack.model_json_schema()
    defs = schema["$defs"]
    names = _names(pack)
    codes = sorted(metrics())
    _set(defs, "MetricCondition", ["metric"], codes)
    _set(defs, "Threshold", ["unit"], known_units())
    _set(defs, "NormDef", ["unit"], known_units())
    _set(defs, "OrderCondition", ["order"], _plan_codes())
    _set(defs, "ActionTemplate", ["plan"], names["plans"] or _plan_codes())
    schema["properties"]["norms"]["propertyNames"] = {"enum": codes}
    schema["properties"]["plans"]["propertyNames"] = {"enum": _plan_codes()}
    _restrict(defs["QualityGates"]["properties"]["smallest_detectable_difference"], codes)
    thresholds = names["thresholds"]
    for model in ("MetricCondition", "_Compare"):
        _set(defs, model, _COMPARES, thresholds)
    _set(defs, "DiagnosisCondition", ["within"], thresholds)
    _set(defs, "OrderCondition", ["older_than"], thresholds)
    gates = ["min_strides", "max_age", "max_age_in_care", "session_window"]
    _set(defs, "QualityGates", gates, thresholds)
    sdd = defs["QualityGates"]["properties"]["smallest_detectable_difference"]
    if thresholds:
        sdd["additionalProperties"] = {"type": "string", "enum": thresholds}
    _set(defs, "DiagnosisCondition", ["diagnosis"], names["value_sets"])
    _set(defs, "Evidence", ["diagnoses"], names["value_sets"])
    _set(defs, "FindingCondition", ["finding"], names["findings"])
    _set(defs, "Rule", ["attach_to"], names["rules"])
    # a finding may be written as its bare condition, without "when:"
    # a card's evidence may be one grade rather than a list
    evidence = defs["CardTemplate"]["properties"]["evidence"]
    one_or_many = {k: evidence.pop(k) for k in ("type", "items", "minItems") if k in evidence}
    evidence["anyOf"] = [one_or_many, {"$ref": "#/$defs/Evidence"}]
    bare = {k: v for k, v in defs["Finding"]["properties"]["when"].items() if k != "description"}
    findings = schema["properties"]["findings"]["patternProperties"]
    for pattern in findings:
        findings[pattern] = {"anyOf": [{"$ref": "#/$defs/Finding"}, bare]}
    return _finish(schema, "runform-cds rule pack", pack)


def scenarios_schema(pack: Pack | None = None) -> dict[str, Any]:
    """The scenarios format; with ``pack``, rule and value-set names are its own."""
    schema = ScenarioFile.model_json_schema()
    defs = schema["$defs"]
    names = _names(pack)
    codes = sorted(metrics())
    _set(defs, "Capture", ["metric"], codes)
    _set(defs, "Given", ["measures", "without"], codes)
    _set(defs, "Earlier", ["measures"], codes)
    _set(defs, "Capture", ["unit"], known_units())
    _set(defs, "Order", ["plan"], _plan_codes())
    _set(defs, "ExpectedCard", ["rule", "attached"], names["rules"])
    _set(defs, "Diagnosis", ["value_set"], names["value_sets"])
    _set(defs, "Given", ["diagnoses"], names["value_sets"])
    return _finish(schema, "runform-cds scenarios file", pack)
