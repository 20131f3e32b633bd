"""Which Observations ``Observation/$lastn`` returns — http://hl7.org/fhir/R4/observation-operation-lastn.html

The Observations matching an ordinary Observation search, grouped by subject
(the patient) and by code — each ``system|code`` of Observation.code is a
group, and an Observation coded only by text is grouped by that text — and,
per group, the ``max`` most recent ones by effective date (the start of
``effective[x]``: effectiveDateTime, effectivePeriod.start, ...; ties by id;
Observations without an effective date come after every dated one). An
Observation in several groups (two codings) comes once.

One statement: ``row_number() OVER (PARTITION BY subject, system, code
ORDER BY effective DESC, id)`` over the token index rows of ``code``,
restricted to the search's matches (window functions: PostgreSQL, SQLite ≥ 3.25).
When the search itself names codes (``code=...``), only those codings form
groups: ``code=http://loinc.org|8867-4&max=1`` answers one heart rate per
patient even if an Observation carries a second, local coding.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from sqlalchemy import ColumnElement, Select, and_, case, exists, func, or_, select

from fhirserver.search import plan as planner
from fhirserver.search import registry
from fhirserver.search.plan import NEGATED
from fhirserver.search.query import SearchQuery, ValueCriterion
from fhirserver.search.registry import SearchParameter
from fhirserver.search.types import SearchContext, module_of
from fhirserver.storage.tables import SEARCH_TABLES, resource

OBSERVATION = "Observation"


@dataclass(frozen=True)
class LastnQuery:
    #: The Observation search (criteria, paging, shape) the groups are taken from.
    search: SearchQuery
    #: The most Observations per group (``max``, a positive integer).
    max: int


@cache
def _parameters() -> tuple[SearchParameter, SearchParameter, SearchParameter]:
    """Observation's ``code`` (the groups), ``subject`` (the patient) and ``date`` (effective[x])."""
    found = tuple(registry.parameter(OBSERVATION, code) for code in ("code", "subject", "date"))
    assert all(found), "the R4 Observation search parameters are missing"
    return found  # type: ignore[return-value]


def chosen_pks(query: LastnQuery, context: SearchContext) -> Select:
    """SELECT pk of the ``max`` most recent matching Observations of each group."""
    code_parameter, subject_parameter, date_parameter = _parameters()
    matches = planner.matching_pks(OBSERVATION, query.search.criteria, context)

    codes = SEARCH_TABLES["token"].alias("lastn_code")
    coded = SEARCH_TABLES["token"].alias("lastn_coded")
    references = SEARCH_TABLES["reference"]
    dates = SEARCH_TABLES["date"]
    r = resource.alias("lastn_observation")

    # One subject per Observation (a Reference may be indexed with several rows).
    subject_key = func.coalesce(
        references.c.target_type + "/" + references.c.target_id,
        references.c.url,
        references.c.identifier_system + "|" + references.c.identifier_value,
    )
    subjects = (
        select(references.c.resource_pk, func.min(subject_key).label("subject"))
        .where(
            references.c.resource_type == OBSERVATION,
            references.c.param == subject_parameter.code,
            references.c.resource_pk.in_(matches),
        )
        .group_by(references.c.resource_pk)
        .subquery("lastn_subject")
    )
    effective = (
        select(dates.c.resource_pk, func.max(dates.c.low).label("at"))
        .where(
            dates.c.resource_type == OBSERVATION,
            dates.c.param == date_parameter.code,
            dates.c.resource_pk.in_(matches),
        )
        .group_by(dates.c.resource_pk)
        .subquery("lastn_effective")
    )
    # Coded rows form groups; a text-only row only when the Observation has no coding.
    has_coding = exists().where(
        coded.c.resource_pk == codes.c.resource_pk,
        coded.c.resource_type == OBSERVATION,
        coded.c.param == code_parameter.code,
        coded.c.code.is_not(None),
    )
    grouping: list[ColumnElement[bool]] = [
        codes.c.resource_type == OBSERVATION,
        codes.c.param == code_parameter.code,
        codes.c.resource_pk.in_(matches),
        or_(codes.c.code.is_not(None), and_(codes.c.text.is_not(None), ~has_coding)),
        *_named_codes(query.search, code_parameter, codes, context),
    ]
    rank = func.row_number().over(
        partition_by=(
            subjects.c.subject,
            codes.c.system,
            codes.c.code,
            case((codes.c.code.is_(None), codes.c.text)),
        ),
        order_by=(effective.c.at.is_(None), effective.c.at.desc(), r.c.id),
    )
    ranked = (
        select(codes.c.resource_pk.label("pk"), rank.label("rank"))
        .select_from(
            codes.join(r, r.c.pk == codes.c.resource_pk)
            .outerjoin(subjects, subjects.c.resource_pk == codes.c.resource_pk)
            .outerjoin(effective, effective.c.resource_pk == codes.c.resource_pk)
        )
        .where(*grouping)
        .subquery("lastn_ranked")
    )
    return select(ranked.c.pk).where(ranked.c.rank <= query.max)


def _named_codes(
    search: SearchQuery, code_parameter: SearchParameter, codes, context: SearchContext
) -> list[ColumnElement[bool]]:
    """The search's own ``code`` criteria, applied to the grouping rows themselves."""
    found: list[ColumnElement[bool]] = []
    module = module_of(code_parameter)
    for criterion in search.criteria:
        if (
            not isinstance(criterion, ValueCriterion)
            or criterion.parameter != code_parameter
            or criterion.modifier == "missing"
            or criterion.modifier in NEGATED
        ):
            continue  # a negation or :missing names no codes to group by
        found.append(
            or_(
                *[
                    module.condition(codes, value, criterion.modifier, code_parameter, context)
                    for value in criterion.values
                ]
            )
        )
    return found
