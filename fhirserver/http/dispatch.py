"""The one request path every FHIR interaction takes.

    authenticate -> Principal
    -> FhirRequest (body parsed, headers read)
    -> repository for this request, inside one database transaction
    -> interactions/<kind>.handle(request, repository)      (HTTP-free)
       or operations/<name>.handle(request, repository)     ($operations, same path)
    -> audit.record(...)  on success, denial and failure alike (interactions/pipeline.py,
       which batch and transaction entries run through too)
    -> http/response.render: JSON/XML, status, headers

Access control (issue 5) plugs in at ``_repository_for`` (a GuardedRepository
around the SQL one) and ``_authenticate``; audit fills ``audit.record``.
Handlers never check permissions themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from flask import Request, Response

from fhirserver.consent.principal import ADMINISTRATOR, Principal
from fhirserver.errors import NotFound
from fhirserver.http import request as fhir_http_request
from fhirserver.http.errors import error_response
from fhirserver.http.formats import response_format
from fhirserver.http.response import Shape, parse_shape, render
from fhirserver.interactions import pipeline, registry
from fhirserver.interactions.request import FhirRequest, FhirResponse
from fhirserver.operations import registry as operations
from fhirserver.resources.registry import is_resource_type
from fhirserver.settings import Settings
from fhirserver.storage.repository import Repository, SqlRepository
from fhirserver.storage.session import Database


@dataclass(frozen=True)
class Services:
    """What a request needs from the process: settings and the database engine."""

    settings: Settings
    database: Database


def dispatch(
    services: Services,
    http: Request,
    code: str,
    *,
    resource_type: str | None = None,
    id: str | None = None,
    version_id: str | None = None,
    compartment_search: str | None = None,
    operation: str | None = None,
) -> Response:
    principal = ADMINISTRATOR
    request: FhirRequest | None = None
    shape = Shape()
    try:
        shape = parse_shape(
            response_format(http.args.get("_format"), http.headers.get("Accept")),
            http.args,
            http.headers.get("Prefer"),
        )
        principal = _authenticate(http)
        if resource_type is not None and not is_resource_type(resource_type):
            raise NotFound(f"Resource type `{resource_type}` is not supported by this server.")
        if operation is None:
            interaction = registry.get(code)
        else:
            level = "instance" if id is not None else "type" if resource_type else "system"
            interaction = operations.resolve(operation, level, resource_type, http.method)
        request = fhir_http_request.build(
            http,
            services.settings,
            interaction.code,
            resource_type=resource_type,
            id=id,
            version_id=version_id,
            compartment_search=compartment_search,
            # Operations take their input in the body (a Parameters resource) even when they only read.
            with_body=(interaction.writes or operation is not None)
            and http.method in ("POST", "PUT", "PATCH"),
            ndjson_body=interaction.ndjson_body,
        )
        request = replace(request, principal=principal)
        with services.database.transaction(write=interaction.writes) as conn:
            repository = _repository_for(SqlRepository(conn, base_url=request.base_url), principal)
            response = pipeline.run(interaction, request, repository)
    except Exception as error:  # noqa: BLE001 - every failure becomes an OperationOutcome
        response = error_response(error)
        _audit_failure(request, principal, response, error)
        # An OperationOutcome keeps the negotiated format, never _summary/_elements.
        return render(response, Shape(format=shape.format, pretty=shape.pretty))
    return render(response, shape, shape_resource=code in ("read", "vread"))


def _authenticate(http: Request) -> Principal:
    # Issue 5 replaces this with bearer-token authentication.
    return ADMINISTRATOR


def _repository_for(repository: Repository, principal: Principal) -> Repository:
    # Issue 5 wraps it: GuardedRepository(repository, policy_for(principal)).
    return repository


def _audit_failure(
    request: FhirRequest | None, principal: Principal, response: FhirResponse, error: Exception
) -> None:
    pipeline.record_failure(request, principal, response, error)
