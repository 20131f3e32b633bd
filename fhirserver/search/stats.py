"""The numbers behind ``Observation/$stats`` — http://hl7.org/fhir/R4/observation-operation-stats.html

The values are the Quantities of the subject's Observations with a requested
code, in Observation.code (then Observation.value) or in
Observation.component.code (then that component's value), read from the
index of the composite parameter ``combo-code-value-quantity``, which pairs
each code with the value of the same element. For a panel code (the
Observation.code of Observations whose components carry the measurements,
e.g. 85354-9 blood pressure) each component code is a series of its own,
from ``component-code-value-quantity``. Panels assembled with
``Observation.hasMember`` are not followed.

Values are compared on their canonical UCUM value (``search_quantity.canonical_value``:
``5.4 mg/dL`` and ``0.054 g/L`` are the same), so a series is one code in one
dimension; a code recorded in two incompatible units (mg/dL and mmol/L) makes
two series. Quantities in other unit systems keep their value and form a
series per unit as written.

One statement aggregates each series: count, minimum, maximum, sum, sum of
squares, and the first and last value by effective date (the start of
``effective[x]``; window functions ``row_number()``, ties by id), plus the unit of
the last value, in which the operation reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from functools import cache

from sqlalchemy import (
    ColumnElement,
    Connection,
    Float,
    Select,
    and_,
    case,
    func,
    literal,
    or_,
    select,
    type_coerce,
    union_all,
)

from fhirserver.search import plan as planner
from fhirserver.search import registry, ucum
from fhirserver.search.query import Criterion
from fhirserver.search.registry import SearchParameter
from fhirserver.search.types import SearchContext
from fhirserver.search.types.composite import component_code
from fhirserver.storage.tables import SEARCH_TABLES, UtcDateTime, resource

OBSERVATION = "Observation"


@dataclass(frozen=True)
class StatsQuery:
    #: Which Observations: the subject (and any further search criteria).
    criteria: tuple[Criterion, ...]
    #: (system or None for any system, code); empty: every code the subject has values for.
    codes: tuple[tuple[str | None, str], ...] = ()
    #: The period of interest [start, end) on the effective date; None: open.
    start: datetime | None = None
    end: datetime | None = None
    #: How many source Observations to return (most recent first); 0: none.
    sources: int = 0


@dataclass(frozen=True)
class Series:
    """One code's values in one unit dimension; values in the canonical unit."""

    system: str | None
    code: str
    count: int
    minimum: Decimal
    maximum: Decimal
    sum: Decimal
    sum_of_squares: Decimal
    first: Decimal
    first_at: datetime | None
    last: Decimal
    last_at: datetime | None
    #: The Quantity system, code and unit of the last value (the unit to report in).
    unit_system: str | None
    unit_code: str | None
    unit: str | None

    @property
    def factor(self) -> Decimal:
        """value_in_canonical_unit = value_in_reported_unit × factor."""
        if self.unit_system == ucum.SYSTEM:
            known = ucum.canonical(self.unit_code)
            if known is not None:
                return known[1]
        return Decimal(1)


@dataclass(frozen=True)
class StatsResult:
    series: tuple[Series, ...]
    #: The Observation.code codings of the panels whose components gave values.
    panels: frozenset[tuple[str | None, str]] = frozenset()
    #: Stored JSON of the source Observations (when asked for), most recent first.
    sources: tuple[bytes, ...] = ()


@cache
def _parameters() -> tuple[SearchParameter, SearchParameter, SearchParameter, SearchParameter]:
    """Observation's combo and component code-value-quantity composites, ``code`` and ``date``."""
    found = tuple(
        registry.parameter(OBSERVATION, code)
        for code in ("combo-code-value-quantity", "component-code-value-quantity", "code", "date")
    )
    assert all(found), "the R4 Observation search parameters are missing"
    return found  # type: ignore[return-value]


