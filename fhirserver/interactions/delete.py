"""delete: ``DELETE [base]/[type]/[id]`` — http://hl7.org/fhir/R4/http.html#delete

Writes a tombstone version; later reads answer 410 and earlier versions stay
readable by vread. Deleting a deleted or unknown resource is harmless (the
spec allows 200/204 for it) and writes nothing.
"""

from __future__ import annotations

from fhirserver.errors import Issue
from fhirserver.interactions.common import parse_version_tag, require_valid_id
from fhirserver.interactions.request import FhirRequest, FhirResponse
from fhirserver.resources.outcome import operation_outcome
from fhirserver.storage.repository import Repository


def handle(request: FhirRequest, repository: Repository) -> FhirResponse:
    resource_type, id = request.resource_type, request.id
    assert resource_type is not None and id is not None
    require_valid_id(resource_type, id)
    tombstone = repository.delete(resource_type, id, if_match=parse_version_tag(request.if_match))
    if tombstone is None:
        message = f"Resource `{resource_type}/{id}` does not exist or was already deleted; nothing changed."
    else:
        message = f"Resource `{resource_type}/{id}` was deleted (version {tombstone.version_id})."
    return FhirResponse(
        status=200,
        resource=operation_outcome(
            [Issue(code="informational", diagnostics=message, severity="information")]
        ),
        version_id=None if tombstone is None else tombstone.version_id,
    )
