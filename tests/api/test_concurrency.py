"""Concurrent writers never lose or duplicate a version (http://hl7.org/fhir/R4/http.html#concurrency)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import orjson

from tests.api.helpers import BASE, FHIR_JSON, patient, put

PARALLEL_UPDATES = 20


def test_parallel_updates_of_one_resource_give_consecutive_versions(app, client):
    put(client, patient(id="busy"))

    def update(i: int) -> int:
        # Each thread has its own client: its own HTTP request and database transaction.
        with app.test_client() as own:
            response = own.put(
                f"{BASE}/Patient/busy",
                data=orjson.dumps(patient(f"Writer{i}", id="busy")),
                headers={"Content-Type": FHIR_JSON},
            )
            return response.status_code

    with ThreadPoolExecutor(max_workers=PARALLEL_UPDATES) as pool:
        statuses = list(pool.map(update, range(PARALLEL_UPDATES)))
    assert statuses == [200] * PARALLEL_UPDATES

    history = client.get(f"{BASE}/Patient/busy/_history?_count=100").get_json()
    versions = sorted(int(e["resource"]["meta"]["versionId"]) for e in history["entry"])
    assert versions == list(range(1, PARALLEL_UPDATES + 2))
    assert client.get(f"{BASE}/Patient/busy").get_json()["meta"]["versionId"] == str(
        PARALLEL_UPDATES + 1
    )
    families = {e["resource"]["name"][0]["family"] for e in history["entry"]}
    assert families == {"Chalmers"} | {f"Writer{i}" for i in range(PARALLEL_UPDATES)}


def test_parallel_update_as_create_of_one_new_id_creates_it_once(app, client):
    def create(i: int) -> int:
        with app.test_client() as own:
            return own.put(
                f"{BASE}/Patient/newcomer",
                data=orjson.dumps(patient(f"W{i}", id="newcomer")),
                headers={"Content-Type": FHIR_JSON},
            ).status_code

    with ThreadPoolExecutor(max_workers=10) as pool:
        statuses = list(pool.map(create, range(10)))
    assert statuses.count(201) == 1 and statuses.count(200) == 9
    history = client.get(f"{BASE}/Patient/newcomer/_history?_count=100").get_json()
    assert sorted(int(e["resource"]["meta"]["versionId"]) for e in history["entry"]) == list(
        range(1, 11)
    )
