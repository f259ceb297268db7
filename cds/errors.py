"""One exception tree for the whole package.

Every error carries a stable ``code`` (kebab-case, safe to look up in
``docs/errors.md``), an HTTP status for the service, a FHIR issue type and an
optional FHIRPath-like ``expression`` pointing at the offending element.
``to_operation_outcome()`` turns any of them into a FHIR R4 OperationOutcome.

    CdsError
    ├── ConfigError                 config-invalid
    │   └── StoreNotFoundError      store-not-found (an audit command named a missing store)
    ├── RequestError (400)          request-invalid
    │   ├── UnknownServiceError     service-unknown (404)
    │   ├── PayloadTooLargeError    payload-too-large (413)
    │   └── UnknownCardError        feedback-card-unknown (404)
    ├── AuthError (401)             auth-invalid   (message never sent to the client)
    ├── PrefetchError (412)         prefetch-unavailable (detail kept for the trace only)
    ├── PackError                   pack-invalid
    ├── EngineError (500)           engine-failed
    │   └── EngineDisagreementError engine-disagreement (the engine and the reference evaluator)
    ├── InternalError (500)         internal-error (an unexpected failure; carries an error id)
    ├── TraceWriteError (500)       trace-write-failed (a trace could not be stored: no answer)
    ├── MeasureError                measure-invalid (a video or test form cannot be measured)
    │   ├── FhirPostError           fhir-post-failed
    │   └── StationError            station-invalid (no camera, a bad schedule or session setup)
    └── AuditQueryError             audit-query-invalid (a date, hookInstance or key an audit
                                                         command cannot use)
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "AuditQueryError",
    "AuthError",
    "CdsError",
    "ConfigError",
    "EngineDisagreementError",
    "EngineError",
    "FhirPostError",
    "InternalError",
    "MeasureError",
    "MissingExtraError",
    "PackError",
    "PayloadTooLargeError",
    "PrefetchError",
    "RequestError",
    "StationError",
    "StoreNotFoundError",
    "TraceWriteError",
    "UnknownCardError",
    "UnknownServiceError",
    "operation_outcome",
]


def operation_outcome(
    diagnostics: str,
    *,
    code: str = "processing",
    severity: str = "error",
    expression: list[str] | None = None,
    detail_code: str | None = None,
) -> dict[str, Any]:
    """Build a minimal, valid R4 OperationOutcome with one issue."""
    issue: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": diagnostics}
    if detail_code:
        issue["details"] = {
            "coding": [
                {"system": "http://runform-cds.org/fhir/CodeSystem/errors", "code": detail_code}
            ],
            "text": diagnostics,
        }
    if expression:
        issue["expression"] = expression
    return {"resourceType": "OperationOutcome", "issue": [issue]}


class CdsError(Exception):
    """Base of every error raised on purpose by runform-cds.

    >>> try:
    ...     raise RequestError("context.patientId is required", expression="context.patientId")
    ... except CdsError as exc:
    ...     exc.status, exc.code
    (400, 'request-invalid')
    """

    code: ClassVar[str] = "cds-error"
    status: ClassVar[int] = 500
    issue_type: ClassVar[str] = "exception"

    def __init__(
        self, message: str, *, expression: str | None = None, detail: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.expression = expression
        #: what happened, for the trace and the log only: never sent to the caller
        self.detail = detail

    def to_operation_outcome(self) -> dict[str, Any]:
        return operation_outcome(
            self.message,
            code=self.issue_type,
            expression=[self.expression] if self.expression else None,
            detail_code=self.code,
        )


class ConfigError(CdsError):
    code = "config-invalid"
    issue_type = "invalid"


class StoreNotFoundError(ConfigError):
    """An audit command was pointed at a trace store that does not exist: reading it
    would create an empty one and report on nothing."""

    code = "store-not-found"
    issue_type = "not-found"


class RequestError(CdsError):
    code = "request-invalid"
    status = 400
    issue_type = "invalid"


class UnknownServiceError(RequestError):
    code = "service-unknown"
    status = 404
    issue_type = "not-found"


class PayloadTooLargeError(RequestError):
    code = "payload-too-large"
    status = 413
    issue_type = "too-costly"


class UnknownCardError(RequestError):
    code = "feedback-card-unknown"
    status = 404
    issue_type = "not-found"


class AuthError(CdsError):
    """Invalid credentials. The message is for our logs only: clients get a bare 401."""

    code = "auth-invalid"
    status = 401
    issue_type = "security"


class PrefetchError(CdsError):
    """Prefetch data cannot be obtained. The message says which key; ``detail`` (which
    host, what failed) goes to the trace, never to the caller."""

    code = "prefetch-unavailable"
    status = 412
    issue_type = "processing"


class PackError(CdsError):
    """A rule pack does not load; ``problems`` lists each problem with its place."""

    code = "pack-invalid"
    issue_type = "invalid"

    def __init__(
        self, message: str, *, expression: str | None = None, problems: list[Any] | None = None
    ) -> None:
        super().__init__(message, expression=expression)
        self.problems = problems or []


class EngineError(CdsError):
    code = "engine-failed"
    status = 500
    issue_type = "exception"


class EngineDisagreementError(EngineError):
    """The rule engine and the independent reference evaluator disagree: no guidance."""

    code = "engine-disagreement"


class InternalError(CdsError):
    """An unexpected failure. The caller sees only the error id, which the trace also holds.

    >>> InternalError.for_id("5f1c").message
    'internal error 5f1c: the call was not completed; it is recorded under this id'
    """

    code = "internal-error"
    status = 500
    issue_type = "exception"

    @classmethod
    def for_id(cls, error_id: str) -> InternalError:
        return cls(
            f"internal error {error_id}: the call was not completed; it is recorded under this id"
        )


class TraceWriteError(CdsError):
    """A call's trace could not be stored (the trace writer process ended or the store
    refused the batch): the call is not answered, since no card goes out untraced."""

    code = "trace-write-failed"
    status = 500
    issue_type = "exception"


class MeasureError(CdsError):
    """A video, static clip or strength-test form cannot be turned into Observations."""

    code = "measure-invalid"
    status = 400
    issue_type = "invalid"


class FhirPostError(MeasureError):
    """The FHIR server did not accept a measurement Bundle."""

    code = "fhir-post-failed"
    status = 502
    issue_type = "transient"


class StationError(MeasureError):
    """The retraining station cannot start or continue as asked: a camera or stream
    that cannot be opened, a schedule that does not validate, a bad session setup."""

    code = "station-invalid"


class MissingExtraError(CdsError):
    """A command needs an optional part of runform-cds that is not installed (the video
    stack of ``runform-cds[measure]``), or that is installed but does not load."""

    code = "extra-missing"
    issue_type = "not-supported"


class AuditQueryError(CdsError):
    """An audit command or viewer filter cannot be used as given (a date that does not
    parse, an ambiguous hookInstance prefix, a pseudonym key that is too short)."""

    code = "audit-query-invalid"
    status = 400
    issue_type = "invalid"