def compute(conn: Connection, query: StatsQuery, context: SearchContext) -> StatsResult:
    values = _dated_values(query, context).subquery("stats_value")
    key = (values.c.concept_system, values.c.concept_code, values.c.unit_system, values.c.unit_key)
    first_rank = func.row_number().over(
        partition_by=key, order_by=(values.c.at.is_(None), values.c.at, values.c.id)
    )
    last_rank = func.row_number().over(
        partition_by=key, order_by=(values.c.at.is_(None), values.c.at.desc(), values.c.id.desc())
    )
    ranked = select(values, first_rank.label("first_rank"), last_rank.label("last_rank")).subquery(
        "stats_ranked"
    )

    def at_rank(column, rank_column):
        return func.max(case((rank_column == 1, column)), type_=column.type)

    statement = select(
        ranked.c.concept_system,
        ranked.c.concept_code,
        func.count().label("count"),
        func.min(ranked.c.value).label("minimum"),
        func.max(ranked.c.value).label("maximum"),
        func.sum(ranked.c.value).label("sum"),
        func.sum(ranked.c.value * ranked.c.value).label("sum_of_squares"),
        at_rank(ranked.c.value, ranked.c.first_rank).label("first"),
        at_rank(ranked.c.at, ranked.c.first_rank).label("first_at"),
        at_rank(ranked.c.value, ranked.c.last_rank).label("last"),
        at_rank(ranked.c.at, ranked.c.last_rank).label("last_at"),
        at_rank(ranked.c.system, ranked.c.last_rank).label("unit_system"),
        at_rank(ranked.c.code, ranked.c.last_rank).label("unit_code"),
        at_rank(ranked.c.unit, ranked.c.last_rank).label("unit"),
    ).group_by(*(ranked.c[column.name] for column in key))
    series = tuple(
        Series(
            system=row.concept_system,
            code=row.concept_code,
            count=row._mapping["count"],
            minimum=_decimal(row.minimum),
            maximum=_decimal(row.maximum),
            sum=_decimal(row.sum),
            sum_of_squares=_decimal(row.sum_of_squares),
            first=_decimal(row.first),
            first_at=row.first_at,
            last=_decimal(row.last),
            last_at=row.last_at,
            unit_system=row.unit_system,
            unit_code=row.unit_code,
            unit=row.unit,
        )
        for row in conn.execute(statement.order_by(ranked.c.concept_system, ranked.c.concept_code))
    )
    sources: tuple[bytes, ...] = ()
    if query.sources > 0:
        sources = _sources(conn, query, context)
    return StatsResult(series, _found_panels(conn, query, context), sources)


def _found_panels(
    conn: Connection, query: StatsQuery, context: SearchContext
) -> frozenset[tuple[str | None, str]]:
    """The codings of the requested panel codes whose components gave values in the period."""
    if not query.codes:
        return frozenset()
    _, _, code_parameter, _ = _parameters()
    values = _dated_values(query, context).subquery("stats_panel_value")
    codes = SEARCH_TABLES["token"].alias("stats_found_panel")
    statement = (
        select(codes.c.system, codes.c.code)
        .where(
            codes.c.resource_type == OBSERVATION,
            codes.c.param == code_parameter.code,
            codes.c.resource_pk.in_(select(values.c.resource_pk).where(values.c.via_panel)),
            _code_matches(codes, query.codes),
        )
        .distinct()
    )
    return frozenset((row.system, row.code) for row in conn.execute(statement))


def _sources(conn: Connection, query: StatsQuery, context: SearchContext) -> tuple[bytes, ...]:
    """The Observations the values come from, most recent first, at most ``query.sources``."""
    values = _dated_values(query, context).subquery("stats_source")
    latest = (
        select(values.c.resource_pk, func.max(values.c.at).label("at"), values.c.id)
        .group_by(values.c.resource_pk, values.c.id)
        .subquery("stats_source_at")
    )
    statement = (
        select(resource.c.body)
        .select_from(latest.join(resource, resource.c.pk == latest.c.resource_pk))
        .order_by(latest.c.at.is_(None), latest.c.at.desc(), latest.c.id)
        .limit(query.sources)
    )
    return tuple(conn.scalars(statement))


