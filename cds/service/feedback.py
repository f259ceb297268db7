"""The CDS Hooks 2.0 feedback endpoint body, validated and recorded idempotently."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cds.audit.chain import canonical_json
from cds.audit.store import TraceStore
from cds.errors import RequestError, UnknownCardError
from cds.service.auth import ClientIdentity

__all__ = ["FeedbackBody", "parse_feedback", "record_feedback"]


class _Coding(BaseModel):
    model_config = ConfigDict(extra="allow")
    code: str
    system: str
    display: str | None = None


class _OverrideReason(BaseModel):
    model_config = ConfigDict(extra="allow")
    reason: _Coding | None = None
    userComment: str | None = None

    @model_validator(mode="after")
    def _something(self) -> _OverrideReason:
        if self.reason is None and not self.userComment:
            raise ValueError("overrideReason needs a reason or a userComment")
        return self


class _Accepted(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str


class FeedbackItem(BaseModel):
    model_config = ConfigDict(extra="allow")
    card: str = Field(min_length=1)
    outcome: Literal["accepted", "overridden"]
    acceptedSuggestions: list[_Accepted] | None = None
    overrideReason: _OverrideReason | None = None
    outcomeTimestamp: datetime

    @model_validator(mode="after")
    def _accepted_needs_suggestions(self) -> FeedbackItem:
        if self.outcome == "accepted" and not self.acceptedSuggestions:
            raise ValueError("acceptedSuggestions is required when outcome is accepted")
        return self


class FeedbackBody(BaseModel):
    model_config = ConfigDict(extra="allow")
    feedback: list[FeedbackItem] = Field(min_length=1)


def parse_feedback(body: Any) -> FeedbackBody:
    try:
        return FeedbackBody.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise RequestError(f"{where}: {err['msg']}", expression=where or None) from None


def record_feedback(
    store: TraceStore, service_id: str, client: ClientIdentity | None, body: FeedbackBody
) -> int:
    """Record every item against its card's trace, all or nothing; returns new records.

    A card is known only to the client and the service that produced it: feedback
    from another client, or sent to another service, is refused like an unknown card
    (so one client cannot learn which cards another was shown).
    """
    caller = client.iss if client else None
    items = []
    for i, item in enumerate(body.feedback):
        origin = store.card_origin(item.card)
        if origin is None or origin.service != service_id or origin.client_iss != caller:
            raise UnknownCardError(
                f"no card with uuid {item.card!r} from this service",
                expression=f"feedback[{i}].card",
            )
        record = {
            "service": service_id,
            "client": client.as_trace() if client else None,
            **item.model_dump(mode="json", exclude_none=True),
        }
        # the same item, from the same client, is recorded once however often it is sent
        key_body = {k: v for k, v in record.items() if k != "client"} | {"client_iss": caller}
        key = hashlib.sha256(canonical_json(key_body).encode()).hexdigest()
        items.append((origin.trace_id, key, record))
    return store.append_feedback_many(items)
