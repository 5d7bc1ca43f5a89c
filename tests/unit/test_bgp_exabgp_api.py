"""bgp.exabgp_api: parsing JSON captured from real ExaBGP 5.0.15, commands, ack tracking."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network, ip_address, ip_network
from pathlib import Path
from typing import Any

import pytest

from bgp.exabgp_api import (
    Ack,
    AckTracker,
    EorEvent,
    Event,
    ExabgpApiError,
    IgnoredEvent,
    NotificationEvent,
    OpenEvent,
    RawUpdateEvent,
    ShutdownEvent,
    StateEvent,
    UpdateEvent,
    announce_eor,
    announce_route,
    decode_raw,
    parse_line,
    teardown,
    unreadable_update_peer,
    withdraw_route,
)
from bgp.model import AsSegment, Origin
from bgp.rib import Rib

DATA = Path(__file__).resolve().parents[1] / "data" / "exabgp"


def capture(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((DATA / f"capture_{name}.json").read_text())
    return doc


def events(name: str) -> list[Event]:
    return [parse_line(line) for line in capture(name)["lines"]]


def test_every_captured_line_parses() -> None:
    for name in "abc":
        for ev in events(name):
            assert not isinstance(ev, IgnoredEvent), ev


def test_b_update_attributes_withdraw_multi_nlri_eor() -> None:
    evs = events("b")
    updates = [e for e in evs if isinstance(e, UpdateEvent)]
    first, rr, incomplete, withdraw, multi = updates[:5]
    a = ip_address("198.51.100.1")
    assert first.session.peer == a and first.session.local == ip_address("198.51.100.2")
    assert not first.session.ebgp
    assert [(x.prefix, x.next_hop) for x in first.announced] == [(ip_network("10.65.1.0/26"), a)]
    assert first.attributes.med == 10 and first.attributes.local_pref == 100
    att = rr.attributes
    assert att.origin is Origin.EGP
    assert att.as_path == (AsSegment((64600, 64601)),)
    assert (att.local_pref, att.med) == (200, 50)
    assert att.originator_id == IPv4Address("198.51.100.9")
    assert att.cluster_list == (IPv4Address("198.51.100.1"), IPv4Address("198.51.100.7"))
    assert incomplete.attributes.origin is Origin.INCOMPLETE
    assert withdraw.announced == () and withdraw.withdrawn == (ip_network("10.65.3.0/26"),)
    assert [x.prefix for x in multi.announced] == [
        ip_network("10.65.4.0/26"),
        ip_network("10.65.4.64/26"),
    ]
    assert multi.attributes.local_pref == 150
    eors = [e for e in evs if isinstance(e, EorEvent)]
    assert [(e.afi, e.safi) for e in eors] == [("ipv4", "unicast")]
    states = [(e.state, e.reason) for e in evs if isinstance(e, StateEvent)]
    assert states[:3] == [("connected", ""), ("up", ""), ("down", "closing connection")]
    assert isinstance(evs[-1], ShutdownEvent)
    acks = [e for e in evs if isinstance(e, Ack)]
    assert acks == [Ack(True, "done"), Ack(True, "done")]


def test_a_open_ebgp_bird_notification_and_acks() -> None:
    evs = events("a")
    opens = {e.session.peer: e for e in evs if isinstance(e, OpenEvent)}
    bird = opens[ip_address("198.51.100.4")]
    assert bird.router_id == IPv4Address("198.51.100.4") and bird.hold_time == 240
    assert bird.graceful_restart_time == 120
    assert opens[ip_address("198.51.100.3")].asn == 64513
    ebgp = next(
        e
        for e in evs
        if isinstance(e, UpdateEvent) and e.session.peer == ip_address("198.51.100.3")
    )
    assert ebgp.session.ebgp
    assert ebgp.attributes.as_path == (AsSegment((64513, 65001)),)
    assert ebgp.attributes.local_pref is None
    note = next(e for e in evs if isinstance(e, NotificationEvent))
    assert (note.session.peer, note.code, note.subcode, note.direction) == (
        ip_address("198.51.100.4"),
        6,
        2,
        "receive",
    )
    assert [e.ok for e in evs if isinstance(e, Ack)].count(False) == 1  # the invalid command


def test_c_sees_our_as_prepended() -> None:
    upd = next(e for e in events("c") if isinstance(e, UpdateEvent))
    assert upd.session.ebgp
    assert upd.attributes.as_path == (AsSegment((64512,)),)
    assert upd.attributes.med == 5


def test_captured_stream_drives_rib() -> None:
    """Replay A's stdin into a RIB the way the agent will: opens give router ids, down drops."""
    rib = Rib()
    router_ids: dict[object, IPv4Address] = {}
    for ev in events("a"):
        if isinstance(ev, OpenEvent):
            router_ids[ev.session.peer] = ev.router_id
        elif isinstance(ev, UpdateEvent):
            for prefix in ev.withdrawn:  # the message's order, as the agent applies it
                rib.update(ev.session.peer, prefix, None)
            for path, prefixes in ev.path_groups(router_ids.get(ev.session.peer)):
                rib.announce(ev.session.peer, path, prefixes)
        elif isinstance(ev, StateEvent) and ev.state == "down":
            rib.peer_down(ev.session.peer)
    best = {p: rib.best(p) for p in rib.prefixes()}
    assert set(best) == {
        ip_network("10.66.0.0/26"),
        ip_network("10.67.0.0/26"),
        ip_network("10.68.0.0/26"),
    }
    (bird,) = best[ip_network("10.68.0.0/26")]
    assert bird.router_id == IPv4Address("198.51.100.4") and bird.next_hop == ip_address(
        "198.51.100.4"
    )


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("done", Ack(True, "done")),
        ("error\n", Ack(False, "error")),
        ("shutdown", Ack(False, "shutdown")),
        ('{ "answer": "done", "message": "command completed" }', Ack(True, "done")),
        ('{"exabgp": "5.0.0", "type": "keepalive", "neighbor": {}}', IgnoredEvent("keepalive")),
        (
            '{"exabgp": "5.0.0", "type": "notification", "notification": "shutdown"}',
            ShutdownEvent(),
        ),
    ],
)
def test_small_lines(line: str, expected: Event) -> None:
    assert parse_line(line) == expected


