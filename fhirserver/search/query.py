"""A parsed search: frozen, typed values the planner compiles to SQL.

http://hl7.org/fhir/R4/search.html. A criterion is one of
- :class:`ValueCriterion` — ``param[:modifier]=v1,v2`` (values OR-ed);
- :class:`ChainCriterion` — ``param[:Type].inner...`` (http://hl7.org/fhir/R4/search.html#chaining);
- :class:`HasCriterion` — ``_has:Type:param:inner...`` (reverse chaining, #has);
- :class:`CompartmentCriterion` — ``[base]/Patient/123/[type]`` (compartment search, #compartments).
Criteria of one query are AND-ed (a repeated parameter is a further criterion).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fhirserver.search.registry import SearchParameter


@dataclass(frozen=True)
class ValueCriterion:
    parameter: SearchParameter
    modifier: str | None
    values: tuple[str, ...]


@dataclass(frozen=True)
class ChainCriterion:
    #: A reference parameter of the searched type.
    parameter: SearchParameter
    #: The types the reference may point to for this chain (from ``:Type`` or the parameter's targets).
    target_types: tuple[str, ...]
    #: The criterion on the target type(s); parsed per target type.
    inner: dict[str, Criterion]


@dataclass(frozen=True)
class HasCriterion:
    #: The type of the resources that refer to the searched one.
    source_type: str
    #: The reference parameter of ``source_type`` that points at the searched type.
    parameter: SearchParameter
    inner: Criterion


@dataclass(frozen=True)
class CompartmentCriterion:
    """In the compartment of ``compartment_type/compartment_id`` (http://hl7.org/fhir/R4/search.html#compartments):
    any of ``parameters`` refers to it, or the resource is that focal resource itself."""

    compartment_type: str
    compartment_id: str
    parameters: tuple[SearchParameter, ...]


Criterion = ValueCriterion | ChainCriterion | HasCriterion | CompartmentCriterion


@dataclass(frozen=True)
class SortKey:
    parameter: SearchParameter
    descending: bool


@dataclass(frozen=True)
class Include:
    """``_include=Source:param[:Target]`` or ``_revinclude=Source:param[:Target]``; ``*`` = every reference parameter."""

    source_type: str
    parameter: SearchParameter | None
    target_type: str | None
    iterate: bool
    reverse: bool


@dataclass(frozen=True)
class SearchQuery:
    #: The searched type; "" for a system search (see ``branches``).
    resource_type: str
    criteria: tuple[Criterion, ...] = ()
    #: System search (``GET [base]?_type=...``): (type, its criteria) per searched type.
    branches: tuple[tuple[str, tuple[Criterion, ...]], ...] = ()
    sort: tuple[SortKey, ...] = ()
    count: int = 20
    includes: tuple[Include, ...] = ()
    #: none, estimate or accurate.
    total: str = "none"
    summary: str | None = None
    elements: tuple[str, ...] = ()
    cursor: str | None = None
    #: Parameters that were ignored, with why (reported as an OperationOutcome entry).
    warnings: tuple[str, ...] = field(default=())
    #: The path the Bundle's links repeat, when it is not the searched type
    #: (a compartment search: ``Patient/123/Observation``).
    path: str | None = None
