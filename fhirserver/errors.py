"""Typed FHIR errors.

Any layer may raise these; they become an OperationOutcome with the right HTTP
status in exactly one place (``fhirserver.http.errors``). Messages name the
thing (``Resource `Patient/7` was not found.``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Issue:
    """One OperationOutcome.issue: severity, code (IssueType), text, FHIRPath location."""

    code: str
    diagnostics: str
    severity: str = "error"
    expression: tuple[str, ...] = ()


class FhirError(Exception):
    """Base class: an HTTP status plus OperationOutcome issues."""

    status: int = 500
    code: str = "exception"

    def __init__(
        self,
        message: str,
        *,
        issues: list[Issue] | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.issues = issues or [Issue(code=self.code, diagnostics=message)]
        self.headers = headers or {}


class BadRequest(FhirError):
    status, code = 400, "invalid"


class Malformed(BadRequest):
    """The body is not parseable JSON/XML."""

    code = "structure"


class Unauthorized(FhirError):
    status, code = 401, "login"


class Forbidden(FhirError):
    status, code = 403, "forbidden"


class NotFound(FhirError):
    status, code = 404, "not-found"


class MethodNotAllowed(FhirError):
    status, code = 405, "not-supported"


class NotAcceptable(FhirError):
    status, code = 406, "not-supported"


class Conflict(FhirError):
    status, code = 409, "conflict"


class Gone(FhirError):
    status, code = 410, "deleted"


class PreconditionFailed(FhirError):
    status, code = 412, "conflict"


class PayloadTooLarge(FhirError):
    status, code = 413, "too-costly"


class UnsupportedMediaType(FhirError):
    status, code = 415, "not-supported"


class Unprocessable(FhirError):
    """The resource parsed but breaks the FHIR rules (cardinality, types, values)."""

    status, code = 422, "processing"


class NotImplementedYet(FhirError):
    status, code = 501, "not-supported"


class ServiceUnavailable(FhirError):
    status, code = 503, "transient"
