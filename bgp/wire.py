"""BGP UPDATE messages decoded from their bytes (RFC 4271, 4760, 6793, 4456, 7606): IPv4 unicast.

Role: the receive path of ``tabby-bgp``. ExaBGP hands the agent every received UPDATE as its raw
bytes (its API's ``packets`` output; ``bgp.exabgp_launch`` stops ExaBGP from decoding them a
second time into its object model and JSON, which cost ~70 % of its CPU on a table load).
``decode_update`` turns the body of one UPDATE (the bytes after the 19-byte header) into what
the agent uses: the path attributes of the RIB, the announced IPv4 unicast prefixes grouped by
next hop, the withdrawn ones, or an End-of-RIB marker.

Inputs: the message body; whether the session negotiated 4-octet AS numbers (RFC 6793: the
peer's OPEN carried capability 65; ExaBGP always advertises it).
Outputs: ``WireUpdate``; ``UpdateMessageError`` when the message cannot be delimited.

Error handling follows RFC 7606:
- A message whose routes cannot be delimited (withdrawn or attribute lengths that overrun the
  message, a prefix length over 32 or one that overruns its field, a malformed or repeated
  MP_REACH_NLRI / MP_UNREACH_NLRI) raises ``UpdateMessageError``: the session must be reset,
  since the receiver cannot tell which routes the message carried. An attribute list that
  cannot be walked to its end (a header cut short, a length that overruns the list) is
  treat-as-withdraw (section 4: the NLRI field is still located by the total length), unless
  an MP attribute was read before the break (then a reset).
- An attribute with a bad value or length (ORIGIN, AS_PATH, NEXT_HOP, MED, LOCAL_PREF,
  ORIGINATOR_ID, CLUSTER_LIST: a non-zero multiple of 4) or a missing mandatory attribute
  while routes are announced is
  "treat-as-withdraw": every prefix the message announces is reported as withdrawn instead, and
  ``problem`` says why. A repeated attribute keeps its first occurrence (repeated MP attributes
  are a reset). Attributes tabby does not use (communities, aggregator, ...) are skipped
  without inspection.
- Bits set beyond a prefix's length are cleared (as BIRD does): the kernel refuses such a route.

Families: only IPv4 unicast routes are reported, from the classic NLRI fields and from
MP_REACH_NLRI / MP_UNREACH_NLRI with AFI 1 / SAFI 1 (next hop: 4 octets, or 16 / 32 for an IPv6
next hop, RFC 8950). Other families' routes are ignored; their End-of-RIB is reported with its
AFI and SAFI. ADD-PATH is never negotiated by tabby's ExaBGP configuration, so NLRIs carry no
path identifier.

Invariants: pure (no I/O, no clock); never raises anything but ``UpdateMessageError``; the
prefixes are ``bgp.model.Prefix`` values (equal to and hashing like ``IPv4Network``).
"""

from __future__ import annotations

import contextlib
import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from bgp.model import AsSegment, IPAddress, Origin, PathAttributes, Prefix

__all__ = ["UpdateMessageError", "WireUpdate", "decode_update", "family_name"]

# attribute type codes
_ORIGIN, _AS_PATH, _NEXT_HOP, _MED, _LOCAL_PREF = 1, 2, 3, 4, 5
_AGGREGATOR, _ORIGINATOR_ID, _CLUSTER_LIST, _MP_REACH, _MP_UNREACH, _AS4_PATH = 7, 9, 10, 14, 15, 17
_AS_TRANS = (23456).to_bytes(2, "big")
_EXTENDED_LENGTH = 0x10
_AFI_IPV4, _AFI_IPV6, _SAFI_UNICAST = 1, 2, 1
_MASKS = tuple((0xFFFFFFFF << (32 - n)) & 0xFFFFFFFF for n in range(33))
_ORIGINS = (Origin.IGP, Origin.EGP, Origin.INCOMPLETE)
_AFI_NAMES = {1: "ipv4", 2: "ipv6", 25: "l2vpn"}
_SAFI_NAMES = {1: "unicast", 2: "multicast", 4: "nlri-mpls", 128: "mpls-vpn", 133: "flow"}


