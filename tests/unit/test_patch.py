"""fhirserver.resources.patch: JSON Patch (RFC 6902) and FHIRPath Patch.

http://hl7.org/fhir/R4/http.html#patch, http://hl7.org/fhir/R4/fhirpatch.html.
A pure module: these tests need no database and run unchanged on both backends.
"""

from __future__ import annotations

import copy
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, reject, settings
from hypothesis import strategies as st

from fhirserver.errors import BadRequest, FhirError, Unprocessable
from fhirserver.resources import jsonio
from fhirserver.resources.patch import apply_fhirpath_patch, apply_json_patch
from fhirserver.resources.validate import validate_resource

EXAMPLES = Path(__file__).resolve().parents[3] / "shared" / "fhir-data" / "r4-examples"


def example(name: str) -> dict:
    return jsonio.loads((EXAMPLES / name).read_bytes())


@pytest.fixture
def patient() -> dict:
    """The official Patient-example.json (Peter James Chalmers)."""
    return example("Patient-example.json")


@pytest.fixture
def observation() -> dict:
    """The official Observation-example.json (body weight, valueQuantity)."""
    return example("Observation-example.json")


def containers(value: Any) -> set[int]:
    """The ids of every dict and list inside ``value``."""
    found: set[int] = set()
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            found.add(id(item))
            stack.extend(item.values())
        elif isinstance(item, list):
            found.add(id(item))
            stack.extend(item)
    return found


def rejected(
    error: type[FhirError], apply: Any, resource: dict, patch: object, *needles: str
) -> FhirError:
    """Apply ``patch``, expect ``error`` (exactly), the input untouched and ``needles`` in the message."""
    before = copy.deepcopy(resource)
    with pytest.raises(FhirError) as caught:
        apply(resource, patch)
    assert type(caught.value) is error, caught.value.message
    assert resource == before
    for needle in needles:
        assert needle in caught.value.message, caught.value.message
    assert caught.value.issues and caught.value.issues[0].diagnostics == caught.value.message
    return caught.value


# ==========================================================================
# JSON Patch
# ==========================================================================


def test_json_patch_add_replace_remove(patient):
    before = copy.deepcopy(patient)
    result = apply_json_patch(
        patient,
        [
            {"op": "replace", "path": "/gender", "value": "other"},
            {"op": "add", "path": "/name/1/family", "value": "Chalmers"},
            {"op": "add", "path": "/telecom/-", "value": {"system": "email", "value": "j@x.org"}},
            {"op": "add", "path": "/identifier/0", "value": {"system": "urn:x", "value": "1"}},
            {"op": "remove", "path": "/deceasedBoolean"},
            {"op": "remove", "path": "/_birthDate"},
        ],
    )
    assert result["gender"] == "other"
    assert result["name"][1] == {"use": "usual", "family": "Chalmers", "given": ["Jim"]}
    assert result["telecom"][-1] == {"system": "email", "value": "j@x.org"}
    assert result["identifier"][0] == {"system": "urn:x", "value": "1"}
    assert len(result["identifier"]) == 2
    assert "deceasedBoolean" not in result and "_birthDate" not in result
    assert patient == before
    validate_resource(result, "Patient")


def test_json_patch_copy_move_and_passing_test(patient):
    result = apply_json_patch(
        patient,
        [
            {"op": "test", "path": "/name/0/family", "value": "Chalmers"},
            {"op": "test", "path": "/active", "value": True},
            {"op": "copy", "from": "/address/0", "path": "/contact/0/address"},
            {"op": "move", "from": "/name/2", "path": "/name/0"},
        ],
    )
    assert result["contact"][0]["address"] == patient["address"][0]
    assert [n["use"] for n in result["name"]] == ["maiden", "official", "usual"]
    validate_resource(result, "Patient")


def test_json_patch_keeps_decimal_precision(observation):
    result = apply_json_patch(
        observation, [{"op": "replace", "path": "/valueQuantity/value", "value": Decimal("1.50")}]
    )
    assert jsonio.dumps(result["valueQuantity"]["value"]) == b"1.50"


def test_json_patch_result_shares_nothing_with_input_or_patch(patient):
    value = {"system": "email", "value": "j@x.org"}
    result = apply_json_patch(patient, [{"op": "add", "path": "/telecom/-", "value": value}])
    assert not containers(result) & containers(patient)
    result["telecom"][-1]["value"] = "changed"
    assert value["value"] == "j@x.org"


def test_failing_json_patch_test_is_422_naming_the_operation(patient):
    error = rejected(
        Unprocessable,
        apply_json_patch,
        patient,
        [
            {"op": "replace", "path": "/gender", "value": "female"},
            {"op": "test", "path": "/name/0/family", "value": "Windsor"},
        ],
        "operation [1]",
        "test failed",
        '"Chalmers"',
    )
    assert error.status == 422


