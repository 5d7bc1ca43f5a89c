"""RouteTable against the stateful fake kernel: converged state, not call lists."""

from __future__ import annotations

import logging
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network

import pytest

from kernel.routes import (
    FakeRouteBackend,
    InvalidRouteError,
    NextHop,
    OpStatus,
    Route,
    RouteTable,
)

FELIX = 80
STATIC = 4


def net(s: str) -> IPv4Network:
    n = ip_network(s)
    assert isinstance(n, IPv4Network)
    return n


def dev_route(dst: str, ifname: str) -> Route:
    return Route(net(dst), ifname=ifname)


def make(
    interfaces: tuple[str, ...] = ("tbw1", "tbw2", "eth0"),
) -> tuple[FakeRouteBackend, RouteTable]:
    fake = FakeRouteBackend(interfaces)
    return fake, RouteTable(None, FELIX, 4, backend=fake)


def test_converge_from_empty_and_second_apply_writes_nothing() -> None:
    fake, rt = make()
    want = [dev_route("10.65.0.1/32", "tbw1"), dev_route("10.65.0.2/32", "tbw2")]
    rt.set_routes(want)
    res = rt.apply()
    assert res.added == 2 and not res.failed
    assert fake.table(FELIX) == {r.dst: r for r in want}
    writes = fake.writes
    res2 = rt.apply()
    assert fake.writes == writes
    assert res2.writes == 0 and not res2.resynced


def test_stale_routes_swept_and_foreign_untouched() -> None:
    fake, rt = make()
    fake.put(dev_route("10.65.9.9/32", "tbw1"), FELIX)  # orphan from a previous run
    fake.put(dev_route("10.65.0.1/32", "tbw2"), FELIX)  # ours, wrong interface
    foreign = dev_route("10.99.0.0/24", "eth0")
    fake.put(foreign, STATIC)
    rt.set_routes([dev_route("10.65.0.1/32", "tbw1")])
    res = rt.apply()
    assert fake.table(FELIX) == {net("10.65.0.1/32"): dev_route("10.65.0.1/32", "tbw1")}
    assert fake.table(STATIC) == {foreign.dst: foreign}
    assert res.deleted == 1 and res.replaced == 1
    assert rt.apply().writes == 0


def test_foreign_route_on_wanted_destination_is_a_conflict_not_overridden() -> None:
    fake, rt = make()
    foreign = dev_route("10.65.0.1/32", "eth0")
    fake.put(foreign, STATIC)
    rt.set_routes([dev_route("10.65.0.1/32", "tbw1"), dev_route("10.65.0.2/32", "tbw1")])
    res = rt.apply()
    assert res.conflicts == (net("10.65.0.1/32"),)
    assert fake.table(STATIC) == {foreign.dst: foreign}
    assert net("10.65.0.2/32") in fake.table(FELIX)
    assert rt.apply().writes == 0
    # the foreign route goes away; a resync finds the destination free and takes it
    del fake.routes[(254, foreign.dst, 0)]
    rt.invalidate()
    res = rt.apply()
    assert res.conflicts == ()
    assert fake.table(FELIX)[net("10.65.0.1/32")].ifname == "tbw1"


def test_conflict_logged_once_across_resyncs_and_again_when_it_returns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake, rt = make()
    foreign = dev_route("10.65.0.1/32", "eth0")
    fake.put(foreign, STATIC)
    rt.set_route(dev_route("10.65.0.1/32", "tbw1"))

    def warnings() -> int:
        return sum("routes.conflict" in r.getMessage() for r in caplog.records)

    with caplog.at_level(logging.WARNING, logger="kernel.routes"):
        for _ in range(3):  # a caller re-checking a conflict (bgp: every 5 s)
            rt.invalidate()
            assert rt.apply().conflicts == (foreign.dst,)
        assert warnings() == 1
        del fake.routes[(254, foreign.dst, 0)]
        rt.invalidate()
        assert rt.apply().added == 1
        fake.put(foreign, STATIC, table=254)  # taken over again by someone else ("replace")
        rt.invalidate()
        assert rt.apply().conflicts == (foreign.dst,)
        assert warnings() == 2


