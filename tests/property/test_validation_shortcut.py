"""The validation shortcut never accepts what the R4B model rejects.

``validate_resource`` skips building the pydantic model when
``model_would_accept`` proves the model would accept the JSON (a speed-up for
bulk loads). This checks the proof against the model itself: on every official
R4 example and every Synthea resource, and on those resources with one value
changed at random (hypothesis). A fhir.resources / fhir_core upgrade that
changes what the models accept shows up here.
"""

from __future__ import annotations

import copy
from functools import cache

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fhirserver.resources.validate import model_would_accept, resource_model
from tests.conftest import FHIR_DATA


@cache
def _resources() -> tuple[dict, ...]:
    found = []
    for path in sorted((FHIR_DATA / "r4-examples").glob("*.json")):
        resource = orjson.loads(path.read_bytes())
        if resource.get("resourceType") != "Bundle":
            found.append(resource)
    for path in sorted((FHIR_DATA / "synthea" / "bundles").glob("*.json"))[:3]:
        found += [e["resource"] for e in orjson.loads(path.read_bytes())["entry"]]
    return tuple(found)


def _model_accepts(resource: dict) -> bool:
    model = resource_model(resource["resourceType"])
    try:
        model.model_validate(resource)
    except Exception:  # noqa: BLE001 - any rejection counts
        return False
    return True


def _claims(resource: dict) -> bool:
    try:
        model = resource_model(resource["resourceType"])
    except Exception:  # noqa: BLE001 - a type the server does not serve
        return False
    return model_would_accept(resource, model)


def test_the_shortcut_agrees_with_the_model_on_real_resources():
    claimed = 0
    for resource in _resources():
        if _claims(resource):
            claimed += 1
            assert _model_accepts(resource), resource.get("id")
    # The shortcut is used at all (else the speed-up is gone unnoticed).
    assert claimed > len(_resources()) // 2


def _leaves(value, path=()):
    if isinstance(value, dict):
        for key, item in value.items():
            if key != "resourceType":
                yield from _leaves(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _leaves(item, (*path, i))
    else:
        yield path


VALUES = st.one_of(
    st.text(max_size=12),
    st.sampled_from(
        [
            "",
            " ",
            "\u00a0",
            "a b",
            "a  b",
            "2024-02-30",
            "2024-13",
            "2024-02-29",
            "2023-02-29",
            "2024-01-01T25:00:00Z",
            "2024-01-01T10:00:00",
            "2024-01-01T10:00:60Z",
            "10:61:00",
            "1.50",
            "-0",
            "1e3",
            "\ud800",
            "urn:uuid:not-a-uuid",
            "aGVsbG8=",
            "not base64!",
        ]
    ),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), value=VALUES)
def test_the_shortcut_never_accepts_a_changed_value_the_model_rejects(data, value):
    resource = copy.deepcopy(data.draw(st.sampled_from(_resources()), label="resource"))
    leaves = list(_leaves(resource))
    if not leaves:
        return
    path = data.draw(st.sampled_from(leaves), label="path")
    target = resource
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    if _claims(resource):
        assert _model_accepts(resource), (path, value)
