"""Link view differences and the rtnetlink link codec (no kernel)."""

from __future__ import annotations

import struct

from kernel.links import diff_links
from kernel.nl import (
    IFLA_ADDRESS,
    IFLA_IFNAME,
    IFLA_MTU,
    IFLA_OPERSTATE,
    NLMSG_DONE,
    RTM_DELLINK,
    RTM_NEWLINK,
    Link,
    parse_messages,
)


def link(index: int, name: str, up: bool = True, mtu: int = 1500) -> Link:
    return Link(index, name, up, "up" if up else "down", mtu, "02:00:00:00:00:01")


def test_diff_links() -> None:
    old = {1: link(1, "lo"), 2: link(2, "tbw1"), 3: link(3, "tbw2")}
    new = {1: link(1, "lo"), 2: link(2, "tbw9"), 3: link(3, "tbw2", up=False), 4: link(4, "tbw4")}
    events = [(e.kind, e.link.name, e.old.name if e.old else None) for e in diff_links(old, new)]
    assert events == [
        ("renamed", "tbw9", "tbw1"),
        ("changed", "tbw2", "tbw2"),
        ("added", "tbw4", None),
    ]
    gone = diff_links(new, {1: link(1, "lo")})
    assert [(e.kind, e.link.index) for e in gone] == [
        ("removed", 2),
        ("removed", 3),
        ("removed", 4),
    ]
    assert diff_links(new, dict(new)) == []


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _msg(kind: int, seq: int, body: bytes) -> bytes:
    return struct.pack("=IHHII", 16 + len(body), kind, 0, seq, 0) + body


def test_parse_link_messages() -> None:
    ifi = struct.pack("=BxHiII", 0, 1, 7, 0x1 | 0x40, 0)
    attrs = (
        _attr(IFLA_IFNAME, b"tbw7\0")
        + _attr(IFLA_MTU, struct.pack("=I", 1450))
        + _attr(IFLA_ADDRESS, bytes.fromhex("eeeeeeeeeeee"))
        + _attr(IFLA_OPERSTATE, bytes([6]))
        + _attr(999, b"ignored")
    )
    data = (
        _msg(RTM_NEWLINK, 5, ifi + attrs)
        + _msg(RTM_DELLINK, 0, ifi + attrs)
        + _msg(NLMSG_DONE, 5, b"\0\0\0\0")
    )
    parsed = parse_messages(data)
    assert parsed.done == [5]
    new, deleted = parsed.links
    assert new.seq == 5 and not new.deleted and deleted.deleted
    assert new.link == Link(7, "tbw7", True, "up", 1450, "ee:ee:ee:ee:ee:ee")
    assert new.link.up
