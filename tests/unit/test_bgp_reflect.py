"""bgp.reflect (RFC 4456): targets, attributes, loop checks, Adj-RIB-Out; Calico's RR recipe in
bgp.peers; the RIB's second change consumer."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface, IPv4Network

import pytest

from bgp.model import AsSegment, BGPConfig, BGPPeerInfo, NodeInfo, Origin, Path
from bgp.peers import desired_peers
from bgp.reflect import (
    AdjRibOut,
    Announce,
    AnnounceAll,
    Command,
    PeerRole,
    ReflectContext,
    ReflectedRoute,
    Withdraw,
    WithdrawAll,
    broadcast_plan,
    plan_prefix,
    reflected_route,
    rejects,
)
from bgp.rib import Rib
from policy.selector import parse

ME = IPv4Address("198.51.100.1")
CID = IPv4Address("224.0.0.1")
C1, C2, C3 = (IPv4Address(f"198.51.100.{i}") for i in (11, 12, 13))
RR2 = IPv4Address("198.51.100.2")  # a fellow reflector (non-client)
EXT = IPv4Address("203.0.113.9")  # an eBGP peer
P = IPv4Network("10.65.1.0/26")


def ctx(**kw: object) -> ReflectContext:
    peers = {
        C1: PeerRole(ibgp=True, client=True, router_id=C1),
        C2: PeerRole(ibgp=True, client=True, router_id=C2),
        C3: PeerRole(ibgp=True, client=True, router_id=C3),
        RR2: PeerRole(ibgp=True, client=False, router_id=RR2),
        EXT: PeerRole(ibgp=False, client=False, router_id=EXT),
    }
    args: dict[str, object] = {"router_id": ME, "cluster_id": CID, "peers": peers}
    args.update(kw)
    return ReflectContext(**args)  # type: ignore[arg-type]


def path(peer: IPv4Address, **kw: object) -> Path:
    args: dict[str, object] = {"next_hop": peer, "peer": peer, "router_id": peer}
    args.update(kw)
    return Path(**args)  # type: ignore[arg-type]


def targeted(cmds: list[Command]) -> list[Announce | Withdraw]:
    """``cmds``, each checked to be a per-neighbour command (no ``everyone`` plan was given)."""
    out: list[Announce | Withdraw] = []
    for c in cmds:
        assert isinstance(c, Announce | Withdraw), c
        out.append(c)
    return out


# ------------------------------------------------------------------------------ targets


def test_client_route_goes_to_every_other_ibgp_peer() -> None:
    out = plan_prefix(P, path(C1), ctx())
    assert set(out) == {C2, C3, RR2}  # not back to C1, not to the eBGP peer


def test_non_client_route_goes_to_clients_only() -> None:
    best = path(RR2, next_hop=IPv4Address("198.51.100.20"), originator_id=IPv4Address("1.1.1.1"))
    out = plan_prefix(P, best, ctx())
    assert set(out) == {C1, C2, C3}


def test_not_sent_to_the_originator() -> None:
    best = path(RR2, next_hop=C1, originator_id=C1, cluster_list=(IPv4Address("224.0.0.9"),))
    assert set(plan_prefix(P, best, ctx())) == {C2, C3}


def test_nothing_reflected_without_cluster_id_for_ebgp_or_own_prefixes() -> None:
    assert plan_prefix(P, path(C1), ctx(cluster_id=None)) == {}
    assert plan_prefix(P, path(EXT, ebgp=True), ctx()) == {}
    assert plan_prefix(P, path(C1), ctx(own=frozenset({P}))) == {}
    assert plan_prefix(P, None, ctx()) == {}
    unknown = path(IPv4Address("198.51.100.99"))
    assert plan_prefix(P, unknown, ctx()) == {}  # a path from a peer that is gone


# ------------------------------------------------------------------------------ attributes


def test_attributes_kept_originator_set_cluster_prepended() -> None:
    best = path(
        C1,
        next_hop=IPv4Address("198.51.100.30"),
        origin=Origin.EGP,
        as_path=(AsSegment((64600, 64601)),),
        local_pref=200,
        med=7,
        router_id=IPv4Address("9.9.9.9"),
    )
    r = reflected_route(P, best, CID)
    assert r == ReflectedRoute(
        prefix=P,
        next_hop=IPv4Address("198.51.100.30"),  # iBGP reflection keeps the next hop
        origin=Origin.EGP,
        as_path=(64600, 64601),
        local_pref=200,
        med=7,
        originator_id=IPv4Address("9.9.9.9"),  # the source's router id
        cluster_list=(CID,),
    )


def test_existing_originator_kept_and_cluster_list_grows_at_the_front() -> None:
    other = IPv4Address("224.0.0.7")
    best = path(RR2, originator_id=C3, cluster_list=(other,))
    r = reflected_route(P, best, CID)
    assert r is not None
    assert r.originator_id == C3 and r.cluster_list == (CID, other)
    assert r.local_pref == 100 and r.med is None  # absent LOCAL_PREF is sent as the default


def test_originator_falls_back_to_peer_address_and_as_set_is_not_reflected() -> None:
    r = reflected_route(P, path(C1, router_id=None), CID)
    assert r is not None and r.originator_id == C1
    assert reflected_route(P, path(C1, as_path=(AsSegment((1, 2), is_set=True),)), CID) is None


# ------------------------------------------------------------------------------ loop checks


def test_rejects_our_originator_id_and_our_cluster_id() -> None:
    assert rejects(path(RR2, originator_id=ME), router_id=ME, cluster_id=None) == "originator-id"
    looped = path(RR2, originator_id=C1, cluster_list=(IPv4Address("224.0.0.7"), CID))
    assert rejects(looped, router_id=ME, cluster_id=CID) == "cluster-list"
    assert rejects(looped, router_id=ME, cluster_id=None) == ""  # not a reflector: no check
    assert (
        rejects(path(C1, cluster_list=(IPv4Address("224.0.0.7"),)), router_id=ME, cluster_id=CID)
        == ""
    )


# ------------------------------------------------------------------------------ Adj-RIB-Out


def test_sync_sends_only_differences_and_withdraws() -> None:
    out = AdjRibOut()
    c = ctx()
    first = out.sync_prefix(P, plan_prefix(P, path(C1), c), [C2, C3, RR2])
    assert [type(x).__name__ for x in first] == ["Announce"] * 3
    assert out.sync_prefix(P, plan_prefix(P, path(C1), c), [C2, C3, RR2]) == []  # no change
    # the best path moves to C2: C1 now gets it, C2 must lose it (it is the source now)
    moved = out.sync_prefix(P, plan_prefix(P, path(C2), c), [C1, C2, C3, RR2])
    kinds = {(type(x).__name__, x.neighbor) for x in targeted(moved)}
    assert kinds == {("Announce", C1), ("Withdraw", C2), ("Announce", C3), ("Announce", RR2)}
    # the prefix goes away: withdrawn everywhere it was sent
    gone = out.sync_prefix(P, {}, [C1, C2, C3, RR2])
    assert {x.neighbor for x in targeted(gone)} == {C1, C3, RR2}
    assert all(isinstance(x, Withdraw) for x in gone)
    assert out.prefixes() == set()


def test_down_neighbours_are_skipped_and_resynced_when_back() -> None:
    out = AdjRibOut()
    c = ctx()
    q = IPv4Network("10.65.2.0/26")
    out.sync_prefix(P, plan_prefix(P, path(C1), c), [C2, C3, RR2])
    out.sync_prefix(q, plan_prefix(q, path(C1), c), [C2, C3, RR2])
    # C3 goes down; meanwhile q disappears (no command for C3: it is not established)
    cmds = out.sync_prefix(q, {}, [C2, RR2])
    assert {x.neighbor for x in targeted(cmds)} == {C2, RR2}
    assert set(out.sent(C3)) == {P, q}
    # C3 comes back: everything it should have again, and a withdrawal of q
    back = out.resync(C3, {P: plan_prefix(P, path(C1), c)[C3]})
    assert back == [Withdraw(C3, q), Announce(C3, plan_prefix(P, path(C1), c)[C3])]
    assert set(out.sent(C3)) == {P}
    out.forget(C3)
    assert out.count(C3) == 0 and out.neighbors() == {C2, RR2}
    out.clear()
    assert out.prefixes() == set()


@pytest.mark.parametrize("n_peers", [1, 5])
def test_resync_of_unchanged_state_resends_everything(n_peers: int) -> None:
    out = AdjRibOut()
    routes = {
        IPv4Network(f"10.65.{i}.0/26"): reflected_route(
            IPv4Network(f"10.65.{i}.0/26"), path(C1), CID
        )
        for i in range(n_peers)
    }
    wanted = {p: r for p, r in routes.items() if r is not None}
    assert len(out.resync(C2, wanted)) == n_peers
    assert len(out.resync(C2, wanted)) == n_peers  # a re-established session gets it all again


# ------------------------------------------------------------------------------ peers: the recipe


def _node(name: str, addr: str, cid: str | None = None) -> NodeInfo:
    return NodeInfo(
        name, IPv4Interface(addr), route_reflector_cluster_id=IPv4Address(cid) if cid else None
    )


def test_calico_recipe_gives_clients_one_session_and_the_reflector_all() -> None:
    nodes = {
        "rr": _node("rr", "198.51.100.2/26", "224.0.0.1"),
        "a": _node("a", "198.51.100.3/26"),
        "b": _node("b", "198.51.100.4/26"),
    }
    labels = {"rr": {"route-reflector": "true"}, "a": {}, "b": {}}
    recipe = [
        BGPPeerInfo(
            "peer-with-route-reflectors",
            node_selector=parse("all()"),
            peer_selector=parse("route-reflector == 'true'"),
        )
    ]
    for mesh in (True, False):  # before and after the mesh is switched off
        cfg = BGPConfig(node_to_node_mesh_enabled=mesh)
        a = {str(p.address): p for p in desired_peers("a", nodes, cfg, recipe, labels)}
        rr = {str(p.address): p for p in desired_peers("rr", nodes, cfg, recipe, labels)}
        # the reflector is never in the mesh; clients mesh with each other while it is on
        assert a["198.51.100.2"].kind == "node" and not a["198.51.100.2"].route_reflector_client
        assert a["198.51.100.2"].peer_cluster_id == IPv4Address("224.0.0.1")
        assert set(a) == ({"198.51.100.2", "198.51.100.4"} if mesh else {"198.51.100.2"})
        # reverse peerings: the reflector peers with every client, as its rr clients
        assert set(rr) == {"198.51.100.3", "198.51.100.4"}
        assert all(p.route_reflector_client and p.kind == "node" for p in rr.values())
        # exactly one side of each session is passive
        assert a["198.51.100.2"].passive != rr["198.51.100.3"].passive


def test_two_reflectors_same_cluster_are_non_clients_different_cluster_are_clients() -> None:
    labels = {"rr1": {"route-reflector": "true"}, "rr2": {"route-reflector": "true"}}
    recipe = [
        BGPPeerInfo("rr", node_selector=parse("all()"), peer_selector=parse("has(route-reflector)"))
    ]
    cfg = BGPConfig(node_to_node_mesh_enabled=False)
    same = {
        "rr1": _node("rr1", "198.51.100.2/26", "224.0.0.1"),
        "rr2": _node("rr2", "198.51.100.3/26", "224.0.0.1"),
    }
    (p,) = desired_peers("rr1", same, cfg, recipe, labels)
    assert not p.route_reflector_client and p.peer_cluster_id == IPv4Address("224.0.0.1")
    other = {**same, "rr2": _node("rr2", "198.51.100.3/26", "224.0.0.2")}
    (p,) = desired_peers("rr1", other, cfg, recipe, labels)
    assert p.route_reflector_client  # Calico's rule: a different cluster ID is a client


# ------------------------------------------------------------------------------ rib consumers


def test_rib_watchers_drain_independently() -> None:
    rib = Rib()
    rib.watch("reflect")
    rib.update(C1, P, path(C1))
    assert rib.changes() == {P}
    assert rib.changes() == frozenset()
    assert rib.changes("reflect") == {P}
    assert rib.changes("reflect") == frozenset()
    rib.peer_down(C1)
    assert rib.changes("reflect") == {P} and rib.changes() == {P}


# ------------------------------------------------------------------ un-targeted commands


def ibgp_ctx() -> ReflectContext:
    """Clients C1-C3 and a fellow reflector; no eBGP peer."""
    peers = {a: r for a, r in ctx().peers.items() if a != EXT}
    return ctx(peers=peers)


def test_broadcast_plan_covers_the_originator_that_drops_it() -> None:
    c = ibgp_ctx()
    wanted = plan_prefix(P, path(C1), c)
    assert set(wanted) == {C2, C3, RR2}
    everyone = broadcast_plan(wanted, c)
    assert everyone is not None and set(everyone) == {C1, C2, C3, RR2}
    assert set(everyone.values()) == {wanted[C2]}
    assert broadcast_plan({}, c) == {}


def test_broadcast_plan_refuses_when_someone_must_not_get_it() -> None:
    # an eBGP peer is configured: it must never see a reflected route
    assert broadcast_plan(plan_prefix(P, path(C1), ctx()), ctx()) is None
    # a non-client passes on a route of one of its own clients: it goes to our clients only,
    # and the reflector it came from (not its originator) must not get it back
    c = ibgp_ctx()
    far = IPv4Address("198.51.100.99")
    assert broadcast_plan(plan_prefix(P, path(RR2, originator_id=far), c), c) is None
    # ... while the reflector's own route may go to everyone: it drops its own
    assert broadcast_plan(plan_prefix(P, path(RR2), c), c) is not None
    # the originator's router id is not known yet: it could not be trusted to drop it
    roles = dict(c.peers)
    roles[C1] = PeerRole(ibgp=True, client=True, router_id=None)
    c2 = ctx(peers=roles)
    assert broadcast_plan(plan_prefix(P, path(C1, router_id=None), c2), c2) is None


def test_sync_prefix_sends_one_untargeted_command_and_records_it_for_all() -> None:
    c = ibgp_ctx()
    out = AdjRibOut()
    wanted = plan_prefix(P, path(C1), c)
    everyone = broadcast_plan(wanted, c)
    established = [C1, C2]  # C3 and RR2 are configured in ExaBGP but not up
    cmds = out.sync_prefix(P, wanted, established, everyone=everyone, reached=[C1, C2, C3, RR2])
    assert cmds == [AnnounceAll(wanted[C2])]
    assert all(out.sent(n) == {P: wanted[C2]} for n in (C1, C2, C3, RR2))
    # nothing changed: nothing sent; C3 coming up later needs no command either
    assert out.sync_prefix(P, wanted, established, everyone=everyone, reached=[C1, C2, C3]) == []
    assert out.sync_neighbor(C3, {P: wanted[C3]}) == []
    # the client withdraws: one un-targeted withdrawal, and nobody is left with the route
    cmds = out.sync_prefix(P, {}, established, everyone={}, reached=[C1, C2, C3, RR2])
    assert cmds == [WithdrawAll(P)] and out.prefixes() == set()


def test_sync_prefix_targets_few_changes_and_unknown_neighbours() -> None:
    c = ibgp_ctx()
    out = AdjRibOut()
    wanted = plan_prefix(P, path(C1), c)
    everyone = broadcast_plan(wanted, c)
    # only one established neighbour, none known to ExaBGP beyond it: below BROADCAST_MIN
    cmds = out.sync_prefix(P, wanted, [C2], everyone=everyone, reached=[])
    assert cmds == [Announce(C2, wanted[C2])]
    assert out.sent(C3) == {}  # not recorded for a neighbour that may not have it


def test_sync_neighbor_sends_only_differences() -> None:
    c = ibgp_ctx()
    out = AdjRibOut()
    q = IPv4Network("10.65.2.0/26")
    r1 = plan_prefix(P, path(C1), c)[C3]
    r2 = plan_prefix(q, path(C2), c)[C3]
    out.resync(C3, {P: r1})
    cmds = out.sync_neighbor(C3, {q: r2})
    assert cmds == [Withdraw(C3, P), Announce(C3, r2)]
    assert out.sent(C3) == {q: r2}