def test_json_patch_test_tells_true_from_1(patient):
    rejected(
        Unprocessable,
        apply_json_patch,
        patient,
        [{"op": "test", "path": "/active", "value": 1}],
        "the value is true, not 1",
    )


@pytest.mark.parametrize(
    ("operations", "needle"),
    [
        ({"op": "add", "path": "/active", "value": False}, "JSON array"),
        ("[]", "JSON array"),
        ([["add", "/active"]], "must be a JSON object"),
        ([{"path": "/active", "value": False}], "no `op`"),
        ([{"op": "append", "path": "/active", "value": False}], "unknown op `append`"),
        ([{"op": "remove"}], "needs a `path`"),
        ([{"op": "remove", "path": 7}], "needs a `path`"),
        ([{"op": "remove", "path": "active"}], "not a JSON Pointer"),
        ([{"op": "remove", "path": "/a~2"}], "not a JSON Pointer"),
        ([{"op": "add", "path": "/active"}], "needs a `value`"),
        ([{"op": "replace", "path": "/active"}], "needs a `value`"),
        ([{"op": "test", "path": "/active"}], "needs a `value`"),
        ([{"op": "move", "path": "/active"}], "needs a `from`"),
        ([{"op": "copy", "path": "/active", "from": "active"}], "not a JSON Pointer"),
    ],
)
def test_malformed_json_patch_is_400(patient, operations, needle):
    error = rejected(BadRequest, apply_json_patch, patient, operations, needle)
    assert error.status == 400


def test_malformed_json_patch_is_400_even_after_an_operation_that_would_fail(patient):
    rejected(
        BadRequest,
        apply_json_patch,
        patient,
        [{"op": "remove", "path": "/nothing"}, {"op": "frob", "path": "/x"}],
        "operation [1]",
    )


@pytest.mark.parametrize(
    ("operation", "needle"),
    [
        ({"op": "remove", "path": "/link"}, "`/link` does not exist"),
        ({"op": "replace", "path": "/photo/0", "value": {}}, "`/photo` does not exist"),
        ({"op": "replace", "path": "/name/3", "value": {}}, "`/name` has no item 3 (it has 3)"),
        ({"op": "replace", "path": "/name/-", "value": {}}, "`-` is not an index"),
        ({"op": "add", "path": "/name/4", "value": {}}, "outside of list"),
        ({"op": "add", "path": "/maritalStatus/text", "value": "x"}, "`/maritalStatus` does not"),
        ({"op": "add", "path": "/birthDate/x", "value": "x"}, "`/birthDate` is a string"),
        ({"op": "move", "from": "/link", "path": "/x"}, "`from`: `/link` does not exist"),
        ({"op": "copy", "from": "/name/9", "path": "/x"}, "`from`: `/name` has no item 9"),
        ({"op": "move", "from": "/name", "path": "/name/0"}, "own children"),
        ({"op": "test", "path": "/link", "value": []}, "`/link` does not exist"),
        ({"op": "remove", "path": ""}, "whole document"),
    ],
)
def test_json_patch_path_that_does_not_fit_is_422(patient, operation, needle):
    error = rejected(Unprocessable, apply_json_patch, patient, [operation], needle, "[0]")
    # The message names the path, never quotes the resource's content.
    assert "Chalmers" not in error.message and "Erewhon" not in error.message


@pytest.mark.parametrize(
    "operation",
    [
        {"op": "replace", "path": "/id", "value": "other"},
        {"op": "remove", "path": "/id"},
        {"op": "replace", "path": "/resourceType", "value": "Person"},
        {"op": "move", "from": "/id", "path": "/x"},
        {"op": "replace", "path": "", "value": {"resourceType": "Patient", "id": "other"}},
    ],
)
def test_json_patch_changing_resource_type_or_id_is_422(patient, operation):
    rejected(Unprocessable, apply_json_patch, patient, [operation], "must not change")


def test_json_patch_replacing_the_document_by_a_non_object_is_422(patient):
    rejected(
        Unprocessable,
        apply_json_patch,
        patient,
        [{"op": "replace", "path": "", "value": ["a"]}],
        "must leave a resource",
    )


def test_json_patch_may_rewrite_the_id_to_its_own_value(patient):
    result = apply_json_patch(patient, [{"op": "replace", "path": "/id", "value": "example"}])
    assert result == patient


def test_json_patch_failing_half_way_leaves_the_input_untouched(patient):
    rejected(
        Unprocessable,
        apply_json_patch,
        patient,
        [
            {"op": "remove", "path": "/name/0/given/0"},
            {"op": "add", "path": "/contact/0/name/given/-", "value": "Marie"},
            {"op": "move", "from": "/address/0", "path": "/contact/0/address"},
            {"op": "remove", "path": "/communication"},
        ],
        "operation [3]",
    )


