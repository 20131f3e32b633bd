"""create: ``POST [base]/[type]`` — http://hl7.org/fhir/R4/http.html#create

The server assigns the id; an id in the body is ignored, as the spec requires.
Answers 201 with ``Location: [base]/[type]/[id]/_history/1``.
"""

from __future__ import annotations

from fhirserver.errors import BadRequest
from fhirserver.interactions.common import resource_response
from fhirserver.interactions.request import FhirRequest, FhirResponse
from fhirserver.resources.validate import validate_resource
from fhirserver.storage.repository import Repository


def handle(request: FhirRequest, repository: Repository) -> FhirResponse:
    assert request.resource_type is not None
    if request.body is None:
        raise BadRequest(f"create of {request.resource_type} needs a resource in the request body.")
    resource = validate_resource(request.body, request.resource_type)
    version = repository.create(resource)
    response = resource_response(version, status=201, base_url=request.base_url)
    response.is_write_result = True
    return response
