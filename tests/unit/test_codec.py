"""Codec: storage round trips, key/value agreement, and robustness against hostile values.

``decode`` must raise ``ValidationError`` and nothing else for any bad value: readers treat it
as "absent" and carry on.
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datastore.codec import MAX_VALUE_BYTES, decode, encode, resource_from_dict, resource_to_dict
from datastore.errors import FieldError, ValidationError
from datastore.keys import resource_key
from datastore.schema import format_duration, parse_duration
from tests.unit.test_model_examples import ALL_GOOD, GOOD, good, problems

WEP_KEY = "/calico/resources/v3/projectcalico.org/workloadendpoints/default/" + (
    "node1-k8s-frontend--5gs43-eth0"
)


def _wep_bytes() -> bytes:
    return json.dumps(GOOD["WorkloadEndpoint"][0]).encode()


def test_decode_sets_resource_version_and_checks_key() -> None:
    r = decode(WEP_KEY, _wep_bytes(), 12345)
    assert r.metadata.resource_version == "12345"
    assert r.key == WEP_KEY
    stored = json.loads(encode(r))
    assert "resourceVersion" not in stored["metadata"]
    assert resource_to_dict(r)["metadata"]["resourceVersion"] == "12345"
    assert "resourceVersion" not in resource_to_dict(r, include_resource_version=False)["metadata"]


@pytest.mark.parametrize(
    ("key", "field"),
    [
        (WEP_KEY.replace("/default/", "/other/"), "metadata.namespace"),
        (WEP_KEY.replace("5gs43", "xxxxx"), "metadata.name"),
        (resource_key("NetworkSet", "node1-k8s-frontend--5gs43-eth0", "default"), "kind"),
        ("/calico/ipam/v2/handle/x", "key"),
    ],
)
def test_decode_refuses_key_value_disagreement(key: str, field: str) -> None:
    with pytest.raises(ValidationError) as info:
        decode(key, _wep_bytes(), 1)
    assert field in [e.field for e in info.value.errors]


def test_field_error_format() -> None:
    e = FieldError(
        "GlobalNetworkPolicy",
        None,
        "default.deny",
        "spec.ingress[0].destination.ports[1]",
        "port range 90:80 is reversed",
    )
    assert str(e) == (
        "GlobalNetworkPolicy default.deny: spec.ingress[0].destination.ports[1]: "
        "port range 90:80 is reversed"
    )
    assert str(FieldError("NetworkSet", "ns", "n", "", "bad")) == "NetworkSet ns/n: bad"


def test_decode_errors_name_the_key_resource() -> None:
    with pytest.raises(ValidationError) as info:
        decode(WEP_KEY, b"{not json", 3)
    err = info.value.errors[0]
    assert (err.kind, err.namespace, err.name) == (
        "WorkloadEndpoint",
        "default",
        "node1-k8s-frontend--5gs43-eth0",
    )
    assert "not valid JSON" in err.message


def test_document_level_problems() -> None:
    d = good("IPPool")
    d["apiVersion"] = "projectcalico.org/v2"
    del d["spec"]
    d["extra"] = 1
    assert set(problems(d)) == {"apiVersion", "spec", "extra"}
    assert set(problems({"kind": "IPPool", "metadata": {"name": "x"}, "spec": {}})) == {
        "apiVersion",
        "spec.cidr",
    }
    assert "did you mean IPPool" in problems({**good("IPPool"), "kind": "ippool"})["kind"]
    assert set(problems({**good("IPPool"), "kind": "Pod"})) == {"kind"}
    assert set(problems({**good("IPPool"), "metadata": None})) == {"metadata"}
    assert set(problems({**good("Node"), "status": {"x": 1}})) == {"status.x"}
    assert set(problems({**good("IPPool"), "status": {}})) == {"status"}
    assert set(problems([])) == {""}


def test_metadata_problems() -> None:
    d = good("GlobalNetworkSet")
    d["metadata"].update(
        {
            "labels": {"a": "b" * 64, "x/": "y", "k": 1},
            "annotations": {"note": "any text at all is fine here!"},
            "creationTimestamp": "yesterday",
            "generation": "1",
            "colour": "blue",
        }
    )
    assert set(problems(d)) == {
        "metadata.labels.a",
        "metadata.labels.x/",
        "metadata.labels.k",
        "metadata.creationTimestamp",
        "metadata.generation",
        "metadata.colour",
    }


def _leaf_paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaf_paths(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _leaf_paths(v, (*path, i))
    yield path


def _replace(doc: Any, path: tuple[Any, ...], new: object) -> Any:
    if not path:
        return new
    out = copy.deepcopy(doc)
    target = out
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = new
    return out


WRONG_VALUES: list[object] = [
    None,
    True,
    0,
    -1,
    2**70,
    1.5,
    "",
    "x" * 300,
    "💥",
    [],
    [1, "a"],
    {},
    {"k": {"k": []}},
]


@pytest.mark.parametrize(("kind", "index", "document"), ALL_GOOD)
def test_wrong_types_everywhere_raise_only_validation_error(
    kind: str, index: int, document: dict[str, Any]
) -> None:
    key = resource_from_dict(document).key
    for path in _leaf_paths(document):
        for wrong in WRONG_VALUES:
            mutated = _replace(document, path, wrong)
            try:
                r = decode(key, json.dumps(mutated).encode(), 9)
            except ValidationError as exc:
                assert exc.errors
                assert all(isinstance(e, FieldError) for e in exc.errors)
                str(exc)
            else:
                # Accepted: then it must be a faithful, stable document.
                assert resource_from_dict(resource_to_dict(r)) == r


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_random_bytes(value: bytes) -> None:
    with contextlib.suppress(ValidationError):
        decode(WEP_KEY, value, 1)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "kind",
                    "apiVersion",
                    "metadata",
                    "spec",
                    "name",
                    "namespace",
                    "labels",
                    "ipNetworks",
                    "node",
                    "interfaceName",
                    "ports",
                    "x",
                ]
            ),
            children,
            max_size=5,
        )
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_random_json(value: object) -> None:
    with contextlib.suppress(ValidationError):
        decode(WEP_KEY, json.dumps(value).encode(), 1)


@pytest.mark.parametrize(
    "value",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
        json.dumps({**GOOD["WorkloadEndpoint"][0], "spec": {"node": "x" * 10_000_000}}).encode(),
        b'"' + b"x" * (MAX_VALUE_BYTES + 1) + b'"',
        b'{"kind": NaN}',
        b'{"kind": Infinity}',
        b"1" * 5000,
        b"\xff\xfe\x00\x00",
        b"",
        b"null",
        "text, not bytes",
    ],
    ids=[
        "deep-list",
        "deep-object",
        "10MB-string",
        "too-big",
        "nan",
        "inf",
        "huge-int",
        "bad-utf",
        "empty",
        "null",
        "str",
    ],
)
def test_hostile_values(value: bytes) -> None:
    with pytest.raises(ValidationError):
        decode(WEP_KEY, value, 1)


def test_deep_nesting_inside_opaque_field() -> None:
    d = good("FelixConfiguration")
    nested: object = 1
    for _ in range(2000):
        nested = [nested]
    d["spec"]["featureGates"] = nested
    key = resource_key("FelixConfiguration", "default")
    try:
        value = json.dumps(d).encode()
    except RecursionError:  # pragma: no cover - depends on the interpreter's limit
        value = b"[" * 2000 + b"]" * 2000
    with pytest.raises(ValidationError):
        decode(key, value, 1)


@pytest.mark.parametrize(
    ("text", "seconds", "canonical"),
    [
        ("90s", 90.0, "1m30s"),
        ("1m30s", 90.0, "1m30s"),
        ("0", 0.0, "0s"),
        ("0s", 0.0, "0s"),
        ("50ms", 0.05, "50ms"),
        ("1.5h", 5400.0, "1h30m0s"),
        ("2h45m", 9900.0, "2h45m0s"),
        ("1.5s", 1.5, "1.5s"),
        ("300us", 0.0003, "300µs"),
        ("120s", 120.0, "2m0s"),
    ],
)
def test_durations(text: str, seconds: float, canonical: str) -> None:
    assert parse_duration(text) == pytest.approx(seconds)
    assert format_duration(parse_duration(text)) == canonical
    assert parse_duration(canonical) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "90", "1x", "1m 30s", ".s", "-", "1e3s"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)
