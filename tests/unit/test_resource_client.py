"""``ResourceClient`` against the stateful in-memory etcd (``FakeEtcd``).

Assertions are on what the store holds (keys, raw JSON, revisions) and on what reads return.
Races are produced by ``RacingStore``: a real ``FakeKVStore`` client that, just before chosen
writes, lets another writer change the same key through the ``FakeEtcd`` directly, as a second
process would between our read and our compare-and-swap.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import re
import threading
from collections.abc import Callable
from typing import Any

import pytest

from datastore.client import (
    APPLY_ATTEMPTS,
    ResourceClient,
    ResourceConflict,
    ResourceExists,
    ResourceNotFound,
)
from datastore.codec import encode, resource_from_dict
from datastore.errors import KeyFormatError, ValidationError
from datastore.fake import FakeEtcd, FakeKVStore
from datastore.keys import resource_key
from datastore.kv import UnavailableError
from datastore.model import Resource
from datastore.schema import FrozenMap

GNP_KEY = "/calico/resources/v3/projectcalico.org/globalnetworkpolicies/allow-web"
RFC3339_UTC = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")


def gnp(name: str = "allow-web", order: float = 10, **meta: Any) -> Resource:
    return resource_from_dict(
        {
            "apiVersion": "projectcalico.org/v3",
            "kind": "GlobalNetworkPolicy",
            "metadata": {"name": name, **meta},
            "spec": {"order": order, "selector": "app == 'web'", "types": ["Ingress"]},
        }
    )


def netpol(name: str, namespace: str | None = "shop") -> Resource:
    meta: dict[str, Any] = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    return resource_from_dict(
        {
            "apiVersion": "projectcalico.org/v3",
            "kind": "NetworkPolicy",
            "metadata": meta,
            "spec": {"selector": "all()"},
        }
    )


def with_labels(r: Resource, **labels: str) -> Resource:
    merged = {**r.metadata.labels, **labels}
    meta = dataclasses.replace(r.metadata, labels=FrozenMap(merged))
    return dataclasses.replace(r, metadata=meta)


def stored_json(etcd: FakeEtcd, key: str) -> dict[str, Any]:
    kv = etcd.get(key)
    assert kv is not None, f"{key} not stored"
    out: dict[str, Any] = json.loads(kv.value)
    return out


class RacingStore(FakeKVStore):
    """A fake client where another writer acts just before each of our next writes."""

    def __init__(self, etcd: FakeEtcd) -> None:
        super().__init__(etcd)
        self.interlopers: list[Callable[[FakeEtcd], object]] = []

    def _race(self) -> None:
        if self.interlopers:
            self.interlopers.pop(0)(self._etcd)

    def create(self, key: str, value: bytes) -> int:
        self._race()
        return super().create(key, value)

    def update(self, key: str, value: bytes, expected_mod_revision: int) -> int:
        self._race()
        return super().update(key, value, expected_mod_revision)


@pytest.fixture
def etcd() -> FakeEtcd:
    return FakeEtcd()


@pytest.fixture
def client(etcd: FakeEtcd) -> ResourceClient:
    return ResourceClient(etcd.connect())


# --- create / get / storage layout ----------------------------------------------------------


def test_create_stores_calico_layout_without_resource_version(
    etcd: FakeEtcd, client: ResourceClient
) -> None:
    created = client.create(gnp())
    kv = etcd.get(GNP_KEY)
    assert kv is not None
    assert created.metadata.resource_version == str(kv.mod_revision)
    stored = json.loads(kv.value)
    assert list(stored) == ["kind", "apiVersion", "metadata", "spec"]
    assert stored["apiVersion"] == "projectcalico.org/v3"
    assert "resourceVersion" not in stored["metadata"]
    assert stored["metadata"]["uid"] == created.metadata.uid
    assert RFC3339_UTC.fullmatch(stored["metadata"]["creationTimestamp"])
    # Exactly what the codec encodes.
    assert kv.value == encode(created)


def test_create_keeps_given_uid_and_timestamp(client: ResourceClient) -> None:
    r = gnp(uid="u-1", creationTimestamp="2024-01-02T03:04:05Z")
    created = client.create(r)
    assert created.metadata.uid == "u-1"
    assert created.metadata.creation_timestamp == "2024-01-02T03:04:05Z"


def test_create_twice_is_resource_exists(etcd: FakeEtcd, client: ResourceClient) -> None:
    first = client.create(gnp(order=1))
    with pytest.raises(ResourceExists) as info:
        client.create(gnp(order=2))
    assert "GlobalNetworkPolicy allow-web" in str(info.value)
    assert client.get("gnp", "allow-web") == first


def test_get_round_trip_and_not_found(client: ResourceClient) -> None:
    created = client.create(gnp())
    assert client.get("globalnetworkpolicies", "allow-web") == created
    with pytest.raises(ResourceNotFound) as info:
        client.get("gnp", "nope")
    assert str(info.value) == "GlobalNetworkPolicy nope: resource does not exist"
    with pytest.raises(ResourceNotFound, match="NetworkPolicy other/x"):
        client.get("networkpolicy", "x", "other")


def test_namespaced_kinds_default_to_default_namespace(
    etcd: FakeEtcd, client: ResourceClient
) -> None:
    client.create(netpol("a", "default"))
    client.create(netpol("b", "shop"))
    assert etcd.get(resource_key("NetworkPolicy", "a", "default")) is not None
    assert client.get("np", "a").namespace == "default"
    assert [r.name for r in client.list("np")] == ["a"]
    assert [r.name for r in client.list("np", "shop")] == ["b"]
    assert [(r.namespace, r.name) for r in client.list("np", all_namespaces=True)] == [
        ("default", "a"),
        ("shop", "b"),
    ]
    with pytest.raises(KeyFormatError):
        client.get("gnp", "x", "shop")


def test_hand_built_invalid_resource_is_refused_before_writing(
    etcd: FakeEtcd, client: ResourceClient
) -> None:
    bad = dataclasses.replace(gnp(), metadata=dataclasses.replace(gnp().metadata, name="Bad!"))
    with pytest.raises(ValidationError):
        client.create(bad)
    assert etcd.snapshot() == {}


# --- replace ----------------------------------------------------------------------------


def test_replace_preserves_uid_and_creation_timestamp(client: ResourceClient) -> None:
    created = client.create(gnp(order=1))
    # The new document does not carry uid/timestamp (as a user's manifest would not).
    replaced = client.replace(gnp(order=2))
    assert replaced.metadata.uid == created.metadata.uid
    assert replaced.metadata.creation_timestamp == created.metadata.creation_timestamp
    assert int(replaced.metadata.resource_version) > int(created.metadata.resource_version)
    got = client.get("gnp", "allow-web")
    assert got == replaced
    assert got.spec.order == 2  # type: ignore[attr-defined]


def test_replace_missing_is_not_found(etcd: FakeEtcd, client: ResourceClient) -> None:
    with pytest.raises(ResourceNotFound):
        client.replace(gnp())
    assert etcd.snapshot() == {}


def test_replace_with_stale_resource_version_is_conflict(
    etcd: FakeEtcd, client: ResourceClient
) -> None:
    v1 = client.create(gnp(order=1))
    v2 = client.replace(gnp(order=2))
    stale = dataclasses.replace(gnp(order=3), metadata=v1.metadata)
    with pytest.raises(ResourceConflict, match="GlobalNetworkPolicy allow-web"):
        client.replace(stale)
    assert client.get("gnp", "allow-web") == v2
    # With the current version it goes through.
    fresh = dataclasses.replace(gnp(order=3), metadata=v2.metadata)
    assert client.replace(fresh).spec.order == 3  # type: ignore[attr-defined]


def test_replace_reports_concurrent_write_between_read_and_cas(etcd: FakeEtcd) -> None:
    store = RacingStore(etcd)
    client = ResourceClient(store)
    client.create(gnp(order=1))
    store.interlopers.append(lambda e: e.put(GNP_KEY, encode(gnp(order=99))))
    with pytest.raises(ResourceConflict):
        client.replace(gnp(order=2))
    assert stored_json(etcd, GNP_KEY)["spec"]["order"] == 99  # the other writer's value stands


def test_replace_over_invalid_stored_value_repairs_it(
    etcd: FakeEtcd, client: ResourceClient
) -> None:
    etcd.put(GNP_KEY, b"{not json")
    replaced = client.replace(gnp(order=5))
    assert replaced.metadata.uid
    assert client.get("gnp", "allow-web") == replaced


# --- apply ------------------------------------------------------------------------------


def test_apply_creates_then_replaces(etcd: FakeEtcd, client: ResourceClient) -> None:
    a = client.apply(gnp(order=1))
    b = client.apply(gnp(order=2))
    assert b.metadata.uid == a.metadata.uid
    assert stored_json(etcd, GNP_KEY)["spec"]["order"] == 2


def test_apply_retries_a_concurrent_update_and_keeps_its_metadata(etcd: FakeEtcd) -> None:
    store = RacingStore(etcd)
    client = ResourceClient(store)
    original = client.create(gnp(order=1))
    # Two other writers win the race on our first two attempts.
    store.interlopers += [
        lambda e: e.put(GNP_KEY, encode(with_labels(original, writer="x"))),
        lambda e: e.put(GNP_KEY, encode(with_labels(original, writer="y"))),
    ]
    applied = client.apply(gnp(order=7))
    assert store.interlopers == []
    assert applied.spec.order == 7  # type: ignore[attr-defined]
    assert applied.metadata.uid == original.metadata.uid
    kv = etcd.get(GNP_KEY)
    assert kv is not None and str(kv.mod_revision) == applied.metadata.resource_version


def test_apply_retries_when_created_concurrently(etcd: FakeEtcd) -> None:
    store = RacingStore(etcd)
    client = ResourceClient(store)
    other = dataclasses.replace(
        gnp(order=3), metadata=dataclasses.replace(gnp().metadata, uid="theirs")
    )
    store.interlopers.append(lambda e: e.create(GNP_KEY, encode(other)))
    applied = client.apply(gnp(order=4))
    assert applied.metadata.uid == "theirs"  # it became a replace of their resource
    assert stored_json(etcd, GNP_KEY)["spec"]["order"] == 4


def _put_order(etcd: FakeEtcd, order: int) -> None:
    etcd.put(GNP_KEY, encode(gnp(order=order)))


def test_apply_gives_up_after_bounded_attempts(etcd: FakeEtcd) -> None:
    store = RacingStore(etcd)
    client = ResourceClient(store)
    client.create(gnp(order=1))
    store.interlopers += [
        functools.partial(_put_order, order=100 + i) for i in range(APPLY_ATTEMPTS)
    ]
    with pytest.raises(ResourceConflict, match="gave up"):
        client.apply(gnp(order=2))
    assert stored_json(etcd, GNP_KEY)["spec"]["order"] == 100 + APPLY_ATTEMPTS - 1


def test_apply_with_stale_resource_version_is_not_retried(etcd: FakeEtcd) -> None:
    client = ResourceClient(etcd.connect())
    v1 = client.create(gnp(order=1))
    client.replace(gnp(order=2))
    stale = dataclasses.replace(gnp(order=3), metadata=v1.metadata)
    with pytest.raises(ResourceConflict, match="stale"):
        client.apply(stale)
    assert stored_json(etcd, GNP_KEY)["spec"]["order"] == 2


def test_concurrent_read_modify_write_loses_no_update(etcd: FakeEtcd) -> None:
    """Several threads add labels with get + replace(resourceVersion), retrying conflicts."""
    ResourceClient(etcd.connect()).create(gnp())
    workers, edits = 4, 15
    conflicts = [0]

    def worker(w: int) -> None:
        client = ResourceClient(etcd.connect())
        for n in range(edits):
            while True:
                current = client.get("gnp", "allow-web")
                try:
                    client.replace(with_labels(current, **{f"w{w}-{n}": "x"}))
                    break
                except ResourceConflict:
                    conflicts[0] += 1

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    labels = stored_json(etcd, GNP_KEY)["metadata"]["labels"]
    assert set(labels) == {f"w{w}-{n}" for w in range(workers) for n in range(edits)}


# --- delete -----------------------------------------------------------------------------


def test_delete(etcd: FakeEtcd, client: ResourceClient) -> None:
    client.create(gnp())
    client.create(netpol("a", "default"))
    deleted = client.delete("gnp", "allow-web")
    assert deleted is not None and deleted.name == "allow-web"
    client.delete("networkpolicies", "a")  # namespace defaults to "default"
    assert etcd.snapshot() == {}
    with pytest.raises(ResourceNotFound, match="GlobalNetworkPolicy allow-web"):
        client.delete("gnp", "allow-web")


def test_delete_with_stale_resource_version_is_conflict(
    etcd: FakeEtcd, client: ResourceClient
) -> None:
    v1 = client.create(gnp(order=1))
    client.replace(gnp(order=2))
    with pytest.raises(ResourceConflict):
        client.delete("gnp", "allow-web", resource_version=v1.metadata.resource_version)
    assert etcd.get(GNP_KEY) is not None


# --- list -------------------------------------------------------------------------------


def test_list_skips_invalid_stored_values_with_one_log_line(
    etcd: FakeEtcd, client: ResourceClient, caplog: pytest.LogCaptureFixture
) -> None:
    client.create(gnp("a"))
    client.create(gnp("c"))
    bad_keys = [
        resource_key("GlobalNetworkPolicy", "b"),
        resource_key("GlobalNetworkPolicy", "b2"),
        resource_key("GlobalNetworkPolicy", "b3"),
    ]
    etcd.put(bad_keys[0], b"{broken")
    etcd.put(bad_keys[1], encode(gnp("other-name")))  # name disagrees with the key
    etcd.put(bad_keys[2], json.dumps({"kind": "GlobalNetworkPolicy"}).encode())
    with caplog.at_level(logging.WARNING, logger="datastore.client"):
        items, revision = client.list_with_revision("gnp")
    assert [r.name for r in items] == ["a", "c"]
    assert revision == etcd.revision
    skipped = [r.getMessage() for r in caplog.records if "skip_invalid" in r.getMessage()]
    assert len(skipped) == 3
    for key, line in zip(bad_keys, skipped, strict=True):
        assert f"key={key} " in line


def test_list_does_not_mix_kinds_or_namespaces(client: ResourceClient) -> None:
    client.create(gnp("a"))
    client.create(netpol("a", "shop"))
    client.create(netpol("a", "shop2"))
    assert [r.kind for r in client.list("gnp")] == ["GlobalNetworkPolicy"]
    assert [r.namespace for r in client.list("np", "shop")] == ["shop"]


def test_store_outage_surfaces_as_unavailable(etcd: FakeEtcd, client: ResourceClient) -> None:
    etcd.set_available(False)
    with pytest.raises(UnavailableError):
        client.apply(gnp())
    etcd.set_available(True)
    assert etcd.snapshot() == {}