class UpdateMessageError(Exception):
    """An UPDATE that cannot be delimited: the session must be reset (RFC 7606 section 5)."""


@dataclass(frozen=True, slots=True)
class WireUpdate:
    """One decoded UPDATE.

    ``reach``: the announced prefixes, grouped by next hop (almost always one group).
    ``eor``: ``(afi, safi)`` when the message is an End-of-RIB (RFC 4724), else None.
    ``problem``: non-empty when treat-as-withdraw applied; the announced prefixes are then in
    ``withdrawn`` and ``reach`` is empty.
    """

    attributes: PathAttributes
    reach: tuple[tuple[IPAddress, tuple[Prefix, ...]], ...]
    withdrawn: tuple[Prefix, ...]
    eor: tuple[int, int] | None = None
    problem: str = ""


def family_name(afi: int, safi: int) -> tuple[str, str]:
    """ExaBGP's names of an address family (``("ipv4", "unicast")``); numbers otherwise."""
    return _AFI_NAMES.get(afi, str(afi)), _SAFI_NAMES.get(safi, str(safi))


def _prefixes(data: bytes, start: int, end: int, where: str) -> list[Prefix]:
    """The IPv4 prefixes encoded in ``data[start:end]`` (RFC 4271 4.3 NLRI encoding)."""
    out: list[Prefix] = []
    append = out.append
    make = Prefix.from_int
    masks = _MASKS
    i = start
    while i < end:
        plen = data[i]
        if plen > 32:
            raise UpdateMessageError(f"{where}: prefix length {plen} over 32 at octet {i}")
        size = (plen + 7) >> 3
        j = i + 1 + size
        if j > end:
            raise UpdateMessageError(f"{where}: prefix at octet {i} overruns its field")
        value = (int.from_bytes(data[i + 1 : j], "big") << (32 - 8 * size)) & masks[plen]
        append(make(value, plen))
        i = j
    return out


class _AttributeError(Exception):
    """A malformed attribute value (treat-as-withdraw)."""


def _as_path(data: bytes, four: bool, what: str) -> tuple[AsSegment, ...]:
    size = 4 if four else 2
    code = "I" if four else "H"
    out: list[AsSegment] = []
    i, end = 0, len(data)
    while i < end:
        if i + 2 > end:
            raise _AttributeError(f"{what}: segment header cut short")
        kind, count = data[i], data[i + 1]
        if kind not in (1, 2, 3, 4) or count == 0:
            raise _AttributeError(f"{what}: segment type {kind} with {count} AS numbers")
        j = i + 2 + count * size
        if j > end:
            raise _AttributeError(f"{what}: segment overruns the attribute")
        asns = struct.unpack_from(f"!{count}{code}", data, i + 2)
        out.append(AsSegment(asns, is_set=kind in (1, 4), confed=kind in (3, 4)))
        i = j
    return tuple(out)


def _hops(path: tuple[AsSegment, ...]) -> int:
    return sum(1 if s.is_set else len(s.asns) for s in path if not s.confed)


def _merge_as4(path: tuple[AsSegment, ...], as4: tuple[AsSegment, ...]) -> tuple[AsSegment, ...]:
    """RFC 6793 4.2.3: a 2-octet AS_PATH with an AS4_PATH. AS4_PATH replaces the trailing part
    of AS_PATH; when it names more ASes than AS_PATH it is ignored."""
    keep = _hops(path) - _hops(tuple(s for s in as4 if not s.confed))
    if keep < 0:
        return path
    lead: list[AsSegment] = []
    for seg in path:
        if keep == 0 and not seg.confed:
            break
        if seg.confed:
            lead.append(seg)
        elif seg.is_set:
            lead.append(seg)
            keep -= 1
        else:
            take = min(keep, len(seg.asns))
            lead.append(AsSegment(seg.asns[:take]))
            keep -= take
    tail = [s for s in as4 if not s.confed]
    if lead and tail and not lead[-1].is_set and not lead[-1].confed and not tail[0].is_set:
        lead[-1] = AsSegment(lead[-1].asns + tail[0].asns)  # one sequence, as it was sent
        tail = tail[1:]
    return (*lead, *tail)


