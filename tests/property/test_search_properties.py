"""Search semantics as properties — http://hl7.org/fhir/R4/search.html

Each example writes a few random resources over HTTP, runs a random search
(following every ``next`` link) and compares the ids with an independent
matcher written here from the spec (nothing of ``fhirserver.search`` is
imported for it).
"""

from __future__ import annotations

import functools
import os
import re
import unicodedata
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from urllib.parse import quote

import orjson
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from fhirserver.storage.tables import metadata
from tests.api.helpers import BASE, FHIR_JSON

SETTINGS = settings(
    max_examples=int(os.environ.get("SEARCH_PROPERTY_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# --------------------------------------------------------------------------- helpers


def reset(app) -> None:
    database = app.extensions["fhirserver"].database
    with database.engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            conn.execute(text(f"DELETE FROM {table.name}"))


def put_raw(client, resource_type: str, resource_id: str, body: str) -> None:
    response = client.put(
        f"{BASE}/{resource_type}/{resource_id}",
        data=body.encode(),
        headers={"Content-Type": FHIR_JSON},
    )
    assert response.status_code in (200, 201), response.get_data(as_text=True)


def put(client, resource: dict) -> None:
    put_raw(client, resource["resourceType"], resource["id"], orjson.dumps(resource).decode())


def next_url(bundle: dict) -> str | None:
    url = next((link["url"] for link in bundle.get("link", []) if link["relation"] == "next"), None)
    return url.replace("http://localhost", "") if url else None


def previous_url(bundle: dict) -> str | None:
    url = next(
        (link["url"] for link in bundle.get("link", []) if link["relation"] == "previous"), None
    )
    return url.replace("http://localhost", "") if url else None


def page(client, url: str) -> dict:
    response = client.get(url)
    assert response.status_code == 200, (url, response.get_data(as_text=True))
    return response.get_json()


def match_ids(bundle: dict) -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


def search_all(client, query: str) -> list[str]:
    """Every match of ``query``, following ``next``; no id may come twice."""
    url: str | None = f"{BASE}/{query}"
    found: list[str] = []
    pages = 0
    while url:
        bundle = page(client, url)
        found.extend(match_ids(bundle))
        url = next_url(bundle)
        pages += 1
        assert pages < 200, "runaway paging"
    assert len(found) == len(set(found)), f"duplicates in {query}: {found}"
    return found


counts = st.sampled_from([None, None, 1, 2, 3])


def with_count(query: str, count: int | None) -> str:
    return query if count is None else f"{query}&_count={count}"


# --------------------------------------------------------------------------- 1. string

# Mixed case, accents (precomposed), Cyrillic.
LETTERS = "aAbBeEéÉuUüÜnNñÑиИйЙеЕёЁ"
#: Characters with a meaning in a search value (``,`` ``|`` ``$`` ``\\`` escaped) or in SQL LIKE.
SPECIAL = ",|$\\%_"
#: Letters that string search does not tell apart (case and accent folded).
EQUIVALENT = ["aA", "bB", "eEéÉ", "uUüÜ", "nNñÑ", "иИйЙ", "еЕёЁ"]
names = st.text(alphabet=LETTERS, min_size=1, max_size=6) | st.text(
    alphabet=LETTERS[:6] + SPECIAL, min_size=1, max_size=4
)


def escape(value: str) -> str:
    """A search value with the R4 escapes (``\\`` first), URL-encoded."""
    for char in "\\,|$":
        value = value.replace(char, "\\" + char)
    return quote(value, safe="")


def fold(value: str) -> str:
    """Case- and accent-insensitive form: NFD, drop combining marks, casefold (both sides)."""
    decomposed = unicodedata.normalize("NFD", value)
    stripped = "".join(c for c in decomposed if unicodedata.category(c) != "Mn")
    return stripped.casefold()


def string_matches(value: str, modifier: str | None, search: str) -> bool:
    if modifier == "exact":
        return value == search
    if modifier == "contains":
        return fold(search) in fold(value)
    return fold(value).startswith(fold(search))


@SETTINGS
@given(
    families=st.lists(st.lists(names, min_size=0, max_size=2), min_size=1, max_size=6),
    modifier=st.sampled_from([None, "exact", "contains"]),
    data=st.data(),
    count=counts,
)
def test_string_search(app, client, families, modifier, data, count):
    reset(app)
    for i, family_list in enumerate(families):
        patient: dict = {"resourceType": "Patient", "id": f"p{i}"}
        if family_list:
            patient["name"] = [{"family": f} for f in family_list]
        put(client, patient)
    everything = [f for fl in families for f in fl]
    if everything and data.draw(st.booleans(), label="derived"):
        base = data.draw(st.sampled_from(everything), label="base")
        start = data.draw(st.integers(0, len(base) - 1), label="start")
        end = data.draw(st.integers(start + 1, len(base)), label="end")
        search = base[start:end] if modifier == "contains" else base[:end]
        if data.draw(st.booleans(), label="variant"):
            # Another spelling of the same letters: other case, with or without the accent.
            search = "".join(
                data.draw(st.sampled_from(next((g for g in EQUIVALENT if c in g), c)))
                for c in search
            )
    else:
        search = data.draw(names, label="search")
    # Sometimes a second value: ``a,b`` is OR.
    alternatives = [search, *data.draw(st.lists(names, max_size=1), label="or")]
    param = "family" if modifier is None else f"family:{modifier}"
    query = f"Patient?{param}=" + ",".join(escape(a) for a in alternatives)
    # Sometimes a second parameter: ``&family=c`` is AND (any of the names may match it).
    conjunct = data.draw(st.none() | names, label="and")
    if conjunct is not None:
        query += f"&{param}={escape(conjunct)}"
    got = search_all(client, with_count(query, count))
    expected = [
        f"p{i}"
        for i, fl in enumerate(families)
        if any(string_matches(f, modifier, a) for f in fl for a in alternatives)
        and (conjunct is None or any(string_matches(f, modifier, conjunct) for f in fl))
    ]
    event("no match" if not expected else "some match")
    assert sorted(got) == sorted(expected), (search, families)


# --------------------------------------------------------------------------- 2. token

SYSTEMS = ["http://loinc.org", "http://snomed.info/sct", None]
CODES = ["a1", "b2", "c3"]
codings = st.lists(
    st.tuples(st.sampled_from(SYSTEMS), st.sampled_from(CODES)), min_size=0, max_size=3
)


def token_matches(codings_: list, form: str, system: str | None, code: str | None) -> bool:
    if form == "code":
        return any(c == code for _, c in codings_)
    if form == "system|code":
        return any(s == system and c == code for s, c in codings_)
    if form == "|code":
        return any(s is None and c == code for s, c in codings_)
    if form == "system|":
        return any(s == system for s, _ in codings_)
    if form == "not":
        # :not — "the resources that do not have a matching coding" (incl. none at all).
        return not any(c == code for _, c in codings_)
    if form == "not system|code":
        return not any(s == system and c == code for s, c in codings_)
    raise AssertionError(form)


@SETTINGS
@given(
    observations=st.lists(codings, min_size=1, max_size=6),
    form=st.sampled_from(["code", "system|code", "|code", "system|", "not", "not system|code"]),
    system=st.sampled_from([s for s in SYSTEMS if s]),
    code=st.sampled_from([*CODES, "zz"]),
    data=st.data(),
    count=counts,
)
def test_token_search(app, client, observations, form, system, code, data, count):
    reset(app)
    for i, cs in enumerate(observations):
        coding = []
        for s, c in cs:
            coding.append({"code": c} if s is None else {"system": s, "code": c})
        # No coding: a text-only concept (found by no code search, and by :not).
        concept = {"coding": coding} if coding else {"text": "a1"}
        put(
            client,
            {"resourceType": "Observation", "id": f"o{i}", "status": "final", "code": concept},
        )
    value = {
        "code": code,
        "system|code": f"{system}|{code}",
        "|code": f"|{code}",
        "system|": f"{system}|",
        "not": code,
        "not system|code": f"{system}|{code}",
    }[form]
    param = "code:not" if form.startswith("not") else "code"
    query = f"Observation?{param}={quote(value, safe='')}"
    # Sometimes OR with a second code (``a,b``); not with :not (whose OR semantics differ).
    other = (
        None
        if form.startswith("not")
        else data.draw(st.none() | st.sampled_from(CODES), label="or")
    )
    if other is not None:
        query += "," + other
    got = search_all(client, with_count(query, count))
    expected = [
        f"o{i}"
        for i, cs in enumerate(observations)
        if token_matches(cs, form, system, code)
        or (other is not None and token_matches(cs, "code", None, other))
    ]
    event("no match" if not expected else "some match")
    assert sorted(got) == sorted(expected), (value, observations)


# --------------------------------------------------------------------------- 3. date

_DATE = re.compile(
    r"(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?"
    r"(Z|[+-]\d{2}:\d{2})?)?)?)?"
)


def as_range(value: str) -> tuple[datetime, datetime]:
    """[start, end) in UTC of a FHIR date/dateTime at its precision."""
    m = _DATE.fullmatch(value)
    assert m, value
    year, month, day, hour, minute, second, fraction, zone = m.groups()
    if zone in (None, "Z"):
        tz = UTC
    else:
        sign = -1 if zone[0] == "-" else 1
        tz = timezone(sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])))
    if month is None:
        start = datetime(int(year), 1, 1, tzinfo=tz)
        end = datetime(int(year) + 1, 1, 1, tzinfo=tz)
    elif day is None:
        start = datetime(int(year), int(month), 1, tzinfo=tz)
        ny, nm = (int(year) + 1, 1) if month == "12" else (int(year), int(month) + 1)
        end = datetime(ny, nm, 1, tzinfo=tz)
    elif hour is None:
        start = datetime(int(year), int(month), int(day), tzinfo=tz)
        end = start + timedelta(days=1)
    elif second is None:
        start = datetime(int(year), int(month), int(day), int(hour), int(minute), tzinfo=tz)
        end = start + timedelta(minutes=1)
    elif fraction is None:
        start = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), tzinfo=tz
        )
        end = start + timedelta(seconds=1)
    else:
        start = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), tzinfo=tz
        ) + timedelta(microseconds=int(fraction.ljust(6, "0")[:6]))
        end = start + timedelta(microseconds=10 ** (6 - len(fraction)))
    return start.astimezone(UTC), end.astimezone(UTC)