# --------------------------------------------------------------------------
# JSON Patch properties
# --------------------------------------------------------------------------

PROPERTY_SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
PATIENT = example("Patient-example.json")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)


def _locations(value: Any, prefix: tuple = ()) -> list[tuple]:
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, child in value.items():
            found += _locations(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += _locations(child, (*prefix, index))
    return found


def _at(document: Any, location: tuple) -> Any:
    for part in location:
        document = document[part]
    return document


# Everything but resourceType and id, which a patch may not change.
LOCATIONS = [loc for loc in _locations(PATIENT) if loc[0] not in ("resourceType", "id")]
OBJECT_LOCATIONS = [()] + [loc for loc in LOCATIONS if isinstance(_at(PATIENT, loc), dict)]


def _pointer(location: tuple) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in location)


@st.composite
def updates(draw) -> tuple[dict, tuple, Any]:
    """A replace of an existing element, or an add of a member to an existing object."""
    value = draw(json_values)
    if draw(st.booleans()):
        location = draw(st.sampled_from(LOCATIONS))
        return {"op": "replace", "path": _pointer(location), "value": value}, location, value
    parent = draw(st.sampled_from(OBJECT_LOCATIONS))
    existing = list(_at(PATIENT, parent))
    key = draw(st.sampled_from(existing) | st.text(min_size=1, max_size=8))
    assume(parent or key not in ("resourceType", "id"))
    location = (*parent, key)
    return {"op": "add", "path": _pointer(location), "value": value}, location, value


@PROPERTY_SETTINGS
@given(st.lists(updates(), min_size=1, max_size=4))
def test_json_patch_replace_and_add_equal_a_plain_dict_update(steps):
    expected = copy.deepcopy(PATIENT)
    patched = PATIENT
    for operation, location, value in steps:
        # An earlier step may have replaced this one's parent; then it is
        # another patch (one that must fail), not the update this checks.
        try:
            parent, key = _at(expected, location[:-1]), location[-1]
        except (KeyError, IndexError, TypeError):
            reject()
        if operation["op"] == "add":
            assume(isinstance(parent, dict))
        else:
            assume(
                (isinstance(parent, dict) and key in parent)
                or (isinstance(parent, list) and isinstance(key, int) and key < len(parent))
            )
        parent[key] = copy.deepcopy(value)
        patched = apply_json_patch(patched, [operation])
    assert patched == expected
    assert PATIENT == example("Patient-example.json")


@PROPERTY_SETTINGS
@given(
    st.lists(updates(), max_size=3),
    st.sampled_from(LOCATIONS),
    json_values,
)
def test_failing_json_patch_test_leaves_the_original_untouched(steps, location, value):
    assume(_at(PATIENT, location) != value)
    original = copy.deepcopy(PATIENT)
    operations = [operation for operation, _, _ in steps]
    # The test runs first, so it sees the original value and must fail.
    patch = [{"op": "test", "path": _pointer(location), "value": value}, *operations]
    with pytest.raises(Unprocessable) as caught:
        apply_json_patch(PATIENT, patch)
    assert "operation [0]" in caught.value.message
    assert PATIENT == original


# ==========================================================================
# FHIRPath Patch
# ==========================================================================


def operation(kind: str, path: str, **parts: Any) -> dict:
    """One ``operation`` parameter: ``value=`` takes the value part's body (``{"valueDate": ...}``)."""
    body = [{"name": "type", "valueCode": kind}, {"name": "path", "valueString": path}]
    for name, value in parts.items():
        if name == "name":
            body.append({"name": "name", "valueString": value})
        elif name in ("index", "source", "destination"):
            body.append({"name": name, "valueInteger": value})
        else:
            body.append({"name": name, **value})
    return {"name": "operation", "part": body}


def parameters(*operations: dict) -> dict:
    return {"resourceType": "Parameters", "parameter": list(operations)}


def fhirpath(resource: dict, *operations: dict) -> dict:
    before = copy.deepcopy(resource)
    result = apply_fhirpath_patch(resource, parameters(*operations))
    assert resource == before
    assert not containers(result) & containers(resource)
    validate_resource(result, resource["resourceType"])
    return result


# --- add -------------------------------------------------------------------


def test_add_a_single_primitive_element(patient):
    # fhirpatch.html, the first example: add birthDate (here: to a Patient without one).
    del patient["birthDate"], patient["_birthDate"]
    result = fhirpath(
        patient, operation("add", "Patient", name="birthDate", value={"valueDate": "1930-01-01"})
    )
    assert result["birthDate"] == "1930-01-01"


