"""FHIR JSON in and out, keeping decimals exactly as written.

http://hl7.org/fhir/R4/json.html#primitive: a decimal's precision is part of
its value (``1.50`` is not ``1.5`` in a lab result). So bodies are parsed with
decimals as :class:`~decimal.Decimal` (and integers too large for 64 bits as
well), and written back with their own digits. Dumping uses orjson, embedding
each Decimal as a raw JSON number (``orjson.Fragment``).
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import orjson

# Integers up to 18 digits always fit in 64 bits; longer ones are kept exact.
_INT64_SAFE_DIGITS = 18


def _parse_int(text: str) -> int | Decimal:
    return int(text) if len(text.lstrip("-")) <= _INT64_SAFE_DIGITS else Decimal(text)


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are not JSON, though Python's parser accepts them.
    raise ValueError(f"{name} is not a JSON number")


def loads(data: bytes | str) -> Any:
    """Parse JSON; decimals become Decimal. Raises ValueError on malformed input."""
    return json.loads(
        data, parse_float=Decimal, parse_int=_parse_int, parse_constant=_reject_constant
    )


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise TypeError("NaN and Infinity are not JSON numbers")
        return orjson.Fragment(str(value))
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps(value: Any, *, pretty: bool = False) -> bytes:
    """Serialize to JSON bytes (decimals with their own digits; stored Fragments embedded as is)."""
    return orjson.dumps(value, default=_default, option=orjson.OPT_INDENT_2 if pretty else 0)
