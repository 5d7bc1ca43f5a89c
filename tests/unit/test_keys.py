"""etcd key layout: Calico's exact keys, round trips, and refusal of foreign keys."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from datastore.errors import KeyFormatError
from datastore.keys import RESOURCES_ROOT, kind_prefix, parse_resource_key, resource_key
from datastore.kinds import ALL_KINDS, lookup_kind


def test_calico_examples() -> None:
    assert (
        resource_key("GlobalNetworkPolicy", "default.allow-dns")
        == "/calico/resources/v3/projectcalico.org/globalnetworkpolicies/default.allow-dns"
    )
    assert (
        resource_key("wep", "node1-k8s-pod1-eth0", "ns1")
        == "/calico/resources/v3/projectcalico.org/workloadendpoints/ns1/node1-k8s-pod1-eth0"
    )
    assert resource_key("ippool", "p") == RESOURCES_ROOT + "ippools/p"
    assert resource_key("felixconfig", "node.n1") == RESOURCES_ROOT + "felixconfigurations/node.n1"
    assert resource_key("clusterinfo", "default") == RESOURCES_ROOT + "clusterinformations/default"


@pytest.mark.parametrize("info", ALL_KINDS, ids=lambda k: k.kind)
def test_round_trip_every_kind(info: object) -> None:
    assert not isinstance(info, str)
    kind = lookup_kind(info.kind)  # type: ignore[attr-defined]
    ns = "ns1" if kind.namespaced else None
    key = resource_key(kind, "a.b-c", ns)
    assert parse_resource_key(key) == (kind, ns, "a.b-c")
    assert key.startswith(kind_prefix(kind))
    if ns is not None:
        assert key.startswith(kind_prefix(kind, ns))


@given(
    st.sampled_from(ALL_KINDS),
    st.text(st.characters(blacklist_characters="/"), min_size=1, max_size=30),
    st.text(st.characters(blacklist_characters="/"), min_size=1, max_size=30),
)
def test_round_trip_property(info: object, name: str, ns: str) -> None:
    kind = lookup_kind(info.kind)  # type: ignore[attr-defined]
    namespace = ns if kind.namespaced else None
    assert parse_resource_key(resource_key(kind, name, namespace)) == (kind, namespace, name)


def test_prefixes_end_with_slash() -> None:
    assert kind_prefix("NetworkPolicy") == RESOURCES_ROOT + "networkpolicies/"
    assert kind_prefix("NetworkPolicy", "ns1") == RESOURCES_ROOT + "networkpolicies/ns1/"
    key10 = resource_key("NetworkPolicy", "p", "ns10")
    assert not key10.startswith(kind_prefix("NetworkPolicy", "ns1"))
    with pytest.raises(KeyFormatError):
        kind_prefix("IPPool", "ns1")


@pytest.mark.parametrize(
    ("args"),
    [
        ("WorkloadEndpoint", "n", None),
        ("IPPool", "p", "ns"),
        ("IPPool", "", None),
        ("IPPool", "a/b", None),
        ("NetworkSet", "n", "a/b"),
        ("NetworkSet", "n", ""),
    ],
)
def test_bad_key_arguments(args: tuple[str, str, str | None]) -> None:
    with pytest.raises(KeyFormatError):
        resource_key(*args)


@pytest.mark.parametrize(
    "key",
    [
        "/calico/resources/v3/projectcalico.org/ippools",
        "/calico/resources/v3/projectcalico.org/ippools/",
        "/calico/resources/v3/projectcalico.org/ippools/a/b",
        "/calico/resources/v3/projectcalico.org/workloadendpoints/ns1",
        "/calico/resources/v3/projectcalico.org/workloadendpoints/ns1/",
        "/calico/resources/v3/projectcalico.org/workloadendpoints//name",
        "/calico/resources/v3/projectcalico.org/workloadendpoints/a/b/c",
        "/calico/resources/v3/projectcalico.org/ipamblocks/10-0-0-0-26",
        "/calico/resources/v3/projectcalico.org/IPPools/p",
        "/calico/ipam/v2/assignment/ipv4/block/10.0.0.0-26",
        "/calico/felix/v1/host/node1/status",
        "calico/resources/v3/projectcalico.org/ippools/p",
        "",
    ],
)
def test_foreign_keys_are_refused(key: str) -> None:
    with pytest.raises(KeyFormatError):
        parse_resource_key(key)
