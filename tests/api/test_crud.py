"""create, read, vread, update, delete — http://hl7.org/fhir/R4/http.html"""

from __future__ import annotations

from email.utils import format_datetime, parsedate_to_datetime

from tests.api.helpers import BASE, FHIR_JSON, created_id, outcome_text, patient, post, put


def test_create_assigns_id_and_answers_201_with_location_etag_last_modified(client):
    response = post(client, patient(id="client-chosen"))
    assert response.status_code == 201
    new_id = created_id(response)
    assert new_id != "client-chosen"  # the server ignores an id on create
    assert response.headers["Location"].endswith(f"/fhir/Patient/{new_id}/_history/1")
    assert response.headers["ETag"] == 'W/"1"'
    assert parsedate_to_datetime(response.headers["Last-Modified"])
    body = response.get_json()
    assert body["id"] == new_id
    assert body["meta"]["versionId"] == "1"
    assert body["name"][0]["family"] == "Chalmers"


def test_read_returns_what_create_stored(client):
    new_id = created_id(post(client, patient()))
    response = client.get(f"{BASE}/Patient/{new_id}")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith(FHIR_JSON)
    assert response.headers["ETag"] == 'W/"1"'
    body = response.get_json()
    assert body["resourceType"] == "Patient" and body["id"] == new_id
    assert body["name"] == [{"family": "Chalmers", "given": ["Peter"]}]


def test_server_sets_meta_and_ignores_client_version_and_last_updated(client):
    sent = patient(
        meta={"versionId": "99", "lastUpdated": "1999-01-01T00:00:00Z", "tag": [{"code": "keep"}]}
    )
    body = post(client, sent).get_json()
    assert body["meta"]["versionId"] == "1"
    assert not body["meta"]["lastUpdated"].startswith("1999")
    assert body["meta"]["tag"] == [{"code": "keep"}]


def test_update_creates_next_version(client):
    new_id = created_id(post(client, patient()))
    response = put(client, patient("Changed", id=new_id))
    assert response.status_code == 200
    assert response.headers["ETag"] == 'W/"2"'
    assert response.headers["Location"].endswith(f"/Patient/{new_id}/_history/2")
    read = client.get(f"{BASE}/Patient/{new_id}").get_json()
    assert read["name"][0]["family"] == "Changed" and read["meta"]["versionId"] == "2"
    first = client.get(f"{BASE}/Patient/{new_id}/_history/1").get_json()
    assert first["name"][0]["family"] == "Chalmers" and first["meta"]["versionId"] == "1"


def test_update_as_create_with_client_id_is_201(client):
    response = put(client, patient(id="pat-1"))
    assert response.status_code == 201
    assert response.headers["ETag"] == 'W/"1"'
    assert client.get(f"{BASE}/Patient/pat-1").status_code == 200


def test_update_with_matching_if_match_succeeds_and_mismatch_is_412(client):
    put(client, patient(id="p2"))
    assert put(client, patient("B", id="p2"), **{"If-Match": 'W/"1"'}).status_code == 200
    stale = put(client, patient("C", id="p2"), **{"If-Match": 'W/"1"'})
    assert stale.status_code == 412
    assert "version 2" in outcome_text(stale)
    assert client.get(f"{BASE}/Patient/p2").get_json()["name"][0]["family"] == "B"


def test_delete_then_read_is_410_and_earlier_versions_stay_readable(client):
    put(client, patient(id="gone"))
    response = client.delete(f"{BASE}/Patient/gone")
    assert response.status_code == 200
    assert response.headers["ETag"] == 'W/"2"'
    read = client.get(f"{BASE}/Patient/gone")
    assert read.status_code == 410
    assert outcome_text(read)
    assert client.get(f"{BASE}/Patient/gone/_history/1").status_code == 200
    assert client.get(f"{BASE}/Patient/gone/_history/2").status_code == 410


