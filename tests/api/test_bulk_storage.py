"""storage/bulk.py: many new resources in one batch, seen over the API exactly as if each had been created alone."""

from __future__ import annotations

from fhirserver.resources.validate import validate_resource
from fhirserver.storage.bulk import insert_new
from tests.api import synthea
from tests.api.helpers import BASE, put


def _load(database, resources):
    with database.transaction(write=True) as conn:
        return insert_new(conn, resources, base_url="http://localhost/fhir")


def _search_ids(client, query: str) -> set[str]:
    bundle = client.get(f"{BASE}/{query}").get_json()
    return {e["resource"]["id"] for e in bundle.get("entry", [])}


def test_a_synthea_patient_loads_in_one_batch_and_is_read_searched_and_versioned(client, database):
    resources = [
        validate_resource(r, r["resourceType"])
        for r in synthea.resources_of(synthea.patient_bundles()[0])
    ]
    result = _load(database, resources)
    assert len(result.created) == len(resources) and not result.existing

    patient = next(r for r in resources if r["resourceType"] == "Patient")
    read = client.get(f"{BASE}/Patient/{patient['id']}")
    assert read.status_code == 200
    assert read.get_json()["meta"]["versionId"] == "1"
    assert read.headers["ETag"] == 'W/"1"'
    observations = {
        r["id"]
        for r in resources
        if r["resourceType"] == "Observation"
        and r["subject"]["reference"] == f"Patient/{patient['id']}"
    }
    assert _search_ids(client, f"Observation?patient={patient['id']}&_count=1000") == observations
    history = client.get(f"{BASE}/Patient/{patient['id']}/_history").get_json()
    assert [e["request"]["method"] for e in history["entry"]] == ["POST"]


def test_loading_the_same_batch_twice_changes_nothing(client, database):
    batch = [
        {"resourceType": "Patient", "id": "p1", "name": [{"family": "Один"}]},
        {"resourceType": "Patient", "id": "p2", "name": [{"family": "Два"}]},
    ]
    assert _load(database, batch).created == [("Patient", "p1"), ("Patient", "p2")]
    put(client, {"resourceType": "Patient", "id": "p1", "name": [{"family": "Changed"}]})

    again = _load(database, [*batch, {"resourceType": "Patient", "id": "p3"}])
    assert again.created == [("Patient", "p3")]
    assert again.existing == [("Patient", "p1"), ("Patient", "p2")]
    # The later update of p1 survives the reload; nothing got a second index row.
    assert client.get(f"{BASE}/Patient/p1").get_json()["name"][0]["family"] == "Changed"
    assert _search_ids(client, "Patient?name=один") == set()
    assert _search_ids(client, "Patient?name=два") == {"p2"}
    bundle = client.get(f"{BASE}/Patient?_total=accurate").get_json()
    assert bundle["total"] == 3


def test_resources_without_an_id_get_a_new_one(client, database):
    result = _load(database, [{"resourceType": "Patient", "gender": "female"}])
    [(resource_type, new_id)] = result.created
    assert resource_type == "Patient" and len(new_id) == 36
    assert client.get(f"{BASE}/Patient/{new_id}").get_json()["gender"] == "female"
