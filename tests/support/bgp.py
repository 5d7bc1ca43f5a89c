"""Shared builders for tabby-bgp unit tests: a peer specification, an agent wired to fakes
(no etcd, no kernel, no ExaBGP), and UPDATE messages as ExaBGP's API hands them over."""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from bgp.agent import BgpAgent, BgpSettings
from bgp.model import PeerSpec
from datastore.fake import FakeEtcd
from kernel.routes import FakeRouteBackend, RouteTable


def peer_spec(addr: str | IPv4Address, **kw: object) -> PeerSpec:
    """An iBGP mesh peer at ``addr`` (AS 64512, hold 90 s, restart 120 s); ``kw`` overrides."""
    base = PeerSpec(
        address=IPv4Address(addr),
        port=179,
        remote_as=64512,
        local_as=64512,
        kind="mesh",
        passive=False,
        hold_time=90,
        keepalive=30,
        restart_time=120,
        md5_password=None,
        next_hop_self=False,
        route_reflector_client=False,
        name=f"mesh:{addr}",
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def fake_agent(tmp_path: Path, node: str = "node1") -> BgpAgent:
    """A BgpAgent on an in-memory datastore and a fake route table (never started)."""
    return BgpAgent(
        BgpSettings(node_name=node, state_dir=tmp_path, health_enabled=False),
        store_factory=FakeEtcd().connect,
        routes=RouteTable("fake", 81, 4, backend=FakeRouteBackend()),
    )


def encode_prefix(prefix: str) -> bytes:
    """One prefix in the NLRI encoding (RFC 4271 4.3)."""
    net = IPv4Network(prefix)
    size = (net.prefixlen + 7) // 8
    return bytes([net.prefixlen]) + net.network_address.packed[:size]


def update_body(
    announce: Sequence[str] = (),
    withdraw: Sequence[str] = (),
    *,
    next_hop: str = "198.51.100.2",
    origin: int = 0,
    as_path: Sequence[int] = (),
    local_pref: int | None = 100,
    extra_attributes: bytes = b"",
) -> bytes:
    """The body of an UPDATE (after the 19-octet header), 4-octet AS numbers."""
    withdrawn = b"".join(encode_prefix(p) for p in withdraw)
    attrs = b""
    if announce:
        segment = bytes([2, len(as_path)]) + struct.pack(f"!{len(as_path)}I", *as_path)
        attrs += bytes([0x40, 1, 1, origin])
        attrs += bytes([0x40, 2, len(segment) if as_path else 0]) + (segment if as_path else b"")
        attrs += bytes([0x40, 3, 4]) + IPv4Address(next_hop).packed
        if local_pref is not None:
            attrs += bytes([0x40, 5, 4]) + struct.pack("!I", local_pref)
    attrs += extra_attributes
    nlri = b"".join(encode_prefix(p) for p in announce)
    return (
        struct.pack("!H", len(withdrawn)) + withdrawn + struct.pack("!H", len(attrs)) + attrs + nlri
    )


def raw_update_line(body: bytes, peer: str = "198.51.100.2", local: str = "198.51.100.1") -> bytes:
    """An UPDATE as ExaBGP's API writes its bytes (``receive { packets; }``), with newline."""
    header = b"\xff" * 16 + struct.pack("!HB", 19 + len(body), 2)
    doc = {
        "exabgp": "5.0.0",
        "time": 0.0,
        "host": "test",
        "pid": 1,
        "ppid": 1,
        "counter": 1,
        "type": "update",
        "neighbor": {
            "address": {"local": local, "peer": peer},
            "asn": {"local": 64512, "peer": 64512},
            "direction": "receive",
            "message": {
                "category": 2,
                "header": "0x" + header.hex().upper(),
                "body": "0x" + body.hex().upper(),
            },
        },
    }
    return (json.dumps(doc) + "\n").encode()
