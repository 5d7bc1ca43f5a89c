"""tabby-bgp's reader of ExaBGP's API lines: a line it cannot parse or apply is logged and
counted; an UPDATE with a malformed attribute is treated as withdrawn and one that cannot be
delimited resets its session (RFC 7606), the other sessions and lines being unaffected;
ExaBGP's parsed copies of UPDATEs are ignored (the bytes count); the control loop runs between
UPDATEs."""

from __future__ import annotations

import asyncio
import json
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from bgp.agent import YIELD_AFTER_PREFIXES, BgpAgent, PeerStatus
from bgp.exabgp_api import UpdateEvent
from tests.support.bgp import fake_agent, peer_spec, raw_update_line, update_body

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


def _update(prefix: str, origin: int = 0, withdraw: tuple[str, ...] = ()) -> bytes:
    return raw_update_line(update_body([prefix], withdraw, origin=origin), peer=str(PEER))


def _parsed_update(prefix: str) -> bytes:
    """ExaBGP's parsed JSON form of an UPDATE (sent besides the bytes by an unpatched ExaBGP)."""
    update = {
        "attribute": {"origin": "igp", "local-preference": 100},
        "announce": {"ipv4 unicast": {str(PEER): [{"nlri": prefix}]}},
    }
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


def _run(agent: BgpAgent, chunks: list[bytes], done: object) -> dict[str, object]:
    """Feed ``chunks`` to the agent's API reader until ``done(agent)`` holds; what it saw."""
    seen: dict[str, object] = {}

    async def feed() -> None:
        reader = asyncio.StreamReader()
        client = asyncio.create_task(agent._api_client(reader, _Writer()))  # type: ignore[arg-type]
        for chunk in chunks:
            reader.feed_data(chunk)
        for _ in range(100):
            await asyncio.sleep(0.01)
            if done(agent):  # type: ignore[operator]
                break
        seen["prefixes"] = set(agent.rib.prefixes())
        seen["commands"] = agent.acks.in_flight() + tuple(agent._outbox)
        seen["states"] = {str(p): st.state for p, st in agent.peers.items()}
        reader.feed_eof()
        await client

    asyncio.run(feed())
    return seen


def test_malformed_attribute_is_treated_as_withdraw(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An UPDATE that re-announces a known prefix with a malformed ORIGIN: what it names is
    withdrawn (RFC 7606), not left with its previous path; the others stay, the session too."""
    agent = _agent(tmp_path)
    agent.peers[PEER] = PeerStatus(peer_spec(PEER, kind="global", name="p"), state="established")
    chunks = [_update(p) for p in ("10.1.0.0/26", "10.2.0.0/26", "10.3.0.0/26")]
    # re-announces 10.1 and withdraws 10.2, with ORIGIN 7 (0..2 are defined)
    chunks.append(_update("10.1.0.0/26", origin=7, withdraw=("10.2.0.0/26",)))
    seen = _run(agent, chunks, lambda a: a.peers[PEER].malformed)
    assert seen["prefixes"] == {IPv4Network("10.3.0.0/26")}
    assert "bgp.update_treat_as_withdraw" in caplog.text and "ORIGIN" in caplog.text
    assert agent.peers[PEER].malformed == 1 and seen["states"] == {str(PEER): "established"}
    assert agent.status()["peers"][0]["malformedUpdates"] == 1
    assert agent.api_errors == 0 and seen["commands"] == ()


def test_undelimitable_update_resets_its_session(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A prefix length of 33: which routes the UPDATE carried is unknown. The peer's routes go,
    its session is torn down, and what it still sends before it is down is ignored."""
    other = IPv4Address("198.51.100.3")
    agent = _agent(tmp_path)
    agent.peers[PEER] = PeerStatus(peer_spec(PEER, kind="global", name="p"), state="established")
    agent.peers[other] = PeerStatus(peer_spec(other, kind="global", name="q"), state="established")
    bad = update_body(["10.9.0.0/26"])[:-5] + bytes([33, 10, 9, 0, 0, 0])
    chunks = [
        _update("10.1.0.0/26"),
        raw_update_line(update_body(["10.7.0.0/26"], next_hop=str(other)), peer=str(other)),
        raw_update_line(bad, peer=str(PEER)),
        _update("10.2.0.0/26"),  # already on its way: not trusted
    ]
    seen = _run(agent, chunks, lambda a: a.rib.count(other) and a.peers[PEER].malformed)
    assert seen["prefixes"] == {IPv4Network("10.7.0.0/26")}
    assert seen["commands"] == (f"neighbor {PEER} teardown 4",)
    assert "bgp.update_malformed" in caplog.text and "prefix length 33" in caplog.text
    assert agent.peers[PEER].resetting
    assert seen["states"] == {str(PEER): "down", str(other): "established"}


def test_unreadable_update_line_resets_its_session(tmp_path: Path) -> None:
    agent = _agent(tmp_path)
    agent.peers[PEER] = PeerStatus(peer_spec(PEER, kind="global", name="p"), state="established")
    bad = _update("10.2.0.0/26").replace(b'"body": "0x', b'"body": "0xZZ')
    seen = _run(agent, [_update("10.1.0.0/26"), bad], lambda a: a.api_errors)
    assert agent.api_errors == 1
    assert seen["prefixes"] == set()
    assert seen["commands"] == (f"neighbor {PEER} teardown 4",)


def test_parsed_copies_of_updates_are_ignored(tmp_path: Path) -> None:
    """An unpatched ExaBGP sends each UPDATE twice (bytes, then JSON): the bytes count."""
    agent = _agent(tmp_path)
    chunks = [_parsed_update("10.5.0.0/26"), _update("10.1.0.0/26")]
    seen = _run(agent, chunks, lambda a: a.rib.count(PEER))
    assert seen["prefixes"] == {IPv4Network("10.1.0.0/26")}
    assert agent.api_errors == 0


def _many(first: int, n: int) -> bytes:
    """One UPDATE announcing ``n`` /26s, the ``first``-th /26 of 10.64.0.0/10 onwards."""
    base = int(IPv4Address("10.64.0.0"))
    prefixes = [f"{IPv4Address(base + 64 * (first + i))}/26" for i in range(n)]
    return raw_update_line(update_body(prefixes), peer=str(PEER))


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