def _v4(data: bytes, what: str) -> IPv4Address:
    if len(data) != 4:
        raise _AttributeError(f"{what}: length {len(data)}, expected 4")
    return IPv4Address(data)


def _u32(data: bytes, what: str) -> int:
    if len(data) != 4:
        raise _AttributeError(f"{what}: length {len(data)}, expected 4")
    return int.from_bytes(data, "big")


def _mp_next_hop(data: bytes) -> IPAddress | None:
    if len(data) == 4:
        return IPv4Address(data)
    if len(data) in (16, 32):  # RFC 8950: an IPv6 global address (+ link-local)
        return IPv6Address(data[:16])
    return None


def decode_update(body: bytes, *, asn4: bool = True) -> WireUpdate:
    """Decode the body of one UPDATE message (see the module doc)."""
    end = len(body)
    if end < 4:
        raise UpdateMessageError(f"message of {end} octets, at least 4 expected")
    wlen = int.from_bytes(body[0:2], "big")
    if 2 + wlen + 2 > end:
        raise UpdateMessageError(f"withdrawn routes length {wlen} overruns the message")
    withdrawn = _prefixes(body, 2, 2 + wlen, "withdrawn routes")
    apos = 2 + wlen
    alen = int.from_bytes(body[apos : apos + 2], "big")
    astart = apos + 2
    aend = astart + alen
    if aend > end:
        raise UpdateMessageError(f"total path attribute length {alen} overruns the message")
    nlri = _prefixes(body, aend, end, "NLRI")
    if not withdrawn and not nlri and alen == 0:
        return WireUpdate(PathAttributes(), (), (), eor=(_AFI_IPV4, _SAFI_UNICAST))

    seen: dict[int, bytes] = {}
    broken = ""  # the attribute list cannot be walked to its end
    i = astart
    while i < aend:
        if i + 3 > aend:
            broken = f"attribute header at octet {i} cut short"
            break
        flags, code = body[i], body[i + 1]
        if flags & _EXTENDED_LENGTH:
            if i + 4 > aend:
                broken = f"attribute {code} header cut short"
                break
            length = int.from_bytes(body[i + 2 : i + 4], "big")
            vstart = i + 4
        else:
            length = body[i + 2]
            vstart = i + 3
        i = vstart + length
        if i > aend:
            broken = f"attribute {code} of {length} octets overruns the attribute list"
            break
        if code in seen:
            if code in (_MP_REACH, _MP_UNREACH):
                raise UpdateMessageError(f"attribute {code} repeated")
            continue  # RFC 7606 3(g): keep the first
        seen[code] = body[vstart:i]
    if broken:
        # RFC 7606 4: the NLRI field is still located by the total length: treat-as-withdraw,
        # unless an MP attribute was read (its routes may be wrong, later ones unknown)
        if _MP_REACH in seen or _MP_UNREACH in seen:
            raise UpdateMessageError(broken)
        return WireUpdate(PathAttributes(), (), (*withdrawn, *nlri), problem=broken)

    reach: list[tuple[IPAddress, tuple[Prefix, ...]]] = []
    eor: tuple[int, int] | None = None
    mp_reach = seen.get(_MP_REACH)
    mp_nlri: list[Prefix] = []
    mp_hop: IPAddress | None = None
    if mp_reach is not None:
        if len(mp_reach) < 5:
            raise UpdateMessageError("MP_REACH_NLRI shorter than 5 octets")
        afi, safi, nhlen = int.from_bytes(mp_reach[0:2], "big"), mp_reach[2], mp_reach[3]
        if 4 + nhlen + 1 > len(mp_reach):
            raise UpdateMessageError(f"MP_REACH_NLRI next hop length {nhlen} overruns it")
        if (afi, safi) == (_AFI_IPV4, _SAFI_UNICAST):
            mp_hop = _mp_next_hop(mp_reach[4 : 4 + nhlen])
            if mp_hop is None:
                raise UpdateMessageError(f"MP_REACH_NLRI next hop length {nhlen}")
            mp_nlri = _prefixes(mp_reach, 4 + nhlen + 1, len(mp_reach), "MP_REACH_NLRI")
    mp_unreach = seen.get(_MP_UNREACH)
    if mp_unreach is not None:
        if len(mp_unreach) < 3:
            raise UpdateMessageError("MP_UNREACH_NLRI shorter than 3 octets")
        afi, safi = int.from_bytes(mp_unreach[0:2], "big"), mp_unreach[2]
        if (afi, safi) == (_AFI_IPV4, _SAFI_UNICAST):
            withdrawn += _prefixes(mp_unreach, 3, len(mp_unreach), "MP_UNREACH_NLRI")
        if len(mp_unreach) == 3 and len(seen) == 1 and not nlri and wlen == 0:
            eor = (afi, safi)
    if eor is not None:
        return WireUpdate(PathAttributes(), (), (), eor=eor)

    if not nlri and not mp_nlri:  # withdrawals only: attributes do not matter
        return WireUpdate(PathAttributes(), (), tuple(withdrawn))
    try:
        attributes = _attributes(seen, asn4)
        if nlri:
            hop = seen.get(_NEXT_HOP)
            if hop is None:
                raise _AttributeError("NEXT_HOP missing")
            reach.append((_v4(hop, "NEXT_HOP"), tuple(nlri)))
    except _AttributeError as exc:
        return WireUpdate(PathAttributes(), (), (*withdrawn, *nlri, *mp_nlri), problem=str(exc))
    if mp_nlri:
        assert mp_hop is not None
        reach.append((mp_hop, tuple(mp_nlri)))
    return WireUpdate(attributes, tuple(reach), tuple(withdrawn))


