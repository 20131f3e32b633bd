"""``$stats`` — http://hl7.org/fhir/R4/observation-operation-stats.html

``GET [base]/Observation/$stats?subject=Patient/1&code=2339-0&system=http://loinc.org&statistic=average,minimum``
(or POST with a Parameters resource). Inputs, as the OperationDefinition
(conformance/operations/OperationDefinition-Observation-stats.json) has them:

- ``subject`` (required): the Observations' subject, ``Type/id`` (a local
  subject that does not exist is a 404);
- ``code`` (repeatable, comma-separated; ``system|code`` also accepted) with an
  optional ``system``, and/or ``coding`` (``valueCoding``; ``system|code`` in a
  GET). Without any code, every code the subject has values for;
- ``duration`` (hours back from now) or else ``period`` (``valuePeriod``; in a
  GET ``start/end``, either side may be empty): the effective dates of interest;
- ``statistic`` (required, repeatable, comma-separated): ``count``,
  ``minimum`` (``min``), ``maximum`` (``max``), ``average``, ``sum``,
  ``std-dev`` (sample standard deviation) from the observation-statistics code
  system, and ``first`` / ``last`` (the earliest and latest value by effective
  date), which that code system lacks and which this server names in its own
  system STATISTICS_EXTRA. Any other statistic is a 400;
- ``include`` (boolean) with ``limit``: the source Observations, most recent first.

Observations with status entered-in-error or cancelled are never counted.

The answer is a Parameters resource: one ``statistics`` Observation per code
(status final, the code, the subject, effectivePeriod = the period asked for,
else the span of the values), with one component per statistic, and
``source`` Observations when asked for. Values are computed on the canonical
UCUM value (fhirserver.search.stats) and reported in the unit of the most
recent value; a code measured in two incompatible units gives one
``statistics`` Observation per unit. A statistic without a value (no data)
carries ``dataAbsentReason``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation

from fhirserver.errors import BadRequest
from fhirserver.interactions.common import require_present
from fhirserver.interactions.request import FhirRequest, FhirResponse
from fhirserver.operations.parameters import OperationInput, parameters_resource
from fhirserver.resources import jsonio
from fhirserver.resources.datetimes import parse_range
from fhirserver.search.parse import MAX_COUNT, parse
from fhirserver.search.stats import Series, StatsQuery, StatsResult
from fhirserver.search.types import SearchContext
from fhirserver.search.types.reference import parse_literal
from fhirserver.storage.repository import Repository

#: http://hl7.org/fhir/R4/codesystem-observation-statistics.html
STATISTICS = "http://hl7.org/fhir/observation-statistics"
#: first / last are not in the R4 code system; this server's own codes for them.
STATISTICS_EXTRA = "urn:fhirserver:observation-statistics"
#: code -> (system, display) of the statistics this server computes.
SUPPORTED = {
    "count": (STATISTICS, "Count"),
    "minimum": (STATISTICS, "Minimum"),
    "maximum": (STATISTICS, "Maximum"),
    "average": (STATISTICS, "Average"),
    "sum": (STATISTICS, "Sum"),
    "std-dev": (STATISTICS, "Standard Deviation"),
    "first": (STATISTICS_EXTRA, "First value"),
    "last": (STATISTICS_EXTRA, "Last value"),
}
#: The OperationDefinition's documentation writes ``max`` and ``min``.
ALIASES = {"max": "maximum", "min": "minimum"}
DATA_ABSENT = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
#: Observation.status of results that are no results: never counted.
_NOT_VALUES = "entered-in-error,cancelled"
#: Digits kept in reported values (enough for any lab value; hides float noise from SQLite).
_SIGNIFICANT = 12


def handle(request: FhirRequest, repository: Repository) -> FhirResponse:
    given = OperationInput.of(request)
    subject = _subject(given.value("subject"))
    _require_local_subject(subject, request, repository)
    statistics = _statistics(given.values("statistic"))
    start, end = _period(given)
    include = _boolean(given.value("include"), "include")
    criteria = parse(
        "Observation", [("subject", subject), ("status:not", _NOT_VALUES)], strict=True
    ).criteria
    codes = _codes(given)
    query = StatsQuery(
        criteria=criteria,
        codes=codes,
        start=start,
        end=end,
        sources=_limit(given.value("limit")) if include else 0,
    )
    result = repository.observation_stats(query, SearchContext(base_url=request.base_url))
    parameters = [
        {"name": "statistics", "resource": observation}
        for observation in _observations(subject, codes, result, statistics, start, end)
    ]
    parameters += [{"name": "source", "resource": jsonio.loads(body)} for body in result.sources]
    return FhirResponse(status=200, resource=parameters_resource(*parameters))


# -- input -------------------------------------------------------------------------


def _subject(value: object) -> str:
    if isinstance(value, dict):  # valueReference
        value = value.get("reference")
    if not isinstance(value, str) or not value.strip():
        raise BadRequest("$stats needs a `subject`, e.g. subject=Patient/123.")
    return value.strip()


def _require_local_subject(subject: str, request: FhirRequest, repository: Repository) -> None:
    """404 / 410 for a subject on this server that is not there."""
    parsed = parse_literal(subject)
    if parsed is None:
        return
    base, resource_type, id = parsed
    if base is None or base.rstrip("/") == request.base_url.rstrip("/"):
        require_present(resource_type, id, repository.read(resource_type, id))


def _statistics(values: list) -> list[str]:
    wanted: list[str] = []
    for value in values:
        if not isinstance(value, str):
            raise BadRequest("`statistic` must be a code (average, minimum, maximum, count, ...).")
        for code in (c.strip() for c in value.split(",")):
            if code:
                wanted.append(ALIASES.get(code, code))
    if not wanted:
        raise BadRequest(f"$stats needs a `statistic`: one or more of {', '.join(SUPPORTED)}.")
    unknown = [code for code in wanted if code not in SUPPORTED]
    if unknown:
        raise BadRequest(f"Statistic `{unknown[0]}` is not supported; use {', '.join(SUPPORTED)}.")
    return list(dict.fromkeys(wanted))


def _codes(given: OperationInput) -> tuple[tuple[str | None, str], ...]:
    system = given.string("system") or None
    codes: list[tuple[str | None, str]] = []
    for value in given.values("code"):
        if not isinstance(value, str):
            raise BadRequest("`code` must be a code; send a Coding as `coding`.")
        for item in (v.strip() for v in value.split(",")):
            if item:
                codes.append(_token(item, system))
    for value in given.values("coding"):
        if isinstance(value, dict):
            if not isinstance(value.get("code"), str) or not value["code"]:
                raise BadRequest("`coding` needs a code.")
            codes.append((value.get("system") or None, value["code"]))
        elif isinstance(value, str) and value.strip():
            codes.append(_token(value.strip(), None))
        else:
            raise BadRequest("`coding` must be a Coding (or system|code in a GET).")
    return tuple(dict.fromkeys(codes))


def _token(text: str, system: str | None) -> tuple[str | None, str]:
    if "|" in text:
        token_system, _, code = text.partition("|")
        if not code:
            raise BadRequest(f"`{text}` names no code.")
        return token_system or None, code
    return system, text


def _period(given: OperationInput) -> tuple[datetime | None, datetime | None]:
    """[start, end) of the effective dates asked for: ``duration`` hours back, else ``period``."""
    duration = given.value("duration")
    if duration is not None:
        try:
            hours = Decimal(str(duration))
        except InvalidOperation:
            raise BadRequest(f"duration must be a number of hours, not `{duration}`.") from None
        if isinstance(duration, bool) or not hours.is_finite() or hours <= 0:
            raise BadRequest(f"duration must be a positive number of hours, not `{duration}`.")
        now = datetime.now(UTC)
        return now - timedelta(hours=float(hours)), now
    period = given.value("period")
    if period is None:
        return None, None
    if isinstance(period, str):  # GET: start/end
        start_text, slash, end_text = period.partition("/")
        if not slash:
            raise BadRequest(f"period `{period}` must be start/end (either may be empty).")
        period = {"start": start_text.strip() or None, "end": end_text.strip() or None}
    if not isinstance(period, dict):
        raise BadRequest("period must be a Period.")
    start = parse_range(period["start"], what="period.start")[0] if period.get("start") else None
    end = parse_range(period["end"], what="period.end")[1] if period.get("end") else None
    if start is not None and end is not None and end <= start:
        raise BadRequest("period.end must come after period.start.")
    return start, end


def _boolean(value: object, name: str) -> bool:
    if value is None or isinstance(value, bool):
        return bool(value)
    if value in ("true", "false"):
        return value == "true"
    raise BadRequest(f"`{name}` must be true or false, not `{value}`.")


def _limit(value: object) -> int:
    if value is None:
        return MAX_COUNT
    text = str(value)
    if isinstance(value, bool) or not text.isdigit() or int(text) < 1:
        raise BadRequest(f"limit must be a positive integer, not `{text}`.")
    return min(int(text), MAX_COUNT)


# -- output ------------------------------------------------------------------------


def _observations(
    subject: str,
    codes: tuple[tuple[str | None, str], ...],
    result: StatsResult,
    statistics: list[str],
    start: datetime | None,
    end: datetime | None,
) -> list[dict]:
    """One statistics Observation per series, and one (without values) per code without data."""
    found = [
        _observation(subject, (s.system, s.code), statistics, s, start, end) for s in result.series
    ]
    seen = [(s.system, s.code) for s in result.series] + list(result.panels)
    for system, code in codes:
        if not any(c == code and system in (None, s) for s, c in seen):
            found.append(_observation(subject, (system, code), statistics, None, start, end))
    return found


def _observation(
    subject: str,
    concept: tuple[str | None, str],
    statistics: list[str],
    series: Series | None,
    start: datetime | None,
    end: datetime | None,
) -> dict:
    system, code = concept
    observation: dict = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": system, "code": code} if system else {"code": code}]},
        "subject": {"reference": subject},
    }
    effective = _effective(series, start, end)
    if effective:
        observation["effectivePeriod"] = effective
    observation["component"] = [_component(name, series) for name in statistics]
    return observation


def _effective(series: Series | None, start: datetime | None, end: datetime | None) -> dict:
    if start is None and end is None and series is not None:
        start, end = series.first_at, series.last_at
    out = {}
    if start is not None:
        out["start"] = _instant(start)
    if end is not None:
        out["end"] = _instant(end)
    return out


def _component(name: str, series: Series | None) -> dict:
    system, display = SUPPORTED[name]
    component: dict = {"code": {"coding": [{"system": system, "code": name, "display": display}]}}
    if name == "count":
        component["valueInteger"] = series.count if series is not None else 0
        return component
    value = _value(name, series) if series is not None else None
    if value is None:
        component["dataAbsentReason"] = {
            "coding": [{"system": DATA_ABSENT, "code": "not-applicable"}],
            "text": "No values to compute this statistic from.",
        }
        return component
    assert series is not None
    quantity: dict = {"value": _tidy(value / series.factor)}
    if series.unit or series.unit_code:
        quantity["unit"] = series.unit or series.unit_code
    if series.unit_system:
        quantity["system"] = series.unit_system
    if series.unit_code:
        quantity["code"] = series.unit_code
    component["valueQuantity"] = quantity
    return component


def _value(name: str, series: Series) -> Decimal | None:
    """The statistic in the series' canonical unit."""
    n = series.count
    if name == "minimum":
        return series.minimum
    if name == "maximum":
        return series.maximum
    if name == "sum":
        return series.sum
    if name == "average":
        return series.sum / n
    if name == "first":
        return series.first
    if name == "last":
        return series.last
    if name == "std-dev":
        if n < 2:
            return None
        variance = (series.sum_of_squares - series.sum * series.sum / n) / (n - 1)
        return max(variance, Decimal(0)).sqrt()
    raise AssertionError(name)


def _tidy(value: Decimal) -> Decimal:
    """``value`` to _SIGNIFICANT digits, without trailing zeros or an exponent."""
    if value.is_zero():
        return Decimal(0)
    rounded = round(value, _SIGNIFICANT - value.adjusted() - 1)
    return Decimal(format(rounded.normalize(), "f"))


def _instant(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