def target_range(target) -> tuple[datetime | None, datetime | None]:
    """A date/dateTime's range, or a Period ``(start, end)``'s: [start's start, end's end), None unbounded."""
    if isinstance(target, str):
        return as_range(target)
    start, end = target
    return (as_range(start)[0] if start else None, as_range(end)[1] if end else None)


def date_matches(target, prefix: str, search: str) -> bool:
    """The R4 prefix table for ranges: target range [lo, hi) against search range [s, e)."""
    lo, hi = target_range(target)  # None: unbounded (a Period without start / end)
    s, e = as_range(search)

    def overlaps(a_lo, a_hi, b_lo, b_hi):  # half-open ranges; None is unbounded
        return (a_lo is None or b_hi is None or a_lo < b_hi) and (
            a_hi is None or b_lo is None or b_lo < a_hi
        )

    # the search range fully contains the target
    contains = lo is not None and hi is not None and s <= lo and hi <= e
    above = overlaps(lo, hi, e, None)  # the range above the search value [e, +inf) intersects
    below = overlaps(lo, hi, None, s)  # the range below the search value [-inf, s) intersects
    if prefix == "eq":
        return contains
    if prefix == "ne":
        return not contains
    if prefix == "gt":
        return above
    if prefix == "lt":
        return below
    if prefix == "ge":
        return above or contains
    if prefix == "le":
        return below or contains
    if prefix == "sa":
        # no overlap with the search range, and the range above contains the target
        return not overlaps(lo, hi, s, e) and lo is not None and lo >= e
    if prefix == "eb":
        return not overlaps(lo, hi, s, e) and hi is not None and hi <= s
    raise AssertionError(prefix)


