"""create: ``POST [base]/[type]`` — http://hl7.org/fhir/R4/http.html#create

The server assigns the id; an id in the body is ignored, as the spec requires.
Answers 201 with ``Location: [base]/[type]/[id]/_history/1``.

Conditional create (http://hl7.org/fhir/R4/http.html#ccreate): with
``If-None-Exist: [criteria]`` nothing is created when one resource matches
(200 with it), and several matches are a 412. Concurrent conditional creates
with the same criteria are serialized by a database lock, so exactly one of
them creates the resource.
"""

from __future__ import annotations

from fhirserver.errors import BadRequest
from fhirserver.interactions import conditional
from fhirserver.interactions.common import require_present, resource_response
from fhirserver.interactions.request import FhirRequest, FhirResponse
from fhirserver.resources.validate import validate_resource
from fhirserver.storage.repository import Repository


def handle(request: FhirRequest, repository: Repository) -> FhirResponse:
    resource_type = request.resource_type
    assert resource_type is not None
    if request.body is None:
        raise BadRequest(f"create of {resource_type} needs a resource in the request body.")
    resource = validate_resource(request.body, resource_type)
    if request.if_none_exist:
        params = conditional.criteria_of(request.if_none_exist, resource_type)
        ids = conditional.matches(repository, resource_type, params)
        existing = conditional.at_most_one(ids, resource_type, params)
        if existing is not None:
            version = require_present(
                resource_type, existing, repository.read(resource_type, existing)
            )
            return resource_response(version, status=200, base_url=request.base_url)
    version = repository.create(resource, id=request.assigned_id)
    response = resource_response(version, status=201, base_url=request.base_url)
    response.is_write_result = True
    return response