def test_foreign_route_appearing_between_resyncs_is_not_overridden() -> None:
    fake, rt = make()
    rt.apply()
    foreign = dev_route("10.65.0.1/32", "eth0")
    fake.put(foreign, STATIC)  # after our read-back
    rt.set_route(dev_route("10.65.0.1/32", "tbw1"))
    res = rt.apply()
    assert [f.status for f in res.failed] == [OpStatus.EXISTS]
    assert fake.table(STATIC) == {foreign.dst: foreign}
    res = rt.apply()  # resync: now a known conflict, no write
    assert res.resynced and res.writes == 0 and res.conflicts == (foreign.dst,)


def test_missing_interface_pending_until_it_appears() -> None:
    fake, rt = make()
    rt.set_routes_for_interface("tbw1", [dev_route("10.65.0.1/32", "tbw1")])
    rt.set_routes_for_interface("tbw7", [dev_route("10.65.0.7/32", "tbw7")])
    res = rt.apply()
    assert res.added == 1 and [f.status for f in res.failed] == [OpStatus.NO_INTERFACE]
    assert set(fake.table(FELIX)) == {net("10.65.0.1/32")}
    assert rt.pending == {net("10.65.0.7/32"): frozenset({"tbw7"})}
    assert rt.apply().writes == 0  # pending routes are not retried blindly
    fake.add_interface("tbw7")
    rt.on_interface_change("tbw7")
    res = rt.apply()
    assert res.added == 1 and not res.failed and res.pending == 0
    assert set(fake.table(FELIX)) == {net("10.65.0.1/32"), net("10.65.0.7/32")}


def test_interface_removed_and_recreated_routes_come_back() -> None:
    fake, rt = make()
    rt.set_routes_for_interface("tbw1", [dev_route("10.65.0.1/32", "tbw1")])
    rt.apply()
    fake.remove_interface("tbw1")  # the kernel drops the route with the device
    rt.on_interface_change("tbw1")
    res = rt.apply()
    assert res.pending == 1 and fake.table(FELIX) == {}
    fake.add_interface("tbw1")
    rt.on_interface_change("tbw1")
    rt.apply()
    assert set(fake.table(FELIX)) == {net("10.65.0.1/32")}


def test_failing_route_is_isolated_and_retried() -> None:
    fake, rt = make()
    fake.fail.add(net("10.65.0.2/32"))
    rt.set_routes([dev_route(f"10.65.0.{i}/32", "tbw1") for i in range(1, 4)])
    res = rt.apply()
    assert res.added == 2 and [f.dst for f in res.failed] == [net("10.65.0.2/32")]
    assert set(fake.table(FELIX)) == {net("10.65.0.1/32"), net("10.65.0.3/32")}
    fake.fail.clear()
    res = rt.apply()
    assert res.resynced and res.added == 1
    assert len(fake.table(FELIX)) == 3
    assert rt.apply().writes == 0


def test_delete_interface_removes_its_routes_only() -> None:
    fake, rt = make()
    rt.set_routes_for_interface("tbw1", [dev_route("10.65.0.1/32", "tbw1")])
    rt.set_routes_for_interface("tbw2", [dev_route("10.65.0.2/32", "tbw2")])
    rt.apply()
    rt.delete_interface("tbw1")
    res = rt.apply()
    assert res.deleted == 1 and set(fake.table(FELIX)) == {net("10.65.0.2/32")}


def test_per_prefix_route_wins_over_interface_group() -> None:
    fake, rt = make()
    rt.set_routes_for_interface("tbw1", [dev_route("10.65.0.1/32", "tbw1")])
    rt.set_route(Route(net("10.65.0.1/32"), type="blackhole"))
    rt.apply()
    assert fake.table(FELIX)[net("10.65.0.1/32")].type == "blackhole"
    rt.remove_route(net("10.65.0.1/32"))
    rt.apply()
    assert fake.table(FELIX)[net("10.65.0.1/32")].ifname == "tbw1"