@st.composite
def periods(draw) -> tuple[str | None, str | None]:
    """A Period: start and/or end (start <= end)."""
    start = draw(st.none() | date_times())
    end = draw(st.none() | date_times())
    if start is None and end is None:
        start = draw(date_times())
    if start and end and as_range(start)[0] > as_range(end)[0]:
        start, end = end, start
    return start, end


ZONES = ["Z", "+01:00", "-05:00", "+14:00", "-12:00", "+05:30"]


@st.composite
def dates(draw, with_time: bool) -> str:
    year = draw(st.integers(2019, 2021))
    precision = draw(
        st.sampled_from(["y", "m", "d", "min", "s", "ms"] if with_time else ["y", "m", "d"])
    )
    out = f"{year:04d}"
    if precision == "y":
        return out
    out += f"-{draw(st.sampled_from([1, 6, 12])):02d}"
    if precision == "m":
        return out
    out += f"-{draw(st.sampled_from([1, 15, 28, 31 if out.endswith('12') else 30 if out.endswith('06') else 31])):02d}"
    if precision == "d":
        return out
    out += (
        f"T{draw(st.sampled_from([0, 1, 12, 22, 23])):02d}:{draw(st.sampled_from([0, 30, 59])):02d}"
    )
    if precision != "min":
        out += f":{draw(st.sampled_from([0, 59])):02d}"
        if precision == "ms":
            out += "." + draw(st.sampled_from(["5", "123", "000"]))
    return out + draw(st.sampled_from(ZONES))


