"""Canonical JSON and the hash chain that links trace records."""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = ["GENESIS", "canonical_json", "record_hash"]

GENESIS = "0" * 64


def canonical_json(body: Any) -> str:
    """Deterministic JSON: sorted keys, no spaces, UTF-8 kept."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def record_hash(prev_hash: str, seq: int, kind: str, body_json: str) -> str:
    """Hash of one record, binding it to its position and its predecessor."""
    h = hashlib.sha256()
    for part in (prev_hash, str(seq), kind, body_json):
        h.update(part.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()
