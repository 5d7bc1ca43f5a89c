"""The ExaBGP API protocol: JSON events in, text commands out, acknowledgements tracked.

Role: sans-I/O codec between ``tabby-bgp`` and its ExaBGP child. ExaBGP writes one line per
event to the API process's stdin (JSON with ``encoder json``) interleaved with one ``done`` /
``error`` line per command it received on the process's stdout. ``parse_line`` turns a line into
a typed event; ``announce_route`` / ``withdraw_route`` / ``announce_eor`` / ``teardown`` render
commands; ``AckTracker`` matches acknowledgements to commands (ExaBGP answers in order).

Received UPDATEs come as their bytes (the API's ``packets`` output, ``RawUpdateEvent``;
``decode_raw`` turns them into ``UpdateEvent`` / ``EorEvent`` with ``bgp.wire``): tabby's
ExaBGP does not decode them (``bgp.exabgp_launch``). The parsed JSON form of an UPDATE is still
understood (an unpatched ExaBGP sends it as well; the agent ignores it then, the bytes count).

Inputs: lines (without the trailing newline) read from ExaBGP.
Outputs: ``StateEvent``, ``OpenEvent``, ``RawUpdateEvent``, ``UpdateEvent``, ``EorEvent``,
``NotificationEvent``, ``ShutdownEvent``, ``Ack``, ``IgnoredEvent``; command strings (no
newline).

JSON shapes (captured from ExaBGP 5.0.15, fixtures in ``tests/data/exabgp/``; note that
ExaBGP 5.0.15 reports ``"exabgp": "5.0.0"``)::

    {"exabgp": "5.0.0", "time": T, "host": H, "pid": P, "ppid": PP, "counter": N,
     "type": "state", "neighbor": {"address": {"local": L, "peer": R},
     "asn": {"local": 64512, "peer": 64512}, "router-id": OUR_ID,
     "state": "connected" | "up" | "down", "reason": "..."}}
    ... "type": "open", "neighbor": {..., "direction": "receive",
        "open": {"version": 4, "asn": A, "hold_time": 90, "router_id": THEIR_ID,
                 "capabilities": {"64": {"name": "graceful restart", "time": 120, ...}}}}
    ... "type": "update", "neighbor": {..., "direction": "receive", "message": {"update": {
        "attribute": {"origin": "egp", "as-path": {"0": {"element": "as-sequence",
        "value": [64600, 64601]}}, "med": 50, "local-preference": 200,
        "originator-id": "198.51.100.9", "cluster-list": ["198.51.100.1", "198.51.100.7"]},
        "announce": {"ipv4 unicast": {"198.51.100.1": [{"nlri": "10.65.2.0/26"}]}},
        "withdraw": {"ipv4 unicast": [{"nlri": "10.65.3.0/26"}]}}}}}
    ... "type": "update", "neighbor": {..., "message": {"eor": {"afi": "ipv4", "safi": "unicast"}}}
    ... "type": "update", "neighbor": {..., "direction": "receive",
        "message": {"category": 2, "header": "0xFFFF...", "body": "0x0000001C4001..."}}
                                                        (``packets``: the bytes, upper-case hex)
    ... "type": "notification", "neighbor": {..., "direction": "receive",
        "notification": {"code": 6, "subcode": 2, "data": "0x", "message": ""}}}
    ... "type": "notification", "notification": "shutdown"}          (ExaBGP is exiting)

Facts the parser relies on (measured):
- ``router-id`` in the ``neighbor`` object is *our* router id; the peer's is in its OPEN.
- ExaBGP names confederation segments ``as-sequence`` too, so they cannot be told apart; an
  ``as-set`` counts as one hop.
- A withdrawal carries no attributes; an update may carry both announcements and withdrawals,
  and several next hops per family.
- A session that goes down produces ``state: down`` only: no withdrawals follow, the receiver
  must drop (or, with graceful restart, mark stale) that peer's routes itself.
- An unknown command is answered ``error``; ExaBGP then continues.

Invariants: parsing never raises anything but ``ExabgpApiError`` (bad JSON, bad shape, bad
address); families other than ``ipv4 unicast`` are ignored, not errors. Commands are rendered
only from typed values, so nothing received can inject a command.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, ip_address
from typing import Literal

from bgp.model import AsSegment, IPAddress, IPNetwork, Origin, Path, PathAttributes, parse_prefix
from bgp.wire import decode_update, family_name

log = logging.getLogger(__name__)

__all__ = [
    "Ack",
    "AckResult",
    "AckTracker",
    "Announcement",
    "EorEvent",
    "Event",
    "ExabgpApiError",
    "IgnoredEvent",
    "NotificationEvent",
    "OpenEvent",
    "PathAttributes",
    "RawUpdateEvent",
    "Session",
    "ShutdownEvent",
    "StateEvent",
    "UpdateEvent",
    "announce_eor",
    "announce_route",
    "decode_raw",
    "parse_line",
    "teardown",
    "unreadable_update_peer",
    "withdraw_route",
]

_FAMILY = "ipv4 unicast"
_ORIGINS = {"igp": Origin.IGP, "egp": Origin.EGP, "incomplete": Origin.INCOMPLETE}


class ExabgpApiError(Exception):
    """A line from ExaBGP that cannot be understood, or an ack that matches no command."""


# ---------------------------------------------------------------------------------------------
# events


@dataclass(frozen=True, slots=True)
class Session:
    """Which session an event belongs to."""

    peer: IPAddress
    local: IPAddress
    peer_as: int
    local_as: int

    @property
    def ebgp(self) -> bool:
        return self.peer_as != self.local_as


@dataclass(frozen=True, slots=True)
class StateEvent:
    session: Session
    state: Literal["connected", "up", "down"] | str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class OpenEvent:
    session: Session
    direction: str
    router_id: IPv4Address
    asn: int
    hold_time: int
    graceful_restart_time: int | None
    asn4: bool = True  # the OPEN carried capability 65 (4-octet AS numbers, RFC 6793)


@dataclass(frozen=True, slots=True)
class Announcement:
    prefix: IPv4Network
    next_hop: IPAddress


@dataclass(frozen=True, slots=True)
class UpdateEvent:
    """A received UPDATE: ``reach`` holds the announced prefixes grouped by next hop.

    ``problem`` is non-empty when RFC 7606 treat-as-withdraw applied (a malformed attribute):
    the announced prefixes are then in ``withdrawn``."""

    session: Session
    attributes: PathAttributes
    reach: tuple[tuple[IPAddress, tuple[IPv4Network, ...]], ...]
    withdrawn: tuple[IPv4Network, ...]
    problem: str = ""

    @property
    def announced(self) -> tuple[Announcement, ...]:
        """Every announced prefix with its next hop."""
        return tuple(Announcement(p, hop) for hop, prefixes in self.reach for p in prefixes)

    @property
    def size(self) -> int:
        """How many prefixes the UPDATE names (announced and withdrawn)."""
        return sum(len(prefixes) for _hop, prefixes in self.reach) + len(self.withdrawn)

    def prefixes(self) -> tuple[IPv4Network, ...]:
        """Every prefix the UPDATE names, announced or withdrawn."""
        return (*(p for _hop, prefixes in self.reach for p in prefixes), *self.withdrawn)

    def path_groups(
        self, router_id: IPv4Address | None
    ) -> list[tuple[Path, tuple[IPv4Network, ...]]]:
        """The announced routes as RIB paths (``router_id``: the peer's, from its OPEN), one
        ``Path`` value per next hop with the prefixes that share it (a path does not name its
        prefix): an UPDATE of 800 prefixes builds one."""
        a = self.attributes
        return [
            (
                Path(
                    next_hop=hop,
                    peer=self.session.peer,
                    origin=a.origin,
                    as_path=a.as_path,
                    local_pref=a.local_pref,
                    med=a.med,
                    originator_id=a.originator_id,
                    cluster_list=a.cluster_list,
                    ebgp=self.session.ebgp,
                    router_id=router_id,
                ),
                prefixes,
            )
            for hop, prefixes in self.reach
        ]


@dataclass(frozen=True, slots=True)
class RawUpdateEvent:
    """A received UPDATE as ExaBGP read it off the wire (its API's ``packets`` output): the
    message body after the 19-octet header, for ``decode_raw``."""

    session: Session
    body: bytes


@dataclass(frozen=True, slots=True)
class EorEvent:
    session: Session
    afi: str
    safi: str


@dataclass(frozen=True, slots=True)
class NotificationEvent:
    session: Session
    direction: str
    code: int
    subcode: int
    data: str
    message: str


@dataclass(frozen=True, slots=True)
class ShutdownEvent:
    """ExaBGP announced that it is exiting."""


@dataclass(frozen=True, slots=True)
class Ack:
    """``done`` (ok) or ``error`` (not ok); ``shutdown`` answers are ``ok=False``."""

    ok: bool
    text: str


@dataclass(frozen=True, slots=True)
class IgnoredEvent:
    """A well-formed message tabby has no use for (keepalive, fsm, negotiated, ...)."""

    type: str


Event = (
    StateEvent
    | OpenEvent
    | UpdateEvent
    | RawUpdateEvent
    | EorEvent
    | NotificationEvent
    | ShutdownEvent
    | Ack
    | IgnoredEvent
)


# ---------------------------------------------------------------------------------------------
# parsing


def _obj(value: object, where: str) -> Mapping[str, object]:
    if not isinstance(value, dict):
        raise ExabgpApiError(f"{where}: expected an object")
    return value


def _int(value: object, where: str) -> int:
    if type(value) is not int:
        raise ExabgpApiError(f"{where}: expected an integer, got {value!r}")
    return value


def _str(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise ExabgpApiError(f"{where}: expected a string, got {value!r}")
    return value


def _addr(value: object, where: str) -> IPAddress:
    try:
        return ip_address(_str(value, where))
    except ValueError:
        raise ExabgpApiError(f"{where}: invalid address {value!r}") from None


def _v4(value: object, where: str) -> IPv4Address:
    a = _addr(value, where)
    if not isinstance(a, IPv4Address):
        raise ExabgpApiError(f"{where}: expected an IPv4 address, got {value!r}")
    return a


def _prefix(value: object, where: str) -> IPv4Network:
    nlri = value.get("nlri") if type(value) is dict else _obj(value, where).get("nlri")
    try:
        return parse_prefix(nlri) if type(nlri) is str else parse_prefix(_str(nlri, where))
    except ValueError:
        raise ExabgpApiError(f"{where}.nlri: invalid prefix {nlri!r} (expected IPv4)") from None


def _session(n: Mapping[str, object]) -> Session:
    address = _obj(n.get("address"), "neighbor.address")
    asn = _obj(n.get("asn"), "neighbor.asn")
    return Session(
        peer=_addr(address.get("peer"), "neighbor.address.peer"),
        local=_addr(address.get("local"), "neighbor.address.local"),
        peer_as=_int(asn.get("peer"), "neighbor.asn.peer"),
        local_as=_int(asn.get("local"), "neighbor.asn.local"),
    )


def _as_path(value: object) -> tuple[AsSegment, ...]:
    segments = _obj(value, "attribute.as-path")
    out: list[AsSegment] = []
    for key in sorted(segments, key=lambda k: int(k) if k.isdigit() else -1):
        seg = _obj(segments[key], f"attribute.as-path.{key}")
        element = _str(seg.get("element"), f"attribute.as-path.{key}.element")
        values = seg.get("value")
        if not isinstance(values, list):
            raise ExabgpApiError(f"attribute.as-path.{key}.value: expected a list")
        asns = tuple(_int(v, f"attribute.as-path.{key}.value") for v in values)
        out.append(AsSegment(asns, is_set=element.endswith("set")))
    return tuple(out)


def _attributes(value: object) -> PathAttributes:
    if value is None:
        return PathAttributes()
    attrs = _obj(value, "attribute")
    origin_text = attrs.get("origin", "igp")
    origin = _ORIGINS.get(_str(origin_text, "attribute.origin"))
    if origin is None:
        raise ExabgpApiError(f"attribute.origin: unknown origin {origin_text!r}")
    as_path = _as_path(attrs["as-path"]) if "as-path" in attrs else ()
    lp = attrs.get("local-preference")
    med = attrs.get("med")
    orig = attrs.get("originator-id")
    clusters = attrs.get("cluster-list", [])
    if not isinstance(clusters, list):
        raise ExabgpApiError("attribute.cluster-list: expected a list")
    return PathAttributes(
        origin=origin,
        as_path=as_path,
        local_pref=None if lp is None else _int(lp, "attribute.local-preference"),
        med=None if med is None else _int(med, "attribute.med"),
        originator_id=None if orig is None else _v4(orig, "attribute.originator-id"),
        cluster_list=tuple(_v4(c, "attribute.cluster-list") for c in clusters),
    )


def _update(
    session: Session, message: Mapping[str, object]
) -> UpdateEvent | EorEvent | RawUpdateEvent:
    if "body" in message:  # the packets output: {"category": 2, "header": H, "body": "0x.."}
        body = _str(message["body"], "message.body")
        if not body.startswith("0x"):
            raise ExabgpApiError(f"message.body: expected 0x and hex digits, got {body[:40]!r}")
        try:
            return RawUpdateEvent(session, bytes.fromhex(body[2:]))
        except ValueError:
            raise ExabgpApiError(f"message.body: not hex: {body[:40]!r}") from None
    if "eor" in message:
        eor = _obj(message["eor"], "message.eor")
        return EorEvent(session, _str(eor.get("afi"), "eor.afi"), _str(eor.get("safi"), "eor.safi"))
    update = _obj(message.get("update"), "message.update")
    reach: list[tuple[IPAddress, tuple[IPv4Network, ...]]] = []
    announce = _obj(update.get("announce", {}), "update.announce")
    by_nexthop = announce.get(_FAMILY)
    if by_nexthop is not None:
        for nh_text, nlris in _obj(by_nexthop, f"announce.{_FAMILY}").items():
            nh = _addr(nh_text, f"announce.{_FAMILY} next hop")
            if not isinstance(nlris, list):
                raise ExabgpApiError(f"announce.{_FAMILY}.{nh_text}: expected a list")
            reach.append((nh, tuple(_prefix(x, f"announce.{nh_text}") for x in nlris)))
    withdrawn: list[IPv4Network] = []
    withdraw = _obj(update.get("withdraw", {}), "update.withdraw")
    nlris = withdraw.get(_FAMILY)
    if nlris is not None:
        if not isinstance(nlris, list):
            raise ExabgpApiError(f"withdraw.{_FAMILY}: expected a list")
        withdrawn = [_prefix(x, f"withdraw.{_FAMILY}") for x in nlris]
    return UpdateEvent(
        session, _attributes(update.get("attribute")), tuple(reach), tuple(withdrawn)
    )


def _open(session: Session, n: Mapping[str, object]) -> OpenEvent:
    o = _obj(n.get("open"), "neighbor.open")
    caps = _obj(o.get("capabilities", {}), "open.capabilities")
    gr: int | None = None
    gr_cap = caps.get("64")
    if isinstance(gr_cap, dict) and type(gr_cap.get("time")) is int:
        gr = gr_cap["time"]
    return OpenEvent(
        session=session,
        direction=_str(n.get("direction", ""), "neighbor.direction"),
        router_id=_v4(o.get("router_id"), "open.router_id"),
        asn=_int(o.get("asn"), "open.asn"),
        hold_time=_int(o.get("hold_time"), "open.hold_time"),
        graceful_restart_time=gr,
        asn4="65" in caps,
    )


def parse_line(line: str) -> Event:
    """One line from ExaBGP as an event (raises ``ExabgpApiError``)."""
    text = line.strip()
    if text in ("done", "error", "shutdown"):
        return Ack(text == "done", text)
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ExabgpApiError(f"not JSON: {text[:120]!r} ({exc})") from None
    msg = _obj(doc, "message")
    if "answer" in msg:  # acks in JSON form ({"answer": "done", ...})
        answer = _str(msg["answer"], "answer")
        return Ack(answer == "done", answer)
    mtype = _str(msg.get("type"), "type")
    if mtype == "notification" and msg.get("notification") == "shutdown":
        return ShutdownEvent()
    if mtype not in ("state", "open", "update", "notification"):
        return IgnoredEvent(mtype)
    n = _obj(msg.get("neighbor"), "neighbor")
    session = _session(n)
    direction = n.get("direction", "")
    if mtype == "state":
        return StateEvent(
            session,
            _str(n.get("state"), "neighbor.state"),
            _str(n.get("reason", ""), "neighbor.reason"),
        )
    if mtype == "open":
        if "open" not in n:  # the packets output of an OPEN: the parsed one follows
            return IgnoredEvent("open-packets")
        return _open(session, n)
    if direction == "send":
        return IgnoredEvent(f"{mtype}-send")
    if mtype == "update":
        return _update(session, _obj(n.get("message"), "neighbor.message"))
    if "notification" not in n:  # the packets output: the parsed one follows
        return IgnoredEvent("notification-packets")
    note = _obj(n.get("notification"), "neighbor.notification")
    return NotificationEvent(
        session=session,
        direction=_str(direction, "neighbor.direction"),
        code=_int(note.get("code"), "notification.code"),
        subcode=_int(note.get("subcode"), "notification.subcode"),
        data=_str(note.get("data", ""), "notification.data"),
        message=_str(note.get("message", ""), "notification.message"),
    )


def decode_raw(ev: RawUpdateEvent, *, asn4: bool = True) -> UpdateEvent | EorEvent:
    """The routes of a raw UPDATE (``asn4``: whether the session uses 4-octet AS numbers).
    Raises ``bgp.wire.UpdateMessageError`` when the message cannot be delimited (the session
    must be reset)."""
    w = decode_update(ev.body, asn4=asn4)
    if w.eor is not None:
        return EorEvent(ev.session, *family_name(*w.eor))
    return UpdateEvent(ev.session, w.attributes, w.reach, w.withdrawn, w.problem)


def unreadable_update_peer(line: str) -> IPAddress | None:
    """For a line ``parse_line`` rejected: the peer, when the line is the bytes of an UPDATE
    received from it (the ``packets`` output). Its routes are then unknown: RFC 7606 asks for
    a session reset. None for any other line (parsed UPDATEs are copies the agent ignores)."""
    try:
        doc = json.loads(line)
        n = doc["neighbor"]
        if doc.get("type") != "update" or n.get("direction", "receive") != "receive":
            return None
        if "body" not in n["message"]:
            return None
        return ip_address(n["address"]["peer"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


# ---------------------------------------------------------------------------------------------
# commands


def _target(neighbor: IPAddress | None) -> str:
    return "" if neighbor is None else f"neighbor {neighbor} "


def announce_route(
    neighbor: IPAddress | None,
    prefix: IPNetwork,
    next_hop: IPAddress | None,
    *,
    origin: Origin = Origin.IGP,
    as_path: Sequence[int] = (),
    local_pref: int | None = None,
    med: int | None = None,
    originator_id: IPv4Address | None = None,
    cluster_list: Sequence[IPv4Address] = (),
) -> str:
    """``[neighbor X ]announce route P next-hop N|self origin O [as-path [ .. ]] ...``.

    ``neighbor=None`` sends to every neighbour; ``next_hop=None`` means ``self``. Only an
    explicitly configured neighbour can be targeted (a range neighbour accepts and drops it).
    """
    parts = [
        f"{_target(neighbor)}announce route {prefix}",
        f"next-hop {'self' if next_hop is None else next_hop}",
        f"origin {origin.name.lower()}",
    ]
    if as_path:
        parts.append("as-path [ " + " ".join(str(int(a)) for a in as_path) + " ]")
    if local_pref is not None:
        parts.append(f"local-preference {int(local_pref)}")
    if med is not None:
        parts.append(f"med {int(med)}")
    if originator_id is not None:
        parts.append(f"originator-id {originator_id}")
    if cluster_list:
        parts.append("cluster-list [ " + " ".join(str(c) for c in cluster_list) + " ]")
    return " ".join(parts)


def withdraw_route(neighbor: IPAddress | None, prefix: IPNetwork) -> str:
    """``[neighbor X ]withdraw route P``."""
    return f"{_target(neighbor)}withdraw route {prefix}"


def announce_eor(neighbor: IPAddress | None, afi: str = "ipv4", safi: str = "unicast") -> str:
    """``[neighbor X ]announce eor ipv4 unicast`` (needed with ``manual-eor true``)."""
    return f"{_target(neighbor)}announce eor {afi} {safi}"


def teardown(neighbor: IPAddress, subcode: int = 2) -> str:
    """``neighbor X teardown N``: drop the session (measured: with graceful restart negotiated,
    ExaBGP closes without sending a NOTIFICATION)."""
    return f"neighbor {neighbor} teardown {int(subcode)}"


# ---------------------------------------------------------------------------------------------
# acknowledgements


@dataclass(frozen=True, slots=True)
class AckResult:
    """A command and how ExaBGP answered it."""

    seq: int
    command: str
    ok: bool


class AckTracker:
    """Commands in flight, matched to ExaBGP's in-order ``done``/``error`` answers.

    ``sent(cmd)`` records a command written to ExaBGP and returns its sequence number;
    ``on_ack(ack)`` pops the oldest command in flight and returns it with the answer. An ack
    with nothing in flight is a protocol error (raises ``ExabgpApiError``). ``pending`` counts
    the commands not yet answered; the agent bounds it (``window``) so that it never writes
    faster than ExaBGP reads.
    """

    __slots__ = ("_next", "_pending", "errors", "window")

    def __init__(self, window: int = 1000) -> None:
        self._pending: deque[tuple[int, str]] = deque()
        self._next = 0
        self.window = window
        self.errors = 0

    @property
    def pending(self) -> int:
        return len(self._pending)

    def can_send(self) -> bool:
        return len(self._pending) < self.window

    def in_flight(self) -> tuple[str, ...]:
        return tuple(cmd for _seq, cmd in self._pending)

    def sent(self, command: str) -> int:
        seq = self._next
        self._next += 1
        self._pending.append((seq, command))
        return seq

    def on_ack(self, ack: Ack) -> AckResult:
        if not self._pending:
            raise ExabgpApiError(f"ack {ack.text!r} with no command in flight")
        seq, command = self._pending.popleft()
        if not ack.ok:
            self.errors += 1
            log.warning("exabgp.command_failed seq=%d answer=%s command=%s", seq, ack.text, command)
        return AckResult(seq, command, ack.ok)

    def reset(self) -> tuple[str, ...]:
        """Forget everything in flight (ExaBGP restarted); returns the lost commands."""
        lost = self.in_flight()
        self._pending.clear()
        return lost
