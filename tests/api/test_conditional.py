"""Conditional create, update, delete and patch — http://hl7.org/fhir/R4/http.html#ccreate ff.

Each runs on SQLite and PostgreSQL; the race tests fire parallel requests,
each with its own HTTP request and database transaction.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import orjson
import pytest

from tests.api.helpers import BASE, FHIR_JSON, created_id, history_count, outcome_text, post

SYSTEM = "urn:oid:1.2.36.146.595.217.0.1"


def _patient(value: str, family: str = "Chalmers", **extra) -> dict:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": SYSTEM, "value": value}],
        "name": [{"family": family}],
        **extra,
    }


def _total(client, query: str) -> int:
    return client.get(f"{BASE}/{query}&_summary=count").get_json()["total"]


# -- conditional create -------------------------------------------------------------


def test_conditional_create_creates_once_then_answers_the_existing_resource(client):
    first = post(client, _patient("12345"), **{"If-None-Exist": f"identifier={SYSTEM}|12345"})
    assert first.status_code == 201
    again = post(
        client, _patient("12345", "Other"), **{"If-None-Exist": f"identifier={SYSTEM}|12345"}
    )
    assert again.status_code == 200
    assert again.get_json()["id"] == created_id(first)
    assert again.get_json()["name"][0]["family"] == "Chalmers"
    assert _total(client, f"Patient?identifier={SYSTEM}|12345") == 1


def test_conditional_create_with_several_matches_is_412_and_creates_nothing(client):
    post(client, _patient("dup"))
    post(client, _patient("dup"))
    response = post(client, _patient("dup"), **{"If-None-Exist": f"identifier={SYSTEM}|dup"})
    assert response.status_code == 412
    assert _total(client, f"Patient?identifier={SYSTEM}|dup") == 2


@pytest.mark.parametrize(
    "criteria, status", [("nonsense=1", 400), ("birthdate=notadate", 400), ("", 201)]
)
def test_conditional_create_rejects_criteria_it_cannot_evaluate(client, criteria, status):
    response = post(client, _patient("x"), **{"If-None-Exist": criteria})
    assert response.status_code == status, response.get_data(as_text=True)
    assert _total(client, "Patient?_id:missing=false") == (1 if status == 201 else 0)


PARALLEL = 50


def test_fifty_parallel_conditional_creates_make_exactly_one_resource(app, client):
    def create(i: int) -> tuple[int, str]:
        with app.test_client() as own:
            response = own.post(
                f"{BASE}/Patient",
                data=orjson.dumps(_patient("race", f"Writer{i}")),
                headers={"Content-Type": FHIR_JSON, "If-None-Exist": f"identifier={SYSTEM}|race"},
            )
            return response.status_code, response.get_json().get("id", "")

    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        results = list(pool.map(create, range(PARALLEL)))
    statuses = [status for status, _ in results]
    assert statuses.count(201) == 1, statuses
    assert statuses.count(200) == PARALLEL - 1, statuses
    assert len({id for _, id in results}) == 1
    assert _total(client, f"Patient?identifier={SYSTEM}|race") == 1


def test_parallel_conditional_updates_with_new_criteria_create_one_resource(app, client):
    def update(i: int) -> int:
        with app.test_client() as own:
            return own.put(
                f"{BASE}/Patient?identifier={SYSTEM}|upsert",
                data=orjson.dumps(_patient("upsert", f"Writer{i}")),
                headers={"Content-Type": FHIR_JSON},
            ).status_code

    with ThreadPoolExecutor(max_workers=20) as pool:
        statuses = list(pool.map(update, range(20)))
    assert statuses.count(201) == 1 and statuses.count(200) == 19, statuses
    bundle = client.get(f"{BASE}/Patient?identifier={SYSTEM}|upsert").get_json()
    assert len(bundle["entry"]) == 1
    assert bundle["entry"][0]["resource"]["meta"]["versionId"] == "20"


# -- conditional update -------------------------------------------------------------


def test_conditional_update_none_one_several(client):
    url = f"{BASE}/Patient?identifier={SYSTEM}|cu"
    headers = {"Content-Type": FHIR_JSON}
    created = client.put(url, data=orjson.dumps(_patient("cu")), headers=headers)
    assert created.status_code == 201
    id = created.get_json()["id"]
    updated = client.put(url, data=orjson.dumps(_patient("cu", "Newname")), headers=headers)
    assert updated.status_code == 200
    assert updated.get_json()["id"] == id and updated.get_json()["meta"]["versionId"] == "2"
    # A body id that is not the match's.
    wrong = client.put(url, data=orjson.dumps(_patient("cu", id="someone-else")), headers=headers)
    assert wrong.status_code == 400
    post(client, _patient("cu"))
    several = client.put(url, data=orjson.dumps(_patient("cu", "X")), headers=headers)
    assert several.status_code == 412
    assert client.get(f"{BASE}/Patient/{id}").get_json()["name"][0]["family"] == "Newname"


def test_conditional_update_without_match_uses_the_body_id(client):
    response = client.put(
        f"{BASE}/Patient?identifier={SYSTEM}|new",
        data=orjson.dumps(_patient("new", id="chosen-id")),
        headers={"Content-Type": FHIR_JSON},
    )
    assert response.status_code == 201
    assert client.get(f"{BASE}/Patient/chosen-id").status_code == 200


# -- conditional delete -------------------------------------------------------------


def test_conditional_delete_removes_every_match(client):
    for _ in range(3):
        post(client, _patient("gone"))
    keep = created_id(post(client, _patient("stay")))
    response = client.delete(f"{BASE}/Patient?identifier={SYSTEM}|gone")
    assert response.status_code == 200
    assert "Deleted 3" in outcome_text(response)
    assert _total(client, f"Patient?identifier={SYSTEM}|gone") == 0
    assert client.get(f"{BASE}/Patient/{keep}").status_code == 200
    nothing = client.delete(f"{BASE}/Patient?identifier={SYSTEM}|gone")
    assert nothing.status_code == 200
    assert "nothing changed" in outcome_text(nothing)


def test_conditional_delete_needs_criteria_and_valid_ones(client):
    keep = created_id(post(client, _patient("k")))
    assert client.delete(f"{BASE}/Patient").status_code == 400
    assert client.delete(f"{BASE}/Patient?bogus=1").status_code == 400
    assert client.get(f"{BASE}/Patient/{keep}").status_code == 200


def test_conditional_delete_over_the_cap_is_412_and_deletes_nothing(client, monkeypatch):
    from fhirserver.interactions import conditional

    monkeypatch.setattr(conditional, "MAX_CONDITIONAL_DELETES", 2)
    for _ in range(3):
        post(client, _patient("many"))
    response = client.delete(f"{BASE}/Patient?identifier={SYSTEM}|many")
    assert response.status_code == 412
    assert _total(client, f"Patient?identifier={SYSTEM}|many") == 3


# -- conditional patch --------------------------------------------------------------


def _json_patch(client, url: str, operations: list, **headers):
    return client.patch(
        url,
        data=orjson.dumps(operations),
        headers={"Content-Type": "application/json-patch+json", **headers},
    )


def test_conditional_patch_none_one_several(client):
    replace_gender = [{"op": "add", "path": "/gender", "value": "female"}]
    url = f"{BASE}/Patient?identifier={SYSTEM}|cp"
    assert _json_patch(client, url, replace_gender).status_code == 404
    id = created_id(post(client, _patient("cp")))
    patched = _json_patch(client, url, replace_gender)
    assert patched.status_code == 200
    assert client.get(f"{BASE}/Patient/{id}").get_json()["gender"] == "female"
    post(client, _patient("cp"))
    assert _json_patch(client, url, replace_gender).status_code == 412
    assert history_count(client, "Patient") == 3


def test_capability_statement_declares_conditional_support(client):
    rest = client.get(f"{BASE}/metadata").get_json()["rest"][0]
    patient = next(r for r in rest["resource"] if r["type"] == "Patient")
    assert patient["conditionalCreate"] is True and patient["conditionalUpdate"] is True
    assert patient["conditionalDelete"] == "multiple"
    assert {"code": "patch"} in patient["interaction"]
    assert {"code": "transaction"} in rest["interaction"] and {"code": "batch"} in rest[
        "interaction"
    ]
