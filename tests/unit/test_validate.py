"""fhirserver.resources.validate: what a client sees when it sends a resource.

http://hl7.org/fhir/R4/validation.html, http://hl7.org/fhir/R4/json.html.
"""

from __future__ import annotations

import copy
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fhirserver.errors import BadRequest, FhirError, Unprocessable
from fhirserver.resources import jsonio
from fhirserver.resources.validate import ID_PATTERN, is_valid_id, validate_resource

EXAMPLES = Path(__file__).resolve().parents[3] / "shared" / "fhir-data" / "r4-examples"
XHTML = "http://www.w3.org/1999/xhtml"


def patient(**elements: object) -> dict:
    return {"resourceType": "Patient", **elements}


def observation(**elements: object) -> dict:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "Body weight"},
        **elements,
    }


def rejected(data: object, expected_type: str | None = None) -> FhirError:
    with pytest.raises(FhirError) as caught:
        validate_resource(data, expected_type)
    return caught.value


def expressions(error: FhirError) -> list[str]:
    return [e for issue in error.issues for e in issue.expression]


def diagnostics(error: FhirError) -> list[str]:
    return [issue.diagnostics for issue in error.issues]


# -- valid resources ---------------------------------------------------------


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.json")), ids=lambda p: p.name)
def test_every_official_r4_example_is_accepted_and_returned_unchanged(path: Path) -> None:
    data = jsonio.loads(path.read_bytes())
    before = copy.deepcopy(data)
    assert validate_resource(data) is data
    assert data == before


def test_a_resource_of_the_url_type_is_accepted() -> None:
    assert validate_resource(patient(id="p1"), "Patient") == {"resourceType": "Patient", "id": "p1"}


def test_primitive_extensions_are_accepted() -> None:
    data = patient(
        birthDate="1970-01-01",
        _birthDate={"extension": [{"url": "http://example.org/t", "valueTime": "10:00:00"}]},
        name=[
            {
                "given": ["Ann", None],
                "_given": [None, {"extension": [{"url": "http://x.org/a", "valueCode": "x"}]}],
            }
        ],
    )
    assert validate_resource(data) is data


# -- not a resource: 400 -------------------------------------------------------


@pytest.mark.parametrize("body", [[], "Patient", None, 5, True, [{"resourceType": "Patient"}]])
def test_a_body_that_is_not_a_json_object_is_400(body: object) -> None:
    error = rejected(body)
    assert isinstance(error, BadRequest) and error.status == 400
    assert "JSON object" in error.message


@pytest.mark.parametrize("data", [{}, {"resourceType": 5}, {"resourceType": ""}, {"id": "x"}])
def test_a_resource_without_a_string_resource_type_is_400(data: dict) -> None:
    error = rejected(data)
    assert error.status == 400
    assert "resourceType" in error.message


@pytest.mark.parametrize("rtype", ["Nope", "HumanName", "Resource", "patient", "OperationOutcome"])
def test_an_unknown_or_unstored_resource_type_is_400(rtype: str) -> None:
    error = rejected({"resourceType": rtype})
    assert error.status == 400
    assert f"`{rtype}`" in error.message


def test_a_resource_type_other_than_the_urls_is_400() -> None:
    error = rejected(patient(), "Observation")
    assert isinstance(error, BadRequest) and error.status == 400
    assert error.message == "resourceType `Patient` does not match the URL type `Observation`"


# -- invalid resources: 422 with a FHIRPath per problem -------------------------


def test_an_unknown_element_is_422_naming_its_path() -> None:
    error = rejected(patient(foo=1))
    assert isinstance(error, Unprocessable) and error.status == 422
    assert expressions(error) == ["Patient.foo"]
    assert diagnostics(error) == ["Patient.foo: unknown element"]


def test_an_unknown_nested_element_names_its_path() -> None:
    error = rejected(patient(name=[{"family": "Doe"}, {"given": ["A"], "nickname": "x"}]))
    assert expressions(error) == ["Patient.name[1].nickname"]


def test_a_value_of_the_wrong_type_names_its_path() -> None:
    error = rejected(patient(name=[{"given": ["Ann", 1]}]))
    assert error.status == 422
    assert expressions(error) == ["Patient.name[0].given[1]"]
    assert "string" in diagnostics(error)[0]


def test_a_bad_date_names_the_element_and_the_problem() -> None:
    error = rejected(patient(birthDate="1999-13-45"))
    assert expressions(error) == ["Patient.birthDate"]
    assert diagnostics(error) == ["Patient.birthDate: Date value string does not match spec regex."]