@st.composite
def date_times(draw) -> str:
    """Observation.effectiveDateTime: a date (any precision) or a dateTime with seconds and zone."""
    if draw(st.booleans()):
        return draw(dates(with_time=False))
    value = draw(dates(with_time=True))
    if re.fullmatch(r".{10}T\d\d:\d\d(Z|[+-].*)", value):  # an R4 dateTime with a time has seconds
        value = value[:16] + ":00" + value[16:]
    return value


PREFIXES = ["", "eq", "ne", "gt", "lt", "ge", "le", "sa", "eb"]


@SETTINGS
@given(
    birth_dates=st.lists(st.none() | dates(with_time=False), min_size=1, max_size=6),
    prefix=st.sampled_from(PREFIXES),
    data=st.data(),
    count=counts,
)
def test_birthdate_search(app, client, birth_dates, prefix, data, count):
    reset(app)
    for i, value in enumerate(birth_dates):
        patient: dict = {"resourceType": "Patient", "id": f"p{i}"}
        if value:
            patient["birthDate"] = value
        put(client, patient)
    present = [v for v in birth_dates if v]
    how = data.draw(st.sampled_from(["random", "same", "next", "previous"]), label="how")
    if how == "random" or not present:
        search = data.draw(dates(with_time=True), label="search")
    else:
        # A stored value, or the period of the same precision just after / before it.
        value = data.draw(st.sampled_from(present), label="of")
        start, end = as_range(value)
        moment = {"same": start, "next": end, "previous": start - timedelta(days=1)}[how]
        search = moment.strftime("%Y-%m-%d")[: len(value)]
    got = search_all(
        client, with_count(f"Patient?birthdate={prefix}{quote(search, safe='')}", count)
    )
    expected = [
        f"p{i}"
        for i, value in enumerate(birth_dates)
        if value and date_matches(value, prefix or "eq", search)
    ]
    event("no match" if not expected else "some match")
    assert sorted(got) == sorted(expected), (prefix, search, birth_dates)


@SETTINGS
@given(
    effective=st.lists(date_times() | periods(), min_size=1, max_size=6),
    prefix=st.sampled_from(PREFIXES),
    data=st.data(),
    count=counts,
)
def test_observation_date_search(app, client, effective, prefix, data, count):
    reset(app)
    for i, value in enumerate(effective):
        put(
            client,
            {
                "resourceType": "Observation",
                "id": f"o{i}",
                "status": "final",
                "code": {"text": "x"},
                **(
                    {"effectiveDateTime": value}
                    if isinstance(value, str)
                    else {
                        "effectivePeriod": {
                            k: v for k, v in zip(("start", "end"), value, strict=True) if v
                        }
                    }
                ),
            },
        )
    if data.draw(st.booleans(), label="derived"):
        search = data.draw(
            st.sampled_from(
                [v for e in effective for v in ([e] if isinstance(e, str) else e) if v]
            ),
            label="search",
        )
    else:
        search = data.draw(dates(with_time=True), label="search")
    got = search_all(
        client, with_count(f"Observation?date={prefix}{quote(search, safe='')}", count)
    )
    expected = [
        f"o{i}" for i, value in enumerate(effective) if date_matches(value, prefix or "eq", search)
    ]
    event("no match" if not expected else "some match")
    assert sorted(got) == sorted(expected), (prefix, search, effective)


