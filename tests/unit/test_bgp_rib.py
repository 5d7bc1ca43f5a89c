"""bgp.rib: best-path steps, ECMP, graceful-restart stale handling, order independence."""

from __future__ import annotations

import random
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network, ip_address, ip_network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bgp.model import AsSegment, Origin, Path
from bgp.rib import Rib, select

P = ip_network("10.65.1.0/26")


def path(peer: str, **kw: object) -> Path:
    base = Path(next_hop=ip_address(peer), peer=ip_address(peer), router_id=IPv4Address(peer))
    return replace(base, **kw)  # type: ignore[arg-type]


def seq(*asns: int) -> tuple[AsSegment, ...]:
    return (AsSegment(asns),)


@pytest.mark.parametrize(
    ("winner", "loser", "why"),
    [
        (path("198.51.100.9", local_pref=200), path("198.51.100.2"), "local-pref"),
        (path("198.51.100.9"), path("198.51.100.2", local_pref=99), "default local-pref 100"),
        (path("198.51.100.9", as_path=seq(1)), path("198.51.100.2", as_path=seq(1, 2)), "as-path"),
        (
            path("198.51.100.9", as_path=(AsSegment((1, 2, 3), is_set=True),)),
            path("198.51.100.2", as_path=seq(1, 2)),
            "as-set counts one",
        ),
        (
            path("198.51.100.9", origin=Origin.EGP),
            path("198.51.100.2", origin=Origin.INCOMPLETE),
            "origin",
        ),
        (
            path("198.51.100.9", as_path=seq(7), med=5),
            path("198.51.100.2", as_path=seq(7), med=10),
            "med same neighbour AS",
        ),
        (path("198.51.100.9", med=5), path("198.51.100.2", med=10), "med internal group"),
        (path("198.51.100.9", ebgp=True), path("198.51.100.2"), "ebgp over ibgp"),
        (
            path("198.51.100.9", cluster_list=(IPv4Address("10.0.0.1"),)),
            path("198.51.100.2", cluster_list=(IPv4Address("10.0.0.1"), IPv4Address("10.0.0.2"))),
            "cluster list",
        ),
        (
            path("198.51.100.9", originator_id=IPv4Address("198.51.100.1")),
            path("198.51.100.2"),
            "originator id replaces router id",
        ),
        (path("198.51.100.2"), path("198.51.100.9"), "router id"),
        (
            path("198.51.100.9", router_id=IPv4Address("1.1.1.1")),
            path("198.51.100.2", router_id=None),
            "unknown router id loses",
        ),
        (
            path("198.51.100.2", router_id=IPv4Address("1.1.1.1")),
            path("198.51.100.9", router_id=IPv4Address("1.1.1.1")),
            "peer address",
        ),
    ],
)
def test_best_path_steps(winner: Path, loser: Path, why: str) -> None:
    for order in ([winner, loser], [loser, winner]):
        assert select(order) == (winner,), why


def test_med_not_compared_across_neighbour_as() -> None:
    a = path("198.51.100.2", as_path=seq(7), med=100)
    b = path("198.51.100.3", as_path=seq(8), med=1)
    # different neighbour AS: MED ignored, router id decides
    assert select([a, b]) == (a,)
    assert select([a, b], always_compare_med=True) == (b,)


def test_med_elimination_is_order_independent_where_pairwise_is_not() -> None:
    # the classic non-transitive triangle: x beats y by MED (same AS 7), y beats z by router id,
    # z beats x by router id (different AS). Elimination over the set gives one answer.
    x = path("198.51.100.5", as_path=seq(7), med=1)
    y = path("198.51.100.3", as_path=seq(7), med=5)
    z = path("198.51.100.4", as_path=seq(8), med=9)
    results = {select(order) for order in ([x, y, z], [z, y, x], [y, z, x], [z, x, y])}
    assert results == {(z,)}


def test_ecmp_set_and_order() -> None:
    a = path("198.51.100.3")
    b = path("198.51.100.2")
    c = path("198.51.100.4", local_pref=50)
    assert select([a, b, c], ecmp=True) == (b, a)
    assert select([a, b, c]) == (b,)
    assert select([]) == ()