def _update(update: dict[str, Any]) -> str:
    return json.dumps(
        {
            "exabgp": "5.0.0",
            "type": "update",
            "neighbor": {
                "address": {"local": "198.51.100.1", "peer": "198.51.100.2"},
                "asn": {"local": 64512, "peer": 64513},
                "direction": "receive",
                "message": {"update": update},
            },
        }
    )


def test_as_set_ipv6_family_ignored_and_several_next_hops() -> None:
    ev = parse_line(
        _update(
            {
                "attribute": {
                    "origin": "igp",
                    "as-path": {
                        "0": {"element": "as-sequence", "value": [64513]},
                        "1": {"element": "as-set", "value": [1, 2, 3]},
                    },
                },
                "announce": {
                    "ipv4 unicast": {
                        "198.51.100.2": [{"nlri": "10.1.0.0/26"}],
                        "198.51.100.3": [{"nlri": "10.2.0.0/26"}],
                    },
                    "ipv6 unicast": {"2001:db8::1": [{"nlri": "2001:db8:1::/64"}]},
                },
                "withdraw": {"ipv4 unicast": [{"nlri": "10.3.0.0/26"}]},
            }
        )
    )
    assert isinstance(ev, UpdateEvent)
    assert [(str(a.prefix), str(a.next_hop)) for a in ev.announced] == [
        ("10.1.0.0/26", "198.51.100.2"),
        ("10.2.0.0/26", "198.51.100.3"),
    ]
    assert ev.withdrawn == (ip_network("10.3.0.0/26"),)
    paths = {p: path for path, ps in ev.path_groups(IPv4Address("198.51.100.2")) for p in ps}
    p = paths[IPv4Network("10.1.0.0/26")]
    assert p.as_path_length == 2 and p.ebgp and p.neighbour_as == 64513


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "expected an object"),
        ('{"type": "state"}', "neighbor: expected an object"),
        (
            _update({"announce": {"ipv4 unicast": {"198.51.100.2": [{"nlri": "10.0.0.0/33"}]}}}),
            "invalid prefix",
        ),
        (
            _update({"announce": {"ipv4 unicast": {"x": [{"nlri": "10.0.0.0/24"}]}}}),
            "invalid address",
        ),
        (_update({"attribute": {"origin": "weird"}}), "unknown origin"),
        (_update({"attribute": {"med": "10"}}), "expected an integer"),
    ],
)
def test_bad_lines_raise_api_error(line: str, message: str) -> None:
    with pytest.raises(ExabgpApiError, match=message):
        parse_line(line)


