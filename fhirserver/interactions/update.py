"""update: ``PUT [base]/[type]/[id]`` — http://hl7.org/fhir/R4/http.html#update

The body's ``id`` must equal the URL's. Update-as-create: a client-chosen id
that does not exist yet is created (201). ``If-Match`` makes it a version-aware
update (http://hl7.org/fhir/R4/http.html#concurrency): a mismatch is 412.

Conditional update ``PUT [base]/[type]?[criteria]``
(http://hl7.org/fhir/R4/http.html#cond-update): no match creates the resource
(under the body's id if it has one), one match is updated (a body id must be
that one's), several are a 412.
"""

from __future__ import annotations

from fhirserver.errors import BadRequest
from fhirserver.interactions import conditional
from fhirserver.interactions.common import parse_version_tag, require_valid_id, resource_response
from fhirserver.interactions.request import FhirRequest, FhirResponse
from fhirserver.resources import meta
from fhirserver.resources.validate import validate_resource
from fhirserver.storage.repository import Repository


def handle(request: FhirRequest, repository: Repository) -> FhirResponse:
    resource_type = request.resource_type
    assert resource_type is not None
    if request.body is None:
        raise BadRequest(f"update of {resource_type} needs a resource in the request body.")
    resource = validate_resource(request.body, resource_type)
    body_id = resource.get("id")
    if request.id is None:
        id = _conditional_target(request, repository, body_id)
        resource = {**resource, "id": id}
    else:
        id = request.id
        require_valid_id(resource_type, id)
        if body_id is None:
            raise BadRequest(
                f"The resource has no id; update of `{resource_type}/{id}` needs `id` = `{id}` in the body."
            )
        if body_id != id:
            raise BadRequest(f"The resource id `{body_id}` does not match the URL id `{id}`.")
    result = repository.update(resource, id, if_match=parse_version_tag(request.if_match))
    response = resource_response(
        result.version, status=201 if result.created else 200, base_url=request.base_url
    )
    response.is_write_result = True
    return response


def _conditional_target(request: FhirRequest, repository: Repository, body_id: str | None) -> str:
    resource_type = request.resource_type
    assert resource_type is not None
    params = conditional.request_criteria(request, "update")
    ids = conditional.matches(repository, resource_type, params)
    match = conditional.at_most_one(ids, resource_type, params)
    if match is None:
        if body_id is not None:
            require_valid_id(resource_type, body_id)
        return body_id or meta.new_id()
    if body_id is not None and body_id != match:
        raise BadRequest(
            f"The resource id `{body_id}` is not the id of the resource the criteria match (`{match}`)."
        )
    return match