def test_ecmp_and_blackhole() -> None:
    fake, rt = make()
    ecmp = Route(
        net("10.66.0.0/26"),
        nexthops=(
            NextHop(ip_address("198.51.100.3"), "eth0"),
            NextHop(ip_address("198.51.100.2"), "eth0"),
        ),
    )
    hole = Route(net("10.65.0.0/26"), type="blackhole")
    rt.set_routes([ecmp, hole])
    rt.apply()
    got = fake.table(FELIX)
    assert got[ecmp.dst] == ecmp and got[hole.dst] == hole
    # the order of next hops does not matter: same route, no write
    rt.set_routes([Route(ecmp.dst, nexthops=tuple(reversed(ecmp.nexthops))), hole])
    assert rt.apply().writes == 0
    # one path fewer: replaced in place
    rt.set_route(Route(ecmp.dst, gateway=ip_address("198.51.100.2"), ifname="eth0"))
    res = rt.apply()
    assert res.replaced == 1 and fake.table(FELIX)[ecmp.dst].nexthops == ()


def test_metric_change_moves_route() -> None:
    fake, rt = make()
    rt.set_route(Route(net("10.65.0.0/26"), type="unreachable", metric=10))
    rt.apply()
    rt.set_route(Route(net("10.65.0.0/26"), type="unreachable", metric=20))
    rt.apply()
    assert [k[2] for k in fake.routes] == [20]
    assert rt.apply().writes == 0


def test_gateway_route_without_interface_accepts_kernel_chosen_device() -> None:
    fake, rt = make()
    rt.set_route(Route(net("10.70.0.0/26"), gateway=ip_address("198.51.100.9")))
    rt.apply()
    # the kernel reports the resolved device; a resync must not rewrite the route
    kernel = Route(net("10.70.0.0/26"), gateway=ip_address("198.51.100.9"), ifname="eth0")
    fake.put(kernel, FELIX)
    rt.invalidate()
    res = rt.apply()
    assert res.resynced and res.writes == 0


def test_refresh_interval_triggers_resync() -> None:
    now = [0.0]
    fake = FakeRouteBackend(["tbw1"])
    rt = RouteTable(None, FELIX, 4, backend=fake, refresh_interval=10, clock=lambda: now[0])
    rt.set_route(dev_route("10.65.0.1/32", "tbw1"))
    rt.apply()
    fake.routes.clear()  # someone deleted our route behind our back
    assert rt.apply().writes == 0
    now[0] = 11
    res = rt.apply()
    assert res.resynced and res.added == 1 and len(fake.table(FELIX)) == 1


def test_duplicate_routes_of_ours_are_collapsed() -> None:
    fake, rt = make()
    fake.put(Route(net("10.65.0.0/26"), type="blackhole", metric=5), FELIX)
    fake.put(Route(net("10.65.0.0/26"), type="blackhole", metric=7), FELIX)
    rt.set_route(Route(net("10.65.0.0/26"), type="blackhole", metric=7))
    rt.apply()
    assert [k[2] for k in fake.routes] == [7]


def test_ipv6_table() -> None:
    fake = FakeRouteBackend(["tbw1"])
    rt = RouteTable(None, FELIX, 6, backend=fake)
    dst = ip_network("2001:db8:65::1/128")
    assert isinstance(dst, IPv6Network)
    rt.set_route(Route(dst, ifname="tbw1"))
    rt.apply()
    got = fake.table(FELIX)[dst]
    assert got.metric == 1024 and got.scope == "universe"
    with pytest.raises(InvalidRouteError):
        rt.set_route(dev_route("10.0.0.1/32", "tbw1"))


