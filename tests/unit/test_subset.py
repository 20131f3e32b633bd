"""fhirserver.resources.subset: ``_summary`` and ``_elements``.

http://hl7.org/fhir/R4/search.html#summary, http://hl7.org/fhir/R4/search.html#elements.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from fhirserver.errors import BadRequest
from fhirserver.resources import jsonio
from fhirserver.resources.subset import SUBSETTED_TAG, apply_elements, apply_summary
from fhirserver.resources.validate import validate_resource

EXAMPLES = Path(__file__).resolve().parents[3] / "shared" / "fhir-data" / "r4-examples"
SUBSETTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
}
DIV = '<div xmlns="http://www.w3.org/1999/xhtml">Ann Doe</div>'


def example(name: str) -> dict:
    return jsonio.loads((EXAMPLES / name).read_bytes())


def a_patient() -> dict:
    return {
        "resourceType": "Patient",
        "id": "p1",
        "language": "en",
        "_language": {"extension": [{"url": "http://example.org/l", "valueString": "l"}]},
        "meta": {"versionId": "3", "tag": [{"system": "http://example.org/tags", "code": "vip"}]},
        "text": {"status": "generated", "div": DIV},
        "extension": [{"url": "http://example.org/ext", "valueString": "x"}],
        "identifier": [{"system": "http://example.org/mrn", "value": "123"}],
        "active": True,
        "name": [
            {
                "extension": [{"url": "http://example.org/name-ext", "valueString": "y"}],
                "family": "Doe",
                "given": ["Ann"],
            },
            {"extension": [{"url": "http://example.org/only-ext", "valueString": "z"}]},
        ],
        "birthDate": "1970-01-01",
        "_birthDate": {"extension": [{"url": "http://example.org/t", "valueTime": "10:00:00"}]},
        "maritalStatus": {"text": "married"},
        "contact": [{"name": {"family": "Roe"}}],
        "link": [{"other": {"reference": "Patient/p2"}, "type": "seealso"}],
    }


def an_observation() -> dict:
    return {
        "resourceType": "Observation",
        "id": "o1",
        "text": {"status": "generated", "div": DIV},
        "status": "final",
        "category": [{"text": "vital-signs"}],
        "code": {"text": "Blood pressure"},
        "subject": {"reference": "Patient/p1"},
        "note": [{"text": "sitting"}],
        "valueQuantity": {"value": 120, "unit": "mmHg"},
        "component": [{"code": {"text": "systolic"}, "valueQuantity": {"value": 120}}],
    }


def tags(resource: dict) -> list[dict]:
    return resource["meta"]["tag"]


# -- _summary=true ----------------------------------------------------------------


def test_summary_true_keeps_only_summary_elements() -> None:
    summary = apply_summary(a_patient(), "true")
    assert list(summary) == [
        "resourceType", "id", "meta", "identifier", "active", "name", "birthDate", "_birthDate",
        "link",
    ]  # fmt: skip
    assert "text" not in summary and "contact" not in summary and "maritalStatus" not in summary


def test_summary_true_applies_to_elements_inside_datatypes_and_drops_what_is_left_empty() -> None:
    summary = apply_summary(a_patient(), "true")
    # HumanName.extension is not a summary element; a name with nothing else goes.
    assert summary["name"] == [{"family": "Doe", "given": ["Ann"]}]
    assert summary["link"] == [{"other": {"reference": "Patient/p2"}, "type": "seealso"}]


def test_summary_true_keeps_primitive_extensions_with_their_element_only() -> None:
    summary = apply_summary(a_patient(), "true")
    assert summary["_birthDate"] == a_patient()["_birthDate"]
    # Resource.language is not a summary element: its extensions go with it.
    assert "language" not in summary and "_language" not in summary


def test_summary_true_keeps_mandatory_elements_inside_backbone_elements() -> None:
    summary = apply_summary(an_observation(), "true")
    assert summary["status"] == "final" and summary["code"] == {"text": "Blood pressure"}
    assert summary["component"] == [{"code": {"text": "systolic"}, "valueQuantity": {"value": 120}}]
    assert "note" not in summary and "text" not in summary


def test_summary_true_summarises_resources_inside_a_bundle() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"fullUrl": "http://server/Patient/p1", "resource": a_patient()}],
    }
    summary = apply_summary(bundle, "true")
    inner = summary["entry"][0]["resource"]
    assert "contact" not in inner and inner["id"] == "p1"


# -- _summary=text, data, false -------------------------------------------------


def test_summary_text_keeps_text_id_meta_and_top_level_mandatory_elements() -> None:
    summary = apply_summary(an_observation(), "text")
    assert set(summary) == {"resourceType", "id", "meta", "text", "status", "code"}
    assert summary["text"]["div"] == DIV


def test_summary_data_removes_only_the_text() -> None:
    original = a_patient()
    summary = apply_summary(original, "data")
    assert "text" not in summary
    assert {k: v for k, v in summary.items() if k != "meta"} == {
        k: v for k, v in original.items() if k not in ("text", "meta")
    }


def test_summary_false_returns_the_resource_unchanged() -> None:
    original = a_patient()
    assert apply_summary(original, "false") == a_patient()


@pytest.mark.parametrize("mode", ["true", "text", "data"])
def test_every_subsetting_summary_is_tagged_subsetted_and_keeps_existing_meta(mode: str) -> None:
    summary = apply_summary(a_patient(), mode)
    assert SUBSETTED in tags(summary)
    assert {"system": "http://example.org/tags", "code": "vip"} in tags(summary)
    assert summary["meta"]["versionId"] == "3"
    assert summary["resourceType"] == "Patient"


def test_the_subsetted_tag_is_added_once_and_meta_is_created_when_absent() -> None:
    bare = {"resourceType": "Patient", "id": "p1", "active": True}
    summary = apply_summary(bare, "data")
    assert summary["meta"] == {"tag": [SUBSETTED]}
    assert list(summary)[:3] == ["resourceType", "id", "meta"]
    again = apply_summary(summary, "data")
    assert tags(again).count(SUBSETTED) == 1
    assert SUBSETTED_TAG == SUBSETTED


@pytest.mark.parametrize("mode", ["count", "maybe", "", "TRUE"])
def test_an_unknown_summary_mode_is_400(mode: str) -> None:
    with pytest.raises(BadRequest) as caught:
        apply_summary(a_patient(), mode)
    assert caught.value.status == 400
    assert "_summary" in caught.value.message


@pytest.mark.parametrize("mode", ["true", "text", "data", "false"])
def test_summary_never_changes_its_input(mode: str) -> None:
    original = a_patient()
    apply_summary(original, mode)
    assert original == a_patient()


# -- _elements ---------------------------------------------------------------------


def test_elements_keeps_the_named_elements_and_id_meta_resource_type() -> None:
    subset = apply_elements(a_patient(), ["name", "Patient.birthDate"])
    assert list(subset) == ["resourceType", "id", "meta", "name", "birthDate", "_birthDate"]
    assert subset["name"] == a_patient()["name"]
    assert SUBSETTED in tags(subset)


def test_elements_always_keeps_mandatory_elements() -> None:
    subset = apply_elements(an_observation(), ["subject"])
    assert set(subset) == {"resourceType", "id", "meta", "status", "code", "subject"}


def test_elements_names_a_choice_element_by_its_base_name() -> None:
    for name in ("value", "value[x]", "Observation.value", "valueQuantity"):
        assert apply_elements(an_observation(), [name])["valueQuantity"] == {
            "value": 120,
            "unit": "mmHg",
        }


def test_elements_ignores_unknown_names_and_names_of_other_types() -> None:
    subset = apply_elements(a_patient(), ["nickname", "Observation.name", "", " "])
    assert set(subset) == {"resourceType", "id", "meta"}


def test_elements_never_changes_its_input() -> None:
    original = a_patient()
    subset = apply_elements(original, ["name"])
    subset["meta"]["tag"].append({"code": "x"})
    assert original == a_patient()


# -- against the official examples --------------------------------------------------


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.json")), ids=lambda p: p.name)
def test_every_subset_of_an_example_is_still_a_valid_resource(path: Path) -> None:
    original = jsonio.loads(path.read_bytes())
    before = copy.deepcopy(original)
    for subset in (
        apply_summary(original, "true"),
        apply_summary(original, "text"),
        apply_summary(original, "data"),
        apply_elements(original, ["identifier"]),
    ):
        assert validate_resource(subset)
        assert SUBSETTED in tags(subset)
    assert original == before


def test_summary_of_the_patient_example_matches_the_spec_summary_flags() -> None:
    summary = apply_summary(example("Patient-example.json"), "true")
    assert set(summary) == {
        "resourceType", "id", "meta", "identifier", "active", "name", "telecom", "gender",
        "birthDate", "_birthDate", "deceasedBoolean", "address", "managingOrganization",
    }  # fmt: skip
