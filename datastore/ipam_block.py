"""Calico IPAM records as stored in etcd: keys, JSON codecs, and the pure block operations.

Role: the pure half of IPAM (no I/O). ``datastore.ipam`` reads and writes these records with
compare-and-swap; everything that decides *which* ordinal is taken or freed lives here, so it can
be tested without a store.

Layout (exactly Calico's libcalico-go ``lib/backend/model``, under ``/calico/ipam/v2/``):
* block ``assignment/ipv4/block/10.65.0.0-26`` (IPv6: ``assignment/ipv6/block/fd00::-122``):
  ``{"cidr", "affinity": "host:<node>" | null, "strictAffinity", "allocations": [attr index |
  null per ordinal], "unallocated": [free ordinals, in reuse order], "attributes":
  [{"handle_id", "secondary"}], "sequenceNumber", "sequenceNumberForAllocation", "deleted"}``;
* affinity ``host/<node>/ipv4/block/10.65.0.0-26``: ``{"state": "pending" | "confirmed" |
  "pendingDeletion", "deleted": false}``;
* handle ``handle/<handle id>``: ``{"block": {"10.65.0.0/26": <count>}, "deleted": false}``
  (Calico does not store the id in the value: its ``HandleID`` field is ``json:"-"``);
* config ``config``: ``{"strict_affinity", "auto_allocate_blocks", "maxBlocksPerHost"}``
  (Calico's own spellings, written with Go's ``omitempty``; absent key = the defaults).

Invariants of a valid ``Block`` (``Block.from_json`` refuses anything else, so a corrupt block is
never allocated from):
* ``len(allocations) == size``; every ordinal is either allocated (``allocations[o]`` is an index
  into ``attributes``) or listed exactly once in ``unallocated``, never both;
* every address of the block is usable (Calico does not reserve network/broadcast addresses);
* ``auto_assign`` takes ordinals from the front of ``unallocated``; ``release`` appends to its end,
  so a freed address is the last to be reused (as Calico);
* attributes are shared by allocations with the same (handle, secondary) and dropped when the last
  allocation referring to them is released (indexes are renumbered);
* every write increments ``sequenceNumber``; an allocation records the block's sequence number at
  the time it was made (``sequenceNumberForAllocation``), as Calico does.
Unknown JSON fields of a block or handle are kept verbatim on a read-modify-write.
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

__all__ = [
    "AFFINITY_CONFIRMED",
    "AFFINITY_PENDING",
    "AFFINITY_PENDING_DELETION",
    "CONFIG_KEY",
    "HANDLE_PREFIX",
    "HOST_PREFIX",
    "IPAM_ROOT",
    "AllocationAttribute",
    "Block",
    "Handle",
    "IPAMRecordError",
    "affinity_json",
    "affinity_key",
    "affinity_prefix",
    "block_key",
    "block_prefix",
    "cidr_text",
    "config_from_json",
    "config_to_json",
    "handle_key",
    "parse_affinity_key",
    "parse_affinity_state",
    "parse_block_key",
]

IPAM_ROOT = "/calico/ipam/v2/"
HOST_PREFIX = IPAM_ROOT + "host/"
HANDLE_PREFIX = IPAM_ROOT + "handle/"
ASSIGNMENT_PREFIX = IPAM_ROOT + "assignment/"
CONFIG_KEY = IPAM_ROOT + "config"

AFFINITY_PENDING = "pending"
AFFINITY_CONFIRMED = "confirmed"
AFFINITY_PENDING_DELETION = "pendingDeletion"
_AFFINITY_STATES = (AFFINITY_PENDING, AFFINITY_CONFIRMED, AFFINITY_PENDING_DELETION)

IPAddr = IPv4Address | IPv6Address
IPNet = IPv4Network | IPv6Network

# The largest block tabby will decode (a /20 or /116 has 4096 addresses; pools allow no more).
MAX_BLOCK_ADDRESSES = 1 << 12


class IPAMRecordError(ValueError):
    """A stored IPAM record (or key) is malformed; the message names the record and field."""


# --------------------------------------------------------------------------- keys


def cidr_text(cidr: IPNet) -> str:
    """The CIDR as Calico prints it (Go's ``net.IPNet.String()``; compressed IPv6)."""
    return str(cidr)


def _key_cidr(cidr: IPNet) -> str:
    return cidr_text(cidr).replace("/", "-", 1)


def _check_component(what: str, value: str) -> str:
    if not isinstance(value, str) or not value or "/" in value:
        raise ValueError(f"{what} must be a non-empty string without '/', got {value!r}")
    return value


def block_prefix(version: int | None = None) -> str:
    return ASSIGNMENT_PREFIX if version is None else f"{ASSIGNMENT_PREFIX}ipv{version}/block/"


def block_key(cidr: IPNet) -> str:
    return f"{block_prefix(cidr.version)}{_key_cidr(cidr)}"


def affinity_prefix(node: str | None = None, version: int | None = None) -> str:
    if node is None:
        return HOST_PREFIX
    node = _check_component("node", node)
    if version is None:
        return f"{HOST_PREFIX}{node}/"
    return f"{HOST_PREFIX}{node}/ipv{version}/block/"


def affinity_key(node: str, cidr: IPNet) -> str:
    return f"{affinity_prefix(node, cidr.version)}{_key_cidr(cidr)}"


def handle_key(handle_id: str) -> str:
    return HANDLE_PREFIX + _check_component("handle id", handle_id)


def _parse_cidr_component(text: str, version: int) -> IPNet | None:
    try:
        net = ipaddress.ip_network(text.replace("-", "/", 1), strict=True)
    except ValueError:
        return None
    if net.version != version:
        return None
    return net


def parse_block_key(key: str) -> IPNet | None:
    """The CIDR of a block key, or None for anything else under the assignment prefix."""
    if not key.startswith(ASSIGNMENT_PREFIX):
        return None
    parts = key[len(ASSIGNMENT_PREFIX) :].split("/")
    if len(parts) != 3 or parts[0] not in ("ipv4", "ipv6") or parts[1] != "block":
        return None
    return _parse_cidr_component(parts[2], int(parts[0][3]))


def parse_affinity_key(key: str) -> tuple[str, IPNet] | None:
    """(node, block CIDR) of an affinity key, or None."""
    if not key.startswith(HOST_PREFIX):
        return None
    parts = key[len(HOST_PREFIX) :].split("/")
    if len(parts) != 4 or not parts[0] or parts[1] not in ("ipv4", "ipv6") or parts[2] != "block":
        return None
    cidr = _parse_cidr_component(parts[3], int(parts[1][3]))
    return None if cidr is None else (parts[0], cidr)


# --------------------------------------------------------------------------- small records


def _load_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise IPAMRecordError(f"{what}: not valid JSON: {str(exc)[:120]}") from None
    if not isinstance(value, dict):
        raise IPAMRecordError(f"{what}: expected a JSON object")
    return value


def _dump(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()


def affinity_json(state: str) -> bytes:
    return _dump({"state": state, "deleted": False})


def parse_affinity_state(raw: bytes, key: str) -> str:
    """The ``state`` of a stored affinity; a missing/empty state counts as confirmed (Calico's
    pre-pending-state records had none)."""
    d = _load_object(raw, f"affinity {key}")
    state = d.get("state") or AFFINITY_CONFIRMED
    if state not in _AFFINITY_STATES:
        raise IPAMRecordError(f"affinity {key}: field state: unknown value {str(state)[:40]!r}")
    return str(state)


def config_from_json(raw: bytes) -> tuple[bool, bool, int]:
    """(strict_affinity, auto_allocate_blocks, max_blocks_per_host) of the stored config.

    Field names are Calico's; an absent field is Go's zero value (``omitempty`` on write)."""
    d = _load_object(raw, f"config {CONFIG_KEY}")
    strict = d.get("strict_affinity", False)
    auto = d.get("auto_allocate_blocks", False)
    max_blocks = d.get("maxBlocksPerHost", 0)
    if not isinstance(strict, bool):
        raise IPAMRecordError("config: field strict_affinity: expected a boolean")
    if not isinstance(auto, bool):
        raise IPAMRecordError("config: field auto_allocate_blocks: expected a boolean")
    if isinstance(max_blocks, bool) or not isinstance(max_blocks, int) or max_blocks < 0:
        raise IPAMRecordError("config: field maxBlocksPerHost: expected an integer >= 0")
    return strict, auto, max_blocks


def config_to_json(strict_affinity: bool, auto_allocate_blocks: bool, max_blocks: int) -> bytes:
    d: dict[str, Any] = {}
    if strict_affinity:
        d["strict_affinity"] = True
    if auto_allocate_blocks:
        d["auto_allocate_blocks"] = True
    if max_blocks:
        d["maxBlocksPerHost"] = max_blocks
    return _dump(d)


@dataclass(slots=True)
class Handle:
    """A handle record: how many addresses the handle holds in each block."""

    block: dict[str, int] = field(default_factory=dict)
    deleted: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, raw: bytes, key: str) -> Handle:
        d = _load_object(raw, f"handle {key}")
        blocks = d.pop("block", None) or {}
        deleted = d.pop("deleted", False)
        if not isinstance(blocks, dict):
            raise IPAMRecordError(f"handle {key}: field block: expected an object")
        out: dict[str, int] = {}
        for cidr, count in blocks.items():
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise IPAMRecordError(f"handle {key}: field block.{cidr}: expected a count")
            out[cidr] = count
        return cls(out, bool(deleted), d)

    def to_json(self) -> bytes:
        d = dict(self.extra)
        d["block"] = {k: v for k, v in self.block.items() if v > 0}
        d["deleted"] = self.deleted
        return _dump(d)

    def add(self, cidr: IPNet, count: int) -> None:
        k = cidr_text(cidr)
        n = self.block.get(k, 0) + count
        if n > 0:
            self.block[k] = n
        else:
            self.block.pop(k, None)

    @property
    def total(self) -> int:
        return sum(v for v in self.block.values() if v > 0)


# --------------------------------------------------------------------------- blocks


@dataclass(frozen=True, slots=True)
class AllocationAttribute:
    """Calico's per-allocation attribute: the handle and the free-form "secondary" map."""

    handle_id: str | None
    secondary: Mapping[str, str]

    def to_dict(self) -> dict[str, Any]:
        return {"handle_id": self.handle_id, "secondary": dict(self.secondary) or None}


def _int_list(value: object, what: str) -> list[int | None]:
    if not isinstance(value, list):
        raise IPAMRecordError(f"{what}: expected a list")
    out: list[int | None] = []
    for item in value:
        if item is not None and (isinstance(item, bool) or not isinstance(item, int)):
            raise IPAMRecordError(f"{what}: expected integers or null")
        out.append(item)
    return out


@dataclass(slots=True)
class Block:
    """A working copy of one allocation block (mutated in memory, then written with CAS)."""

    cidr: IPNet
    affinity: str | None
    strict_affinity: bool
    allocations: list[int | None]
    unallocated: list[int]
    attributes: list[AllocationAttribute]
    sequence_number: int = 0
    seq_for_allocation: dict[str, int] = field(default_factory=dict)
    deleted: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    # ---- construction / codec

    @classmethod
    def new(cls, cidr: IPNet, node: str | None, strict_affinity: bool) -> Block:
        size = cidr.num_addresses
        return cls(
            cidr=cidr,
            affinity=None if node is None else f"host:{node}",
            strict_affinity=strict_affinity,
            allocations=[None] * size,
            unallocated=list(range(size)),
            attributes=[],
            # As Calico: start from the clock so a re-created block never repeats numbers.
            sequence_number=time.time_ns(),
        )

    @classmethod
    def from_json(cls, raw: bytes, key: str) -> Block:
        """Decode and validate (see module invariants); raises ``IPAMRecordError``."""
        what = f"block {key}"
        d = _load_object(raw, what)
        try:
            cidr = ipaddress.ip_network(d.pop("cidr"), strict=True)
        except (KeyError, TypeError, ValueError):
            raise IPAMRecordError(f"{what}: field cidr: missing or not a CIDR") from None
        size = cidr.num_addresses
        if size > MAX_BLOCK_ADDRESSES:
            raise IPAMRecordError(f"{what}: field cidr: block {cidr} is too large")
        affinity = d.pop("affinity", None)
        if affinity is not None and not isinstance(affinity, str):
            raise IPAMRecordError(f"{what}: field affinity: expected a string or null")
        strict = d.pop("strictAffinity", False)
        allocations = _int_list(d.pop("allocations", None), f"{what}: field allocations")
        unalloc_raw = _int_list(d.pop("unallocated", None) or [], f"{what}: field unallocated")
        attrs_raw = d.pop("attributes", None) or []
        seq = d.pop("sequenceNumber", 0)
        seq_map = d.pop("sequenceNumberForAllocation", None) or {}
        deleted = d.pop("deleted", False)
        if not isinstance(attrs_raw, list):
            raise IPAMRecordError(f"{what}: field attributes: expected a list")
        attributes: list[AllocationAttribute] = []
        for i, a in enumerate(attrs_raw):
            if not isinstance(a, dict):
                raise IPAMRecordError(f"{what}: field attributes[{i}]: expected an object")
            handle = a.get("handle_id")
            secondary = a.get("secondary") or {}
            if handle is not None and not isinstance(handle, str):
                raise IPAMRecordError(f"{what}: field attributes[{i}].handle_id: not a string")
            if not isinstance(secondary, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in secondary.items()
            ):
                raise IPAMRecordError(f"{what}: field attributes[{i}].secondary: not a map")
            attributes.append(AllocationAttribute(handle, dict(secondary)))
        if len(allocations) != size:
            raise IPAMRecordError(
                f"{what}: field allocations: {len(allocations)} entries for {size} addresses"
            )
        seen: set[int] = set()
        unallocated: list[int] = []
        for o in unalloc_raw:
            if o is None or not 0 <= o < size or o in seen or allocations[o] is not None:
                raise IPAMRecordError(f"{what}: field unallocated: bad or duplicate ordinal {o}")
            seen.add(o)
            unallocated.append(o)
        for o, idx in enumerate(allocations):
            if idx is None:
                if o not in seen:
                    raise IPAMRecordError(
                        f"{what}: field unallocated: free ordinal {o} is not listed"
                    )
            elif not 0 <= idx < len(attributes):
                raise IPAMRecordError(
                    f"{what}: field allocations[{o}]: attribute index {idx} out of range"
                )
        if isinstance(seq, bool) or not isinstance(seq, int):
            raise IPAMRecordError(f"{what}: field sequenceNumber: expected an integer")
        if not isinstance(seq_map, dict):
            raise IPAMRecordError(f"{what}: field sequenceNumberForAllocation: not an object")
        return cls(
            cidr=cidr,
            affinity=affinity,
            strict_affinity=bool(strict),
            allocations=allocations,
            unallocated=unallocated,
            attributes=attributes,
            sequence_number=seq,
            seq_for_allocation={str(k): v for k, v in seq_map.items() if isinstance(v, int)},
            deleted=bool(deleted),
            extra=d,
        )

    def to_json(self) -> bytes:
        """Calico's field order; unknown fields read from the store are kept after them."""
        d: dict[str, Any] = {
            "cidr": cidr_text(self.cidr),
            "affinity": self.affinity,
            "strictAffinity": self.strict_affinity,
            "allocations": self.allocations,
            "unallocated": self.unallocated,
            "attributes": [a.to_dict() for a in self.attributes],
            "sequenceNumber": self.sequence_number,
            "sequenceNumberForAllocation": self.seq_for_allocation,
            "deleted": self.deleted,
        }
        for k, v in self.extra.items():
            d.setdefault(k, v)
        return _dump(d)

    # ---- queries

    @property
    def size(self) -> int:
        return len(self.allocations)

    @property
    def host(self) -> str | None:
        """The node this block is affine to (``affinity == "host:<node>"``), else None."""
        if self.affinity is not None and self.affinity.startswith("host:"):
            return self.affinity[5:] or None
        return None

    @property
    def free(self) -> int:
        return len(self.unallocated)

    @property
    def allocated(self) -> int:
        return self.size - len(self.unallocated)

    def is_empty(self) -> bool:
        return not self.allocated

    def ip(self, ordinal: int) -> IPAddr:
        return self.cidr.network_address + ordinal

    def ordinal(self, ip: IPAddr) -> int | None:
        if ip.version != self.cidr.version or ip not in self.cidr:
            return None
        return int(ip) - int(self.cidr.network_address)

    def attribute_of(self, ordinal: int) -> AllocationAttribute | None:
        idx = self.allocations[ordinal]
        return None if idx is None else self.attributes[idx]

    def allocated_ordinals(self) -> list[int]:
        return [o for o, idx in enumerate(self.allocations) if idx is not None]

    def ordinals_for_handle(self, handle_id: str) -> list[int]:
        wanted = {i for i, a in enumerate(self.attributes) if a.handle_id == handle_id}
        return [o for o, idx in enumerate(self.allocations) if idx in wanted]

    # ---- mutations (each followed by one CAS write of the block)

    def _attribute_index(self, handle_id: str | None, secondary: Mapping[str, str]) -> int:
        attr = AllocationAttribute(handle_id, dict(secondary))
        for i, a in enumerate(self.attributes):
            if a == attr:
                return i
        self.attributes.append(attr)
        return len(self.attributes) - 1

    def auto_assign(
        self, num: int, handle_id: str | None, secondary: Mapping[str, str]
    ) -> list[int]:
        """Take up to ``num`` ordinals from the front of the free list; returns them."""
        take = self.unallocated[: max(num, 0)]
        if not take:
            return []
        idx = self._attribute_index(handle_id, secondary)
        for o in take:
            self.allocations[o] = idx
            self.seq_for_allocation[str(o)] = self.sequence_number
        del self.unallocated[: len(take)]
        return take

    def assign(self, ordinal: int, handle_id: str | None, secondary: Mapping[str, str]) -> bool:
        """Take one specific ordinal; False if it is already allocated."""
        if self.allocations[ordinal] is not None:
            return False
        self.allocations[ordinal] = self._attribute_index(handle_id, secondary)
        self.unallocated.remove(ordinal)
        self.seq_for_allocation[str(ordinal)] = self.sequence_number
        return True

    def release(self, ordinals: Iterable[int]) -> dict[str | None, int]:
        """Free the allocated ones among ``ordinals``; returns released counts per handle."""
        counts: dict[str | None, int] = {}
        released: list[int] = []
        for o in dict.fromkeys(ordinals):
            idx = self.allocations[o]
            if idx is None:
                continue
            handle = self.attributes[idx].handle_id
            counts[handle] = counts.get(handle, 0) + 1
            self.allocations[o] = None
            self.seq_for_allocation.pop(str(o), None)
            released.append(o)
        self.unallocated.extend(released)
        if released:
            self._drop_unused_attributes()
        return counts

    def _drop_unused_attributes(self) -> None:
        used = {idx for idx in self.allocations if idx is not None}
        if len(used) == len(self.attributes):
            return
        renumber: dict[int, int] = {}
        kept: list[AllocationAttribute] = []
        for i, a in enumerate(self.attributes):
            if i in used:
                renumber[i] = len(kept)
                kept.append(a)
        self.attributes = kept
        self.allocations = [None if idx is None else renumber[idx] for idx in self.allocations]

    def bump(self) -> None:
        """Called before every write (Calico increments the sequence number per update)."""
        self.sequence_number += 1
