"""kernel.rtnl_routes encoding: the fast path equals the general one; fields as `ip route` sets."""

from __future__ import annotations

import socket
import struct
from ipaddress import IPv4Network, IPv6Network, ip_address

import pytest

from kernel.routes import NextHop, OpKind, Route, RouteOp
from kernel.rtnl_routes import (
    NLM_F_ACK,
    RT_SCOPE_NOWHERE,
    RTM_DELROUTE,
    RTM_NEWROUTE,
    UnknownInterfaceError,
    _encode,
    encode_op,
)

HDR = struct.Struct("=IHHII")
RTMSG = struct.Struct("=BBBBBBBBI")
GW = ip_address("198.51.100.9")


def decode(msg: bytes) -> tuple[tuple[int, ...], tuple[int, ...], dict[int, bytes]]:
    hdr = HDR.unpack_from(msg)
    assert hdr[0] == len(msg) and len(msg) % 4 == 0
    rtm = RTMSG.unpack_from(msg, HDR.size)
    attrs: dict[int, bytes] = {}
    off = HDR.size + RTMSG.size
    while off < len(msg):
        alen, kind = struct.unpack_from("=HH", msg, off)
        attrs[kind] = msg[off + 4 : off + alen]
        off += (alen + 3) & ~3
    return hdr, rtm, attrs


@pytest.mark.parametrize("kind", [OpKind.ADD, OpKind.REPLACE])
@pytest.mark.parametrize("table", [254, 1000])
@pytest.mark.parametrize("metric", [None, 20])
@pytest.mark.parametrize("ack", [False, True])
def test_fast_path_equals_general_encoding(
    kind: OpKind, table: int, metric: int | None, ack: bool
) -> None:
    op = RouteOp(kind, Route(IPv4Network("10.64.3.64/26"), gateway=GW, metric=metric), 81, table)
    fast = encode_op(op, 7, {}, ack=ack)
    assert fast == _encode(op, op.route, 7, {}, ack)
    hdr, rtm, attrs = decode(fast)
    assert hdr[1] == RTM_NEWROUTE and hdr[3] == 7 and bool(hdr[2] & NLM_F_ACK) == ack
    assert rtm[:2] == (socket.AF_INET, 26) and rtm[5] == 81 and rtm[7] == 1
    assert rtm[4] == (table if table < 256 else 0)
    assert attrs[15] == struct.pack("=I", table)  # RTA_TABLE
    assert attrs[1] == bytes([10, 64, 3, 64]) and attrs[5] == GW.packed
    assert attrs[6] == struct.pack("=I", metric or 0)


def test_device_onlink_multipath_blackhole_delete_and_ipv6() -> None:
    idx = {"eth0": 3, "tunl0": 9}
    dev = RouteOp(
        OpKind.REPLACE,
        Route(IPv4Network("10.64.0.0/26"), gateway=GW, ifname="tunl0", onlink=True),
        81,
        254,
    )
    _, rtm, attrs = decode(encode_op(dev, 1, idx))
    assert rtm[8] & 4 and attrs[4] == struct.pack("=I", 9)  # RTNH_F_ONLINK, RTA_OIF
    ecmp = RouteOp(
        OpKind.ADD,
        Route(
            IPv4Network("10.64.1.0/26"),
            nexthops=(NextHop(GW, "eth0"), NextHop(ip_address("198.51.100.10"), "eth0")),
        ),
        81,
        254,
    )
    _, _, attrs = decode(encode_op(ecmp, 2, idx))
    assert 9 in attrs and attrs[9].count(GW.packed) == 1  # RTA_MULTIPATH
    hole = RouteOp(OpKind.ADD, Route(IPv4Network("10.64.2.0/26"), type="blackhole"), 81, 254)
    assert decode(encode_op(hole, 3, idx))[1][7] == 6  # RTN_BLACKHOLE
    gone = RouteOp(OpKind.DELETE, Route(IPv4Network("10.64.0.0/26"), gateway=GW), 81, 254)
    hdr, rtm, attrs = decode(encode_op(gone, 4, idx))
    assert hdr[1] == RTM_DELROUTE and rtm[6] == RT_SCOPE_NOWHERE and rtm[7] == 0
    assert rtm[5] == 81 and 5 not in attrs  # our protocol, no next hop: any of ours matches
    v6 = RouteOp(OpKind.ADD, Route(IPv6Network("2001:db8::/64"), ifname="eth0"), 80, 254)
    _, rtm, attrs = decode(encode_op(v6, 5, idx))
    assert rtm[0] == socket.AF_INET6 and len(attrs[1]) == 16
    with pytest.raises(UnknownInterfaceError):
        encode_op(
            RouteOp(OpKind.ADD, Route(IPv4Network("10.0.0.0/8"), ifname="x9"), 80, 254), 6, idx
        )
