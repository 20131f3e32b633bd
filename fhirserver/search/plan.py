"""SearchQuery -> one SQL statement over the index tables.

Each criterion becomes ``resource.pk IN (SELECT resource_pk FROM <index> WHERE
resource_type = :t AND param = :code AND <type condition>)``, so the common
shapes are index range scans on (resource_type, param, value). Chains restrict
the reference index to the ids of a nested search; ``_has`` restricts the
searched ids to the targets of references from a nested search. Paging is a
keyset over (sort keys..., pk): rows inserted or deleted while a client pages
do not shift the pages.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import orjson
from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    exists,
    false,
    func,
    literal_column,
    not_,
    null,
    or_,
    select,
    true,
)

from fhirserver.errors import BadRequest
from fhirserver.search.query import (
    ChainCriterion,
    CompartmentCriterion,
    Criterion,
    HasCriterion,
    SearchQuery,
    SortKey,
    ValueCriterion,
)
from fhirserver.search.types import SearchContext, module_for, module_of
from fhirserver.storage.tables import SEARCH_TABLES, resource

#: Modifiers that mean "no matching value" of another modifier (http://hl7.org/fhir/R4/search.html#modifiers).
NEGATED = {"not": None, "not-in": "in"}


@dataclass(frozen=True)
class Plan:
    """The page statement(s) and, when asked for, the count query."""

    #: Run in order until a page is full (a sorted search reads the resources
    #: without a sort value in a second statement, see _index_ordered_pages).
    pages: tuple[Select, ...]
    count: Select | None
    sort_columns: tuple[str, ...]
    #: SELECT pk of every match (what ``_total=estimate`` asks the planner about).
    matches: Select | None = None
    #: True when the page was read backwards (a ``previous`` link): the rows come
    #: newest-last-first and the caller reverses them.
    backwards: bool = False
    #: True when a resource may come several times in a row (see _driven_matches);
    #: ``fetched`` is the LIMIT the page statement reads.
    repeats: bool = False
    fetched: int = 0


def matching_pks(
    resource_type: str, criteria: tuple[Criterion, ...], context: SearchContext
) -> Select:
    """SELECT pk of the current, not deleted resources of a type matching all criteria."""
    return _matching("pk", resource_type, criteria, context)


def matching_ids(
    resource_type: str, criteria: tuple[Criterion, ...], context: SearchContext
) -> Select:
    """SELECT id of the current, not deleted resources of a type matching all criteria."""
    return _matching("id", resource_type, criteria, context)


def _matching(
    column: str, resource_type: str, criteria: tuple[Criterion, ...], context: SearchContext
) -> Select:
    r = resource.alias(f"r_{column}")
    stmt = select(r.c[column]).where(r.c.resource_type == resource_type, r.c.deleted == false())
    for criterion in criteria:
        stmt = stmt.where(_condition(r, resource_type, criterion, context))
    return stmt


def _condition(
    r, resource_type: str, criterion: Criterion, context: SearchContext
) -> ColumnElement[bool]:
    if isinstance(criterion, ValueCriterion):
        return _value_condition(r, resource_type, criterion, context)
    if isinstance(criterion, ChainCriterion):
        return _chain_condition(r, resource_type, criterion, context)
    if isinstance(criterion, HasCriterion):
        return _has_condition(r, resource_type, criterion, context)
    if isinstance(criterion, CompartmentCriterion):
        return _compartment_condition(r, resource_type, criterion)
    raise TypeError(criterion)


def _rows_of(table, resource_type: str, code: str):
    return table.c.resource_type == resource_type, table.c.param == code


def _value_condition(
    r, resource_type: str, criterion: ValueCriterion, context: SearchContext
) -> ColumnElement[bool]:
    parameter = criterion.parameter
    module = module_of(parameter)
    if hasattr(module, "matching_pks"):
        # Parameters spread over several index tables (composites) select their own rows.
        return r.c.pk.in_(module.matching_pks(resource_type, parameter, criterion.values, context))
    table = module.TABLE.alias()
    scope = _rows_of(table, resource_type, parameter.code)
    if criterion.modifier == "missing":
        has_value = exists().where(table.c.resource_pk == r.c.pk, *scope)
        return not_(has_value) if criterion.values[0] == "true" else has_value
    modifier = criterion.modifier
    negate = modifier is not None and modifier in NEGATED
    if negate:
        modifier = NEGATED[modifier]  # type: ignore[index]
    matches = or_(
        *[
            module.condition(table, value, modifier, parameter, context)
            for value in criterion.values
        ]
    )
    subquery = select(table.c.resource_pk).where(*scope, matches)
    return r.c.pk.not_in(subquery) if negate else r.c.pk.in_(subquery)


def _chain_condition(
    r, resource_type: str, criterion: ChainCriterion, context: SearchContext
) -> ColumnElement[bool]:
    parameter = criterion.parameter
    module = module_for("reference")
    table = SEARCH_TABLES["reference"].alias()
    branches = []
    for target_type, inner in criterion.inner.items():
        target_ids = matching_ids(target_type, (inner,), context)
        branches.append(module.target_condition(table, target_type, target_ids))
    subquery = select(table.c.resource_pk).where(
        *_rows_of(table, resource_type, parameter.code), or_(*branches)
    )
    return r.c.pk.in_(subquery)


def _has_condition(
    r, resource_type: str, criterion: HasCriterion, context: SearchContext
) -> ColumnElement[bool]:
    # Correlated on the searched resource, so that a page of results can be
    # found by probing resources in order (each probe two index lookups)
    # instead of first collecting every source that matches.
    table = SEARCH_TABLES["reference"].alias()
    return exists().where(
        *_rows_of(table, criterion.source_type, criterion.parameter.code),
        table.c.target_type == resource_type,
        table.c.target_id == r.c.id,
        table.c.resource_pk.in_(_source_pks(criterion.source_type, criterion.inner, context)),
    )


def _source_pks(resource_type: str, criterion: Criterion, context: SearchContext) -> Select:
    """SELECT resource_pk of the resources of a type matching one criterion.

    Index rows exist only for current, live resources, so a plain value
    criterion is answered from its index table alone; anything else (a
    negation, :missing, a chain) goes through the resource table.
    """
    if isinstance(criterion, ValueCriterion) and criterion.modifier not in (
        "missing",
        *NEGATED,
    ):
        module = module_of(criterion.parameter)
        if not hasattr(module, "matching_pks"):
            table = module.TABLE.alias()
            matches = or_(
                *[
                    module.condition(table, value, criterion.modifier, criterion.parameter, context)
                    for value in criterion.values
                ]
            )
            return select(table.c.resource_pk).where(
                *_rows_of(table, resource_type, criterion.parameter.code), matches
            )
    return matching_pks(resource_type, (criterion,), context)


def _compartment_condition(
    r, resource_type: str, criterion: CompartmentCriterion
) -> ColumnElement[bool]:
    table = SEARCH_TABLES["reference"].alias()
    members: list[ColumnElement[bool]] = []
    if criterion.parameters:
        members.append(
            r.c.pk.in_(
                select(table.c.resource_pk).where(
                    table.c.resource_type == resource_type,
                    table.c.param.in_([p.code for p in criterion.parameters]),
                    table.c.target_type == criterion.compartment_type,
                    table.c.target_id == criterion.compartment_id,
                )
            )
        )
    if resource_type == criterion.compartment_type:
        members.append(r.c.id == criterion.compartment_id)
    return or_(*members) if members else false()


# -- sorting and paging ----------------------------------------------------------


def _sort_values(table, key: SortKey):
    """(expression, aggregate) of a sort key over an alias of its index table."""
    value = module_for(key.parameter.type).sort_value(table, key.descending)
    return value, (func.max(value) if key.descending else func.min(value))


def _sort_expression(r, key: SortKey):
    """The resource's sort value: a scalar subquery over its index rows (NULL without one)."""
    table = SEARCH_TABLES[key.parameter.type].alias()
    _, aggregate = _sort_values(table, key)
    return (
        select(aggregate)
        .where(
            table.c.resource_pk == r.c.pk,
            table.c.resource_type == r.c.resource_type,
            table.c.param == key.parameter.code,
        )
        .scalar_subquery()
    )


