"""Kind lookup: every calicoctl name resolves, unknown names fail helpfully."""

from __future__ import annotations

import pytest

from datastore.errors import UnknownKindError
from datastore.kinds import ALL_KINDS, kind_by_plural, lookup_kind

# calicoctl's resourcemgr registrations (plus the CamelCase kinds themselves).
CALICOCTL_NAMES = {
    "WorkloadEndpoint": ["workloadendpoint", "workloadendpoints", "wep", "weps"],
    "HostEndpoint": ["hostendpoint", "hostendpoints", "hep", "heps"],
    "NetworkPolicy": [
        "networkpolicy",
        "networkpolicies",
        "policy",
        "np",
        "policies",
        "pol",
        "pols",
    ],
    "GlobalNetworkPolicy": ["globalnetworkpolicy", "globalnetworkpolicies", "gnp", "gnps"],
    "Profile": ["profile", "profiles", "pro", "pros"],
    "Tier": ["tier", "tiers"],
    "NetworkSet": ["networkset", "networksets", "netsets"],
    "GlobalNetworkSet": ["globalnetworkset", "globalnetworksets", "gnetsets"],
    "IPPool": ["ippool", "ippools", "ipp", "ipps", "pool", "pools"],
    "BGPConfiguration": ["bgpconfiguration", "bgpconfigurations", "bgpconfig", "bgpconfigs"],
    "BGPPeer": ["bgppeer", "bgppeers", "bgpp", "bgpps", "bp", "bps"],
    "Node": ["node", "nodes", "no", "nos"],
    "FelixConfiguration": [
        "felixconfiguration",
        "felixconfigurations",
        "felixconfig",
        "felixconfigs",
    ],
    "ClusterInformation": [
        "clusterinformation",
        "clusterinformations",
        "clusterinfo",
        "clusterinfos",
    ],
}

PLURALS = {
    "WorkloadEndpoint": "workloadendpoints",
    "HostEndpoint": "hostendpoints",
    "NetworkPolicy": "networkpolicies",
    "GlobalNetworkPolicy": "globalnetworkpolicies",
    "Profile": "profiles",
    "Tier": "tiers",
    "NetworkSet": "networksets",
    "GlobalNetworkSet": "globalnetworksets",
    "IPPool": "ippools",
    "BGPConfiguration": "bgpconfigurations",
    "BGPPeer": "bgppeers",
    "Node": "nodes",
    "FelixConfiguration": "felixconfigurations",
    "ClusterInformation": "clusterinformations",
}


def test_all_kinds_modelled_with_calico_plurals() -> None:
    assert {k.kind: k.plural_lower for k in ALL_KINDS} == PLURALS
    assert {k.kind for k in ALL_KINDS if k.namespaced} == {
        "WorkloadEndpoint",
        "NetworkPolicy",
        "NetworkSet",
    }


@pytest.mark.parametrize(
    ("kind", "name"), [(k, n) for k, names in CALICOCTL_NAMES.items() for n in [k, *names]]
)
def test_calicoctl_names_resolve_in_any_case(kind: str, name: str) -> None:
    assert lookup_kind(name).kind == kind
    assert lookup_kind(name.upper()).kind == kind
    assert lookup_kind(f" {name.title()} ").kind == kind


def test_aliases_are_unique() -> None:
    seen: dict[str, str] = {}
    for info in ALL_KINDS:
        for alias in info.aliases:
            assert alias not in seen, (alias, seen.get(alias), info.kind)
            seen[alias] = info.kind
    assert lookup_kind("gns").kind == "GlobalNetworkSet"  # tabby extra


def test_unknown_kind_is_helpful() -> None:
    with pytest.raises(UnknownKindError) as info:
        lookup_kind("globalnetworkpolicys")
    message = str(info.value)
    assert "'globalnetworkpolicys'" in message
    assert "did you mean GlobalNetworkPolicy" in message
    assert "IPPool" in message
    with pytest.raises(UnknownKindError):
        lookup_kind("pod")
    with pytest.raises(ValueError, match="unknown resource kind"):
        lookup_kind("")


def test_kind_by_plural() -> None:
    assert kind_by_plural("ippools") is lookup_kind("IPPool")
    assert kind_by_plural("IPPools") is None
    assert kind_by_plural("ippool") is None