def test_result_depends_on_state_not_on_call_sequence() -> None:
    a = [dev_route(f"10.65.0.{i}/32", "tbw1") for i in range(1, 6)]
    b = [dev_route(f"10.65.0.{i}/32", "tbw2") for i in range(3, 9)]
    fake1, rt1 = make()
    for state in (a, [], b, a, b):
        rt1.set_routes(state)
        rt1.apply()
    fake2, rt2 = make()
    rt2.set_routes(b)
    rt2.apply()
    assert fake1.table(FELIX) == fake2.table(FELIX)


# -- split apply: the writes of one batch while the owner changes the desired state ------------


def gw_route(dst: str, gw: str = "198.51.100.9") -> Route:
    return Route(net(dst), gateway=ip_address(gw))


def test_split_apply_converges_like_apply() -> None:
    fake, rt = make()
    rt.set_routes([gw_route("10.1.0.0/26"), dev_route("10.2.0.0/26", "tbw1")])
    planned = rt.begin_apply()
    assert {o.route.dst for o in planned.ops} == {net("10.1.0.0/26"), net("10.2.0.0/26")}
    res = rt.finish_apply(planned, fake.apply(planned.ops))
    assert res.added == 2 and res.writes == 2 and res.resynced
    assert fake.table(FELIX) == rt.desired_routes()
    assert rt.apply().writes == 0  # nothing left to do


def test_split_apply_changes_during_the_writes_are_applied_next() -> None:
    """Routes changed or removed while their write is under way are not lost, and a
    destination in flight is not planned twice."""
    fake, rt = make()
    rt.set_routes([gw_route("10.1.0.0/26"), gw_route("10.3.0.0/26")])
    planned = rt.begin_apply()
    # meanwhile (another thread writes planned.ops): 10.1 changes, 10.3 goes, 10.4 comes
    rt.set_route(gw_route("10.1.0.0/26", "198.51.100.7"))
    rt.remove_route(net("10.3.0.0/26"))
    rt.set_route(gw_route("10.4.0.0/26"))
    second = rt.begin_apply()  # under way at the same time: only what is not in flight
    assert [(o.kind.value, str(o.route.dst)) for o in second.ops] == [("add", "10.4.0.0/26")]
    assert rt.in_flight == 3
    rt.finish_apply(planned, fake.apply(planned.ops))
    rt.finish_apply(second, fake.apply(second.ops))
    assert rt.in_flight == 0
    third = rt.begin_apply()
    kinds = {(o.kind.value, str(o.route.dst)) for o in third.ops}
    assert kinds == {("replace", "10.1.0.0/26"), ("del", "10.3.0.0/26")}
    rt.finish_apply(third, fake.apply(third.ops))
    assert fake.table(FELIX) == rt.desired_routes()
    assert set(rt.desired_routes()) == {net("10.1.0.0/26"), net("10.4.0.0/26")}
    assert rt.apply().writes == 0


def test_split_apply_in_flight_destinations_are_not_planned_again() -> None:
    fake, rt = make()
    rt.set_route(gw_route("10.1.0.0/26"))
    planned = rt.begin_apply()
    rt.set_route(gw_route("10.1.0.0/26", "198.51.100.7"))  # dirty again, but in flight
    rt.set_route(gw_route("10.2.0.0/26"))
    rt.finish_apply(planned, fake.apply(planned.ops))  # wrote the first 10.1 route
    assert fake.table(FELIX)[net("10.1.0.0/26")].gateway == ip_address("198.51.100.9")
    res = rt.apply()
    assert (res.added, res.replaced, res.writes) == (1, 1, 2)
    assert fake.table(FELIX) == rt.desired_routes()


def test_split_apply_read_back_waits_for_the_writes() -> None:
    fake, rt = make()
    rt.set_route(gw_route("10.1.0.0/26"))
    planned = rt.begin_apply()
    rt.invalidate()
    with pytest.raises(RuntimeError):
        rt.begin_apply()  # a read-back while writes are under way would record stale state
    rt.finish_apply(planned, fake.apply(planned.ops))
    assert rt.begin_apply().resynced
