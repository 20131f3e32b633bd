"""Query string -> SearchQuery — http://hl7.org/fhir/R4/search.html

Parameter names resolve against the SearchParameter registry of the searched
type; behaviour then follows the parameter's type. Unknown parameters are
ignored and reported (``Prefer: handling=lenient``, the default) or rejected
with 400 (``handling=strict``). A malformed value is always a 400.
"""

from __future__ import annotations

from fhirserver.errors import BadRequest, NotFound
from fhirserver.resources.registry import is_resource_type
from fhirserver.search import escaping, registry
from fhirserver.search.query import (
    ChainCriterion,
    CompartmentCriterion,
    Criterion,
    HasCriterion,
    Include,
    SearchQuery,
    SortKey,
    ValueCriterion,
)
from fhirserver.search.registry import SearchParameter
from fhirserver.search.types import INDEXED_TYPES, SEARCHABLE_TYPES

DEFAULT_COUNT = 20
MAX_COUNT = 1000
#: Parameters that shape the result rather than select resources.
RESULT_PARAMETERS = frozenset(
    {
        "_sort",
        "_count",
        "_include",
        "_revinclude",
        "_total",
        "_summary",
        "_elements",
        "_format",
        "_pretty",
        "_cursor",
        "_contained",
        "_containedType",
    }
)
#: Modifiers every type accepts (handled by the planner).
COMMON_MODIFIERS = frozenset({"missing", "not"})
_MAX_CHAIN_DEPTH = 4


def parse(
    resource_type: str, params: list[tuple[str, str]], *, strict: bool = False
) -> SearchQuery:
    criteria: list[Criterion] = []
    warnings: list[str] = []
    sort: list[SortKey] = []
    includes: list[Include] = []
    count, total = DEFAULT_COUNT, "none"
    summary: str | None = None
    elements: tuple[str, ...] = ()
    cursor: str | None = None

    for name, value in params:
        if name in RESULT_PARAMETERS:
            if name == "_count":
                count = _count(value)
            elif name == "_sort":
                sort += _sort(resource_type, value)
            elif name.startswith("_include") or name.startswith("_revinclude"):
                includes.append(_include(name, value))
            elif name == "_total":
                if value not in ("none", "estimate", "accurate"):
                    raise BadRequest(f"_total must be none, estimate or accurate, not `{value}`.")
                total = value
            elif name == "_summary":
                if value not in ("true", "text", "data", "count", "false"):
                    raise BadRequest(
                        f"_summary `{value}` is not one of true, text, data, count, false."
                    )
                summary = value
            elif name == "_elements":
                elements = tuple(e.strip() for e in value.split(",") if e.strip())
            elif name == "_cursor":
                cursor = value
            elif name == "_contained" and value != "false":
                # Contained resources are not indexed on their own: say so rather
                # than answer as if they had been searched.
                message = f"Parameter `_contained={value}` was ignored: contained resources are not searched."
                if strict:
                    raise BadRequest(message.replace("was ignored", "is not supported"))
                warnings.append(message)
            continue
        if name.startswith("_include:") or name.startswith("_revinclude:"):
            includes.append(_include(name, value))
            continue
        try:
            criterion = parse_criterion(resource_type, name, value, depth=0)
        except _Unknown as unknown:
            message = f"Parameter `{name}` was ignored: {unknown}"
            if strict:
                raise BadRequest(message.replace("was ignored", "is not supported")) from None
            warnings.append(message)
            continue
        criteria.append(criterion)

    return SearchQuery(
        resource_type=resource_type,
        criteria=tuple(criteria),
        sort=tuple(sort),
        count=count,
        includes=tuple(includes),
        total=total,
        summary=summary,
        elements=elements,
        cursor=cursor,
        warnings=tuple(warnings),
    )


