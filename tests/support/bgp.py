"""Shared builders for tabby-bgp unit tests: a peer specification and an agent wired to fakes
(no etcd, no kernel, no ExaBGP)."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address
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
