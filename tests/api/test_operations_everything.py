"""Patient/$everything — http://hl7.org/fhir/R4/patient-operation-everything.html

The patient, its compartment (official R4 Patient CompartmentDefinition) and
the resources those refer to (one level); ``_since``, ``_type``, ``_count``
with keyset paging through ``next`` links that repeat the operation's URL.
"""

from __future__ import annotations

import time

import orjson
import pytest

from tests.api import synthea
from tests.api.helpers import BASE, FHIR_JSON, outcome_text, put


def _key(resource: dict) -> str:
    return f"{resource['resourceType']}/{resource['id']}"


def _entries(bundle: dict) -> list[tuple[str, str]]:
    """(Type/id, search.mode) of the resource entries (not the outcome)."""
    return [
        (_key(e["resource"]), e["search"]["mode"])
        for e in bundle.get("entry", [])
        if e["search"]["mode"] != "outcome"
    ]


def _link(bundle: dict, relation: str) -> str | None:
    return next((link["url"] for link in bundle["link"] if link["relation"] == relation), None)


def _all_pages(client, url: str) -> tuple[list[tuple[str, str]], list[dict]]:
    """Every entry of every page, following ``next``; and the pages."""
    entries, pages = [], []
    while url:
        response = client.get(url.replace("http://localhost", ""))
        assert response.status_code == 200, response.get_data(as_text=True)
        page = response.get_json()
        pages.append(page)
        entries += _entries(page)
        url = _link(page, "next")
    return entries, pages


def _observation(id: str, patient: str, **extra) -> dict:
    return {
        "resourceType": "Observation",
        "id": id,
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": f"Patient/{patient}"},
        "effectiveDateTime": "2024-05-01T10:00:00Z",
        **extra,
    }


ANNA = {
    "Patient/anna",
    "Observation/a-obs",
    "Encounter/a-enc",
    "MedicationRequest/a-mr",
    "Condition/a-cond",
}
ANNA_REFERENCES = {
    "Practitioner/dr-who",
    "Practitioner/dr-gp",
    "Organization/clinic",
    "Location/ward",
    "Medication/aspirin",
}


