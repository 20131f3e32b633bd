"""vread: ``GET [base]/[type]/[id]/_history/[vid]`` — http://hl7.org/fhir/R4/http.html#vread

Earlier versions stay readable after a delete; the tombstone version itself
answers 410 Gone.
"""

from __future__ import annotations

from fhirserver.errors import Gone, NotFound
from fhirserver.interactions.common import require_valid_id, resource_response
from fhirserver.interactions.request import FhirRequest, FhirResponse
from fhirserver.storage.repository import Repository


def handle(request: FhirRequest, repository: Repository) -> FhirResponse:
    resource_type, id, vid = request.resource_type, request.id, request.version_id
    assert resource_type is not None and id is not None and vid is not None
    require_valid_id(resource_type, id)
    version = (
        repository.vread(resource_type, id, int(vid)) if vid.isdigit() and len(vid) < 10 else None
    )
    if version is None:
        raise NotFound(f"Version `{vid}` of resource `{resource_type}/{id}` was not found.")
    if version.deleted:
        raise Gone(
            f"Version `{vid}` of resource `{resource_type}/{id}` is the deletion of the resource."
        )
    return resource_response(version)
