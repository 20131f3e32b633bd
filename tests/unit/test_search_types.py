"""The search types (fhirserver.search.types.*): index rows from realistic values,
conditions executed for real on SQLite and, when FHIRSERVER_TEST_POSTGRES_URL is
set, on PostgreSQL — http://hl7.org/fhir/R4/search.html

Values are shaped after the R4 examples (../shared/fhir-data/r4-examples).
Each test indexes a few "resources" (primary keys 1, 2, ...) and asserts which
ones a search value finds.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import create_engine, func, insert, select, text
from sqlalchemy.pool import StaticPool

from fhirserver.errors import BadRequest
from fhirserver.search import ucum
from fhirserver.search.expressions import Node
from fhirserver.search.normalize import MAX_LENGTH, normalize_text
from fhirserver.search.registry import SearchParameter
from fhirserver.search.types import INDEXED_TYPES, SearchContext, module_for
from fhirserver.search.types import date as date_type
from fhirserver.search.types import number as number_type
from fhirserver.search.types import quantity as quantity_type
from fhirserver.search.types import reference as reference_type
from fhirserver.search.types import string as string_type
from fhirserver.search.types import token as token_type
from fhirserver.search.types import uri as uri_type
from fhirserver.storage.session import normalize_url
from fhirserver.storage.tables import metadata, resource

POSTGRES_URL = os.environ.get("FHIRSERVER_TEST_POSTGRES_URL")
BACKENDS = ["sqlite"] + (["postgres"] if POSTGRES_URL else [])
BASE_URL = "http://fhir.example.org/base"
UCUM = "http://unitsofmeasure.org"

GENDERS = "http://hl7.org/fhir/ValueSet/administrative-gender"
GLUCOSE = "http://example.org/ValueSet/glucose"
VALUE_SETS: dict[str, list[tuple[str | None, str]]] = {
    GENDERS: [
        ("http://hl7.org/fhir/administrative-gender", "male"),
        ("http://hl7.org/fhir/administrative-gender", "female"),
    ],
    GLUCOSE: [("http://loinc.org", "15074-8"), ("http://loinc.org", "2339-0")],
    "http://example.org/ValueSet/empty": [],
}
CONTEXT = SearchContext(base_url=BASE_URL, value_set_codes=VALUE_SETS.get)


# -- database ------------------------------------------------------------------


@pytest.fixture(scope="module", params=BACKENDS)
def engine(request) -> Iterator:
    if request.param == "sqlite":
        engine = create_engine("sqlite://", poolclass=StaticPool)
        metadata.create_all(engine)
        yield engine
        engine.dispose()
        return
    # A private schema on the given server, dropped at the end.
    url = normalize_url(POSTGRES_URL)
    schema = f"test_search_types_{uuid.uuid4().hex[:12]}"
    admin = create_engine(url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine = create_engine(url, connect_args={"options": f"-csearch_path={schema}"})
    try:
        metadata.create_all(engine)
        yield engine
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


class Index:
    """Index rows of one module in a rolled-back transaction, and search them."""

    def __init__(self, conn, module, parameter: SearchParameter):
        self.conn, self.module, self.parameter = conn, module, parameter

    def add(self, pk: int, *nodes: Node, **index_options) -> list[dict]:
        rows = self.module.index_rows(list(nodes), self.parameter, **index_options)
        if rows:
            self.conn.execute(
                insert(self.module.TABLE),
                [
                    {
                        **row,
                        "resource_pk": pk,
                        "resource_type": "Test",
                        "param": self.parameter.code,
                    }
                    for row in rows
                ],
            )
        return rows

    def find(
        self, value: str, modifier: str | None = None, *, context: SearchContext = CONTEXT
    ) -> set[int]:
        table = self.module.TABLE.alias()
        condition = self.module.condition(table, value, modifier, self.parameter, context)
        query = select(table.c.resource_pk).where(table.c.param == self.parameter.code, condition)
        return set(self.conn.scalars(query))

    def sorted(self, descending: bool = False) -> list[int]:
        table = self.module.TABLE.alias()
        value = self.module.sort_value(table, descending)
        key = (func.max(value) if descending else func.min(value)).label("key")
        query = select(table.c.resource_pk, key).group_by(table.c.resource_pk)
        rows = list(self.conn.execute(query))
        # Resources without a value (NULL key) sort last either way, as the planner does.
        valued = sorted(
            (r for r in rows if r.key is not None),
            key=lambda r: (r.key, r.resource_pk),
            reverse=descending,
        )
        return [r.resource_pk for r in valued] + sorted(
            r.resource_pk for r in rows if r.key is None
        )


@pytest.fixture
def conn(engine):
    with engine.connect() as connection:
        transaction = connection.begin()
        try:
            yield connection
        finally:
            transaction.rollback()


def parameter(code: str, type_: str, target: tuple[str, ...] = ()) -> SearchParameter:
    return SearchParameter(
        url=f"http://example.org/SearchParameter/{code}",
        code=code,
        type=type_,
        base=("Test",),
        expression=f"Test.{code}",
        target=target,
    )


def test_every_type_module_follows_the_contract():
    for search_type in INDEXED_TYPES:
        module = module_for(search_type)
        assert module.TABLE.name == f"search_{search_type}"
        assert isinstance(module.MODIFIERS, frozenset)
        assert (
            callable(module.index_rows)
            and callable(module.condition)
            and callable(module.sort_value)
        )


# -- normalize -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Иванов", "иванов"),
        ("ИВАНОВ", "Иванов"),
        ("Ёлкин", "елкин"),
        ("ёлкин", "Елкин"),
        ("Йорк", "иорк"),  # NFKD decomposes Й into И + breve (documented)
        ("Müller", "muller"),
        ("Sébastien", "SEBASTIEN"),
        ("Straße", "strasse"),
        ("Søren", "soren"),
        ("  Peter \t James ", "peter james"),
        ("Ｐｅｔｅｒ", "peter"),  # full-width
        ("İstanbul", "istanbul"),
    ],
)
def test_normalize_text_folds_case_and_accents(a, b):
    assert normalize_text(a) == normalize_text(b)


def test_normalize_text_is_lower_case_without_marks():
    assert normalize_text("Chalmers") == "chalmers"
    assert normalize_text("Йорк") == "иорк"
    assert normalize_text("Ёлка") == "елка"


def test_normalize_text_is_cut_to_the_column_length():
    assert len(normalize_text("é" * 2000)) == MAX_LENGTH == 512


# -- string ----------------------------------------------------------------------

CHALMERS = {"use": "official", "family": "Chalmers", "given": ["Peter", "James"]}
ADDRESS = {
    "use": "home",
    "type": "both",
    "text": "534 Erewhon St PeasantVille, Rainbow, Vic  3999",
    "line": ["534 Erewhon St"],
    "city": "PleasantVille",
    "district": "Rainbow",
    "state": "Vic",
    "postalCode": "3999",
    "period": {"start": "1974-12-25"},
}


@pytest.fixture
def strings(conn) -> Index:
    index = Index(conn, string_type, parameter("name", "string"))
    index.add(1, Node(CHALMERS, "HumanName"), Node({"use": "usual", "given": ["Jim"]}, "HumanName"))
    index.add(2, Node({"family": "Иванов", "given": ["Иван", "Петрович"]}, "HumanName"))
    index.add(
        3,
        Node(
            {
                "text": "Dr. Sébastien Müller",
                "family": "Müller",
                "given": ["Sébastien"],
                "prefix": ["Dr."],
            },
            "HumanName",
        ),
    )
    index.add(4, Node(ADDRESS, "Address"))
    index.add(5, Node("100% natural_100", "string"))
    index.add(6, Node({"family": "Йорк"}, "HumanName"))
    index.add(7, Node({"family": "Ёлкин"}, "HumanName"))
    index.add(8, Node("**Bold** markdown", "markdown"))
    return index


def test_string_index_rows_of_a_human_name():
    rows = string_type.index_rows([Node(CHALMERS, "HumanName")], parameter("name", "string"))
    assert rows == [
        {"normalized": "chalmers", "exact": "Chalmers"},
        {"normalized": "peter", "exact": "Peter"},
        {"normalized": "james", "exact": "James"},
        {"normalized": "peter james chalmers", "exact": "Peter James Chalmers"},
    ]


def test_string_index_rows_of_an_address():
    rows = string_type.index_rows([Node(ADDRESS, "Address")], parameter("address", "string"))
    assert [r["exact"] for r in rows] == [
        "534 Erewhon St",
        "PleasantVille",
        "Rainbow",
        "Vic",
        "3999",
        ADDRESS["text"],
    ]
    assert rows[-1]["normalized"] == "534 erewhon st peasantville, rainbow, vic 3999"


@pytest.mark.parametrize(
    ("value", "modifier", "expected"),
    [
        ("chal", None, {1}),
        ("Chalmers", None, {1}),
        ("CHALMERS", None, {1}),
        ("peter", None, {1}),
        ("jim", None, {1}),
        ("peter james chalmers", None, {1}),
        ("halmers", None, set()),  # starts-with, not contains
        ("halm", "contains", {1}),
        ("Chalmers", "exact", {1}),
        ("chalmers", "exact", set()),
        ("Chalm", "exact", set()),
        ("иванов", None, {2}),
        ("ИВАН", None, {2}),
        ("петр", None, {2}),
        ("muller", None, {3}),
        ("MÜL", None, {3}),
        ("sebastien", None, {3}),
        ("dr. seb", None, {3}),
        ("Müller", "exact", {3}),
        ("Muller", "exact", set()),
        ("pleasantville", None, {4}),
        ("3999", None, {4}),
        ("534 erewhon", None, {4}),
        ("rainbow", None, {4}),
        ("vic", None, {4}),
        ("ville", "contains", {4}),
        # LIKE wildcards in the search value are literal characters
        ("100%", None, {5}),
        ("100_", None, set()),
        ("1%", None, set()),
        ("l_1", "contains", {5}),
        ("l%1", "contains", set()),
        ("_", "contains", {5}),
        ("%", "contains", {5}),
        ("a_", "contains", set()),
        ("100% natural_100", "exact", {5}),
        ("йорк", None, {6}),
        ("иорк", None, {6}),
        ("елкин", None, {7}),
        ("ёлкин", None, {7}),
        ("**bold", None, {8}),
        # escapes of the search syntax are removed
        (r"100% natural_100\,", "contains", set()),
    ],
)
def test_string_search(strings, value, modifier, expected):
    assert strings.find(value, modifier) == expected


def test_string_search_unescapes_commas(conn):
    index = Index(conn, string_type, parameter("name", "string"))
    index.add(1, Node("Smith, John", "string"))
    assert index.find(r"smith\, j") == {1}
    assert index.find(r"Smith\, John", "exact") == {1}


@pytest.mark.parametrize(
    ("value", "modifier"), [("", None), ("  ", None), ("x", "text"), ("x", "below")]
)
def test_string_search_rejects_bad_values(strings, value, modifier):
    with pytest.raises(BadRequest):
        strings.find(value, modifier)


def test_string_sort_key(strings):
    order = strings.sorted()
    assert order.index(4) < order.index(1) < order.index(3)  # "3999" < "chalmers" < "dr. ..."
    descending = strings.sorted(descending=True)
    assert (
        descending.index(4) < descending.index(3) < descending.index(1)
    )  # "vic" > "sebastien" > "peter..."


# -- token -----------------------------------------------------------------------

GLUCOSE_CODE = {
    "coding": [
        {
            "system": "http://loinc.org",
            "code": "15074-8",
            "display": "Glucose [Moles/volume] in Blood",
        }
    ]
}
BURN = {
    "coding": [{"system": "http://snomed.info/sct", "code": "39065001", "display": "Burn of ear"}],
    "text": "Burnt Ear",
}
MRN = {
    "use": "usual",
    "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
    "system": "urn:oid:1.2.36.146.595.217.0.1",
    "value": "12345",
    "period": {"start": "2001-05-06"},
    "assigner": {"display": "Acme Healthcare"},
}
V2 = "http://terminology.hl7.org/CodeSystem/v2-0203"


@pytest.fixture
def tokens(conn) -> Index:
    index = Index(conn, token_type, parameter("code", "token"))
    index.add(1, Node(GLUCOSE_CODE, "CodeableConcept"))
    index.add(2, Node(BURN, "CodeableConcept"))
    index.add(3, Node(MRN, "Identifier"))
    index.add(4, Node({"value": "12345", "type": {"text": "Medical record number"}}, "Identifier"))
    index.add(5, Node("male", "code"))
    index.add(6, Node(True, "boolean"))
    index.add(
        7,
        Node(
            {"system": "phone", "value": "(03) 5555 6473", "use": "work", "rank": 1}, "ContactPoint"
        ),
    )
    index.add(8, Node({"system": "http://loinc.org", "code": "15074-8"}, "Coding"))
    index.add(9, Node({"text": "100% pure_thing"}, "CodeableConcept"))
    index.add(10, Node("a|b", "string"))
    index.add(11, Node({"system": "http://acme.org/x|y", "code": "c"}, "Coding"))
    return index


def test_token_index_rows():
    code = parameter("code", "token")
    assert token_type.index_rows([Node(BURN, "CodeableConcept")], code) == [
        {"system": "http://snomed.info/sct", "code": "39065001", "text": "burn of ear"},
        {"system": None, "code": None, "text": "burnt ear"},
    ]
    assert token_type.index_rows([Node(MRN, "Identifier")], code) == [
        {"system": "urn:oid:1.2.36.146.595.217.0.1", "code": "12345", "text": None},
        {"system": f"{V2}|MR", "code": "12345", "text": None},  # the :of-type marker row
    ]
    assert token_type.index_rows([Node(False, "boolean"), Node("female", "code")], code) == [
        {"system": None, "code": "false", "text": None},
        {"system": None, "code": "female", "text": None},
    ]
    assert token_type.index_rows([Node({"use": "home"}, "ContactPoint")], code) == []


@pytest.mark.parametrize(
    ("value", "modifier", "expected"),
    [
        ("15074-8", None, {1, 8}),
        ("http://loinc.org|15074-8", None, {1, 8}),
        ("http://snomed.info/sct|15074-8", None, set()),
        ("|15074-8", None, set()),
        ("http://snomed.info/sct|", None, {2}),
        ("http://loinc.org|", None, {1, 8}),
        ("39065001", None, {2}),
        ("12345", None, {3, 4}),
        ("urn:oid:1.2.36.146.595.217.0.1|12345", None, {3}),
        ("|12345", None, {4}),
        ("male", None, {5}),
        ("|male", None, {5}),
        ("Male", None, set()),  # codes are case-sensitive
        ("true", None, {6}),
        ("false", None, set()),
        ("(03) 5555 6473", None, {7}),
        (r"a\|b", None, {10}),
        (r"http://acme.org/x\|y|c", None, {11}),
        # :of-type marker rows are reachable only through :of-type
        (f"{V2}|", None, set()),
        (f"{V2}|MR", None, set()),
        # :text — starts-with on the normalized display / text
        ("glucose", "text", {1}),
        ("GLUCOSE [moles", "text", {1}),
        ("blood", "text", set()),
        ("burn", "text", {2}),
        ("burnt", "text", {2}),
        ("burn of", "text", {2}),
        ("medical", "text", {4}),
        ("100%", "text", {9}),
        ("100% pure_", "text", {9}),
        ("100_", "text", set()),
        ("1%", "text", set()),
        # :of-type — type-system|type-code|value
        (f"{V2}|MR|12345", "of-type", {3}),
        (f"{V2}|MR|99999", "of-type", set()),
        (f"{V2}|DL|12345", "of-type", set()),
        ("http://other|MR|12345", "of-type", set()),
        # :in — the codes of a ValueSet
        (GLUCOSE, "in", {1, 8}),
        (GENDERS, "in", {5}),  # a code primitive has no system: matched on the code
        ("http://example.org/ValueSet/empty", "in", set()),
    ],
)
def test_token_search(tokens, value, modifier, expected):
    assert tokens.find(value, modifier) == expected


@pytest.mark.parametrize(
    ("value", "modifier"),
    [
        ("", None),
        ("|", None),
        ("a|b|c", None),
        ("", "text"),
        ("MR|12345", "of-type"),
        (f"{V2}|MR|", "of-type"),
        (f"{V2}||12345", "of-type"),
        ("12345", "of-type"),
        ("http://example.org/ValueSet/unknown", "in"),
        ("", "in"),
        ("http://loinc.org|15074-8", "below"),
        ("http://loinc.org|15074-8", "above"),
        ("x", "exact"),
    ],
)
def test_token_search_rejects_bad_values(tokens, value, modifier):
    with pytest.raises(BadRequest):
        tokens.find(value, modifier)


def test_token_of_type_without_a_type_system(conn):
    index = Index(conn, token_type, parameter("identifier", "token"))
    index.add(1, Node({"type": {"coding": [{"code": "MR"}]}, "value": "7"}, "Identifier"))
    assert index.find("|MR|7", "of-type") == {1}
    assert index.find(f"{V2}|MR|7", "of-type") == set()


def test_token_long_codes_are_cut_to_the_column(conn):
    index = Index(conn, token_type, parameter("identifier", "token"))
    long_value = "x" * 700
    index.add(1, Node({"system": "urn:a", "value": long_value}, "Identifier"))
    assert index.find(f"urn:a|{long_value}") == {1}


def test_token_sort_key(tokens):
    order = tokens.sorted()
    assert order.index(3) < order.index(1) < order.index(5)  # "12345" < "15074-8" < "male"


# -- number ----------------------------------------------------------------------


@pytest.fixture
def numbers(conn) -> Index:
    index = Index(conn, number_type, parameter("probability", "number"))
    values = {
        1: Decimal("100"),
        2: Decimal("99.6"),
        3: Decimal("100.4"),
        4: Decimal("100.5"),
        5: Decimal("99.4"),
        6: Decimal("0.5"),
        7: -3,
        8: 150,
    }
    for pk, value in values.items():
        index.add(pk, Node(value, "integer" if isinstance(value, int) else "decimal"))
    return index


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("100", {1, 2, 3}),  # [99.5, 100.5)
        ("eq100", {1, 2, 3}),
        ("100.00", {1}),  # [99.995, 100.005)
        ("1e2", {1, 2, 3, 4, 5}),  # one significant figure: [50, 150)
        ("1.00E2", {1, 2, 3}),
        ("ne100", {4, 5, 6, 7, 8}),
        ("gt100", {3, 4, 8}),  # prefixes other than eq/ne/ap ignore the precision
        ("ge100", {1, 3, 4, 8}),
        ("lt100", {2, 5, 6, 7}),
        ("le100", {1, 2, 5, 6, 7}),
        ("sa100", {3, 4, 8}),
        ("eb100", {2, 5, 6, 7}),
        ("ap100", {1, 2, 3, 4, 5}),  # within 10%: [90, 110]
        ("ap0.5", {6}),
        ("-3", {7}),
        ("lt0", {7}),
        ("0.5", {6}),
        (".5", {6}),
        ("150", {8}),
        ("gt150", set()),
    ],
)
def test_number_search(numbers, value, expected):
    assert numbers.find(value) == expected


@pytest.mark.parametrize(
    ("value", "modifier"),
    [
        ("", None),
        ("abc", None),
        ("NaN", None),
        ("inf", None),
        ("1e", None),
        ("zz5", None),
        ("gt", None),
        ("5 5", None),
        ("1.2.3", None),
        ("5", "exact"),
    ],
)
def test_number_search_rejects_bad_values(numbers, value, modifier):
    with pytest.raises(BadRequest):
        numbers.find(value, modifier)


def test_number_index_rows():
    probability = parameter("probability", "number")
    rows = number_type.index_rows(
        [
            Node(Decimal("0.02"), "decimal"),
            Node(3, "integer"),
            Node(Decimal("0.02"), "decimal"),
            Node({"low": {"value": Decimal("0.1")}, "high": {"value": Decimal("0.3")}}, "Range"),
        ],
        probability,
    )
    assert rows == [
        {"value": Decimal("0.02")},
        {"value": Decimal(3)},
        {"value": Decimal("0.1")},
        {"value": Decimal("0.3")},
    ]


def test_number_sort_key(numbers):
    assert numbers.sorted() == [7, 6, 5, 2, 1, 3, 4, 8]
    assert numbers.sorted(descending=True) == [8, 4, 3, 1, 2, 5, 6, 7]


# -- date ------------------------------------------------------------------------


@pytest.fixture
def dates(conn) -> Index:
    index = Index(conn, date_type, parameter("date", "date"))
    index.add(1, Node("1974-12-25", "date"))
    index.add(2, Node("2013-04-02T09:30:10+01:00", "dateTime"))
    index.add(3, Node({"start": "2013-01-01", "end": "2013-06-30"}, "Period"))
    index.add(4, Node({"start": "2012-06-01"}, "Period"))  # ongoing
    index.add(5, Node("2013-04-03T15:30:10.123Z", "instant"))
    index.add(
        6,
        Node(
            {
                "event": ["2014-01-05T09:00:00Z"],
                "repeat": {"boundsPeriod": {"start": "2015-01-01", "end": "2015-12-31"}},
            },
            "Timing",
        ),
    )
    index.add(7, Node("2013", "date"))
    index.add(8, Node({"end": "2012-12-31T23:00:00-02:00"}, "Period"))  # = 2013-01-01T01:00Z
    return index


def test_date_index_rows():
    when = parameter("date", "date")
    utc = UTC
    assert date_type.index_rows([Node("2013-04-02T09:30:10+01:00", "dateTime")], when) == [
        {
            "low": datetime(2013, 4, 2, 8, 30, 10, tzinfo=utc),
            "high": datetime(2013, 4, 2, 8, 30, 11, tzinfo=utc),
        }
    ]
    assert date_type.index_rows(
        [
            Node(
                {"start": "2015-01-17T16:00:00+10:00", "end": "2015-01-17T16:30:00+10:00"}, "Period"
            )
        ],
        when,
    ) == [
        {
            "low": datetime(2015, 1, 17, 6, 0, tzinfo=utc),
            "high": datetime(2015, 1, 17, 6, 30, 1, tzinfo=utc),
        }
    ]
    assert date_type.index_rows([Node({"end": "2002"}, "Period")], when) == [
        {"low": date_type.FAR_PAST, "high": datetime(2003, 1, 1, tzinfo=utc)}
    ]
    timing = {
        "event": ["2015-01-15T22:00:00+11:00"],
        "repeat": {"frequency": 1, "period": 24, "periodUnit": "h"},
    }
    assert date_type.index_rows([Node(timing, "Timing")], when) == [
        {
            "low": datetime(2015, 1, 15, 11, 0, tzinfo=utc),
            "high": datetime(2015, 1, 15, 11, 0, 1, tzinfo=utc),
        }
    ]
    assert date_type.index_rows([Node({}, "Period"), Node("not a date", "dateTime")], when) == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2013", {2, 3, 5, 7}),
        ("eq2013", {2, 3, 5, 7}),
        ("ne2013", {1, 4, 6, 8}),
        ("gt2013", {4, 6}),
        ("lt2013", {1, 4, 8}),
        ("ge2013", {2, 3, 4, 5, 6, 7}),
        ("le2013", {1, 2, 3, 4, 5, 7, 8}),
        ("sa2013", {6}),
        ("eb2013", {1}),
        ("2013-04", {2, 5}),
        ("2013-04-02", {2}),
        ("2013-04-02T09:30:10+01:00", {2}),
        ("2013-04-02T08:30:10Z", {2}),
        ("2013-04-02T08:30", {2}),
        ("2013-04-03T15:30:10.123Z", {5}),
        ("1974-12-25", {1}),
        ("gt1974-12-25", {2, 3, 4, 5, 6, 7, 8}),
        ("le1974-12-25", {1, 8}),
        ("2015", {6}),
        ("2014-01-05", {6}),
        ("sa2014-06", {6}),
        ("eb2012-06-01", {1}),  # period 8 ends at 2013-01-01T01:00:01Z (its end's second)
        ("eb2013-01-01T01:00:01Z", {1, 8}),
        ("eb2013-01-01T01:00:00Z", {1}),
        ("gt2100", {4}),
        ("lt1900", {8}),
    ],
)
def test_date_search(dates, value, expected):
    assert dates.find(value) == expected


def test_date_approximately_is_within_ten_percent_of_the_time_from_now(conn):
    index = Index(conn, date_type, parameter("date", "date"))
    ten_years_ago = datetime.now(UTC) - timedelta(days=3652)
    # the margin is ~1 year either side
    index.add(
        1, Node((ten_years_ago + timedelta(days=180)).strftime("%Y-%m-%dT%H:%M:%SZ"), "dateTime")
    )
    index.add(2, Node((ten_years_ago - timedelta(days=300)).strftime("%Y-%m-%d"), "date"))
    index.add(
        3, Node((ten_years_ago + timedelta(days=500)).strftime("%Y-%m-%dT%H:%M:%SZ"), "dateTime")
    )
    index.add(4, Node((ten_years_ago - timedelta(days=600)).strftime("%Y-%m-%d"), "date"))
    assert index.find("ap" + ten_years_ago.strftime("%Y-%m-%d")) == {1, 2}
    assert index.find(ten_years_ago.strftime("%Y-%m-%d")) == set()


def test_date_year_9999(conn):
    index = Index(conn, date_type, parameter("date", "date"))
    rows = index.add(1, Node({"start": "2020-01-01", "end": "9999-12-31"}, "Period"))
    assert rows == [{"low": datetime(2020, 1, 1, tzinfo=UTC), "high": date_type.FAR_FUTURE}]
    index.add(2, Node("9999-12-31", "date"))
    assert index.find("9999") == {2}
    assert index.find("gt9000") == {1, 2}


@pytest.mark.parametrize(
    ("value", "modifier"),
    [
        ("", None),
        ("2013-13-01", None),
        ("2013-02-30", None),
        ("20130101", None),
        ("xx2013", None),
        ("gt", None),
        ("13", None),
        ("2013-04-02T25:00", None),
        ("2013-04-02T10:00+25:00", None),
        ("today", None),
        ("2013", "exact"),
        ("2013", "missingx"),
    ],
)
def test_date_search_rejects_bad_values(dates, value, modifier):
    with pytest.raises(BadRequest):
        dates.find(value, modifier)


def test_date_sort_key(dates):
    assert dates.sorted()[:2] == [8, 1]  # open start first, then 1974
    assert dates.sorted(descending=True)[0] == 4  # the ongoing period


# -- quantity --------------------------------------------------------------------


def _ucum(value: str, code: str, unit: str | None = None) -> dict:
    return {"value": Decimal(value), "unit": unit or code, "system": UCUM, "code": code}


@pytest.fixture
def quantities(conn) -> Index:
    index = Index(conn, quantity_type, parameter("value-quantity", "quantity"))
    index.add(1, Node(_ucum("5.4", "mg"), "Quantity"))
    index.add(2, Node(_ucum("0.0054", "g"), "Quantity"))
    index.add(3, Node(_ucum("6.3", "mmol/L", "mmol/l"), "Quantity"))  # Observation-f001
    index.add(4, Node(_ucum("6300", "umol/L"), "Quantity"))
    index.add(
        5,
        Node(
            {
                "value": Decimal("5.4"),
                "unit": "mg",
                "system": "http://other.org/units",
                "code": "mg",
            },
            "Quantity",
        ),
    )
    index.add(6, Node({"value": Decimal("100"), "currency": "EUR"}, "Money"))
    index.add(7, Node(_ucum("52", "a", "years"), "Age"))  # Condition-f202 onsetAge
    index.add(8, Node(_ucum("120", "mm[Hg]", "mmHg"), "Quantity"))
    index.add(9, Node({"low": _ucum("3.1", "mmol/L"), "high": _ucum("6.2", "mmol/L")}, "Range"))
    index.add(10, Node({"value": Decimal("5.4"), "unit": "mg"}, "Quantity"))
    index.add(11, Node(_ucum("140", "min"), "Duration"))  # Encounter-f001 length
    index.add(12, Node(_ucum("90", "mg/dL"), "Quantity"))
    return index


def test_quantity_index_rows():
    value = parameter("value-quantity", "quantity")
    assert quantity_type.index_rows([Node(_ucum("5.4", "mg"), "Quantity")], value) == [
        {
            "value": Decimal("5.4"),
            "system": UCUM,
            "code": "mg",
            "unit": "mg",
            "canonical_value": Decimal("0.0054"),
            "canonical_code": "g",
        }
    ]
    assert quantity_type.index_rows(
        [Node({"value": Decimal("100"), "currency": "EUR"}, "Money")], value
    ) == [
        {
            "value": Decimal("100"),
            "system": "urn:iso:std:iso:4217",
            "code": "EUR",
            "unit": None,
            "canonical_value": None,
            "canonical_code": None,
        }
    ]
    unknown = quantity_type.index_rows([Node(_ucum("120", "mm[Hg]", "mmHg"), "Quantity")], value)
    assert (
        unknown[0]["canonical_value"] == Decimal("120") and unknown[0]["canonical_code"] == "mm[Hg]"
    )
    assert (
        len(
            quantity_type.index_rows(
                [Node({"low": _ucum("1", "g"), "high": _ucum("2", "g")}, "Range")], value
            )
        )
        == 2
    )
    assert (
        quantity_type.index_rows([Node({"unit": "mg"}, "Quantity"), Node("5 mg", "string")], value)
        == []
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (f"5.4|{UCUM}|mg", {1, 2}),  # 5.4 mg = 0.0054 g
        (f"0.0054|{UCUM}|g", {1, 2}),
        (f"5400|{UCUM}|ug", {1, 2}),
        (f"5.4|{UCUM}|g", set()),
        ("5.4||mg", {1, 5, 10}),  # code or unit, any system
        ("5.4|http://other.org/units|mg", {5}),
        ("5.4", {1, 5, 10}),
        ("5.4||", {1, 5, 10}),
        (f"5.4|{UCUM}|", {1}),
        (f"6.3|{UCUM}|mmol/L", {3, 4}),
        (f"6300|{UCUM}|umol/L", {3, 4}),
        (f"gt6|{UCUM}|mmol/L", {3, 4, 9}),  # the Range's high is 6.2
        (f"lt3.5|{UCUM}|mmol/L", {9}),  # its low is 3.1
        (f"ge6.3|{UCUM}|mmol/L", {3, 4}),
        (f"le6.2|{UCUM}|mmol/L", {9}),
        (f"ne6.3|{UCUM}|mmol/L", {9}),
        (f"sa6.2|{UCUM}|mmol/L", {3, 4}),
        (f"eb6.3|{UCUM}|mmol/L", {9}),
        (f"ap6|{UCUM}|mmol/L", {3, 4, 9}),  # [5.4, 6.6]
        (f"ap5|{UCUM}|mg", {1, 2}),
        ("100|urn:iso:std:iso:4217|EUR", {6}),
        ("100|urn:iso:std:iso:4217|USD", set()),
        (f"52|{UCUM}|a", {7}),
        (f"ge624|{UCUM}|mo", {7}),  # 52 a = 624 mo
        (f"gt624|{UCUM}|mo", set()),
        (f"2.3|{UCUM}|h", {11}),  # 140 min = 2.33 h
        (f"2.33|{UCUM}|h", {11}),
        (f"2.3|{UCUM}|min", set()),
        (f"120|{UCUM}|mm[Hg]", {8}),  # unknown to the table: as written
        ("120||mmHg", {8}),
        (f"0.9|{UCUM}|g/L", {12}),  # 90 mg/dL
        (f"900|{UCUM}|mg/L", {12}),
    ],
)
def test_quantity_search(quantities, value, expected):
    assert quantities.find(value) == expected


@pytest.mark.parametrize(
    ("value", "modifier"),
    [
        ("", None),
        (f"abc|{UCUM}|mg", None),
        ("5.4|mg", None),
        ("5.4|a|b|c", None),
        ("zz5", None),
        (f"|{UCUM}|mg", None),
        ("5", "exact"),
    ],
)
def test_quantity_search_rejects_bad_values(quantities, value, modifier):
    with pytest.raises(BadRequest):
        quantities.find(value, modifier)


def test_quantity_sort_key_uses_canonical_values(conn):
    index = Index(conn, quantity_type, parameter("value-quantity", "quantity"))
    index.add(1, Node(_ucum("1", "kg"), "Quantity"))  # 1000 g
    index.add(2, Node(_ucum("2", "g"), "Quantity"))
    index.add(3, Node(_ucum("500", "mg"), "Quantity"))  # 0.5 g
    assert index.sorted() == [3, 2, 1]


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("g", ("g", Decimal(1))),
        ("kg", ("g", Decimal(1000))),
        ("mg", ("g", Decimal("0.001"))),
        ("ug", ("g", Decimal("0.000001"))),
        ("ng", ("g", Decimal("1E-9"))),
        ("L", ("L", Decimal(1))),
        ("l", ("L", Decimal(1))),
        ("dL", ("L", Decimal("0.1"))),
        ("mL", ("L", Decimal("0.001"))),
        ("uL", ("L", Decimal("0.000001"))),
        ("km", ("m", Decimal(1000))),
        ("cm", ("m", Decimal("0.01"))),
        ("mm", ("m", Decimal("0.001"))),
        ("um", ("m", Decimal("0.000001"))),
        ("[in_i]", ("m", Decimal("0.0254"))),
        ("[ft_i]", ("m", Decimal("0.3048"))),
        ("a", ("s", Decimal(31557600))),
        ("mo", ("s", Decimal(2629800))),
        ("wk", ("s", Decimal(604800))),
        ("d", ("s", Decimal(86400))),
        ("h", ("s", Decimal(3600))),
        ("min", ("s", Decimal(60))),
        ("s", ("s", Decimal(1))),
        ("ms", ("s", Decimal("0.001"))),
        ("mmol/L", ("mol/L", Decimal("0.001"))),
        ("umol/L", ("mol/L", Decimal("0.000001"))),
        ("mg/dL", ("g/L", Decimal("0.01"))),
        ("g/L", ("g/L", Decimal(1))),
        ("mm[Hg]", None),
        ("Cel", None),
        ("%", None),
        ("10*3/uL", None),
        ("kg/m2", None),
        ("", None),
    ],
)
def test_ucum_canonical(code, expected):
    assert ucum.canonical(code) == expected


# -- reference -------------------------------------------------------------------

SUBJECT = parameter("subject", "reference", ("Group", "Patient"))
PATIENT_ONLY = parameter("patient", "reference", ("Patient",))


@pytest.fixture
def references(conn) -> Index:
    index = Index(conn, reference_type, SUBJECT)
    index.add(1, Node({"reference": "Patient/f001", "display": "P. van de Heuvel"}, "Reference"))
    index.add(2, Node({"reference": "Patient/example/_history/2"}, "Reference"))
    index.add(
        3, Node({"reference": f"{BASE_URL}/Patient/f001"}, "Reference"), base_url=BASE_URL + "/"
    )
    index.add(4, Node({"reference": "http://other.org/fhir/Patient/f001"}, "Reference"))
    index.add(5, Node({"reference": "#p1"}, "Reference"))
    index.add(
        6,
        Node(
            {
                "type": "Patient",
                "identifier": {"system": "urn:oid:1.2.36.146.595.217.0.1", "value": "12345"},
            },
            "Reference",
        ),
    )
    index.add(7, Node("http://hl7.org/fhir/Questionnaire/phq-9|1.0", "canonical"))
    index.add(8, Node("http://hl7.org/fhir/Questionnaire/phq-9", "canonical"))
    index.add(9, Node({"reference": "Group/g1"}, "Reference"))
    index.add(
        10, Node({"reference": f"{BASE_URL}/Patient/abs"}, "Reference")
    )  # indexed without base_url
    index.add(11, Node({"reference": "urn:uuid:9d5b2b3e-3b4b-4a0e-8c1b-1f2e3d4c5b6a"}, "Reference"))
    return index


def test_reference_index_rows():
    keys = ("target_type", "target_id", "url", "identifier_system", "identifier_value")

    def row(*values):
        return dict(zip(keys, values, strict=True))

    rows = reference_type.index_rows
    assert rows([Node({"reference": "Patient/f001"}, "Reference")], SUBJECT) == [
        row("Patient", "f001", None, None, None)
    ]
    assert rows([Node({"reference": "Patient/1/_history/3"}, "Reference")], SUBJECT) == [
        row("Patient", "1", None, None, None)
    ]
    absolute = {"reference": f"{BASE_URL}/Patient/1"}
    assert rows([Node(absolute, "Reference")], SUBJECT, base_url=BASE_URL) == [
        row("Patient", "1", None, None, None)
    ]
    assert rows([Node(absolute, "Reference")], SUBJECT) == [
        row(None, None, f"{BASE_URL}/Patient/1", None, None)
    ]
    assert rows([Node({"reference": "#contained"}, "Reference")], SUBJECT) == []
    assert rows([Node({"display": "someone"}, "Reference")], SUBJECT) == []
    logical = {"type": "Patient", "identifier": {"system": "urn:s", "value": "v"}}
    assert rows([Node(logical, "Reference")], SUBJECT) == [row("Patient", None, None, "urn:s", "v")]
    assert rows([Node("http://x.org/Q|2", "canonical")], SUBJECT) == [
        row(None, None, "http://x.org/Q|2", None, None)
    ]
    attachment = {"contentType": "application/pdf", "url": "http://x.org/consent.pdf"}
    assert rows([Node(attachment, "Attachment")], SUBJECT) == [
        row(None, None, "http://x.org/consent.pdf", None, None)
    ]
    assert rows([Node({"title": "terms"}, "Attachment")], SUBJECT) == []


@pytest.mark.parametrize(
    ("value", "modifier", "expected"),
    [
        ("Patient/f001", None, {1, 3}),
        ("f001", None, {1, 3}),
        ("f001", "Patient", {1, 3}),
        ("f001", "Group", set()),
        ("Patient/f001", "Patient", {1, 3}),
        (f"{BASE_URL}/Patient/f001", None, {1, 3}),
        (f"{BASE_URL}/Patient/abs", None, {10}),  # stored absolute, found as written
        ("http://other.org/fhir/Patient/f001", None, {4}),
        ("Patient/example", None, {2}),
        ("Patient/example/_history/2", None, {2}),
        ("example", None, {2}),
        ("g1", None, {9}),
        ("Group/g1", None, {9}),
        ("Patient/g1", None, set()),
        ("urn:uuid:9d5b2b3e-3b4b-4a0e-8c1b-1f2e3d4c5b6a", None, {11}),
        # canonicals: without a version every version matches
        ("http://hl7.org/fhir/Questionnaire/phq-9", None, {7, 8}),
        ("http://hl7.org/fhir/Questionnaire/phq-9|1.0", None, {7}),
        ("http://hl7.org/fhir/Questionnaire/phq-9|2.0", None, set()),
        ("http://hl7.org/fhir/Questionnaire/phq", None, set()),
        # :identifier
        ("urn:oid:1.2.36.146.595.217.0.1|12345", "identifier", {6}),
        ("12345", "identifier", {6}),
        ("|12345", "identifier", set()),
        ("urn:oid:1.2.36.146.595.217.0.1|", "identifier", {6}),
        ("urn:other|12345", "identifier", set()),
    ],
)
def test_reference_search(references, value, modifier, expected):
    assert references.find(value, modifier) == expected


def test_reference_bare_id_with_one_target_type(conn):
    index = Index(conn, reference_type, PATIENT_ONLY)
    index.add(1, Node({"reference": "Patient/7"}, "Reference"))
    index.add(2, Node({"reference": "http://other.org/fhir/Group/7"}, "Reference"))
    assert index.find("7") == {1}
    with pytest.raises(BadRequest):
        index.find("Group/7")  # not a target of the parameter
    assert index.find("http://other.org/fhir/Group/7") == {2}  # another server's URL: as written


def test_reference_search_without_a_base_url(references):
    assert references.find(f"{BASE_URL}/Patient/f001", context=SearchContext()) == set()


@pytest.mark.parametrize(
    ("value", "modifier"),
    [
        ("", None),
        ("Foo/1", None),
        ("Patient/", None),
        ("a b", None),
        ("Group/g1", "Patient"),
        ("http://other.org/fhir/Group/1", "Patient"),
        ("x", "below"),
        ("x", "NotAType"),
        ("", "identifier"),
        ("a|b|c", "identifier"),
        ("|", "identifier"),
    ],
)
def test_reference_search_rejects_bad_values(references, value, modifier):
    with pytest.raises(BadRequest):
        references.find(value, modifier)


def test_reference_target_condition_restricts_to_a_subquery_of_ids(references, conn):
    now = datetime.now(UTC)
    conn.execute(
        insert(resource),
        [
            {
                "resource_type": "Patient",
                "id": i,
                "version_id": 1,
                "last_updated": now,
                "deleted": False,
                "body": b"{}",
            }
            for i in ("f001", "example")
        ],
    )
    table = reference_type.TABLE.alias()
    patients = select(resource.c.id).where(
        resource.c.resource_type == "Patient", resource.c.id == "f001"
    )
    query = select(table.c.resource_pk).where(
        reference_type.target_condition(table, "Patient", patients)
    )
    assert set(conn.scalars(query)) == {1, 3}
    groups = select(resource.c.id).where(resource.c.resource_type == "Group")
    query = select(table.c.resource_pk).where(
        reference_type.target_condition(table, "Group", groups)
    )
    assert set(conn.scalars(query)) == set()


def test_reference_sort_key(references):
    order = references.sorted()
    assert (
        order.index(6) < order.index(2) < order.index(1) < order.index(9)
    )  # "12345" < "example" < "f001" < "g1"


# -- uri -------------------------------------------------------------------------


@pytest.fixture
def uris(conn) -> Index:
    index = Index(conn, uri_type, parameter("url", "uri"))
    index.add(1, Node("http://acme.org/fhir/ValueSet/123", "uri"))
    index.add(2, Node("http://acme.org/fhir", "uri"))
    index.add(3, Node("http://acme.org/fhirx/ValueSet/1", "uri"))
    index.add(4, Node("http://hl7.org/fhir/ValueSet/example|4.0.1", "canonical"))
    index.add(5, Node("urn:oid:1.2.3", "oid"))
    index.add(6, Node("http://acme.org/fhir/ValueSet/a_b", "url"))
    return index


@pytest.mark.parametrize(
    ("value", "modifier", "expected"),
    [
        ("http://acme.org/fhir/ValueSet/123", None, {1}),
        ("http://acme.org/fhir", None, {2}),
        ("http://acme.org/fhir/", None, set()),
        ("http://acme.org/fhir/ValueSet/12", None, set()),
        ("http://hl7.org/fhir/ValueSet/example", None, {4}),
        ("http://hl7.org/fhir/ValueSet/example|4.0.1", None, {4}),
        ("http://hl7.org/fhir/ValueSet/example|3.0.1", None, set()),
        ("urn:oid:1.2.3", None, {5}),
        ("http://acme.org/fhir", "below", {1, 2, 6}),
        ("http://acme.org/fhir/", "below", {1, 2, 6}),
        ("http://acme.org/fhir/ValueSet", "below", {1, 6}),
        ("http://acme.org/fhi_", "below", set()),  # _ is not a wildcard
        ("http://acme.org/fhir/ValueSet/a_b", "below", {6}),
        ("http://acme.org", "below", {1, 2, 3, 6}),
        ("http://acme.org/fhir/ValueSet/123/_history/5", "above", {1, 2}),
        ("http://acme.org/fhir/ValueSet/999", "above", {2}),
        ("http://acme.org/fhirx/ValueSet/1", "above", {3}),
        ("urn:oid:1.2.3", "above", {5}),
        ("urn:oid:1.2.3.4", "above", set()),
    ],
)
def test_uri_search(uris, value, modifier, expected):
    assert uris.find(value, modifier) == expected


@pytest.mark.parametrize(
    ("value", "modifier"), [("", None), (" ", "below"), ("x", "contains"), ("x", "exact")]
)
def test_uri_search_rejects_bad_values(uris, value, modifier):
    with pytest.raises(BadRequest):
        uris.find(value, modifier)


def test_uri_parents():
    assert uri_type.parents("http://acme.org/fhir/ValueSet/123") == [
        "http://acme.org/fhir/ValueSet/123",
        "http://acme.org/fhir/ValueSet",
        "http://acme.org/fhir",
        "http://acme.org",
        "http://acme.org/fhir/ValueSet/",
        "http://acme.org/fhir/",
        "http://acme.org/",
    ]


def test_uri_sort_key(uris):
    assert uris.sorted()[0] == 2  # "http://acme.org/fhir" is the smallest
    assert uris.sorted(descending=True)[0] == 5  # "urn:..."


def test_index_rows_never_repeat_a_row():
    name = parameter("name", "string")
    nodes = [Node(CHALMERS, "HumanName"), Node(CHALMERS, "HumanName")]
    assert len(string_type.index_rows(nodes, name)) == 4
    assert (
        len(token_type.index_rows([Node("a", "code"), Node("a", "code")], parameter("c", "token")))
        == 1
    )
    assert (
        len(
            uri_type.index_rows([Node("urn:a", "uri"), Node("urn:a", "uri")], parameter("u", "uri"))
        )
        == 1
    )


def test_sort_values_are_plain_row_values():
    # The planner aggregates them (min ascending, max descending) and compares
    # them row against row to find each resource's extreme row.
    for search_type in INDEXED_TYPES:
        module = module_for(search_type)
        table = module.TABLE.alias()
        for descending in (False, True):
            expression = module.sort_value(table, descending)
            assert getattr(expression, "name", None) not in ("min", "max"), search_type
