"""bgp.model.Prefix.from_int: the same value, in every respect, as ``IPv4Network((value, plen))``.

``from_int`` skips ``IPv4Network.__init__`` for speed; every public property and operation is
compared here with the constructor's result, for every prefix length.
"""

from __future__ import annotations

import copy
import itertools
import pickle
import random
from ipaddress import IPv4Address, IPv4Network, ip_network

import pytest

from bgp.model import Prefix, parse_prefix

MASKS = [(0xFFFFFFFF << (32 - n)) & 0xFFFFFFFF for n in range(33)]
SPECIAL_VALUES = [
    0x00000000,  # 0.0.0.0
    0xFFFFFFFF,  # 255.255.255.255
    0x0A000000,  # 10/8: private
    0xAC100000,  # 172.16/12: private
    0xC0A80100,  # 192.168.1.0
    0x7F000001,  # loopback
    0xA9FE0000,  # 169.254/16: link-local
    0xE0000000,  # multicast
    0xF0000000,  # reserved
    0x64400000,  # 100.64/10: shared address space
    0xC0000200,  # 192.0.2.0/24: documentation
    0x08080808,  # 8.8.8.8: global
]


def _values(plen: int, count: int = 12, seed: int = 0) -> list[int]:
    rng = random.Random(seed * 100 + plen)
    raw = SPECIAL_VALUES + [rng.getrandbits(32) for _ in range(count)]
    return sorted({v & MASKS[plen] for v in raw})


ALL = [(v, plen) for plen in range(33) for v in _values(plen)]


def _public(net: IPv4Network) -> tuple[object, ...]:
    """Every public, cheap property of a network."""
    return (
        str(net),
        repr(net),
        net.prefixlen,
        net.network_address,
        net.netmask,
        net.hostmask,
        net.broadcast_address,
        net.num_addresses,
        net.with_prefixlen,
        net.with_netmask,
        net.with_hostmask,
        net.compressed,
        net.exploded,
        net.max_prefixlen,
        net.version,
        net.is_private,
        net.is_global,
        net.is_multicast,
        net.is_reserved,
        net.is_loopback,
        net.is_link_local,
        net.is_unspecified,
        hash(net),
        int(net.network_address),
        int(net.netmask),
        int(net.hostmask),
        net[0],
        net[-1],
        net.supernet() if net.prefixlen else None,
        list(net.subnets()) if net.prefixlen < 32 else None,
        list(net.subnets(new_prefix=min(32, net.prefixlen + 2))),
    )


@pytest.mark.parametrize("plen", range(33))
def test_from_int_equals_the_constructor_for_every_length(plen: int) -> None:
    for value in _values(plen):
        fast = Prefix.from_int(value, plen)
        plain = IPv4Network((value, plen))
        slow = Prefix((value, plen))
        assert type(fast) is Prefix
        assert fast == plain and plain == fast and fast == slow
        assert (fast != plain) is False and (plain != fast) is False
        assert hash(fast) == hash(plain) == hash(slow)
        assert str(fast) == str(plain) == f"{IPv4Address(value)}/{plen}"
        assert repr(fast) == repr(plain) == f"IPv4Network('{IPv4Address(value)}/{plen}')"
        assert fast.prefixlen == plen
        assert fast.network_address == plain.network_address
        assert type(fast.network_address) is IPv4Address
        assert fast.netmask == plain.netmask and type(fast.netmask) is IPv4Address
        assert fast.hostmask == plain.hostmask
        assert fast.broadcast_address == plain.broadcast_address
        assert fast.num_addresses == plain.num_addresses == 2 ** (32 - plen)
        assert fast.with_prefixlen == plain.with_prefixlen
        assert fast.is_private == plain.is_private
        assert _public(fast) == _public(plain)
        assert _public(Prefix.from_int(value, plen)) == _public(slow)  # fresh: nothing cached