def test_add_a_choice_element_takes_its_type_from_the_value(patient):
    result = fhirpath(
        patient, operation("add", "Patient", name="multipleBirth", value={"valueInteger": 2})
    )
    assert result["multipleBirthInteger"] == 2


def test_add_to_a_repeating_element_appends(patient):
    result = fhirpath(
        patient,
        operation(
            "add",
            "Patient",
            name="identifier",
            value={"valueIdentifier": {"system": "urn:x", "value": "2"}},
        ),
    )
    assert result["identifier"][1] == {"system": "urn:x", "value": "2"}
    assert result["identifier"][0] == patient["identifier"][0]


def test_add_a_primitive_to_a_list_keeps_its_extensions_aligned(patient):
    patient["name"][0]["_given"] = [None, {"id": "g2"}]
    result = fhirpath(
        patient,
        operation(
            "add", "Patient.name.where(use = 'official')", name="given", value={"valueString": "J"}
        ),
    )
    assert result["name"][0]["given"] == ["Peter", "James", "J"]
    assert result["name"][0]["_given"] == [None, {"id": "g2"}, None]


def test_add_a_primitive_with_its_extension(patient):
    extension = {"extension": [{"url": "http://example.org/x", "valueString": "y"}]}
    result = fhirpath(
        patient,
        operation(
            "add",
            "Patient.name[1]",
            name="family",
            value={"valueString": "Chalmers", "_valueString": extension},
        ),
    )
    assert result["name"][1]["family"] == "Chalmers"
    assert result["name"][1]["_family"] == extension


def test_add_an_anonymous_element_from_parts(patient):
    # fhirpatch.html: a backbone element (Patient.contact) is given as parts.
    result = fhirpath(
        patient,
        operation(
            "add",
            "Patient",
            name="contact",
            value={
                "part": [
                    {"name": "name", "valueHumanName": {"family": "Chalmers", "given": ["Ann"]}},
                    {"name": "telecom", "valueContactPoint": {"system": "phone", "value": "1"}},
                    {"name": "telecom", "valueContactPoint": {"system": "email", "value": "a@b"}},
                    {"name": "gender", "valueCode": "female"},
                ]
            },
        ),
    )
    assert result["contact"][1] == {
        "name": {"family": "Chalmers", "given": ["Ann"]},
        "telecom": [{"system": "phone", "value": "1"}, {"system": "email", "value": "a@b"}],
        "gender": "female",
    }


def test_add_an_extension_from_parts(patient):
    result = fhirpath(
        patient,
        operation(
            "add",
            "Patient",
            name="extension",
            value={
                "part": [
                    {"name": "url", "valueUri": "http://example.org/favourite-colour"},
                    {"name": "value", "valueCode": "blue"},
                ]
            },
        ),
    )
    assert result["extension"] == [
        {"url": "http://example.org/favourite-colour", "valueCode": "blue"}
    ]


def test_add_a_contained_resource(patient):
    contained = {"resourceType": "Organization", "id": "o1", "name": "Acme"}
    result = fhirpath(
        patient,
        operation("add", "Patient", name="contained", value={"resource": contained}),
        operation(
            "replace",
            "Patient.managingOrganization",
            value={"valueReference": {"reference": "#o1"}},
        ),
    )
    assert result["contained"] == [contained]
    assert result["managingOrganization"] == {"reference": "#o1"}


def test_add_of_a_present_single_element_is_422(patient):
    rejected(
        Unprocessable,
        apply_fhirpath_patch,
        patient,
        parameters(operation("add", "Patient", name="gender", value={"valueCode": "female"})),
        "already has a value",
        "operation [0] (add)",
    )


def test_add_of_a_choice_whose_other_type_is_present_is_422(patient):
    rejected(
        Unprocessable,
        apply_fhirpath_patch,
        patient,
        parameters(
            operation("add", "Patient", name="deceased", value={"valueDateTime": "2020-01-01"})
        ),
        "already has a value",
    )


# --- insert ----------------------------------------------------------------


def test_insert_at_an_index(patient):
    value = {"valueContactPoint": {"system": "email", "value": "p@x.org"}}
    result = fhirpath(patient, operation("insert", "Patient.telecom", value=value, index=1))
    assert result["telecom"][1] == {"system": "email", "value": "p@x.org"}
    assert result["telecom"][0] == patient["telecom"][0]
    assert result["telecom"][2:] == patient["telecom"][1:]


def test_insert_at_the_end_and_into_an_absent_list(patient):
    result = fhirpath(
        patient,
        operation("insert", "Patient.name[1].given", value={"valueString": "Jimmy"}, index=1),
        operation(
            "insert",
            "Patient.generalPractitioner",
            value={"valueReference": {"reference": "Practitioner/1"}},
            index=0,
        ),
    )
    assert result["name"][1]["given"] == ["Jim", "Jimmy"]
    assert result["generalPractitioner"] == [{"reference": "Practitioner/1"}]