def test_rib_update_withdraw_and_changes() -> None:
    rib = Rib()
    a, b = ip_address("198.51.100.2"), ip_address("198.51.100.3")
    rib.update(a, P, path("198.51.100.2"))
    rib.update(b, P, path("198.51.100.3"))
    assert rib.changes() == {P}
    assert rib.changes() == frozenset()
    rib.update(a, P, path("198.51.100.2"))  # same path again: no change
    assert rib.changes() == frozenset()
    assert rib.best(P) == (path("198.51.100.2"), path("198.51.100.3"))
    rib.update(a, P, None)
    assert rib.changes() == {P}
    assert rib.best(P) == (path("198.51.100.3"),)
    rib.update(a, P, None)  # withdrawing what is not there: nothing
    assert rib.changes() == frozenset()
    with pytest.raises(ValueError, match="recorded for peer"):
        rib.update(a, P, path("198.51.100.3"))


def test_peer_down_drops_routes() -> None:
    rib = Rib()
    a = ip_address("198.51.100.2")
    rib.update(a, P, path("198.51.100.2"))
    rib.changes()
    rib.peer_down(a)
    assert rib.best(P) == () and rib.changes() == {P} and list(rib.prefixes()) == []


def test_graceful_restart_eor_drops_only_unrefreshed() -> None:
    rib = Rib()
    a = ip_address("198.51.100.2")
    q = ip_network("10.65.2.0/26")
    rib.update(a, P, path("198.51.100.2"))
    rib.update(a, q, path("198.51.100.2"))
    rib.changes()
    rib.peer_down(a, stale=True, now=100.0, restart_time=120)
    assert rib.is_stale(a, P) and rib.best(P) == (path("198.51.100.2"),)
    assert rib.changes() == frozenset()  # kept: nothing to reprogram
    assert rib.stale_deadline() == 220.0
    rib.update(a, P, path("198.51.100.2"))  # re-announced identically after the restart
    assert not rib.is_stale(a, P) and rib.changes() == frozenset()
    rib.eor(a)
    assert rib.best(q) == () and rib.changes() == {q}
    assert rib.best(P) == (path("198.51.100.2"),)
    assert rib.stale_deadline() is None


def test_graceful_restart_deadline_not_extended_by_flapping() -> None:
    rib = Rib()
    a = ip_address("198.51.100.2")
    rib.update(a, P, path("198.51.100.2"))
    rib.peer_down(a, stale=True, now=0.0, restart_time=120)
    rib.peer_down(a, stale=True, now=100.0, restart_time=120)
    rib.expire_stale(119.0)
    assert rib.best(P) != ()
    rib.changes()
    rib.expire_stale(120.0)
    assert rib.best(P) == () and rib.changes() == {P}
    rib.peer_down(a)  # nothing left: no error


def test_stale_then_withdrawn_and_hard_down() -> None:
    rib = Rib()
    a = ip_address("198.51.100.2")
    rib.update(a, P, path("198.51.100.2"))
    rib.peer_down(a, stale=True, now=0.0, restart_time=10)
    rib.update(a, P, None)
    assert not rib.is_stale(a, P) and rib.best(P) == ()
    rib.update(a, P, path("198.51.100.2"))
    rib.peer_down(a, stale=True, now=0.0, restart_time=10)
    rib.peer_down(a)  # a hard down (e.g. restart time over / GR not negotiated) drops all
    assert rib.best(P) == () and rib.stale_deadline() is None


# ------------------------------------------------------------------------------ properties

peers = st.sampled_from([f"198.51.100.{i}" for i in range(2, 8)])
prefixes = st.sampled_from([ip_network(f"10.65.{i}.0/26") for i in range(3)])
paths = st.builds(
    lambda peer, lp, asp, origin, med, ebgp, cl, orig: path(
        peer,
        local_pref=lp,
        as_path=seq(*asp) if asp else (),
        origin=origin,
        med=med,
        ebgp=ebgp,
        cluster_list=tuple(IPv4Address(f"10.0.0.{c}") for c in range(cl)),
        originator_id=IPv4Address(f"10.9.9.{orig}") if orig else None,
    ),
    peers,
    st.sampled_from([None, 100, 200]),
    st.lists(st.sampled_from([7, 8, 9]), max_size=2),
    st.sampled_from(list(Origin)),
    st.sampled_from([None, 0, 5, 10]),
    st.booleans(),
    st.integers(0, 2),
    st.integers(0, 3),
)
ops = st.lists(st.tuples(prefixes, paths), max_size=25)


