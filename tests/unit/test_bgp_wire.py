"""bgp.wire: UPDATE bodies decoded as ExaBGP's own decoder reads them, and the RFC 7606 errors.

ExaBGP (installed with tabby) is the independent oracle: most messages here are built with its
encoder (``Update.messages``, ``Attributes.pack``, ``MPRNLRI`` / ``MPURNLRI``) and every result
is compared with what ``Update.unpack_message`` makes of the same bytes. Where ExaBGP's answer
differs from RFC 7606 on purpose-built malformed input (it keeps an invalid ORIGIN, resets on a
bad CLUSTER_LIST, does not check for missing mandatory attributes), the bytes are built with
``struct`` per RFC 4271 and the expected values are written out.
"""

from __future__ import annotations

import importlib
import logging
import random
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, ip_address
from typing import Any

import pytest

from bgp.model import AsSegment, IPAddress, Origin, Path, PathAttributes, Prefix
from bgp.wire import UpdateMessageError, WireUpdate, decode_update, family_name

# ---------------------------------------------------------------------------------------------
# ExaBGP (no type information: every module is Any here)


def _exa(name: str) -> Any:
    return importlib.import_module(name)


_LOG_OPTION: Any = _exa("exabgp.logger.option").option
_FAMILY: Any = _exa("exabgp.protocol.family")
_IP: Any = _exa("exabgp.protocol.ip")
_ASN: Any = _exa("exabgp.bgp.message.open.asn")
_CAPABILITY: Any = _exa("exabgp.bgp.message.open.capability")
_NEIGHBOR: Any = _exa("exabgp.bgp.neighbor")
_MESSAGE: Any = _exa("exabgp.bgp.message")
_DIRECTION: Any = _exa("exabgp.bgp.message.direction")
_ATTR: Any = _exa("exabgp.bgp.message.update.attribute")
_COMMUNITY: Any = _exa("exabgp.bgp.message.update.attribute.community.initial.community")
_NLRI: Any = _exa("exabgp.bgp.message.update.nlri")
_CIDR: Any = _exa("exabgp.bgp.message.update.nlri.cidr")
_EOR: Any = _exa("exabgp.bgp.message.update.eor")
_NOTIFY: Any = _exa("exabgp.bgp.message.notification").Notify

AFI: Any = _FAMILY.AFI
SAFI: Any = _FAMILY.SAFI
ACTION: Any = _MESSAGE.Action
CODE: Any = _ATTR.Attribute.CODE
SEGMENT_CLASSES: dict[int, Any] = {
    1: _ATTR.SET,
    2: _ATTR.SEQUENCE,
    3: _ATTR.CONFED_SEQUENCE,
    4: _ATTR.CONFED_SET,
}
AS_TRANS = 23456
TREAT_AS_WITHDRAW = 0xFFFF  # ExaBGP's internal attribute code for it


def _negotiated(asn4: bool) -> Any:
    """A session as ExaBGP's reactor would have negotiated it: iBGP in AS 64512, IPv4 and IPv6
    unicast and multicast, RFC 8950 IPv6 next hops for IPv4 unicast, no ADD-PATH.

    A fresh one per message: ExaBGP caches the last attribute set on it."""
    if _LOG_OPTION.logger is None:  # ExaBGP reads ``option.logger.debug`` even with logging off
        _LOG_OPTION.logger = logging.getLogger("tests.exabgp-oracle")
    neg = _CAPABILITY.Negotiated(_NEIGHBOR.Neighbor())
    neg.asn4 = asn4
    neg.local_as = _ASN.ASN(64512)
    neg.peer_as = _ASN.ASN(64512)
    neg.families = [
        (AFI.ipv4, SAFI.unicast),
        (AFI.ipv6, SAFI.unicast),
        (AFI.ipv4, SAFI.multicast),
        (AFI.ipv6, SAFI.multicast),
    ]
    neg.nexthop = [(AFI.ipv4, SAFI.unicast, AFI.ipv6)]
    return neg


# ---------------------------------------------------------------------------------------------
# encoding with ExaBGP


def _exa_nlri(
    value: int,
    plen: int,
    action: Any,
    next_hop: str | None = None,
    afi: Any = None,
    safi: Any = None,
) -> Any:
    """An ExaBGP NLRI; ``value`` may carry bits beyond ``plen`` (they go on the wire)."""
    afi = AFI.ipv4 if afi is None else afi
    nlri = _NLRI.INET(afi, SAFI.unicast if safi is None else safi, action)
    size = 16 if afi == AFI.ipv6 else 4
    nlri.cidr = _CIDR.CIDR(value.to_bytes(size, "big"), plen)
    if next_hop is not None:
        nlri.nexthop = _IP.IP.create(next_hop)
    return nlri


def _announce(prefix: str, next_hop: str = "192.0.2.1") -> Any:
    net = IPv4Network(prefix)
    return _exa_nlri(int(net.network_address), net.prefixlen, ACTION.ANNOUNCE, next_hop)


def _withdraw(prefix: str) -> Any:
    net = IPv4Network(prefix)
    return _exa_nlri(int(net.network_address), net.prefixlen, ACTION.WITHDRAW)


@dataclass
class Attrs:
    """Path attributes to encode with ExaBGP (None: absent)."""

    origin: int | None = 0
    as_path: Sequence[tuple[int, Sequence[int]]] | None = ((2, (65001,)),)
    next_hop: str | None = "192.0.2.1"
    local_pref: int | None = None
    med: int | None = None
    originator_id: str | None = None
    cluster_list: Sequence[str] | None = None
    communities: Sequence[int] = field(default_factory=tuple)
    aggregator: tuple[int, str] | None = None

    def exabgp(self) -> Any:
        attributes = _ATTR.Attributes()
        if self.origin is not None:
            attributes.add(_ATTR.Origin(self.origin))
        if self.as_path is not None:
            segments = [
                SEGMENT_CLASSES[kind]([_ASN.ASN(a) for a in asns]) for kind, asns in self.as_path
            ]
            attributes.add(_ATTR.ASPath(segments))
        if self.next_hop is not None:
            attributes.add(_ATTR.NextHop(self.next_hop))
        if self.local_pref is not None:
            attributes.add(_ATTR.LocalPreference(self.local_pref))
        if self.med is not None:
            attributes.add(_ATTR.MED(self.med))
        if self.originator_id is not None:
            attributes.add(_ATTR.OriginatorID(self.originator_id))
        if self.cluster_list is not None:
            attributes.add(_ATTR.ClusterList([_ATTR.ClusterID(c) for c in self.cluster_list]))
        if self.communities:
            communities = _ATTR.Communities()
            for c in self.communities:
                communities.add(_COMMUNITY.Community(struct.pack("!L", c)))
            attributes.add(communities)
        if self.aggregator is not None:
            asn, speaker = self.aggregator
            attributes.add(_ATTR.Aggregator(_ASN.ASN(asn), _IP.IPv4.create(speaker)))
        return attributes

    def expected(self, *, via_messages: bool = False) -> PathAttributes:
        """What tabby should report for these attributes (sent as they are). ``Update.messages``
        adds LOCAL_PREF 100 on an iBGP session when there is none (``via_messages``)."""
        local_pref = 100 if via_messages and self.local_pref is None else self.local_pref
        return PathAttributes(
            origin=Origin(self.origin or 0),
            as_path=tuple(
                AsSegment(tuple(asns), is_set=kind in (1, 4), confed=kind in (3, 4))
                for kind, asns in self.as_path or ()
            ),
            local_pref=local_pref,
            med=self.med,
            originator_id=None if self.originator_id is None else IPv4Address(self.originator_id),
            cluster_list=tuple(IPv4Address(c) for c in self.cluster_list or ()),
        )


def _exa_messages(nlris: Sequence[Any], attrs: Attrs, asn4: bool = True) -> list[bytes]:
    """ExaBGP's own UPDATE messages for these routes, as bodies (the 19-octet header cut)."""
    neg = _negotiated(asn4)
    out = []
    for message in _MESSAGE.Update(list(nlris), attrs.exabgp()).messages(neg):
        assert message[:16] == b"\xff" * 16 and message[18] == 2
        assert int.from_bytes(message[16:18], "big") == len(message)
        out.append(bytes(message[19:]))
    return out


def _exa_one_message(nlris: Sequence[Any], attrs: Attrs, asn4: bool = True) -> bytes:
    messages = _exa_messages(nlris, attrs, asn4)
    assert len(messages) == 1
    return messages[0]


def _exa_body(
    withdrawn: Sequence[Any] = (),
    attrs: Attrs | None = None,
    announced: Sequence[Any] = (),
    extra_attributes: bytes = b"",
    asn4: bool = True,
) -> bytes:
    """One body from ExaBGP's encoded parts (``Update.messages`` never mixes withdrawals,
    announcements and MP attributes in one message; a peer may)."""
    neg = _negotiated(asn4)
    packed_withdrawn = b"".join(n.pack_nlri(neg) for n in withdrawn)
    packed_attributes = b"" if attrs is None else attrs.exabgp().pack(neg, with_default=False)
    packed_attributes += extra_attributes
    packed_nlri = b"".join(n.pack_nlri(neg) for n in announced)
    return (
        struct.pack("!H", len(packed_withdrawn))
        + packed_withdrawn
        + struct.pack("!H", len(packed_attributes))
        + packed_attributes
        + packed_nlri
    )