# --------------------------------------------------------------------------- 4. quantity

UCUM = "http://unitsofmeasure.org"
TO_MG = {"mg": Decimal(1), "g": Decimal(1000), "kg": Decimal(1000000)}
decimal_texts = st.builds(
    lambda whole, frac: f"{whole}" if frac is None else f"{whole}.{frac}",
    st.integers(-3, 60),
    st.none() | st.sampled_from(["0", "4", "5", "45", "05", "00", "001", "999", "35", "0000005"]),
)


def half_unit(number: Decimal) -> Decimal:
    """Half of one unit in the last digit given: ``5.4`` -> 0.05, ``100`` -> 0.5."""
    return Decimal(1).scaleb(number.as_tuple().exponent) / 2


def quantity_matches(value_mg: Decimal, prefix: str, number: Decimal, unit: str) -> bool:
    factor = TO_MG[unit]
    exact = number * factor
    low, high = (number - half_unit(number)) * factor, (number + half_unit(number)) * factor
    in_range = low <= value_mg < high
    return {
        "eq": in_range,
        "ne": not in_range,
        "gt": value_mg > exact,
        "lt": value_mg < exact,
        "ge": value_mg >= exact,
        "le": value_mg <= exact,
        "sa": value_mg > exact,
        "eb": value_mg < exact,
    }[prefix]


@SETTINGS
@given(
    quantities=st.lists(
        st.tuples(decimal_texts, st.sampled_from(list(TO_MG))), min_size=1, max_size=6
    ),
    prefix=st.sampled_from(PREFIXES),
    data=st.data(),
    count=counts,
)
def test_quantity_search(app, client, quantities, prefix, data, count):
    reset(app)
    for i, (value, unit) in enumerate(quantities):
        body = orjson.dumps(
            {
                "resourceType": "Observation",
                "id": f"o{i}",
                "status": "final",
                "code": {"text": "x"},
                "valueQuantity": {"value": "__V__", "unit": unit, "system": UCUM, "code": unit},
            }
        ).decode()
        put_raw(client, "Observation", f"o{i}", body.replace('"__V__"', value))
    unit = data.draw(st.sampled_from(list(TO_MG)), label="unit")
    if data.draw(st.booleans(), label="derived"):
        # A stored value converted to the search unit (exact, as Decimal), sometimes rounded.
        value, stored_unit = data.draw(st.sampled_from(quantities), label="stored")
        converted = Decimal(value) * TO_MG[stored_unit] / TO_MG[unit]
        places = data.draw(st.integers(0, 4), label="places")
        how = data.draw(st.sampled_from(["rounded", "exact", "low edge", "high edge"]), label="how")
        if how == "rounded":
            number_text = f"{converted:.{places}f}"
        elif how == "exact":
            number_text = f"{converted:f}"
        else:
            # A number whose implicit range starts (or ends) exactly at the stored value.
            half = Decimal(5).scaleb(-places - 1)
            edge = converted + half if how == "low edge" else converted - half
            rounded = Decimal(f"{edge:.{places}f}")
            number_text = f"{edge:.{places}f}" if rounded == edge else f"{converted:f}"
    else:
        number_text = data.draw(decimal_texts, label="number")
    # number|system|code (UCUM: converted), number||code (as written), number (any unit).
    form = data.draw(st.sampled_from(["ucum", "ucum", "no system", "number"]), label="form")
    suffix = {"ucum": f"|{quote(UCUM, safe='')}|{unit}", "no system": f"||{unit}", "number": ""}[
        form
    ]
    got = search_all(
        client, with_count(f"Observation?value-quantity={prefix}{number_text}{suffix}", count)
    )
    number = Decimal(number_text)
    if form == "ucum":
        expected = [
            f"o{i}"
            for i, (value, stored_unit) in enumerate(quantities)
            if quantity_matches(Decimal(value) * TO_MG[stored_unit], prefix or "eq", number, unit)
        ]
    else:  # the value as written, in the same unit or in any unit
        expected = [
            f"o{i}"
            for i, (value, stored_unit) in enumerate(quantities)
            if (form == "number" or stored_unit == unit)
            and quantity_matches(Decimal(value), prefix or "eq", number, "mg")
        ]
    event("no match" if not expected else "some match")
    assert sorted(got) == sorted(expected), (prefix, number_text, unit, quantities)


