"""Number search — http://hl7.org/fhir/R4/search.html#number (and #prefix)

Indexed: decimal, integer, positiveInt, unsignedInt values (as Decimal); a
Quantity-like value indexes its ``value``, a Range its ``low`` and ``high``
values (two rows).

Search ``[prefix]number``. The number's precision makes an implicit range of
half a unit in its last digit: ``100`` is [99.5, 100.5), ``100.00`` is
[99.995, 100.005), ``1e2`` (one significant figure, exponent 2) is [50, 150).
(The R4 page's example gives [95, 105) for ``1e2`` while calling it "1
significant figure"; we follow the stated rule, significant figures, as HAPI
does.) The indexed value is a point ``t``:

==== ================================================================
eq   ``low <= t < high`` (the search range contains it)
ne   not eq
gt   ``t > v``   — "when a comparison prefix in the set lt, gt, le, ge,
lt   ``t < v``     sa & eb is provided, the implicit precision of the
ge   ``t >= v``    number is ignored"
le   ``t <= v``
sa   ``t > v``
eb   ``t < v``
ap   within 10% of ``v`` either side (the spec's recommendation), and
     never narrower than the implicit range: ``|t - v| <= max(|v| / 10,
     half unit)``
==== ================================================================

Malformed numbers (including NaN / Infinity) and unknown prefixes are a 400.
Shared with quantity search: :func:`split_prefix`, :func:`parse_number`,
:func:`compare`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, and_, not_

from fhirserver.errors import BadRequest
from fhirserver.search.escaping import unescape
from fhirserver.storage.tables import SEARCH_TABLES

if TYPE_CHECKING:
    from fhirserver.search.registry import SearchParameter
    from fhirserver.search.types import SearchContext

TABLE = SEARCH_TABLES["number"]
MODIFIERS: frozenset[str] = frozenset()

#: http://hl7.org/fhir/R4/search.html#prefix
PREFIXES = frozenset({"eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"})
_PREFIX = re.compile(r"([a-z]{2})(.*)", re.DOTALL)
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
#: ap: 10% of the value either side.
AP_FRACTION = Decimal("0.1")


def index_rows(
    nodes: Iterable[Any],
    parameter: SearchParameter,
    *,
    base_url: str = "",
    resource: dict | None = None,
) -> list[dict]:
    values: dict[Decimal, None] = {}
    for node in nodes:
        for number in _numbers(node.value):
            values[number] = None
    return [{"value": v} for v in values]


def _numbers(value: Any) -> list[Decimal]:
    if isinstance(value, bool) or value is None:
        return []
    if isinstance(value, Decimal | int):
        return [Decimal(value)] if Decimal(value).is_finite() else []
    if isinstance(value, float | str):
        try:
            number = Decimal(str(value))
        except InvalidOperation:
            return []
        return [number] if number.is_finite() else []
    if isinstance(value, dict):
        if "low" in value or "high" in value:
            return [
                n for key in ("low", "high") for n in _numbers((value.get(key) or {}).get("value"))
            ]
        return _numbers(value.get("value"))
    return []


def split_prefix(value: str, parameter: SearchParameter) -> tuple[str, str]:
    """``(prefix, rest)``; ``eq`` when the value has no prefix; an unknown prefix is a 400."""
    match = _PREFIX.fullmatch(value)
    if match is None:
        return "eq", value
    prefix, rest = match.groups()
    if prefix not in PREFIXES:
        raise BadRequest(
            f"`{parameter.code}={value}`: `{prefix}` is not a search prefix "
            "(eq, ne, gt, lt, ge, le, sa, eb, ap)."
        )
    return prefix, rest


def parse_number(text: str, parameter: SearchParameter, original: str | None = None) -> Decimal:
    text = unescape(text).strip()
    if not _NUMBER.fullmatch(text):
        raise BadRequest(f"`{parameter.code}={original or text}`: `{text}` is not a number.")
    return Decimal(text)


def implicit_range(number: Decimal) -> tuple[Decimal, Decimal]:
    """[low, high) of the values a number stands for at its precision."""
    half = Decimal(5).scaleb(number.as_tuple().exponent - 1)  # type: ignore[operator]
    return number - half, number + half


def compare(
    column, prefix: str, number: Decimal, factor: Decimal = Decimal(1)
) -> ColumnElement[bool]:
    """The condition ``column <prefix> number`` for point values (number × factor: unit conversion)."""
    low, high = implicit_range(number)
    if prefix == "ap":
        margin = max(abs(number) * AP_FRACTION, number - low)
        low, high = number - margin, number + margin
        return and_(column >= low * factor, column <= high * factor)
    exact = number * factor
    if prefix == "eq":
        return and_(column >= low * factor, column < high * factor)
    if prefix == "ne":
        return not_(and_(column >= low * factor, column < high * factor))
    if prefix in ("gt", "sa"):
        return column > exact
    if prefix in ("lt", "eb"):
        return column < exact
    if prefix == "ge":
        return column >= exact
    if prefix == "le":
        return column <= exact
    raise AssertionError(prefix)


def condition(
    table, value: str, modifier: str | None, parameter: SearchParameter, context: SearchContext
) -> ColumnElement[bool]:
    if modifier is not None:
        raise BadRequest(
            f"Modifier `:{modifier}` is not supported on the number parameter `{parameter.code}`."
        )
    prefix, rest = split_prefix(value, parameter)
    return compare(table.c.value, prefix, parse_number(rest, parameter, value))


def sort_value(table, descending: bool) -> ColumnElement:
    return table.c.value