@pytest.mark.parametrize("plen", range(33))
def test_from_int_equals_parse_prefix_and_ip_network(plen: int) -> None:
    for value in _values(plen, seed=1):
        text = f"{IPv4Address(value)}/{plen}"
        fast = Prefix.from_int(value, plen)
        assert fast == parse_prefix(text) == ip_network(text)
        assert hash(fast) == hash(parse_prefix(text)) == hash(ip_network(text))


@pytest.mark.parametrize("plen", range(24, 33))
def test_hosts_of_short_prefixes(plen: int) -> None:
    for value in _values(plen, count=4, seed=2):
        fast = Prefix.from_int(value, plen)
        plain = IPv4Network((value, plen))
        assert list(fast.hosts()) == list(plain.hosts())
        assert list(fast) == list(plain)
    # the special cases of /31 (both addresses) and /32 (the address itself)
    if plen == 31:
        assert list(Prefix.from_int(0x0A000000, 31).hosts()) == [
            IPv4Address("10.0.0.0"),
            IPv4Address("10.0.0.1"),
        ]
    if plen == 32:
        assert list(Prefix.from_int(0x0A000005, 32).hosts()) == [IPv4Address("10.0.0.5")]
    if plen == 30:
        assert list(Prefix.from_int(0x0A000004, 30).hosts()) == [
            IPv4Address("10.0.0.5"),
            IPv4Address("10.0.0.6"),
        ]


@pytest.mark.parametrize("plen", range(0, 24))
def test_hosts_of_long_prefixes_start_and_end_alike(plen: int) -> None:
    for value in _values(plen, count=2, seed=3):
        fast = Prefix.from_int(value, plen)
        plain = IPv4Network((value, plen))
        assert list(itertools.islice(fast.hosts(), 5)) == list(itertools.islice(plain.hosts(), 5))
        assert fast[1] == plain[1] and fast[-2] == plain[-2]


def test_subnet_supernet_overlaps_like_ipv4network() -> None:
    rng = random.Random(4632)
    pairs: list[tuple[int, int]] = []
    base = rng.getrandbits(32)
    for plen in range(33):  # nested: a chain of prefixes around one address
        pairs.append((base & MASKS[plen], plen))
    for _ in range(60):
        plen = rng.randint(0, 32)
        pairs.append((rng.getrandbits(32) & MASKS[plen], plen))
    checked = {"subnet": 0, "supernet": 0, "overlap": 0, "disjoint": 0}
    for (va, la), (vb, lb) in itertools.product(pairs, repeat=2):
        fa: IPv4Network = Prefix.from_int(va, la)
        fb: IPv4Network = Prefix.from_int(vb, lb)
        pa, pb = IPv4Network((va, la)), IPv4Network((vb, lb))
        assert fa.subnet_of(fb) == pa.subnet_of(pb) == fa.subnet_of(pb) == pa.subnet_of(fb)
        assert fa.supernet_of(fb) == pa.supernet_of(pb) == fa.supernet_of(pb)
        assert fa.overlaps(fb) == pa.overlaps(pb) == fa.overlaps(pb) == pa.overlaps(fb)
        assert (fa < fb) == (pa < pb) and (fa > fb) == (pa > pb)
        assert (fa == fb) == (pa == pb) and (fa == pb) == (pa == pb)
        assert fa.compare_networks(fb) == pa.compare_networks(pb)
        checked["subnet"] += pa.subnet_of(pb) and pa != pb
        checked["supernet"] += pa.supernet_of(pb) and pa != pb
        checked["overlap"] += pa.overlaps(pb)
        checked["disjoint"] += not pa.overlaps(pb)
    assert min(checked.values()) > 30  # every relation was seen


def test_containment_of_addresses() -> None:
    rng = random.Random(99)
    for plen in range(33):
        for value in _values(plen, count=3, seed=4):
            fast = Prefix.from_int(value, plen)
            plain = IPv4Network((value, plen))
            probes = [
                IPv4Address(value),
                IPv4Address(value | (~MASKS[plen] & 0xFFFFFFFF)),  # broadcast
                IPv4Address((value - 1) & 0xFFFFFFFF),
                IPv4Address((value | (~MASKS[plen] & 0xFFFFFFFF)) + 1 & 0xFFFFFFFF),
                *(IPv4Address(rng.getrandbits(32)) for _ in range(5)),
            ]
            for address in probes:
                assert (address in fast) == (address in plain)
            assert IPv4Address(value) in fast
            assert plain.broadcast_address in fast


