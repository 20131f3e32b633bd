"""FhirError -> OperationOutcome: the one place errors become responses."""

from __future__ import annotations

import logging

from werkzeug.exceptions import HTTPException

from fhirserver.errors import FhirError, Issue
from fhirserver.interactions.request import FhirResponse
from fhirserver.resources.outcome import operation_outcome

log = logging.getLogger(__name__)

_HTTP_CODES = {404: "not-found", 405: "not-supported", 413: "too-costly", 415: "not-supported"}


def error_response(error: BaseException) -> FhirResponse:
    if isinstance(error, FhirError):
        return FhirResponse(
            status=error.status,
            resource=operation_outcome(error.issues),
            headers=dict(error.headers),
        )
    if isinstance(error, HTTPException):
        status = error.code or 500
        issue = Issue(
            code=_HTTP_CODES.get(status, "processing"), diagnostics=error.description or error.name
        )
        return FhirResponse(status=status, resource=operation_outcome([issue]))
    log.exception("Unexpected error while serving a FHIR request", exc_info=error)
    issue = Issue(
        code="exception",
        diagnostics="The server failed to process the request; the error was logged.",
    )
    return FhirResponse(status=500, resource=operation_outcome([issue]))
