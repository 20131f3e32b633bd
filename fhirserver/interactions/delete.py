"""delete: ``DELETE [base]/[type]/[id]`` — http://hl7.org/fhir/R4/http.html#delete

Writes a tombstone version; later reads answer 410 and earlier versions stay
readable by vread. Deleting a deleted or unknown resource is harmless (the
spec allows 200/204 for it) and writes nothing.

Conditional delete ``DELETE [base]/[type]?[criteria]``: every match is
deleted, up to MAX_CONDITIONAL_DELETES (more matches answer 412 and delete
nothing); no match changes nothing.
"""

from __future__ import annotations

from fhirserver.errors import Issue, PreconditionFailed
from fhirserver.interactions import conditional
from fhirserver.interactions.common import parse_version_tag, require_valid_id
from fhirserver.interactions.request import FhirRequest, FhirResponse
from fhirserver.resources.outcome import operation_outcome
from fhirserver.storage.repository import Repository


def handle(request: FhirRequest, repository: Repository) -> FhirResponse:
    resource_type, id = request.resource_type, request.id
    assert resource_type is not None
    if id is None:
        return _conditional(request, repository)
    require_valid_id(resource_type, id)
    tombstone = repository.delete(resource_type, id, if_match=parse_version_tag(request.if_match))
    if tombstone is None:
        message = f"Resource `{resource_type}/{id}` does not exist or was already deleted; nothing changed."
    else:
        message = f"Resource `{resource_type}/{id}` was deleted (version {tombstone.version_id})."
    return FhirResponse(
        status=200,
        resource=_informational(message),
        version_id=None if tombstone is None else tombstone.version_id,
    )


def _conditional(request: FhirRequest, repository: Repository) -> FhirResponse:
    resource_type = request.resource_type
    assert resource_type is not None
    params = conditional.request_criteria(request, "delete")
    cap = conditional.MAX_CONDITIONAL_DELETES
    ids = conditional.matches(repository, resource_type, params, limit=cap + 1)
    if len(ids) > cap:
        raise PreconditionFailed(
            f"The criteria match more than {cap} resources; a conditional delete removes at most {cap}."
        )
    for id in ids:
        repository.delete(resource_type, id)
    if not ids:
        message = "No resource matches the criteria; nothing changed."
    else:
        message = f"Deleted {len(ids)} resource(s): " + ", ".join(
            f"{resource_type}/{id}" for id in ids
        )
    return FhirResponse(status=200, resource=_informational(message))


def _informational(message: str) -> dict:
    return operation_outcome(
        [Issue(code="informational", diagnostics=message, severity="information")]
    )
