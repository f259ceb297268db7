"""``audit verify``: the chain, the stored checkpoints and any exported ones."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from cds.audit.chain import Checkpoint, VerifyResult, verify_checkpoint_signature
from cds.audit.keys import load_public_key
from cds.audit.store import TraceStore
from cds.errors import ConfigError

__all__ = ["VerifyReport", "verify_store"]


@dataclass
class VerifyReport:
    chain: VerifyResult
    problems: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.chain.ok and not self.problems

    @property
    def text(self) -> str:
        lines = []
        if self.chain.ok:
            lines.append(
                f"chain OK: {self.chain.records} records, head #{self.chain.head_seq} "
                f"{self.chain.head_hash[:16]}…"
            )
        else:
            p = self.chain.problem
            assert p is not None
            lines.append(f"CHAIN BROKEN at position {p.position} ({p.kind}): {p.detail}")
            lines.append(f"  records 1..{self.chain.head_seq} verify")
        lines += [f"  {c}" for c in self.checked]
        lines += [f"CHECKPOINT PROBLEM: {p}" for p in self.problems]
        return "\n".join(lines)


def _load_checkpoint(path: Path) -> Checkpoint:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Checkpoint(
            int(data["seq"]), data["hash"], data["signed_at"], data["key_id"], data["signature"]
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: not a checkpoint file ({exc})") from exc


def verify_store(
    store: TraceStore, *, public_key: Path | None = None, checkpoint_files: list[Path] | None = None
) -> VerifyReport:
    report = VerifyReport(chain=store.verify())
    public = load_public_key(public_key) if public_key else None
    stored = [(cp, "stored") for cp in store.checkpoints()]
    exported = [(_load_checkpoint(p), str(p)) for p in checkpoint_files or []]
    if exported and public is None:
        raise ConfigError("--checkpoint needs --public-key to check the signature")
    for cp, origin in stored + exported:
        where = f"checkpoint #{cp.seq} ({origin})"
        if public is not None and not verify_checkpoint_signature(cp, public):
            report.problems.append(f"{where}: signature does not verify")
            continue
        if store.hash_at(cp.seq) != cp.hash:
            report.problems.append(
                f"{where}: the chain no longer has the signed hash at position {cp.seq} "
                "(records were rewritten or removed)"
            )
            continue
        report.checked.append(f"{where}: OK" + (" (signature verified)" if public else ""))
    return report
