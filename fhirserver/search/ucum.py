"""A small UCUM unit canonicalizer for quantity search.

https://ucum.org/ucum — only what quantity search needs: a unit code maps to
the base unit of its dimension and an exact Decimal factor, so that
``5.4 mg`` and ``0.0054 g`` compare equal. Units are built from:

- metric atoms that take prefixes: ``g`` (mass), ``L``/``l`` (volume, base
  ``L``), ``m`` (length), ``s`` (time), ``mol`` (amount of substance);
- the prefixes ``k`` (10³), ``d`` (10⁻¹), ``c`` (10⁻²), ``m`` (10⁻³),
  ``u`` (10⁻⁶), ``n`` (10⁻⁹), ``p`` (10⁻¹²);
- non-metric atoms without prefixes: time ``a`` (Julian year, 365.25 d),
  ``mo`` (mean Julian month, a/12), ``wk``, ``d``, ``h``, ``min``; length
  ``[in_i]``, ``[ft_i]``; mass ``[lb_av]``, ``[oz_av]``;
- one optional ``/`` between two such units, for concentrations and rates:
  ``mg/dL`` -> ``g/L`` × 0.01, ``mmol/L`` -> ``mol/L`` × 0.001,
  ``umol/L`` -> ``mol/L`` × 0.000001, ``ug/mL`` -> ``g/L`` × 0.001,
  ``km/h`` -> ``m/s``.

Anything else (``mm[Hg]``, ``Cel``, ``%``, ``10*3/uL``, ``kg/m2``, annotations
``{...}``) is unknown: :func:`canonical` returns None and the caller compares
the unit code as written. Temperatures are affine (Cel ↔ [degF]) and are
deliberately not converted.
"""

from __future__ import annotations

from decimal import Decimal
from functools import cache

#: The UCUM code system.
SYSTEM = "http://unitsofmeasure.org"

_PREFIXES = {
    "k": Decimal("1000"),
    "d": Decimal("0.1"),
    "c": Decimal("0.01"),
    "m": Decimal("0.001"),
    "u": Decimal("0.000001"),
    "n": Decimal("0.000000001"),
    "p": Decimal("0.000000000001"),
}
#: Atoms that take prefixes: code -> (base code, factor).
_METRIC = {
    "g": ("g", Decimal(1)),
    "L": ("L", Decimal(1)),
    "l": ("L", Decimal(1)),
    "m": ("m", Decimal(1)),
    "s": ("s", Decimal(1)),
    "mol": ("mol", Decimal(1)),
}
_DAY = Decimal(86400)
_YEAR = Decimal("365.25") * _DAY
#: Atoms without prefixes (tried first, so ``d`` is a day, ``min`` a minute).
_SPECIAL = {
    "a": ("s", _YEAR),
    "mo": ("s", _YEAR / 12),
    "wk": ("s", 7 * _DAY),
    "d": ("s", _DAY),
    "h": ("s", Decimal(3600)),
    "min": ("s", Decimal(60)),
    "[in_i]": ("m", Decimal("0.0254")),
    "[ft_i]": ("m", Decimal("0.3048")),
    "[lb_av]": ("g", Decimal("453.59237")),
    "[oz_av]": ("g", Decimal("28.349523125")),
}


def _atom(code: str) -> tuple[str, Decimal] | None:
    if code in _SPECIAL:
        return _SPECIAL[code]
    if code in _METRIC:
        return _METRIC[code]
    if len(code) > 1 and code[0] in _PREFIXES and code[1:] in _METRIC:
        base, factor = _METRIC[code[1:]]
        return base, factor * _PREFIXES[code[0]]
    return None


@cache
def canonical(code: str | None) -> tuple[str, Decimal] | None:
    """``(base unit code, factor)`` with value_in_base = value × factor; None when unknown."""
    if not code:
        return None
    numerator, slash, denominator = code.partition("/")
    top = _atom(numerator)
    if top is None:
        return None
    if not slash:
        return top
    bottom = _atom(denominator)
    if bottom is None:
        return None
    return f"{top[0]}/{bottom[0]}", top[1] / bottom[1]


def to_canonical(value: Decimal, code: str | None) -> tuple[Decimal, str] | None:
    """``value`` in ``code`` as ``(value, unit)`` in the base unit of its dimension."""
    found = canonical(code)
    if found is None:
        return None
    base, factor = found
    return value * factor, base
