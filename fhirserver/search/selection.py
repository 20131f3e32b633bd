"""A searchset Bundle over resources an operation selects (``$everything``, ``$lastn``).

http://hl7.org/fhir/R4/search.html#return and http://hl7.org/fhir/R4/http.html#paging:
the operation says *which* resources (a condition on the ``resource`` table,
compiled to SQL by its own module); this module pages them like a search
does — one statement per page, a keyset over the internal key ``pk`` carried
in the ``next`` link's ``_cursor`` (never an OFFSET), so that rows written
while a client pages shift nothing and every resource comes exactly once —
and builds the Bundle: entries with ``search.mode``, ``self``/``first``/``next``
links that repeat the operation's own URL, ``_summary`` / ``_elements``, an
OperationOutcome entry for ignored parameters, ``total`` on
``_total=accurate`` or ``_summary=count``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import orjson
from sqlalchemy import ColumnElement, Connection, false, func, select

from fhirserver.errors import BadRequest, Issue
from fhirserver.resources import jsonio
from fhirserver.resources.outcome import operation_outcome
from fhirserver.resources.subset import apply_elements, apply_summary
from fhirserver.search import plan as planner
from fhirserver.storage.tables import resource

#: Builds the conditions on an alias of ``resource`` that select the operation's resources.
Where = Callable[[Any], Sequence[ColumnElement[bool]]]


@dataclass(frozen=True)
class Paging:
    """How the selected resources are returned: page size, cursor and shape."""

    #: The operation's URL path under the base (``Patient/1/$everything``): links repeat it.
    path: str
    count: int
    cursor: str | None = None
    #: none, estimate (answered as none: no count is run) or accurate.
    total: str = "none"
    summary: str | None = None
    elements: tuple[str, ...] = ()
    #: Parameters that were ignored, with why (an OperationOutcome entry).
    warnings: tuple[str, ...] = ()


def run(
    conn: Connection,
    where: Where,
    paging: Paging,
    *,
    base_url: str,
    params: list[tuple[str, str]],
    mode: Callable[[str], str] = lambda resource_type: "match",
) -> dict:
    """The page of selected resources after ``paging.cursor``, as a searchset Bundle.

    ``mode`` names each entry's ``search.mode`` by its resource type (``match``
    or ``include``); ``params`` are the request's parameters, repeated in the links.
    """
    r = resource.alias("r")
    conditions = [r.c.deleted == false(), *where(r)]
    bundle: dict = {"resourceType": "Bundle", "type": "searchset"}
    self_link = {"relation": "self", "url": _url(base_url, paging.path, params)}
    if paging.summary == "count" or paging.total == "accurate":
        counted = select(func.count()).select_from(select(r.c.pk).where(*conditions).subquery())
        bundle["total"] = conn.execute(counted).scalar_one()
    if paging.summary == "count":
        bundle["link"] = [self_link]
        return bundle

    after = _after(paging.cursor)
    page = select(r.c.pk, r.c.resource_type, r.c.id, r.c.body).where(*conditions)
    if after is not None:
        page = page.where(r.c.pk > after)
    rows = conn.execute(page.order_by(r.c.pk).limit(paging.count + 1)).all() if paging.count else []
    more = len(rows) > paging.count
    rows = rows[: paging.count]

    links = [
        self_link,
        {"relation": "first", "url": _url(base_url, paging.path, _without_cursor(params))},
    ]
    if more and rows:
        cursor = planner.encode_cursor(rows[-1], ())
        next_params = [*_without_cursor(params), ("_cursor", cursor)]
        links.append({"relation": "next", "url": _url(base_url, paging.path, next_params)})
    bundle["link"] = links

    shape = _shaper(paging)
    entries: list[dict] = [
        {
            "fullUrl": f"{base_url}/{row.resource_type}/{row.id}",
            "resource": orjson.Fragment(shape(row.body)),
            "search": {"mode": mode(row.resource_type)},
        }
        for row in rows
    ]
    if paging.warnings:
        issues = [
            Issue(code="not-supported", severity="warning", diagnostics=w) for w in paging.warnings
        ]
        entries.append({"resource": operation_outcome(issues), "search": {"mode": "outcome"}})
    bundle["entry"] = entries
    return bundle


def _after(cursor: str | None) -> int | None:
    """The last pk of the previous page, from a cursor this module wrote."""
    if cursor is None:
        return None
    backwards, values = planner.decode_cursor(cursor, 0)
    if backwards:
        raise BadRequest("The paging cursor is not valid here; follow the Bundle's links as given.")
    return int(values[-1])


def _shaper(paging: Paging) -> Callable[[bytes], bytes]:
    """``_summary`` / ``_elements`` on each entry; the stored bytes pass through otherwise."""
    if paging.summary in (None, "false") and not paging.elements:
        return lambda body: body

    def shape(body: bytes) -> bytes:
        shaped = jsonio.loads(body)
        if paging.summary not in (None, "false"):
            shaped = apply_summary(shaped, paging.summary)
        if paging.elements:
            shaped = apply_elements(shaped, list(paging.elements))
        return jsonio.dumps(shaped)

    return shape


def _without_cursor(params: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(k, v) for k, v in params if k != "_cursor"]


def _url(base_url: str, path: str, params: list[tuple[str, str]]) -> str:
    url = f"{base_url}/{path}"
    return f"{url}?{urlencode(params)}" if params else url
