"""bgp.peers.desired_peers: mesh, global/node/selector peers, passive side, dedup, AS choice."""

from __future__ import annotations

from collections.abc import Mapping
from ipaddress import IPv4Address, IPv4Interface, ip_address

from hypothesis import given
from hypothesis import strategies as st

from bgp.model import BGPConfig, BGPPeerInfo, NodeInfo, PeerSpec
from bgp.peers import desired_peers, is_passive
from policy.selector import parse


def node(name: str, addr: str | None, **kw: object) -> NodeInfo:
    return NodeInfo(name, IPv4Interface(addr) if addr else None, **kw)  # type: ignore[arg-type]


NODES = {
    "a": node("a", "198.51.100.1/24"),
    "b": node("b", "198.51.100.10/24"),
    "c": node("c", "198.51.100.5/24", as_number=65005),
    "d": node("d", None),
}
LABELS: Mapping[str, Mapping[str, str]] = {
    "a": {"rack": "r1"},
    "b": {"rack": "r1", "rr": "true"},
    "c": {"rack": "r2"},
}


def by_addr(peers: tuple[PeerSpec, ...]) -> dict[str, PeerSpec]:
    return {str(p.address): p for p in peers}


def test_full_mesh_default_config() -> None:
    peers = by_addr(desired_peers("a", NODES, BGPConfig(), [], LABELS))
    assert set(peers) == {"198.51.100.10", "198.51.100.5"}  # not me, not the node without bgp
    b, c = peers["198.51.100.10"], peers["198.51.100.5"]
    assert (b.kind, b.remote_as, b.local_as, b.port, b.node) == ("mesh", 64512, 64512, 179, "b")
    assert c.remote_as == 65005 and c.next_hop_self  # eBGP mesh peer
    assert not b.next_hop_self
    # Calico's string comparison: "198.51.100.10" < "198.51.100.1"? no: it is greater
    assert b.passive is ("198.51.100.10" > "198.51.100.1")
    assert c.passive is True
    assert (b.hold_time, b.keepalive, b.restart_time, b.md5_password) == (90, 30, 120, None)


def test_mesh_disabled_and_missing_self() -> None:
    assert desired_peers("a", NODES, BGPConfig(node_to_node_mesh_enabled=False), [], LABELS) == ()
    assert desired_peers("d", NODES, BGPConfig(), [], LABELS) == ()
    assert desired_peers("zz", NODES, BGPConfig(), [], LABELS) == ()


def test_mesh_uses_node_as_port_password_restart() -> None:
    nodes = {**NODES, "a": node("a", "198.51.100.1/24", as_number=65001)}
    nodes["b"] = node("b", "198.51.100.10/24", listen_port=1790)
    cfg = BGPConfig(
        as_number=65000,
        cluster_listen_port=1179,
        listen_port=2179,
        node_mesh_password="pw",
        node_mesh_max_restart_time=5000,
    )
    peers = by_addr(desired_peers("a", nodes, cfg, [], LABELS))
    assert peers["198.51.100.10"].port == 1790
    assert peers["198.51.100.5"].port == 1179
    assert peers["198.51.100.10"].local_as == 65001
    assert peers["198.51.100.10"].remote_as == 65000
    assert peers["198.51.100.10"].md5_password == "pw"
    assert peers["198.51.100.10"].restart_time == 4095  # clamped to the 12-bit field
    unresolved = BGPConfig(node_mesh_password=None, mesh_password_unresolved=True)
    assert desired_peers("a", nodes, unresolved, [], LABELS) == ()


def test_explicit_peers_scope_and_targets() -> None:
    peers = [
        BGPPeerInfo("global-tor", peer_ip=ip_address("203.0.113.1"), as_number=65100),
        BGPPeerInfo("for-b", node="b", peer_ip=ip_address("203.0.113.2"), as_number=65100),
        BGPPeerInfo(
            "rack1",
            node_selector=parse("rack == 'r1'"),
            peer_ip=ip_address("203.0.113.3"),
            peer_port=1179,
            as_number=64512,
            hold_time=9,
            password="x",
            max_restart_time=30,
        ),
        BGPPeerInfo(
            "rack2",
            node_selector=parse("rack == 'r2'"),
            peer_ip=ip_address("203.0.113.4"),
            as_number=1,
        ),
        BGPPeerInfo("v6", peer_ip=ip_address("2001:db8::1"), as_number=1),
        BGPPeerInfo("me", peer_ip=ip_address("198.51.100.1"), as_number=1),
        BGPPeerInfo(
            "nopw", peer_ip=ip_address("203.0.113.9"), as_number=1, password_unresolved=True
        ),
    ]
    cfg = BGPConfig(node_to_node_mesh_enabled=False)
    got = by_addr(desired_peers("a", NODES, cfg, peers, LABELS))
    assert set(got) == {"203.0.113.1", "203.0.113.3"}
    tor, rack = got["203.0.113.1"], got["203.0.113.3"]
    assert (tor.kind, tor.name, tor.passive, tor.next_hop_self) == (
        "global",
        "global:global-tor",
        False,
        True,
    )
    assert (rack.kind, rack.port, rack.hold_time, rack.keepalive, rack.md5_password) == (
        "node",
        1179,
        9,
        3,
        "x",
    )
    assert rack.restart_time == 30 and not rack.next_hop_self
    got_b = by_addr(desired_peers("b", NODES, cfg, peers, LABELS))
    # "me" names a's address: for b it is a session to another node (node-to-node passive rule)
    assert set(got_b) == {"198.51.100.1", "203.0.113.1", "203.0.113.2", "203.0.113.3"}
    assert got_b["203.0.113.2"].kind == "node"
    assert got_b["198.51.100.1"].node == "a"
    assert got_b["198.51.100.1"].passive is is_passive(
        IPv4Address("198.51.100.10"), IPv4Address("198.51.100.1")
    )


