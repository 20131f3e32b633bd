"""PATCH [type]/[id] over HTTP — http://hl7.org/fhir/R4/http.html#patch (both databases)."""

from __future__ import annotations

import orjson
import pytest

from tests.api.helpers import BASE, FHIR_JSON, outcome_text, put

JSON_PATCH = "application/json-patch+json"


@pytest.fixture
def patient(client):
    put(
        client,
        {
            "resourceType": "Patient",
            "id": "p",
            "gender": "male",
            "name": [{"family": "Chalmers", "given": ["Peter"]}],
        },
    )


def _patch(client, body, content_type=JSON_PATCH, path="Patient/p", **headers):
    return client.patch(
        f"{BASE}/{path}",
        data=orjson.dumps(body),
        headers={"Content-Type": content_type, **headers},
    )


def _stored(client) -> dict:
    return client.get(f"{BASE}/Patient/p").get_json()


def test_json_patch_makes_a_new_version_recorded_as_patch(client, patient):
    response = _patch(
        client,
        [
            {"op": "test", "path": "/gender", "value": "male"},
            {"op": "replace", "path": "/gender", "value": "female"},
            {"op": "add", "path": "/name/0/given/-", "value": "James"},
        ],
    )
    assert response.status_code == 200
    assert response.headers["ETag"] == 'W/"2"'
    stored = _stored(client)
    assert stored["gender"] == "female"
    assert stored["name"][0]["given"] == ["Peter", "James"]
    history = client.get(f"{BASE}/Patient/p/_history").get_json()
    assert [e["request"]["method"] for e in history["entry"]] == ["PATCH", "PUT"]


def test_fhirpath_patch(client, patient):
    parameters = {
        "resourceType": "Parameters",
        "parameter": [
            {
                "name": "operation",
                "part": [
                    {"name": "type", "valueCode": "replace"},
                    {"name": "path", "valueString": "Patient.name[0].family"},
                    {"name": "value", "valueString": "Чалмерс"},
                ],
            },
            {
                "name": "operation",
                "part": [
                    {"name": "type", "valueCode": "add"},
                    {"name": "path", "valueString": "Patient"},
                    {"name": "name", "valueString": "birthDate"},
                    {"name": "value", "valueDate": "1974-12-25"},
                ],
            },
        ],
    }
    response = _patch(client, parameters, content_type=FHIR_JSON)
    assert response.status_code == 200, response.get_data(as_text=True)
    stored = _stored(client)
    assert stored["name"][0]["family"] == "Чалмерс" and stored["birthDate"] == "1974-12-25"
    # The index follows the patched version.
    found = client.get(f"{BASE}/Patient?family=чалмерс").get_json()
    assert [e["resource"]["id"] for e in found["entry"]] == ["p"]


@pytest.mark.parametrize(
    "body, status, why",
    [
        ([{"op": "test", "path": "/gender", "value": "female"}], 422, ""),
        ([{"op": "replace", "path": "/birthDate", "value": "x"}], 422, ""),
        ([{"op": "replace", "path": "/gender", "value": 12}], 422, "gender"),
        ([{"op": "replace", "path": "/id", "value": "other"}], 422, ""),
        ([{"op": "frobnicate", "path": "/gender"}], 400, ""),
        ({"op": "replace"}, 400, "array"),
    ],
)
def test_a_failed_patch_changes_nothing(client, patient, body, status, why):
    response = _patch(client, body)
    assert response.status_code == status, response.get_data(as_text=True)
    assert why in outcome_text(response)
    stored = _stored(client)
    assert stored["meta"]["versionId"] == "1" and stored["gender"] == "male"


def test_patch_honours_if_match(client, patient):
    change = [{"op": "replace", "path": "/gender", "value": "other"}]
    assert _patch(client, change, **{"If-Match": 'W/"3"'}).status_code == 412
    assert _patch(client, change, **{"If-Match": 'W/"1"'}).status_code == 200
    assert _stored(client)["gender"] == "other"


def test_patch_of_missing_or_deleted_resources(client, patient):
    change = [{"op": "replace", "path": "/gender", "value": "other"}]
    assert _patch(client, change, path="Patient/nobody").status_code == 404
    client.delete(f"{BASE}/Patient/p")
    assert _patch(client, change).status_code == 410


def test_patch_needs_a_patch_document(client, patient):
    response = _patch(client, {"resourceType": "Patient", "id": "p"}, content_type=FHIR_JSON)
    assert response.status_code == 400
    assert "JSON Patch" in outcome_text(response)
    unsupported = client.patch(
        f"{BASE}/Patient/p", data=b"gender=x", headers={"Content-Type": "text/plain"}
    )
    assert unsupported.status_code == 415
    assert _stored(client)["meta"]["versionId"] == "1"
