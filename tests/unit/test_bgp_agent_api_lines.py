"""tabby-bgp's reader of ExaBGP's API lines: a line it cannot parse is logged, counted and
skipped; the sessions and the lines after it are unaffected."""

from __future__ import annotations

import asyncio
import json
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from bgp.agent import BgpAgent, BgpSettings, PeerStatus
from bgp.exabgp_api import UpdateEvent
from bgp.model import PeerSpec
from datastore.fake import FakeKVStore
from kernel.routes import FakeRouteBackend, RouteTable

PEER = IPv4Address("198.51.100.2")


def _line(kind: str, body: dict[str, object]) -> bytes:
    doc = {
        "exabgp": "5.0.0",
        "type": kind,
        "neighbor": {
            "address": {"local": "198.51.100.1", "peer": str(PEER)},
            "asn": {"local": 64512, "peer": 64512},
            "direction": "receive",
            **body,
        },
    }
    return (json.dumps(doc) + "\n").encode()


def _update(prefix: str) -> bytes:
    return _line(
        "update",
        {
            "message": {
                "update": {
                    "attribute": {"origin": "igp", "local-preference": 100},
                    "announce": {"ipv4 unicast": {str(PEER): [{"nlri": prefix}]}},
                }
            }
        },
    )


class _Writer:
    """The agent's side of the API socket: what it writes is dropped."""

    def __init__(self) -> None:
        self.closed = False

    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def test_unreadable_line_is_skipped_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    agent = BgpAgent(
        BgpSettings(node_name="node1", state_dir=tmp_path, health_enabled=False),
        store_factory=FakeKVStore,
        routes=RouteTable("fake", 81, 4, backend=FakeRouteBackend()),
    )
    spec = PeerSpec(
        address=PEER,
        port=179,
        remote_as=64512,
        local_as=64512,
        kind="global",
        passive=False,
        hold_time=90,
        keepalive=30,
        restart_time=120,
        md5_password=None,
        next_hop_self=False,
        route_reflector_client=False,
        name="p",
    )
    agent.peers[PEER] = PeerStatus(spec, state="established")

    seen: dict[str, object] = {}

    async def feed() -> None:
        reader = asyncio.StreamReader()
        client = asyncio.create_task(agent._api_client(reader, _Writer()))  # type: ignore[arg-type]
        for chunk in (
            _update("10.1.0.0/26"),
            b'{"exabgp": "5.0.0", "type": "update", "neighbor": {"message": 7}}\n',
            b"this is not json\n",
            _update("10.2.0.0/26"),
        ):
            reader.feed_data(chunk)
        for _ in range(100):
            await asyncio.sleep(0.01)
            if agent.rib.count(PEER) == 2:
                break
        seen["count"] = agent.rib.count(PEER)
        seen["prefixes"] = set(agent.rib.prefixes())
        seen["state"] = agent.peers[PEER].state
        reader.feed_eof()
        await client

    asyncio.run(feed())
    assert agent.api_errors == 2
    assert "bgp.api_bad_line" in caplog.text and "this is not json" in caplog.text
    # both good UPDATEs reached the RIB, the one after the bad lines included; the session
    # stayed up until the API connection itself ended
    assert seen["count"] == 2
    assert seen["prefixes"] == {IPv4Network("10.1.0.0/26"), IPv4Network("10.2.0.0/26")}
    assert seen["state"] == "established"
    assert agent.status()["exabgp"]["unreadableLines"] == 2


def test_event_that_fails_is_logged_and_the_reader_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    agent = BgpAgent(
        BgpSettings(node_name="node1", state_dir=tmp_path, health_enabled=False),
        store_factory=FakeKVStore,
        routes=RouteTable("fake", 81, 4, backend=FakeRouteBackend()),
    )
    real = agent._on_event
    calls = {"n": 0}

    def flaky(ev: object) -> None:
        if isinstance(ev, UpdateEvent):
            calls["n"] += 1
            if calls["n"] == 1:
                raise RuntimeError("boom")
        real(ev)  # type: ignore[arg-type]

    agent._on_event = flaky  # type: ignore[method-assign]
    seen: dict[str, object] = {}

    async def feed() -> None:
        reader = asyncio.StreamReader()
        client = asyncio.create_task(agent._api_client(reader, _Writer()))  # type: ignore[arg-type]
        reader.feed_data(_update("10.1.0.0/26") + _update("10.2.0.0/26"))
        for _ in range(100):
            await asyncio.sleep(0.01)
            if agent.rib.count(PEER):
                break
        seen["prefixes"] = set(agent.rib.prefixes())
        reader.feed_eof()
        await client

    asyncio.run(feed())
    assert "bgp.api_event_failed" in caplog.text and "boom" in caplog.text
    assert agent.api_errors == 1
    assert seen["prefixes"] == {IPv4Network("10.2.0.0/26")}