def parse_system(params: list[tuple[str, str]], *, strict: bool = False) -> SearchQuery:
    """``GET [base]?_type=A,B&...`` — http://hl7.org/fhir/R4/search.html#all

    Each listed type (every type without ``_type``) is searched with the same
    parameters; a parameter a type does not have is reported once (or 400
    under strict handling), and that type then matches nothing.
    """
    from fhirserver.resources.registry import resource_types

    wanted = [v.strip() for k, v in params if k == "_type" for v in v.split(",") if v.strip()]
    for name in wanted:
        if not is_resource_type(name):
            raise BadRequest(f"_type `{name}` is not a resource type this server knows.")
    types = list(dict.fromkeys(wanted)) or list(resource_types())
    rest = [(k, v) for k, v in params if k != "_type"]
    branches, warnings = [], []
    template: SearchQuery | None = None
    for resource_type in types:
        query = parse(resource_type, rest, strict=strict)
        template = template or query
        criteria_count = sum(
            1
            for k, _ in rest
            if k not in RESULT_PARAMETERS and not k.startswith(("_include", "_revinclude"))
        )
        if len(query.criteria) < criteria_count:
            warnings += [w for w in query.warnings if w not in warnings]
            continue  # a criterion this type cannot evaluate: it matches nothing
        branches.append((resource_type, query.criteria))
    assert template is not None
    return SearchQuery(
        resource_type="",
        branches=tuple(branches) or (("", ()),),
        sort=template.sort,
        count=template.count,
        includes=template.includes,
        total=template.total,
        summary=template.summary,
        elements=template.elements,
        cursor=template.cursor,
        warnings=tuple(warnings),
    )


def parse_compartment(
    compartment_type: str,
    compartment_id: str,
    resource_type: str,
    params: list[tuple[str, str]],
    *,
    strict: bool = False,
) -> SearchQuery:
    """``GET [base]/Patient/123/[type|*]?...`` — http://hl7.org/fhir/R4/search.html#compartments

    The search of ``resource_type`` (every member type for ``*``) restricted
    to the compartment, with membership from the official CompartmentDefinition.
    """
    from dataclasses import replace

    from fhirserver.search.compartments import compartment

    definition = compartment(compartment_type)
    if definition is None:
        raise NotFound(f"{compartment_type} is not a compartment (see CompartmentDefinition).")
    path = f"{compartment_type}/{compartment_id}/{resource_type}"
    if resource_type == "*":
        types = ",".join(definition.members)
        query = parse_system([("_type", types), *params], strict=strict)
        branches = tuple(
            (t, (_in_compartment(definition, compartment_id, t), *criteria))
            for t, criteria in query.branches
            if t
        )
        return replace(query, branches=branches or (("", ()),), path=path)
    if not is_resource_type(resource_type):
        raise NotFound(f"Resource type `{resource_type}` is not supported by this server.")
    if definition.parameters(resource_type) is None:
        raise NotFound(f"{resource_type} is never in a {compartment_type} compartment.")
    query = parse(resource_type, params, strict=strict)
    membership = _in_compartment(definition, compartment_id, resource_type)
    return replace(query, criteria=(membership, *query.criteria), path=path)


def _in_compartment(definition, compartment_id: str, resource_type: str) -> CompartmentCriterion:
    return CompartmentCriterion(
        definition.code, compartment_id, definition.parameters(resource_type) or ()
    )


class _Unknown(Exception):
    """A parameter this server does not know for the type (ignored or 400, by handling)."""


def parse_criterion(resource_type: str, name: str, value: str, *, depth: int) -> Criterion:
    if depth > _MAX_CHAIN_DEPTH:
        raise BadRequest(f"`{name}` chains deeper than {_MAX_CHAIN_DEPTH} levels.")
    if name.startswith("_has:"):
        return _has(resource_type, name, value, depth)
    head, dot, rest = name.partition(".")
    code, _, modifier = head.partition(":")
    parameter = registry.parameter(resource_type, code)
    if parameter is None or not parameter.searchable:
        raise _Unknown(f"{resource_type} has no search parameter `{code}`.")
    if dot:
        return _chain(resource_type, parameter, modifier or None, rest, value, depth)
    if parameter.type not in SEARCHABLE_TYPES and parameter.fulltext is None:
        raise _Unknown(
            f"`{code}` is a {parameter.type} parameter, which this server cannot search yet."
        )
    _check_modifier(parameter, modifier or None)
    values = tuple(escaping.split(value, ","))
    if modifier == "missing" and value not in ("true", "false"):
        raise BadRequest(f"`{name}` takes true or false, not `{value}`.")
    return ValueCriterion(parameter, modifier or None, values)


