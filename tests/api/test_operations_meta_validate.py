"""$validate, $meta, $meta-add, $meta-delete — http://hl7.org/fhir/R4/resource-operations.html"""

from __future__ import annotations

import orjson
import pytest

from tests.api.helpers import BASE, FHIR_JSON, history_count, outcome_text, put


def _post(client, path: str, body: dict | None):
    return client.post(
        f"{BASE}/{path}",
        data=orjson.dumps(body) if body is not None else b"",
        headers={"Content-Type": FHIR_JSON},
    )


def _meta_parameters(**meta) -> dict:
    return {"resourceType": "Parameters", "parameter": [{"name": "meta", "valueMeta": meta}]}


def _returned_meta(response) -> dict:
    assert response.status_code == 200, response.get_data(as_text=True)
    (parameter,) = response.get_json()["parameter"]
    assert parameter["name"] == "return"
    return parameter["valueMeta"]


def _patient_count(client) -> int:
    return client.get(f"{BASE}/Patient?_summary=count").get_json()["total"]


# -- $validate ---------------------------------------------------------------------


def test_validate_a_valid_resource_answers_an_informational_outcome(client):
    response = _post(client, "Patient/$validate", {"resourceType": "Patient", "gender": "male"})
    assert response.status_code == 200
    issues = response.get_json()["issue"]
    assert [i["severity"] for i in issues] == ["information"]
    assert _patient_count(client) == 0


def test_validate_reports_errors_with_their_location_and_stores_nothing(client):
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "resource", "resource": {"resourceType": "Patient", "birthDate": "soon"}},
            {"name": "mode", "valueCode": "create"},
        ],
    }
    response = _post(client, "Patient/$validate", body)
    assert response.status_code == 200
    errors = [i for i in response.get_json()["issue"] if i["severity"] == "error"]
    assert errors and errors[0]["expression"] == ["Patient.birthDate"]
    assert _patient_count(client) == 0


def test_validate_update_mode_checks_the_id_against_the_instance(client):
    put(client, {"resourceType": "Patient", "id": "p1"})
    mismatch = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "resource", "resource": {"resourceType": "Patient", "id": "other"}},
            {"name": "mode", "valueCode": "update"},
        ],
    }
    issues = _post(client, "Patient/p1/$validate", mismatch).get_json()["issue"]
    assert any(i["severity"] == "error" and i["expression"] == ["Patient.id"] for i in issues)
    match = {**mismatch, "parameter": [dict(mismatch["parameter"][0]), mismatch["parameter"][1]]}
    match["parameter"][0]["resource"] = {"resourceType": "Patient", "id": "p1"}
    issues = _post(client, "Patient/p1/$validate", match).get_json()["issue"]
    assert [i["severity"] for i in issues] == ["information"]


def test_validate_delete_mode_needs_an_existing_resource(client):
    put(client, {"resourceType": "Patient", "id": "p1"})
    delete = {"resourceType": "Parameters", "parameter": [{"name": "mode", "valueCode": "delete"}]}
    assert _post(client, "Patient/p1/$validate", delete).status_code == 200
    assert _post(client, "Patient/gone/$validate", delete).status_code == 404
    assert client.get(f"{BASE}/Patient/p1").status_code == 200


@pytest.mark.parametrize(
    "path, body, why",
    [
        ("Patient/$validate", None, "Nothing to validate"),
        (
            "Patient/$validate",
            {"resourceType": "Parameters", "parameter": [{"name": "mode", "valueCode": "merge"}]},
            "mode `merge`",
        ),
        (
            "Patient/$validate",
            {
                "resourceType": "Parameters",
                "parameter": [
                    {"name": "resource", "resource": {"resourceType": "Patient"}},
                    {"name": "profile", "valueUri": "http://example.org/p"},
                ],
            },
            "profile",
        ),
        (
            "Patient/$validate",
            {"resourceType": "Parameters", "parameter": [{"name": "mode", "valueCode": "update"}]},
            "needs the instance",
        ),
    ],
)
def test_validate_requests_it_cannot_run_are_400(client, path, body, why):
    response = _post(client, path, body)
    assert response.status_code == 400
    assert why in outcome_text(response)


# -- $meta, $meta-add, $meta-delete -----------------------------------------------


