"""read: ``GET [base]/[type]/[id]`` — http://hl7.org/fhir/R4/http.html#read

Returns the stored JSON bytes as they are. Conditional read
(http://hl7.org/fhir/R4/http.html#cread): ``If-None-Match`` with the current
ETag, or ``If-Modified-Since`` not before the last change, answers 304.
"""

from __future__ import annotations

from fhirserver.interactions.common import require_present, require_valid_id, resource_response
from fhirserver.interactions.request import FhirRequest, FhirResponse
from fhirserver.storage.repository import Repository


def handle(request: FhirRequest, repository: Repository) -> FhirResponse:
    assert request.resource_type is not None and request.id is not None
    require_valid_id(request.resource_type, request.id)
    version = require_present(
        request.resource_type, request.id, repository.read(request.resource_type, request.id)
    )
    response = resource_response(version)
    if _not_modified(request, response):
        return FhirResponse(
            status=304, version_id=response.version_id, last_modified=response.last_modified
        )
    return response


def _not_modified(request: FhirRequest, response: FhirResponse) -> bool:
    if request.if_none_match is not None:
        tags = [tag.strip() for tag in request.if_none_match.split(",")]
        current = {response.etag, f'"{response.version_id}"'}
        return "*" in tags or any(tag in current for tag in tags)
    if request.if_modified_since is not None and response.last_modified is not None:
        # HTTP dates have whole seconds.
        return response.last_modified.replace(microsecond=0) <= request.if_modified_since
    return False
