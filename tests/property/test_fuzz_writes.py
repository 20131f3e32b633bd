"""No input makes the server answer 500: random and mutated JSON thrown at create and update.

Every answer is a 2xx or a 4xx with an OperationOutcome, and a rejected write
leaves the store exactly as it was.
"""

from __future__ import annotations

import json

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.api.helpers import BASE, FHIR_JSON, patient

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)

SEED = {
    "resourceType": "Patient",
    "id": "seed",
    "name": [{"family": "Chalmers", "given": ["Peter", "James"]}],
    "birthDate": "1974-12-25",
    "gender": "male",
    "telecom": [{"system": "phone", "value": "(03) 5555 6473"}],
    "address": [{"line": ["534 Erewhon St"], "city": "PleasantVille", "postalCode": "3999"}],
    "contact": [
        {
            "relationship": [
                {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/v2-0131", "code": "N"}
                    ]
                }
            ]
        }
    ],
}


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _paths(child, (*prefix, index))


SEED_PATHS = [p for p in _paths(SEED) if p]


@st.composite
def mutated_patients(draw):
    resource = orjson.loads(orjson.dumps(SEED))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(SEED_PATHS))
        target = resource
        try:
            for key in path[:-1]:
                target = target[key]
            action = draw(st.sampled_from(["replace", "delete", "add"]))
            if action == "replace":
                target[path[-1]] = draw(json_values)
            elif action == "delete":
                del target[path[-1]]
            elif isinstance(target, dict):
                target[draw(st.text(max_size=10))] = draw(json_values)
        except (KeyError, IndexError, TypeError):
            pass
    return resource


def _dumps(value) -> bytes:
    # The standard library writes any int and also Infinity (not JSON): both are good test input.
    return json.dumps(value).encode()


bodies = st.one_of(
    json_values.map(_dumps),
    mutated_patients().map(_dumps),
    st.binary(max_size=64),
    mutated_patients().map(lambda r: _dumps(r)[: len(_dumps(r)) // 2]),
)


def _snapshot(client) -> bytes:
    return client.get(f"{BASE}/_history?_count=1000").get_json()["entry"].__repr__().encode()


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=bodies, method=st.sampled_from(["POST", "PUT"]))
def test_random_writes_never_answer_500_and_rejections_change_nothing(client, body, method):
    existing = client.put(
        f"{BASE}/Patient/seed",
        data=orjson.dumps(patient(id="seed")),
        headers={"Content-Type": FHIR_JSON},
    )
    assert existing.status_code in (200, 201)
    before = _snapshot(client)
    url = f"{BASE}/Patient" if method == "POST" else f"{BASE}/Patient/seed"
    response = client.open(url, method=method, data=body, headers={"Content-Type": FHIR_JSON})
    assert response.status_code < 500, response.get_data(as_text=True)
    if response.status_code >= 400:
        assert response.get_json(force=True)["resourceType"] == "OperationOutcome"
        assert _snapshot(client) == before
