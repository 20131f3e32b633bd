"""batch and transaction Bundles — http://hl7.org/fhir/R4/http.html#transaction (both databases)."""

from __future__ import annotations

import base64
from collections import Counter

import orjson
import pytest

from tests.api.helpers import BASE, FHIR_JSON, outcome_text, post, put
from tests.conftest import FHIR_DATA


def _send(client, bundle: dict):
    return client.post(f"{BASE}", data=orjson.dumps(bundle), headers={"Content-Type": FHIR_JSON})


def _bundle(kind: str, *entries: dict) -> dict:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def _entry(
    method: str, url: str, resource: dict | None = None, full_url: str | None = None, **request
):
    entry: dict = {"request": {"method": method, "url": url, **request}}
    if resource is not None:
        entry["resource"] = resource
    if full_url is not None:
        entry["fullUrl"] = full_url
    return entry


def _count(client, resource_type: str) -> int:
    return client.get(f"{BASE}/{resource_type}?_summary=count").get_json()["total"]


# -- transaction ---------------------------------------------------------------------


def test_every_synthea_bundle_loads_as_a_transaction(client):
    bundles = sorted((FHIR_DATA / "synthea" / "bundles").glob("*.json"))
    shared = [b for b in bundles if b.name.startswith(("hospital", "practitioner"))]
    expected: Counter = Counter()
    for path in shared + [b for b in bundles if b not in shared]:
        bundle = orjson.loads(path.read_bytes())
        response = _send(client, bundle)
        assert response.status_code == 200, (path.name, response.get_data(as_text=True)[:500])
        answer = response.get_json()
        assert answer["type"] == "transaction-response"
        assert len(answer["entry"]) == len(bundle["entry"])
        expected.update(e["resource"]["resourceType"] for e in bundle["entry"])
    for resource_type, count in expected.items():
        assert _count(client, resource_type) == count, resource_type

    # urn:uuid references now name the stored resources; conditional references
    # (Practitioner?identifier=...) were resolved to the loaded Practitioners.
    encounter = client.get(f"{BASE}/Encounter?_count=1").get_json()["entry"][0]["resource"]
    subject = encounter["subject"]["reference"]
    assert subject.startswith("Patient/")
    assert client.get(f"{BASE}/{subject}").status_code == 200
    practitioner = encounter["participant"][0]["individual"]["reference"]
    assert practitioner.startswith("Practitioner/") and "?" not in practitioner
    assert client.get(f"{BASE}/{practitioner}").status_code == 200


def test_urn_uuid_full_urls_are_rewritten_everywhere(client):
    patient_url = "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a"
    bundle = _bundle(
        "transaction",
        _entry(
            "POST",
            "Observation",
            {
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": "weight"},
                "subject": {"reference": patient_url},
                "text": {
                    "status": "generated",
                    "div": f'<div xmlns="http://www.w3.org/1999/xhtml"><a href="{patient_url}">patient</a></div>',
                },
            },
        ),
        _entry("POST", "Patient", {"resourceType": "Patient", "gender": "female"}, patient_url),
    )
    answer = _send(client, bundle).get_json()
    statuses = [e["response"]["status"] for e in answer["entry"]]
    assert statuses == ["201 Created", "201 Created"]
    patient_location = answer["entry"][1]["response"]["location"]
    patient_id = patient_location.split("/")[1]
    assert answer["entry"][1]["response"]["etag"] == 'W/"1"'
    assert "lastModified" in answer["entry"][1]["response"]
    observation_id = answer["entry"][0]["response"]["location"].split("/")[1]
    observation = client.get(f"{BASE}/Observation/{observation_id}").get_json()
    assert observation["subject"]["reference"] == f"Patient/{patient_id}"
    assert f'href="Patient/{patient_id}"' in observation["text"]["div"]