@pytest.fixture
def tagged(client):
    put(
        client,
        {
            "resourceType": "Patient",
            "id": "p1",
            "meta": {"tag": [{"system": "urn:t", "code": "vip"}]},
        },
    )
    put(
        client,
        {
            "resourceType": "Observation",
            "id": "o1",
            "status": "final",
            "code": {"text": "x"},
            "meta": {"security": [{"system": "urn:s", "code": "R"}]},
        },
    )


def test_meta_of_an_instance(client, tagged):
    meta = _returned_meta(client.get(f"{BASE}/Patient/p1/$meta"))
    assert meta["tag"] == [{"system": "urn:t", "code": "vip"}]
    assert meta["versionId"] == "1"


def test_meta_add_and_delete_change_tags_without_a_new_version(client, tagged):
    added = _returned_meta(
        _post(
            client,
            "Patient/p1/$meta-add",
            _meta_parameters(
                tag=[{"system": "urn:t", "code": "vip"}, {"system": "urn:t", "code": "study"}],
                profile=["http://example.org/fhir/StructureDefinition/p"],
            ),
        )
    )
    assert added["tag"] == [
        {"system": "urn:t", "code": "vip"},
        {"system": "urn:t", "code": "study"},
    ]
    assert added["versionId"] == "1"
    read = client.get(f"{BASE}/Patient/p1")
    assert read.headers["ETag"] == 'W/"1"'
    assert read.get_json()["meta"]["profile"] == ["http://example.org/fhir/StructureDefinition/p"]
    assert history_count(client, "Patient") == 1
    # The search index follows the new tags.
    found = client.get(f"{BASE}/Patient?_tag=urn:t|study").get_json()
    assert [e["resource"]["id"] for e in found["entry"]] == ["p1"]

    remaining = _returned_meta(
        _post(
            client,
            "Patient/p1/$meta-delete",
            _meta_parameters(tag=[{"system": "urn:t", "code": "vip"}]),
        )
    )
    assert remaining["tag"] == [{"system": "urn:t", "code": "study"}]
    assert client.get(f"{BASE}/Patient?_tag=urn:t|vip").get_json().get("entry", []) == []
    # vread of version 1 shows the tags as they are now (the version was rewritten in place).
    vread = client.get(f"{BASE}/Patient/p1/_history/1").get_json()
    assert vread["meta"]["tag"] == [{"system": "urn:t", "code": "study"}]


def test_meta_at_type_and_system_level_lists_what_is_in_use(client, tagged):
    assert _returned_meta(client.get(f"{BASE}/Patient/$meta")) == {
        "tag": [{"system": "urn:t", "code": "vip"}]
    }
    everything = _returned_meta(client.get(f"{BASE}/$meta"))
    assert everything["tag"] == [{"system": "urn:t", "code": "vip"}]
    assert everything["security"] == [{"system": "urn:s", "code": "R"}]


def test_meta_operation_errors(client, tagged):
    client.delete(f"{BASE}/Patient/p1")
    assert client.get(f"{BASE}/Patient/p1/$meta").status_code == 410
    assert client.get(f"{BASE}/Patient/nobody/$meta").status_code == 404
    assert client.get(f"{BASE}/Observation/o1/$meta-add").status_code == 405
    assert _post(client, "Observation/$meta-add", _meta_parameters(tag=[])).status_code == 400
    no_meta = {"resourceType": "Parameters", "parameter": []}
    assert _post(client, "Observation/o1/$meta-add", no_meta).status_code == 400
    bad = _meta_parameters(tag=[{"display": "no code"}])
    assert _post(client, "Observation/o1/$meta-add", bad).status_code == 400
    unknown = client.get(f"{BASE}/Patient/$frobnicate")
    assert unknown.status_code == 404
    assert "$frobnicate" in outcome_text(unknown)


def test_capability_statement_lists_operations_with_their_definitions(client):
    rest = client.get(f"{BASE}/metadata").get_json()["rest"][0]
    patient = next(r for r in rest["resource"] if r["type"] == "Patient")
    names = {o["name"]: o["definition"] for o in patient["operation"]}
    assert names["validate"] == "http://hl7.org/fhir/OperationDefinition/Resource-validate"
    assert "meta-add" in names and "meta-delete" in names
    assert {o["name"] for o in rest["operation"]} >= {"meta"}
