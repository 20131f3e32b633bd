"""Quantity search — http://hl7.org/fhir/R4/search.html#quantity

Indexed: Quantity and its profiles (Age, Duration, Distance, Count,
SimpleQuantity, MoneyQuantity) as ``(value, system, code, unit)``; Money as
``(value, 'urn:iso:std:iso:4217', currency, NULL)``. A Range is indexed as two
rows, its ``low`` and its ``high`` Quantity: one row cannot hold a range in
``value``, and with two rows ``gt``/``ge`` match a range whose high end lies
above the value and ``lt``/``le`` one whose low end lies below it (R4 defines
no range semantics for quantity targets; ``eq`` matches a range whose low or
high equals the value). A Quantity's ``comparator`` (``<``, ``>=``...) is not
taken into account. Values without a ``value`` are not indexed.

UCUM: when the system is ``http://unitsofmeasure.org``, ``canonical_value`` /
``canonical_code`` hold the value in the base unit of its dimension
(fhirserver.search.ucum: ``5.4 mg`` -> ``0.0054 g``); a UCUM unit the table
does not know is stored as written (factor 1). Other systems leave them NULL.

Search ``[prefix]number[|system|code]``:

- ``number``: any unit;
- ``number|system|code``: with the UCUM system, on the canonical columns
  (``5.4|http://unitsofmeasure.org|mg`` finds ``0.0054 g``; an unknown UCUM
  unit compares as written); otherwise value, system and code as written;
- ``number||code``: no system, ``code`` matches the indexed code *or* unit;
- ``number|system|``: any unit of that system.

Prefixes and the implicit precision range are those of number search
(fhirserver.search.types.number), applied after unit conversion.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, and_, func, or_

from fhirserver.errors import BadRequest
from fhirserver.search import ucum
from fhirserver.search.escaping import split, unescape
from fhirserver.search.types.number import compare, parse_number, split_prefix
from fhirserver.storage.tables import SEARCH_TABLES

if TYPE_CHECKING:
    from fhirserver.search.registry import SearchParameter
    from fhirserver.search.types import SearchContext

TABLE = SEARCH_TABLES["quantity"]
MODIFIERS: frozenset[str] = frozenset()

#: The code system of Money.currency.
CURRENCY_SYSTEM = "urn:iso:std:iso:4217"
_CODE_LENGTH = 128


def index_rows(
    nodes: Iterable[Any],
    parameter: SearchParameter,
    *,
    base_url: str = "",
    resource: dict | None = None,
) -> list[dict]:
    rows: dict[tuple, None] = {}
    for node in nodes:
        value = node.value
        if not isinstance(value, dict):
            continue
        if node.type == "Range" or (
            node.type not in ("Money",) and ("low" in value or "high" in value)
        ):
            quantities = [value.get("low"), value.get("high")]
        else:
            quantities = [value]
        for quantity in quantities:
            row = _row(quantity, money=node.type == "Money")
            if row is not None:
                rows[row] = None
    keys = ("value", "system", "code", "unit", "canonical_value", "canonical_code")
    return [dict(zip(keys, row, strict=True)) for row in rows]


def _row(quantity: Any, *, money: bool) -> tuple | None:
    if not isinstance(quantity, dict):
        return None
    number = _decimal(quantity.get("value"))
    if number is None:
        return None
    if money or ("currency" in quantity and "code" not in quantity):
        currency = quantity.get("currency")
        return (number, CURRENCY_SYSTEM if currency else None, _cut(currency), None, None, None)
    system = quantity.get("system") or None
    code = _cut(quantity.get("code"))
    unit = _cut(quantity.get("unit"))
    canonical_value = canonical_code = None
    if system == ucum.SYSTEM and code:
        converted = ucum.to_canonical(number, code)
        canonical_value, canonical_code = converted if converted else (number, code)
    return (number, system, code, unit, canonical_value, canonical_code)


def _decimal(value: Any) -> Decimal | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = value if isinstance(value, Decimal) else Decimal(str(value))
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


def _cut(value: Any) -> str | None:
    return value[:_CODE_LENGTH] if isinstance(value, str) and value else None


def condition(
    table, value: str, modifier: str | None, parameter: SearchParameter, context: SearchContext
) -> ColumnElement[bool]:
    if modifier is not None:
        raise BadRequest(
            f"Modifier `:{modifier}` is not supported on the quantity parameter `{parameter.code}`."
        )
    parts = split(value, "|")
    if len(parts) not in (1, 3):
        raise BadRequest(
            f"`{parameter.code}={value}` is not a valid quantity: expected [prefix]number, "
            "[prefix]number|system|code or [prefix]number||code."
        )
    prefix, number_text = split_prefix(parts[0], parameter)
    number = parse_number(number_text, parameter, value)
    if len(parts) == 1:
        return compare(table.c.value, prefix, number)
    system, code = unescape(parts[1]), unescape(parts[2])
    if not system and not code:
        return compare(table.c.value, prefix, number)
    if not system:
        return and_(
            or_(table.c.code == code, table.c.unit == code), compare(table.c.value, prefix, number)
        )
    if not code:
        return and_(table.c.system == system, compare(table.c.value, prefix, number))
    if system == ucum.SYSTEM:
        known = ucum.canonical(code)
        base, factor = known if known else (code, Decimal(1))
        return and_(
            table.c.canonical_code == base,
            compare(table.c.canonical_value, prefix, number, factor),
        )
    return and_(
        table.c.system == system,
        table.c.code == code,
        compare(table.c.value, prefix, number),
    )


def sort_value(table, descending: bool) -> ColumnElement:
    return func.coalesce(table.c.canonical_value, table.c.value)