def _final(ops_: list[tuple[IPv4Network, Path]]) -> dict[tuple[IPv4Network, object], Path]:
    out: dict[tuple[IPv4Network, object], Path] = {}
    for prefix, p in ops_:
        out[(prefix, p.peer)] = p
    return out


@settings(max_examples=200)
@given(ops, st.randoms(use_true_random=False), st.booleans())
def test_best_is_independent_of_arrival_order(
    ops_: list[tuple[IPv4Network, Path]], rnd: random.Random, ecmp: bool
) -> None:
    # the final state: the last path per (prefix, peer); deliver those in any order
    final = list(_final(ops_).items())
    shuffled = final[:]
    rnd.shuffle(shuffled)
    r1, r2, r3 = Rib(ecmp=ecmp), Rib(ecmp=ecmp), Rib(ecmp=ecmp)
    for prefix, p in ops_:  # with the intermediate history
        r1.update(p.peer, prefix, p)
    for (prefix, _peer), p in final:
        r2.update(p.peer, prefix, p)
    for (prefix, _peer), p in shuffled:
        r3.update(p.peer, prefix, p)
    for prefix in {pr for pr, _ in ops_}:
        assert r1.best(prefix) == r2.best(prefix) == r3.best(prefix)
        best = r1.best(prefix)
        assert best and all(b in r1.candidates(prefix) for b in best)
    assert set(r1.prefixes()) == set(r3.prefixes())


@given(st.lists(paths, min_size=1, max_size=6, unique_by=lambda p: p.peer), st.randoms())
def test_winner_is_in_the_ecmp_set_and_ecmp_members_tie(
    cands: list[Path], rnd: random.Random
) -> None:
    (single,) = select(cands)
    multi = select(cands, ecmp=True)
    assert multi[0] == single
    key = [
        (m.local_pref or 100, m.as_path_length, m.origin, m.ebgp, len(m.cluster_list))
        for m in multi
    ]
    assert len(set(key)) == 1
    rnd.shuffle(cands)
    assert select(cands, ecmp=True) == multi


def _state(rib: Rib) -> tuple[object, ...]:
    return (rib._adj, rib._by_prefix, rib._stale, rib._dirty, rib._watchers)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["198.51.100.2", "198.51.100.3"]),
            st.integers(0, 2),  # which path (2: withdraw)
            st.lists(st.integers(0, 15), max_size=6),  # which prefixes
        ),
        max_size=12,
    ),
    st.booleans(),
)
def test_announce_is_update_many_for_one_path(
    steps: list[tuple[str, int, list[int]]], restart: bool
) -> None:
    """``announce(peer, path, prefixes)`` leaves exactly the state ``update_many`` leaves,
    stale marks (a peer restarting) and a second consumer's changes included."""
    a, b = Rib(), Rib()
    for rib in (a, b):
        rib.watch("reflect")
    for i, (peer_text, which, idx) in enumerate(steps):
        peer = ip_address(peer_text)
        prefixes = [IPv4Network((0x0A000000 + 256 * k, 24)) for k in idx]
        if restart and i == len(steps) // 2:
            for rib in (a, b):
                rib.peer_down(peer, stale=True, now=0.0, restart_time=60.0)
        if which == 2:
            for rib in (a, b):
                rib.update_many(peer, ((p, None) for p in prefixes))
            continue
        path = Path(next_hop=ip_address(f"203.0.113.{which + 1}"), peer=peer)
        a.announce(peer, path, prefixes)
        b.update_many(peer, ((p, path) for p in prefixes))
        assert _state(a) == _state(b)
    assert _state(a) == _state(b)


def test_announce_refuses_a_path_of_another_peer() -> None:
    rib = Rib()
    path = Path(next_hop=ip_address("203.0.113.1"), peer=ip_address("198.51.100.3"))
    with pytest.raises(ValueError):
        rib.announce(ip_address("198.51.100.2"), path, [IPv4Network("10.0.0.0/24")])
    rib.announce(ip_address("198.51.100.3"), path, [])
    assert rib._adj == {}  # an empty announcement leaves no empty per-peer table