def test_insert_keeps_primitive_extensions_aligned(patient):
    patient["name"][0]["_given"] = [{"id": "p"}, None]
    result = fhirpath(
        patient,
        operation("insert", "Patient.name.first().given", value={"valueString": "Jo"}, index=0),
    )
    assert result["name"][0]["given"] == ["Jo", "Peter", "James"]
    assert result["name"][0]["_given"] == [None, {"id": "p"}, None]


def test_insert_past_the_end_is_422(patient):
    rejected(
        Unprocessable,
        apply_fhirpath_patch,
        patient,
        parameters(
            operation("insert", "Patient.name[1].given", value={"valueString": "X"}, index=2)
        ),
        "past the end",
    )


def test_insert_into_an_element_that_does_not_repeat_is_422(patient):
    rejected(
        Unprocessable,
        apply_fhirpath_patch,
        patient,
        parameters(operation("insert", "Patient.gender", value={"valueCode": "male"}, index=0)),
        "does not repeat",
    )


def test_insert_into_several_lists_at_once_is_422(patient):
    rejected(
        Unprocessable,
        apply_fhirpath_patch,
        patient,
        parameters(operation("insert", "Patient.name.given", value={"valueString": "X"}, index=0)),
        "matches 3 elements",
    )


# --- delete ----------------------------------------------------------------


def test_delete_a_list_item_selected_by_where(patient):
    result = fhirpath(patient, operation("delete", "Patient.name.where(use = 'usual')"))
    assert [n["use"] for n in result["name"]] == ["official", "maiden"]


def test_delete_a_primitive_takes_its_extensions_along(patient):
    result = fhirpath(patient, operation("delete", "Patient.birthDate"))
    assert "birthDate" not in result and "_birthDate" not in result


def test_delete_removes_the_objects_and_lists_it_empties(patient):
    patient["name"][1] = {"given": ["Jim"]}
    result = fhirpath(
        patient,
        operation("delete", "Patient.managingOrganization.reference"),
        operation("delete", "Patient.name.given.where($this = 'Jim')"),
        operation("delete", "Patient.identifier.assigner.display"),
    )
    assert "managingOrganization" not in result
    assert [n.get("use") for n in result["name"]] == ["official", "maiden"]
    assert "assigner" not in result["identifier"][0]


def test_delete_of_the_last_list_item_removes_the_list(patient):
    result = fhirpath(patient, operation("delete", "Patient.address[0]"))
    assert "address" not in result


def test_delete_keeps_primitive_extensions_aligned(patient):
    patient["name"][0]["_given"] = [{"id": "p"}, {"id": "j"}]
    result = fhirpath(patient, operation("delete", "Patient.name[0].given[0]"))
    assert result["name"][0]["given"] == ["James"]
    assert result["name"][0]["_given"] == [{"id": "j"}]
    # An `_given` left with nothing but nulls says nothing: it goes too.
    patient["name"][0]["_given"] = [None, {"id": "j"}]
    result = fhirpath(patient, operation("delete", "Patient.name[0].given[1]"))
    assert result["name"][0]["given"] == ["Peter"]
    assert "_given" not in result["name"][0]


def test_delete_of_nothing_is_not_an_error(patient):
    # fhirpatch.html: delete removes the element "if found".
    result = fhirpath(
        patient,
        operation("delete", "Patient.link"),
        operation("delete", "Patient.name.where(use = 'nickname')"),
        operation("delete", "Patient.name[7]"),
    )
    assert result == patient


def test_delete_of_several_elements_is_422(patient):
    rejected(
        Unprocessable,
        apply_fhirpath_patch,
        patient,
        parameters(operation("delete", "Patient.telecom.where(system = 'phone')")),
        "matches 3 elements",
        "operation [0] (delete)",
    )


def test_delete_of_the_resource_or_its_id_is_422(patient):
    rejected(
        Unprocessable,
        apply_fhirpath_patch,
        patient,
        parameters(operation("delete", "Patient")),
        "cannot be deleted",
    )
    rejected(
        Unprocessable,
        apply_fhirpath_patch,
        patient,
        parameters(operation("delete", "Patient.id")),
        "must not change the resource's `id`",
    )


# --- replace ---------------------------------------------------------------


def test_replace_a_primitive(patient):
    # The element (value and extensions) is replaced by the one the patch gives.
    result = fhirpath(
        patient, operation("replace", "Patient.birthDate", value={"valueDate": "1975"})
    )
    assert result["birthDate"] == "1975"
    assert "_birthDate" not in result