def test_dict_keys_mixed_with_ipv4network() -> None:
    fast: dict[IPv4Network, tuple[int, int]] = {Prefix.from_int(v, p): (v, p) for v, p in ALL}
    plain = {IPv4Network((v, plen)): (v, plen) for v, plen in ALL}
    assert len(fast) == len(plain) == len(ALL)
    assert fast == plain
    for v, plen in ALL:
        assert fast[IPv4Network((v, plen))] == (v, plen)
        assert plain[Prefix.from_int(v, plen)] == (v, plen)
        assert Prefix.from_int(v, plen) in plain and IPv4Network((v, plen)) in fast
    mixed: dict[IPv4Network, str] = {}
    for v, plen in ALL:
        mixed[Prefix.from_int(v, plen)] = "fast"
        mixed[IPv4Network((v, plen))] = "plain"  # the same key: replaces the value
    assert len(mixed) == len(ALL) and set(mixed.values()) == {"plain"}
    assert {Prefix.from_int(v, p) for v, p in ALL} == {IPv4Network((v, p)) for v, p in ALL}


def test_sorting_together_with_ipv4network() -> None:
    rng = random.Random(5)
    items: list[IPv4Network] = []
    for v, plen in ALL:
        items.append(Prefix.from_int(v, plen) if rng.random() < 0.5 else IPv4Network((v, plen)))
    rng.shuffle(items)
    ordered = sorted(items)
    reference = sorted(IPv4Network((v, plen)) for v, plen in ALL)
    assert ordered == reference
    assert [str(n) for n in ordered] == [str(n) for n in reference]
    assert max(items) == reference[-1] and min(items) == reference[0]


@pytest.mark.parametrize(
    ("text", "private"),
    [
        ("10.0.0.0/8", True),
        ("10.1.0.0/16", True),
        ("172.16.0.0/12", True),
        ("192.168.0.0/16", True),
        ("192.168.1.0/24", True),
        ("127.0.0.0/8", True),
        ("169.254.0.0/16", True),
        ("8.8.8.0/24", False),
        ("0.0.0.0/0", False),
        ("10.0.0.0/7", False),
        ("192.0.2.0/24", True),
        ("1.1.1.1/32", False),
        ("10.255.255.254/31", True),
    ],
)
def test_is_private(text: str, private: bool) -> None:
    plain = IPv4Network(text)
    fast = Prefix.from_int(int(plain.network_address), plain.prefixlen)
    assert fast.is_private == plain.is_private == private
    assert fast.is_global == plain.is_global


def test_copy_and_pickle_keep_the_value() -> None:
    for v, plen in ALL[::7]:
        fast = Prefix.from_int(v, plen)
        for other in (copy.copy(fast), copy.deepcopy(fast), pickle.loads(pickle.dumps(fast))):
            assert type(other) is Prefix
            assert other == fast == IPv4Network((v, plen)) and hash(other) == hash(fast)


def test_hash_is_computed_once_and_stays_right() -> None:
    fast = Prefix.from_int(0x0A010000, 16)
    first = hash(fast)
    assert first == hash(IPv4Network("10.1.0.0/16"))
    assert hash(fast) == first and fast._hash == first
    assert hash(Prefix.from_int(0x0A010000, 17)) != first  # the mask is part of it


def test_distinct_lengths_are_distinct_values() -> None:
    nets = {Prefix.from_int(0, plen) for plen in range(33)}
    assert len(nets) == 33
    assert Prefix.from_int(0x0A000000, 8) != Prefix.from_int(0x0A000000, 9)
    assert Prefix.from_int(0x0A000000, 8) != IPv4Network("10.0.0.0/9")
