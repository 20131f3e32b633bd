"""fhirserver.search.expressions: SearchParameter FHIRPath compiled to closures.

http://hl7.org/fhir/R4/search.html (what a SearchParameter.expression selects),
http://hl7.org/fhirpath/N1/ (the language). The reference for values is
fhirpathpy, a general FHIRPath engine, on the official R4 examples.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fhirserver.resources import jsonio
from fhirserver.search import expressions
from fhirserver.search.expressions import (
    ExpressionError,
    Node,
    UnknownElementError,
    compile_expression,
    compile_relative,
    result_types,
    unknown_elements,
)

FHIR_DATA = Path(__file__).resolve().parents[3] / "shared" / "fhir-data"
EXAMPLES = FHIR_DATA / "r4-examples"
PACKAGE_PARAMETERS = Path(expressions.__file__).resolve().parents[1] / "conformance"


def _parameters() -> list[dict]:
    bundle = json.loads((PACKAGE_PARAMETERS / "search-parameters.json").read_bytes())
    return [entry["resource"] for entry in bundle["entry"]]


PARAMETERS = _parameters()
WITH_EXPRESSION = [p for p in PARAMETERS if p.get("expression")]
COMPOSITES = [p for p in PARAMETERS if p["type"] == "composite"]
EXAMPLE_FILES = sorted(EXAMPLES.glob("*.json")) if EXAMPLES.is_dir() else []

# What the R4 definitions name that the R4B models (and so stored resources)
# do not have: resource types R4B dropped, elements R4B's Evidence and
# EvidenceVariable lost, and the System type DateTime where dateTime was meant.
R4B_GAPS = re.compile(
    r"R4B has no resource type (EffectEvidenceSynthesis|MedicinalProduct\w*"
    r"|RiskEvidenceSynthesis|SubstanceSpecification)$"
    r"|^(Evidence|EvidenceVariable) has no element '\w+'$"
    r"|is never a System\.DateTime$"
)


def values(nodes: list[Node]) -> list[Any]:
    return [n.value for n in nodes]


def types(nodes: list[Node]) -> list[str]:
    return [n.type for n in nodes]


def run(expression: str, resource: Any) -> list[Node]:
    return compile_expression(expression)(resource)


def patient(**elements: Any) -> dict:
    return {"resourceType": "Patient", "id": "p1", **elements}


def observation(**elements: Any) -> dict:
    return {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, **elements}


# --------------------------------------------------------------------------
# Every R4 expression compiles
# --------------------------------------------------------------------------


def test_the_r4_bundle_is_the_one_the_examples_come_with() -> None:
    assert len(PARAMETERS) == 1375
    shared = FHIR_DATA / "search-parameters.json"
    if shared.exists():
        assert json.loads(shared.read_bytes()) == json.loads(
            (PACKAGE_PARAMETERS / "search-parameters.json").read_bytes()
        )


@pytest.mark.parametrize("parameter", WITH_EXPRESSION, ids=lambda p: p["id"])
def test_every_r4_expression_compiles(parameter: dict) -> None:
    evaluate = compile_expression(parameter["expression"])
    assert callable(evaluate)
    # Only what R4B lacks is compiled to nothing, and strict mode says so.
    gaps = unknown_elements(parameter["expression"])
    assert all(R4B_GAPS.search(gap) for gap in gaps), gaps
    if gaps:
        with pytest.raises(UnknownElementError):
            compile_expression(parameter["expression"], strict=True)
    else:
        compile_expression(parameter["expression"], strict=True)


def test_the_r4b_gaps_are_few_and_known() -> None:
    with_gaps = {p["id"] for p in WITH_EXPRESSION if unknown_elements(p["expression"])}
    dropped_types = {
        p["id"]
        for p in WITH_EXPRESSION
        if all(expressions._model_of(b) is None for b in p["base"])  # noqa: SLF001
    }
    assert dropped_types <= with_gaps
    assert with_gaps - dropped_types == {
        "Evidence-effective",
        "Evidence-jurisdiction",
        "Evidence-name",
        "Evidence-topic",
        "EvidenceVariable-effective",
        "EvidenceVariable-jurisdiction",
        "EvidenceVariable-topic",
    }
    # Composite components: only Observation-code-value-date's value.as(DateTime).
    component_gaps = {
        (p["id"], c["expression"])
        for p in COMPOSITES
        for t in result_types(p["expression"])
        for c in p["component"]
        if unknown_elements(c["expression"], t)
    }
    assert component_gaps == {
        ("Observation-code-value-date", "value.as(DateTime) | value.as(Period)")
    }


@pytest.mark.parametrize("parameter", COMPOSITES, ids=lambda p: p["id"])
def test_every_component_expression_compiles_on_its_context_types(parameter: dict) -> None:
    contexts = result_types(parameter["expression"])
    if all(expressions._model_of(b) is None for b in parameter["base"]):  # noqa: SLF001
        assert contexts == frozenset()  # a type R4B dropped
        return
    assert contexts
    for context_type in contexts:
        for component in parameter["component"]:
            assert callable(compile_relative(component["expression"], context_type))


def test_composite_context_types() -> None:
    assert result_types("Observation | Observation.component") == {
        "Observation",
        "ObservationComponent",
    }
    assert result_types("Observation.component") == {"ObservationComponent"}
    assert result_types("ActivityDefinition.useContext") == {"UsageContext"}
    assert result_types("MolecularSequence.variant") == {"MolecularSequenceVariant"}


# --------------------------------------------------------------------------
# Same values as fhirpathpy on the official R4 examples
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fhirpath() -> Any:
    fhirpathpy = pytest.importorskip("fhirpathpy")
    from fhirpathpy.models import models

    model = models["r4"]

    def evaluate(resource: dict, expression: str, env: dict | None = None) -> list:
        return fhirpathpy.evaluate(resource, expression, env or {}, model)

    return evaluate


def _normal(value: Any) -> Any:
    # fhirpathpy reads numbers as floats, the server as Decimal: compare as floats.
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float | Decimal):
        return "#" + repr(float(value))
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normal(v) for v in value]
    return str(value)


def _canonical(found: list) -> list[str]:
    return sorted(json.dumps(_normal(v), sort_keys=True) for v in found)


def _same_values(ours: list, theirs: list, union: bool) -> bool:
    a, b = _canonical(ours), _canonical(theirs)
    # ``|`` removes duplicates; fhirpathpy's float reading merges 1.0 and 1.00.
    return set(a) == set(b) if union else a == b


def _applies(parameter: dict, resource_type: str) -> bool:
    bases = parameter["base"]
    return (
        resource_type in bases
        or "Resource" in bases
        or ("DomainResource" in bases and resource_type not in ("Bundle", "Binary", "Parameters"))
    )


def _reference_engine(fhirpath: Any, resource: dict, expression: str) -> list:
    resource_type = resource["resourceType"]
    # fhirpathpy does not take ``Resource.id`` as applying to a Patient.
    expression = re.sub(r"\b(Resource|DomainResource)\.", resource_type + ".", expression)
    try:
        return fhirpath(resource, expression)
    except Exception:  # noqa: BLE001
        # fhirpathpy wants one item before ``as``; the R4 definitions use it as a filter.
        return fhirpath(
            resource, re.sub(r"\(([A-Za-z.]+) as (\w+)\)", r"\1.ofType(\2)", expression)
        )


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.stem)
def test_values_match_fhirpathpy_on_official_examples(path: Path, fhirpath: Any) -> None:
    raw = path.read_bytes()
    resource, plain = jsonio.loads(raw), json.loads(raw)
    checked = 0
    for parameter in WITH_EXPRESSION:
        expression = parameter["expression"]
        if not _applies(parameter, resource["resourceType"]) or "resolve()" in expression:
            continue  # resolve() needs a resolver fhirpathpy has not: see the tests below
        ours = values(compile_expression(expression)(resource))
        theirs = _reference_engine(fhirpath, plain, expression)
        assert _same_values(ours, theirs, "|" in expression), (parameter["id"], expression)
        checked += 1
    assert checked > 0


@pytest.mark.parametrize(
    "path",
    [
        p
        for p in EXAMPLE_FILES
        if p.name.startswith(
            (
                "Observation-",
                "MolecularSequence-",
                "Group-",
                "PlanDefinition-",
                "DocumentReference-",
                "Library-",
                "Measure-",
            )
        )
    ],
    ids=lambda p: p.stem,
)
def test_composite_components_match_fhirpathpy(path: Path, fhirpath: Any) -> None:
    raw = path.read_bytes()
    resource, plain = jsonio.loads(raw), json.loads(raw)
    for parameter in COMPOSITES:
        if resource["resourceType"] not in parameter["base"]:
            continue
        contexts = compile_expression(parameter["expression"])(resource)
        for component in parameter["component"]:
            ours = [
                n.value
                for context in contexts
                for n in compile_relative(component["expression"], context.type)(context, resource)
            ]
            # fhirpathpy loses the element types of a union's items: one branch at a time.
            theirs = [
                v
                for branch in parameter["expression"].split(" | ")
                for v in fhirpath(
                    plain, f"{branch}.select({component['expression']})", {"resource": plain}
                )
            ]
            assert _same_values(ours, theirs, True), (parameter["id"], component["expression"])


# --------------------------------------------------------------------------
# where(resolve() is T): hand-written expectations
# --------------------------------------------------------------------------


def _example(name: str) -> dict:
    path = EXAMPLES / name
    if not path.exists():
        pytest.skip(f"{path} is not available")
    return jsonio.loads(path.read_bytes())


def test_resolve_on_examples_relative_reference() -> None:
    obs = _example("Observation-example.json")
    assert values(run("Observation.subject.where(resolve() is Patient)", obs)) == [
        {"reference": "Patient/example"}
    ]
    assert run("Observation.subject.where(resolve() is Group)", obs) == []
    assert types(run("Observation.subject.where(resolve() is Patient)", obs)) == ["Reference"]


def test_resolve_on_examples_versioned_references() -> None:
    audit = _example("AuditEvent-example-disclosure.json")
    expression = next(p["expression"] for p in PARAMETERS if p["id"] == "AuditEvent-patient")
    assert values(run(expression, audit)) == [
        {"reference": "Patient/example"},
        {"reference": "Patient/example/_history/1", "identifier": {"value": "What.id"}},
    ]
    provenance = _example("Provenance-example.json")  # target Procedure/example/_history/1
    assert run("Provenance.target.where(resolve() is Patient)", provenance) == []
    assert len(run("Provenance.target.where(resolve() is Procedure)", provenance)) == 1


def test_resolve_on_examples_contained_references() -> None:
    encounter = _example("Encounter-home.json")  # location.location = #home, a contained Location
    assert values(run("Encounter.location.location.where(resolve() is Location)", encounter)) == [
        {"reference": "#home", "display": "Client's home"}
    ]
    assert run("Encounter.location.location.where(resolve() is Patient)", encounter) == []
    request = _example("MedicationRequest-medrx0301.json")  # medicationReference = #med0310
    assert values(run("MedicationRequest.medication.where(resolve() is Medication)", request)) == [
        {"reference": "#med0310"}
    ]
    resolved = run("MedicationRequest.medication.resolve()", request)
    assert types(resolved) == ["Medication"] and resolved[0].value["id"] == "med0310"


@pytest.mark.parametrize(
    ("reference", "matches"),
    [
        ({"reference": "Patient/123"}, True),
        ({"reference": "Patient/123/_history/4"}, True),
        ({"reference": "http://example.org/fhir/Patient/123"}, True),
        ({"reference": "https://example.org/fhir/Patient/123/_history/2"}, True),
        ({"reference": "#p1"}, True),  # the contained Patient
        ({"reference": "#o1"}, False),  # a contained Organization
        ({"reference": "#missing"}, False),
        ({"reference": "Group/123"}, False),
        ({"reference": "Patient"}, False),
        ({"reference": "Patient?identifier=x"}, False),
        ({"identifier": {"value": "123"}, "type": "Patient"}, True),  # logical reference
        ({"identifier": {"value": "123"}, "type": "Group"}, False),
        ({"identifier": {"value": "123"}}, False),
        ({"reference": "urn:uuid:8c2c0e0a-0000-4000-8000-000000000001", "type": "Patient"}, True),
        ({"reference": "urn:uuid:8c2c0e0a-0000-4000-8000-000000000001"}, False),
        ({"display": "someone"}, False),
    ],
)
def test_where_resolve_is_type(reference: dict, matches: bool) -> None:
    resource = observation(
        contained=[
            {"resourceType": "Patient", "id": "p1"},
            {"resourceType": "Organization", "id": "o1"},
        ],
        subject=reference,
    )
    found = run("Observation.subject.where(resolve() is Patient)", resource)
    assert values(found) == ([reference] if matches else [])


def test_resolve_is_type_in_a_union_of_bases() -> None:
    expression = next(p["expression"] for p in PARAMETERS if p["id"] == "clinical-patient")
    assert values(run(expression, observation(subject={"reference": "Patient/1"}))) == [
        {"reference": "Patient/1"}
    ]
    assert run(expression, observation(subject={"reference": "Group/1"})) == []
    allergy = {"resourceType": "AllergyIntolerance", "patient": {"reference": "Patient/2"}}
    assert values(run(expression, allergy)) == [{"reference": "Patient/2"}]


# --------------------------------------------------------------------------
# Types
# --------------------------------------------------------------------------


def test_choice_element_yields_its_concrete_type() -> None:
    quantity = {"value": 72, "unit": "kg"}
    obs = observation(valueQuantity=quantity, effectivePeriod={"start": "2020-01-01"})
    assert [(n.value, n.type) for n in run("Observation.value", obs)] == [(quantity, "Quantity")]
    assert types(run("Observation.effective", obs)) == ["Period"]
    obs = observation(valueString="high", effectiveDateTime="2020-01-01")
    assert [(n.value, n.type) for n in run("Observation.value", obs)] == [("high", "string")]
    assert types(run("Observation.effective", obs)) == ["dateTime"]


@pytest.mark.parametrize(
    "expression",
    [
        "(Observation.value as Quantity)",
        "Observation.value.as(Quantity)",
        "Observation.value.ofType(Quantity)",
        "Observation.value as Quantity",
        "(Observation.value as FHIR.Quantity)",
    ],
)
def test_choice_type_filters(expression: str) -> None:
    quantity = {"value": 72, "unit": "kg"}
    assert values(run(expression, observation(valueQuantity=quantity))) == [quantity]
    assert run(expression, observation(valueCodeableConcept={"text": "x"})) == []
    assert run(expression, observation(valueString="72 kg")) == []
    assert run(expression, observation()) == []


def test_type_filters_are_case_sensitive() -> None:
    obs = observation(valueDateTime="2020-01-01")
    assert values(run("Observation.value.as(dateTime)", obs)) == ["2020-01-01"]
    # The System type DateTime is not FHIR's dateTime (R4's Observation-code-value-date
    # says value.as(DateTime); it can only ever match the Period branch).
    assert run("Observation.value.as(DateTime)", obs) == []
    assert unknown_elements("Observation.value.as(DateTime)")
    with pytest.raises(UnknownElementError):
        compile_expression("Observation.value.as(DateTime)", strict=True)
    with pytest.raises(ExpressionError):
        compile_expression("Observation.value.as(quantity)")


def test_quantity_subtypes_keep_their_type() -> None:
    condition = {"resourceType": "Condition", "subject": {"reference": "Patient/1"}}
    age = {"value": 50, "unit": "a", "system": "http://unitsofmeasure.org", "code": "a"}
    found = run("Condition.onset.as(Age)", {**condition, "onsetAge": age})
    assert [(n.value, n.type) for n in found] == [(age, "Age")]
    # An Age is a Quantity (FHIRPath: a subtype passes), and still says it is an Age.
    assert types(run("Condition.onset.as(Quantity)", {**condition, "onsetAge": age})) == ["Age"]
    assert run("Condition.onset.as(Age)", {**condition, "onsetDateTime": "2020"}) == []
    assert types(run("Condition.onset", {**condition, "onsetDateTime": "2020"})) == ["dateTime"]
    assert types(run("Condition.onset", {**condition, "onsetPeriod": {"start": "2020"}})) == [
        "Period"
    ]
    onset_age = next(p["expression"] for p in PARAMETERS if p["id"] == "Condition-onset-age")
    assert types(run(onset_age, {**condition, "onsetRange": {"low": {"value": 1}}})) == ["Range"]
    request = {
        "resourceType": "MedicationRequest",
        "dispenseRequest": {"expectedSupplyDuration": {"value": 30, "unit": "d"}},
    }
    assert types(run("MedicationRequest.dispenseRequest.expectedSupplyDuration", request)) == [
        "Duration"
    ]


def test_primitive_specializations_are_told_apart() -> None:
    # ConceptMap-source-uri is (ConceptMap.source as uri), ConceptMap-source (as canonical).
    concept_map = {
        "resourceType": "ConceptMap",
        "status": "draft",
        "sourceCanonical": "http://x/vs",
    }
    assert run("(ConceptMap.source as uri)", concept_map) == []
    assert [(n.value, n.type) for n in run("(ConceptMap.source as canonical)", concept_map)] == [
        ("http://x/vs", "canonical")
    ]


def test_types_come_from_the_model() -> None:
    resource = patient(
        identifier=[{"system": "urn:x", "value": "1"}],
        telecom=[{"system": "phone", "value": "555"}],
        name=[{"family": "Doe"}],
        birthDate="1970-01-01",
        gender="female",
        active=True,
        address=[{"city": "Springfield"}],
        photo=[{"contentType": "image/png"}],
        managingOrganization={"reference": "Organization/1"},
        multipleBirthInteger=2,
        meta={"lastUpdated": "2020-01-01T00:00:00Z", "profile": ["http://x/p"]},
    )
    expected = {
        "Patient.identifier": "Identifier",
        "Patient.telecom": "ContactPoint",
        "Patient.name": "HumanName",
        "Patient.name.family": "string",
        "Patient.birthDate": "date",
        "Patient.gender": "code",
        "Patient.active": "boolean",
        "Patient.address": "Address",
        "Patient.address.city": "string",
        "Patient.photo": "Attachment",
        "Patient.managingOrganization": "Reference",
        "Patient.multipleBirth": "integer",
        "Patient.id": "id",
        "Resource.meta.lastUpdated": "instant",
        "Resource.meta.profile": "canonical",
    }
    for expression, type_code in expected.items():
        assert types(run(expression, resource)) == [type_code], expression
    obs = observation(
        code={"coding": [{"system": "http://loinc.org", "code": "1-8"}]},
        component=[{"code": {"text": "a"}, "valueQuantity": {"value": 1}}],
        issued="2020-01-01T00:00:00Z",
    )
    assert types(run("Observation.code", obs)) == ["CodeableConcept"]
    assert types(run("Observation.code.coding", obs)) == ["Coding"]
    assert types(run("Observation.code.coding.system", obs)) == ["uri"]
    assert types(run("Observation.component", obs)) == ["ObservationComponent"]
    assert types(run("Observation.component.value", obs)) == ["Quantity"]
    assert types(run("Observation.issued", obs)) == ["instant"]
    money = {"resourceType": "ChargeItem", "priceOverride": {"value": 1, "currency": "EUR"}}
    assert types(run("ChargeItem.priceOverride", money)) == ["Money"]
    assert types(run("ChargeItem.priceOverride.value", money)) == ["decimal"]


def test_arrays_flatten() -> None:
    resource = patient(name=[{"given": ["A", "B"]}, {"given": ["C"]}, {"family": "D"}])
    assert values(run("Patient.name.given", resource)) == ["A", "B", "C"]
    assert types(run("Patient.name.given", resource)) == ["string"] * 3


def test_unions_across_bases() -> None:
    expression = "Patient.name | Practitioner.name | RelatedPerson.name"
    assert values(run(expression, patient(name=[{"family": "P"}]))) == [{"family": "P"}]
    practitioner = {"resourceType": "Practitioner", "name": [{"family": "Q"}]}
    assert values(run(expression, practitioner)) == [{"family": "Q"}]
    assert run(expression, {"resourceType": "Organization", "name": "O"}) == []
    # Duplicates go (FHIRPath |), distinct values stay in order.
    twice = patient(name=[{"family": "A"}, {"family": "A"}, {"family": "B"}])
    assert values(run(expression, twice)) == [{"family": "A"}, {"family": "B"}]
    assert values(run("Patient.name", twice)) == [{"family": "A"}, {"family": "A"}, {"family": "B"}]


def test_large_unions_remove_duplicates() -> None:
    practitioners = [{"reference": f"Practitioner/{i % 500}"} for i in range(2000)]
    resource = patient(
        generalPractitioner=practitioners, managingOrganization={"reference": "Organization/1"}
    )
    found = run("Patient.generalPractitioner | Patient.managingOrganization", resource)
    assert values(found) == practitioners[:500] + [{"reference": "Organization/1"}]


def test_union_keeps_decimals_of_different_precision_apart() -> None:
    obs = observation(
        valueQuantity={"value": Decimal("1.0")},
        component=[{"code": {"text": "c"}, "valueQuantity": {"value": Decimal("1.00")}}],
    )
    found = run("(Observation.value as Quantity) | (Observation.component.value as Quantity)", obs)
    assert [str(n.value["value"]) for n in found] == ["1.0", "1.00"]


def test_expression_relative_to_the_resource() -> None:
    plan = {"resourceType": "InsurancePlan", "name": "Gold", "alias": ["G", "Au"]}
    assert [(n.value, n.type) for n in run("name | alias", plan)] == [
        ("Gold", "string"),
        ("G", "string"),
        ("Au", "string"),
    ]
    assert values(run("name", patient(name=[{"family": "X"}]))) == [{"family": "X"}]


def test_resource_and_domain_resource_apply_to_every_type() -> None:
    for resource in (
        patient(),
        observation(id="o1"),
        {"resourceType": "Bundle", "id": "b1", "type": "collection"},
    ):
        assert values(run("Resource.id", resource)) == [resource["id"]]
    assert run("DomainResource.text", {"resourceType": "Bundle", "id": "b"}) == []
    text = {"status": "generated", "div": "<div>x</div>"}
    assert types(run("DomainResource.text", patient(text=text))) == ["Narrative"]


def test_where_field_equals_literal() -> None:
    artifacts = [
        {"type": "composed-of", "resource": "http://example.org/Library/a"},
        {"type": "depends-on", "resource": "http://example.org/Library/b"},
        {"type": "composed-of", "resource": "http://example.org/Library/c"},
        {"type": "composed-of"},
    ]
    plan = {"resourceType": "PlanDefinition", "status": "draft", "relatedArtifact": artifacts}
    found = run("PlanDefinition.relatedArtifact.where(type='composed-of').resource", plan)
    assert [(n.value, n.type) for n in found] == [
        ("http://example.org/Library/a", "canonical"),
        ("http://example.org/Library/c", "canonical"),
    ]
    depends_on = next(p["expression"] for p in PARAMETERS if p["id"] == "PlanDefinition-depends-on")
    assert values(run(depends_on, {**plan, "library": ["http://example.org/Library/z"]})) == [
        "http://example.org/Library/b",
        "http://example.org/Library/z",
    ]
    telecom = [{"system": "phone", "value": "1"}, {"system": "email", "value": "a@b"}]
    phone = next(p["expression"] for p in PARAMETERS if p["id"] == "individual-phone")
    assert values(run(phone, patient(telecom=telecom))) == [telecom[0]]
    assert types(run(phone, patient(telecom=telecom))) == ["ContactPoint"]


def test_indexing_and_first() -> None:
    composition = {"resourceType": "Composition", "id": "c1", "status": "final"}
    bundle = {
        "resourceType": "Bundle",
        "type": "document",
        "entry": [{"resource": composition}, {"resource": patient()}],
    }
    found = run("Bundle.entry[0].resource", bundle)
    assert [(n.value, n.type) for n in found] == [(composition, "Composition")]
    assert run("Bundle.entry[5].resource", bundle) == []
    assert types(run("Bundle.entry.resource", bundle)) == ["Composition", "Patient"]
    assert values(run("Bundle.entry.resource.id", bundle)) == ["c1", "p1"]
    assert values(run("Bundle.entry.resource.ofType(Patient).id", bundle)) == ["p1"]
    assert values(
        run("Patient.name.first().family", patient(name=[{"family": "A"}, {"family": "B"}]))
    ) == ["A"]


def test_deceased_expression() -> None:
    expression = next(p["expression"] for p in PARAMETERS if p["id"] == "Patient-deceased")
    assert [(n.value, n.type) for n in run(expression, patient(deceasedBoolean=True))] == [
        (True, "boolean")
    ]
    assert values(run(expression, patient(deceasedDateTime="2020-01-01"))) == [True]
    assert values(run(expression, patient(deceasedBoolean=False))) == [False]
    assert values(run(expression, patient())) == [False]


def test_boolean_logic_and_functions() -> None:
    resource = patient(active=True, name=[{"family": "A"}])
    assert values(run("Patient.active = true", resource)) == [True]
    assert values(run("Patient.active != true", resource)) == [False]
    assert values(run("Patient.gender = 'male'", resource)) == []  # empty = anything: empty
    assert values(run("Patient.name.exists() or Patient.gender.exists()", resource)) == [True]
    assert values(run("Patient.gender.exists() and Patient.name.exists()", resource)) == [False]
    assert values(run("Patient.gender.empty()", resource)) == [True]
    assert values(run("Patient.name.count()", resource)) == [1]
    assert values(run("Patient.active.not()", resource)) == [False]
    assert values(run("Patient.name.exists(family = 'A')", resource)) == [True]
    assert values(run("Patient.name.where(family.exists()).family", resource)) == ["A"]
    assert values(run("Patient.name.where($this.family = 'A').family", resource)) == ["A"]
    assert values(run("Patient.name is HumanName", resource)) == [True]
    assert values(run("Patient.active.is(boolean)", resource)) == [True]


def test_extension_by_url() -> None:
    race = {"url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race", "extension": []}
    other = {"url": "http://example.org/other", "valueString": "x"}
    resource = patient(extension=[race, other])
    assert values(run("Patient.extension('http://example.org/other')", resource)) == [other]
    assert types(run("Patient.extension('http://example.org/other')", resource)) == ["Extension"]
    assert values(
        run("Patient.extension.where(url = 'http://example.org/other').value", resource)
    ) == ["x"]


def test_relative_expressions_for_composites() -> None:
    obs = observation(
        code={"text": "bp"},
        component=[
            {"code": {"text": "systolic"}, "valueQuantity": {"value": 120}},
            {"code": {"text": "note"}, "valueString": "x"},
        ],
    )
    contexts = run("Observation | Observation.component", obs)
    assert types(contexts) == ["Observation", "ObservationComponent", "ObservationComponent"]
    code = compile_relative("code", "ObservationComponent")
    quantity = compile_relative("value.as(Quantity)", "ObservationComponent")
    assert [values(code(c, obs)) for c in contexts] == [
        [{"text": "bp"}],
        [{"text": "systolic"}],
        [{"text": "note"}],
    ]
    # A node of another type is read with its own type's elements.
    assert [values(quantity(c, obs)) for c in contexts] == [[], [{"value": 120}], []]
    assert types(quantity(contexts[1], obs)) == ["Quantity"]
    variant = {"start": 10, "end": 20}
    sequence = {
        "resourceType": "MolecularSequence",
        "coordinateSystem": 0,
        "referenceSeq": {"chromosome": {"text": "chr1"}},
        "variant": [variant],
    }
    (context,) = run("MolecularSequence.variant", sequence)
    assert context.type == "MolecularSequenceVariant"
    chromosome = compile_relative("%resource.referenceSeq.chromosome", context.type)
    assert [(n.value, n.type) for n in chromosome(context, sequence)] == [
        ({"text": "chr1"}, "CodeableConcept")
    ]
    assert chromosome(context) == []  # no resource given
    assert [(n.value, n.type) for n in compile_relative("start", context.type)(context)] == [
        (10, "integer")
    ]
    with pytest.raises(ExpressionError):
        compile_relative("code", "NoSuchType")
    with pytest.raises(UnknownElementError):
        compile_relative("nosuchelement", "ObservationComponent", strict=True)


# --------------------------------------------------------------------------
# Primitive extensions and malformed content
# --------------------------------------------------------------------------


def test_primitive_extensions_are_not_values() -> None:
    extension = {
        "extension": [
            {
                "url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason",
                "valueCode": "unknown",
            }
        ]
    }
    assert run("Patient.birthDate", patient(_birthDate=extension)) == []
    assert values(run("Patient.birthDate", patient(birthDate="1970", _birthDate=extension))) == [
        "1970"
    ]
    name = {"given": ["A", None, "C"], "_given": [None, extension, None]}
    assert values(run("Patient.name.given", patient(name=[name]))) == ["A", "C"]


MALFORMED = [
    patient(name="Doe"),
    patient(name=[1, None, "x", [], {"family": "ok"}]),
    patient(name=[{"family": ["A"], "given": "B"}]),
    patient(name=None, birthDate=19700101, gender=["male"], active="yes"),
    patient(telecom=[{"system": ["phone"], "value": 5}, {"system": None}]),
    patient(deceasedBoolean="no", deceasedDateTime=None),
    patient(managingOrganization="Organization/1", generalPractitioner=[{"reference": 5}]),
    patient(contained="x", generalPractitioner=[{"reference": "#x"}]),
    patient(
        contained=[None, 5, {"resourceType": ["Patient"], "id": "x"}],
        link=[{"other": {"reference": "#x"}}],
    ),
    patient(meta="x", id=5, extension={"url": 5}),
    patient(_birthDate="x", _name=[1]),
    observation(valueQuantity="72 kg", subject={"reference": None, "type": ["Patient"]}),
    observation(valueQuantity={"value": "NaN"}, component="x", code=None),
    observation(
        component=[None, {"valueQuantity": []}, {"code": "x"}], subject=[{"reference": "Patient/1"}]
    ),
    observation(subject={"reference": "Patient/1/_history"}, effectivePeriod="2020"),
    observation(subject={"reference": "#"}, valueDecimal=Decimal("NaN")),
    observation(subject={"reference": "http://x/Patient/" + "1" * 200}),
    {
        "resourceType": "Bundle",
        "entry": [None, {"resource": "x"}, {"resource": {"resourceType": 5}}],
    },
    {"resourceType": "Bundle", "entry": {"resource": {"resourceType": "Patient"}}},
    {
        "resourceType": "PlanDefinition",
        "relatedArtifact": [{"type": ["composed-of"], "resource": 5}],
    },
    {"resourceType": "Condition", "onsetAge": "50", "abatementRange": []},
    {"resourceType": "NoSuchType", "name": [{"family": "x"}]},
    {"resourceType": "EffectEvidenceSynthesis", "url": "http://x"},
    {"resourceType": ["Patient"]},
    {"resourceType": None},
    {"name": [{"family": "no type"}]},
    {},
]


@pytest.mark.parametrize("resource", MALFORMED, ids=lambda r: json.dumps(r, default=str)[:60])
def test_malformed_resources_never_raise(resource: dict) -> None:
    rtype = resource.get("resourceType")
    for parameter in WITH_EXPRESSION:
        if isinstance(rtype, str) and not _applies(parameter, rtype):
            continue
        found = compile_expression(parameter["expression"])(resource)
        assert isinstance(found, list) and all(isinstance(n, Node) for n in found)
        # Not thanks to the last-resort try/except: the steps skip what does not fit.
        if not isinstance(rtype, str):
            continue
        compiled = expressions._compile_by_type(parameter["expression"]).get(rtype)  # noqa: SLF001
        if compiled is not None:
            compiled([(resource, rtype)], resource)


def test_malformed_parts_are_skipped_well_formed_parts_kept() -> None:
    resource = patient(
        name=[1, None, "x", {"family": "ok"}], telecom={"system": "phone", "value": "1"}
    )
    assert values(run("Patient.name", resource)) == [{"family": "ok"}]
    # A single object where the model wants an array is still read (FHIRPath flattens).
    assert values(run("Patient.telecom.where(system='phone')", resource)) == [
        {"system": "phone", "value": "1"}
    ]
    assert run("Patient.birthDate", patient(birthDate=19700101)) == []
    assert run("Patient.active", patient(active="true")) == []
    assert values(run("Observation.value", observation(valueInteger=True))) == []


@pytest.mark.parametrize(
    "thing",
    [None, 5, "Patient", [], ["resourceType"], {"resourceType": "Patient", "name": {"family": 1}}],
)
def test_anything_at_all(thing: Any) -> None:
    assert isinstance(compile_expression("Patient.name.family")(thing), list)
    assert compile_relative("family", "HumanName")(thing) == []


_KEYS = st.sampled_from(
    [
        "name", "family", "given", "telecom", "system", "value", "code", "coding", "text",
        "subject", "reference", "type", "contained", "resourceType", "id", "component",
        "valueQuantity", "valueString", "valueCodeableConcept", "effectiveDateTime",
        "effectivePeriod", "start", "identifier", "entry", "resource", "relatedArtifact",
        "deceasedBoolean", "deceasedDateTime", "_birthDate", "birthDate", "extension", "url",
        "meta", "lastUpdated", "profile", "link", "other", "onsetAge", "library",
    ]
)  # fmt: skip
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.decimals(allow_nan=True, allow_infinity=True)
    | st.floats()
    | st.sampled_from(["", "#", "#p1", "Patient/1", "Patient", "x", "phone", "composed-of"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_KEYS, children, max_size=6),
    max_leaves=30,
)
_FUZZ_TYPES = ["Patient", "Observation", "Bundle", "PlanDefinition", "Condition", "InsurancePlan"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rtype=st.sampled_from(_FUZZ_TYPES), body=st.dictionaries(_KEYS, _JSON, max_size=8))
def test_random_content_never_raises(rtype: str, body: dict) -> None:
    resource = {**body, "resourceType": rtype}
    for parameter in WITH_EXPRESSION:
        if not _applies(parameter, rtype):
            continue
        compiled = expressions._compile_by_type(parameter["expression"]).get(rtype)  # noqa: SLF001
        if compiled is not None:
            for value, type_code in compiled([(resource, rtype)], resource):
                assert isinstance(type_code, str)
                assert value is not None


# --------------------------------------------------------------------------
# Compile errors
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "expression",
    [
        "",
        "   ",
        "Patient.name.",
        "Patient.name[",
        "(Patient.name",
        "Patient.name.substring(1)",
        "Patient.name.family + 'x'",
        "Patient.birthDate > @2020",
        "Patiant.name",
        "Patient.name as NoSuchType",
        "Patient.name.where()",
        "%context.name",
        "Patient.name[Patient.name]",
        "'unterminated",
    ],
)
def test_what_cannot_be_compiled_raises_clearly(expression: str) -> None:
    with pytest.raises(ExpressionError) as caught:
        compile_expression(expression)
    assert repr(expression) in str(caught.value)


def test_unknown_elements_raise_only_when_strict() -> None:
    assert run("Patient.nosuchelement", patient(nosuchelement="x")) == []
    assert unknown_elements("Patient.nosuchelement") == ("Patient has no element 'nosuchelement'",)
    with pytest.raises(UnknownElementError, match="nosuchelement"):
        compile_expression("Patient.nosuchelement", strict=True)
    with pytest.raises(UnknownElementError, match="R4B has no resource type"):
        compile_expression("EffectEvidenceSynthesis.url", strict=True)
    assert unknown_elements("Patient.name") == ()


def test_compiled_once() -> None:
    assert compile_expression("Patient.name") is compile_expression("Patient.name")
    assert compile_relative("code", "ObservationComponent") is compile_relative(
        "code", "ObservationComponent"
    )
