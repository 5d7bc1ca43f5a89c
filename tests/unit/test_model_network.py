"""IPPool, BGPConfiguration, BGPPeer, Node: typed values, defaults, exact error paths."""

from __future__ import annotations

from ipaddress import ip_address, ip_interface, ip_network

import pytest

from datastore.codec import resource_from_dict, resource_to_dict
from datastore.model import (
    BGPConfigurationSpec,
    BGPPeerSpec,
    IPPoolSpec,
    NodeSpec,
    NodeStatus,
    PeerAddress,
)
from tests.unit.test_model_examples import doc, good, problems


def _pool(spec: dict[str, object]) -> dict[str, object]:
    return doc("IPPool", "pool", spec)


def test_pool_defaults() -> None:
    r = resource_from_dict(good("IPPool", 1))
    assert isinstance(r.spec, IPPoolSpec)
    assert r.spec.cidr == ip_network("fd00:10:65::/48")
    assert r.spec.block_size == 122
    assert r.spec.ipip_mode == "Never"
    assert r.spec.allowed_uses == ("Workload", "Tunnel")
    v4 = resource_from_dict(_pool({"cidr": "10.1.0.0/16"}))
    assert isinstance(v4.spec, IPPoolSpec)
    assert v4.spec.block_size == 26
    assert resource_to_dict(v4)["spec"] == {
        "cidr": "10.1.0.0/16",
        "vxlanMode": "Never",
        "ipipMode": "Never",
        "blockSize": 26,
        "allowedUses": ["Workload", "Tunnel"],
    }


@pytest.mark.parametrize(
    ("spec", "paths"),
    [
        ({"cidr": "10.1.0.1/16"}, {"spec.cidr"}),
        ({"cidr": "10.1.0.0/16", "blockSize": 19}, {"spec.blockSize"}),
        ({"cidr": "10.1.0.0/16", "blockSize": 33}, {"spec.blockSize"}),
        ({"cidr": "fd00::/48", "blockSize": 115}, {"spec.blockSize"}),
        ({"cidr": "10.1.0.0/28"}, {"spec.cidr"}),
        ({"cidr": "fd00::/48", "ipipMode": "Always"}, {"spec.ipipMode"}),
        ({"cidr": "10.1.0.0/16", "ipipMode": "Always", "vxlanMode": "Always"}, {"spec.ipipMode"}),
        ({"cidr": "10.1.0.0/16", "ipipMode": "Sometimes"}, {"spec.ipipMode"}),
        ({"cidr": "169.254.0.0/16"}, {"spec.cidr"}),
        (
            {"cidr": "10.1.0.0/16", "allowedUses": ["LoadBalancer", "Workload"]},
            {"spec.allowedUses"},
        ),
        ({"cidr": "10.1.0.0/16", "nodeSelector": "a ==="}, {"spec.nodeSelector"}),
        ({"ipipMode": "Always"}, {"spec.cidr"}),
        ({"cidr": "10.1.0.0/16", "natOutgoing": "yes"}, {"spec.natOutgoing"}),
    ],
)
def test_pool_errors(spec: dict[str, object], paths: set[str]) -> None:
    assert set(problems(_pool(spec))) == paths


def test_small_disabled_pool_is_allowed() -> None:
    resource_from_dict(_pool({"cidr": "10.1.0.0/28", "disabled": True}))


def test_bgp_configuration() -> None:
    r = resource_from_dict(good("BGPConfiguration"))
    spec = r.spec
    assert isinstance(spec, BGPConfigurationSpec)
    assert spec.as_number == 63400
    assert spec.node_to_node_mesh_enabled is False
    assert spec.service_cluster_ips[0].cidr == ip_network("10.96.0.0/12")
    assert spec.node_mesh_max_restart_time == 120.0
    assert spec.extra == {"bindMode": "NodeIP"}
    out = resource_to_dict(r)["spec"]
    assert out["nodeMeshMaxRestartTime"] == "2m0s"
    assert out["nodeToNodeMeshEnabled"] is False
    assert out["bindMode"] == "NodeIP"
    bad = doc(
        "BGPConfiguration",
        "default",
        {
            "asNumber": 0,
            "listenPort": 70000,
            "logSeverityScreen": "Loud",
            "serviceClusterIPs": [{"cidr": "10.96.0.1/12"}],
            "communities": [{"name": "c", "value": "70000:1"}],
            "nodeMeshMaxRestartTime": "2 minutes",
        },
    )
    assert set(problems(bad)) == {
        "spec.asNumber",
        "spec.listenPort",
        "spec.logSeverityScreen",
        "spec.serviceClusterIPs[0].cidr",
        "spec.communities[0].value",
        "spec.nodeMeshMaxRestartTime",
    }


