"""runform-cds: rules-based CDS Hooks 2.0 decision support for run form and hip strength.

Names are imported on first use, so a process that needs one part (a video
worker, the command line's help) does not load them all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cds._lazy import lazy_exports

if TYPE_CHECKING:
    from cds.audit.store import StoredRecord, TraceStore, open_store
    from cds.client import CdsClient, JwtSigner
    from cds.config import Settings, load_settings
    from cds.errors import (
        AuthError,
        CdsError,
        ConfigError,
        EngineError,
        PackError,
        PayloadTooLargeError,
        PrefetchError,
        RequestError,
        UnknownCardError,
        UnknownServiceError,
    )
    from cds.fhir.facts import ClinicalData, FactSet, build_facts
    from cds.rules.compile import CompiledPack
    from cds.rules.decide import Decision, decide
    from cds.rules.engine import RuleEngine
    from cds.rules.load import load_pack, load_serving_packs
    from cds.service.app import create_app

__all__ = [
    "AuthError",
    "CdsClient",
    "CdsError",
    "ClinicalData",
    "CompiledPack",
    "ConfigError",
    "Decision",
    "EngineError",
    "FactSet",
    "JwtSigner",
    "PackError",
    "PayloadTooLargeError",
    "PrefetchError",
    "RequestError",
    "RuleEngine",
    "Settings",
    "StoredRecord",
    "TraceStore",
    "UnknownCardError",
    "UnknownServiceError",
    "build_facts",
    "create_app",
    "decide",
    "load_pack",
    "load_serving_packs",
    "load_settings",
    "open_store",
]

_HOMES = {
    "StoredRecord": "audit.store",
    "TraceStore": "audit.store",
    "open_store": "audit.store",
    "CdsClient": "client",
    "JwtSigner": "client",
    "Settings": "config",
    "load_settings": "config",
    **dict.fromkeys(
        [
            "AuthError",
            "CdsError",
            "ConfigError",
            "EngineError",
            "PackError",
            "PayloadTooLargeError",
            "PrefetchError",
            "RequestError",
            "UnknownCardError",
            "UnknownServiceError",
        ],
        "errors",
    ),
    "ClinicalData": "fhir.facts",
    "FactSet": "fhir.facts",
    "build_facts": "fhir.facts",
    "CompiledPack": "rules.compile",
    "Decision": "rules.decide",
    "decide": "rules.decide",
    "RuleEngine": "rules.engine",
    "load_pack": "rules.load",
    "load_serving_packs": "rules.load",
    "create_app": "service.app",
}

__getattr__, __dir__ = lazy_exports(__name__, _HOMES)
