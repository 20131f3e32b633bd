"""Running a SearchQuery: the page, the includes, and the searchset Bundle.

http://hl7.org/fhir/R4/search.html#return: entries with ``search.mode``
(match, include, outcome), links self/first/next, ``total`` only when
``_total=accurate`` asks for it (counting is the slow part of search).
"""

from __future__ import annotations

from urllib.parse import urlencode

import orjson
from sqlalchemy import Connection, false, select, tuple_

from fhirserver.errors import Issue
from fhirserver.resources import jsonio
from fhirserver.resources.outcome import operation_outcome
from fhirserver.resources.subset import apply_elements, apply_summary
from fhirserver.search import plan as planner
from fhirserver.search import registry
from fhirserver.search.query import Include, SearchQuery
from fhirserver.search.types import SearchContext
from fhirserver.storage.tables import SEARCH_TABLES, resource

#: Most included resources one page carries; past it the Bundle says so (docs/KNOWN-LIMITS.md).
MAX_INCLUDES = 1000
#: How many rounds of ``:iterate`` are followed.
MAX_ITERATE_DEPTH = 3


def run(
    conn: Connection,
    query: SearchQuery,
    context: SearchContext,
    *,
    base_url: str,
    params: list[tuple[str, str]],
) -> dict:
    plan = planner.build(query, context, limit=query.count + 1)
    total = conn.execute(plan.count).scalar_one() if plan.count is not None else None
    if query.total == "estimate":
        total = _estimate(conn, plan)
    bundle: dict = {"resourceType": "Bundle", "type": "searchset"}
    if query.summary == "count":
        bundle["total"] = (
            total if total is not None else conn.execute(_count_of(query, context)).scalar_one()
        )
        bundle["link"] = [{"relation": "self", "url": _url(base_url, _path(query), params)}]
        return bundle

    rows: list = []
    more = False
    for statement in plan.pages if query.count > 0 else ():
        fetched = conn.execute(statement).all()
        if plan.repeats:
            # Rows come in key order; a resource matching several values repeats in a row.
            more = len(fetched) >= plan.fetched
            fetched = [
                row for i, row in enumerate(fetched) if i == 0 or row.pk != fetched[i - 1].pk
            ]
        rows += fetched
        if len(rows) > query.count:
            break
    more = more or len(rows) > query.count
    rows = rows[: query.count]
    if plan.backwards:
        # Read backwards from the cursor: put the page in order; the page it came from follows.
        rows.reverse()
        has_previous, has_next = more, True
    else:
        has_previous, has_next = query.cursor is not None, more
    if total is not None:
        bundle["total"] = total
    links = [
        {"relation": "self", "url": _url(base_url, _path(query), params)},
        {"relation": "first", "url": _url(base_url, _path(query), _without_cursor(params))},
    ]
    if has_previous and rows:
        cursor = planner.encode_cursor(rows[0], plan.sort_columns, backwards=True)
        links.append({"relation": "previous", "url": _paged(base_url, query, params, cursor)})
    if has_next and rows:
        cursor = planner.encode_cursor(rows[-1], plan.sort_columns)
        links.append({"relation": "next", "url": _paged(base_url, query, params, cursor)})
    bundle["link"] = links

    shape = _shaper(query)
    entries = [
        _entry(base_url, row.resource_type, row.id, shape(row.body), "match") for row in rows
    ]
    included, truncated = _includes(
        conn, query, [(row.resource_type, row.id, row.pk) for row in rows]
    )
    entries += [_entry(base_url, t, i, shape(body), "include") for t, i, body in included]
    issues = [
        Issue(code="not-supported", severity="warning", diagnostics=w) for w in query.warnings
    ]
    if truncated:
        issues.append(
            Issue(
                code="too-costly",
                severity="warning",
                diagnostics=f"Only the first {MAX_INCLUDES} included resources are in this page.",
            )
        )
    if issues:
        entries.append({"resource": operation_outcome(issues), "search": {"mode": "outcome"}})
    bundle["entry"] = entries
    return bundle


def _estimate(conn: Connection, plan: planner.Plan) -> int | None:
    """PostgreSQL's row estimate for the matches (no count is run); None where there is none."""
    if conn.dialect.name != "postgresql" or plan.matches is None:
        return None
    compiled = plan.matches.compile(
        dialect=conn.dialect, compile_kwargs={"render_postcompile": True}
    )
    explained = conn.exec_driver_sql(
        "EXPLAIN (FORMAT JSON) " + str(compiled), compiled.params
    ).scalar_one()
    document = explained if isinstance(explained, list) else orjson.loads(explained)
    return int(document[0]["Plan"]["Plan Rows"])