def test_a_failing_entry_rolls_back_the_whole_transaction(client):
    put(client, {"resourceType": "Patient", "id": "kept", "gender": "male"})
    bundle = _bundle(
        "transaction",
        _entry("POST", "Patient", {"resourceType": "Patient", "gender": "female"}),
        _entry("DELETE", "Patient/kept"),
        _entry("PUT", "Patient/p2", {"resourceType": "Patient", "id": "p2", "birthDate": "soon"}),
    )
    response = _send(client, bundle)
    assert response.status_code == 422
    assert "Bundle.entry[2]" in outcome_text(response)
    assert _count(client, "Patient") == 1
    assert client.get(f"{BASE}/Patient/kept").status_code == 200


def test_entries_run_delete_post_put_get_in_that_order(client):
    put(client, {"resourceType": "Patient", "id": "old", "gender": "male"})
    bundle = _bundle(
        "transaction",
        _entry("GET", "Patient/new"),
        _entry("PUT", "Patient/new", {"resourceType": "Patient", "id": "new", "gender": "other"}),
        _entry("DELETE", "Patient/old"),
    )
    answer = _send(client, bundle).get_json()
    # GET ran last, so it sees the PUT of the same transaction.
    assert answer["entry"][0]["response"]["status"] == "200 OK"
    assert answer["entry"][0]["resource"]["gender"] == "other"
    assert answer["entry"][1]["response"]["status"] == "201 Created"
    assert client.get(f"{BASE}/Patient/old").status_code == 410


def test_if_none_exist_in_a_transaction_points_references_at_the_existing_resource(client):
    existing = post(
        client,
        {"resourceType": "Patient", "identifier": [{"system": "urn:s", "value": "7"}]},
    ).get_json()["id"]
    patient_url = "urn:uuid:0e2d2d86-2a44-4d1b-9f3a-1c0f9c1f2b01"
    bundle = _bundle(
        "transaction",
        _entry(
            "POST",
            "Patient",
            {"resourceType": "Patient", "identifier": [{"system": "urn:s", "value": "7"}]},
            patient_url,
            ifNoneExist="identifier=urn:s|7",
        ),
        _entry(
            "POST",
            "Observation",
            {
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": "x"},
                "subject": {"reference": patient_url},
            },
        ),
    )
    answer = _send(client, bundle).get_json()
    assert answer["entry"][0]["response"]["status"] == "200 OK"
    observation = client.get(f"{BASE}/{answer['entry'][1]['response']['location']}").get_json()
    assert observation["subject"]["reference"] == f"Patient/{existing}"
    assert _count(client, "Patient") == 1


def test_conditional_references_none_and_several(client):
    def observation_for(reference: str) -> dict:
        return _bundle(
            "transaction",
            _entry(
                "POST",
                "Observation",
                {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"text": "x"},
                    "subject": {"reference": reference},
                },
            ),
        )

    none = _send(client, observation_for("Patient?identifier=urn:s|nobody"))
    assert none.status_code == 400
    assert "matches no resource" in outcome_text(none)
    for _ in range(2):
        post(
            client,
            {"resourceType": "Patient", "identifier": [{"system": "urn:s", "value": "twin"}]},
        )
    several = _send(client, observation_for("Patient?identifier=urn:s|twin"))
    assert several.status_code == 412
    assert _count(client, "Observation") == 0


def test_if_match_per_entry(client):
    put(client, {"resourceType": "Patient", "id": "v", "gender": "male"})
    stale = _bundle(
        "transaction",
        _entry("PUT", "Patient/v", {"resourceType": "Patient", "id": "v"}, ifMatch='W/"9"'),
    )
    assert _send(client, stale).status_code == 412
    fresh = _bundle(
        "transaction",
        _entry("PUT", "Patient/v", {"resourceType": "Patient", "id": "v"}, ifMatch='W/"1"'),
    )
    assert _send(client, fresh).get_json()["entry"][0]["response"]["etag"] == 'W/"2"'