def _exa_mp_reach(nlris: Sequence[Any], asn4: bool = True) -> bytes:
    afi, safi = nlris[0].afi, nlris[0].safi
    parts = list(_ATTR.MPRNLRI(afi, safi, list(nlris)).packed_attributes(_negotiated(asn4), 4000))
    assert len(parts) == 1
    return bytes(parts[0])


def _exa_mp_unreach(nlris: Sequence[Any], asn4: bool = True) -> bytes:
    afi, safi = nlris[0].afi, nlris[0].safi
    parts = list(_ATTR.MPURNLRI(afi, safi, list(nlris)).packed_attributes(_negotiated(asn4), 4000))
    assert len(parts) == 1
    return bytes(parts[0])


# ---------------------------------------------------------------------------------------------
# decoding: tabby's and ExaBGP's results in one comparable shape


@dataclass(frozen=True)
class View:
    """What an UPDATE means to tabby: reach by next hop (wire order within a next hop), the
    withdrawn prefixes (sorted: their order carries no meaning), the attributes of the
    announced routes (AS path with adjacent sequences joined), treat-as-withdraw, End-of-RIB."""

    reach: dict[str, list[IPv4Network]]
    withdrawn: list[IPv4Network]
    attributes: PathAttributes | None
    treat_as_withdraw: bool = False
    eor: tuple[int, int] | None = None


def _joined(path: Sequence[AsSegment]) -> tuple[AsSegment, ...]:
    """Adjacent AS_SEQUENCEs (or AS_CONFED_SEQUENCEs) as one: the same path, one spelling."""
    out: list[AsSegment] = []
    for seg in path:
        last = out[-1] if out else None
        if last is not None and not seg.is_set and not last.is_set and seg.confed == last.confed:
            out[-1] = AsSegment(last.asns + seg.asns, confed=seg.confed)
        else:
            out.append(seg)
    return tuple(out)


def _normal(attributes: PathAttributes) -> PathAttributes:
    return PathAttributes(
        origin=attributes.origin,
        as_path=_joined(attributes.as_path),
        local_pref=attributes.local_pref,
        med=attributes.med,
        originator_id=attributes.originator_id,
        cluster_list=attributes.cluster_list,
    )


def _tabby_view(update: WireUpdate) -> View:
    reach: dict[str, list[IPv4Network]] = {}
    for hop, prefixes in update.reach:
        reach.setdefault(str(hop), []).extend(prefixes)
    return View(
        reach=reach,
        withdrawn=sorted(update.withdrawn),
        attributes=_normal(update.attributes) if update.reach else None,
        treat_as_withdraw=bool(update.problem),
        eor=update.eor,
    )


def _exa_decode(body: bytes, asn4: bool) -> Any:
    return _MESSAGE.Update.unpack_message(body, _DIRECTION.Direction.IN, _negotiated(asn4))


def _exa_path(attributes: Any) -> tuple[AsSegment, ...]:
    as_path = attributes.get(CODE.AS_PATH)
    if as_path is None:  # ExaBGP keeps no attribute for an empty AS_PATH
        return ()
    out = []
    for seg in as_path.aspath:
        kind = seg.ID
        out.append(AsSegment(tuple(int(a) for a in seg), kind in (1, 4), kind in (3, 4)))
    return tuple(out)


def _exa_attributes(attributes: Any) -> PathAttributes:
    def get(code: int, read: Callable[[Any], Any]) -> Any:
        value = attributes.get(code)
        return None if value is None else read(value)

    return PathAttributes(
        origin=Origin(attributes[CODE.ORIGIN].origin),
        as_path=_joined(_exa_path(attributes)),
        local_pref=get(CODE.LOCAL_PREF, lambda v: v.localpref),
        med=get(CODE.MED, lambda v: v.med),
        originator_id=get(CODE.ORIGINATOR_ID, lambda v: IPv4Address(str(v))),
        cluster_list=get(
            CODE.CLUSTER_LIST, lambda v: tuple(IPv4Address(str(c)) for c in v.clusters)
        )
        or (),
    )


def _exa_view(body: bytes, asn4: bool = True) -> View:
    message = _exa_decode(body, asn4)
    if isinstance(message, _EOR.EOR):
        nlri = message.nlris[0]
        return View({}, [], None, eor=(int(nlri.afi), int(nlri.safi)))
    taw = TREAT_AS_WITHDRAW in message.attributes
    reach: dict[str, list[IPv4Network]] = {}
    withdrawn: list[IPv4Network] = []
    for nlri in message.nlris:
        if (nlri.afi, nlri.safi) != (AFI.ipv4, SAFI.unicast):
            continue
        prefix = IPv4Network(nlri.cidr.prefix(), strict=False)
        if taw or nlri.action == ACTION.WITHDRAW:
            withdrawn.append(prefix)
        else:
            reach.setdefault(str(ip_address(str(nlri.nexthop))), []).append(prefix)
    attributes = _exa_attributes(message.attributes) if reach else None
    return View(reach, sorted(withdrawn), attributes, treat_as_withdraw=taw)


def _decode_both(body: bytes, asn4: bool = True) -> View:
    """tabby's view of ``body``, after checking that it is ExaBGP's."""
    ours = _tabby_view(decode_update(body, asn4=asn4))
    assert ours == _exa_view(body, asn4)
    return ours


# ---------------------------------------------------------------------------------------------
# hand-built bytes (RFC 4271 4.3, RFC 4760 3/4, RFC 6793)

WELL_KNOWN, OPTIONAL, OPT_TRANS = 0x40, 0x80, 0xC0


def _attr(code: int, value: bytes, flags: int = WELL_KNOWN, extended: bool = False) -> bytes:
    if extended or len(value) > 255:
        return struct.pack("!BBH", flags | 0x10, code, len(value)) + value
    return struct.pack("!BBB", flags, code, len(value)) + value


def _segments(segments: Sequence[tuple[int, Sequence[int]]], four: bool = True) -> bytes:
    code = "I" if four else "H"
    return b"".join(
        struct.pack(f"!BB{len(asns)}{code}", kind, len(asns), *asns) for kind, asns in segments
    )


def _origin(value: int = 0) -> bytes:
    return _attr(1, bytes([value]))


def _as_path(segments: Sequence[tuple[int, Sequence[int]]], four: bool = True) -> bytes:
    return _attr(2, _segments(segments, four))


def _as4_path(segments: Sequence[tuple[int, Sequence[int]]]) -> bytes:
    return _attr(17, _segments(segments, True), OPT_TRANS)


def _next_hop(address: str = "192.0.2.1") -> bytes:
    return _attr(3, IPv4Address(address).packed)


def _prefix(value: int, plen: int) -> bytes:
    size = (plen + 7) // 8
    return bytes([plen]) + value.to_bytes(4, "big")[:size]


def _nlri(*prefixes: str) -> bytes:
    out = b""
    for text in prefixes:
        net = IPv4Network(text)
        out += _prefix(int(net.network_address), net.prefixlen)
    return out


def _mp_reach(afi: int, safi: int, hop: bytes, nlri: bytes) -> bytes:
    return _attr(14, struct.pack("!HBB", afi, safi, len(hop)) + hop + b"\x00" + nlri, OPTIONAL)


def _mp_unreach(afi: int, safi: int, nlri: bytes) -> bytes:
    return _attr(15, struct.pack("!HB", afi, safi) + nlri, OPTIONAL)


def _body(withdrawn: bytes = b"", attributes: bytes = b"", nlri: bytes = b"") -> bytes:
    return (
        struct.pack("!H", len(withdrawn))
        + withdrawn
        + struct.pack("!H", len(attributes))
        + attributes
        + nlri
    )


BASE = _origin(0) + _as_path([(2, [65001])]) + _next_hop("192.0.2.1")
BASE_ATTRIBUTES = PathAttributes(Origin.IGP, (AsSegment((65001,)),))
NH = IPv4Address("192.0.2.1")


def _nets(*prefixes: str) -> list[Prefix]:
    return [Prefix(p) for p in prefixes]


# ---------------------------------------------------------------------------------------------
# prefixes


def test_family_names() -> None:
    assert family_name(1, 1) == ("ipv4", "unicast")
    assert family_name(2, 1) == ("ipv6", "unicast")
    assert family_name(1, 2) == ("ipv4", "multicast")
    assert family_name(1, 128) == ("ipv4", "mpls-vpn")
    assert family_name(25, 70) == ("l2vpn", "70")
    assert family_name(99, 133) == ("99", "flow")


