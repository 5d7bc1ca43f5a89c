"""The BGP agent's hot-path helpers agree with the plain versions they stand in for."""

from __future__ import annotations

import random
from ipaddress import IPv4Address, IPv4Network, ip_network

import pytest

from bgp.model import Path, Prefix, parse_prefix
from bgp.rib import Rib


@pytest.mark.parametrize("text", ["10.64.3.64/26", "0.0.0.0/0", "192.168.1.7/32", "10.0.0.0/8"])
def test_parse_prefix_equals_ip_network(text: str) -> None:
    p = parse_prefix(text)
    n = ip_network(text)
    assert p == n and n == p and hash(p) == hash(n) and str(p) == str(n)
    # a plain network finds a Prefix key (and the reverse): mixing them is the point
    assert {n: 1}[p] == 1 and {p: 2}[n] == 2  # type: ignore[index]
    assert repr(p) == repr(n)
    assert isinstance(p, IPv4Network) and isinstance(p, Prefix)


def test_parse_prefix_bare_address_is_host_route() -> None:
    assert parse_prefix("10.1.2.3") == ip_network("10.1.2.3/32")


@pytest.mark.parametrize(
    "text", ["10.0.0.1/24", "10.0.0.0/33", "10.1/16", "2001:db8::/32", "10.0.0.0/", "x", ""]
)
def test_parse_prefix_rejects_what_ip_network_strict_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_prefix(text)


def _snapshot(rib: Rib) -> dict[IPv4Network, tuple[Path, ...]]:
    return {p: rib.candidates(p) for p in rib.prefixes()}  # type: ignore[misc]


def test_update_many_matches_update_one_by_one() -> None:
    rng = random.Random(7)
    peers = [IPv4Address(f"198.51.100.{i}") for i in (2, 3, 4)]
    prefixes = [IPv4Network(f"10.64.{i}.0/24") for i in range(40)]
    paths = {
        (peer, hop): Path(next_hop=IPv4Address(f"198.51.100.{hop}"), peer=peer)
        for peer in peers
        for hop in (20, 21)
    }
    one, many = Rib(), Rib()
    one.watch("w")
    many.watch("w")
    for step in range(60):
        peer = rng.choice(peers)
        batch: list[tuple[IPv4Network, Path | None]] = []
        for _ in range(rng.randint(1, 30)):
            prefix = rng.choice(prefixes)
            path = None if rng.random() < 0.3 else paths[(peer, rng.choice((20, 21)))]
            batch.append((prefix, path))
        if step % 15 == 7:  # graceful restart: routes kept stale, then refreshed or dropped
            one.peer_down(peer, stale=True, now=0, restart_time=100)
            many.peer_down(peer, stale=True, now=0, restart_time=100)
        for prefix, path in batch:
            one.update(peer, prefix, path)
        many.update_many(peer, batch)
        assert _snapshot(one) == _snapshot(many)
        assert one.changes() == many.changes()
        assert one.changes("w") == many.changes("w")
        if step % 15 == 12:
            one.eor(peer)
            many.eor(peer)
            assert _snapshot(one) == _snapshot(many)
    assert any(_snapshot(one).values())


def test_update_many_checks_the_peer() -> None:
    rib = Rib()
    path = Path(next_hop=IPv4Address("198.51.100.9"), peer=IPv4Address("198.51.100.2"))
    with pytest.raises(ValueError):
        rib.update_many(IPv4Address("198.51.100.3"), [(IPv4Network("10.0.0.0/24"), path)])