def _dated_values(query: StatsQuery, context: SearchContext) -> Select:
    """(resource_pk, id, at, concept, value, unit...) of every value in the period."""
    combo, component, _, date_parameter = _parameters()
    matches = planner.matching_pks(OBSERVATION, query.criteria, context)
    pairs = _pairs(combo, matches, query.codes, panel_of=None)
    if query.codes:
        panels = _pairs(component, matches, query.codes, panel_of=_panels(query, matches))
        pairs = union_all(pairs, panels)  # type: ignore[assignment]
    values = pairs.subquery("stats_pair")

    dates = SEARCH_TABLES["date"]
    effective = (
        select(dates.c.resource_pk, func.min(dates.c.low).label("at"))
        .where(
            dates.c.resource_type == OBSERVATION,
            dates.c.param == date_parameter.code,
            dates.c.resource_pk.in_(matches),
        )
        .group_by(dates.c.resource_pk)
        .subquery("stats_effective")
    )
    statement = select(
        values,
        resource.c.id,
        type_coerce(effective.c.at, UtcDateTime).label("at"),
    ).select_from(
        values.join(resource, resource.c.pk == values.c.resource_pk).outerjoin(
            effective, effective.c.resource_pk == values.c.resource_pk
        )
    )
    if query.start is not None:
        statement = statement.where(effective.c.at >= query.start)
    if query.end is not None:
        statement = statement.where(effective.c.at < query.end)
    return statement


def _panels(query: StatsQuery, matches: Select) -> Select:
    """SELECT pk of the matching Observations whose Observation.code is a requested code."""
    _, _, code_parameter, _ = _parameters()
    codes = SEARCH_TABLES["token"].alias("stats_panel")
    return select(codes.c.resource_pk).where(
        codes.c.resource_type == OBSERVATION,
        codes.c.param == code_parameter.code,
        codes.c.resource_pk.in_(matches),
        _code_matches(codes, query.codes),
    )


def _pairs(
    composite: SearchParameter,
    matches: Select,
    codes: tuple[tuple[str | None, str], ...],
    *,
    panel_of: Select | None,
) -> Select:
    """(resource_pk, concept, value, unit) of each element of a composite (code, value) pair.

    Directly (``panel_of`` None): the pairs whose code is a requested one (any
    code when none is requested). For panels: every pair of the Observations
    ``panel_of`` selects whose code is not itself requested (those come
    directly: no value is counted twice).
    """
    token = SEARCH_TABLES["token"].alias(f"stats_{composite.code}_code")
    quantity = SEARCH_TABLES["quantity"].alias(f"stats_{composite.code}_value")
    conditions: list[ColumnElement[bool]] = [
        token.c.resource_type == OBSERVATION,
        token.c.param == component_code(composite, 0),
        quantity.c.resource_type == OBSERVATION,
        quantity.c.param == component_code(composite, 1),
        token.c.code.is_not(None),
    ]
    if panel_of is not None:
        conditions += [token.c.resource_pk.in_(panel_of), ~_code_matches(token, codes)]
    else:
        conditions.append(token.c.resource_pk.in_(matches))
        if codes:
            conditions.append(_code_matches(token, codes))
    canonical = quantity.c.canonical_code.is_not(None)
    return (
        select(
            token.c.resource_pk.label("resource_pk"),
            token.c.system.label("concept_system"),
            token.c.code.label("concept_code"),
            type_coerce(func.coalesce(quantity.c.canonical_value, quantity.c.value), Float()).label(
                "value"
            ),
            case((canonical, literal(ucum.SYSTEM)), else_=quantity.c.system).label("unit_system"),
            func.coalesce(quantity.c.canonical_code, quantity.c.code, quantity.c.unit).label(
                "unit_key"
            ),
            quantity.c.system.label("system"),
            quantity.c.code.label("code"),
            quantity.c.unit.label("unit"),
            literal(panel_of is not None).label("via_panel"),
        )
        .select_from(
            token.join(
                quantity,
                and_(
                    quantity.c.resource_pk == token.c.resource_pk,
                    quantity.c.group_no == token.c.group_no,
                ),
            )
        )
        .where(*conditions)
    )


def _code_matches(table, codes: tuple[tuple[str | None, str], ...]) -> ColumnElement[bool]:
    return or_(
        *[
            and_(table.c.code == code, *([table.c.system == system] if system else []))
            for system, code in codes
        ]
    )


def _decimal(value: object) -> Decimal:
    """A database number as a Decimal (SQLite hands back floats: take their shortest repr)."""
    if isinstance(value, Decimal):
        return value
    if isinstance(value, float | int):
        return Decimal(repr(value))
    raise TypeError(f"not a number: {value!r}")