def test_every_prefix_length_round_trips_with_host_bits_cleared_like_exabgp() -> None:
    rng = random.Random(4271)
    values = [0, 0xFFFFFFFF, 0x0A000000, *(rng.getrandbits(32) for _ in range(5))]
    wire = [(v, plen) for plen in range(33) for v in values]  # host bits left in: on the wire
    expected = [IPv4Network((v, plen), strict=False) for v, plen in wire]
    assert any(int(e.network_address) != v for e, (v, _) in zip(expected, wire, strict=True))

    # announced, one message (ExaBGP sorts what it packs: compare by content, then order)
    body = _exa_one_message(
        [_exa_nlri(v, plen, ACTION.ANNOUNCE, "198.51.100.7") for v, plen in wire],
        Attrs(next_hop="198.51.100.7"),
    )
    update = decode_update(body)
    assert update.problem == "" and update.withdrawn == () and update.eor is None
    [(hop, prefixes)] = update.reach
    assert hop == IPv4Address("198.51.100.7")
    assert sorted(prefixes) == sorted(expected)
    view = _decode_both(body)
    assert view.reach["198.51.100.7"] == list(prefixes)  # ExaBGP's wire order too
    for prefix in prefixes:
        assert type(prefix) is Prefix
        plain = IPv4Network((int(prefix.network_address), prefix.prefixlen))  # strict: no host bits
        assert prefix == plain and hash(prefix) == hash(plain)
        assert str(prefix) == str(plain)

    # withdrawn, one message
    body = _exa_one_message([_exa_nlri(v, plen, ACTION.WITHDRAW) for v, plen in wire], Attrs())
    update = decode_update(body)
    assert update.reach == () and update.problem == ""
    assert sorted(update.withdrawn) == sorted(expected)
    assert all(type(p) is Prefix for p in update.withdrawn)
    _decode_both(body)


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        (b"\x00", "0.0.0.0/0"),
        (b"\x01\xff", "128.0.0.0/1"),
        (b"\x07\xff", "254.0.0.0/7"),
        (b"\x08\x0a", "10.0.0.0/8"),
        (b"\x09\x0a\xff", "10.128.0.0/9"),
        (b"\x17\xc0\xa8\x01", "192.168.0.0/23"),
        (b"\x18\xc0\xa8\x01", "192.168.1.0/24"),
        (b"\x19\x0a\x00\x00\xff", "10.0.0.128/25"),
        (b"\x1f\x0a\x00\x00\xff", "10.0.0.254/31"),
        (b"\x20\x0a\x00\x00\xff", "10.0.0.255/32"),
    ],
)
def test_prefix_encoding_and_cleared_host_bits(wire: bytes, expected: str) -> None:
    announced = decode_update(_body(attributes=BASE, nlri=wire))
    assert announced.reach == ((NH, (IPv4Network(expected),)),)
    withdrawn = decode_update(_body(withdrawn=wire))
    assert withdrawn.withdrawn == (IPv4Network(expected),)
    assert _tabby_view(announced) == _exa_view(_body(attributes=BASE, nlri=wire))


def test_withdrawn_routes_like_exabgp() -> None:
    prefixes = ["0.0.0.0/0", "10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.1.2.3/32"]
    body = _exa_one_message([_withdraw(p) for p in prefixes], Attrs())
    assert body[:2] != b"\x00\x00"  # in the Withdrawn Routes field
    update = decode_update(body)
    assert update == WireUpdate(PathAttributes(), (), tuple(Prefix(p) for p in prefixes))
    assert _decode_both(body).withdrawn == sorted(_nets(*prefixes))
    assert decode_update(body, asn4=False) == update


def test_withdrawals_and_announcements_in_one_message_like_exabgp() -> None:
    attrs = Attrs(local_pref=150, med=20)
    body = _exa_body(
        withdrawn=[_withdraw("10.9.0.0/16"), _withdraw("10.8.8.0/24")],
        attrs=attrs,
        announced=[_announce("10.1.0.0/16", "192.0.2.1"), _announce("10.2.0.0/24", "192.0.2.1")],
    )
    update = decode_update(body)
    assert update.reach == ((NH, tuple(_nets("10.1.0.0/16", "10.2.0.0/24"))),)
    assert update.withdrawn == tuple(_nets("10.9.0.0/16", "10.8.8.0/24"))
    assert update.attributes == attrs.expected()
    assert update.problem == "" and update.eor is None
    _decode_both(body)


# ---------------------------------------------------------------------------------------------
# End-of-RIB


def test_end_of_rib_ipv4_unicast() -> None:
    exa = _EOR.EOR(AFI.ipv4, SAFI.unicast).message()
    body = bytes(exa[19:])
    assert body == b"\x00\x00\x00\x00"
    update = decode_update(body)
    assert update == WireUpdate(PathAttributes(), (), (), eor=(1, 1))
    assert decode_update(body, asn4=False) == update
    assert _decode_both(body).eor == (1, 1)


@pytest.mark.parametrize(("afi", "safi"), [(2, 1), (1, 2), (2, 2), (1, 1)])
def test_end_of_rib_via_mp_unreach(afi: int, safi: int) -> None:
    exa = _EOR.EOR(AFI.create(afi), SAFI.create(safi)).message()
    bodies = [
        bytes(exa[19:]),  # ExaBGP's: extended length
        _body(attributes=_mp_unreach(afi, safi, b"")),  # one-octet length
    ]
    if (afi, safi) != (1, 1):  # ExaBGP writes 4 zero octets for IPv4 unicast
        assert bodies[0] == _body(attributes=_attr(15, struct.pack("!HB", afi, safi), 0x80, True))
    for body in bodies:
        assert decode_update(body) == WireUpdate(PathAttributes(), (), (), eor=(afi, safi))
        assert decode_update(body, asn4=False).eor == (afi, safi)
        assert _decode_both(body).eor == (afi, safi)


@pytest.mark.parametrize(
    "body",
    [
        _body(attributes=_mp_unreach(2, 1, b"") + _origin(0)),  # another attribute with it
        _body(attributes=_origin(0) + _as_path([])),  # attributes only
        _body(withdrawn=_nlri("10.0.0.0/8"), attributes=_mp_unreach(2, 1, b"")),
        _body(attributes=_mp_unreach(1, 1, _nlri("10.0.0.0/8"))),
    ],
    ids=["mp-unreach+origin", "attributes-only", "withdrawn+mp-unreach", "mp-unreach-nlri"],
)
def test_not_end_of_rib(body: bytes) -> None:
    update = decode_update(body)
    assert update.eor is None and update.reach == () and update.problem == ""
    assert _decode_both(body).eor is None


# ---------------------------------------------------------------------------------------------
# MP_REACH_NLRI / MP_UNREACH_NLRI (RFC 4760)


def test_mp_reach_ipv4_unicast_four_octet_next_hop_like_exabgp() -> None:
    nlris = [_announce(p, "203.0.113.9") for p in ("10.1.0.0/16", "10.2.3.0/24", "0.0.0.0/0")]
    mp = _exa_mp_reach(nlris)
    assert mp[1] == 14 and mp[3:7] == b"\x00\x01\x01\x04"  # AFI 1, SAFI 1, 4-octet next hop
    attrs = Attrs(next_hop=None, local_pref=300)
    body = _exa_body(attrs=attrs, extra_attributes=mp)
    update = decode_update(body)
    assert update.reach == (
        (IPv4Address("203.0.113.9"), tuple(_nets("10.1.0.0/16", "10.2.3.0/24", "0.0.0.0/0"))),
    )
    assert update.attributes == attrs.expected() and update.problem == ""
    _decode_both(body)


def test_mp_reach_ipv4_unicast_ipv6_next_hop_like_exabgp() -> None:
    # RFC 8950: IPv4 NLRI with an IPv6 next hop (ExaBGP moves such routes into MP_REACH_NLRI)
    nlris = [_announce(p, "2001:db8::1") for p in ("10.1.0.0/16", "10.2.3.0/24")]
    body = _exa_one_message(nlris, Attrs(next_hop=None, med=7))
    assert b"\x00\x01\x01\x10" in body  # MP_REACH_NLRI: AFI 1, SAFI 1, next hop length 16
    update = decode_update(body)
    assert update.reach == (
        (IPv6Address("2001:db8::1"), tuple(_nets("10.1.0.0/16", "10.2.3.0/24"))),
    )
    assert update.attributes.med == 7
    assert _decode_both(body).reach == {"2001:db8::1": _nets("10.1.0.0/16", "10.2.3.0/24")}


def test_mp_reach_32_octet_next_hop_is_the_global_address() -> None:
    hop = IPv6Address("2001:db8::2").packed + IPv6Address("fe80::2").packed
    body = _body(attributes=_origin(2) + _as_path([]) + _mp_reach(1, 1, hop, _nlri("10.7.0.0/16")))
    update = decode_update(body)
    assert update.reach == ((IPv6Address("2001:db8::2"), tuple(_nets("10.7.0.0/16"))),)
    assert update.attributes == PathAttributes(origin=Origin.INCOMPLETE)


def test_mp_reach_and_classic_nlri_in_one_message() -> None:
    mp = _exa_mp_reach([_announce("10.5.0.0/16", "203.0.113.5")])
    attrs = Attrs(next_hop="192.0.2.1")
    body = _exa_body(attrs=attrs, extra_attributes=mp, announced=[_announce("10.1.0.0/16")])
    update = decode_update(body)
    assert update.reach == (
        (NH, tuple(_nets("10.1.0.0/16"))),
        (IPv4Address("203.0.113.5"), tuple(_nets("10.5.0.0/16"))),
    )
    _decode_both(body)


