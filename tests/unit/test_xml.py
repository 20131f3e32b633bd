"""fhirserver.resources.xml: FHIR XML in and out (http://hl7.org/fhir/R4/xml.html)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from lxml import etree

from fhirserver.errors import BadRequest, FhirError, Malformed, Unprocessable
from fhirserver.resources import jsonio
from fhirserver.resources.xml import FHIR_NS, parse_xml, to_xml

EXAMPLES = Path(__file__).resolve().parents[3] / "shared" / "fhir-data" / "r4-examples"
XHTML = "http://www.w3.org/1999/xhtml"
NS = {"f": FHIR_NS, "h": XHTML}

ALL_EXAMPLES = sorted(EXAMPLES.glob("*.json"))
BUNDLES = [p for p in ALL_EXAMPLES if p.name.startswith("Bundle-")]
NON_BUNDLES = [p for p in ALL_EXAMPLES if not p.name.startswith("Bundle-")]
# Known differences the R4B models impose on the round trip: none. (The XML is
# written and read from the model definitions, not through model dumps, so no
# value is normalised on the way; the elements of every example exist in R4B.)
KNOWN_R4B_DIFFERENCES: dict[str, str] = {}


def load(path: Path) -> dict:
    # As the server reads JSON bodies: decimals as Decimal, with their digits.
    return jsonio.loads(path.read_bytes())


def comparable(value: object) -> object:
    """``value`` with every narrative in canonical XML form.

    The narrative is XHTML: ``&quot;`` and ``"`` in its text are the same
    document, and the XML form cannot keep the JSON string's choice of escapes.
    Everything else must come back exactly.
    """
    if isinstance(value, dict):
        return {
            k: etree.tostring(etree.fromstring(v.encode()), method="c14n")
            if k == "div" and isinstance(v, str)
            else comparable(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [comparable(v) for v in value]
    return value


def example_params(paths: list[Path]) -> list:
    return [
        pytest.param(
            p, id=p.name, marks=pytest.mark.xfail(strict=True, reason=KNOWN_R4B_DIFFERENCES[p.name])
        )
        if p.name in KNOWN_R4B_DIFFERENCES
        else pytest.param(p, id=p.name)
        for p in paths
    ]


def tree(data: dict, pretty: bool = False) -> etree._Element:
    return etree.fromstring(to_xml(data, pretty=pretty))


def fails(body: bytes | str) -> FhirError:
    with pytest.raises(FhirError) as caught:
        parse_xml(body)
    return caught.value


def expressions(error: FhirError) -> list[str]:
    return [e for issue in error.issues for e in issue.expression]


def xml(inner: str, root: str = "Patient") -> bytes:
    return f'<{root} xmlns="{FHIR_NS}">{inner}</{root}>'.encode()


# -- round trip over the official examples ---------------------------------------


@pytest.mark.parametrize("path", example_params(NON_BUNDLES))
def test_every_example_survives_json_to_xml_to_json(path: Path) -> None:
    original = load(path)
    assert comparable(parse_xml(to_xml(original))) == comparable(original)


@pytest.mark.parametrize("path", example_params(BUNDLES))
def test_every_example_bundle_survives_json_to_xml_to_json(path: Path) -> None:
    original = load(path)
    assert comparable(parse_xml(to_xml(original))) == comparable(original)


@pytest.mark.parametrize(
    "name", ["Patient-example.json", "Observation-bmd.json", "Bundle-bundle-response.json"]
)
def test_pretty_xml_survives_the_round_trip_with_narratives_untouched(name: str) -> None:
    original = load(EXAMPLES / name)
    body = to_xml(original, pretty=True)
    assert b"\n  <" in body
    back = parse_xml(body)
    assert comparable(back) == comparable(original)
    # Indentation goes around elements only, never into a narrative.
    assert back == parse_xml(to_xml(original))


# -- writing ------------------------------------------------------------------------


def test_to_xml_writes_elements_in_specification_order() -> None:
    root = tree(
        {
            "gender": "male",
            "name": [{"given": ["A"], "family": "B"}],
            "resourceType": "Patient",
            "id": "p1",
        }
    )
    assert root.tag == f"{{{FHIR_NS}}}Patient"
    assert [etree.QName(c).localname for c in root] == ["id", "name", "gender"]
    assert [etree.QName(c).localname for c in root[1]] == ["family", "given"]
    assert root.find("f:id", NS).get("value") == "p1"


def test_to_xml_writes_element_ids_and_extension_urls_as_attributes() -> None:
    root = tree(
        {
            "resourceType": "Patient",
            "name": [{"id": "n1", "family": "Doe"}],
            "extension": [{"id": "e1", "url": "http://example.org/x", "valueBoolean": True}],
        }
    )
    name = root.find("f:name", NS)
    assert name.get("id") == "n1" and name.find("f:id", NS) is None
    ext = root.find("f:extension", NS)
    assert ext.get("url") == "http://example.org/x" and ext.get("id") == "e1"
    assert ext.find("f:valueBoolean", NS).get("value") == "true"


def test_to_xml_puts_primitive_extensions_inside_their_element() -> None:
    root = tree(
        {
            "resourceType": "Patient",
            "birthDate": "1970-01-01",
            "_birthDate": {
                "id": "b",
                "extension": [{"url": "http://x.org/t", "valueTime": "10:00:00"}],
            },
            "name": [
                {
                    "given": ["A", None],
                    "_given": [None, {"extension": [{"url": "http://x.org/c", "valueCode": "c"}]}],
                }
            ],
        }
    )
    birth = root.find("f:birthDate", NS)
    assert (birth.get("value"), birth.get("id")) == ("1970-01-01", "b")
    assert birth.find("f:extension/f:valueTime", NS).get("value") == "10:00:00"
    given = root.findall("f:name/f:given", NS)
    assert [g.get("value") for g in given] == ["A", None]
    assert given[1].find("f:extension", NS).get("url") == "http://x.org/c"


def test_to_xml_writes_the_narrative_as_xhtml() -> None:
    div = f'<div xmlns="{XHTML}"><p>Ann &amp; <b>Bob</b></p></div>'
    root = tree({"resourceType": "Patient", "text": {"status": "generated", "div": div}})
    written = root.find("f:text/h:div", NS)
    assert written is not None
    assert etree.tostring(written, method="c14n", exclusive=True) == etree.tostring(
        etree.fromstring(div), method="c14n", exclusive=True
    )


def test_to_xml_writes_a_bundle_with_its_resources_inside_their_entries() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": 1,
        "link": [{"relation": "self", "url": "http://server/Patient?name=doe"}],
        "entry": [
            {
                "fullUrl": "http://server/Patient/p1",
                "resource": {"resourceType": "Patient", "id": "p1", "active": True},
                "search": {"mode": "match", "score": 0.5},
            }
        ],
    }
    root = tree(bundle)
    assert root.find("f:total", NS).get("value") == "1"
    patient = root.find("f:entry/f:resource/f:Patient", NS)
    assert patient.find("f:id", NS).get("value") == "p1"
    assert root.find("f:entry/f:search/f:score", NS).get("value") == "0.5"
    assert parse_xml(to_xml(bundle)) == bundle


def test_to_xml_writes_an_operation_outcome() -> None:
    diagnostics = 'Patient.foo: <unknown> & "odd"\nline two'
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": "invalid",
                "diagnostics": diagnostics,
                "expression": ["Patient.foo"],
            }
        ],
    }
    root = tree(outcome, pretty=True)
    assert root.tag == f"{{{FHIR_NS}}}OperationOutcome"
    issue = root.find("f:issue", NS)
    assert [etree.QName(c).localname for c in issue] == [
        "severity",
        "code",
        "diagnostics",
        "expression",
    ]
    assert issue.find("f:diagnostics", NS).get("value") == diagnostics
    assert issue.find("f:expression", NS).get("value") == "Patient.foo"


def test_to_xml_writes_a_capability_statement_for_fhir_4_0_1() -> None:
    capability = {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2024-01-01",
        "kind": "instance",
        "fhirVersion": "4.0.1",
        "format": ["json", "xml"],
        "rest": [
            {"mode": "server", "resource": [{"type": "Patient", "interaction": [{"code": "read"}]}]}
        ],
    }
    root = tree(capability)
    assert root.find("f:fhirVersion", NS).get("value") == "4.0.1"
    assert [f.get("value") for f in root.findall("f:format", NS)] == ["json", "xml"]
    assert parse_xml(to_xml(capability)) == capability


def test_decimals_keep_their_digits_both_ways() -> None:
    # http://hl7.org/fhir/R4/datatypes.html#decimal: 1.50 is not 1.5.
    body = xml(
        '<status value="final"/><code><text value="Hb"/></code>'
        '<valueQuantity><value value="1.50"/></valueQuantity>'
        '<component><code><text value="n"/></code><valueInteger value="3"/></component>',
        root="Observation",
    )
    obs = parse_xml(body)
    assert obs["valueQuantity"]["value"] == Decimal("1.50")
    assert str(obs["valueQuantity"]["value"]) == "1.50"
    assert obs["component"][0]["valueInteger"] == 3
    root = tree(obs)
    assert root.find("f:valueQuantity/f:value", NS).get("value") == "1.50"
    assert jsonio.dumps(obs).count(b'"value":1.50') == 1


def test_to_xml_writes_floats_as_json_spells_them() -> None:
    obs = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "x"},
        "valueQuantity": {"value": 0.0000001},
    }
    assert tree(obs).find("f:valueQuantity/f:value", NS).get("value") == "1e-7"


# -- reading ------------------------------------------------------------------------


def test_parse_xml_reads_element_ids_and_primitive_extensions() -> None:
    body = xml(
        '<id value="p1"/><name id="n1"><family value="Doe"/><given value="A"/>'
        '<given><extension url="http://x.org/c"><valueCode value="c"/></extension></given></name>'
        '<birthDate id="b1" value="2000-01-01"/>'
    )
    assert parse_xml(body) == {
        "resourceType": "Patient",
        "id": "p1",
        "name": [
            {
                "id": "n1",
                "family": "Doe",
                "given": ["A", None],
                "_given": [None, {"extension": [{"url": "http://x.org/c", "valueCode": "c"}]}],
            }
        ],
        "birthDate": "2000-01-01",
        "_birthDate": {"id": "b1"},
    }


def test_parse_xml_accepts_a_prefixed_fhir_namespace_and_xsi_attributes() -> None:
    body = (
        '<f:Patient xmlns:f="http://hl7.org/fhir" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"'
        ' xsi:schemaLocation="http://hl7.org/fhir patient.xsd"><!-- a comment -->'
        '<f:active value="true"/></f:Patient>'
    )
    assert parse_xml(body) == {"resourceType": "Patient", "active": True}


def test_parse_xml_writes_the_narrative_with_xhtml_as_default_namespace() -> None:
    body = (
        f'<Patient xmlns="{FHIR_NS}" xmlns:h="{XHTML}"><text><status value="generated"/>'
        "<h:div><h:p>caf\u00e9 &amp; tea</h:p></h:div></text></Patient>"
    ).encode()
    assert (
        parse_xml(body)["text"]["div"] == f'<div xmlns="{XHTML}"><p>caf\u00e9 &amp; tea</p></div>'
    )


def test_parse_xml_checks_the_url_type() -> None:
    with pytest.raises(BadRequest) as caught:
        parse_xml(xml('<active value="true"/>'), expected_type="Observation")
    assert (
        caught.value.message == "resourceType `Patient` does not match the URL type `Observation`"
    )


# -- refused XML ---------------------------------------------------------------------

XXE = (
    b'<?xml version="1.0"?><!DOCTYPE Patient [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
    b'<Patient xmlns="http://hl7.org/fhir"><name><family value="&xxe;"/></name></Patient>'
)
BILLION_LAUGHS = (
    b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
    b'<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">'
    b'<!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">]>'
    b'<Patient xmlns="http://hl7.org/fhir"><name><family value="&lol4;"/></name></Patient>'
)
PLAIN_DOCTYPE = (
    b'<!DOCTYPE Patient><Patient xmlns="http://hl7.org/fhir"><active value="true"/></Patient>'
)
UTF16_DOCTYPE = (
    '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE p [<!ENTITY e "entity-text">]>'
    '<Patient xmlns="http://hl7.org/fhir"><name><family value="&e;"/></name></Patient>'
).encode("utf-16")


@pytest.mark.parametrize(
    "body",
    [XXE, BILLION_LAUGHS, PLAIN_DOCTYPE, UTF16_DOCTYPE],
    ids=["xxe", "billion-laughs", "doctype", "utf16"],
)
def test_xml_with_a_doctype_is_400_and_no_entity_is_expanded(body: bytes) -> None:
    error = fails(body)
    assert isinstance(error, Malformed) and error.status == 400
    said = error.message + " ".join(i.diagnostics for i in error.issues)
    assert "DOCTYPE" in said
    for leaked in ("root:", "lollol", "entity-text"):
        assert leaked not in said


def test_an_undeclared_entity_is_400() -> None:
    error = fails(xml('<name><family value="&xxe;"/></name>'))
    assert isinstance(error, Malformed)


@pytest.mark.parametrize("body", [b"", b"   ", b"<Patient", b"not xml", b"<a></b>"])
def test_a_body_that_is_not_well_formed_xml_is_400(body: bytes) -> None:
    error = fails(body)
    assert isinstance(error, Malformed) and error.status == 400


@pytest.mark.parametrize(
    "body",
    [b'<Patient xmlns="http://example.org/fhir"><active value="true"/></Patient>', b"<Patient/>"],
    ids=["other-namespace", "no-namespace"],
)
def test_a_root_outside_the_fhir_namespace_is_400(body: bytes) -> None:
    error = fails(body)
    assert isinstance(error, BadRequest) and error.status == 400
    assert FHIR_NS in error.message


@pytest.mark.parametrize("root", ["Nope", "HumanName", "Resource"])
def test_a_root_that_is_not_a_supported_resource_type_is_400(root: str) -> None:
    error = fails(f'<{root} xmlns="{FHIR_NS}"/>'.encode())
    assert error.status == 400


@pytest.mark.parametrize(
    ("inner", "path"),
    [
        ('<foo value="1"/>', "Patient.foo"),
        ('<name><nickname value="x"/></name>', "Patient.name[0].nickname"),
        ('<name xmlns="http://example.org"><family value="x"/></name>', "Patient.name"),
        ('<active value="yes"/>', "Patient.active"),
        ('<multipleBirthInteger value="1.5"/>', "Patient.multipleBirthInteger"),
        ('<birthDate value="2000-13-01"/>', "Patient.birthDate"),
        ('<active value="true"/><active value="false"/>', "Patient.active"),
        ("<name/>", "Patient.name[0]"),
        ('<name><id value="n1"/></name>', "Patient.name[0].id"),
        ('<extension><url value="http://x"/></extension>', "Patient.extension[0].url"),
        ('<active value="true" foo="bar"/>', "Patient.active"),
        ('text<active value="true"/>', "Patient"),
        (
            '<contained><Observation><status value="final"/></Observation></contained>',
            "Patient.contained[0].code",
        ),
        ("<contained><Nope/></contained>", "Patient.contained[0]"),
        (
            f'<text><status value="generated"/><div xmlns="{XHTML}"><script>x()</script></div>'
            "</text>",
            "Patient.text.div",
        ),
    ],
)
def test_xml_that_is_not_a_valid_resource_is_422_naming_the_path(inner: str, path: str) -> None:
    error = fails(xml(inner))
    assert isinstance(error, Unprocessable) and error.status == 422
    assert path in expressions(error)


def test_an_error_inside_a_bundle_entry_is_located() -> None:
    body = xml(
        '<type value="collection"/><entry><resource><Patient><birthDate value="soon"/>'
        "</Patient></resource></entry>",
        root="Bundle",
    )
    assert expressions(fails(body)) == ["Bundle.entry[0].resource.birthDate"]


def test_deeply_nested_xml_is_refused_without_a_crash() -> None:
    body = xml(
        '<extension url="http://x">' * 300 + '<valueString value="x"/>' + "</extension>" * 300
    )
    error = fails(body)
    assert error.status in (400, 422)
