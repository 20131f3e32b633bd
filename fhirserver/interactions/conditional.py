"""Conditional interactions: the search criteria that pick the resource.

http://hl7.org/fhir/R4/http.html#ccreate (If-None-Exist), #cond-update
(``PUT [type]?criteria``), #3.1.0.7.1 (conditional delete) and conditional
patch. Every conditional write first takes the database lock for its criteria
(Repository.lock_criteria), so that concurrent writers with the same criteria
run one after the other and the later ones see what the earlier created.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from fhirserver.errors import BadRequest, PreconditionFailed
from fhirserver.interactions.request import FhirRequest
from fhirserver.storage.repository import Repository

_FORMAT_PARAMETERS = frozenset({"_format", "_pretty"})
#: Most resources one conditional delete removes; more matches answer 412.
MAX_CONDITIONAL_DELETES = 100


def criteria_of(text: str, resource_type: str) -> list[tuple[str, str]]:
    """``identifier=a|b``, ``?identifier=...`` or ``Patient?identifier=...`` -> parameters."""
    head, question, query = text.partition("?")
    if question:
        if head and head != resource_type:
            raise BadRequest(f"The criteria `{text}` name {head}, not {resource_type}.")
    else:
        query = head
    params = [
        (k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k not in _FORMAT_PARAMETERS
    ]
    if not params:
        raise BadRequest(f"`{text}` holds no search criteria.")
    return params


def request_criteria(request: FhirRequest, kind: str) -> list[tuple[str, str]]:
    """The criteria of ``PUT/DELETE/PATCH [type]?criteria``: the query, without format parameters."""
    params = [(k, v) for k, v in request.params if k not in _FORMAT_PARAMETERS]
    if not params:
        raise BadRequest(f"A conditional {kind} of {request.resource_type} needs search criteria.")
    return params


def matches(
    repository: Repository, resource_type: str, params: list[tuple[str, str]], *, limit: int = 2
) -> list[str]:
    """Ids matching the criteria, under the criteria's lock (see module docstring)."""
    repository.lock_criteria(resource_type, params)
    return repository.find(resource_type, params, limit=limit)


def at_most_one(ids: list[str], resource_type: str, params: list[tuple[str, str]]) -> str | None:
    if len(ids) > 1:
        shown = "&".join(f"{k}={v}" for k, v in params)
        raise PreconditionFailed(
            f"The criteria `{resource_type}?{shown}` match more than one resource."
        )
    return ids[0] if ids else None
