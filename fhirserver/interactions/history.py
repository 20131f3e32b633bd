"""history at instance, type and system level — http://hl7.org/fhir/R4/http.html#history

``GET [base]/[type]/[id]/_history``, ``GET [base]/[type]/_history``,
``GET [base]/_history``: a Bundle of type ``history``, newest first. ``_since``
(versions written at or after an instant), ``_at`` (versions current at some
moment of a date's range) and ``_count``. Pages follow a keyset (the global
history sequence), so inserts made while a client pages do not shift pages.
"""

from __future__ import annotations

from dataclasses import replace
from urllib.parse import urlencode

import orjson

from fhirserver.errors import BadRequest
from fhirserver.interactions.common import require_valid_id
from fhirserver.interactions.request import FhirRequest, FhirResponse
from fhirserver.resources.datetimes import parse_range
from fhirserver.resources.meta import format_instant
from fhirserver.search.parse import DEFAULT_COUNT, MAX_COUNT
from fhirserver.storage.repository import HistoryQuery, Repository, StoredVersion

#: Opaque keyset cursor of the next page.
CURSOR = "_cursor"

_STATUS = {"POST": "201 Created", "PUT": "200 OK", "PATCH": "200 OK", "DELETE": "204 No Content"}


def handle(request: FhirRequest, repository: Repository) -> FhirResponse:
    if request.resource_type is not None and request.id is not None:
        require_valid_id(request.resource_type, request.id)
    query = HistoryQuery(
        resource_type=request.resource_type,
        id=request.id,
        since=_since(request.param("_since")),
        at=None
        if request.param("_at") is None
        else parse_range(request.param("_at") or "", what="_at date"),
        before_seq=_cursor(request.param(CURSOR)),
        count=_count(request.param("_count")),
    )
    # One extra row tells whether there is a next page without counting.
    versions = repository.history(replace(query, count=query.count + 1))
    has_next = len(versions) > query.count
    versions = versions[: query.count]
    bundle: dict = {
        "resourceType": "Bundle",
        "type": "history",
        "link": _links(request, versions, has_next),
    }
    bundle["entry"] = [_entry(request.base_url, version) for version in versions]
    return FhirResponse(status=200, resource=bundle)


def _entry(base_url: str, version: StoredVersion) -> dict:
    url = f"{version.resource_type}/{version.id}"
    entry: dict = {"fullUrl": f"{base_url}/{url}"}
    if version.body is not None:
        # The stored bytes go into the Bundle as they are (no parse, no re-encode).
        entry["resource"] = orjson.Fragment(version.body)
    entry["request"] = {
        "method": version.method,
        "url": version.resource_type if version.method == "POST" else url,
    }
    entry["response"] = {
        "status": _STATUS.get(version.method, "200 OK"),
        "etag": f'W/"{version.version_id}"',
        "lastModified": format_instant(version.last_updated),
    }
    return entry


def _links(request: FhirRequest, versions: list[StoredVersion], has_next: bool) -> list[dict]:
    path = "/".join(part for part in (request.resource_type, request.id) if part)
    base = f"{request.base_url}/{path}/_history" if path else f"{request.base_url}/_history"
    kept = [(key, value) for key, value in request.params if key != CURSOR]
    links = [{"relation": "self", "url": _url(base, request.params)}]
    if has_next and versions:
        links.append(
            {"relation": "next", "url": _url(base, [*kept, (CURSOR, str(versions[-1].seq))])}
        )
    return links


def _url(base: str, params) -> str:
    params = list(params)
    return f"{base}?{urlencode(params)}" if params else base


def _since(text: str | None):
    return None if text is None else parse_range(text, what="_since instant")[0]


def _cursor(text: str | None) -> int | None:
    if text is None:
        return None
    if not text.isdigit() or len(text) > 18:
        raise BadRequest(f"`{text}` is not a valid {CURSOR} (use the next link as given).")
    return int(text)


def _count(text: str | None) -> int:
    if text is None:
        return DEFAULT_COUNT
    if not text.isdigit():
        raise BadRequest(f"_count must be a non-negative integer, not `{text}`.")
    return max(1, min(int(text), MAX_COUNT))