def test_mp_reach_without_nlri_announces_nothing() -> None:
    body = _body(attributes=BASE + _mp_reach(1, 1, NH.packed, b""))
    assert decode_update(body) == WireUpdate(PathAttributes(), (), ())


def test_mp_reach_reserved_octet_is_ignored() -> None:
    value = struct.pack("!HBB", 1, 1, 4) + NH.packed + b"\x07" + _nlri("10.0.0.0/8")
    update = decode_update(_body(attributes=BASE + _attr(14, value, OPTIONAL)))
    assert update.reach == ((NH, tuple(_nets("10.0.0.0/8"))),)


def test_mp_unreach_ipv4_unicast_like_exabgp() -> None:
    mp = _exa_mp_unreach([_withdraw(p) for p in ("10.1.0.0/16", "10.2.3.0/24", "10.2.3.4/32")])
    assert mp[1] == 15
    body = _exa_body(extra_attributes=mp)
    update = decode_update(body)
    assert update == WireUpdate(
        PathAttributes(), (), tuple(_nets("10.1.0.0/16", "10.2.3.0/24", "10.2.3.4/32"))
    )
    _decode_both(body)
    # with classic withdrawals beside it: both reported
    body = _exa_body(withdrawn=[_withdraw("10.9.0.0/16")], extra_attributes=mp)
    assert set(decode_update(body).withdrawn) == set(
        _nets("10.9.0.0/16", "10.1.0.0/16", "10.2.3.0/24", "10.2.3.4/32")
    )
    _decode_both(body)


def test_other_families_are_ignored_like_exabgp() -> None:
    v6 = [
        _exa_nlri(0x20010DB8 << 96, 32, ACTION.ANNOUNCE, "2001:db8::1", AFI.ipv6),
        _exa_nlri(0x20010DB8_00010000 << 64, 48, ACTION.ANNOUNCE, "2001:db8::1", AFI.ipv6),
    ]
    v6_withdrawn = [_exa_nlri(0x20010DB8_00020000 << 64, 48, ACTION.WITHDRAW, afi=AFI.ipv6)]
    multicast = [_exa_nlri(0x0A000000, 8, ACTION.ANNOUNCE, "192.0.2.1", safi=SAFI.multicast)]
    for nlris in (v6, v6_withdrawn, multicast):
        for body in _exa_messages(nlris, Attrs(next_hop=None)):
            assert body[:2] == b"\x00\x00"  # nothing in Withdrawn Routes
            update = decode_update(body)
            assert update == WireUpdate(PathAttributes(), (), ())
            assert _decode_both(body) == View({}, [], None)
    # classic IPv4 NLRI beside another family's MP_REACH_NLRI: only the IPv4 routes
    mp = _exa_mp_reach(v6)
    body = _exa_body(attrs=Attrs(), extra_attributes=mp, announced=[_announce("10.1.0.0/16")])
    update = decode_update(body)
    assert update.reach == ((NH, tuple(_nets("10.1.0.0/16"))),)
    _decode_both(body)
    # another family's MP_UNREACH_NLRI beside classic withdrawals
    body = _exa_body(
        withdrawn=[_withdraw("10.4.0.0/16")], extra_attributes=_exa_mp_unreach(v6_withdrawn)
    )
    assert decode_update(body) == WireUpdate(PathAttributes(), (), tuple(_nets("10.4.0.0/16")))
    _decode_both(body)


def test_other_family_mp_reach_with_any_next_hop_length_is_ignored() -> None:
    # IPv4 multicast with a 12-octet next hop: not IPv4 unicast, so not inspected further
    body = _body(attributes=BASE + _mp_reach(1, 2, bytes(12), _nlri("10.0.0.0/8")))
    assert decode_update(body) == WireUpdate(PathAttributes(), (), ())


# ---------------------------------------------------------------------------------------------
# AS_PATH, AS4_PATH


@pytest.mark.parametrize(
    "as_path",
    [
        (),
        ((2, (65001,)),),
        ((2, (65001, 65002, 1, 65535)),),
        ((2, (65001, 65002)), (1, (100, 200, 300))),
        ((3, (64600, 64601)), (2, (65001,))),
        ((4, (64600, 64601)), (2, (65001, 7))),
        ((3, (64600,)), (4, (64601, 64602)), (2, (65001,)), (1, (9, 8))),
        ((2, tuple(range(1, 256))), (2, (300,))),
    ],
)
@pytest.mark.parametrize("asn4", [True, False])
def test_as_paths_like_exabgp(as_path: tuple[tuple[int, tuple[int, ...]], ...], asn4: bool) -> None:
    attrs = Attrs(as_path=as_path, origin=1)
    body = _exa_one_message([_announce("10.1.0.0/16", "192.0.2.1")], attrs, asn4=asn4)
    update = decode_update(body, asn4=asn4)
    assert update.problem == ""
    # exactly as sent: no merging, no splitting
    assert update.attributes == attrs.expected(via_messages=True)
    _decode_both(body, asn4)


def test_four_octet_as_numbers_like_exabgp() -> None:
    as_path = ((2, (65001, 4200000000, 70000, 0xFFFFFFFF)), (1, (65536, 131072)))
    attrs = Attrs(as_path=as_path)
    body = _exa_one_message([_announce("10.1.0.0/16", "192.0.2.1")], attrs, asn4=True)
    assert b"\xc0\x11" not in body  # no AS4_PATH between NEW speakers
    assert decode_update(body, asn4=True).attributes == attrs.expected(via_messages=True)
    _decode_both(body, asn4=True)


@pytest.mark.parametrize(
    "as_path",
    [
        ((2, (70000,)),),
        ((2, (65001, 70000, 4200000000)),),
        ((2, (70000, 65001)), (1, (80000, 90000))),
        ((2, (65001,)), (1, (80000, 100))),
        ((1, (80000,)), (2, (65001, 70001))),
    ],
)
def test_as4_path_from_an_old_speaker_is_merged_like_exabgp(
    as_path: tuple[tuple[int, tuple[int, ...]], ...],
) -> None:
    """ExaBGP's encoder on a 2-octet session writes AS_TRANS in AS_PATH plus an AS4_PATH
    (RFC 6793 4.2.2); the decoder must give back the 4-octet path (4.2.3)."""
    attrs = Attrs(as_path=as_path)
    body = _exa_one_message([_announce("10.1.0.0/16", "192.0.2.1")], attrs, asn4=False)
    assert AS_TRANS.to_bytes(2, "big") in body
    update = decode_update(body, asn4=False)
    assert _joined(update.attributes.as_path) == _joined(attrs.expected().as_path)
    _decode_both(body, asn4=False)
    # the same bytes from a NEW speaker would be a 4-octet AS_PATH: here they are 2-octet
    # ones, read as 4-octet they do not parse (or mean something else): never the merged path
    assert decode_update(body, asn4=True).attributes != update.attributes


def _paths(body: bytes, asn4: bool = False) -> tuple[AsSegment, ...]:
    update = decode_update(body, asn4=asn4)
    assert update.problem == "", update.problem
    return update.attributes.as_path


def _seq(*asns: int) -> AsSegment:
    return AsSegment(asns)


def _set(*asns: int) -> AsSegment:
    return AsSegment(asns, is_set=True)


@pytest.mark.parametrize(
    ("as_path", "as4_path", "expected"),
    [
        # same length: AS4_PATH replaces it all
        ([(2, [AS_TRANS, 65001])], [(2, [70000, 65001])], (_seq(70000, 65001),)),
        # OLD speakers prepended after the last NEW one: their ASes stay in front
        (
            [(2, [65010, 65011, AS_TRANS, 65001])],
            [(2, [70000, 65001])],
            (_seq(65010, 65011), _seq(70000, 65001)),
        ),
        # AS4_PATH longer than AS_PATH: ignored (RFC 6793 4.2.3)
        ([(2, [AS_TRANS])], [(2, [70000, 70001])], (_seq(AS_TRANS),)),
        # a set counts as one AS
        (
            [(2, [65010, AS_TRANS]), (1, [AS_TRANS, 65002])],
            [(2, [70000]), (1, [70001, 65002])],
            (_seq(65010), _seq(70000), _set(70001, 65002)),
        ),
        (
            [(1, [65010, 65011]), (2, [AS_TRANS])],
            [(2, [70000])],
            (_set(65010, 65011), _seq(70000)),
        ),
        # empty AS4_PATH: nothing to replace
        ([(2, [65010, AS_TRANS])], [], (_seq(65010, AS_TRANS),)),
        # confederation segments in an AS4_PATH are dropped (RFC 6793 6)
        (
            [(2, [AS_TRANS, 65001])],
            [(3, [70009]), (2, [70000, 65001])],
            (_seq(70000, 65001),),
        ),
        # a leading confederation segment of AS_PATH is kept (RFC 6793 4.2.3)
        (
            [(3, [64600, 64601]), (2, [AS_TRANS, 65001])],
            [(2, [70000, 65001])],
            (AsSegment((64600, 64601), confed=True), _seq(70000, 65001)),
        ),
    ],
    ids=[
        "same-length",
        "old-speakers-in-front",
        "as4-longer-ignored",
        "set-counts-one",
        "leading-set-kept",
        "empty-as4",
        "as4-confed-dropped",
        "leading-confed-kept",
    ],
)
def test_as4_path_merge_rfc6793(
    as_path: list[tuple[int, list[int]]],
    as4_path: list[tuple[int, list[int]]],
    expected: tuple[AsSegment, ...],
) -> None:
    attributes = _origin(0) + _as_path(as_path, four=False) + _as4_path(as4_path) + _next_hop()
    body = _body(attributes=attributes, nlri=_nlri("10.1.0.0/16"))
    path = _paths(body)
    assert _joined(path) == _joined(expected)
    # the path length and the neighbour AS are those of the path the ASes took
    ours = Path(NH, NH, as_path=path)
    want = Path(NH, NH, as_path=expected)
    assert (ours.as_path_length, ours.neighbour_as) == (want.as_path_length, want.neighbour_as)


