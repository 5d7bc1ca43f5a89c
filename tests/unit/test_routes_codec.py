"""Route values and the iproute2 text/JSON codec (no kernel)."""

from __future__ import annotations

import json
from ipaddress import ip_address, ip_network

import pytest

from kernel.routes import (
    InvalidRouteError,
    NextHop,
    OpKind,
    OpStatus,
    Route,
    RouteOp,
    batch_line,
    classify,
    parse_batch_errors,
    parse_ip_json,
)


def test_normalisation() -> None:
    r = Route(ip_network("10.0.0.1/32"), ifname="tbw1")
    assert r.scope == "link" and r.metric == 0
    g = Route(ip_network("10.0.0.0/24"), gateway=ip_address("198.51.100.1"))
    assert g.scope == "universe"
    v6 = Route(ip_network("2001:db8::/64"), ifname="tbw1", scope="link")
    assert v6.scope == "universe" and v6.metric == 1024


@pytest.mark.parametrize(
    "kwargs",
    [
        {"type": "blackhole", "ifname": "x"},
        {},
        {"gateway": ip_address("2001:db8::1")},
        {"gateway": ip_address("198.51.100.1"), "onlink": True},
        {"nexthops": (NextHop(),)},
        {"ifname": "x", "nexthops": (NextHop(ip_address("198.51.100.1")),)},
        {"ifname": "much-too-long-ifname"},
        {"ifname": "a b"},
    ],
)
def test_invalid_routes(kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidRouteError, match=r"route 10\.0\.0\.0/24"):
        Route(ip_network("10.0.0.0/24"), **kwargs)  # type: ignore[arg-type]


def test_batch_lines() -> None:
    r = Route(
        ip_network("10.0.0.4/32"), ifname="tbw1", gateway=ip_address("203.0.113.5"), onlink=True
    )
    assert batch_line(RouteOp(OpKind.ADD, r, 80, 254)) == (
        "route add 10.0.0.4/32 proto 80 table 254 metric 0 scope 0 via 203.0.113.5 dev tbw1 onlink"
    )
    hole = Route(ip_network("10.1.0.0/24"), type="blackhole")
    assert batch_line(RouteOp(OpKind.DELETE, hole, 81, 254)) == (
        "route del blackhole 10.1.0.0/24 proto 81 table 254 metric 0"
    )
    ecmp = Route(
        ip_network("10.2.0.0/24"),
        nexthops=(NextHop(ip_address("198.51.100.2"), "e0"), NextHop(ip_address("198.51.100.3"))),
    )
    assert batch_line(RouteOp(OpKind.REPLACE, ecmp, 81, 254)) == (
        "route replace 10.2.0.0/24 proto 81 table 254 metric 0 scope 0 "
        "nexthop via 198.51.100.2 dev e0 nexthop via 198.51.100.3"
    )


def test_parse_batch_errors_and_classify() -> None:
    stderr = (
        'Cannot find device "nosuch"\nCommand failed -:2\n'
        "RTNETLINK answers: File exists\nCommand failed -:7\n"
    )
    errs = parse_batch_errors(stderr)
    assert errs == {2: 'Cannot find device "nosuch"', 7: "RTNETLINK answers: File exists"}
    assert classify(OpKind.ADD, errs[2]) is OpStatus.NO_INTERFACE
    assert classify(OpKind.ADD, errs[7]) is OpStatus.EXISTS
    assert classify(OpKind.DELETE, "RTNETLINK answers: No such process") is OpStatus.OK
    assert classify(OpKind.ADD, "Error: Nexthop has invalid gateway.") is OpStatus.ERROR


