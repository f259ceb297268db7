"""Pseudonymised exports: every identifier that can lead back to a person is replaced.

The records are rewritten *before* any exporter sees them, so CSV and FHIR
exports cannot leak an id one of them forgot. Replaced, by a keyed hash
(HMAC-SHA256) that is stable within one key, so rows still join up:

- every FHIR reference to a person or their record (``Patient/…``,
  ``Practitioner/…``, ``Observation/…``, ``Condition/…``, ``ServiceRequest/…``
  and the other types in :data:`REFERENCE_TYPES`), wherever it appears, even
  inside text;
- the ids the EHR or this service attached to the call: hookInstance, trace id,
  card and suggestion uuids, resource ids and business identifiers;
- error ids (which point to the service log).

Free-text override comments are withheld (a clinician may have typed a name);
the export says how long each was. Record hashes are left out of pseudonymised
exports for the same reason: they find the original record.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import uuid
from dataclasses import replace
from typing import Any

from cds.audit.store import StoredRecord
from cds.errors import AuditQueryError

__all__ = ["MIN_KEY_BYTES", "PSEUDONYM_KEY_ENV", "REFERENCE_TYPES", "Pseudonymiser"]

MIN_KEY_BYTES = 32
PSEUDONYM_KEY_ENV = "RUNFORM_CDS_PSEUDONYM_KEY"
REFERENCE_TYPES = (
    "Patient",
    "Practitioner",
    "PractitionerRole",
    "RelatedPerson",
    "Person",
    "Group",
    "Encounter",
    "EpisodeOfCare",
    "Observation",
    "Condition",
    "ServiceRequest",
    "CarePlan",
    "Procedure",
    "DocumentReference",
    "Media",
    "QuestionnaireResponse",
)
_REFERENCE = re.compile(
    r"\b("
    + "|".join(REFERENCE_TYPES)
    + r")/([A-Za-z0-9\-.]{1,64})(/_history/[A-Za-z0-9\-.]{1,64})?"
)
#: search parameters in URLs that carry an id (``Observation?patient=123``)
_ID_PARAM = re.compile(r"\b(patient|subject|_id|encounter|requester|performer)=([^&\s'\"]+)")
#: keys whose whole value is an identifier
_ID_KEYS = frozenset(
    {"trace_id", "hook_instance", "hookInstance", "uuid", "card", "card_uuid", "id", "error_id"}
)
#: keys whose whole value is a reference (``Type/id``), whatever characters the id has
_REF_KEYS = frozenset({"patient", "user", "userId", "reference", "resource", "subject"})
#: keys whose value is a list of identifiers
_ID_LIST_KEYS = frozenset({"attached_to"})
_COMMENT_KEYS = frozenset({"userComment"})


Items = list[tuple[StoredRecord, list[StoredRecord]]]


class Pseudonymiser:
    """Keyed replacement of identifiers; ``Pseudonymiser(None)`` changes nothing."""

    def __init__(self, key: bytes | None) -> None:
        if key is not None and len(key) < MIN_KEY_BYTES:
            raise AuditQueryError(
                f"the pseudonym key has {len(key)} bytes; use at least {MIN_KEY_BYTES} "
                "(for example: python -c 'import secrets; print(secrets.token_hex(32))')",
                expression="--pseudonym-key",
            )
        self._key = key

    @property
    def active(self) -> bool:
        return self._key is not None

    def _digest(self, kind: str, value: str) -> bytes:
        assert self._key is not None
        return hmac.new(self._key, f"{kind}\x00{value}".encode(), hashlib.sha256).digest()

    def identifier(self, value: str) -> str:
        """A stable stand-in for an id, shaped as a UUID (valid in ``urn:uuid:``)."""
        if self._key is None:
            return value
        return str(uuid.UUID(bytes=self._digest("id", value)[:16], version=4))

    def reference(self, resource_type: str, resource_id: str) -> str:
        if self._key is None:
            return f"{resource_type}/{resource_id}"
        return f"{resource_type}/pseudo-{self._digest(resource_type, resource_id).hex()[:20]}"

    def text(self, value: str) -> str:
        """``value`` with every embedded reference and id search parameter replaced."""
        value = _REFERENCE.sub(lambda m: self.reference(m.group(1), m.group(2)), value)
        return _ID_PARAM.sub(lambda m: f"{m.group(1)}={self.identifier(m.group(2))}", value)

    def _whole_reference(self, value: str) -> str:
        kind, _, rest = value.partition("/")
        if not rest or not kind.isalpha():
            return self.identifier(value)
        return self.reference(kind, rest.split("/_history/")[0])

    def _value(self, key: str | None, value: Any) -> Any:
        if isinstance(value, dict):
            # a Reference's display is a person's or record's name
            return {
                k: self._value(k, v)
                for k, v in value.items()
                if not (k == "display" and "reference" in value)
            }
        if isinstance(value, list):
            if key in _ID_LIST_KEYS:
                return [self.identifier(str(v)) for v in value]
            return [self._value(key, v) for v in value]
        if not isinstance(value, str):
            return value
        if key in _COMMENT_KEYS:
            return f"[comment withheld: {len(value)} characters]"
        if key in _ID_KEYS:
            return self.identifier(value)
        if key in _REF_KEYS:
            return self._whole_reference(value)
        return self.text(value)

    def body(self, body: dict[str, Any]) -> dict[str, Any]:
        if self._key is None:
            return body
        out: dict[str, Any] = self._value(None, body)
        for ident in _identifiers(out):
            ident["value"] = self.identifier(str(ident.get("value", "")))
        return out

    def record(self, rec: StoredRecord) -> StoredRecord:
        if self._key is None:
            return rec
        return replace(
            rec,
            trace_id=self.identifier(rec.trace_id),
            hook_instance=self.identifier(rec.hook_instance) if rec.hook_instance else None,
            body=self.body(rec.body),
            prev_hash="",
            hash="",
        )

    def items(self, items: Items) -> Items:
        return [(self.record(rec), [self.record(f) for f in fb]) for rec, fb in items]


def _identifiers(value: Any) -> list[dict[str, Any]]:
    """Every FHIR Identifier (``identifier: [{system, value}]``) inside ``value``."""
    found: list[dict[str, Any]] = []
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "identifier":
                found += [i for i in (v if isinstance(v, list) else [v]) if isinstance(i, dict)]
            else:
                found += _identifiers(v)
    elif isinstance(value, list):
        for v in value:
            found += _identifiers(v)
    return found