def test_as4_path_merge_without_confederations_agrees_with_exabgp() -> None:
    cases = [
        ([(2, [AS_TRANS, 65001])], [(2, [70000, 65001])]),
        ([(2, [65010, 65011, AS_TRANS, 65001])], [(2, [70000, 65001])]),
        ([(2, [AS_TRANS])], [(2, [70000, 70001])]),
        ([(2, [65010, AS_TRANS]), (1, [AS_TRANS, 65002])], [(2, [70000]), (1, [70001, 65002])]),
        ([(1, [65010, 65011]), (2, [AS_TRANS])], [(2, [70000])]),
    ]
    for as_path, as4_path in cases:
        attributes = _origin(0) + _as_path(as_path, four=False) + _as4_path(as4_path)
        _decode_both(_body(attributes=attributes + _next_hop(), nlri=_nlri("10.0.0.0/8")), False)


@pytest.mark.parametrize(
    "as4_value",
    [
        b"\x02\x02\x00\x01\x11\x70",  # segment overruns the attribute
        b"\x02",  # segment header cut short
        b"\x07\x01\x00\x01\x11\x70",  # unknown segment type
        b"\x02\x00",  # zero AS numbers
    ],
)
def test_malformed_as4_path_is_discarded_not_withdrawn(as4_value: bytes) -> None:
    """RFC 6793 6: a malformed AS4_PATH is discarded and AS_PATH used as it is."""
    attributes = _origin(0) + _as_path([(2, [65010, AS_TRANS])], four=False)
    attributes += _attr(17, as4_value, OPT_TRANS) + _next_hop()
    update = decode_update(_body(attributes=attributes, nlri=_nlri("10.1.0.0/16")), asn4=False)
    assert update.problem == ""
    assert update.reach == ((NH, tuple(_nets("10.1.0.0/16"))),)
    assert update.attributes.as_path == (_seq(65010, AS_TRANS),)


def test_as4_path_between_new_speakers_is_ignored() -> None:
    attributes = _origin(0) + _as_path([(2, [65010, 70000])], four=True)
    attributes += _as4_path([(2, [99999])]) + _next_hop()
    body = _body(attributes=attributes, nlri=_nlri("10.1.0.0/16"))
    assert _paths(body, asn4=True) == (_seq(65010, 70000),)


def test_as4_path_with_as_trans_aggregator_is_merged() -> None:
    """RFC 6793 4.2.3: AGGREGATOR holding AS_TRANS with an AS4_AGGREGATOR: AS4_PATH is used."""
    attributes = _origin(0) + _as_path([(2, [65010, AS_TRANS])], four=False)
    attributes += _attr(7, struct.pack("!H4s", AS_TRANS, bytes([192, 0, 2, 9])), OPT_TRANS)
    attributes += _attr(18, struct.pack("!I4s", 70000, bytes([192, 0, 2, 9])), OPT_TRANS)
    attributes += _as4_path([(2, [70000])]) + _next_hop()
    body = _body(attributes=attributes, nlri=_nlri("10.1.0.0/16"))
    assert _joined(_paths(body)) == (_seq(65010, 70000),)
    _decode_both(body, asn4=False)


def test_as4_path_ignored_when_aggregator_is_not_as_trans() -> None:
    """RFC 6793 4.2.3: "If the AGGREGATOR attribute contains an AS number other than AS_TRANS,
    then the AS4_AGGREGATOR and AS4_PATH attributes SHALL be ignored ... and the AS_PATH
    attribute SHALL be taken as the AS path information." (An OLD speaker aggregated the
    route: the AS4_PATH it passed on unchanged no longer describes the path.)"""
    attributes = _origin(0) + _as_path([(2, [65010, AS_TRANS])], four=False)
    attributes += _attr(7, struct.pack("!H4s", 65010, bytes([192, 0, 2, 9])), OPT_TRANS)
    attributes += _attr(18, struct.pack("!I4s", 70000, bytes([192, 0, 2, 9])), OPT_TRANS)
    attributes += _as4_path([(2, [70000, 70001])]) + _next_hop()
    body = _body(attributes=attributes, nlri=_nlri("10.1.0.0/16"))
    exa = _exa_view(body, asn4=False)
    assert exa.attributes is not None
    assert exa.attributes.as_path == (_seq(65010, AS_TRANS),)
    assert _paths(body) == (_seq(65010, AS_TRANS),)


# ---------------------------------------------------------------------------------------------
# segments, path length, neighbour AS


@pytest.mark.parametrize(
    ("as_path", "length", "neighbour"),
    [
        ((), 0, None),
        (((2, (65001, 65002, 65003)),), 3, 65001),
        (((1, (65001, 65002, 65003)),), 1, None),
        (((2, (65001,)), (1, (65002, 65003))), 2, 65001),
        (((3, (64600, 64601)),), 0, None),
        (((4, (64600, 64601)),), 0, None),
        (((3, (64600, 64601)), (2, (65001, 65002))), 2, 65001),
        (((4, (64600,)), (3, (64601,)), (2, (65001, 65002))), 2, 65001),
        (((3, (64600,)), (1, (65001, 65002)), (2, (65003,))), 2, None),
        (((2, (4200000000, 1)), (1, (7,)), (2, (8, 9))), 5, 4200000000),
    ],
)
def test_segments_path_length_and_neighbour_as(
    as_path: tuple[tuple[int, tuple[int, ...]], ...], length: int, neighbour: int | None
) -> None:
    attrs = Attrs(as_path=as_path)
    body = _exa_one_message([_announce("10.1.0.0/16", "192.0.2.1")], attrs, asn4=True)
    update = decode_update(body)
    assert update.attributes.as_path == attrs.expected().as_path
    for seg, (kind, asns) in zip(update.attributes.as_path, as_path, strict=True):
        assert seg.asns == asns
        assert seg.is_set == (kind in (1, 4))
        assert seg.confed == (kind in (3, 4))
    path = Path(NH, NH, as_path=update.attributes.as_path)
    assert path.as_path_length == length
    assert path.neighbour_as == neighbour
    _decode_both(body)


# ---------------------------------------------------------------------------------------------
# attribute encodings


def test_extended_length_attributes() -> None:
    attributes = (
        _attr(1, b"\x01", WELL_KNOWN, extended=True)
        + _attr(2, _segments([(2, [65001, 65002])]), WELL_KNOWN, extended=True)
        + _attr(3, NH.packed, WELL_KNOWN, extended=True)
        + _attr(4, struct.pack("!I", 4000000000), OPTIONAL, extended=True)
        + _attr(5, struct.pack("!I", 250), WELL_KNOWN, extended=True)
        + _attr(9, bytes([10, 0, 0, 9]), OPTIONAL, extended=True)
        + _attr(10, bytes([1, 1, 1, 1, 2, 2, 2, 2]), OPTIONAL, extended=True)
        + _attr(8, struct.pack("!II", 0xFDE80001, 0xFDE80002), OPT_TRANS, extended=True)
        + _attr(
            14,
            struct.pack("!HBB", 1, 1, 4) + bytes([203, 0, 113, 1]) + b"\x00" + _nlri("10.6.0.0/16"),
            OPTIONAL,
            extended=True,
        )
    )
    body = _body(
        withdrawn=_nlri("10.9.0.0/16"),
        attributes=attributes,
        nlri=_nlri("10.1.0.0/16", "10.2.0.0/16"),
    )
    update = decode_update(body)
    assert update.problem == ""
    assert update.attributes == PathAttributes(
        origin=Origin.EGP,
        as_path=(_seq(65001, 65002),),
        local_pref=250,
        med=4000000000,
        originator_id=IPv4Address("10.0.0.9"),
        cluster_list=(IPv4Address("1.1.1.1"), IPv4Address("2.2.2.2")),
    )
    assert update.reach == (
        (NH, tuple(_nets("10.1.0.0/16", "10.2.0.0/16"))),
        (IPv4Address("203.0.113.1"), tuple(_nets("10.6.0.0/16"))),
    )
    assert update.withdrawn == tuple(_nets("10.9.0.0/16"))
    _decode_both(body)


def test_long_as_path_gets_an_extended_length_from_exabgp() -> None:
    as_path = ((2, tuple(range(70000, 70200))), (1, (1, 2, 3)))
    attrs = Attrs(as_path=as_path, cluster_list=[f"10.0.{i}.1" for i in range(80)])
    body = _exa_one_message([_announce("10.1.0.0/16", "192.0.2.1")], attrs)
    assert bytes([0x50, 2, 0x03]) in body  # AS_PATH, extended length 0x03xx
    update = decode_update(body)
    assert update.attributes == attrs.expected(via_messages=True)
    _decode_both(body)


