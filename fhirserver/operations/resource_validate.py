"""``$validate`` — http://hl7.org/fhir/R4/resource-operation-validate.html

``POST [base]/[type]/$validate`` and ``POST [base]/[type]/[id]/$validate``
with the resource as the body or as the ``resource`` parameter of a
Parameters body, and an optional ``mode`` (create, update, delete). The answer
is always an OperationOutcome with status 200 when validation ran: errors are
issues (severity error), and a clean resource gets one informational issue.
A request the server cannot validate at all (no resource, unknown mode,
``profile``) is a 400.
"""

from __future__ import annotations

from fhirserver.errors import BadRequest, FhirError, Issue, NotFound
from fhirserver.interactions.common import require_valid_id
from fhirserver.interactions.request import FhirRequest, FhirResponse
from fhirserver.operations.parameters import OperationInput
from fhirserver.resources.outcome import operation_outcome
from fhirserver.resources.validate import validate_resource
from fhirserver.storage.repository import Repository

MODES = ("create", "update", "delete")


def handle(request: FhirRequest, repository: Repository) -> FhirResponse:
    assert request.resource_type is not None
    given = OperationInput.of(request, resource_parameter="resource")
    mode = given.string("mode")
    if mode is not None and mode not in MODES:
        raise BadRequest(f"mode `{mode}` is not one of {', '.join(MODES)}.")
    if given.value("profile") is not None:
        raise BadRequest(
            "Validation against a profile is not supported; validate without `profile`."
        )
    if mode in ("update", "delete") and request.id is None:
        raise BadRequest(f"mode {mode} needs the instance: POST [type]/[id]/$validate.")
    if request.id is not None:
        require_valid_id(request.resource_type, request.id)

    if mode == "delete":
        return _outcome(_delete_issues(request, repository))
    candidate = given.value("resource")
    if candidate is None:
        raise BadRequest("Nothing to validate: send the resource, or Parameters with `resource`.")
    issues = _content_issues(candidate, request.resource_type)
    if mode == "create" and isinstance(candidate, dict) and candidate.get("id"):
        issues.append(
            Issue(
                code="invalid",
                severity="warning",
                diagnostics="A create ignores the id in the resource; the server assigns one.",
                expression=(f"{request.resource_type}.id",),
            )
        )
    if mode == "update":
        assert request.id is not None
        body_id = candidate.get("id") if isinstance(candidate, dict) else None
        if body_id != request.id:
            issues.append(
                Issue(
                    code="invalid",
                    diagnostics=f"An update of `{request.resource_type}/{request.id}` needs id `{request.id}` in the resource, not `{body_id}`.",
                    expression=(f"{request.resource_type}.id",),
                )
            )
    return _outcome(issues)


def _content_issues(candidate: object, resource_type: str) -> list[Issue]:
    try:
        validate_resource(candidate, resource_type)
    except FhirError as error:
        return list(error.issues)
    return []


def _delete_issues(request: FhirRequest, repository: Repository) -> list[Issue]:
    assert request.resource_type is not None and request.id is not None
    current = repository.read(request.resource_type, request.id)
    if current is None or current.deleted:
        raise NotFound(f"Resource `{request.resource_type}/{request.id}` was not found.")
    return []


def _outcome(issues: list[Issue]) -> FhirResponse:
    if not any(issue.severity in ("error", "fatal") for issue in issues):
        issues = [
            *issues,
            Issue(code="informational", severity="information", diagnostics="Validation passed."),
        ]
    return FhirResponse(status=200, resource=operation_outcome(issues))
