"""Index values extracted at write time — http://hl7.org/fhir/R4/search.html

For every searchable SearchParameter of a resource's type, its FHIRPath
expression (compiled once, see search/expressions.py) selects values, and the
module of the parameter's type turns them into rows of its index table. The
repository writes the rows in the same transaction as the resource.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import cache
from types import ModuleType
from typing import Any

from fhirserver.search import registry
from fhirserver.search.expressions import compile_expression
from fhirserver.search.registry import SearchParameter
from fhirserver.search.types import SEARCHABLE_TYPES, module_of

log = logging.getLogger(__name__)

Evaluator = Callable[[dict], Sequence[Any]]


@cache
def _plan(resource_type: str) -> tuple[tuple[SearchParameter, Evaluator, ModuleType], ...]:
    """(parameter, compiled expression, type module) for each indexed parameter of a type."""
    plan: list[tuple[SearchParameter, Evaluator, ModuleType]] = []
    for parameter in registry.parameters_for(resource_type).values():
        if parameter.fulltext is not None:
            # Text parameters read the whole resource (types/fulltext.py).
            plan.append((parameter, _whole_resource, module_of(parameter)))
            continue
        if not parameter.searchable or parameter.type not in SEARCHABLE_TYPES:
            continue
        expression = branches_for(parameter.expression or "", resource_type)
        if not expression:
            continue
        try:
            evaluate = compile_expression(expression)
        except Exception as exc:  # noqa: BLE001 - one bad definition must not stop the server
            log.warning("SearchParameter %s is not indexed: %s", parameter.url, exc)
            continue
        plan.append((parameter, evaluate, module_of(parameter)))
    return tuple(plan)


def _whole_resource(resource: dict) -> list:
    return [resource]


#: Leading types of expression branches that apply to every resource.
_ANY_RESOURCE = ("Resource", "DomainResource")


def branches_for(expression: str, resource_type: str) -> str:
    """The union branches of ``expression`` that can select anything from ``resource_type``.

    A shared definition such as ``Patient.name | Practitioner.name | ...`` is
    compiled for each type with only its own branch, so that indexing a Patient
    never loads (or walks) the models of the other types. Branches on the
    abstract ``Resource``/``DomainResource`` are renamed to the concrete type.
    """
    kept = []
    for branch in _top_level_union(expression):
        head = branch.strip().lstrip("(").strip()
        leading = head.split(".", 1)[0].split(" ", 1)[0]
        if leading == resource_type:
            kept.append(branch.strip())
        elif leading in _ANY_RESOURCE:
            # ``Resource.meta.tag`` on a Patient is ``Patient.meta.tag``: naming the
            # concrete type lets the compiler walk one model instead of all of them.
            kept.append(branch.strip().replace(leading, resource_type, 1))
    return " | ".join(kept)


def _top_level_union(expression: str) -> list[str]:
    parts, depth, quoted, start = [], 0, False, 0
    for index, char in enumerate(expression):
        if char == "'":
            quoted = not quoted
        elif not quoted and char == "(":
            depth += 1
        elif not quoted and char == ")":
            depth -= 1
        elif not quoted and depth == 0 and char == "|":
            parts.append(expression[start:index])
            start = index + 1
    parts.append(expression[start:])
    return parts


def index_rows(resource: dict, *, base_url: str = "") -> dict[str, list[dict]]:
    """Index rows by search type for one resource (without ``resource_pk``).

    ``base_url`` is this server's base: absolute references under it are local
    references (indexed by type and id, so chaining, _has and _include follow them).
    """
    resource_type = resource["resourceType"]
    rows: dict[str, list[dict]] = {}
    for parameter, evaluate, module in _plan(resource_type):
        nodes = evaluate(resource)
        if not nodes:
            continue
        for row in module.index_rows(nodes, parameter, base_url=base_url, resource=resource):
            row["resource_type"] = resource_type
            # A composite's rows name their component's table and parameter code.
            row.setdefault("param", parameter.code)
            row.setdefault("group_no", None)
            rows.setdefault(row.pop("search_type", parameter.type), []).append(row)
    return rows


def warm_up() -> None:
    """Compile every expression now (at start-up) rather than on the first write of each type."""
    from fhirserver.resources.registry import resource_types

    for resource_type in resource_types():
        _plan(resource_type)
