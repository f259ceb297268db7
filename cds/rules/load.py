"""Read rule packs from YAML, with file:line:column on every problem."""

from __future__ import annotations

import logging
from datetime import date
from pathlib import Path
from typing import Protocol

from pydantic import ValidationError

from cds.errors import PackError
from cds.rules.compile import CompiledPack, compile_pack
from cds.rules.pack import Pack
from cds.rules.scenario import ScenarioFile, check_scenarios
from cds.rules.source import Source, read_source, schema_problems

__all__ = [
    "PackRegistry",
    "check_immutable",
    "find_pack_files",
    "load_pack",
    "load_serving_pack",
    "load_serving_packs",
    "scenarios_path",
]

SCENARIO_SUFFIX = ".scenarios.yaml"

log = logging.getLogger(__name__)


def scenarios_path(pack_file: Path) -> Path:
    """Where a pack's scenarios live: ``scenarios.yaml`` beside ``pack.yaml``, or
    ``NAME.scenarios.yaml`` beside a single-file pack ``NAME.yaml``."""
    if pack_file.name == "pack.yaml":
        return pack_file.with_name("scenarios.yaml")
    return pack_file.with_name(pack_file.stem + SCENARIO_SUFFIX)


def load_pack(path: Path | str, *, with_scenarios: bool = True) -> CompiledPack:
    """Load, validate and compile one pack file (and its scenarios file, if any);
    raise :class:`PackError` on any problem."""
    path = Path(path)
    if not path.exists():
        raise PackError(f"{path}: no such pack file or folder")
    if path.is_dir():
        path = path / "pack.yaml"
    source = read_source(path)
    try:
        pack = Pack.model_validate(source.data)
    except ValidationError as exc:
        raise source.error(schema_problems(exc, Pack, source.data)) from None
    try:
        compiled = compile_pack(pack, source.raw)
    except PackError as exc:
        raise source.error(exc.problems) from None
    compiled.path = path
    sc_path = scenarios_path(path)
    if with_scenarios and sc_path.exists():
        compiled.scenarios, compiled.scenario_source = _load_scenarios(compiled, sc_path)
    return compiled


def _load_scenarios(compiled: CompiledPack, path: Path) -> tuple[ScenarioFile, Source]:
    source = read_source(path)
    try:
        scenarios = ScenarioFile.model_validate(source.data)
    except ValidationError as exc:
        raise source.error(schema_problems(exc, ScenarioFile, source.data)) from None
    problems = check_scenarios(compiled, scenarios)
    if problems:
        raise source.error(problems)
    return scenarios, source


def find_pack_files(directory: Path) -> list[Path]:
    singles = [p for p in sorted(directory.glob("*.yaml")) if not p.name.endswith(SCENARIO_SUFFIX)]
    return sorted(directory.glob("*/pack.yaml")) + singles


def _serving(pack: Pack, today: date, allow_drafts: bool) -> bool:
    if pack.status == "retired" or (pack.status == "draft" and not allow_drafts):
        return False
    start, end = pack.effective.start, pack.effective.end
    return start <= today and (end is None or today <= end)


class PackRegistry(Protocol):
    def register_pack(self, pack_id: str, version: str, sha256: str) -> str: ...


def check_immutable(compiled: CompiledPack, registry: PackRegistry | None) -> None:
    """Refuse an active pack whose content changed without a new version."""
    if registry is None or compiled.pack.status != "active":
        return
    p = compiled.pack
    recorded = registry.register_pack(p.id, p.version, compiled.sha256)
    if recorded != compiled.sha256:
        raise PackError(
            f"{compiled.path}: active pack {p.id} {p.version} changed since it was first served "
            f"(sha256 on record {recorded[:12]}, file now {compiled.sha256[:12]}); an active pack "
            "is immutable: give the change a new version"
        )


def load_serving_pack(
    path: Path, *, allow_drafts: bool, today: date, registry: PackRegistry | None = None
) -> CompiledPack | None:
    """One pack if it may serve today (None if it is a draft, retired or out of period)."""
    compiled = load_pack(path)
    if not _serving(compiled.pack, today, allow_drafts):
        log.info("rule pack %s not serving (status %s)", compiled.key, compiled.pack.status)
        return None
    check_immutable(compiled, registry)
    return compiled


def load_serving_packs(
    directory: Path,
    *,
    allow_drafts: bool = False,
    today: date | None = None,
    registry: PackRegistry | None = None,
) -> list[CompiledPack]:
    """Every pack in ``directory`` that may serve today. Broken or changed packs are
    logged and skipped."""
    today = today or date.today()
    if not directory.is_dir():
        raise PackError(f"rule pack directory {directory} does not exist")
    serving = []
    for path in find_pack_files(directory):
        try:
            compiled = load_serving_pack(
                path, allow_drafts=allow_drafts, today=today, registry=registry
            )
        except PackError as exc:
            log.error("rule pack not loaded: %s", exc.message)
            continue
        if compiled is not None:
            serving.append(compiled)
    if not serving:
        raise PackError(f"no serving rule pack in {directory}")
    return serving
