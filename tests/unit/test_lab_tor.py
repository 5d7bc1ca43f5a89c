"""The lab's top-of-rack plan (lab/tor.py): addresses, AS numbers, FRR config, resources (pure)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from datastore.codec import resource_from_dict
from lab import tor
from lab.topology import LabSpec, TopologyError, plan


def test_one_tor_per_rack_holding_the_rack_gateway(tmp_path: Path) -> None:
    topo = plan(LabSpec("t", nodes=4, subnets=2, tor="frr"))
    tors = tor.plan_tors(topo, tmp_path)
    assert [(t.name, t.address, t.transit, t.as_number) for t in tors] == [
        ("tor0", "198.51.100.1/26", "203.0.113.193/26", 65000),
        ("tor1", "198.51.100.65/26", "203.0.113.194/26", 65001),
    ]
    assert all(t.role == "tor" and t.netns.startswith(topo.ns_prefix) for t in tors)
    assert [n.gateway for n in topo.nodes] == ["198.51.100.1", "198.51.100.1"] + [
        "198.51.100.65"
    ] * 2
    assert tor.plan_tors(plan(LabSpec("t", nodes=4, subnets=2)), tmp_path) == []


def test_tor_needs_a_free_transit_subnet() -> None:
    with pytest.raises(TopologyError, match="--tor"):
        plan(LabSpec("t", nodes=8, subnets=8, tor="frr"))
    with pytest.raises(TopologyError, match="only frr"):
        plan(LabSpec("t", nodes=2, tor="bird"))


def test_bgpd_config_peers_rack_nodes_and_other_tors(tmp_path: Path) -> None:
    topo = plan(LabSpec("t", nodes=4, subnets=2, tor="frr"))
    tor0, tor1 = tor.plan_tors(topo, tmp_path)
    text = tor.bgpd_config(topo, tor0, [tor1])
    assert "router bgp 65000\n" in text and " bgp router-id 198.51.100.1\n" in text
    assert " neighbor 198.51.100.2 remote-as 65101\n" in text
    assert " neighbor 198.51.100.3 remote-as 65102\n" in text
    assert " neighbor 203.0.113.194 remote-as 65001\n" in text
    assert "198.51.100.66" not in text  # the other rack's nodes peer with their own ToR
    # the default route goes to the nodes, not to the other ToR
    assert "  neighbor 198.51.100.2 default-originate\n" in text
    assert "203.0.113.194 default-originate" not in text
    assert "redistribute" not in text and "network " not in text  # BGP carries pod routes only


def test_resources_mesh_off_as_per_node_peer_per_rack() -> None:
    topo = plan(LabSpec("t", nodes=4, subnets=2, tor="frr"))
    base: list[dict[str, Any]] = [
        {
            "apiVersion": "projectcalico.org/v3",
            "kind": "BGPConfiguration",
            "metadata": {"name": "default"},
            "spec": {"nodeToNodeMeshEnabled": True, "asNumber": 64512},
        },
        *(
            {
                "apiVersion": "projectcalico.org/v3",
                "kind": "Node",
                "metadata": {"name": n.name, "labels": {"rack": f"r{n.subnet}"}},
                "spec": {"bgp": {"ipv4Address": n.address}},
            }
            for n in topo.nodes
        ),
    ]
    docs = tor.resources(topo, base)
    assert base[0]["spec"]["nodeToNodeMeshEnabled"] is True  # input untouched
    for d in docs:
        resource_from_dict(d)  # every document validates
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    assert by_kind["BGPConfiguration"][0]["spec"] == {
        "nodeToNodeMeshEnabled": False,
        "asNumber": 64512,
    }
    assert [d["spec"]["bgp"]["asNumber"] for d in by_kind["Node"]] == [
        65101,
        65102,
        65103,
        65104,
    ]
    peers = {d["metadata"]["name"]: d["spec"] for d in by_kind["BGPPeer"]}
    assert peers["rack-r1"]["nodeSelector"] == "rack == 'r1'"
    assert (peers["rack-r1"]["peerIP"], peers["rack-r1"]["asNumber"]) == (
        "198.51.100.65",
        65001,
    )
    plain = plan(LabSpec("t", nodes=4, subnets=2))
    assert tor.resources(plain, base) == base
