"""The hash chain that makes the trace store tamper-evident, and signed checkpoints.

Each record's hash covers the previous record's hash, its own position, kind,
time and canonical JSON body, so a record cannot be altered, removed or moved
without breaking the chain at that point. A checkpoint is the chain head
(position and hash) signed with an Ed25519 key; kept outside the database, it
also exposes a wholesale rewrite of the chain.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

__all__ = [
    "GENESIS",
    "ChainProblem",
    "Checkpoint",
    "RawRecord",
    "VerifyResult",
    "canonical_json",
    "key_id",
    "record_hash",
    "record_json",
    "record_problem",
    "sign_checkpoint",
    "verify_checkpoint_signature",
    "verify_rows",
]

GENESIS = "0" * 64


def canonical_json(body: Any) -> str:
    """Deterministic JSON: sorted keys, no spaces, UTF-8 kept."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


_RECORD_JSON = (
    orjson.OPT_SORT_KEYS
    | orjson.OPT_NON_STR_KEYS
    | orjson.OPT_PASSTHROUGH_DATETIME  # to ``default=str``, as canonical_json writes them
    | orjson.OPT_PASSTHROUGH_DATACLASS
)


def record_json(body: Any) -> str:
    """A record body as stored and hashed: the form of :func:`canonical_json`, written
    about six times faster. Verification hashes the stored text and never re-encodes,
    so the two need not agree byte for byte (they differ in float exponents: 1e16)."""
    try:
        return orjson.dumps(body, default=str, option=_RECORD_JSON).decode()
    except orjson.JSONEncodeError:  # an integer beyond 64 bits, a subclass orjson refuses
        return canonical_json(body)


def record_hash(prev_hash: str, seq: int, kind: str, recorded_at: str, body_json: str) -> str:
    """Hash of one record, binding it to its position and its predecessor."""
    h = hashlib.sha256()
    for part in (prev_hash, str(seq), kind, recorded_at, body_json):
        h.update(part.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()


@dataclass(frozen=True)
class RawRecord:
    """A record as stored: the body as the exact JSON text that was hashed."""

    seq: int
    kind: str
    recorded_at: str
    body_json: str
    prev_hash: str
    hash: str

    def recomputed(self, seq: int | None = None) -> str:
        return record_hash(
            self.prev_hash,
            self.seq if seq is None else seq,
            self.kind,
            self.recorded_at,
            self.body_json,
        )


Problem = Literal["altered", "removed", "reordered", "broken-link", "checkpoint-mismatch"]


@dataclass(frozen=True)
class ChainProblem:
    kind: Problem
    position: int
    detail: str


@dataclass(frozen=True)
class VerifyResult:
    records: int
    head_seq: int
    head_hash: str
    problem: ChainProblem | None

    @property
    def ok(self) -> bool:
        return self.problem is None


def _diagnose(
    rec: RawRecord, position: int, seq_of_hash: Callable[[str], int | None]
) -> ChainProblem:
    """Why ``rec`` at ``position`` does not verify: moved here, or changed."""
    before = 0 if rec.prev_hash == GENESIS else seq_of_hash(rec.prev_hash)
    if before is not None and before + 1 != rec.seq and rec.recomputed(before + 1) == rec.hash:
        return ChainProblem(
            "reordered",
            position,
            f"record at position {position} was written at position {before + 1}",
        )
    return ChainProblem(
        "altered", position, f"record at position {position} does not match its hash"
    )


def record_problem(rec: RawRecord | None, before: RawRecord | None, seq: int) -> str | None:
    """Why the record at ``seq`` cannot be trusted on its own (None: it can): it is
    missing, its content does not match its hash, or it does not link to record
    ``seq - 1``. A whole rewritten chain passes this; only checkpoints catch that."""
    if rec is None:
        return "record missing"
    if rec.recomputed() != rec.hash:
        return "altered: the record does not match its hash"
    expected = GENESIS if seq == 1 else (before.hash if before is not None else None)
    if rec.prev_hash != expected:
        return f"does not link to record #{seq - 1}: records before it were altered or removed"
    return None


def verify_rows(
    rows: Iterable[RawRecord],
    seq_of_hash: Callable[[str], int | None],
    *,
    after: tuple[int, str] = (0, GENESIS),
) -> VerifyResult:
    """Walk ``rows`` in position order; report the first break in the chain.

    ``after`` is a (position, hash) already verified: the walk continues from it.
    """
    prev, expected, count = after[1], after[0] + 1, 0
    for rec in rows:
        if rec.seq != expected:
            problem = ChainProblem(
                "removed",
                expected,
                f"record(s) at position {expected}"
                + (f" to {rec.seq - 1}" if rec.seq - 1 > expected else "")
                + " missing",
            )
            return VerifyResult(count, expected - 1, prev, problem)
        if rec.recomputed() != rec.hash:
            return VerifyResult(count, expected - 1, prev, _diagnose(rec, expected, seq_of_hash))
        if rec.prev_hash != prev:
            problem = ChainProblem(
                "broken-link",
                expected,
                f"record at position {expected} does not follow record {expected - 1}: "
                f"record {expected - 1} was altered and re-hashed, or records were removed "
                "or moved",
            )
            return VerifyResult(count, expected - 1, prev, problem)
        prev, expected, count = rec.hash, expected + 1, count + 1
    return VerifyResult(count, expected - 1, prev, None)


@dataclass(frozen=True)
class Checkpoint:
    seq: int
    hash: str
    signed_at: str
    key_id: str
    signature: str

    def payload(self) -> bytes:
        return canonical_json(
            {"seq": self.seq, "hash": self.hash, "signed_at": self.signed_at, "key_id": self.key_id}
        ).encode()

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign_checkpoint(seq: int, head_hash: str, key: Ed25519PrivateKey) -> Checkpoint:
    unsigned = Checkpoint(
        seq, head_hash, datetime.now(UTC).isoformat(), key_id(key.public_key()), ""
    )
    signature = base64.b64encode(key.sign(unsigned.payload())).decode()
    return Checkpoint(unsigned.seq, unsigned.hash, unsigned.signed_at, unsigned.key_id, signature)


def verify_checkpoint_signature(cp: Checkpoint, public: Ed25519PublicKey) -> bool:
    if cp.key_id != key_id(public):
        return False
    try:
        public.verify(base64.b64decode(cp.signature), cp.payload())
    except (InvalidSignature, ValueError):
        return False
    return True