def _check_modifier(parameter: SearchParameter, modifier: str | None) -> None:
    if modifier is None:
        return
    from fhirserver.search.types import module_of

    module = module_of(parameter)
    if hasattr(module, "matching_pks"):
        raise BadRequest(
            f"Modifier `:{modifier}` is not supported on the {parameter.type} parameter `{parameter.code}`."
        )
    if modifier in COMMON_MODIFIERS:
        return
    supported: frozenset[str] = getattr(module, "MODIFIERS", frozenset())
    if modifier == "not-in" and "in" in supported:
        return
    if parameter.type == "reference" and is_resource_type(modifier):
        if parameter.target and modifier not in parameter.target:
            raise BadRequest(
                f"`{parameter.code}` cannot refer to {modifier} (targets: {', '.join(parameter.target)})."
            )
        return
    if modifier not in supported:
        raise BadRequest(
            f"Modifier `:{modifier}` is not supported on the {parameter.type} parameter `{parameter.code}`."
        )


def _chain(resource_type, parameter, modifier, rest, value, depth) -> ChainCriterion:
    if parameter.type != "reference":
        raise BadRequest(
            f"`{parameter.code}` is not a reference parameter, so it cannot be chained."
        )
    if modifier is not None:
        if not is_resource_type(modifier):
            raise BadRequest(
                f"`{parameter.code}:{modifier}` names no resource type to chain through."
            )
        candidates = (modifier,)
    else:
        candidates = tuple(t for t in parameter.target if is_resource_type(t))
    inner: dict[str, Criterion] = {}
    for target_type in candidates:
        try:
            inner[target_type] = parse_criterion(target_type, rest, value, depth=depth + 1)
        except _Unknown:
            continue
    if not inner:
        raise _Unknown(
            f"none of the types `{parameter.code}` refers to has the parameter `{rest}`."
        )
    return ChainCriterion(parameter, tuple(inner), inner)


def _has(resource_type: str, name: str, value: str, depth: int) -> HasCriterion:
    parts = name.split(":", 3)
    if len(parts) < 4:
        raise BadRequest(f"`{name}` must look like _has:Type:reference-parameter:parameter.")
    _, source_type, code, rest = parts
    if not is_resource_type(source_type):
        raise BadRequest(f"`{name}`: `{source_type}` is not a resource type.")
    parameter = registry.parameter(source_type, code)
    if parameter is None or parameter.type != "reference":
        raise BadRequest(f"`{name}`: {source_type} has no reference parameter `{code}`.")
    if parameter.target and resource_type not in parameter.target:
        raise BadRequest(f"`{name}`: {source_type}.{code} never refers to {resource_type}.")
    inner = parse_criterion(source_type, rest, value, depth=depth + 1)
    return HasCriterion(source_type, parameter, inner)


def _count(value: str) -> int:
    if not value.isdigit():
        raise BadRequest(f"_count must be a non-negative integer, not `{value}`.")
    return min(int(value), MAX_COUNT)


def _sort(resource_type: str, value: str) -> list[SortKey]:
    keys = []
    for item in value.split(","):
        item = item.strip()
        descending = item.startswith("-")
        code = item.lstrip("-")
        parameter = registry.parameter(resource_type, code)
        if (
            parameter is None
            or not parameter.searchable
            or parameter.fulltext is not None
            or parameter.type not in INDEXED_TYPES
        ):
            raise BadRequest(
                f"Cannot sort {resource_type} by `{code}`: no such sortable search parameter."
            )
        keys.append(SortKey(parameter, descending))
    return keys


def _include(name: str, value: str) -> Include:
    reverse = name.startswith("_revinclude")
    iterate = name.endswith(":iterate") or name.endswith(":recurse")
    parts = value.split(":")
    if len(parts) not in (2, 3):
        raise BadRequest(f"`{name}={value}` must be Type:parameter[:TargetType] or Type:*.")
    source_type, code = parts[0], parts[1]
    target_type = parts[2] if len(parts) == 3 else None
    if not is_resource_type(source_type):
        raise BadRequest(f"`{name}={value}`: `{source_type}` is not a resource type.")
    if target_type is not None and not is_resource_type(target_type):
        raise BadRequest(f"`{name}={value}`: `{target_type}` is not a resource type.")
    if code == "*":
        return Include(source_type, None, target_type, iterate, reverse)
    parameter = registry.parameter(source_type, code)
    if parameter is None or parameter.type != "reference":
        raise BadRequest(f"`{name}={value}`: {source_type} has no reference parameter `{code}`.")
    return Include(source_type, parameter, target_type, iterate, reverse)
