"""Hot reload of rule packs: watch the pack folder, vet a new version, then swap.

A changed pack file is loaded, validated, checked for immutability (an active
version may not change) and its scenarios are run through the real engine
before it replaces the version being served. If anything fails, the old
version keeps serving and the reason is logged. The swap is one assignment of
``Runtime.packs``; each call takes its own reference to the list when it
starts, so a call in flight finishes on the packs it began with.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Protocol

from cds.errors import PackError
from cds.rules.compile import CompiledPack
from cds.rules.engine import RuleEngine
from cds.rules.load import PackRegistry, find_pack_files, load_serving_pack, scenarios_path
from cds.rules.scenario import run_scenarios

__all__ = ["PackReloader", "ReloadReport"]

log = logging.getLogger(__name__)
Fingerprint = tuple[tuple[str, int, int], ...]


class SwapTarget(Protocol):
    """Anything with a ``packs`` attribute to swap (the service Runtime)."""

    packs: list[CompiledPack]


@dataclass
class ReloadReport:
    loaded: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)


def _vet(compiled: CompiledPack, engine: RuleEngine) -> None:
    """Register the new version on the engine and run its scenarios; raise if any fails."""
    engine.load(compiled)
    if compiled.scenarios is None:
        log.warning("rule pack %s has no scenarios; loaded without them", compiled.key)
        return
    failed = [r for r in run_scenarios(compiled, compiled.scenarios, engine) if not r.passed]
    if failed:
        detail = "; ".join(f"{r.name}: {' '.join(r.diff())}" for r in failed[:3])
        raise PackError(f"{len(failed)} scenario(s) failed: {detail}")


class PackReloader:
    """Reloads the packs of one service process when their files change."""

    def __init__(
        self,
        directory: Path,
        current: list[CompiledPack],
        *,
        allow_drafts: bool,
        registry: PackRegistry | None,
        engine: RuleEngine,
    ) -> None:
        self.directory = directory
        self.allow_drafts = allow_drafts
        self.registry = registry
        self.engine = engine
        self.packs = current
        self._seen = self.fingerprint()

    def fingerprint(self) -> Fingerprint:
        files = []
        for path in find_pack_files(self.directory):
            for f in (path, scenarios_path(path)):
                if f.exists():
                    st = f.stat()
                    files.append((str(f), st.st_mtime_ns, st.st_size))
        return tuple(files)

    def changed(self) -> bool:
        now = self.fingerprint()
        if now == self._seen:
            return False
        self._seen = now
        return True

    def reload(self, today: date | None = None) -> ReloadReport:
        """Build the next list of packs; ``self.packs`` changes only if something new passed."""
        today = today or date.today()
        report = ReloadReport()
        by_path = {p.path: p for p in self.packs}
        by_key = {p.key: p for p in self.packs}
        nxt: list[CompiledPack] = []
        for path in find_pack_files(self.directory):
            old = by_path.get(path)
            try:
                compiled = load_serving_pack(
                    path, allow_drafts=self.allow_drafts, today=today, registry=self.registry
                )
                if compiled is not None and compiled.key not in by_key:
                    _vet(compiled, self.engine)
            except PackError as exc:
                report.refused[str(path)] = exc.message
                log.error(
                    "rule pack %s not reloaded, previous version keeps serving: %s",
                    path,
                    exc.message,
                )
                if old is not None:
                    nxt.append(old)
                    report.kept.append(old.key)
                continue
            if compiled is None:
                continue
            current = by_key.get(compiled.key)
            nxt.append(current or compiled)
            (report.kept if current else report.loaded).append(compiled.key)
        if not nxt:
            log.error("no serving rule pack after reload; previous packs keep serving")
            return report
        if report.loaded or len(nxt) != len(self.packs):
            log.info("rule packs now serving: %s", ", ".join(p.key for p in nxt))
        self.packs = nxt
        return report

    async def watch(self, interval_s: float, on_swap: SwapTarget) -> None:
        """Poll the pack folder every ``interval_s`` and reload on change."""
        while True:
            await asyncio.sleep(interval_s)
            if not self.changed():
                continue
            try:
                await asyncio.to_thread(self.reload)
            except Exception:  # the watcher must outlive any surprise
                log.exception("rule pack reload failed; previous packs keep serving")
                continue
            on_swap.packs = self.packs