def test_every_problem_is_reported() -> None:
    error = rejected(patient(foo=1, bar=2, active="yes"))
    assert sorted(expressions(error)) == ["Patient.active", "Patient.bar", "Patient.foo"]


def test_a_string_boolean_is_not_coerced() -> None:
    # The models would take "yes" for true; FHIR JSON booleans are JSON booleans.
    error = rejected(patient(active="yes"))
    assert expressions(error) == ["Patient.active"]
    assert "boolean" in diagnostics(error)[0]


@pytest.mark.parametrize("value", [Decimal("1.50"), 1.5, 2, Decimal("1E+2")])
def test_a_decimal_may_be_any_json_number(value: object) -> None:
    assert validate_resource(observation(valueQuantity={"value": value}))


@pytest.mark.parametrize("value", ["1.5", True, Decimal("NaN")])
def test_a_decimal_must_be_a_json_number(value: object) -> None:
    error = rejected(observation(valueQuantity={"value": value}))
    assert expressions(error) == ["Observation.valueQuantity.value"]


@pytest.mark.parametrize("value", ["2", 2.0, True, Decimal("2")])
def test_an_integer_must_be_a_json_integer(value: object) -> None:
    error = rejected(patient(multipleBirthInteger=value))
    assert expressions(error) == ["Patient.multipleBirthInteger"]


def test_a_repeating_element_must_be_an_array() -> None:
    error = rejected(patient(name={"family": "Doe"}))
    assert expressions(error) == ["Patient.name"]
    assert "array" in diagnostics(error)[0]


def test_a_single_element_must_not_be_an_array() -> None:
    error = rejected(patient(gender=["male"]))
    assert expressions(error) == ["Patient.gender"]


@pytest.mark.parametrize(
    ("data", "path"),
    [
        (patient(birthDate=None), "Patient.birthDate"),
        (patient(name=[]), "Patient.name"),
        (patient(name=[{}]), "Patient.name[0]"),
        (patient(name=[None]), "Patient.name[0]"),
        (patient(name=[{"given": ["A", None]}]), "Patient.name[0].given[1]"),
        (patient(gender=""), "Patient.gender"),
        (patient(maritalStatus={}), "Patient.maritalStatus"),
    ],
)
def test_nulls_and_empty_values_are_422(data: dict, path: str) -> None:
    # http://hl7.org/fhir/R4/json.html: no nulls, no empty objects, arrays or strings.
    error = rejected(data)
    assert error.status == 422
    assert expressions(error) == [path]


def test_a_missing_required_element_names_its_path() -> None:
    data = observation()
    del data["code"]
    error = rejected(data)
    assert expressions(error) == ["Observation.code"]
    assert error.issues[0].code == "required"


def test_a_required_element_given_as_an_array_is_422() -> None:
    error = rejected(observation(code=[{"text": "x"}]))
    assert expressions(error) == ["Observation.code"]


def test_a_choice_element_with_two_types_is_422() -> None:
    error = rejected(patient(deceasedBoolean=True, deceasedDateTime="2020-01-01"))
    assert expressions(error) == ["Patient.deceased[x]"]


def test_errors_inside_contained_resources_and_bundle_entries_are_located() -> None:
    error = rejected(patient(contained=[{"resourceType": "Observation", "status": "final"}]))
    assert expressions(error) == ["Patient.contained[0].code"]
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": patient()}, {"resource": patient(birthDate="soon")}],
    }
    error = rejected(bundle)
    assert expressions(error) == ["Bundle.entry[1].resource.birthDate"]


@pytest.mark.parametrize("contained", [{"resourceType": "Nope"}, {"resourceType": 5}, {"a": 1}])
def test_a_contained_resource_of_unknown_type_is_422(contained: dict) -> None:
    error = rejected(patient(contained=[contained]))
    assert error.status == 422
    assert expressions(error) == ["Patient.contained[0]"]


def test_a_primitive_extension_error_is_located_on_the_element() -> None:
    error = rejected(patient(birthDate="2000-01-01", _birthDate={"extension": [{"url": 3}]}))
    assert expressions(error) == ["Patient.birthDate.extension[0].url"]


def test_an_extension_sibling_of_an_unknown_element_is_unknown() -> None:
    error = rejected(patient(_nickname={"extension": []}))
    assert expressions(error) == ["Patient._nickname"]


