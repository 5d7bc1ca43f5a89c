"""tabby-bgp's reader of ExaBGP's API lines: a line it cannot parse or apply is logged and
counted, what an unreadable UPDATE names is withdrawn (treat-as-withdraw), and the sessions and
the lines after it are unaffected; the control loop runs between UPDATEs."""

from __future__ import annotations

import asyncio
import json
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from bgp.agent import YIELD_AFTER_PREFIXES, BgpAgent, PeerStatus
from bgp.exabgp_api import UpdateEvent
from tests.support.bgp import fake_agent, peer_spec

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


def _update(prefix: str, origin: str = "igp", withdraw: tuple[str, ...] = ()) -> bytes:
    update: dict[str, object] = {
        "attribute": {"origin": origin, "local-preference": 100},
        "announce": {"ipv4 unicast": {str(PEER): [{"nlri": prefix}]}},
    }
    if withdraw:
        update["withdraw"] = {"ipv4 unicast": [{"nlri": w} for w in withdraw]}
    return _line("update", {"message": {"update": update}})


def _agent(tmp_path: Path) -> BgpAgent:
    return fake_agent(tmp_path)


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
    agent = _agent(tmp_path)
    spec = peer_spec(PEER, kind="global", name="p")
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
    agent = _agent(tmp_path)
    real = agent._on_event
    calls = {"n": 0}

    def flaky(ev: object) -> None:
        if isinstance(ev, UpdateEvent):
            calls["n"] += 1
            if calls["n"] == 1 and ev.announced[0].prefix == IPv4Network("10.1.0.0/26"):
                raise RuntimeError("boom")
        real(ev)  # type: ignore[arg-type]

    agent._on_event = flaky  # type: ignore[method-assign]
    seen: dict[str, object] = {}

    async def feed() -> None:
        reader = asyncio.StreamReader()
        client = asyncio.create_task(agent._api_client(reader, _Writer()))  # type: ignore[arg-type]
        reader.feed_data(_update("10.3.0.0/26"))
        for _ in range(100):
            await asyncio.sleep(0.01)
            if agent.rib.count(PEER):
                break
        # the first UPDATE event fails inside the agent: what it named is withdrawn (10.3 had a
        # path before: it must not keep it), the next one is applied
        calls["n"] = 0
        reader.feed_data(_update("10.1.0.0/26", withdraw=("10.3.0.0/26",)))
        reader.feed_data(_update("10.2.0.0/26"))
        for _ in range(100):
            await asyncio.sleep(0.01)
            if IPv4Network("10.2.0.0/26") in set(agent.rib.prefixes()):
                break
        seen["prefixes"] = set(agent.rib.prefixes())
        reader.feed_eof()
        await client

    asyncio.run(feed())
    assert "bgp.api_event_failed" in caplog.text and "boom" in caplog.text
    assert agent.api_errors == 1
    assert seen["prefixes"] == {IPv4Network("10.2.0.0/26")}


def test_unreadable_update_is_treated_as_withdraw(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An UPDATE that names known prefixes but carries an attribute we cannot read: those
    prefixes are withdrawn (RFC 7606), not left with their previous path; others stay."""
    agent = _agent(tmp_path)
    seen: dict[str, object] = {}

    async def feed() -> None:
        reader = asyncio.StreamReader()
        client = asyncio.create_task(agent._api_client(reader, _Writer()))  # type: ignore[arg-type]
        for prefix in ("10.1.0.0/26", "10.2.0.0/26", "10.3.0.0/26"):
            reader.feed_data(_update(prefix))
        # re-announces 10.1 and withdraws 10.2, with an ORIGIN we do not know
        reader.feed_data(_update("10.1.0.0/26", origin="bogus", withdraw=("10.2.0.0/26",)))
        for _ in range(100):
            await asyncio.sleep(0.01)
            if agent.api_errors:
                break
        seen["prefixes"] = set(agent.rib.prefixes())
        reader.feed_eof()
        await client

    asyncio.run(feed())
    assert agent.api_errors == 1
    assert "bgp.api_bad_line" in caplog.text and "withdrawn=2" in caplog.text
    assert seen["prefixes"] == {IPv4Network("10.3.0.0/26")}


def _many(first: int, n: int) -> bytes:
    """One UPDATE announcing ``n`` /26s, the ``first``-th /26 of 10.64.0.0/10 onwards."""
    base = int(IPv4Address("10.64.0.0"))
    nlri = [{"nlri": f"{IPv4Address(base + 64 * (first + i))}/26"} for i in range(n)]
    update = {
        "attribute": {"origin": "igp", "local-preference": 100},
        "announce": {"ipv4 unicast": {str(PEER): nlri}},
    }
    return _line("update", {"message": {"update": update}})


def _passes(tmp_path: Path, burst: bytes, total: int) -> list[int]:
    """RIB sizes a waiting control task sees while ``burst`` (buffered at once) is read."""
    agent = _agent(tmp_path)
    counts: list[int] = []

    async def feed() -> None:
        async def control() -> None:
            while True:
                await agent._work.wait()
                agent._work.clear()
                counts.append(agent.rib.count(PEER))

        watcher = asyncio.create_task(control())
        await asyncio.sleep(0)
        reader = asyncio.StreamReader()
        client = asyncio.create_task(agent._api_client(reader, _Writer()))  # type: ignore[arg-type]
        reader.feed_data(burst)
        for _ in range(200):
            await asyncio.sleep(0.01)
            if agent.rib.count(PEER) == total:
                break
        reader.feed_eof()
        await client
        watcher.cancel()

    asyncio.run(feed())
    return [c for c in counts if c]


def test_control_loop_runs_during_a_table_load(tmp_path: Path) -> None:
    """A burst of buffered UPDATEs does not starve the control loop: it gets a turn every
    YIELD_AFTER_PREFIXES prefixes (routes are computed and written while the load arrives)."""
    assert YIELD_AFTER_PREFIXES == 500
    burst = b"".join(_many(300 * i, 300) for i in range(5))
    assert _passes(tmp_path, burst, 1500) == [600, 1200, 1500]


def test_small_updates_do_not_cost_a_control_pass_each(tmp_path: Path) -> None:
    """A reflector's burst of one-prefix UPDATEs is read whole, then handled in one pass."""
    burst = b"".join(_update(f"10.{i}.0.0/26") for i in range(1, 6))
    assert _passes(tmp_path, burst, 5) == [5]