def test_replace_in_an_element_selected_by_where_with_and(patient):
    result = fhirpath(
        patient,
        operation(
            "replace",
            "Patient.name.where(use = 'maiden' and family = 'Windsor').period.end",
            value={"valueDateTime": "2003"},
        ),
        operation("replace", "Patient.telecom.where(rank = 2).use", value={"valueCode": "temp"}),
        operation("replace", "Patient.active", value={"valueBoolean": False}),
    )
    assert result["name"][2]["period"] == {"end": "2003"}
    assert result["telecom"][2]["use"] == "temp"
    assert result["active"] is False


def test_replace_a_list_item_by_index(patient):
    value = {"valueContactPoint": {"system": "phone", "value": "000", "use": "work"}}
    result = fhirpath(patient, operation("replace", "Patient.telecom[1]", value=value))
    assert result["telecom"][1] == value["valueContactPoint"]
    assert len(result["telecom"]) == 4


def test_replace_a_choice_with_another_type(observation):
    result = fhirpath(
        observation, operation("replace", "Observation.value", value={"valueString": "heavy"})
    )
    assert result["valueString"] == "heavy"
    assert "valueQuantity" not in result


def test_replace_with_a_quantity_profile(observation):
    value = {"valueQuantity": {"value": Decimal("84.10"), "unit": "kg"}}
    result = fhirpath(observation, operation("replace", "Observation.value", value=value))
    assert result["valueQuantity"] == {"value": Decimal("84.10"), "unit": "kg"}
    age = {"valueAge": {"value": 3, "unit": "a", "system": "http://unitsofmeasure.org"}}
    result = fhirpath(observation, operation("replace", "Observation.valueQuantity", value=age))
    assert result["valueQuantity"]["value"] == 3


def test_replace_a_backbone_element_from_parts(patient):
    result = fhirpath(
        patient,
        operation(
            "replace",
            "Patient.contact.first()",
            value={"part": [{"name": "name", "valueHumanName": {"text": "B. du Marché"}}]},
        ),
    )
    assert result["contact"] == [{"name": {"text": "B. du Marché"}}]


def test_replace_of_nothing_is_422(patient):
    rejected(
        Unprocessable,
        apply_fhirpath_patch,
        patient,
        parameters(operation("replace", "Patient.maritalStatus.text", value={"valueString": "x"})),
        "matches no element",
    )


def test_replace_of_several_elements_is_422(patient):
    rejected(
        Unprocessable,
        apply_fhirpath_patch,
        patient,
        parameters(operation("replace", "Patient.name", value={"valueHumanName": {"family": "X"}})),
        "matches 3 elements",
    )


@pytest.mark.parametrize(
    ("path", "value", "needle"),
    [
        ("Patient.name[0]", {"valueAddress": {"city": "X"}}, "is of type HumanName, not Address"),
        ("Patient.name[0].family", {"valueHumanName": {"family": "X"}}, "is of type string"),
        ("Patient.birthDate", {"part": [{"name": "id", "valueString": "x"}]}, "it needs a value"),
        ("Patient.name[0]", {"resource": {"resourceType": "Basic"}}, "not Resource"),
        ("Patient.deceased", {"valueString": "yes"}, "cannot be of type string"),
    ],
)
def test_replace_with_a_value_of_the_wrong_type_is_422(patient, path, value, needle):
    rejected(
        Unprocessable,
        apply_fhirpath_patch,
        patient,
        parameters(operation("replace", path, value=value)),
        needle,
    )


def test_replace_of_the_id_is_422(patient):
    rejected(
        Unprocessable,
        apply_fhirpath_patch,
        patient,
        parameters(operation("replace", "Patient.id", value={"valueId": "other"})),
        "must not change the resource's `id`",
    )


def test_replace_of_the_resource_itself_is_422(patient):
    rejected(
        Unprocessable,
        apply_fhirpath_patch,
        patient,
        parameters(operation("replace", "Patient", value={"resource": patient})),
        "cannot be replaced",
    )


# --- move ------------------------------------------------------------------


def test_move_within_a_list(patient):
    result = fhirpath(patient, operation("move", "Patient.name", source=0, destination=2))
    assert [n["use"] for n in result["name"]] == ["usual", "maiden", "official"]
    result = fhirpath(patient, operation("move", "Patient.telecom", source=3, destination=0))
    assert [t["use"] for t in result["telecom"]] == ["old", "home", "work", "mobile"]


def test_move_keeps_primitive_extensions_aligned(patient):
    patient["name"][0]["_given"] = [{"id": "p"}, None]
    result = fhirpath(patient, operation("move", "Patient.name[0].given", source=0, destination=1))
    assert result["name"][0]["given"] == ["James", "Peter"]
    assert result["name"][0]["_given"] == [None, {"id": "p"}]