def build(query: SearchQuery, context: SearchContext, *, limit: int) -> Plan:
    """The page statement(s): (pk, id, body, version_id, last_updated, sort values...) in order."""
    r = resource.alias("r")
    where: list[ColumnElement[bool]] = [r.c.deleted == false()]
    if query.branches:
        # A system search: each type with its own criteria, in one statement.
        where.append(
            or_(
                *[
                    and_(r.c.resource_type == t, *[_condition(r, t, c, context) for c in criteria])
                    for t, criteria in query.branches
                ]
            )
        )
    else:
        where.append(r.c.resource_type == query.resource_type)
        where += [_condition(r, query.resource_type, c, context) for c in query.criteria]
    count = (
        select(func.count()).select_from(select(r.c.pk).where(*where).subquery())
        if query.total == "accurate"
        else None
    )
    matches = select(r.c.pk).where(*where)
    # The matching and paging part reads narrow columns only (an index-only
    # walk of ix_resource_live); the bodies of the page's rows are joined last.
    columns = (r.c.pk, r.c.resource_type, r.c.id)
    # Ties of the sort keys are broken by id (then by the internal key, which is
    # unique also across the types of a system search); without _sort, the
    # order is the internal key alone (insertion order).
    sort_columns = tuple(f"s{i}" for i in range(len(query.sort))) + (("id",) if query.sort else ())
    backwards, cursor = False, None
    if query.cursor:
        backwards, cursor = decode_cursor(query.cursor, len(sort_columns))

    driver = None if query.sort or query.branches else _driving_criterion(query.criteria)
    repeats = False
    if driver is not None:
        inner = _driven_matches(r, columns, query, driver, context)
        # Twice the rows: repeats of a resource are dropped by the caller.
        page = _keyset_page(inner, (), cursor, backwards, 2 * limit, nullable_first=True)
        pages: tuple[Select, ...] = (page,)
        repeats = True
    elif not query.sort or query.branches:
        values = [_sort_expression(r, key).label(f"s{i}") for i, key in enumerate(query.sort)]
        inner = select(*columns, *values).where(*where)
        page = _keyset_page(inner, query.sort, cursor, backwards, limit, nullable_first=True)
        pages = (page,)
    else:
        pages = _index_ordered_pages(
            r, columns, where, query, cursor, backwards, limit, context.dialect
        )
    return Plan(
        pages=pages,
        count=count,
        sort_columns=sort_columns,
        backwards=backwards,
        matches=matches,
        repeats=repeats,
        fetched=2 * limit if repeats else limit,
    )


