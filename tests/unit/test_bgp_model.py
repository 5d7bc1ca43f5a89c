"""bgp.model converters: datastore resources to BGP inputs (defaults, merge, secrets)."""

from __future__ import annotations

from ipaddress import ip_address, ip_interface, ip_network

import pytest

from bgp.model import (
    AsSegment,
    BGPConfig,
    BGPModelError,
    Path,
    from_bgpconfig_resources,
    from_bgppeer_resource,
    from_ippool_resource,
    from_node_resource,
    labels_of,
)
from datastore.codec import resource_from_dict
from datastore.model import SecretKeyRef
from tests.unit.test_model_examples import doc


def test_node_converter_keeps_prefix_length_and_identity() -> None:
    res = resource_from_dict(
        doc(
            "Node",
            "node-a",
            {
                "bgp": {
                    "ipv4Address": "198.51.100.1/24",
                    "asNumber": 64600,
                    "routeReflectorClusterID": "224.0.0.1",
                    "ipv4IPIPTunnelAddr": "10.65.0.1",
                }
            },
            labels={"rack": "r1"},
        )
    )
    n = from_node_resource(res, listen_port=1179)
    assert n.name == "node-a"
    assert n.ipv4_address == ip_interface("198.51.100.1/24")
    assert n.as_number == 64600
    assert n.route_reflector_cluster_id == ip_address("224.0.0.1")
    assert n.ipv4_ipip_tunnel_addr == ip_address("10.65.0.1")
    assert n.listen_port == 1179
    assert labels_of(res) == {"rack": "r1"}


def test_node_without_bgp_has_no_address() -> None:
    n = from_node_resource(resource_from_dict(doc("Node", "n", {})))
    assert n.ipv4_address is None and n.as_number is None


def test_bgpconfig_defaults_and_node_override() -> None:
    assert from_bgpconfig_resources(None) == BGPConfig()
    default = resource_from_dict(
        doc(
            "BGPConfiguration",
            "default",
            {
                "asNumber": 65000,
                "nodeToNodeMeshEnabled": False,
                "listenPort": 1179,
                "nodeMeshMaxRestartTime": "30s",
                "nodeMeshPassword": {"secretKeyRef": {"name": "bgp", "key": "mesh"}},
            },
        )
    )
    node = resource_from_dict(
        doc("BGPConfiguration", "node.node-a", {"listenPort": 2179, "asNumber": 1})
    )

    def resolver(ref: SecretKeyRef) -> str | None:
        return "pw" if (ref.name, ref.key) == ("bgp", "mesh") else None

    cfg = from_bgpconfig_resources(default, node, resolver)
    assert cfg == BGPConfig(
        as_number=65000,  # cluster-wide: the node-specific asNumber is not used
        node_to_node_mesh_enabled=False,
        listen_port=2179,
        cluster_listen_port=1179,
        node_mesh_max_restart_time=30.0,
        node_mesh_password="pw",
    )
    unresolved = from_bgpconfig_resources(default, None, None)
    assert unresolved.node_mesh_password is None and unresolved.mesh_password_unresolved


def test_bgppeer_converter() -> None:
    res = resource_from_dict(
        doc(
            "BGPPeer",
            "tor",
            {
                "peerIP": "198.51.100.254:1179",
                "asNumber": 65001,
                "nodeSelector": "rack == 'r1'",
                "holdTime": "9s",
                "keepaliveTime": "3s",
                "maxRestartTime": "1m",
                "password": {"secretKeyRef": {"name": "s", "key": "k"}},
                "nextHopMode": "Self",
            },
        )
    )
    p = from_bgppeer_resource(res, lambda ref: "secret")
    assert p.peer_ip == ip_address("198.51.100.254") and p.peer_port == 1179
    assert p.as_number == 65001
    assert p.node_selector is not None and p.node_selector.evaluate({"rack": "r1"})
    assert (p.hold_time, p.keepalive_time, p.max_restart_time) == (9.0, 3.0, 60.0)
    assert p.password == "secret" and not p.password_unresolved
    assert p.next_hop_mode == "Self"
    assert from_bgppeer_resource(res).password_unresolved


def test_ippool_converter_and_kind_check() -> None:
    res = resource_from_dict(
        doc(
            "IPPool",
            "pool-a",
            {"cidr": "10.65.0.0/16", "ipipMode": "CrossSubnet", "disableBGPExport": True},
        )
    )
    pool = from_ippool_resource(res)
    assert pool.cidr == ip_network("10.65.0.0/16")
    assert (pool.ipip_mode, pool.disabled, pool.disable_bgp_export) == ("CrossSubnet", False, True)
    with pytest.raises(BGPModelError, match="IPPool pool-a: expected a Node"):
        from_node_resource(res)


@pytest.mark.parametrize(
    ("segments", "length", "neighbour"),
    [
        ((), 0, None),
        ((AsSegment((64600, 64601)),), 2, 64600),
        ((AsSegment((1, 2, 3), is_set=True),), 1, None),
        ((AsSegment((7,)), AsSegment((1, 2), is_set=True)), 2, 7),
    ],
)
def test_path_length_and_neighbour_as(
    segments: tuple[AsSegment, ...], length: int, neighbour: int | None
) -> None:
    p = Path(next_hop=ip_address("198.51.100.2"), peer=ip_address("198.51.100.2"), as_path=segments)
    assert p.as_path_length == length
    assert p.neighbour_as == neighbour