def test_every_attribute_value_like_exabgp() -> None:
    attrs = Attrs(
        origin=2,
        as_path=((2, (65001, 65002)),),
        next_hop="198.51.100.1",
        local_pref=0xFFFFFFFF,
        med=0,
        originator_id="10.0.0.1",
        cluster_list=["10.0.0.2", "10.0.0.3"],
    )
    body = _exa_one_message([_announce("10.1.0.0/16", "198.51.100.1")], attrs)
    update = decode_update(body)
    assert update.attributes == attrs.expected()
    assert update.reach == ((IPv4Address("198.51.100.1"), tuple(_nets("10.1.0.0/16"))),)
    _decode_both(body)


def test_empty_cluster_list_is_treat_as_withdraw() -> None:
    """RFC 7606 7.10: from an internal neighbour (where a CLUSTER_LIST comes from: RFC 4456)
    the attribute "SHALL be considered malformed if its length is not a non-zero multiple of
    4", and the UPDATE handled as treat-as-withdraw. ExaBGP does so too."""
    body = _body(attributes=BASE + _attr(10, b"", OPTIONAL), nlri=_nlri("10.1.0.0/16"))
    exa = _exa_view(body)
    assert exa.treat_as_withdraw and exa.withdrawn == _nets("10.1.0.0/16")
    update = decode_update(body)
    assert update.reach == () and update.problem != ""
    assert update.withdrawn == tuple(_nets("10.1.0.0/16"))


def test_repeated_attributes_keep_the_first() -> None:
    attributes = (
        _origin(1)
        + _as_path([(2, [65001])])
        + _next_hop("192.0.2.1")
        + _attr(5, struct.pack("!I", 200))
        + _origin(2)
        + _as_path([(2, [65009, 65008])])
        + _next_hop("192.0.2.99")
        + _attr(5, struct.pack("!I", 10))
        + _attr(4, struct.pack("!I", 5), OPTIONAL)
        + _attr(4, struct.pack("!I", 6), OPTIONAL)
    )
    body = _body(attributes=attributes, nlri=_nlri("10.1.0.0/16"))
    update = decode_update(body)
    assert update.attributes == PathAttributes(Origin.EGP, (_seq(65001),), local_pref=200, med=5)
    assert update.reach == ((NH, tuple(_nets("10.1.0.0/16"))),)
    _decode_both(body)


def test_a_malformed_repeat_does_not_matter_when_the_first_is_valid() -> None:
    attributes = BASE + _attr(5, struct.pack("!I", 200)) + _attr(5, b"\x01") + _origin(7)
    update = decode_update(_body(attributes=attributes, nlri=_nlri("10.1.0.0/16")))
    assert update.problem == "" and update.attributes.local_pref == 200


@pytest.mark.parametrize(
    "attributes",
    [
        BASE + _mp_reach(1, 1, NH.packed, _nlri("10.1.0.0/16")) * 2,
        BASE + _mp_unreach(1, 1, _nlri("10.1.0.0/16")) * 2,
        BASE + _mp_reach(2, 1, bytes(16), b"\x00") + _mp_reach(1, 1, NH.packed, b"\x00"),
        _mp_unreach(2, 1, b"") + _mp_unreach(2, 1, b""),
    ],
    ids=["mp-reach", "mp-unreach", "mp-reach-two-families", "eor-twice"],
)
def test_repeated_mp_attribute_resets_the_session(attributes: bytes) -> None:
    body = _body(attributes=attributes)
    with pytest.raises(UpdateMessageError):
        decode_update(body)
    with pytest.raises(_NOTIFY):
        _exa_decode(body, True)


def test_unused_attributes_are_skipped_like_exabgp() -> None:
    attrs = Attrs(communities=(0xFDE80064, 0xFFFFFF01), aggregator=(65001, "192.0.2.200"))
    extra = (
        _attr(6, b"", WELL_KNOWN)  # ATOMIC_AGGREGATE
        + _attr(16, bytes(8), OPT_TRANS)  # EXTENDED_COMMUNITIES
        + _attr(32, bytes(12), OPT_TRANS)  # LARGE_COMMUNITY
        + _attr(200, b"\x01\x02\x03", OPT_TRANS)  # unknown optional transitive
        + _attr(201, b"\x01", OPTIONAL)  # unknown optional non-transitive
        + _attr(202, bytes(300), OPT_TRANS)  # unknown, extended length
    )
    body = _exa_body(attrs=attrs, extra_attributes=extra, announced=[_announce("10.1.0.0/16")])
    update = decode_update(body)
    assert update.problem == ""
    assert update.attributes == attrs.expected()
    assert update.reach == ((NH, tuple(_nets("10.1.0.0/16"))),)
    _decode_both(body)


@pytest.mark.parametrize(
    "junk",
    [
        _attr(7, b"\x01", OPT_TRANS),  # AGGREGATOR of 1 octet
        _attr(6, b"\x01\x02", WELL_KNOWN),  # ATOMIC_AGGREGATE with a value
        _attr(18, b"", OPT_TRANS),  # empty AS4_AGGREGATOR
        _attr(255, b"", OPTIONAL),
    ],
)
def test_unused_attributes_are_not_inspected(junk: bytes) -> None:
    """The module's contract: attributes tabby does not use are skipped without inspection
    (for these, RFC 7606 7.6 / 7.7 and RFC 6793 6 ask for "attribute discard" anyway)."""
    update = decode_update(_body(attributes=BASE + junk, nlri=_nlri("10.1.0.0/16")))
    assert update == WireUpdate(BASE_ATTRIBUTES, ((NH, tuple(_nets("10.1.0.0/16"))),), ())


# ---------------------------------------------------------------------------------------------
# treat-as-withdraw (RFC 7606 3, 7)

NO_ORIGIN = _as_path([(2, [65001])]) + _next_hop()
NO_AS_PATH = _origin(0) + _next_hop()
NO_NEXT_HOP = _origin(0) + _as_path([(2, [65001])])

TREAT_AS_WITHDRAW_CASES: dict[str, bytes] = {
    "origin-3": _origin(3) + NO_ORIGIN,
    "origin-255": _origin(255) + NO_ORIGIN,
    "origin-length-2": _attr(1, b"\x00\x00") + NO_ORIGIN,
    "origin-length-0": _attr(1, b"") + NO_ORIGIN,
    "origin-missing": NO_ORIGIN,
    "no-attributes-at-all": b"",
    "as-path-missing": NO_AS_PATH,
    "next-hop-missing": NO_NEXT_HOP,
    "next-hop-length-5": NO_NEXT_HOP + _attr(3, bytes(5)),
    "next-hop-length-16": NO_NEXT_HOP + _attr(3, bytes(16)),
    "med-length-3": BASE + _attr(4, bytes(3), OPTIONAL),
    "med-length-8": BASE + _attr(4, bytes(8), OPTIONAL),
    "local-pref-length-2": BASE + _attr(5, bytes(2)),
    "local-pref-length-0": BASE + _attr(5, b""),
    "originator-id-length-3": BASE + _attr(9, bytes(3), OPTIONAL),
    "cluster-list-length-6": BASE + _attr(10, bytes(6), OPTIONAL),
    "cluster-list-length-3": BASE + _attr(10, bytes(3), OPTIONAL),
    "as-path-type-0": NO_AS_PATH + _attr(2, b"\x00\x01\x00\x00\xfd\xe9"),
    "as-path-type-5": NO_AS_PATH + _attr(2, b"\x05\x01\x00\x00\xfd\xe9"),
    "as-path-zero-count": NO_AS_PATH + _attr(2, b"\x02\x00"),
    "as-path-overrun": NO_AS_PATH + _attr(2, b"\x02\x02\x00\x00\xfd\xe9"),
    "as-path-one-octet-left": NO_AS_PATH + _attr(2, b"\x02\x01\x00\x00\xfd\xe9\x02"),
    "as-path-second-segment-overrun": NO_AS_PATH
    + _attr(2, _segments([(2, [65001])]) + b"\x01\x03\x00\x00\x00\x01"),
}


@pytest.mark.parametrize("case", sorted(TREAT_AS_WITHDRAW_CASES))
def test_treat_as_withdraw(case: str) -> None:
    attributes = TREAT_AS_WITHDRAW_CASES[case]
    body = _body(
        withdrawn=_nlri("10.9.0.0/16"),
        attributes=attributes,
        nlri=_nlri("10.1.0.0/16", "10.2.0.0/24", "0.0.0.0/0"),
    )
    update = decode_update(body)
    assert update.problem != ""
    assert update.reach == ()
    assert update.attributes == PathAttributes()
    assert update.eor is None
    assert sorted(update.withdrawn) == sorted(
        _nets("10.9.0.0/16", "10.1.0.0/16", "10.2.0.0/24", "0.0.0.0/0")
    )
    assert all(type(p) is Prefix for p in update.withdrawn)


