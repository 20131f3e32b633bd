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
from typing import Any

import orjson
from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    exists,
    false,
    func,
    not_,
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
    """The page query and, when asked for, the count query."""

    page: Select
    count: Select | None
    sort_columns: tuple[str, ...]
    #: SELECT pk of every match (what ``_total=estimate`` asks the planner about).
    matches: Select | None = None
    #: True when the page was read backwards (a ``previous`` link): the rows come
    #: newest-last-first and the caller reverses them.
    backwards: bool = False


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
    table = SEARCH_TABLES["reference"].alias()
    sources = matching_pks(criterion.source_type, (criterion.inner,), context)
    target_ids = select(table.c.target_id).where(
        *_rows_of(table, criterion.source_type, criterion.parameter.code),
        table.c.target_type == resource_type,
        table.c.resource_pk.in_(sources),
    )
    return r.c.id.in_(target_ids)


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


def _sort_expression(r, key: SortKey):
    parameter = key.parameter
    table = SEARCH_TABLES[parameter.type].alias()
    aggregate = module_for(parameter.type).sort_key(table, key.descending)
    return (
        select(aggregate)
        .where(
            table.c.resource_pk == r.c.pk,
            table.c.resource_type == r.c.resource_type,
            table.c.param == parameter.code,
        )
        .scalar_subquery()
    )


def build(query: SearchQuery, context: SearchContext, *, limit: int) -> Plan:
    """The page statement: (pk, id, body, version_id, last_updated, sort values...) in order."""
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

    sort_values = [_sort_expression(r, key).label(f"s{i}") for i, key in enumerate(query.sort)]
    inner = select(
        r.c.pk, r.c.resource_type, r.c.id, r.c.body, r.c.version_id, r.c.last_updated, *sort_values
    ).where(*where)
    count = (
        select(func.count()).select_from(select(r.c.pk).where(*where).subquery())
        if query.total == "accurate"
        else None
    )

    page = inner.subquery("page")
    # Ties of the sort keys are broken by id (then by the internal key, which is
    # unique also across the types of a system search); without _sort, the
    # order is the internal key alone (insertion order).
    columns = [page.c[f"s{i}"] for i in range(len(query.sort))]
    descending = [key.descending for key in query.sort]
    sort_columns = tuple(f"s{i}" for i in range(len(query.sort)))
    if query.sort:
        columns.append(page.c.id)
        descending.append(False)
        sort_columns += ("id",)
    stmt = select(page)
    backwards = False
    if query.cursor:
        backwards, values = decode_cursor(query.cursor, len(sort_columns))
        keyset = _before_cursor if backwards else _after_cursor
        stmt = stmt.where(keyset(columns, page.c.pk, descending, values))
    order: list[Any] = []
    for column, is_descending in zip(columns, descending, strict=True):
        # NULLs (resources without the value) sort last in either direction.
        if backwards:
            order += [column.is_(None).desc(), column.asc() if is_descending else column.desc()]
        else:
            order += [column.is_(None), column.desc() if is_descending else column.asc()]
    order.append(page.c.pk.desc() if backwards else page.c.pk.asc())
    stmt = stmt.order_by(*order).limit(limit)
    return Plan(
        page=stmt,
        count=count,
        sort_columns=sort_columns,
        backwards=backwards,
        matches=select(r.c.pk).where(*where),
    )


def _after_cursor(
    columns, pk_column, descending: list[bool], cursor: list[Any]
) -> ColumnElement[bool]:
    """Rows strictly after the cursor in (NULLS LAST sort keys..., pk) order."""
    *values, last_pk = cursor
    condition: ColumnElement[bool] = pk_column > last_pk
    for column, is_descending, value in reversed(
        list(zip(columns, descending, values, strict=True))
    ):
        if value is None:
            # After a NULL only more NULLs (tie on this key) can follow.
            condition = and_(column.is_(None), condition)
        else:
            beyond = column < value if is_descending else column > value
            condition = or_(beyond, column.is_(None), and_(column == value, condition))
    return condition


def _before_cursor(
    columns, pk_column, descending: list[bool], cursor: list[Any]
) -> ColumnElement[bool]:
    """Rows strictly before the cursor in (NULLS LAST sort keys..., pk) order."""
    *values, first_pk = cursor
    condition: ColumnElement[bool] = pk_column < first_pk
    for column, is_descending, value in reversed(
        list(zip(columns, descending, values, strict=True))
    ):
        if value is None:
            # Every non-NULL value comes before a NULL.
            condition = or_(column.is_not(None), and_(column.is_(None), condition))
        else:
            ahead = column > value if is_descending else column < value
            condition = or_(and_(column.is_not(None), ahead), and_(column == value, condition))
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
