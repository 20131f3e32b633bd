"""history at instance, type and system level — http://hl7.org/fhir/R4/http.html#history"""

from __future__ import annotations

import time

from tests.api.helpers import BASE, patient, post, put


def _get(client, url: str):
    return client.get(url.replace("http://localhost", ""))


def test_instance_history_is_newest_first_with_request_and_response(client):
    put(client, patient("A", id="h"))
    put(client, patient("B", id="h"))
    client.delete(f"{BASE}/Patient/h")
    bundle = client.get(f"{BASE}/Patient/h/_history").get_json()
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "history"
    entries = bundle["entry"]
    assert [e["response"]["etag"] for e in entries] == ['W/"3"', 'W/"2"', 'W/"1"']
    assert [e["request"]["method"] for e in entries] == ["DELETE", "PUT", "PUT"]
    assert "resource" not in entries[0]
    assert entries[1]["resource"]["name"][0]["family"] == "B"
    assert entries[2]["response"]["status"].startswith("20")
    assert entries[1]["fullUrl"].endswith("/fhir/Patient/h")


def test_type_history_only_has_that_type(client):
    put(client, patient(id="p"))
    put(client, {"resourceType": "Organization", "id": "o", "name": "Acme"})
    bundle = client.get(f"{BASE}/Organization/_history").get_json()
    assert [e["resource"]["id"] for e in bundle["entry"]] == ["o"]


def test_system_history_has_every_type(client):
    put(client, patient(id="p"))
    put(client, {"resourceType": "Organization", "id": "o", "name": "Acme"})
    bundle = client.get(f"{BASE}/_history").get_json()
    assert {e["resource"]["resourceType"] for e in bundle["entry"]} == {"Patient", "Organization"}


def test_count_pages_with_next_links_visiting_every_version_once(client):
    for i in range(7):
        put(client, patient(f"F{i}", id=f"p{i}"))
    seen = []
    url = f"{BASE}/Patient/_history?_count=3"
    pages = 0
    while url:
        bundle = _get(client, url).get_json()
        pages += 1
        seen += [e["resource"]["id"] for e in bundle["entry"]]
        url = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)
        # A write between pages must not shift what the next page shows.
        if pages == 1:
            post(client, patient("late"))
    assert pages == 3
    assert seen == [f"p{i}" for i in reversed(range(7))]


def test_since_keeps_only_newer_versions(client):
    put(client, patient(id="old"))
    time.sleep(0.01)
    marker = client.get(f"{BASE}/Patient/old").get_json()["meta"]["lastUpdated"]
    time.sleep(0.01)
    put(client, patient(id="new"))
    bundle = client.get(f"{BASE}/Patient/_history", query_string={"_since": marker}).get_json()
    assert [e["resource"]["id"] for e in bundle["entry"]] == ["new", "old"][: len(bundle["entry"])]
    assert "new" in [e["resource"]["id"] for e in bundle["entry"]]
    future = client.get(
        f"{BASE}/Patient/_history", query_string={"_since": "2999-01-01"}
    ).get_json()
    assert future.get("entry", []) == []


def test_at_returns_the_version_current_then(client):
    put(client, patient("First", id="at"))
    time.sleep(0.01)
    first_time = client.get(f"{BASE}/Patient/at").get_json()["meta"]["lastUpdated"]
    time.sleep(0.01)
    put(client, patient("Second", id="at"))
    bundle = client.get(f"{BASE}/Patient/at/_history", query_string={"_at": first_time}).get_json()
    assert [e["resource"]["name"][0]["family"] for e in bundle["entry"]] == ["First"]


def test_bad_since_is_400(client):
    response = client.get(f"{BASE}/_history?_since=yesterday")
    assert response.status_code == 400


def test_history_of_unknown_type_is_404(client):
    assert client.get(f"{BASE}/Nothing/_history").status_code == 404
