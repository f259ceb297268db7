"""runform-cds: rules-based CDS Hooks 2.0 decision support for run form and hip strength."""

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
