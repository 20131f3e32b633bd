"""Search behaviour keyed by SearchParameter.type: one module per type.

http://hl7.org/fhir/R4/search.html#ptypes. Each module (string, token, date,
number, quantity, reference, uri) provides the same three things, and nothing
elsewhere branches on a parameter's type or name:

``TABLE``
    its index table (fhirserver.storage.tables.SEARCH_TABLES[type]).
``MODIFIERS``
    the modifiers it implements itself (``:missing`` is handled by the planner
    for every type, and ``:not`` / ``:not-in`` by negating ``None`` / ``:in``).
``index_rows(nodes, parameter, *, base_url="", resource=None) -> list[dict]``
    the index rows (type-specific columns only) for the values a
    SearchParameter expression selected from a resource at write time;
    ``base_url`` is this server's base (absolute references under it are
    local), ``resource`` the whole resource (for ``%resource`` in composites).
``condition(table, value, modifier, parameter, context) -> ColumnElement[bool]``
    the SQL condition, over an alias of ``TABLE``, for ONE search value (a
    comma-separated list is OR-ed by the planner); a malformed value raises
    fhirserver.errors.BadRequest naming the parameter and the value.
``sort_value(table, descending) -> ColumnElement``
    the value of one index row a sort compares; a resource sorts by the
    smallest of its rows' values ascending and the largest descending.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import import_module
from types import ModuleType

#: The SearchParameter types that have an index table and a module.
INDEXED_TYPES = ("string", "token", "date", "number", "quantity", "reference", "uri")
#: Types that can be searched: the indexed ones, and composites of them
#: (types/composite.py stores its components in their own types' tables).
SEARCHABLE_TYPES = (*INDEXED_TYPES, "composite")


@dataclass(frozen=True)
class SearchContext:
    """What a condition may need beyond the value: this server's base URL, the
    database dialect, and ValueSet expansion for ``:in`` / ``:not-in``."""

    base_url: str = ""
    dialect: str = "sqlite"
    #: ValueSet canonical URL -> the (system, code) pairs it contains (None when
    #: unknown); a code of None stands for every code of that system.
    value_set_codes: Callable[[str], list[tuple[str | None, str | None]] | None] = field(
        default=lambda url: None
    )


def module_of(parameter) -> ModuleType:
    """The module searching one SearchParameter: by its type, or full text for the text parameters."""
    if parameter.fulltext is not None:
        return import_module("fhirserver.search.types.fulltext")
    return module_for(parameter.type)


def module_for(search_type: str) -> ModuleType:
    """The module implementing a SearchParameter type (KeyError for composite/special)."""
    if search_type not in SEARCHABLE_TYPES:
        raise KeyError(search_type)
    return import_module(f"fhirserver.search.types.{search_type}")
