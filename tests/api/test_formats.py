"""JSON and XML, _format, _pretty, _summary and _elements — http://hl7.org/fhir/R4/http.html#mime-type"""

from __future__ import annotations

from lxml import etree

from tests.api.helpers import BASE, FHIR_XML, patient, put

NS = {"f": "http://hl7.org/fhir"}


def _rich_patient(id: str) -> dict:
    return patient(
        id=id,
        text={
            "status": "generated",
            "div": '<div xmlns="http://www.w3.org/1999/xhtml">Peter</div>',
        },
        birthDate="1974-12-25",
        gender="male",
        maritalStatus={"text": "married"},
    )


def test_read_as_xml_by_accept_and_by_format(client):
    put(client, _rich_patient("x"))
    for response in (
        client.get(f"{BASE}/Patient/x", headers={"Accept": FHIR_XML}),
        client.get(f"{BASE}/Patient/x?_format=xml"),
        client.get(f"{BASE}/Patient/x?_format=application/fhir%2Bxml"),
    ):
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("application/fhir+xml")
        root = etree.fromstring(response.data)
        assert root.tag == "{http://hl7.org/fhir}Patient"
        assert root.find("f:id", NS).get("value") == "x"
        assert root.find("f:birthDate", NS).get("value") == "1974-12-25"


def test_create_from_xml_and_read_back_as_json(client):
    xml = (
        b'<Patient xmlns="http://hl7.org/fhir"><id value="fromxml"/>'
        b'<name><family value="\xd0\x98\xd0\xb2\xd0\xb0\xd0\xbd\xd0\xbe\xd0\xb2"/></name><birthDate value="1980-02-01"/></Patient>'
    )
    response = client.put(f"{BASE}/Patient/fromxml", data=xml, headers={"Content-Type": FHIR_XML})
    assert response.status_code == 201
    body = client.get(f"{BASE}/Patient/fromxml").get_json()
    assert body["name"][0]["family"] == "Иванов"
    assert body["birthDate"] == "1980-02-01"


def test_application_json_and_xml_aliases(client):
    put(client, _rich_patient("alias"))
    assert (
        client.get(f"{BASE}/Patient/alias", headers={"Accept": "application/json"}).get_json()["id"]
        == "alias"
    )
    xml = client.get(f"{BASE}/Patient/alias", headers={"Accept": "application/xml"})
    assert xml.headers["Content-Type"].startswith("application/xml")


def test_pretty_json_is_indented_and_equal(client):
    put(client, _rich_patient("pretty"))
    plain = client.get(f"{BASE}/Patient/pretty")
    pretty = client.get(f"{BASE}/Patient/pretty?_pretty=true")
    assert b"\n  " in pretty.data and b"\n" not in plain.data
    assert pretty.get_json() == plain.get_json()


def test_summary_true_keeps_summary_elements_and_tags_subsetted(client):
    put(client, _rich_patient("s"))
    body = client.get(f"{BASE}/Patient/s?_summary=true").get_json()
    assert body["birthDate"] == "1974-12-25" and body["name"]
    assert "text" not in body and "maritalStatus" not in body
    assert any(tag["code"] == "SUBSETTED" for tag in body["meta"]["tag"])


def test_summary_data_drops_text_only(client):
    put(client, _rich_patient("d"))
    body = client.get(f"{BASE}/Patient/d?_summary=data").get_json()
    assert "text" not in body and body["maritalStatus"] == {"text": "married"}


def test_summary_text_keeps_text_id_meta(client):
    put(client, _rich_patient("t"))
    body = client.get(f"{BASE}/Patient/t?_summary=text").get_json()
    assert body["text"]["status"] == "generated"
    assert "name" not in body and "birthDate" not in body


def test_elements_keeps_only_named(client):
    put(client, _rich_patient("e"))
    body = client.get(f"{BASE}/Patient/e?_elements=birthDate,gender").get_json()
    assert body["birthDate"] and body["gender"] == "male"
    assert "name" not in body and "text" not in body
    assert body["id"] == "e"


def test_capability_statement(client):
    response = client.get(f"{BASE}/metadata")
    assert response.status_code == 200
    statement = response.get_json()
    assert statement["resourceType"] == "CapabilityStatement"
    assert statement["fhirVersion"] == "4.0.1"
    assert (
        "application/fhir+xml" in statement["format"]
        and "application/fhir+json" in statement["format"]
    )
    patient_entry = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Patient")
    codes = {i["code"] for i in patient_entry["interaction"]}
    assert {
        "read",
        "vread",
        "update",
        "delete",
        "create",
        "history-instance",
        "history-type",
    } <= codes
    assert {"code": "history-system"} in statement["rest"][0]["interaction"]
    xml = client.get(f"{BASE}/metadata?_format=xml")
    assert etree.fromstring(xml.data).find("f:fhirVersion", NS).get("value") == "4.0.1"
