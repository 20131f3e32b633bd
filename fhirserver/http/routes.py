"""The URL table of the FHIR REST API (http://hl7.org/fhir/R4/http.html), under the base path."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, request
from werkzeug.exceptions import MethodNotAllowed

from fhirserver.http.dispatch import Services, dispatch
from fhirserver.http.errors import error_response
from fhirserver.http.response import Shape, render


def _services() -> Services:
    return current_app.extensions["fhirserver"]


def _run(code: str, **path: str) -> Response:
    return dispatch(_services(), request, code, **path)


#: Interactions on [base]/[type] by HTTP method.
_TYPE_LEVEL = {
    "GET": "search-type",
    "HEAD": "search-type",
    "POST": "create",
    "PUT": "update",
    "DELETE": "delete",
    "PATCH": "patch",
}


def _capabilities() -> Response:
    if request.method != "GET":
        raise MethodNotAllowed(valid_methods=["GET"])
    return _run("capabilities")


def _operation(operation: str, **path: str) -> Response:
    return dispatch(_services(), request, "operation", operation=operation, **path)


def blueprint(base_path: str) -> Blueprint:
    api = Blueprint("fhir", __name__, url_prefix=base_path.rstrip("/") or None)

    api.add_url_rule(
        "/metadata",
        "capabilities",
        _capabilities,
        # Every method, so that /metadata never falls through to [base]/[type].
        methods=["GET", "POST", "PUT", "DELETE", "PATCH"],
    )
    api.add_url_rule(
        "/",
        "system",
        # POST [base]: a batch or transaction Bundle.
        lambda: _run("transaction" if request.method == "POST" else "search-system"),
        methods=["GET", "POST"],
        strict_slashes=False,
    )
    # Extended operations: [base]/$op, [base]/[type]/$op, [base]/[type]/[id]/$op.
    api.add_url_rule(
        "/$<operation>",
        "operation-system",
        lambda operation: _operation(operation),
        methods=["GET", "POST"],
    )
    api.add_url_rule(
        "/<resource_type>/$<operation>",
        "operation-type",
        lambda resource_type, operation: _operation(operation, resource_type=resource_type),
        methods=["GET", "POST"],
    )
    api.add_url_rule(
        "/<resource_type>/<id>/$<operation>",
        "operation-instance",
        lambda resource_type, id, operation: _operation(
            operation, resource_type=resource_type, id=id
        ),
        methods=["GET", "POST"],
    )
    api.add_url_rule("/_history", "history-system", lambda: _run("history-system"), methods=["GET"])
    # Bulk Data export status (DELETE cancels) and output files.
    api.add_url_rule(
        "/_bulk/export/<job>",
        "bulk-export-status",
        lambda job: _run(
            "bulk-export-cancel" if request.method == "DELETE" else "bulk-export-status", id=job
        ),
        methods=["GET", "DELETE"],
    )
    # Bulk import status (DELETE cancels); its error files are served like an export's.
    api.add_url_rule(
        "/_bulk/import/<job>",
        "bulk-import-status",
        lambda job: _run(
            "bulk-import-cancel" if request.method == "DELETE" else "bulk-import-status", id=job
        ),
        methods=["GET", "DELETE"],
    )
    api.add_url_rule(
        "/_bulk/files/<job>/<name>",
        "bulk-file",
        lambda job, name: _run("bulk-file", id=f"{job}/{name}"),
        methods=["GET"],
    )
    api.add_url_rule(
        "/<resource_type>",
        "type",
        lambda resource_type: _run(_TYPE_LEVEL[request.method], resource_type=resource_type),
        # PUT, DELETE and PATCH on the type are the conditional interactions.
        methods=["GET", "POST", "PUT", "DELETE", "PATCH"],
    )
    api.add_url_rule(
        "/<resource_type>/_search",
        "search-post",
        lambda resource_type: _run("search-type", resource_type=resource_type),
        methods=["POST"],
    )
    api.add_url_rule(
        "/<resource_type>/_history",
        "history-type",
        lambda resource_type: _run("history-type", resource_type=resource_type),
        methods=["GET"],
    )
    api.add_url_rule(
        "/<resource_type>/<id>",
        "instance",
        lambda resource_type, id: _run(
            {"GET": "read", "HEAD": "read", "PUT": "update", "DELETE": "delete", "PATCH": "patch"}[
                request.method
            ],
            resource_type=resource_type,
            id=id,
        ),
        methods=["GET", "PUT", "DELETE", "PATCH"],
    )
    api.add_url_rule(
        "/<resource_type>/<id>/_history",
        "history-instance",
        lambda resource_type, id: _run("history-instance", resource_type=resource_type, id=id),
        methods=["GET"],
    )
    api.add_url_rule(
        "/<resource_type>/<id>/<compartment_search>",
        "search-compartment",
        lambda resource_type, id, compartment_search: _run(
            "search-compartment",
            resource_type=resource_type,
            id=id,
            compartment_search=compartment_search,
        ),
        methods=["GET"],
    )
    api.add_url_rule(
        "/<resource_type>/<id>/_history/<version_id>",
        "vread",
        lambda resource_type, id, version_id: _run(
            "vread", resource_type=resource_type, id=id, version_id=version_id
        ),
        methods=["GET"],
    )
    return api


def register_error_handlers(app) -> None:
    """Anything Flask itself rejects (unknown URL, wrong method) also answers an OperationOutcome."""
    from werkzeug.exceptions import HTTPException

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException):
        return render(error_response(error), Shape())