# -- ids ---------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["a b", "a" * 65, "", "ü", "a/b", "a_b", 7])
def test_an_invalid_id_is_422_naming_patient_id(bad: object) -> None:
    error = rejected(patient(id=bad))
    assert isinstance(error, Unprocessable)
    assert "Patient.id" in expressions(error)


def test_an_id_of_64_characters_is_valid() -> None:
    assert validate_resource(patient(id="A-1." + "x" * 60))["id"].startswith("A-1.")


def test_an_invalid_id_of_a_contained_resource_is_located() -> None:
    error = rejected(patient(contained=[{"resourceType": "Patient", "id": "no way"}]))
    assert expressions(error) == ["Patient.contained[0].id"]


@pytest.mark.parametrize("value", ["a", "A-b.9", "x" * 64])
def test_is_valid_id_accepts_r4_ids(value: str) -> None:
    assert is_valid_id(value)
    assert ID_PATTERN.fullmatch(value)


@pytest.mark.parametrize("value", ["", "x" * 65, "a b", "a\n", "a_b", "é"])
def test_is_valid_id_refuses_what_r4_refuses(value: str) -> None:
    assert not is_valid_id(value)


# -- narrative and strings ---------------------------------------------------------


def narrative(div: str) -> dict:
    return patient(text={"status": "generated", "div": div})


@pytest.mark.parametrize(
    "div",
    [
        "plain text",
        "<p xmlns='http://www.w3.org/1999/xhtml'>not a div</p>",
        "<div>no namespace</div>",
        f"<div xmlns='{XHTML}'><script>alert(1)</script></div>",
        f"<div xmlns='{XHTML}'><p onclick='steal()'>x</p></div>",
        f"<div xmlns='{XHTML}'><a href=' JavaScript:steal()'>x</a></div>",
        f"<div xmlns='{XHTML}'><iframe src='http://evil'/>x</div>",
        f"<div xmlns='{XHTML}'>   </div>",
        f"<!DOCTYPE d [<!ENTITY e 'x'>]><div xmlns='{XHTML}'>&e;</div>",
    ],
)
def test_a_narrative_that_is_not_safe_xhtml_is_422(div: str) -> None:
    error = rejected(narrative(div))
    assert error.status == 422
    assert expressions(error) == ["Patient.text.div"]


def test_a_safe_narrative_is_accepted() -> None:
    div = f"<div xmlns='{XHTML}'><p>Ann <b>Doe</b>, <a href='#x'>more</a></p><img src='#i'/></div>"
    assert validate_resource(narrative(div))


def test_control_characters_in_strings_are_422() -> None:
    error = rejected(patient(name=[{"family": "Do\x07e"}]))
    assert expressions(error) == ["Patient.name[0].family"]


# -- robustness: only FhirErrors, whatever comes in -------------------------------


def test_deep_nesting_is_422_not_a_crash() -> None:
    inner: dict = {"url": "http://example.org/x"}
    top = inner
    for _ in range(5000):
        nested = {"url": "http://example.org/x"}
        inner["extension"] = [nested]
        inner = nested
    error = rejected(patient(extension=[top]))
    assert error.status == 422
    assert "nested" in error.message


def test_nesting_within_the_limit_is_validated_by_the_model() -> None:
    inner: dict = {"url": "http://example.org/x", "valueString": "leaf"}
    for _ in range(40):
        inner = {"url": "http://example.org/x", "extension": [inner]}
    assert validate_resource(patient(extension=[inner]))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=12,
)
patient_keys = st.sampled_from(
    ["id", "meta", "text", "contained", "extension", "name", "_name", "birthDate", "_birthDate",
     "active", "gender", "deceasedBoolean", "deceasedDateTime", "contact", "link", "photo",
     "multipleBirthInteger", "communication", "telecom", "address", "foo", "resourceType"]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_any_json_value_gives_a_resource_or_a_fhir_error(value: object) -> None:
    try:
        validate_resource(value)
    except FhirError as error:
        assert error.status in (400, 422)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(patient_keys, json_values, max_size=6))
def test_any_patient_shaped_json_gives_a_resource_or_a_fhir_error(elements: dict) -> None:
    try:
        validate_resource({**elements, "resourceType": "Patient"})
    except FhirError as error:
        assert error.status == 422
        assert all(
            issue.expression and issue.expression[0].startswith("Patient") for issue in error.issues
        )
