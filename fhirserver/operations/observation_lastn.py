"""``$lastn`` — http://hl7.org/fhir/R4/observation-operation-lastn.html

``GET [base]/Observation/$lastn?patient=...&category=vital-signs&max=3``: the
Observations an ordinary Observation search with the same parameters would
find, keeping per patient and per code only the ``max`` most recent
(default 1); fhirserver.search.lastn says how the groups are formed and
ordered. ``max`` must be a positive integer (400 otherwise).

The answer is a searchset Bundle paged by a keyset (``next`` repeats this
URL with a ``_cursor``); a page holds up to MAX_COUNT Observations unless
``_count`` asks for fewer. ``_summary``, ``_elements`` and ``_total`` work as
in search; ``_sort``, ``_include`` and ``_revinclude`` do not apply to the
groups and are reported as ignored (400 under ``Prefer: handling=strict``).
"""

from __future__ import annotations

from dataclasses import replace

from fhirserver.errors import BadRequest
from fhirserver.interactions.request import FhirRequest, FhirResponse
from fhirserver.operations.parameters import OperationInput
from fhirserver.operations.patient_everything import link_parameters
from fhirserver.search.lastn import LastnQuery
from fhirserver.search.parse import MAX_COUNT, parse
from fhirserver.search.types import SearchContext
from fhirserver.storage.repository import Repository

PATH = "Observation/$lastn"
#: A larger ``max`` means "all of them"; bounded so that it stays a 64-bit integer in SQL.
_MAX_MAX = 1_000_000
_NOT_FOR_GROUPS = ("_sort", "_include", "_revinclude")


def handle(request: FhirRequest, repository: Repository) -> FhirResponse:
    given = OperationInput.of(request)
    params = link_parameters(given)
    strict = request.prefer_handling == "strict"
    maximum = _max(given.value("max"))
    search_params, warnings = [], []
    for name, value in params:
        if name == "max":
            continue
        if name.split(":", 1)[0] in _NOT_FOR_GROUPS:
            message = f"Parameter `{name}` does not apply to $lastn"
            if strict:
                raise BadRequest(f"{message}.")
            warnings.append(f"{message} and was ignored.")
            continue
        search_params.append((name, value))
    search = parse("Observation", search_params, strict=strict)
    count = search.count if any(name == "_count" for name, _ in search_params) else MAX_COUNT
    search = replace(
        search, count=count, path=PATH, warnings=(*warnings, *search.warnings), includes=()
    )
    bundle = repository.lastn(
        LastnQuery(search, maximum),
        SearchContext(base_url=request.base_url),
        base_url=request.base_url,
        params=params,
    )
    return FhirResponse(status=200, resource=bundle)


def _max(value: object) -> int:
    """``max``: a positiveInt (1 when absent)."""
    if value is None:
        return 1
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit() or int(text) < 1:
        raise BadRequest(f"max must be a positive integer, not `{text}`.")
    return min(int(text), _MAX_MAX)
