"""``$everything`` — http://hl7.org/fhir/R4/patient-operation-everything.html

``GET|POST [base]/Patient/[id]/$everything``: the patient's record — the
Patient, every resource in its compartment (the official R4 Patient
CompartmentDefinition) and the resources those refer to that are needed to
understand them (Practitioner, Organization, Location, Medication, ...; one
level of references); fhirserver.search.everything says exactly which.
``[base]/Patient/$everything`` is the same for every patient.

Parameters: ``_since`` (instant: only resources updated since), ``_type``
(comma-separated types, repeatable), ``_count`` (page size). The answer is a
searchset Bundle (members with ``search.mode`` match, referenced resources
with include) paged by a keyset: the ``next`` link repeats this operation's
URL with a ``_cursor``, and following it visits every resource exactly once.
The spec lets a server answer the whole record in one Bundle unless the
client pages: a page holds up to MAX_COUNT resources unless ``_count`` asks
for fewer. ``start`` / ``end`` (care dates) are not supported: they are
reported as ignored (400 under ``Prefer: handling=strict``).
"""

from __future__ import annotations

from fhirserver.errors import BadRequest
from fhirserver.interactions.common import require_present, require_valid_id
from fhirserver.interactions.request import FhirRequest, FhirResponse
from fhirserver.operations.parameters import OperationInput
from fhirserver.resources.datetimes import parse_range
from fhirserver.resources.registry import is_resource_type
from fhirserver.search.everything import EverythingQuery
from fhirserver.search.parse import MAX_COUNT
from fhirserver.search.selection import Paging
from fhirserver.storage.repository import Repository

#: The parameters this operation reads (besides _format / _pretty).
_KNOWN = frozenset({"_since", "_type", "_count", "_cursor", "_summary", "_elements"})
_SUMMARY_MODES = ("true", "text", "data", "count", "false")


def handle(request: FhirRequest, repository: Repository) -> FhirResponse:
    assert request.resource_type == "Patient"
    if request.id is not None:
        require_valid_id("Patient", request.id)
        require_present("Patient", request.id, repository.read("Patient", request.id))
    given = OperationInput.of(request)
    params = link_parameters(given)
    warnings = _ignored(given, strict=request.prefer_handling == "strict")
    path = f"Patient/{request.id}/$everything" if request.id else "Patient/$everything"
    summary = given.string("_summary")
    if summary is not None and summary not in _SUMMARY_MODES:
        raise BadRequest(f"_summary `{summary}` is not one of {', '.join(_SUMMARY_MODES)}.")
    elements = given.string("_elements")
    query = EverythingQuery(
        patient_id=request.id,
        paging=Paging(
            path=path,
            count=_count(given.value("_count")),
            cursor=given.string("_cursor"),
            summary=summary,
            elements=tuple(e.strip() for e in (elements or "").split(",") if e.strip()),
            warnings=tuple(warnings),
        ),
        types=_types(given.values("_type")),
        since=_since(given.string("_since")),
    )
    bundle = repository.everything(query, base_url=request.base_url, params=params)
    return FhirResponse(status=200, resource=bundle)


def link_parameters(given: OperationInput) -> list[tuple[str, str]]:
    """The input as query parameters, for the Bundle's links (a POST's Parameters too)."""
    params = []
    for name, entries in given.parameters.items():
        for entry in entries:
            value = next((v for k, v in entry.items() if k.startswith("value")), None)
            if isinstance(value, bool):
                value = "true" if value else "false"
            if isinstance(value, str | int):
                params.append((name, str(value)))
    return params


def _ignored(given: OperationInput, *, strict: bool) -> list[str]:
    warnings = []
    for name in given.parameters:
        if name in _KNOWN:
            continue
        why = (
            "care-date ranges are not supported by this server"
            if name in ("start", "end")
            else "$everything has no such parameter"
        )
        if strict:
            raise BadRequest(f"Parameter `{name}` is not supported: {why}.")
        warnings.append(f"Parameter `{name}` was ignored: {why}.")
    return warnings


def _count(value: object) -> int:
    if value is None:
        return MAX_COUNT
    text = str(value)
    if isinstance(value, bool) or not text.isdigit():
        raise BadRequest(f"_count must be a non-negative integer, not `{text}`.")
    return min(int(text), MAX_COUNT)


def _types(values: list) -> tuple[str, ...]:
    types: list[str] = []
    for value in values:
        if not isinstance(value, str):
            raise BadRequest("_type must be a comma-separated list of resource types.")
        for name in (v.strip() for v in value.split(",")):
            if not name:
                continue
            if not is_resource_type(name):
                raise BadRequest(f"_type `{name}` is not a resource type this server knows.")
            types.append(name)
    return tuple(dict.fromkeys(types))


def _since(text: str | None):
    if text is None:
        return None
    return parse_range(text, what="_since instant")[0]