@pytest.fixture
def records(client):
    put(client, {"resourceType": "Practitioner", "id": "dr-who", "name": [{"family": "Who"}]})
    put(client, {"resourceType": "Practitioner", "id": "dr-gp", "name": [{"family": "Gp"}]})
    put(client, {"resourceType": "Practitioner", "id": "dr-other", "name": [{"family": "Other"}]})
    put(client, {"resourceType": "Organization", "id": "clinic", "name": "Clinic"})
    put(client, {"resourceType": "Organization", "id": "unused", "name": "Nobody's"})
    put(client, {"resourceType": "Location", "id": "ward", "name": "Ward 3"})
    put(
        client,
        {
            "resourceType": "Medication",
            "id": "aspirin",
            "code": {
                "coding": [
                    {"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "1191"}
                ]
            },
        },
    )
    put(
        client,
        {
            "resourceType": "Patient",
            "id": "anna",
            "generalPractitioner": [{"reference": "Practitioner/dr-gp"}],
            "managingOrganization": {"reference": "Organization/clinic"},
        },
    )
    put(client, {"resourceType": "Patient", "id": "boris"})
    put(client, _observation("a-obs", "anna", performer=[{"reference": "Practitioner/dr-who"}]))
    put(
        client,
        {
            "resourceType": "Encounter",
            "id": "a-enc",
            "status": "finished",
            "class": {"code": "AMB"},
            "subject": {"reference": "Patient/anna"},
            "participant": [{"individual": {"reference": "Practitioner/dr-who"}}],
            "location": [{"location": {"reference": "Location/ward"}}],
            "serviceProvider": {"reference": "Organization/clinic"},
        },
    )
    put(
        client,
        {
            "resourceType": "MedicationRequest",
            "id": "a-mr",
            "status": "active",
            "intent": "order",
            "medicationReference": {"reference": "Medication/aspirin"},
            "subject": {"reference": "Patient/anna"},
            "requester": {"reference": "Practitioner/dr-who"},
        },
    )
    put(
        client,
        {
            "resourceType": "Condition",
            "id": "a-cond",
            "subject": {"reference": "Patient/anna"},
            "code": {"text": "Hay fever"},
        },
    )
    # Boris's record: none of it (nor his practitioner) belongs in Anna's.
    put(client, _observation("b-obs", "boris", performer=[{"reference": "Practitioner/dr-other"}]))
    put(
        client,
        {
            "resourceType": "Encounter",
            "id": "b-enc",
            "status": "finished",
            "class": {"code": "AMB"},
            "subject": {"reference": "Patient/boris"},
            "serviceProvider": {"reference": "Organization/clinic"},
        },
    )


def test_everything_is_the_compartment_and_the_resources_it_refers_to(client, records):
    response = client.get(f"{BASE}/Patient/anna/$everything")
    assert response.status_code == 200
    bundle = response.get_json()
    assert bundle["type"] == "searchset"
    entries = _entries(bundle)
    assert len(entries) == len(set(entries))
    assert {key for key, mode in entries if mode == "match"} == ANNA
    assert {key for key, mode in entries if mode == "include"} == ANNA_REFERENCES
    assert _link(bundle, "self") == "http://localhost/fhir/Patient/anna/$everything"
    assert _link(bundle, "next") is None


def test_another_patients_resources_never_appear(client, records):
    keys = {key for key, _ in _entries(client.get(f"{BASE}/Patient/boris/$everything").get_json())}
    assert keys == {
        "Patient/boris",
        "Observation/b-obs",
        "Encounter/b-enc",
        "Practitioner/dr-other",
        "Organization/clinic",
    }
    assert not keys & (ANNA - {"Organization/clinic"})


def test_a_linked_patient_is_not_followed_as_a_reference(client, records):
    # Patient.link points at another patient: that patient's record stays out.
    put(
        client,
        {
            "resourceType": "Patient",
            "id": "anna",
            "link": [{"other": {"reference": "Patient/boris"}, "type": "seealso"}],
        },
    )
    keys = {key for key, _ in _entries(client.get(f"{BASE}/Patient/anna/$everything").get_json())}
    assert "Patient/boris" not in keys and "Observation/b-obs" not in keys


def test_paging_visits_every_resource_exactly_once(client, records):
    whole = _entries(client.get(f"{BASE}/Patient/anna/$everything").get_json())
    paged, pages = _all_pages(client, f"{BASE}/Patient/anna/$everything?_count=3")
    assert len(pages) == 4  # 10 resources, 3 a page
    assert sorted(paged) == sorted(whole)
    assert len(paged) == len(set(paged)) == len(ANNA | ANNA_REFERENCES)
    for page in pages[:-1]:
        assert _link(page, "next").startswith("http://localhost/fhir/Patient/anna/$everything?")
        assert "_count=3" in _link(page, "next")
    assert _link(pages[-1], "next") is None
    assert _link(pages[1], "first") == "http://localhost/fhir/Patient/anna/$everything?_count=3"


def test_paging_is_not_shifted_by_writes_between_pages(client, records):
    first = client.get(f"{BASE}/Patient/anna/$everything?_count=4").get_json()
    # A new member and an update of an already returned one, before the next page.
    put(client, _observation("a-late", "anna"))
    put(client, {"resourceType": "Patient", "id": "anna", "gender": "female"})
    rest, _ = _all_pages(client, _link(first, "next"))
    keys = [key for key, _ in _entries(first) + rest]
    assert len(keys) == len(set(keys))
    assert set(keys) == ANNA | ANNA_REFERENCES | {"Observation/a-late"}


def test_type_level_everything_is_every_patients_record(client, records):
    entries, _ = _all_pages(client, f"{BASE}/Patient/$everything?_count=5")
    keys = [key for key, _ in entries]
    assert len(keys) == len(set(keys))
    assert set(keys) == ANNA | ANNA_REFERENCES | {
        "Patient/boris",
        "Observation/b-obs",
        "Encounter/b-enc",
        "Practitioner/dr-other",
    }
    assert "Organization/unused" not in keys


def test_type_restricts_the_resource_types(client, records):
    bundle = client.get(
        f"{BASE}/Patient/anna/$everything?_type=Observation,Practitioner"
    ).get_json()
    assert {key for key, _ in _entries(bundle)} == {
        "Observation/a-obs",
        "Practitioner/dr-who",
        "Practitioner/dr-gp",
    }
    repeated = client.get(
        f"{BASE}/Patient/anna/$everything?_type=Condition&_type=Medication"
    ).get_json()
    assert {key for key, _ in _entries(repeated)} == {"Condition/a-cond", "Medication/aspirin"}


def test_since_returns_only_what_changed(client, records):
    time.sleep(0.01)
    changed = put(client, {"resourceType": "Location", "id": "ward", "name": "Ward 4"}).get_json()
    since = changed["meta"]["lastUpdated"]
    put(client, _observation("a-new", "anna"))
    put(client, _observation("b-new", "boris"))
    bundle = client.get(f"{BASE}/Patient/anna/$everything", query_string={"_since": since})
    assert bundle.status_code == 200
    # The Location changed (though the Encounter referring to it did not).
    assert {key for key, _ in _entries(bundle.get_json())} == {
        "Location/ward",
        "Observation/a-new",
    }
    assert "_since=" in _link(bundle.get_json(), "self")


def test_post_with_parameters(client, records):
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "_type", "valueCode": "Observation,Encounter,Practitioner"},
            {"name": "_count", "valueInteger": 2},
        ],
    }
    response = client.post(
        f"{BASE}/Patient/anna/$everything",
        data=orjson.dumps(body),
        headers={"Content-Type": FHIR_JSON},
    )
    assert response.status_code == 200
    page = response.get_json()
    assert len(_entries(page)) == 2
    rest, _ = _all_pages(client, _link(page, "next"))
    assert {key for key, _ in _entries(page) + rest} == {
        "Observation/a-obs",
        "Encounter/a-enc",
        "Practitioner/dr-who",
        "Practitioner/dr-gp",
    }


