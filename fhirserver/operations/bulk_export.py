"""``$export`` kick-off at system, Patient and Group level — http://hl7.org/fhir/uv/bulkdata/export.html

``[base]/$export``, ``[base]/Patient/$export`` and ``[base]/Group/[id]/$export``
(GET with query parameters, or POST with a Parameters resource). The request
is checked here, queued as a job in the database and answered at once with
202 Accepted and ``Content-Location``: the status URL the client polls
(fhirserver/bulk/status.py). A worker in any server process writes the files
(fhirserver/bulk/export.py).

Supported parameters: ``_outputFormat`` (ndjson), ``_type``, ``_since``,
``_typeFilter``. Any other (``_elements``, ``patient``,
``includeAssociatedData``, ...) is a 400, or ignored under
``Prefer: handling=lenient``, as the spec asks of a server that does not
support one.
"""

from __future__ import annotations

import re
from datetime import datetime
from urllib.parse import urlencode

from fhirserver.bulk import export, jobs
from fhirserver.bulk.status import status_url
from fhirserver.errors import BadRequest, Issue
from fhirserver.interactions.common import require_present, require_valid_id
from fhirserver.interactions.request import FhirRequest, FhirResponse
from fhirserver.operations.parameters import OperationInput
from fhirserver.resources.datetimes import parse_range
from fhirserver.resources.outcome import operation_outcome
from fhirserver.resources.registry import is_resource_type
from fhirserver.search import valuesets
from fhirserver.search.types import SearchContext
from fhirserver.storage.repository import Repository

_SUPPORTED = frozenset({"_outputFormat", "_type", "_since", "_typeFilter"})
# http://hl7.org/fhir/R4/datatypes.html#instant: seconds and a time zone are required.
_INSTANT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")


def handle_system(request: FhirRequest, repository: Repository) -> FhirResponse:
    return _kick_off(request, repository, export.SYSTEM)


def handle_patient(request: FhirRequest, repository: Repository) -> FhirResponse:
    return _kick_off(request, repository, export.PATIENT)


def handle_group(request: FhirRequest, repository: Repository) -> FhirResponse:
    assert request.id is not None
    require_valid_id("Group", request.id)
    require_present("Group", request.id, repository.read("Group", request.id))
    return _kick_off(request, repository, export.GROUP)


def _kick_off(request: FhirRequest, repository: Repository, level: str) -> FhirResponse:
    if not request.prefer_respond_async:
        raise BadRequest(
            "$export runs asynchronously: send the header `Prefer: respond-async` "
            "(http://hl7.org/fhir/uv/bulkdata/export.html#headers)."
        )
    given = OperationInput.of(request)
    lenient = request.prefer_handling == "lenient"
    unsupported = sorted(set(given.parameters) - _SUPPORTED)
    if unsupported and not lenient:
        raise BadRequest(
            f"$export parameter(s) {', '.join(f'`{n}`' for n in unsupported)} are not supported "
            "by this server (send `Prefer: handling=lenient` to have them ignored)."
        )
    _check_output_format(given.string("_outputFormat"))
    wanted = export.ExportRequest(
        level=level,
        base_url=request.base_url,
        group_id=request.id if level == export.GROUP else None,
        types=_types(given),
        since=_since(given.string("_since")),
        type_filters=export.split_type_filters(_strings(given, "_typeFilter")),
        lenient=lenient,
    )
    conn = jobs.connection_of(repository)
    # Compiled now, so that a bad filter is the client's 400 rather than a failed job.
    context = SearchContext(
        base_url=request.base_url,
        dialect=conn.dialect.name,
        value_set_codes=lambda url: valuesets.codes(conn, url),
    )
    export.type_filters(wanted.type_filters, lenient=lenient, context=context)
    job = jobs.enqueue(conn, export.KIND, _request_url(request), wanted.to_json())
    location = status_url(request.base_url, job.id)
    issue = Issue(
        code="informational",
        severity="information",
        diagnostics=f"Export job `{job.id}` is queued; poll {location} for its status.",
    )
    return FhirResponse(
        status=202, resource=operation_outcome([issue]), headers={"Content-Location": location}
    )


def _strings(given: OperationInput, name: str) -> list[str]:
    values = given.values(name)
    if not all(isinstance(v, str) for v in values):
        raise BadRequest(f"Parameter `{name}` must be a string.")
    return values


def _check_output_format(value: str | None) -> None:
    # In a query string the `+` of application/fhir+ndjson arrives as a space.
    if value is not None and value.strip().replace(" ", "+") not in export.OUTPUT_FORMATS:
        raise BadRequest(
            f"_outputFormat `{value}` is not supported; use application/fhir+ndjson "
            "(or application/ndjson, ndjson)."
        )


def _types(given: OperationInput) -> tuple[str, ...]:
    names = [n.strip() for v in _strings(given, "_type") for n in v.split(",") if n.strip()]
    for name in names:
        if not is_resource_type(name):
            raise BadRequest(f"_type `{name}` is not a resource type this server knows.")
    return tuple(dict.fromkeys(names))


def _since(value: str | None) -> datetime | None:
    if value is None:
        return None
    # A `+hh:mm` zone in a query string arrives with a space for the `+`.
    text = value.strip().replace(" ", "+")
    if not _INSTANT.fullmatch(text):
        raise BadRequest(
            f"_since `{value}` is not a FHIR instant (e.g. 2024-05-01T10:00:00Z, with seconds and a time zone)."
        )
    return parse_range(text, what="instant")[0]


def _request_url(request: FhirRequest) -> str:
    """The kick-off URL, as the manifest's ``request`` repeats it."""
    if request.resource_type is None:
        path = "$export"
    elif request.id is None:
        path = f"{request.resource_type}/$export"
    else:
        path = f"{request.resource_type}/{request.id}/$export"
    query = urlencode(request.params)
    return f"{request.base_url}/{path}" + (f"?{query}" if query else "")