def test_patch_entries_json_patch_and_fhirpath_patch(client):
    put(client, {"resourceType": "Patient", "id": "pp", "gender": "male", "active": True})
    json_patch = [{"op": "replace", "path": "/gender", "value": "female"}]
    binary = {
        "resourceType": "Binary",
        "contentType": "application/json-patch+json",
        "data": base64.b64encode(orjson.dumps(json_patch)).decode(),
    }
    fhirpath = {
        "resourceType": "Parameters",
        "parameter": [
            {
                "name": "operation",
                "part": [
                    {"name": "type", "valueCode": "delete"},
                    {"name": "path", "valueString": "Patient.active"},
                ],
            }
        ],
    }
    put(client, {"resourceType": "Patient", "id": "qq", "gender": "male", "active": True})
    bundle = _bundle(
        "transaction",
        _entry("PATCH", "Patient/pp", binary),
        _entry("PATCH", "Patient/qq", fhirpath),
    )
    response = _send(client, bundle)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert client.get(f"{BASE}/Patient/pp").get_json()["gender"] == "female"
    assert "active" not in client.get(f"{BASE}/Patient/qq").get_json()


@pytest.mark.parametrize(
    "bundle, why",
    [
        ({"resourceType": "Patient"}, "takes a Bundle"),
        ({"resourceType": "Bundle", "type": "collection", "entry": []}, "batch or transaction"),
        (_bundle("transaction", {"resource": {"resourceType": "Patient"}}), "needs `request`"),
        (_bundle("transaction", _entry("POST", "Patient")), "needs entry.resource"),
        (_bundle("transaction", _entry("GET", "NoSuchType/1")), "not supported"),
        (
            _bundle(
                "transaction",
                _entry("POST", "http://elsewhere.org/fhir/Patient", {"resourceType": "Patient"}),
            ),
            "not a URL of this server",
        ),
        (
            _bundle(
                "transaction",
                _entry("PUT", "Patient/a", {"resourceType": "Patient", "id": "a"}),
                _entry("DELETE", "Patient/a"),
            ),
            "changes a resource once",
        ),
        (
            _bundle(
                "transaction",
                _entry("POST", "Patient", {"resourceType": "Patient"}, "urn:uuid:1"),
                _entry("POST", "Patient", {"resourceType": "Patient"}, "urn:uuid:1"),
            ),
            "also the fullUrl",
        ),
        (
            _bundle(
                "transaction",
                _entry(
                    "POST",
                    "Observation",
                    {
                        "resourceType": "Observation",
                        "status": "final",
                        "code": {"text": "x"},
                        "subject": {"reference": "urn:uuid:nowhere"},
                    },
                ),
            ),
            "names no entry",
        ),
    ],
)
def test_malformed_transactions_are_400_and_store_nothing(client, bundle, why):
    response = _send(client, bundle)
    assert response.status_code in (400, 404), response.get_data(as_text=True)
    assert why in outcome_text(response)
    assert _count(client, "Patient") == 0 and _count(client, "Observation") == 0


# -- batch ------------------------------------------------------------------------------


def test_batch_entries_succeed_and_fail_independently(client):
    put(client, {"resourceType": "Patient", "id": "b1"})
    bundle = _bundle(
        "batch",
        _entry("POST", "Patient", {"resourceType": "Patient", "gender": "female"}),
        _entry("GET", "Patient/missing"),
        _entry("PUT", "Patient/b2", {"resourceType": "Patient", "id": "b2", "birthDate": "x"}),
        _entry("GET", "Patient/b1"),
        _entry("DELETE", "Patient/b1"),
    )
    response = _send(client, bundle)
    assert response.status_code == 200
    answer = response.get_json()
    assert answer["type"] == "batch-response"
    statuses = [e["response"]["status"] for e in answer["entry"]]
    assert statuses == [
        "201 Created",
        "404 Not Found",
        "422 Unprocessable Entity",
        "200 OK",
        "200 OK",
    ]
    assert answer["entry"][1]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert answer["entry"][3]["resource"]["id"] == "b1"
    assert _count(client, "Patient") == 1  # the POSTed one; b1 deleted, b2 rejected
    assert client.get(f"{BASE}/Patient/b2").status_code == 404


def test_batch_search_entry_returns_a_searchset(client):
    put(client, {"resourceType": "Patient", "id": "s1", "gender": "male"})
    answer = _send(client, _bundle("batch", _entry("GET", "Patient?gender=male"))).get_json()
    searchset = answer["entry"][0]["resource"]
    assert searchset["type"] == "searchset"
    assert [e["resource"]["id"] for e in searchset["entry"]] == ["s1"]