def test_summary_count_and_elements(client, records):
    counted = client.get(f"{BASE}/Patient/anna/$everything?_summary=count").get_json()
    assert counted["total"] == len(ANNA | ANNA_REFERENCES)
    assert "entry" not in counted
    shaped = client.get(f"{BASE}/Patient/anna/$everything?_type=Location&_elements=id").get_json()
    (entry,) = shaped["entry"]
    assert "name" not in entry["resource"]


def test_unknown_and_deleted_patients(client, records):
    missing = client.get(f"{BASE}/Patient/nobody/$everything")
    assert missing.status_code == 404
    assert "Patient/nobody" in outcome_text(missing)
    client.delete(f"{BASE}/Patient/boris")
    assert client.get(f"{BASE}/Patient/boris/$everything").status_code == 410
    assert client.get(f"{BASE}/Patient/bad_id/$everything").status_code == 400


@pytest.mark.parametrize(
    "query, why",
    [
        ("_since=yesterday", "_since"),
        ("_since=2024-13-45", "_since"),
        ("_type=Frobnicator", "Frobnicator"),
        ("_count=-1", "_count"),
        ("_count=many", "_count"),
        ("_cursor=garbage", "cursor"),
        ("_summary=everything", "_summary"),
    ],
)
def test_bad_parameters_are_400(client, records, query, why):
    response = client.get(f"{BASE}/Patient/anna/$everything?{query}")
    assert response.status_code == 400
    assert why in outcome_text(response)


def test_care_date_range_is_reported_as_ignored(client, records):
    bundle = client.get(f"{BASE}/Patient/anna/$everything?start=2024-01-01").get_json()
    outcome = [e for e in bundle["entry"] if e["search"]["mode"] == "outcome"]
    assert "start" in outcome[0]["resource"]["issue"][0]["diagnostics"]
    strict = client.get(
        f"{BASE}/Patient/anna/$everything?start=2024-01-01",
        headers={"Prefer": "handling=strict"},
    )
    assert strict.status_code == 400


def test_everything_of_a_synthea_patient(client):
    resources = synthea.load(client, synthea.patient_bundles()[0])
    others = synthea.load(client, synthea.patient_bundles()[1])
    patient = next(r for r in resources if r["resourceType"] == "Patient")
    entries, pages = _all_pages(client, f"{BASE}/Patient/{patient['id']}/$everything?_count=40")
    keys = [key for key, _ in entries]
    assert len(pages) > 1
    assert len(keys) == len(set(keys))
    # The patient's bundle holds its record and the Practitioners and
    # Organizations that record refers to: exactly what $everything returns.
    assert set(keys) == {_key(r) for r in resources}
    modes = dict(entries)
    assert {modes[k] for k in keys if k.split("/")[0] in ("Practitioner", "Organization")} == {
        "include"
    }
    other_record = {
        _key(r) for r in others if r["resourceType"] not in ("Practitioner", "Organization")
    }
    assert not other_record & set(keys)


def test_capability_statement_lists_the_operations(client):
    rest = client.get(f"{BASE}/metadata").get_json()["rest"][0]
    by_type = {
        r["type"]: {o["name"]: o["definition"] for o in r["operation"]} for r in rest["resource"]
    }
    assert (
        by_type["Patient"]["everything"]
        == "http://hl7.org/fhir/OperationDefinition/Patient-everything"
    )
    assert (
        by_type["Observation"]["lastn"]
        == "http://hl7.org/fhir/OperationDefinition/Observation-lastn"
    )
    assert (
        by_type["Observation"]["stats"]
        == "http://hl7.org/fhir/OperationDefinition/Observation-stats"
    )
    assert "everything" not in by_type["Observation"]
    assert "lastn" not in by_type["Patient"]
