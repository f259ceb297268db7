"""The three CDS services, their prefetch templates and request validation."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cds.errors import RequestError, UnknownServiceError
from cds.fhir.codes import METRICS_SYSTEM

__all__ = [
    "OPTIONAL_PREFETCH",
    "PREFETCH",
    "SERVICES",
    "HookRequest",
    "Service",
    "discovery",
    "parse_request",
    "service",
]

PREFETCH: dict[str, str] = {
    "patient": "Patient/{{context.patientId}}",
    "observations": (
        "Observation?patient={{context.patientId}}"
        f"&code={METRICS_SYSTEM}|&_sort=-date&_count=100"
    ),
    "conditions": "Condition?patient={{context.patientId}}&clinical-status=active",
    # completed and paused programmes matter at follow-up: strengthening done,
    # form unchanged -> add retraining, and never suggest a plan again
    "orders": "ServiceRequest?patient={{context.patientId}}&status=active,on-hold,completed",
    "careplans": "CarePlan?patient={{context.patientId}}&status=active,on-hold,completed",
}
#: keys the rules can do without: if they cannot be obtained, the call goes on
#: and the trace records the gap
OPTIONAL_PREFETCH = frozenset({"orders", "careplans"})


@dataclass(frozen=True)
class Service:
    id: str
    hook: str
    title: str
    description: str
    required_context: tuple[str, ...]

    def discovery_entry(self) -> dict[str, Any]:
        return {
            "hook": self.hook,
            "id": self.id,
            "title": self.title,
            "description": self.description,
            "prefetch": PREFETCH,
            "usageRequirements": (
                "Needs the patient's run-form and hip-strength Observations coded with "
                f"{METRICS_SYSTEM} (see the data contract), and active Conditions."
            ),
        }


SERVICES: dict[str, Service] = {
    s.id: s
    for s in (
        Service(
            "runform-patient-view",
            "patient-view",
            "Run form and hip strength guidance",
            "Reviews a runner's measured run form (pelvic drop, hip adduction) and hip strength "
            "and recommends strengthening and/or gait retraining with real-time feedback.",
            ("userId", "patientId"),
        ),
        Service(
            "runform-order-select",
            "order-select",
            "Run-form check on selected orders",
            "Warns when hip strengthening is ordered alone for a runner whose measured run form "
            "is impaired: in a 6-week trial strengthening did not change running mechanics, and on "
            "its own it is unlikely to.",
            ("userId", "patientId", "selections", "draftOrders"),
        ),
        Service(
            "runform-order-sign",
            "order-sign",
            "Run-form check before signing orders",
            "Checks orders about to be signed for a runner with impaired run form and suggests "
            "adding gait retraining when only strengthening is ordered.",
            ("userId", "patientId", "draftOrders"),
        ),
    )
}


def discovery() -> dict[str, Any]:
    return {"services": [s.discovery_entry() for s in SERVICES.values()]}


def service(service_id: str) -> Service:
    found = SERVICES.get(service_id)
    if found is None:
        raise UnknownServiceError(f"no CDS service with id {service_id!r}")
    return found


class FhirAuthorization(BaseModel):
    model_config = ConfigDict(extra="allow")

    access_token: str = Field(min_length=1)
    token_type: str
    expires_in: int
    scope: str
    subject: str
    patient: str | None = None

    def __repr__(self) -> str:  # never let the token reach a log
        return f"FhirAuthorization(subject={self.subject!r}, scope={self.scope!r})"

    __str__ = __repr__


class HookRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    hook: str
    hookInstance: str
    fhirServer: str | None = None
    fhirAuthorization: FhirAuthorization | None = None
    context: dict[str, Any]
    prefetch: dict[str, Any] | None = None

    @field_validator("hookInstance")
    @classmethod
    def _uuid(cls, v: str) -> str:
        try:
            uuid.UUID(v)
        except ValueError as exc:
            raise ValueError("hookInstance must be a UUID") from exc
        return v

    @field_validator("fhirServer")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not re.match(r"^https?://[^\s/]+", v):
            raise ValueError("fhirServer must be an absolute http(s) URL")
        parts = urlsplit(v)
        # never echo the value: it may hold a password
        if parts.username is not None or parts.password is not None:
            raise ValueError("fhirServer may not carry a user name or password")
        return v

    @property
    def patient_id(self) -> str:
        return str(self.context["patientId"])


_REFERENCE = re.compile(r"^[A-Za-z]+/[A-Za-z0-9\-.]{1,64}$")
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


def _check_context(svc: Service, ctx: dict[str, Any]) -> None:
    for name in svc.required_context:
        if ctx.get(name) is None:
            raise RequestError(
                f"context.{name} is required for {svc.hook}", expression=f"context.{name}"
            )
    if not isinstance(ctx["userId"], str) or not _REFERENCE.match(ctx["userId"]):
        raise RequestError(
            "context.userId must look like ResourceType/id", expression="context.userId"
        )
    if not isinstance(ctx["patientId"], str) or not _ID.match(ctx["patientId"]):
        raise RequestError("context.patientId must be a FHIR id", expression="context.patientId")
    if "selections" in svc.required_context and not (
        isinstance(ctx["selections"], list)
        and ctx["selections"]
        and all(isinstance(s, str) for s in ctx["selections"])
    ):
        raise RequestError(
            "context.selections must be a non-empty array of references",
            expression="context.selections",
        )
    if "draftOrders" in svc.required_context:
        orders = ctx["draftOrders"]
        if not (isinstance(orders, dict) and orders.get("resourceType") == "Bundle"):
            raise RequestError(
                "context.draftOrders must be a FHIR Bundle", expression="context.draftOrders"
            )


def parse_request(svc: Service, body: Any) -> HookRequest:
    """Validate a service call body for ``svc``; raise :class:`RequestError` naming the problem."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    try:
        req = HookRequest.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise RequestError(f"{where}: {err['msg']}", expression=where or None) from None
    if req.hook != svc.hook:
        raise RequestError(
            f"hook {req.hook!r} does not match service {svc.id!r} ({svc.hook})", expression="hook"
        )
    if req.fhirAuthorization is not None and req.fhirServer is None:
        raise RequestError(
            "fhirServer is required when fhirAuthorization is given", expression="fhirServer"
        )
    _check_context(svc, req.context)
    return req


def resolve_template(template: str, req: HookRequest, *, typed_patient: bool = False) -> str:
    """Fill ``{{context.x}}`` and user tokens of a prefetch template.

    ``typed_patient`` writes the patient search as ``patient=Patient/ID``.
    """
    if typed_patient:
        template = template.replace("patient={{", "patient=Patient/{{")
    user = str(req.context.get("userId", ""))
    rtype, _, uid = user.partition("/")
    user_tokens = {f"user{rtype}Id": uid} if uid else {}

    def sub(match: re.Match[str]) -> str:
        token = match.group(1).strip()
        if token.startswith("context."):
            return str(req.context.get(token.removeprefix("context."), ""))
        return user_tokens.get(token, "")

    return re.sub(r"\{\{([^}]+)\}\}", sub, template)