@pytest.mark.parametrize(("source", "destination"), [(3, 0), (0, 3)])
def test_move_outside_the_list_is_422(patient, source, destination):
    rejected(
        Unprocessable,
        apply_fhirpath_patch,
        patient,
        parameters(operation("move", "Patient.name", source=source, destination=destination)),
        "outside `Patient.name`",
    )


# --- paths -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("Patient.name.first().family", "Chalmers"),
        ("Patient.name.last().family", "Windsor"),
        ("Patient.name[2].family", "Windsor"),
        ("name.where(use = 'official').family", "Chalmers"),
        ("Patient.name.where(use != 'official' and family = 'Windsor').family", "Windsor"),
        ("Patient.`name`.where(given = 'Jim').given", "Jim"),
        ("Patient.telecom.where(rank = 1).value", "(03) 5555 6473"),
        ("Patient.telecom.where(period.end = '2014').value", "(03) 5555 8834"),
        ("Patient.name.given[2]", "Jim"),
        ("Patient.contact.name.where(family = 'du Marché').family", "du Marché"),
        ("Patient.contact.name.where(family = 'du March\\u00e9').family", "du Marché"),
    ],
)
def test_paths_select_with_fhirpath_semantics(patient, path, expected):
    result = fhirpath(patient, operation("replace", path, value={"valueString": "SELECTED"}))
    changed = [loc for loc in _locations(result) if _at(result, loc) == "SELECTED"]
    assert len(changed) == 1
    assert _at(patient, changed[0]) == expected


def test_where_tells_true_from_1(patient):
    patient["telecom"][0]["rank"] = 1
    result = fhirpath(patient, operation("delete", "Patient.where(active = 1)"))
    assert result == patient
    rejected(
        Unprocessable,
        apply_fhirpath_patch,
        patient,
        parameters(operation("delete", "Patient.telecom.where(rank = 1)")),
        "matches 2 elements",
    )


@pytest.mark.parametrize(
    ("path", "needle"),
    [
        ("", "empty"),
        ("Patient.", "expected a ident"),
        ("Patient..name", "expected a ident"),
        ("Patient.name[", "expected a number"),
        ("Patient.name[-1]", "non-negative integer"),
        ("Patient.name[1.5]", "non-negative integer"),
        ("Patient.name.where(use)", "comparisons"),
        ("Patient.name.where(use = official)", "literal"),
        ("Patient.name.where(use = 'official'", "expected `)`"),
        ("Patient.name.where(use = 'a\\q')", "unknown escape"),
        ("Patient.managingOrganization.resolve().name", "`resolve()` is not supported"),
        ("Patient.name.exists()", "`exists()` is not supported"),
        ("Patient.name | Patient.address", "unexpected `|"),
        ("Patient.name;drop", "unexpected `;"),
    ],
)
def test_bad_fhirpath_is_400(patient, path, needle):
    error = rejected(
        BadRequest,
        apply_fhirpath_patch,
        patient,
        parameters(operation("delete", path)),
        needle,
        "operation [0] (delete)",
    )
    assert error.issues[0].expression == ("Parameters.parameter[0]",)


def test_path_of_another_resource_type_is_422(patient):
    rejected(
        Unprocessable,
        apply_fhirpath_patch,
        patient,
        parameters(operation("delete", "Observation.status")),
        "starts with `Observation` but the resource is a `Patient`",
    )


def test_unknown_element_is_422(patient):
    rejected(
        Unprocessable,
        apply_fhirpath_patch,
        patient,
        parameters(operation("delete", "Patient.name.nickname")),
        "`Patient.name[0]` has no element `nickname`",
    )
    rejected(
        Unprocessable,
        apply_fhirpath_patch,
        patient,
        parameters(operation("add", "Patient", name="nickname", value={"valueString": "x"})),
        "`Patient` has no element `nickname`",
    )


def test_path_into_a_primitive_is_422(patient):
    rejected(
        Unprocessable,
        apply_fhirpath_patch,
        patient,
        parameters(operation("delete", "Patient.birthDate.extension")),
        "`Patient.birthDate` is a primitive value",
    )


# --- the Parameters document -----------------------------------------------


