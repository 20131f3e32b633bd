"""FHIR date, dateTime and instant values as UTC ranges.

http://hl7.org/fhir/R4/datatypes.html#dateTime — a value's precision makes it a
range: ``2013`` is the whole year, ``2013-01-14T10:00`` the whole minute. A
time without a zone is taken as UTC (the server's time zone).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

from fhirserver.errors import BadRequest

_DATETIME = re.compile(
    r"(?P<year>\d{4})(?:-(?P<month>\d{2})(?:-(?P<day>\d{2})"
    r"(?:T(?P<hour>\d{2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?:\.(?P<fraction>\d{1,9}))?)?"
    r"(?P<zone>Z|[+-]\d{2}:\d{2})?)?)?)?"
)


def parse_range(text: str, *, what: str = "date") -> tuple[datetime, datetime]:
    """The half-open UTC range [start, end) that a FHIR date/dateTime/instant covers."""
    match = _DATETIME.fullmatch(text.strip())
    if match is None:
        raise BadRequest(
            f"`{text}` is not a valid FHIR {what} (expected e.g. 2024, 2024-05-01 or 2024-05-01T10:00:00Z)."
        )
    g = match.groupdict()
    try:
        zone = _zone(g["zone"])
        year = int(g["year"])
        if g["month"] is None:
            start = datetime(year, 1, 1, tzinfo=zone)
            end = datetime(year + 1, 1, 1, tzinfo=zone)
        elif g["day"] is None:
            month = int(g["month"])
            start = datetime(year, month, 1, tzinfo=zone)
            end = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=zone)
        elif g["hour"] is None:
            start = datetime(year, int(g["month"]), int(g["day"]), tzinfo=zone)
            end = start + timedelta(days=1)
        else:
            start = datetime(
                year, int(g["month"]), int(g["day"]), int(g["hour"]), int(g["minute"]), tzinfo=zone
            )
            if g["second"] is None:
                end = start + timedelta(minutes=1)
            else:
                start = start.replace(second=int(g["second"]))
                if g["fraction"] is None:
                    end = start + timedelta(seconds=1)
                else:
                    digits = g["fraction"]
                    start = start.replace(microsecond=int(digits[:6].ljust(6, "0")))
                    end = start + timedelta(microseconds=10 ** max(0, 6 - len(digits)))
    except (ValueError, OverflowError) as exc:
        raise BadRequest(f"`{text}` is not a valid FHIR {what}: {exc}.") from None
    return start.astimezone(UTC), end.astimezone(UTC)


def _zone(text: str | None) -> timezone:
    if text is None or text == "Z":
        return UTC
    sign = 1 if text[0] == "+" else -1
    hours, minutes = int(text[1:3]), int(text[4:6])
    return timezone(sign * timedelta(hours=hours, minutes=minutes))