@pytest.mark.parametrize("case", sorted(TREAT_AS_WITHDRAW_CASES))
def test_treat_as_withdraw_covers_mp_reach_routes(case: str) -> None:
    attributes = TREAT_AS_WITHDRAW_CASES[case]
    if case.startswith("next-hop"):  # MP_REACH_NLRI routes need no NEXT_HOP: not a problem
        attributes = BASE
    mp = _mp_reach(1, 1, bytes([203, 0, 113, 1]), _nlri("10.5.0.0/16", "10.6.0.0/16"))
    update = decode_update(
        _body(attributes=attributes + mp + _mp_unreach(1, 1, _nlri("10.8.0.0/16")))
    )
    if case.startswith("next-hop"):
        assert update.problem == ""
        assert update.reach == (
            (IPv4Address("203.0.113.1"), tuple(_nets("10.5.0.0/16", "10.6.0.0/16"))),
        )
        return
    assert update.problem != "" and update.reach == ()
    assert sorted(update.withdrawn) == sorted(_nets("10.5.0.0/16", "10.6.0.0/16", "10.8.0.0/16"))


@pytest.mark.parametrize(
    "case",
    [
        "local-pref-length-2",
        "med-length-3",
        "med-length-8",
        "as-path-type-5",
        "as-path-overrun",
        "as-path-one-octet-left",
    ],
)
def test_treat_as_withdraw_like_exabgp(case: str) -> None:
    body = _body(
        withdrawn=_nlri("10.9.0.0/16"),
        attributes=TREAT_AS_WITHDRAW_CASES[case],
        nlri=_nlri("10.1.0.0/16", "10.2.0.0/24"),
    )
    view = _decode_both(body)
    assert view.treat_as_withdraw and view.reach == {}


def test_malformed_next_hop_ignored_when_only_mp_reach_announces() -> None:
    """RFC 4760 3: an UPDATE with only MP_REACH_NLRI routes needs no NEXT_HOP; one sent along
    is not used, so its value does not matter."""
    mp = _mp_reach(1, 1, bytes([203, 0, 113, 1]), _nlri("10.5.0.0/16"))
    update = decode_update(_body(attributes=NO_NEXT_HOP + _attr(3, bytes(7)) + mp))
    assert update.problem == ""
    assert update.reach == ((IPv4Address("203.0.113.1"), tuple(_nets("10.5.0.0/16"))),)


@pytest.mark.parametrize("case", sorted(TREAT_AS_WITHDRAW_CASES))
def test_withdrawals_only_attributes_do_not_matter(case: str) -> None:
    attributes = TREAT_AS_WITHDRAW_CASES[case]
    update = decode_update(
        _body(withdrawn=_nlri("10.9.0.0/16", "10.8.0.0/15"), attributes=attributes)
    )
    assert update == WireUpdate(PathAttributes(), (), tuple(_nets("10.9.0.0/16", "10.8.0.0/15")))


# An attribute list that cannot be walked to its end: RFC 7606 4 treat-as-withdraw, the NLRI
# field being located by the Total Path Attribute Length.
BROKEN_LIST_CASES: dict[str, bytes] = {
    "attribute-length-overruns-the-list": BASE + b"\x40\x05\x04\x00\x00",
    "extended-attribute-length-overruns-the-list": BASE + b"\x50\x05\x00\x04\x00\x00",
    "attribute-header-cut-short-2": BASE + b"\x40\x05",
    "attribute-header-cut-short-1": BASE + b"\x40",
    "extended-attribute-header-cut-short": BASE + b"\x50\x05\x00",
    "first-attribute-overruns": b"\x40\x01\x09\x00",
}


@pytest.mark.parametrize("case", sorted(BROKEN_LIST_CASES))
@pytest.mark.parametrize("asn4", [True, False])
def test_broken_attribute_list_is_treat_as_withdraw(case: str, asn4: bool) -> None:
    body = _body(
        withdrawn=_nlri("10.9.0.0/16"),
        attributes=BROKEN_LIST_CASES[case],
        nlri=_nlri("10.1.0.0/16", "10.2.0.0/24"),
    )
    update = decode_update(body, asn4=asn4)
    assert update.problem != "" and update.reach == () and update.eor is None
    assert sorted(update.withdrawn) == sorted(_nets("10.9.0.0/16", "10.1.0.0/16", "10.2.0.0/24"))


@pytest.mark.parametrize("case", sorted(BROKEN_LIST_CASES))
def test_broken_attribute_list_after_an_mp_attribute_resets_the_session(case: str) -> None:
    """Routes of an MP attribute before the break may be wrong, those after it are unknown."""
    mp = _mp_reach(1, 1, NH.packed, _nlri("10.5.0.0/16"))
    with pytest.raises(UpdateMessageError):
        decode_update(_body(attributes=mp + BROKEN_LIST_CASES[case], nlri=_nlri("10.1.0.0/16")))


# ---------------------------------------------------------------------------------------------
# session reset (RFC 7606 3(j), 4, 5.3; RFC 4271 6.3)


def _with_total_attribute_length(body: bytes, alen: int) -> bytes:
    wlen = int.from_bytes(body[:2], "big")
    return body[: 2 + wlen] + struct.pack("!H", alen) + body[4 + wlen :]


_ANNOUNCE = _body(attributes=BASE, nlri=_nlri("10.1.0.0/16"))

SESSION_RESET_CASES: dict[str, bytes] = {
    "empty": b"",
    "three-octets": b"\x00\x00\x00",
    "withdrawn-length-overrun": b"\x00\x05\x08\x0a\x00\x00",
    "withdrawn-length-leaves-no-attribute-length": b"\x00\x02\x08\x0a",
    "withdrawn-length-leaves-one-octet": b"\x00\x02\x08\x0a\x00",
    "total-attribute-length-overrun": _with_total_attribute_length(_ANNOUNCE, len(_ANNOUNCE)),
    "total-attribute-length-overrun-by-one": _with_total_attribute_length(
        _body(attributes=BASE), len(BASE) + 1
    ),
    "nlri-prefix-length-33": _body(attributes=BASE, nlri=b"\x21\x0a\x00\x00\x00\x00"),
    "nlri-prefix-length-255": _body(attributes=BASE, nlri=b"\xff" + bytes(32)),
    "withdrawn-prefix-length-33": _body(withdrawn=b"\x21\x0a\x00\x00\x00\x00"),
    "nlri-overrun": _body(attributes=BASE, nlri=_nlri("10.1.0.0/16") + b"\x18\x0a\x00"),
    "nlri-length-only": _body(attributes=BASE, nlri=b"\x08"),
    "withdrawn-prefix-overruns-its-field": b"\x00\x03\x18\x0a\x00\x00\x00",
    "mp-reach-shorter-than-5": _body(attributes=BASE + _attr(14, b"\x00\x01\x01\x04", OPTIONAL)),
    "mp-reach-other-family-shorter-than-5": _body(
        attributes=BASE + _attr(14, b"\x00\x02\x01", 0x80)
    ),
    "mp-reach-next-hop-overrun": _body(
        attributes=BASE + _attr(14, b"\x00\x01\x01\x04\xc0\x00\x02\x01", OPTIONAL)
    ),
    "mp-reach-next-hop-length-0": _body(
        attributes=BASE + _mp_reach(1, 1, b"", _nlri("10.0.0.0/8"))
    ),
    "mp-reach-next-hop-length-12": _body(
        attributes=BASE + _mp_reach(1, 1, bytes(12), _nlri("10.0.0.0/8"))
    ),
    "mp-reach-next-hop-length-5": _body(
        attributes=BASE + _mp_reach(1, 1, bytes(5), _nlri("10.0.0.0/8"))
    ),
    "mp-reach-prefix-length-33": _body(
        attributes=BASE + _mp_reach(1, 1, NH.packed, b"\x21" + bytes(5))
    ),
    "mp-reach-nlri-overrun": _body(attributes=BASE + _mp_reach(1, 1, NH.packed, b"\x18\x0a\x00")),
    "mp-unreach-shorter-than-3": _body(attributes=_attr(15, b"\x00\x01", OPTIONAL)),
    "mp-unreach-prefix-length-33": _body(attributes=_mp_unreach(1, 1, b"\x21" + bytes(5))),
    "mp-unreach-nlri-overrun": _body(attributes=_mp_unreach(1, 1, b"\x10\x0a")),
}


@pytest.mark.parametrize("case", sorted(SESSION_RESET_CASES))
@pytest.mark.parametrize("asn4", [True, False])
def test_session_reset(case: str, asn4: bool) -> None:
    with pytest.raises(UpdateMessageError):
        decode_update(SESSION_RESET_CASES[case], asn4=asn4)


@pytest.mark.parametrize(
    "case",
    [
        "withdrawn-length-overrun",
        "withdrawn-length-leaves-no-attribute-length",
        "total-attribute-length-overrun",
        "total-attribute-length-overrun-by-one",
        "nlri-prefix-length-33",
        "withdrawn-prefix-length-33",
        "nlri-overrun",
        "nlri-length-only",
        "mp-reach-shorter-than-5",
        "mp-reach-next-hop-overrun",
        "mp-reach-next-hop-length-12",
        "mp-reach-prefix-length-33",
        "mp-reach-nlri-overrun",
        "mp-unreach-shorter-than-3",
        "mp-unreach-prefix-length-33",
    ],
)
def test_session_reset_cases_exabgp_rejects_too(case: str) -> None:
    with pytest.raises(_NOTIFY):
        _exa_decode(SESSION_RESET_CASES[case], True)


