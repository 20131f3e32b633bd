"""Compartment search ``GET [base]/Patient/[id]/[type]`` — http://hl7.org/fhir/R4/search.html#compartments

Membership comes from the official R4 Patient CompartmentDefinition
(Observation via subject or performer, Encounter via patient, Patient via link).
"""

from __future__ import annotations

import pytest

from tests.api.helpers import BASE, outcome_text, put


def _get(client, path: str):
    return client.get(f"{BASE}/{path}")


def _ids(bundle: dict) -> set[str]:
    return {
        f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in bundle.get("entry", [])
        if e["search"]["mode"] == "match"
    }


def _observation(id: str, code: str, **extra) -> dict:
    return {
        "resourceType": "Observation",
        "id": id,
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        **extra,
    }


@pytest.fixture
def records(client):
    for pid in ("anna", "boris", "linked"):
        put(client, {"resourceType": "Patient", "id": pid, "name": [{"family": pid}]})
    put(
        client,
        {
            "resourceType": "Patient",
            "id": "anna",
            "name": [{"family": "anna"}],
            "link": [{"other": {"reference": "Patient/linked"}, "type": "seealso"}],
        },
    )
    put(client, {"resourceType": "Organization", "id": "clinic", "name": "Clinic"})
    put(client, _observation("a-bp", "8480-6", subject={"reference": "Patient/anna"}))
    put(client, _observation("a-hr", "8867-4", subject={"reference": "Patient/anna"}))
    # In Anna's compartment through performer, not subject.
    put(
        client,
        _observation(
            "self-report",
            "8867-4",
            subject={"reference": "Patient/boris"},
            performer=[{"reference": "Patient/anna"}],
        ),
    )
    put(client, _observation("b-bp", "8480-6", subject={"reference": "Patient/boris"}))
    put(
        client,
        {
            "resourceType": "Encounter",
            "id": "a-visit",
            "status": "finished",
            "class": {"code": "AMB"},
            "subject": {"reference": "Patient/anna"},
        },
    )


def test_compartment_search_returns_members_by_every_listed_parameter(client, records):
    response = _get(client, "Patient/anna/Observation")
    assert response.status_code == 200
    assert _ids(response.get_json()) == {
        "Observation/a-bp",
        "Observation/a-hr",
        "Observation/self-report",
    }
    assert _ids(_get(client, "Patient/boris/Observation").get_json()) == {
        "Observation/self-report",
        "Observation/b-bp",
    }


def test_compartment_search_combines_with_parameters(client, records):
    bundle = _get(client, "Patient/anna/Observation?code=8480-6&_total=accurate").get_json()
    assert _ids(bundle) == {"Observation/a-bp"}
    assert bundle["total"] == 1


def test_patient_is_in_its_own_compartment_and_links_count(client, records):
    assert _ids(_get(client, "Patient/anna/Patient").get_json()) == {"Patient/anna"}
    # Patient.link puts Anna into the compartment of the patient she links to.
    assert _ids(_get(client, "Patient/linked/Patient").get_json()) == {
        "Patient/linked",
        "Patient/anna",
    }


def test_star_searches_every_member_type(client, records):
    found = _ids(_get(client, "Patient/anna/*?_count=100").get_json())
    assert found == {
        "Patient/anna",
        "Observation/a-bp",
        "Observation/a-hr",
        "Observation/self-report",
        "Encounter/a-visit",
    }
    # Organization is not a member type of the Patient compartment.
    assert not any(f.startswith("Organization/") for f in found)


def test_paging_links_keep_the_compartment_path(client, records):
    bundle = _get(client, "Patient/anna/Observation?_count=2").get_json()
    links = {link["relation"]: link["url"] for link in bundle["link"]}
    assert "/fhir/Patient/anna/Observation?" in links["self"]
    assert "/fhir/Patient/anna/Observation?" in links["next"]
    second = client.get(links["next"].replace("http://localhost", "")).get_json()
    seen = _ids(bundle) | _ids(second)
    assert seen == {"Observation/a-bp", "Observation/a-hr", "Observation/self-report"}
    assert not _ids(bundle) & _ids(second)


def test_unknown_patient_has_an_empty_compartment(client, records):
    bundle = _get(client, "Patient/nobody/Observation").get_json()
    assert bundle["resourceType"] == "Bundle" and _ids(bundle) == set()


@pytest.mark.parametrize(
    "path, why",
    [
        ("Patient/anna/Organization", "never in a Patient compartment"),
        ("Organization/clinic/Patient", "not a compartment"),
        ("Patient/anna/NoSuchType", "not supported"),
    ],
)
def test_not_a_compartment_search_is_404(client, records, path, why):
    response = _get(client, path)
    assert response.status_code == 404
    assert why in outcome_text(response)


def test_unknown_parameter_in_compartment_search_follows_handling(client, records):
    strict = client.get(
        f"{BASE}/Patient/anna/Observation?bogus=1", headers={"Prefer": "handling=strict"}
    )
    assert strict.status_code == 400
    lenient = _get(client, "Patient/anna/Observation?bogus=1").get_json()
    assert _ids(lenient) == {"Observation/a-bp", "Observation/a-hr", "Observation/self-report"}


def test_capability_statement_lists_the_compartments(client):
    rest = client.get(f"{BASE}/metadata").get_json()["rest"][0]
    assert "http://hl7.org/fhir/CompartmentDefinition/patient" in rest["compartment"]