def test_parse_ip_json_v4() -> None:
    # shape of `ip -N -j route show table 254` as iproute2 6.1 prints it
    text = """[{"dst":"10.0.0.1","dev":"tbwa","protocol":"80","scope":"253","flags":[]},
    {"dst":"10.0.0.4","gateway":"203.0.113.5","dev":"tbwa","protocol":"80","flags":["onlink"]},
    {"type":"6","dst":"10.1.0.0/24","protocol":"80","flags":[]},
    {"dst":"10.2.0.0/24","protocol":"81","flags":[],"nexthops":[
      {"gateway":"198.51.100.3","dev":"tbwa","weight":1,"flags":[]},
      {"gateway":"198.51.100.2","dev":"tbwa","weight":1,"flags":[]}]},
    {"type":"7","dst":"10.4.0.0/24","protocol":"80","metric":5,"flags":[]},
    {"dst":"default","gateway":"198.51.100.254","dev":"tbwa","protocol":"4","flags":[]},
    {"type":"2","dst":"127.0.0.1","dev":"lo","protocol":"2","flags":[]}]"""
    got = parse_ip_json(json.loads(text), 4)
    assert [k.protocol for k in got] == [80, 80, 80, 81, 80, 4]
    r = {str(k.route.dst): k.route for k in got}
    assert r["10.0.0.1/32"] == Route(ip_network("10.0.0.1/32"), ifname="tbwa")
    assert r["10.0.0.4/32"].onlink
    assert r["10.1.0.0/24"] == Route(ip_network("10.1.0.0/24"), type="blackhole")
    assert [str(n.gateway) for n in r["10.2.0.0/24"].nexthops] == ["198.51.100.2", "198.51.100.3"]
    assert r["10.4.0.0/24"].metric == 5 and r["10.4.0.0/24"].type == "unreachable"
    assert "0.0.0.0/0" in r


def test_parse_ip_json_v6_blackhole_has_no_device() -> None:
    text = """[{"type":"6","dst":"2001:db8:3::/64","dev":"lo","protocol":"80","metric":1024,
      "flags":[],"pref":"medium"},
      {"dst":"2001:db8:2::1","dev":"tbwa","protocol":"80","metric":1024,"flags":[]}]"""
    got = parse_ip_json(json.loads(text), 6)
    assert got[0].route == Route(ip_network("2001:db8:3::/64"), type="blackhole")
    assert got[1].route == Route(ip_network("2001:db8:2::1/128"), ifname="tbwa")


@pytest.mark.parametrize(
    ("dst", "gateway", "ifname", "onlink"),
    [
        ("10.1.0.0/26", "198.51.100.9", None, False),
        ("10.1.0.0/26", "198.51.100.9", "tunl0", True),
        ("10.1.0.0/26", "198.51.100.9", "eth0", False),
        ("0.0.0.0/0", "198.51.100.1", None, False),
        ("10.1.2.3/32", "203.0.113.1", "tunl0", True),
        ("2001:db8:1::/64", "2001:db8::1", None, False),
        ("2001:db8:1::/64", "fe80::1", "eth0", False),
    ],
)
def test_route_via_is_the_constructor_faster(
    dst: str, gateway: str, ifname: str | None, onlink: bool
) -> None:
    slow = Route(ip_network(dst), gateway=ip_address(gateway), ifname=ifname, onlink=onlink)
    fast = Route.via(ip_network(dst), ip_address(gateway), ifname, onlink)
    assert fast == slow and hash(fast) == hash(slow) and repr(fast) == repr(slow)
    for name in ("dst", "ifname", "gateway", "onlink", "scope", "type", "nexthops", "metric"):
        assert getattr(fast, name) == getattr(slow, name), name


@pytest.mark.parametrize(
    ("dst", "gateway", "ifname", "onlink"),
    [
        ("10.1.0.0/26", "2001:db8::1", None, False),  # family mismatch
        ("10.1.0.0/26", "198.51.100.9", "bad name", False),
        ("10.1.0.0/26", "198.51.100.9", "x" * 16, False),
        ("10.1.0.0/26", "198.51.100.9", None, True),  # onlink needs a device
    ],
)
def test_route_via_refuses_what_the_constructor_refuses(
    dst: str, gateway: str, ifname: str | None, onlink: bool
) -> None:
    with pytest.raises(InvalidRouteError):
        Route(ip_network(dst), gateway=ip_address(gateway), ifname=ifname, onlink=onlink)
    with pytest.raises(InvalidRouteError):
        Route.via(ip_network(dst), ip_address(gateway), ifname, onlink)