# ---------------------------------------------------------------------------------------------
# random valid UPDATEs against ExaBGP; fuzzing


def _random_prefix(rng: random.Random) -> tuple[int, int]:
    plen = rng.choice([0, 1, 7, 8, 9, 15, 16, 17, 23, 24, 25, 31, 32, rng.randint(0, 32)])
    return rng.getrandbits(32), plen  # host bits left in on purpose


def _random_as_path(rng: random.Random, asn4: bool) -> tuple[tuple[int, tuple[int, ...]], ...]:
    big = rng.random() < 0.5

    def asn() -> int:
        return (
            rng.randint(70000, 0xFFFFFFFF) if big and rng.random() < 0.4 else rng.randint(1, 65535)
        )

    segments: list[tuple[int, tuple[int, ...]]] = []
    # ExaBGP drops a leading confederation segment when merging AS4_PATH (tabby keeps it,
    # RFC 6793 4.2.3): confederations only where no AS4_PATH is involved
    if rng.random() < 0.3 and (asn4 or not big):
        segments.append((rng.choice((3, 4)), tuple(asn() for _ in range(rng.randint(1, 3)))))
    for _ in range(rng.randint(0, 4)):
        kind = 1 if rng.random() < 0.2 else 2
        segments.append((kind, tuple(asn() for _ in range(rng.randint(1, 6)))))
    return tuple(segments)


@dataclass
class RandomUpdate:
    body: bytes
    reach: list[tuple[IPv4Address, list[IPv4Network]]]  # as tabby should report it
    withdrawn: list[IPv4Network]
    attributes: PathAttributes | None  # None: nothing announced


def _masked(prefixes: Sequence[tuple[int, int]]) -> list[IPv4Network]:
    return [IPv4Network(p, strict=False) for p in prefixes]


def _random_update(rng: random.Random, asn4: bool) -> RandomUpdate:
    """A random valid UPDATE, ExaBGP-encoded, and what it says."""
    hop = str(IPv4Address(rng.getrandbits(32) | 1))
    attrs = Attrs(
        origin=rng.randint(0, 2),
        as_path=_random_as_path(rng, asn4),
        next_hop=hop,
        local_pref=rng.choice([None, rng.getrandbits(32)]),
        med=rng.choice([None, rng.getrandbits(32)]),
        originator_id=rng.choice([None, str(IPv4Address(rng.getrandbits(32)))]),
        cluster_list=rng.choice(
            [None, [str(IPv4Address(rng.getrandbits(32))) for _ in range(rng.randint(1, 4))]]
        ),
        communities=tuple(rng.getrandbits(32) for _ in range(rng.choice([0, 0, 1, 3]))),
    )
    announced = [_random_prefix(rng) for _ in range(rng.choice([0, 1, 2, 5, 30]))]
    withdrawn = [_random_prefix(rng) for _ in range(rng.choice([0, 0, 1, 10]))]
    mp_announced = [_random_prefix(rng) for _ in range(rng.choice([0, 0, 0, 1, 8]))]
    mp_withdrawn = [_random_prefix(rng) for _ in range(rng.choice([0, 0, 0, 3]))]
    extra = b""
    mp_hop = str(IPv4Address(rng.getrandbits(32) | 2))
    if mp_announced:
        nlris = [_exa_nlri(v, p, ACTION.ANNOUNCE, mp_hop) for v, p in mp_announced]
        extra += _exa_mp_reach(nlris, asn4)
    if mp_withdrawn:
        extra += _exa_mp_unreach([_exa_nlri(v, p, ACTION.WITHDRAW) for v, p in mp_withdrawn])
    body = _exa_body(
        withdrawn=[_exa_nlri(v, p, ACTION.WITHDRAW) for v, p in withdrawn],
        attrs=attrs if rng.random() < 0.95 or announced or mp_announced else None,
        announced=[_exa_nlri(v, p, ACTION.ANNOUNCE, hop) for v, p in announced],
        extra_attributes=extra,
        asn4=asn4,
    )
    reach = [(IPv4Address(hop), _masked(announced)), (IPv4Address(mp_hop), _masked(mp_announced))]
    return RandomUpdate(
        body=body,
        reach=[(h, ps) for h, ps in reach if ps],
        withdrawn=_masked(withdrawn + mp_withdrawn),
        attributes=attrs.expected() if announced or mp_announced else None,
    )


def test_random_updates_decode_like_exabgp() -> None:
    rng = random.Random(20240607)
    seen = {"reach": 0, "mp": 0, "withdrawn": 0, "as4-merge": 0}
    for _ in range(300):
        asn4 = rng.random() < 0.5
        want = _random_update(rng, asn4)
        update = decode_update(want.body, asn4=asn4)
        assert update.problem == ""
        _decode_both(want.body, asn4)  # ExaBGP reads the same
        assert [(h, list(ps)) for h, ps in update.reach] == want.reach
        assert list(update.withdrawn) == want.withdrawn
        if want.attributes is not None:
            assert _normal(update.attributes) == _normal(want.attributes)
        assert all(type(p) is Prefix for _, ps in update.reach for p in ps)
        seen["reach"] += bool(update.reach)
        seen["mp"] += len(update.reach) == 2
        seen["withdrawn"] += bool(update.withdrawn)
        seen["as4-merge"] += bool(update.reach) and b"\xc0\x11" in want.body and not asn4
    assert seen["reach"] > 100 and min(seen.values()) > 30, seen  # the generator covers it all


def _mutations(rng: random.Random, body: bytes) -> list[bytes]:
    out = []
    for _ in range(40):
        data = bytearray(body)
        for _ in range(rng.randint(1, 3)):
            pos = rng.randrange(len(data))
            data[pos] = rng.choice([0, 1, 0x7F, 0x80, 0xFF, rng.getrandbits(8), data[pos] ^ 1])
        out.append(bytes(data))
    for _ in range(8):
        out.append(body[: rng.randrange(len(body))])  # truncated
        cut = rng.randrange(len(body))
        out.append(body[:cut] + body[cut + 1 :])  # one octet gone
        out.append(body[:cut] + bytes([rng.getrandbits(8)]) + body[cut:])  # one octet more
    out.append(body + bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 9))))
    return out


def _check_invariants(update: WireUpdate) -> None:
    prefixes = [p for _, ps in update.reach for p in ps] + list(update.withdrawn)
    for prefix in prefixes:
        assert type(prefix) is Prefix and 0 <= prefix.prefixlen <= 32
        assert int(prefix.network_address) & int(prefix.hostmask) == 0
    for hop, group in update.reach:
        assert isinstance(hop, IPv4Address | IPv6Address) and group
    if update.problem:
        assert update.reach == () and update.attributes == PathAttributes()
    if update.eor is not None:
        assert update.reach == () and update.withdrawn == () and update.problem == ""


def test_fuzzed_messages_decode_or_raise_update_message_error() -> None:
    rng = random.Random(7606)
    bases = [
        _ANNOUNCE,
        _body(
            withdrawn=_nlri("10.9.0.0/16", "10.8.0.0/24"),
            attributes=BASE,
            nlri=_nlri("10.1.0.0/16"),
        ),
        _body(
            attributes=_origin(0)
            + _as_path([(3, [64600]), (2, [65010, AS_TRANS]), (1, [1, 2])], four=False)
            + _as4_path([(2, [70000]), (1, [1, 2])])
            + _next_hop()
            + _attr(10, bytes(8), OPTIONAL),
            nlri=_nlri("10.1.0.0/16", "0.0.0.0/0", "10.2.3.4/32"),
        ),
        _body(
            attributes=BASE
            + _mp_reach(1, 1, NH.packed, _nlri("10.5.0.0/16"))
            + _mp_unreach(1, 1, _nlri("10.6.0.0/16"))
        ),
        _body(attributes=BASE + _mp_reach(1, 1, bytes(32), _nlri("10.5.0.0/16", "10.5.1.0/24"))),
        _body(attributes=_mp_unreach(2, 1, b"")),
        b"\x00\x00\x00\x00",
    ]
    bases += [_random_update(rng, asn4).body for asn4 in (True, False) * 10]
    decoded = raised = 0
    for base in bases:
        for data in _mutations(rng, base):
            for asn4 in (True, False):
                try:
                    update = decode_update(data, asn4=asn4)
                except UpdateMessageError as exc:
                    assert str(exc)
                    raised += 1
                    continue
                _check_invariants(update)
                decoded += 1
    assert decoded > 100 and raised > 100  # both outcomes exercised


def test_decoding_is_pure() -> None:
    body = _body(withdrawn=_nlri("10.9.0.0/16"), attributes=BASE, nlri=_nlri("10.1.0.0/16"))
    first = decode_update(body)
    assert decode_update(body) == first
    assert decode_update(bytes(body)) == first


def test_reach_next_hops_are_addresses() -> None:
    update = decode_update(_ANNOUNCE)
    hop: IPAddress = update.reach[0][0]
    assert hop == IPv4Address("192.0.2.1") and isinstance(hop, IPv4Address)