def test_deleting_again_or_unknown_is_harmless(client):
    put(client, patient(id="twice"))
    assert client.delete(f"{BASE}/Patient/twice").status_code == 200
    assert client.delete(f"{BASE}/Patient/twice").status_code == 200
    assert client.delete(f"{BASE}/Patient/never-there").status_code == 200
    history = client.get(f"{BASE}/Patient/twice/_history").get_json()
    assert [e["request"]["method"] for e in history["entry"]] == ["DELETE", "PUT"]


def test_update_after_delete_revives_resource_with_next_version(client):
    put(client, patient(id="phoenix"))
    client.delete(f"{BASE}/Patient/phoenix")
    response = put(client, patient("Back", id="phoenix"))
    assert response.status_code in (200, 201)
    assert response.headers["ETag"] == 'W/"3"'
    assert client.get(f"{BASE}/Patient/phoenix").get_json()["name"][0]["family"] == "Back"


def test_conditional_read_if_none_match_is_304(client):
    put(client, patient(id="cached"))
    assert (
        client.get(f"{BASE}/Patient/cached", headers={"If-None-Match": 'W/"1"'}).status_code == 304
    )
    assert (
        client.get(f"{BASE}/Patient/cached", headers={"If-None-Match": 'W/"2"'}).status_code == 200
    )


def test_conditional_read_if_modified_since_is_304(client):
    response = put(client, patient(id="since"))
    last_modified = parsedate_to_datetime(response.headers["Last-Modified"])
    assert (
        client.get(
            f"{BASE}/Patient/since",
            headers={"If-Modified-Since": format_datetime(last_modified, usegmt=True)},
        ).status_code
        == 304
    )
    assert (
        client.get(
            f"{BASE}/Patient/since", headers={"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"}
        ).status_code
        == 200
    )


def test_prefer_return_minimal_has_no_body(client):
    response = post(client, patient(), Prefer="return=minimal")
    assert response.status_code == 201
    assert response.data == b""
    assert response.headers["Location"]


def test_prefer_return_operation_outcome(client):
    response = post(client, patient(), Prefer="return=OperationOutcome")
    assert response.status_code == 201
    assert "created" in outcome_text(response)


def test_prefer_return_representation_is_the_resource(client):
    response = put(client, patient(id="rep"), Prefer="return=representation")
    assert response.get_json()["id"] == "rep"


def test_head_read_answers_headers_only(client):
    put(client, patient(id="head"))
    response = client.head(f"{BASE}/Patient/head")
    assert response.status_code == 200 and response.data == b""
    assert response.headers["ETag"] == 'W/"1"'


def test_every_served_type_accepts_a_minimal_resource(client):
    capability = client.get(f"{BASE}/metadata").get_json()
    types = [r["type"] for r in capability["rest"][0]["resource"]]
    assert "Patient" in types and "Observation" in types
    # A type with no required elements round-trips; one with required ones is rejected with 4xx, never 5xx.
    for resource_type in types:
        response = post(client, {"resourceType": resource_type})
        assert response.status_code in (201, 400, 422), (resource_type, response.status_code)


def test_decimal_precision_is_kept(client):
    # http://hl7.org/fhir/R4/json.html#primitive: 1.50 and 1.5 are different values.
    body = (
        b'{"resourceType":"Observation","id":"dec","status":"final","code":{"text":"Hb"},'
        b'"valueQuantity":{"value":1.50,"unit":"g/dL"},'
        b'"component":[{"code":{"text":"tiny"},"valueQuantity":{"value":0.000120}},'
        b'{"code":{"text":"huge"},"valueQuantity":{"value":123456789012345678901234567890}}]}'
    )
    assert (
        client.put(
            f"{BASE}/Observation/dec", data=body, headers={"Content-Type": FHIR_JSON}
        ).status_code
        == 201
    )
    raw = client.get(f"{BASE}/Observation/dec").data
    assert b"1.50" in raw
    assert b"0.000120" in raw or b"0.00012" in raw and b"1.20E-4" not in raw
    assert b"123456789012345678901234567890" in raw
    xml = client.get(f"{BASE}/Observation/dec?_format=xml").data
    assert b'value="1.50"' in xml
