"""patch: ``PATCH [base]/[type]/[id]`` and conditional ``PATCH [base]/[type]?[criteria]``
— http://hl7.org/fhir/R4/http.html#patch

The body is a JSON Patch (``application/json-patch+json``, RFC 6902) or a
FHIRPath Patch (a Parameters resource, http://hl7.org/fhir/R4/fhirpatch.html).
The current version is locked, patched, validated like any update and stored
as the next version (history method PATCH); ``If-Match`` is honoured. A patch
that fails — a failing ``test``, a missing path, an invalid result — changes
nothing. Conditional patch: no match 404, several 412.
"""

from __future__ import annotations

from fhirserver.errors import BadRequest, NotFound
from fhirserver.interactions import conditional
from fhirserver.interactions.common import (
    parse_version_tag,
    require_present,
    require_valid_id,
    resource_response,
)
from fhirserver.interactions.request import FhirRequest, FhirResponse
from fhirserver.resources import jsonio
from fhirserver.resources.patch import apply_fhirpath_patch, apply_json_patch
from fhirserver.resources.validate import validate_resource
from fhirserver.storage.repository import Repository


def handle(request: FhirRequest, repository: Repository) -> FhirResponse:
    resource_type = request.resource_type
    assert resource_type is not None
    id = request.id if request.id is not None else _conditional_target(request, repository)
    require_valid_id(resource_type, id)
    current = require_present(resource_type, id, repository.read_for_update(resource_type, id))
    assert current.body is not None
    resource = jsonio.loads(current.body)
    if request.json_patch is not None:
        patched = apply_json_patch(resource, request.json_patch)
    elif request.body is not None and request.body.get("resourceType") == "Parameters":
        patched = apply_fhirpath_patch(resource, request.body)
    else:
        raise BadRequest(
            "PATCH takes a JSON Patch (Content-Type: application/json-patch+json) "
            "or a FHIRPath Patch (a Parameters resource)."
        )
    patched = validate_resource(patched, resource_type)
    result = repository.update(
        patched, id, if_match=parse_version_tag(request.if_match), method="PATCH"
    )
    response = resource_response(result.version, status=200, base_url=request.base_url)
    response.is_write_result = True
    return response


def _conditional_target(request: FhirRequest, repository: Repository) -> str:
    resource_type = request.resource_type
    assert resource_type is not None
    params = conditional.request_criteria(request, "patch")
    ids = conditional.matches(repository, resource_type, params)
    match = conditional.at_most_one(ids, resource_type, params)
    if match is None:
        raise NotFound(f"No {resource_type} matches the criteria of the conditional patch.")
    return match
