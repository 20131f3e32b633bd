"""search: ``GET [base]/[type]?...``, ``POST [base]/[type]/_search`` and the system
search ``GET [base]?_type=...`` and the compartment search
``GET [base]/Patient/[id]/[type]`` — http://hl7.org/fhir/R4/search.html

Parameters come from the SearchParameter registry; unknown ones are ignored
and reported in the Bundle (an OperationOutcome entry with search.mode
``outcome``), or rejected with 400 under ``Prefer: handling=strict``.
"""

from __future__ import annotations

from fhirserver.interactions.request import FhirRequest, FhirResponse
from fhirserver.search.parse import parse, parse_compartment, parse_system
from fhirserver.search.types import SearchContext
from fhirserver.storage.repository import Repository

IMPLEMENTED = True
#: Response-format parameters: they shape the answer, not the search, and stay out of links.
_FORMAT_PARAMETERS = frozenset({"_format", "_pretty"})


def handle(request: FhirRequest, repository: Repository) -> FhirResponse:
    params = [(k, v) for k, v in request.params if k not in _FORMAT_PARAMETERS]
    strict = request.prefer_handling == "strict"
    if request.compartment_search is not None:
        assert request.resource_type is not None and request.id is not None
        query = parse_compartment(
            request.resource_type, request.id, request.compartment_search, params, strict=strict
        )
    elif request.resource_type is None:
        query = parse_system(params, strict=strict)
    else:
        query = parse(request.resource_type, params, strict=strict)
    context = SearchContext(base_url=request.base_url)
    bundle = repository.search(query, context, base_url=request.base_url, params=params)
    return FhirResponse(status=200, resource=bundle)