#: Which criterion drives an unsorted search, best first: the types whose
#: values usually pick few resources (a reference names one resource, a code
#: a few percent; a date range often most of them).
_DRIVER_RANK = {"reference": 0, "token": 1, "uri": 2, "string": 3, "quantity": 4, "number": 5}
#: A chain drives after the plain reference and token criteria: its targets
#: come from a nested search whose size is unknown.
_CHAIN_RANK = 2.5
_NOT_DRIVING = frozenset({"missing", "not", "not-in", "text", "contains"})


def _driving_criterion(criteria: tuple[Criterion, ...]) -> ValueCriterion | ChainCriterion | None:
    """The criterion whose index rows an unsorted search walks in key order, if any."""
    ranked: list[tuple[float, ValueCriterion | ChainCriterion]] = []
    for c in criteria:
        if isinstance(c, ChainCriterion):
            ranked.append((_CHAIN_RANK, c))
        elif (
            isinstance(c, ValueCriterion)
            and c.parameter.type in _DRIVER_RANK
            and c.modifier not in _NOT_DRIVING
            and not hasattr(module_of(c.parameter), "matching_pks")
        ):
            ranked.append((_DRIVER_RANK[c.parameter.type], c))
    if not ranked:
        return None
    return min(ranked, key=lambda item: item[0])[1]


def _driver_rows(resource_type: str, driver: ValueCriterion | ChainCriterion, context):
    """(alias of the driver's index table, the conditions selecting its rows)."""
    if isinstance(driver, ChainCriterion):
        module = module_for("reference")
        x = SEARCH_TABLES["reference"].alias("drive")
        branches = [
            module.target_condition(x, target_type, matching_ids(target_type, (inner,), context))
            for target_type, inner in driver.inner.items()
        ]
        return x, [*_rows_of(x, resource_type, driver.parameter.code), or_(*branches)]
    module = module_of(driver.parameter)
    x = module.TABLE.alias("drive")
    matches = or_(
        *[
            module.condition(x, value, driver.modifier, driver.parameter, context)
            for value in driver.values
        ]
    )
    return x, [*_rows_of(x, resource_type, driver.parameter.code), matches]


def _driven_matches(
    r, columns, query: SearchQuery, driver: ValueCriterion | ChainCriterion, context
) -> Select:
    """The matches of an unsorted search, read through the driving criterion's index rows.

    Walking the (type, parameter, value, resource_pk) index of one criterion
    yields its resources in key order, so a page stops after a few rows; the
    other criteria are probed per row. (Joining the resource table first made
    PostgreSQL walk every resource of the type in key order.) A resource with
    several matching values comes once per value, next to itself in key
    order; the caller drops the repeats (Plan.repeats): a GROUP BY here kept
    PostgreSQL from stopping early (500 ms instead of 10 ms at 1M Observations).
    """
    x, selecting = _driver_rows(query.resource_type, driver, context)
    rest = [c for c in query.criteria if c is not driver]
    if all(isinstance(c, ValueCriterion | ChainCriterion) for c in rest):
        # Criteria on the key alone: index rows exist only for current, live
        # resources, so the resource table is not needed until the page's
        # rows are known (the caller joins their bodies, type and id).
        keys = _KeyOnly(x.c.resource_pk)
        return select(x.c.resource_pk.label("pk")).where(
            *selecting, *[_condition(keys, query.resource_type, c, context) for c in rest]
        )
    others = [_condition(r, query.resource_type, c, context) for c in rest]
    return (
        select(*columns)
        .select_from(x.join(r, r.c.pk == x.c.resource_pk))
        .where(
            *selecting,
            r.c.deleted == false(),
            r.c.resource_type == query.resource_type,
            *others,
        )
    )