def test_bgp_peer_values() -> None:
    r = resource_from_dict(good("BGPPeer"))
    spec = r.spec
    assert isinstance(spec, BGPPeerSpec)
    assert spec.peer_ip == PeerAddress(ip_address("192.168.1.1"))
    assert spec.max_restart_time == 120.0
    assert spec.keepalive_time == 20.0
    assert spec.hold_time == 90.0
    assert spec.password is not None and spec.password.secret_key_ref is not None
    assert spec.password.secret_key_ref.key == "rr-password"
    v6 = resource_from_dict(good("BGPPeer", 2)).spec
    assert isinstance(v6, BGPPeerSpec)
    assert v6.peer_ip == PeerAddress(ip_address("fd00::9"), 1179)
    assert v6.as_number == 65546  # asdot 1.10
    assert resource_to_dict(resource_from_dict(good("BGPPeer", 2)))["spec"]["peerIP"] == (
        "[fd00::9]:1179"
    )
    p4 = resource_from_dict(doc("BGPPeer", "p", {"peerIP": "198.51.100.9:1179", "asNumber": 1}))
    assert isinstance(p4.spec, BGPPeerSpec)
    assert p4.spec.peer_ip == PeerAddress(ip_address("198.51.100.9"), 1179)


@pytest.mark.parametrize(
    ("spec", "paths"),
    [
        ({"peerIP": "198.51.100.9"}, {"spec.asNumber"}),
        ({"asNumber": 64512}, {"spec.peerIP"}),
        ({"peerIP": "198.51.100.9:0", "asNumber": 1}, {"spec.peerIP"}),
        ({"peerIP": "[198.51.100.9]:179", "asNumber": 1}, {"spec.peerIP"}),
        ({"peerIP": "fd00::1]:179", "asNumber": 1}, {"spec.peerIP"}),
        (
            {"node": "n1", "nodeSelector": "all()", "peerSelector": "all()", "peerIP": "1.2.3.4"},
            {"spec.node", "spec.peerIP", "spec.asNumber"},
        ),
        ({"peerSelector": "all()", "asNumber": 5}, {"spec.asNumber"}),
        (
            {"peerIP": "1.2.3.4", "asNumber": 1, "holdTime": "2s", "keepaliveTime": "1s"},
            {"spec.holdTime"},
        ),
        (
            {"peerIP": "1.2.3.4", "asNumber": 1, "holdTime": "9s", "keepaliveTime": "10s"},
            {"spec.keepaliveTime"},
        ),
        ({"peerIP": "1.2.3.4", "asNumber": "4294967296"}, {"spec.asNumber"}),
        ({"peerIP": "1.2.3.4", "asNumber": 1, "sourceAddress": "Mine"}, {"spec.sourceAddress"}),
        (
            {"peerIP": "1.2.3.4", "asNumber": 1, "password": {"secretKeyRef": {"name": "s"}}},
            {"spec.password.secretKeyRef.key"},
        ),
    ],
)
def test_bgp_peer_errors(spec: dict[str, object], paths: set[str]) -> None:
    assert set(problems(doc("BGPPeer", "p", spec))) == paths


def test_node_values() -> None:
    r = resource_from_dict(good("Node"))
    spec = r.spec
    assert isinstance(spec, NodeSpec)
    assert spec.bgp is not None
    assert spec.bgp.ipv4_address == ip_interface("198.51.100.2/24")
    assert spec.bgp.route_reflector_cluster_id == ip_address("224.0.0.1")
    assert spec.addresses[1].address == ip_interface("198.51.100.2/32")
    assert isinstance(r.status, NodeStatus)
    assert r.status.pod_cidrs == (ip_network("10.65.0.0/24"),)
    out = resource_to_dict(r)
    assert out["spec"]["addresses"][1]["address"] == "198.51.100.2"
    assert out["spec"]["bgp"]["ipv4Address"] == "198.51.100.2/24"
    bare = resource_from_dict(doc("Node", "n", {"bgp": {"ipv4Address": "198.51.100.3"}}))
    assert resource_to_dict(bare)["spec"]["bgp"]["ipv4Address"] == "198.51.100.3/32"


def test_node_errors() -> None:
    d = doc(
        "Node",
        "n",
        {
            "bgp": {
                "ipv4Address": "2001:db8::1/64",
                "ipv6Address": "198.51.100.2/24",
                "routeReflectorClusterID": "not-an-ip",
                "asNumber": -1,
            },
            "addresses": [{"address": "198.51.100.2/24", "type": "Public"}],
            "orchRefs": [{"nodeName": "n"}],
        },
    )
    d["status"] = {"podCIDRs": ["x"]}
    assert set(problems(d)) == {
        "spec.bgp.ipv4Address",
        "spec.bgp.ipv6Address",
        "spec.bgp.routeReflectorClusterID",
        "spec.bgp.asNumber",
        "spec.addresses[0].type",
        "spec.orchRefs[0].orchestrator",
        "status.podCIDRs[0]",
    }
    assert set(problems(doc("Node", "n", {"bgp": {}}))) == {"spec.bgp"}
