"""Date search — http://hl7.org/fhir/R4/search.html#date (and #prefix)

Every value is a UTC range [low, high) (fhirserver.resources.datetimes.parse_range:
a value's precision makes it a range; a time without a zone is UTC):

- date, dateTime, instant: the range of the value;
- Period: [start's low, end's high); a missing start is the far past, a missing
  end the far future (an ongoing period);
- Timing: each ``event`` as above, and ``repeat.boundsPeriod`` as a Period
  (``boundsDuration`` / ``boundsRange`` have no dates and are not indexed).

Search ``[prefix]date``: the search value is a range [s, e) too, compared with
the indexed range [low, high) as the R4 prefix table defines it for ranges:

==== ==================================================================
eq   the search range contains the value:  ``s <= low and high <= e``
ne   not eq
gt   the range above the search value overlaps the value: ``high > e``
lt   the range below the search value overlaps the value: ``low < s``
ge   gt or eq:  ``high > e or (s <= low and high <= e)``
le   lt or eq:  ``low < s or (s <= low and high <= e)``
sa   starts after the search range: ``low >= e``
eb   ends before the search range:  ``high <= s``
ap   overlaps the search range widened on both sides by 10% of the time
     between now and the search value (the spec's recommendation): with
     ``m = |now - s| / 10``, ``low < e + m and high > s - m``
==== ==================================================================

A malformed date or an unknown prefix is a 400. Year 9999 values (often used
as "no end") work: their end, which is past ``datetime.max``, is clamped to
the far future.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, and_, not_, or_

from fhirserver.errors import BadRequest
from fhirserver.resources.datetimes import parse_range
from fhirserver.search.escaping import unescape
from fhirserver.search.types.number import split_prefix
from fhirserver.storage.tables import _FAR_FUTURE, _FAR_PAST, SEARCH_TABLES

if TYPE_CHECKING:
    from fhirserver.search.registry import SearchParameter
    from fhirserver.search.types import SearchContext

TABLE = SEARCH_TABLES["date"]
MODIFIERS: frozenset[str] = frozenset()

FAR_PAST = _FAR_PAST
FAR_FUTURE = _FAR_FUTURE
#: ap: the search range is widened by this fraction of the time between now and the value.
AP_FRACTION = 0.1


def index_rows(
    nodes: Iterable[Any],
    parameter: SearchParameter,
    *,
    base_url: str = "",
    resource: dict | None = None,
) -> list[dict]:
    ranges: dict[tuple[datetime, datetime], None] = {}
    for node in nodes:
        for low_high in _ranges(node.value, node.type):
            ranges[low_high] = None
    return [{"low": low, "high": high} for low, high in ranges]


def _ranges(value: Any, type_code: str) -> list[tuple[datetime, datetime]]:
    if isinstance(value, str | date):
        single = _value_range(value)
        return [single] if single else []
    if not isinstance(value, dict):
        return []
    if type_code == "Timing" or "event" in value or "repeat" in value:
        found = [r for event in value.get("event") or () if (r := _value_range(event))]
        bounds = (value.get("repeat") or {}).get("boundsPeriod")
        if isinstance(bounds, dict) and (r := _period(bounds)):
            found.append(r)
        return found
    period = _period(value)
    return [period] if period else []


def _period(period: dict) -> tuple[datetime, datetime] | None:
    start, end = period.get("start"), period.get("end")
    start_range = _value_range(start) if start else None
    end_range = _value_range(end) if end else None
    if start_range is None and end_range is None:
        return None
    low = start_range[0] if start_range else FAR_PAST
    high = end_range[1] if end_range else FAR_FUTURE
    return low, max(high, low)


def _value_range(value: Any) -> tuple[datetime, datetime] | None:
    """An indexed value's range; None for a value that is not a date (never fails a write)."""
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
        return moment.astimezone(UTC), moment.astimezone(UTC)
    if isinstance(value, date):
        value = value.isoformat()
    if not isinstance(value, str):
        return None
    return _text_range(value)


@lru_cache(maxsize=8192)
def _text_range(text: str) -> tuple[datetime, datetime] | None:
    # Parsing a dateTime costs ~5 us, and a load indexes the same ones many
    # times: meta.lastUpdated is one per batch, an encounter's time is repeated
    # by each of its observations, reports and claims.
    try:
        return date_range(text)
    except BadRequest:
        return None


def date_range(text: str, *, what: str = "date") -> tuple[datetime, datetime]:
    """parse_range, with year-9999 values (whose end overflows datetime) clamped to the far future."""
    try:
        return parse_range(text, what=what)
    except BadRequest:
        text = text.strip()
        if not text.startswith("9999"):
            raise
        # 9998 has the same calendar as 9999 (neither is a leap year): parse
        # there and move a year on.
        low, high = parse_range("9998" + text[4:], what=what)
        return _next_year(low), _next_year(high)


def _next_year(moment: datetime) -> datetime:
    try:
        return min(moment.replace(year=moment.year + 1), FAR_FUTURE)
    except ValueError:
        return FAR_FUTURE


def condition(
    table, value: str, modifier: str | None, parameter: SearchParameter, context: SearchContext
) -> ColumnElement[bool]:
    if modifier is not None:
        raise BadRequest(
            f"Modifier `:{modifier}` is not supported on the date parameter `{parameter.code}`."
        )
    prefix, rest = split_prefix(value, parameter)
    text = unescape(rest).strip()
    try:
        start, end = date_range(text)
    except BadRequest as error:
        raise BadRequest(f"`{parameter.code}={value}`: {error.message}") from None
    low, high = table.c.low, table.c.high
    contained = and_(low >= start, high <= end)
    if prefix == "eq":
        return contained
    if prefix == "ne":
        return not_(contained)
    if prefix == "gt":
        return high > end
    if prefix == "lt":
        return low < start
    if prefix == "ge":
        return or_(high > end, contained)
    if prefix == "le":
        return or_(low < start, contained)
    if prefix == "sa":
        return low >= end
    if prefix == "eb":
        return high <= start
    if prefix == "ap":
        margin = abs(datetime.now(UTC) - start) * AP_FRACTION
        return and_(low < _shift(end, margin), high > _shift(start, -margin))
    raise AssertionError(prefix)


def _shift(moment: datetime, delta: timedelta) -> datetime:
    try:
        return min(max(moment + delta, FAR_PAST), FAR_FUTURE)
    except OverflowError:
        return FAR_PAST if delta < timedelta(0) else FAR_FUTURE


def sort_value(table, descending: bool) -> ColumnElement:
    """The column a sort compares: the latest end descending, the earliest start ascending."""
    return table.c.high if descending else table.c.low