# --------------------------------------------------------------------------- 5. paging


@SETTINGS
@given(
    patients=st.lists(
        st.tuples(
            st.sampled_from(["Ab", "ab", "Éb", "Иа", "Zz", "b"]), st.none() | dates(with_time=False)
        ),
        min_size=0,
        max_size=25,
    ),
    count=st.integers(1, 6),
    sort=st.sampled_from(
        [
            None,
            "birthdate",
            "-family",
            "family",
            "-birthdate",
            "family,-birthdate",
            "-family,birthdate",
        ]
    ),
    insert_after=st.none() | st.integers(0, 5),
    inserted=st.tuples(st.sampled_from(["Aa", "Zzz", "Иа"]), st.none() | dates(with_time=False)),
    name_filter=st.sampled_from([None, "a", "иа"]),
)
def test_paging_visits_every_match_once(
    app, client, patients, count, sort, insert_after, inserted, name_filter
):
    reset(app)

    def patient(pid, family, birth):
        # Two names with the same family: two index rows that match one resource.
        names = [{"family": family}, {"family": family, "use": "old"}]
        resource: dict = {"resourceType": "Patient", "id": pid, "name": names}
        if birth:
            resource["birthDate"] = birth
        return resource

    def wanted(family: str) -> bool:
        return name_filter is None or fold(family).startswith(fold(name_filter))

    for i, (family, birth) in enumerate(patients):
        put(client, patient(f"p{i}", family, birth))
    query = f"Patient?_count={count}" + (f"&_sort={sort}" if sort else "")
    if name_filter is not None:
        query += f"&name={name_filter}"
    url: str | None = f"{BASE}/{query}"
    seen: list[str] = []
    forward_pages: list[list[str]] = []
    pages = 0
    last_bundle: dict = {}
    while url:
        bundle = page(client, url)
        last_bundle = bundle
        entries = match_ids(bundle)
        assert len(entries) <= count
        seen.extend(entries)
        forward_pages.append(entries)
        if insert_after is not None and pages == insert_after:
            put(client, patient("new", *inserted))
        url = next_url(bundle)
        pages += 1
        assert pages <= len(patients) + 3
    assert len(seen) == len(set(seen)), seen
    originals = {f"p{i}" for i, (family, _) in enumerate(patients) if wanted(family)}
    assert originals <= set(seen), (sorted(originals - set(seen)), seen)
    assert set(seen) - originals <= ({"new"} if wanted(inserted[0]) else set())
    if sort and insert_after is None:
        # The order follows the sort keys (ascending: the least value, descending:
        # the greatest); a resource missing a key sorts after those that have it,
        # in either direction; ties are broken by id.
        def keys(pid):
            family, birth = patients[int(pid[1:])]
            out = []
            for part in sort.split(","):
                descending = part.startswith("-")
                if part.endswith("family"):
                    out.append((fold(family), descending))
                else:
                    value = None if birth is None else as_range(birth)[1 if descending else 0]
                    out.append((value, descending))
            return out

        def compare(a, b):
            for (x, descending), (y, _) in zip(keys(a), keys(b), strict=True):
                if x == y:
                    continue
                if x is None or y is None:
                    return 1 if x is None else -1
                return (-1 if x < y else 1) * (-1 if descending else 1)
            return (a > b) - (a < b)

        assert seen == sorted(seen, key=functools.cmp_to_key(compare)), seen

    if insert_after is None and forward_pages:
        # Following `previous` from the last page gives the same pages backwards.
        url, backward_pages = previous_url(last_bundle), []
        while url:
            bundle = page(client, url)
            backward_pages.append(match_ids(bundle))
            url = previous_url(bundle)
            assert len(backward_pages) <= len(forward_pages)
        assert backward_pages == forward_pages[-2::-1], (forward_pages, backward_pages)