def _attributes(seen: dict[int, bytes], asn4: bool) -> PathAttributes:
    origin_v = seen.get(_ORIGIN)
    if origin_v is None:
        raise _AttributeError("ORIGIN missing")
    if len(origin_v) != 1 or origin_v[0] > 2:
        raise _AttributeError(f"ORIGIN value {origin_v.hex()}")
    path_v = seen.get(_AS_PATH)
    if path_v is None:
        raise _AttributeError("AS_PATH missing")
    as_path = _as_path(path_v, asn4, "AS_PATH")
    as4_v = seen.get(_AS4_PATH)
    aggregator = seen.get(_AGGREGATOR)
    if aggregator is not None and len(aggregator) == 6 and aggregator[0:2] != _AS_TRANS:
        as4_v = None  # RFC 6793 4.2.3: aggregated by a 2-octet speaker: AS4_PATH is ignored
    if as4_v is not None and not asn4:
        with contextlib.suppress(_AttributeError):  # RFC 6793 6: a bad AS4_PATH is discarded
            as_path = _merge_as4(as_path, _as_path(as4_v, True, "AS4_PATH"))
    med_v = seen.get(_MED)
    lp_v = seen.get(_LOCAL_PREF)
    orig_v = seen.get(_ORIGINATOR_ID)
    clusters_v = seen.get(_CLUSTER_LIST)
    clusters: tuple[IPv4Address, ...] = ()
    if clusters_v is not None:
        if not clusters_v or len(clusters_v) % 4:
            raise _AttributeError(f"CLUSTER_LIST length {len(clusters_v)}, not a multiple of 4")
        clusters = tuple(IPv4Address(clusters_v[k : k + 4]) for k in range(0, len(clusters_v), 4))
    return PathAttributes(
        origin=_ORIGINS[origin_v[0]],
        as_path=as_path,
        local_pref=None if lp_v is None else _u32(lp_v, "LOCAL_PREF"),
        med=None if med_v is None else _u32(med_v, "MULTI_EXIT_DISC"),
        originator_id=None if orig_v is None else _v4(orig_v, "ORIGINATOR_ID"),
        cluster_list=clusters,
    )