@pytest.mark.parametrize(
    ("document", "needle"),
    [
        ([{"op": "remove", "path": "/active"}], "must be a Parameters resource"),
        ({"resourceType": "Bundle"}, "must be a Parameters resource"),
        ({"resourceType": "Parameters", "parameter": {}}, "must be an array"),
        (parameters("operation"), "must be a JSON object"),
        (parameters({"name": "op", "part": []}), "named `operation`"),
        (parameters({"name": "operation"}), "has no parts"),
        (parameters({"name": "operation", "part": ["type"]}), "with a `name`"),
        (
            parameters({"name": "operation", "part": [{"name": "path", "valueString": "Patient"}]}),
            "`type` part",
        ),
        (parameters(operation("patch", "Patient")), "`type` part"),
        (parameters(operation("delete", "Patient", colour={"valueCode": "x"})), "unknown part"),
        (
            parameters(operation("delete", "Patient", type={"valueCode": "delete"})),
            "given twice",
        ),
        (parameters(operation("add", "Patient", value={"valueDate": "2000"})), "`name`"),
        (parameters(operation("add", "Patient", name="birthDate")), "`value`"),
        (parameters(operation("insert", "Patient.name", value={"valueString": "x"})), "`index`"),
        (parameters(operation("replace", "Patient.gender")), "`value`"),
        (parameters(operation("move", "Patient.name", source=0)), "`destination`"),
        (
            parameters(operation("move", "Patient.name", source=0, destination=-1)),
            "valueInteger of 0 or more",
        ),
        (
            parameters(operation("insert", "Patient.name[0]", value={"valueString": "x"}, index=0)),
            "ends with the name of the list",
        ),
        (
            parameters(operation("add", "Patient", name="a.b", value={"valueString": "x"})),
            "element name",
        ),
        (
            parameters(
                operation(
                    "replace", "Patient.gender", value={"valueCode": "male", "valueString": "male"}
                )
            ),
            "exactly one of",
        ),
        (parameters(operation("replace", "Patient.gender", value={"valueCode": None})), "null"),
        (
            parameters(operation("add", "Patient", name="contact", value={"part": []})),
            "non-empty array",
        ),
        (
            parameters(operation("add", "Patient", name="contact", value={"part": [{"x": 1}]})),
            "with a `name`",
        ),
    ],
)
def test_malformed_parameters_are_400(patient, document, needle):
    rejected(BadRequest, apply_fhirpath_patch, patient, document, needle)


def nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


def test_json_patch_value_nested_beyond_any_resource_is_400(patient):
    # Deep enough to parse as JSON, too deep for a resource (and for deepcopy).
    rejected(
        BadRequest,
        apply_json_patch,
        patient,
        [{"op": "add", "path": "/extension", "value": nested(900)}],
        "nested more than 100 levels",
    )


@pytest.mark.parametrize("form", ["valueString", "resource"])
def test_fhirpath_value_nested_beyond_any_resource_is_400(patient, form):
    value = nested(900) if form == "valueString" else {"resourceType": "Basic", "x": nested(900)}
    rejected(
        BadRequest,
        apply_fhirpath_patch,
        patient,
        parameters(operation("add", "Patient", name="contained", value={form: value})),
        "nested more than 100 levels",
    )


def test_path_part_must_be_a_string(patient):
    document = parameters(operation("delete", "Patient"))
    document["parameter"][0]["part"][1] = {"name": "path", "valueCode": "Patient.gender"}
    rejected(BadRequest, apply_fhirpath_patch, patient, document, "valueString")


def test_deeply_nested_value_parts_are_400(patient):
    value: dict = {"name": "value", "valueString": "x"}
    for _ in range(40):
        value = {"name": "value", "part": [value]}
    document = parameters(operation("add", "Patient", name="contact"))
    document["parameter"][0]["part"].append(value)
    rejected(BadRequest, apply_fhirpath_patch, patient, document, "nested more than")


def test_empty_patch_changes_nothing(patient):
    assert apply_fhirpath_patch(patient, {"resourceType": "Parameters"}) == patient
    assert apply_json_patch(patient, []) == patient


def test_fhirpath_patch_is_all_or_nothing(patient):
    error = rejected(
        Unprocessable,
        apply_fhirpath_patch,
        patient,
        parameters(
            operation("replace", "Patient.gender", value={"valueCode": "female"}),
            operation("delete", "Patient.name.where(use = 'usual')"),
            operation("replace", "Patient.maritalStatus", value={"valueCodeableConcept": {}}),
        ),
        "operation [2] (replace)",
    )
    assert error.issues[0].expression == ("Parameters.parameter[2]",)


def test_malformed_operation_is_400_before_any_operation_runs(patient):
    rejected(
        BadRequest,
        apply_fhirpath_patch,
        patient,
        parameters(
            operation("replace", "Patient.maritalStatus", value={"valueString": "x"}),
            operation("delete", "Patient.name["),
        ),
        "operation [1]",
    )


def test_operations_see_the_changes_of_the_ones_before(patient):
    result = fhirpath(
        patient,
        operation("add", "Patient", name="maritalStatus", value={"valueCodeableConcept": {}}),
        operation("add", "Patient.maritalStatus", name="text", value={"valueString": "Married"}),
        operation("delete", "Patient.name.where(use = 'usual')"),
        operation("replace", "Patient.name[1].family", value={"valueString": "Windsor-Chalmers"}),
    )
    assert result["maritalStatus"] == {"text": "Married"}
    assert result["name"][1]["family"] == "Windsor-Chalmers"