class _KeyOnly:
    """Stands in for the resource table where a condition reads only ``.c.pk``."""

    def __init__(self, pk_column):
        self.c = SimpleNamespace(pk=pk_column)


def _index_ordered_pages(
    r, columns, where, query: SearchQuery, cursor, backwards, limit, dialect: str
):
    """A sorted search read in the order of the first sort key's index.

    The resources that have a value come from a join with the first key's
    index rows, one row per resource: the row holding its smallest
    (ascending) or largest (descending) value, so the database can walk the
    index in order and stop after a page instead of sorting every match. The
    resources without a value (NULLs sort last in either direction) are a
    second statement, run only when a page reaches past the last value.
    """
    first, rest = query.sort[0], query.sort[1:]
    parameter = first.parameter
    table = SEARCH_TABLES[parameter.type]
    x, other = table.alias("sort_x"), table.alias("sort_other")
    value, _ = _sort_values(x, first)
    other_value, _ = _sort_values(other, first)
    beyond = other_value > value if first.descending else other_value < value
    # A second row with the same extreme value: the first one (by physical row) stands for it.
    row_of, other_row = _row_locator(x, dialect), _row_locator(other, dialect)
    representative = ~exists().where(
        other.c.resource_pk == x.c.resource_pk,
        other.c.resource_type == x.c.resource_type,
        other.c.param == x.c.param,
        or_(beyond, and_(other_value == value, other_row < row_of)),
    )
    more = [_sort_expression(r, key).label(f"s{i + 1}") for i, key in enumerate(rest)]
    valued = (
        select(*columns, value.label("s0"), *more)
        .select_from(x.join(r, r.c.pk == x.c.resource_pk))
        .where(
            x.c.resource_type == r.c.resource_type,
            x.c.param == parameter.code,
            representative,
            *where,
        )
    )
    has_value = exists().where(
        other.c.resource_pk == r.c.pk,
        other.c.resource_type == r.c.resource_type,
        other.c.param == parameter.code,
    )
    valueless = select(*columns, null().label("s0"), *more).where(*where, ~has_value)

    def page(inner, at):
        return _keyset_page(inner, query.sort, at, backwards, limit, nullable_first=False)

    in_valueless = cursor is not None and cursor[0] is None
    if not backwards:
        if in_valueless:
            return (page(valueless, cursor),)
        return (page(valued, cursor), page(valueless, None))
    if in_valueless:
        return (page(valueless, cursor), page(valued, None))
    return (page(valued, cursor),)


def _row_locator(table, dialect: str):
    """A column that tells two rows of an index table apart: PostgreSQL's ctid, SQLite's rowid."""
    return literal_column(f"{table.name}.{'ctid' if dialect == 'postgresql' else 'rowid'}")


def _keyset_page(
    inner: Select,
    sort: tuple[SortKey, ...],
    cursor: list[Any] | None,
    backwards: bool,
    limit: int,
    *,
    nullable_first: bool,
) -> Select:
    """``inner`` in (sort keys..., id, pk) order from the cursor on, ``limit`` rows."""
    page = inner.subquery("page")
    columns = [page.c[f"s{i}"] for i in range(len(sort))]
    descending = [key.descending for key in sort]
    if sort:
        columns.append(page.c.id)
        descending.append(False)
    # NULLs (resources without the value) sort last in either direction; the
    # first key of an index-ordered page has no NULLs (and ordering by ``IS
    # NULL`` first would keep the database from reading the index in order).
    nullable = [i < len(sort) and (i > 0 or nullable_first) for i in range(len(columns))]
    stmt = select(page)
    if cursor is not None:
        keyset = _before_cursor if backwards else _after_cursor
        stmt = stmt.where(keyset(columns, page.c.pk, descending, nullable, cursor))
    limited = stmt.order_by(*_order(columns, page.c.pk, descending, nullable, backwards))
    rows = limited.limit(limit).subquery("rows")
    body = resource.alias("body")
    outer_columns = [rows.c[column.name] for column in columns]
    identity = [body.c[name] for name in ("resource_type", "id") if name not in rows.c]
    return (
        select(rows, *identity, body.c.body, body.c.version_id, body.c.last_updated)
        .join(body, body.c.pk == rows.c.pk)
        .order_by(*_order(outer_columns, rows.c.pk, descending, nullable, backwards))
    )


