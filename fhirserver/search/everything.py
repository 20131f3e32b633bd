"""Which resources ``Patient/$everything`` returns — http://hl7.org/fhir/R4/patient-operation-everything.html

"Everything" of a patient is

- the members of the patient's compartment, by the official R4 Patient
  CompartmentDefinition (fhirserver.search.compartments): the Patient itself
  and every resource one of whose listed reference parameters points at it
  (Observation.subject or .performer, Encounter.patient, ...);
- the resources those members refer to that are needed to understand them —
  one level of references, as ``_include=*:*`` would follow them through the
  reference index: Practitioner, Organization, Location, Medication, ... Only
  types that are never compartment members are followed, so another
  patient's record (a linked Patient, their Encounter) never comes along
  with a reference; such resources are in this patient's record only if they
  are members themselves.

At type level (``Patient/$everything``) it is the union over every patient.
``_type`` and ``_since`` then narrow that set (a referenced Practitioner
updated since ``_since`` comes even when the Observation referring to it did
not change: the client's copy of it is stale).

The set is one SQL condition on ``resource``, paged by fhirserver.search.selection.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import cache

from sqlalchemy import ColumnElement, Select, select, tuple_, union_all

from fhirserver.search.compartments import compartment
from fhirserver.search.selection import Paging
from fhirserver.storage.tables import SEARCH_TABLES, resource

COMPARTMENT = "Patient"


@dataclass(frozen=True)
class EverythingQuery:
    #: The patient; None at type level (every patient).
    patient_id: str | None
    paging: Paging
    #: ``_type``: only these resource types (all when empty).
    types: tuple[str, ...] = ()
    #: ``_since``: only resources updated at or after this instant.
    since: datetime | None = None


@cache
def member_types() -> frozenset[str]:
    """The types that can be in a Patient compartment."""
    definition = compartment(COMPARTMENT)
    assert definition is not None
    return frozenset(definition.members)


@cache
def _member_links() -> tuple[tuple[str, str], ...]:
    """(member type, reference parameter) pairs that put a resource into a Patient compartment."""
    definition = compartment(COMPARTMENT)
    assert definition is not None
    return tuple(
        (resource_type, parameter.code)
        for resource_type, parameters in sorted(definition.members.items())
        for parameter in parameters
    )


def member_pks(patient_id: str | None) -> list[Select]:
    """SELECTs of pk whose union is the compartment's members (every Patient's for None)."""
    links = SEARCH_TABLES["reference"].alias("member_link")
    by_reference = select(links.c.resource_pk).where(
        links.c.target_type == COMPARTMENT,
        tuple_(links.c.resource_type, links.c.param).in_(_member_links()),
    )
    focal = select(resource.c.pk).where(resource.c.resource_type == COMPARTMENT)
    if patient_id is not None:
        by_reference = by_reference.where(links.c.target_id == patient_id)
        focal = focal.where(resource.c.id == patient_id)
    return [by_reference, focal]


def referenced_pks(members: list[Select]) -> Select:
    """SELECT pk of the non-member resources that ``members`` refer to (one level)."""
    references = SEARCH_TABLES["reference"].alias("everything_reference")
    target = resource.alias("everything_target")
    return (
        select(target.c.pk)
        .select_from(
            references.join(
                target,
                (target.c.resource_type == references.c.target_type)
                & (target.c.id == references.c.target_id),
            )
        )
        .where(
            references.c.resource_pk.in_(union_all(*members)),
            references.c.target_id.is_not(None),
            references.c.target_type.not_in(sorted(member_types())),
        )
    )


def conditions(query: EverythingQuery, r) -> list[ColumnElement[bool]]:
    """The conditions on ``r`` (an alias of ``resource``) that select the patient's everything."""
    members = member_pks(query.patient_id)
    # One flat UNION ALL (SQLite cannot nest a compound SELECT in another).
    selected = union_all(*members, referenced_pks(members))
    found: list[ColumnElement[bool]] = [r.c.pk.in_(selected)]
    if query.types:
        found.append(r.c.resource_type.in_(query.types))
    if query.since is not None:
        found.append(r.c.last_updated >= query.since)
    return found


def mode(resource_type: str) -> str:
    """``match`` for compartment members, ``include`` for the resources they refer to."""
    return "match" if resource_type in member_types() else "include"