def _shaper(query: SearchQuery):
    """``_summary`` / ``_elements`` applied to each entry (stored bytes pass through otherwise)."""
    if query.summary in (None, "false") and not query.elements:
        return lambda body: body

    def shape(body: bytes) -> bytes:
        resource = jsonio.loads(body)
        if query.summary not in (None, "false"):
            resource = apply_summary(resource, query.summary)
        if query.elements:
            resource = apply_elements(resource, list(query.elements))
        return jsonio.dumps(resource)

    return shape


def _count_of(query: SearchQuery, context: SearchContext):
    from dataclasses import replace

    return planner.build(replace(query, total="accurate"), context, limit=1).count


def _entry(base_url: str, resource_type: str, id: str, body: bytes, mode: str) -> dict:
    return {
        "fullUrl": f"{base_url}/{resource_type}/{id}",
        "resource": orjson.Fragment(body),
        "search": {"mode": mode},
    }


def _includes(
    conn: Connection, query: SearchQuery, matches: list[tuple[str, str, int]]
) -> tuple[list, bool]:
    """Included resources (each once, never a match again) and whether the cap cut them."""
    seen = {(t, i) for t, i, _ in matches}
    found: list[tuple[str, str, bytes]] = []
    frontier = matches
    for depth in range(MAX_ITERATE_DEPTH + 1):
        wanted = [inc for inc in query.includes if depth == 0 or inc.iterate]
        if not wanted or not frontier:
            break
        new: list[tuple[str, str, int]] = []
        for include in wanted:
            for resource_type, id, pk, body in _follow(conn, include, frontier):
                if (resource_type, id) in seen:
                    continue
                if len(found) >= MAX_INCLUDES:
                    return found, True
                seen.add((resource_type, id))
                found.append((resource_type, id, body))
                new.append((resource_type, id, pk))
        frontier = new
    return found, False


def _follow(conn: Connection, include: Include, frontier: list[tuple[str, str, int]]):
    references = SEARCH_TABLES["reference"]
    r = resource
    codes = (
        [include.parameter.code]
        if include.parameter is not None
        else [
            p.code
            for p in registry.parameters_for(include.source_type).values()
            if p.type == "reference"
        ]
    )
    if not include.reverse:
        pks = [pk for t, _, pk in frontier if t == include.source_type]
        if not pks:
            return []
        targets = select(references.c.target_type, references.c.target_id).where(
            references.c.resource_pk.in_(pks),
            references.c.resource_type == include.source_type,
            references.c.param.in_(codes),
            references.c.target_id.is_not(None),
        )
        if include.target_type:
            targets = targets.where(references.c.target_type == include.target_type)
        stmt = select(r.c.resource_type, r.c.id, r.c.pk, r.c.body).where(
            tuple_(r.c.resource_type, r.c.id).in_(targets), r.c.deleted == false()
        )
    else:
        keys = [(t, i) for t, i, _ in frontier if include.target_type in (None, t)]
        if not keys:
            return []
        sources = select(references.c.resource_pk).where(
            references.c.resource_type == include.source_type,
            references.c.param.in_(codes),
            tuple_(references.c.target_type, references.c.target_id).in_(keys),
        )
        stmt = select(r.c.resource_type, r.c.id, r.c.pk, r.c.body).where(
            r.c.pk.in_(sources), r.c.deleted == false()
        )
    return [
        (row.resource_type, row.id, row.pk, row.body)
        for row in conn.execute(stmt.limit(MAX_INCLUDES + 1))
    ]


def _paged(base_url: str, query: SearchQuery, params: list[tuple[str, str]], cursor: str) -> str:
    return _url(base_url, _path(query), [*_without_cursor(params), ("_cursor", cursor)])


def _without_cursor(params: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(k, v) for k, v in params if k != "_cursor"]


def _path(query: SearchQuery) -> str:
    return query.resource_type if query.path is None else query.path


def _url(base_url: str, resource_type: str, params: list[tuple[str, str]]) -> str:
    url = f"{base_url}/{resource_type}" if resource_type else base_url
    return f"{url}?{urlencode(params)}" if params else url
