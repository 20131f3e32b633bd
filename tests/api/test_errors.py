"""Bad input gets an OperationOutcome with the right status and changes nothing."""

from __future__ import annotations

import orjson
import pytest

from tests.api.helpers import BASE, FHIR_JSON, history_count, outcome_text, patient, post, put


def test_unknown_type_is_404(client):
    response = client.get(f"{BASE}/Spaceship/1")
    assert response.status_code == 404
    assert "Spaceship" in outcome_text(response)


def test_unknown_id_is_404_naming_the_resource(client):
    response = client.get(f"{BASE}/Patient/nobody")
    assert response.status_code == 404
    assert "Patient/nobody" in outcome_text(response)


def test_unknown_version_is_404(client):
    put(client, patient(id="v"))
    assert client.get(f"{BASE}/Patient/v/_history/7").status_code == 404
    assert client.get(f"{BASE}/Patient/v/_history/x").status_code == 404


def test_invalid_id_is_400(client):
    long_id = "a" * 65
    assert client.get(f"{BASE}/Patient/{long_id}").status_code == 400
    response = put(client, patient(id="bad_id"))
    assert response.status_code in (400, 422)


@pytest.mark.parametrize(
    "body", [b"{", b"not json", b'{"resourceType": "Patient",}', b"[1, 2]", b'"text"']
)
def test_malformed_json_is_400(client, body):
    response = client.post(f"{BASE}/Patient", data=body, headers={"Content-Type": FHIR_JSON})
    assert response.status_code == 400
    assert outcome_text(response)
    assert history_count(client) == 0


def test_malformed_xml_is_400(client):
    response = client.post(
        f"{BASE}/Patient",
        data=b"<Patient xmlns='http://hl7.org/fhir'>",
        headers={"Content-Type": "application/fhir+xml"},
    )
    assert response.status_code == 400


def test_invalid_resource_names_element_path(client):
    response = post(
        client, {"resourceType": "Patient", "name": [{"given": [5]}], "spaceship": True}
    )
    assert response.status_code == 422
    body = response.get_json()
    expressions = [e for issue in body["issue"] for e in issue.get("expression", [])]
    assert "Patient.name[0].given[0]" in expressions
    assert any("spaceship" in e for e in expressions)
    assert history_count(client) == 0


def test_resource_type_not_matching_url_is_400(client):
    response = client.post(
        f"{BASE}/Observation", data=orjson.dumps(patient()), headers={"Content-Type": FHIR_JSON}
    )
    assert response.status_code == 400
    assert "Observation" in outcome_text(response)


def test_put_id_not_matching_url_is_400(client):
    response = client.put(
        f"{BASE}/Patient/one",
        data=orjson.dumps(patient(id="two")),
        headers={"Content-Type": FHIR_JSON},
    )
    assert response.status_code == 400
    assert client.get(f"{BASE}/Patient/one").status_code == 404
    assert client.get(f"{BASE}/Patient/two").status_code == 404


def test_put_without_id_in_body_is_400(client):
    response = client.put(
        f"{BASE}/Patient/one", data=orjson.dumps(patient()), headers={"Content-Type": FHIR_JSON}
    )
    assert response.status_code == 400


def test_unsupported_content_type_is_415(client):
    response = client.post(
        f"{BASE}/Patient", data=orjson.dumps(patient()), headers={"Content-Type": "text/plain"}
    )
    assert response.status_code == 415
    assert history_count(client) == 0


def test_unsupported_accept_is_406(client):
    put(client, patient(id="a"))
    response = client.get(f"{BASE}/Patient/a", headers={"Accept": "image/png"})
    assert response.status_code == 406
    assert response.get_json(force=True)["resourceType"] == "OperationOutcome"


def test_unsupported_format_param_is_406(client):
    assert client.get(f"{BASE}/metadata?_format=yaml").status_code == 406


def test_body_over_limit_is_413(client, app):
    limit = app.extensions["fhirserver"].settings.max_body_bytes
    big = patient(
        text={
            "status": "generated",
            "div": '<div xmlns="http://www.w3.org/1999/xhtml">' + "x" * limit + "</div>",
        }
    )
    response = post(client, big)
    assert response.status_code == 413
    assert history_count(client) == 0


def test_empty_body_on_create_is_400(client):
    response = client.post(f"{BASE}/Patient", data=b"", headers={"Content-Type": FHIR_JSON})
    assert response.status_code == 400


def test_unknown_url_and_method_answer_operation_outcome(client):
    assert client.get(f"{BASE}/Patient/1/_history/1/extra").status_code == 404
    response = client.patch(f"{BASE}/metadata")
    assert response.status_code == 405
    assert response.get_json(force=True)["resourceType"] == "OperationOutcome"


def test_bad_if_match_is_400_and_changes_nothing(client):
    put(client, patient(id="etag"))
    response = put(client, patient("X", id="etag"), **{"If-Match": "garbage"})
    assert response.status_code == 400
    assert client.get(f"{BASE}/Patient/etag").get_json()["meta"]["versionId"] == "1"


def test_if_match_on_missing_resource_is_412(client):
    response = put(client, patient(id="fresh"), **{"If-Match": 'W/"1"'})
    assert response.status_code == 412
    assert client.get(f"{BASE}/Patient/fresh").status_code == 404


def test_errors_keep_the_format_but_are_never_subsetted(client):
    response = client.get(f"{BASE}/Patient/missing?_elements=name&_summary=true&_format=xml")
    assert response.status_code == 404
    assert response.headers["Content-Type"].startswith("application/fhir+xml")
    assert b"OperationOutcome" in response.data and b"SUBSETTED" not in response.data
    assert b"Patient/missing" in response.data