def test_commands_render_as_captured() -> None:
    """The commands sent in the capture, rebuilt from typed values (ExaBGP answered done)."""
    sent = capture("a")["commands_sent"]
    b = ip_address("198.51.100.2")
    assert announce_route(b, ip_network("10.65.1.0/26"), None, local_pref=100, med=10) == sent[0]
    assert (
        announce_route(
            b,
            ip_network("10.65.2.0/26"),
            ip_address("198.51.100.1"),
            origin=Origin.EGP,
            as_path=[64600, 64601],
            local_pref=200,
            med=50,
            originator_id=IPv4Address("198.51.100.9"),
            cluster_list=[IPv4Address("198.51.100.1"), IPv4Address("198.51.100.7")],
        )
        == sent[1]
    )
    assert (
        announce_route(
            b, ip_network("10.65.3.0/26"), ip_address("198.51.100.1"), origin=Origin.INCOMPLETE
        )
        == sent[2]
    )
    assert withdraw_route(b, ip_network("10.65.3.0/26")) == sent[3]
    assert announce_eor(b) == sent[5]
    assert teardown(b) == sent[-1]
    assert announce_eor(None) == "announce eor ipv4 unicast"


def test_ack_tracker_matches_in_order_and_counts_errors() -> None:
    t = AckTracker(window=2)
    assert t.can_send()
    s0 = t.sent("announce route 10.0.0.0/26 next-hop self origin igp")
    s1 = t.sent("bogus")
    assert not t.can_send() and t.pending == 2
    r0 = t.on_ack(Ack(True, "done"))
    assert (r0.seq, r0.ok) == (s0, True)
    r1 = t.on_ack(Ack(False, "error"))
    assert (r1.seq, r1.command, r1.ok) == (s1, "bogus", False)
    assert t.errors == 1 and t.pending == 0
    with pytest.raises(ExabgpApiError, match="no command in flight"):
        t.on_ack(Ack(True, "done"))
    t.sent("x")
    assert t.reset() == ("x",) and t.pending == 0


def test_ack_tracker_on_captured_stream() -> None:
    """Acks interleave with events in the capture; the tracker pairs them with what was sent."""
    doc = capture("a")
    t = AckTracker()
    for cmd in doc["commands_sent"]:
        t.sent(cmd)
    results = [t.on_ack(e) for e in events("a") if isinstance(e, Ack)]
    assert t.pending == 0
    failed = [r.command for r in results if not r.ok]
    assert failed == ["neighbor 198.51.100.2 announce route nonsense"]


def _raw(body: str, peer: str = "198.51.100.2", direction: str = "receive") -> str:
    return json.dumps(
        {
            "exabgp": "5.0.0",
            "type": "update",
            "neighbor": {
                "address": {"local": "198.51.100.1", "peer": peer},
                "asn": {"local": 64512, "peer": 64512},
                "direction": direction,
                "message": {
                    "category": 2,
                    "header": "0x" + "FF" * 16 + "0017" + "02",
                    "body": body,
                },
            },
        }
    )


def test_a_raw_update_line_carries_its_bytes_and_decodes() -> None:
    ev = parse_line(_raw("0x0000000E40010100400200400304C6336402" + "1A0A400040"))
    assert isinstance(ev, RawUpdateEvent)
    assert ev.session.peer == IPv4Address("198.51.100.2")
    upd = decode_raw(ev)
    assert isinstance(upd, UpdateEvent)
    assert [(str(a.prefix), str(a.next_hop)) for a in upd.announced] == [
        ("10.64.0.64/26", "198.51.100.2")
    ]
    eor = decode_raw(parse_line(_raw("0x00000000")))  # type: ignore[arg-type]
    assert eor == EorEvent(ev.session, "ipv4", "unicast")


@pytest.mark.parametrize("body", ["0x0000GG00", "00000000", "0x000"])
def test_a_raw_update_line_with_bad_hex_is_rejected_and_names_its_peer(body: str) -> None:
    line = _raw(body)
    with pytest.raises(ExabgpApiError):
        parse_line(line)
    assert unreadable_update_peer(line) == IPv4Address("198.51.100.2")


@pytest.mark.parametrize(
    "line",
    [
        "not json",
        '{"type": "update"}',
        '{"type": "state", "neighbor": {"address": {"peer": "198.51.100.2"}}}',
        '{"type": "update", "neighbor": {"address": {"peer": "198.51.100.2"},'
        ' "message": {"update": {}}}}',
        '{"type": "update", "neighbor": {"address": {"peer": "nope"}, "message": {"body": "0x"}}}',
        _raw("0x00", direction="send"),
    ],
)
def test_unreadable_update_peer_only_for_received_update_bytes(line: str) -> None:
    assert unreadable_update_peer(line) is None
