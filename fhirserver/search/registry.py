"""The SearchParameters the server knows, from data (never from code).

``conformance/search-parameters.json`` is the unmodified official R4 (4.0.1)
definitions Bundle; ``conformance/custom/*.json`` adds SearchParameter
resources (or Bundles of them). A parameter whose base is ``Resource`` or
``DomainResource`` applies to every type that has that base.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources as package_files
from types import MappingProxyType

import orjson

from fhirserver import conformance
from fhirserver.resources.registry import resource_types

#: Types whose parameters every (domain) resource inherits.
_ABSTRACT_BASES = ("Resource", "DomainResource")
#: Resources that are not DomainResources (no text, contained, extension).
_NOT_DOMAIN = frozenset({"Binary", "Bundle", "Parameters"})


@dataclass(frozen=True, slots=True)
class Component:
    definition: str
    expression: str


@dataclass(frozen=True, slots=True)
class SearchParameter:
    url: str
    code: str
    #: number, date, string, token, reference, composite, quantity, uri, special.
    type: str
    base: tuple[str, ...]
    expression: str | None
    target: tuple[str, ...] = ()
    components: tuple[Component, ...] = ()
    modifiers: tuple[str, ...] = ()
    comparators: tuple[str, ...] = ()
    #: For the text parameters (conformance/fulltext.json): which text they read.
    fulltext: str | None = None

    @property
    def searchable(self) -> bool:
        return (bool(self.expression) and self.type != "special") or self.fulltext is not None


def _parse(resource: dict) -> SearchParameter:
    return SearchParameter(
        url=resource["url"],
        code=resource["code"],
        type=resource["type"],
        base=tuple(resource.get("base", ())),
        expression=resource.get("expression"),
        target=tuple(resource.get("target", ())),
        components=tuple(
            Component(c["definition"], c["expression"]) for c in resource.get("component", ())
        ),
        modifiers=tuple(resource.get("modifier", ())),
        comparators=tuple(resource.get("comparator", ())),
        fulltext=None if resource.get("expression") else _fulltext_sources().get(resource["code"]),
    )


@cache
def _fulltext_sources() -> Mapping[str, str]:
    return MappingProxyType(conformance.load("fulltext.json")["parameters"])


def _definitions() -> list[dict]:
    found = [e["resource"] for e in conformance.load("search-parameters.json")["entry"]]
    custom = package_files.files(conformance.__name__).joinpath("custom")
    if custom.is_dir():
        for item in sorted(custom.iterdir(), key=lambda p: p.name):
            if item.name.endswith(".json"):
                data = orjson.loads(item.read_bytes())
                if data.get("resourceType") == "Bundle":
                    found += [e["resource"] for e in data.get("entry", ())]
                else:
                    found.append(data)
    return [d for d in found if d.get("resourceType") == "SearchParameter"]


@cache
def _by_type() -> Mapping[str, Mapping[str, SearchParameter]]:
    table: dict[str, dict[str, SearchParameter]] = {t: {} for t in resource_types()}
    for definition in _definitions():
        parameter = _parse(definition)
        for base in parameter.base:
            if base in _ABSTRACT_BASES:
                targets = [t for t in table if base == "Resource" or t not in _NOT_DOMAIN]
            else:
                targets = [base] if base in table else []
            for resource_type in targets:
                # A type's own definition wins over an inherited one with the same code.
                if parameter.code not in table[resource_type] or base not in _ABSTRACT_BASES:
                    table[resource_type][parameter.code] = parameter
    return MappingProxyType({t: MappingProxyType(p) for t, p in table.items()})


@cache
def _by_url() -> Mapping[str, SearchParameter]:
    return MappingProxyType({_parse(d).url: _parse(d) for d in _definitions()})


def parameters_for(resource_type: str) -> Mapping[str, SearchParameter]:
    """code -> SearchParameter for one resource type (empty for unknown types)."""
    return _by_type().get(resource_type, MappingProxyType({}))


def parameter(resource_type: str, code: str) -> SearchParameter | None:
    return parameters_for(resource_type).get(code)


def by_url(url: str) -> SearchParameter | None:
    return _by_url().get(url)