def test_peer_selector_route_reflector_topology() -> None:
    nodes = {
        "a": node("a", "198.51.100.1/24"),
        "b": node("b", "198.51.100.10/24", route_reflector_cluster_id=IPv4Address("224.0.0.1")),
        "c": node("c", "198.51.100.5/24"),
    }
    peers = [
        # every node peers with the route reflectors
        BGPPeerInfo("to-rr", peer_selector=parse("has(rr)")),
        # the route reflectors peer with every node
        BGPPeerInfo("rr-clients", node_selector=parse("has(rr)"), peer_selector=parse("all()")),
    ]
    cfg = BGPConfig(node_to_node_mesh_enabled=False)
    a = desired_peers("a", nodes, cfg, peers, LABELS)
    assert [(str(p.address), p.name, p.route_reflector_client) for p in a] == [
        ("198.51.100.10", "global:to-rr:b", False)
    ]
    b = by_addr(desired_peers("b", nodes, cfg, peers, LABELS))
    assert set(b) == {"198.51.100.1", "198.51.100.5"}
    assert all(p.route_reflector_client and p.kind == "node" for p in b.values())
    assert b["198.51.100.1"].name == "node:rr-clients:a"
    # exactly one side of a-b is passive
    assert a[0].passive != b["198.51.100.1"].passive


def test_dedup_prefers_node_then_global_then_mesh() -> None:
    peers = [
        BGPPeerInfo("g", peer_ip=ip_address("198.51.100.10"), as_number=64512, hold_time=30),
        BGPPeerInfo(
            "n", node="a", peer_ip=ip_address("198.51.100.10"), as_number=64512, hold_time=60
        ),
        BGPPeerInfo("g2", peer_ip=ip_address("198.51.100.5"), as_number=65005, hold_time=30),
    ]
    got = by_addr(desired_peers("a", NODES, BGPConfig(), peers, LABELS))
    assert got["198.51.100.10"].name == "node:n" and got["198.51.100.10"].hold_time == 60
    assert got["198.51.100.5"].name == "global:g2"
    # a peerIP that is another node's address uses the node-to-node passive rule
    assert got["198.51.100.5"].passive is True and got["198.51.100.5"].node == "c"


def test_next_hop_modes() -> None:
    base = {"peer_ip": ip_address("203.0.113.1"), "as_number": 64512}
    cases = [
        (BGPPeerInfo("p", next_hop_mode="Self", **base), True),  # type: ignore[arg-type]
        (BGPPeerInfo("p", **base), False),  # type: ignore[arg-type]
        (
            BGPPeerInfo(
                "p", peer_ip=ip_address("203.0.113.1"), as_number=1, keep_original_next_hop=True
            ),
            False,
        ),
        (
            BGPPeerInfo("p", peer_ip=ip_address("203.0.113.1"), as_number=1, next_hop_mode="Keep"),
            False,
        ),
        (BGPPeerInfo("p", peer_ip=ip_address("203.0.113.1"), as_number=1), True),
    ]
    for peer, expected in cases:
        (spec,) = desired_peers(
            "a", NODES, BGPConfig(node_to_node_mesh_enabled=False), [peer], LABELS
        )
        assert spec.next_hop_self is expected, peer


def test_output_independent_of_input_order() -> None:
    peers = [
        BGPPeerInfo("z", peer_ip=ip_address("203.0.113.1"), as_number=1),
        BGPPeerInfo("y", peer_ip=ip_address("203.0.113.1"), as_number=2),
    ]
    one = desired_peers("a", NODES, BGPConfig(), peers, LABELS)
    two = desired_peers("a", dict(reversed(list(NODES.items()))), BGPConfig(), peers[::-1], LABELS)
    assert one == two
    assert [p.address for p in one] == sorted(p.address for p in one)
    assert by_addr(one)["203.0.113.1"].name == "global:y"


addresses = st.lists(
    st.integers(min_value=1, max_value=254).map(lambda i: f"198.51.100.{i}"),
    min_size=2,
    max_size=8,
    unique=True,
)


@given(addresses)
def test_mesh_exactly_one_side_passive(addrs: list[str]) -> None:
    nodes = {f"n{i}": node(f"n{i}", f"{a}/24") for i, a in enumerate(addrs)}
    views = {name: by_addr(desired_peers(name, nodes, BGPConfig(), [], {})) for name in nodes}
    ips = {name: n.ipv4_address.ip for name, n in nodes.items() if n.ipv4_address is not None}
    for x, ax in ips.items():
        for y, ay in ips.items():
            if x == y:
                continue
            assert views[x][str(ay)].passive != views[y][str(ax)].passive
            assert views[x][str(ay)].passive == is_passive(ax, ay)