def _order(columns, pk_column, descending: list[bool], nullable: list[bool], backwards: bool):
    order: list[Any] = []
    for i, (column, is_descending) in enumerate(zip(columns, descending, strict=True)):
        if backwards:
            if nullable[i]:
                order.append(column.is_(None).desc())
            order.append(column.asc() if is_descending else column.desc())
        else:
            if nullable[i]:
                order.append(column.is_(None))
            order.append(column.desc() if is_descending else column.asc())
    order.append(pk_column.desc() if backwards else pk_column.asc())
    return order


def _after_cursor(
    columns, pk_column, descending: list[bool], nullable: list[bool], cursor: list[Any]
) -> ColumnElement[bool]:
    """Rows strictly after the cursor in (NULLS LAST sort keys..., pk) order.

    Each key's condition leads with a plain bound (``value <= v`` descending,
    ``>= v`` ascending) so that the database can start its index scan at the
    cursor instead of filtering every row before it.
    """
    *values, last_pk = cursor
    condition: ColumnElement[bool] = pk_column > last_pk
    for column, is_descending, may_be_null, value in reversed(
        list(zip(columns, descending, nullable, values, strict=True))
    ):
        if value is None:
            # After a NULL only more NULLs (tie on this key) can follow.
            condition = and_(column.is_(None), condition)
            continue
        bound = column <= value if is_descending else column >= value
        beyond = column < value if is_descending else column > value
        condition = and_(bound, or_(beyond, and_(column == value, condition)))
        if may_be_null:
            condition = or_(condition, column.is_(None))
    return condition


def _before_cursor(
    columns, pk_column, descending: list[bool], nullable: list[bool], cursor: list[Any]
) -> ColumnElement[bool]:
    """Rows strictly before the cursor in (NULLS LAST sort keys..., pk) order."""
    *values, first_pk = cursor
    condition: ColumnElement[bool] = pk_column < first_pk
    for column, is_descending, _may_be_null, value in reversed(
        list(zip(columns, descending, nullable, values, strict=True))
    ):
        if value is None:
            # Every non-NULL value comes before a NULL.
            condition = or_(column.is_not(None), and_(column.is_(None), condition))
            continue
        # The bound excludes NULLs, which never come before a value.
        bound = column >= value if is_descending else column <= value
        ahead = column > value if is_descending else column < value
        condition = and_(bound, or_(ahead, and_(column == value, condition)))
    return condition


#: Cursor prefixes: read the rows after the cursor row, or before it (``previous``).
_FORWARD, _BACKWARD = "n", "p"


def encode_cursor(row: Any, sort_columns: tuple[str, ...], *, backwards: bool = False) -> str:
    values = [_jsonable(getattr(row, name)) for name in sort_columns] + [row.pk]
    encoded = base64.urlsafe_b64encode(orjson.dumps(values)).decode().rstrip("=")
    return f"{_BACKWARD if backwards else _FORWARD}{encoded}"


def decode_cursor(text: str, key_count: int) -> tuple[bool, list[Any]]:
    """(backwards, key values) of a cursor made by :func:`encode_cursor`."""
    direction, text = text[:1], text[1:]
    try:
        if direction not in (_FORWARD, _BACKWARD):
            raise ValueError(direction)
        values = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except ValueError:
        raise BadRequest(
            "The paging cursor is not valid; follow the Bundle's links as given."
        ) from None
    if (
        not isinstance(values, list)
        or len(values) != key_count + 1
        or not isinstance(values[-1], int)
    ):
        raise BadRequest(
            "The paging cursor does not fit this search; follow the Bundle's links as given."
        )
    return direction == _BACKWARD, [_from_jsonable(v) for v in values]


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"dt": value.isoformat()}
    if isinstance(value, Decimal):
        return {"dec": str(value)}
    return value


def _from_jsonable(value: Any) -> Any:
    if isinstance(value, dict) and "dt" in value:
        return datetime.fromisoformat(value["dt"])
    if isinstance(value, dict) and "dec" in value:
        return Decimal(value["dec"])
    return value


__all__ = ["Plan", "build", "encode_cursor", "matching_ids", "matching_pks", "true"]
