"""RouteTable on the real kernel, in a namespace of the test's own."""

from __future__ import annotations

import json
import time
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network

import pytest

from kernel.routes import (
    IpRouteBackend,
    NextHop,
    OpKind,
    OpStatus,
    Route,
    RouteBackend,
    RouteOp,
    RouteTable,
)
from kernel.rtnl_routes import CHUNK, NetlinkRouteBackend
from tests.support.netns import NetnsFactory, ns_exec

pytestmark = pytest.mark.netns


def net(s: str) -> IPv4Network:
    n = ip_network(s)
    assert isinstance(n, IPv4Network)
    return n


@pytest.fixture(params=["netlink", "iproute2"])
def backend(request: pytest.FixtureRequest) -> str:
    """Every table test runs on both write paths: rtnetlink batches (default) and ``ip -batch``."""
    return str(request.param)


def table(ns: str, protocol: int, version: int, kind: str) -> RouteTable:
    b: RouteBackend = NetlinkRouteBackend(ns) if kind == "netlink" else IpRouteBackend(ns)
    return RouteTable(ns, protocol, version, backend=b)


def node(netns: NetnsFactory) -> str:
    ns = netns.new("rt")
    ns_exec(ns, ["ip", "link", "add", "tbw1", "type", "veth", "peer", "name", "tbp1"])
    ns_exec(ns, ["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "up0"])
    for dev in ("tbw1", "tbp1", "eth0", "up0"):
        ns_exec(ns, ["ip", "link", "set", dev, "up"])
    ns_exec(ns, ["ip", "addr", "add", "198.51.100.1/24", "dev", "eth0"])
    return ns


def routes(ns: str, *args: str) -> dict[str, dict[str, object]]:
    out = json.loads(ns_exec(ns, ["ip", "-j", "route", "show", *args]) or "[]")
    return {str(r["dst"]): r for r in out}


def test_routes_land_with_proto_scope_dev_and_foreign_untouched(
    netns: NetnsFactory, backend: str
) -> None:
    ns = node(netns)
    ns_exec(ns, ["ip", "route", "add", "10.99.0.0/24", "via", "198.51.100.2", "proto", "static"])
    ns_exec(ns, ["ip", "route", "add", "10.65.9.0/26", "dev", "tbw1", "proto", "80"])  # stale
    rt = table(ns, 80, 4, backend)
    rt.set_routes_for_interface("tbw1", [Route(net("10.65.0.1/32"), ifname="tbw1")])
    rt.set_routes(
        [
            Route(net("10.65.1.0/26"), type="blackhole"),
            Route(
                net("10.66.0.0/26"),
                nexthops=(
                    NextHop(ip_address("198.51.100.2"), "eth0"),
                    NextHop(ip_address("198.51.100.3"), "eth0"),
                ),
            ),
            Route(
                net("10.67.0.0/26"), gateway=ip_address("203.0.113.9"), ifname="eth0", onlink=True
            ),
            Route(net("10.99.0.0/24"), ifname="tbw1"),  # held by the static route: conflict
        ]
    )
    res = rt.apply()
    assert res.conflicts == (net("10.99.0.0/24"),)
    assert res.added == 4 and res.deleted == 1 and not res.failed
    got = routes(ns, "proto", "80")
    assert set(got) == {"10.65.0.1", "10.65.1.0/26", "10.66.0.0/26", "10.67.0.0/26"}
    assert got["10.65.0.1"]["dev"] == "tbw1" and got["10.65.0.1"]["scope"] == "link"
    assert got["10.65.1.0/26"]["type"] == "blackhole"
    assert len(got["10.66.0.0/26"]["nexthops"]) == 2  # type: ignore[arg-type]
    assert got["10.67.0.0/26"]["flags"] == ["onlink"]
    static = routes(ns, "proto", "static")
    assert static["10.99.0.0/24"]["gateway"] == "198.51.100.2"
    # nothing changed: a fresh read-back agrees, and the next apply writes nothing
    rt.invalidate()
    again = rt.apply()
    assert again.resynced and again.writes == 0


def test_missing_interface_pending_then_applied(netns: NetnsFactory, backend: str) -> None:
    ns = node(netns)
    rt = table(ns, 80, 4, backend)
    rt.set_routes_for_interface("tbw1", [Route(net("10.65.0.1/32"), ifname="tbw1")])
    rt.set_routes_for_interface("tbw2", [Route(net("10.65.0.2/32"), ifname="tbw2")])
    res = rt.apply()
    assert [(f.dst, f.status) for f in res.failed] == [(net("10.65.0.2/32"), OpStatus.NO_INTERFACE)]
    assert set(routes(ns, "proto", "80")) == {"10.65.0.1"}
    assert rt.apply().writes == 0
    ns_exec(ns, ["ip", "link", "add", "tbw2", "type", "veth", "peer", "name", "tbp2"])
    ns_exec(ns, ["ip", "link", "set", "tbw2", "up"])
    rt.on_interface_change("tbw2")
    res = rt.apply()
    assert res.added == 1 and not res.failed
    assert routes(ns, "proto", "80")["10.65.0.2"]["dev"] == "tbw2"


def test_bgp_and_felix_tables_do_not_touch_each_other(netns: NetnsFactory, backend: str) -> None:
    ns = node(netns)
    felix = table(ns, 80, 4, backend)
    bgp = table(ns, 81, 4, backend)
    felix.set_route(Route(net("10.65.0.1/32"), ifname="tbw1"))
    bgp.set_route(Route(net("10.70.0.0/26"), gateway=ip_address("198.51.100.7")))
    felix.apply()
    bgp.apply()
    bgp.set_routes([])
    assert bgp.apply().deleted == 1
    assert set(routes(ns, "proto", "80")) == {"10.65.0.1"}
    assert routes(ns, "proto", "81") == {}


def test_ipv6_routes(netns: NetnsFactory, backend: str) -> None:
    ns = node(netns)
    ns_exec(ns, ["ip", "-6", "addr", "add", "2001:db8::1/64", "dev", "eth0", "nodad"])
    rt = table(ns, 80, 6, backend)
    dst = IPv6Network("2001:db8:65::1/128")
    hole = IPv6Network("2001:db8:66::/64")
    rt.set_routes([Route(dst, ifname="tbw1"), Route(hole, type="blackhole")])
    res = rt.apply()
    assert res.added == 2, res
    rt.invalidate()
    assert rt.apply().writes == 0
    got = {
        r["dst"]: r
        for r in json.loads(ns_exec(ns, ["ip", "-6", "-j", "route", "show", "proto", "80"]))
    }
    assert got["2001:db8:65::1"]["dev"] == "tbw1"
    assert got["2001:db8:66::/64"]["type"] == "blackhole"


def test_backend_dump_sees_protocols(netns: NetnsFactory) -> None:
    ns = node(netns)
    ns_exec(ns, ["ip", "route", "add", "10.99.0.0/24", "via", "198.51.100.2", "proto", "static"])
    dumped = {str(k.route.dst): k.protocol for k in IpRouteBackend(ns).dump(4, 254)}
    assert dumped["10.99.0.0/24"] == 4
    assert dumped["198.51.100.0/24"] == 2  # kernel


def test_default_backend_is_netlink(netns: NetnsFactory) -> None:
    ns = node(netns)
    assert isinstance(RouteTable(ns, 80, 4).backend, NetlinkRouteBackend)


def op(kind: OpKind, route: Route, protocol: int = 81) -> RouteOp:
    return RouteOp(kind, route, protocol, 254)


def test_netlink_failures_map_to_their_op_across_chunks(netns: NetnsFactory) -> None:
    """Several chunks; failures in the middle and at a chunk's last (acknowledged) position
    are reported for exactly those ops, with the kernel's text, and the others land."""
    ns = node(netns)
    ns_exec(ns, ["ip", "route", "add", "10.99.0.0/24", "via", "198.51.100.2", "proto", "static"])
    gw = ip_address("198.51.100.9")
    ops = [
        op(OpKind.REPLACE, Route(IPv4Network((0x0A460000 + 64 * i, 26)), gateway=gw))
        for i in range(3 * CHUNK)  # 10.70.0.0/26 onwards
    ]
    bad_gw = {5, CHUNK - 1, CHUNK + 7}  # unreachable gateway: the kernel refuses
    for i in bad_gw:
        ops[i] = op(OpKind.REPLACE, Route(ops[i].route.dst, gateway=ip_address("203.0.113.1")))
    ops[2 * CHUNK - 1] = op(OpKind.ADD, Route(net("10.99.0.0/24"), ifname="tbw1"))  # taken
    ops[2 * CHUNK] = op(OpKind.REPLACE, Route(net("10.71.0.0/26"), ifname="nosuch0"))
    ops[2 * CHUNK + 1] = op(OpKind.DELETE, Route(net("10.72.0.0/26"), gateway=gw))  # absent
    res = NetlinkRouteBackend(ns).apply(ops)
    assert len(res) == len(ops)
    failed = {i: r for i, r in enumerate(res) if r.status is not OpStatus.OK}
    assert set(failed) == bad_gw | {2 * CHUNK - 1, 2 * CHUNK}
    for i in bad_gw:
        assert failed[i].status is OpStatus.ERROR and "gateway" in failed[i].message, failed[i]
    assert failed[2 * CHUNK - 1].status is OpStatus.EXISTS
    assert failed[2 * CHUNK] == failed[2 * CHUNK].__class__(
        OpStatus.NO_INTERFACE, 'Cannot find device "nosuch0"'
    )
    got = routes(ns, "proto", "81")
    want = {
        str(o.route.dst) for i, o in enumerate(ops) if o.kind is OpKind.REPLACE and i not in failed
    }
    assert set(got) == want and len(want) == 3 * CHUNK - 6
    # a foreign route is never deleted: DELETE carries our protocol
    assert (
        NetlinkRouteBackend(ns)
        .apply([op(OpKind.DELETE, Route(net("10.99.0.0/24"), gateway=ip_address("198.51.100.2")))])[
            0
        ]
        .status
        is OpStatus.OK
    )  # "No such process": not ours, so nothing to delete
    assert "10.99.0.0/24" in routes(ns, "proto", "static")


def test_netlink_device_down_is_pending_not_error(netns: NetnsFactory) -> None:
    ns = node(netns)
    ns_exec(ns, ["ip", "link", "set", "tbw1", "down"])
    res = NetlinkRouteBackend(ns).apply(
        [
            op(
                OpKind.REPLACE,
                Route(
                    net("10.70.0.0/26"),
                    gateway=ip_address("198.51.100.9"),
                    ifname="tbw1",
                    onlink=True,
                ),
            )
        ]
    )
    assert res[0].status is OpStatus.NO_INTERFACE, res


def test_netlink_chunk_ending_with_an_unknown_interface(netns: NetnsFactory) -> None:
    """The acknowledged request of a chunk is the last one encoded: a last op that could not
    be encoded (no such device) must not leave the backend waiting for an answer."""
    ns = node(netns)
    gw = ip_address("198.51.100.9")
    ops = [
        op(OpKind.REPLACE, Route(net("10.73.0.0/26"), gateway=gw)),
        op(OpKind.REPLACE, Route(net("10.73.0.64/26"), ifname="nosuch0")),
    ]
    t = time.monotonic()
    res = NetlinkRouteBackend(ns).apply(ops)
    assert time.monotonic() - t < 2.0
    assert [r.status for r in res] == [OpStatus.OK, OpStatus.NO_INTERFACE]
    assert set(routes(ns, "proto", "81")) == {"10.73.0.0/26"}
