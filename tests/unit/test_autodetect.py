"""Node address autodetection (``datastore.autodetect``), table-driven over fake interface lists."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface

import pytest

from datastore.autodetect import (
    AutodetectError,
    HostInterface,
    Method,
    detect,
    interfaces_from_ip_json,
    local_prefix,
    parse_method,
)


def iface(name: str, index: int, *addrs: str, up: bool = True) -> HostInterface:
    return HostInterface(name, index, up, tuple(IPv4Interface(a) for a in addrs))


# A host as calico/node would meet it: loopback, a docker bridge and a CNI bridge created before
# the uplinks, a workload veth, two uplinks, a down interface, a link-local-only interface.
HOST = [
    iface("lo", 1, "127.0.0.1/8"),
    iface("docker0", 2, "172.17.0.1/16"),
    iface("cni0", 3, "10.88.0.1/16"),
    iface("tbw1234567890a", 4, "10.65.0.9/32"),
    iface("eth9", 5, "203.0.113.77/24", up=False),
    iface("ens3", 6, "169.254.10.10/16", "198.51.100.11/24", "198.51.100.99/24"),
    iface("ens4", 7, "203.0.113.11/25"),
    iface("eth0.100", 8, "203.0.113.200/28"),
    iface("tunl0", 9, "10.65.7.1/32"),
    iface("linkonly", 10, "169.254.0.5/16"),
]

CASES = [
    # (method, expected address, expected interface)
    ("first-found", "198.51.100.11/24", "ens3"),
    ("", "198.51.100.11/24", "ens3"),
    ("interface=ens4", "203.0.113.11/25", "ens4"),
    ("interface=ens.*", "198.51.100.11/24", "ens3"),
    ("interface=^eth0.*,ens4", "203.0.113.11/25", "ens4"),
    ("interface=eth0", "203.0.113.200/28", "eth0.100"),  # Calico's unanchored match
    ("interface=docker0", "172.17.0.1/16", "docker0"),  # no default exclusions here
    ("skip-interface=ens3", "203.0.113.11/25", "ens4"),
    ("skip-interface=ens3, ens4", "203.0.113.200/28", "eth0.100"),
    ("cidr=203.0.113.0/24", "203.0.113.11/25", "ens4"),
    ("cidr=198.51.100.96/27", "198.51.100.99/24", "ens3"),
    ("cidr=192.168.0.0/16,203.0.113.192/26", "203.0.113.200/28", "eth0.100"),
    ("cidr=10.65.0.0/16", "10.65.0.9/32", "tbw1234567890a"),  # cidr= ignores exclusions
]


@pytest.mark.parametrize(("method", "address", "interface"), CASES)
def test_detect_table(method: str, address: str, interface: str) -> None:
    found = detect(HOST, parse_method(method))
    assert found.address == IPv4Interface(address)
    assert found.address.network.prefixlen == IPv4Interface(address).network.prefixlen
    assert found.interface == interface


@pytest.mark.parametrize(
    ("source", "address", "interface"),
    [
        ("198.51.100.99", "198.51.100.99/24", "ens3"),
        ("203.0.113.11", "203.0.113.11/25", "ens4"),
        # the route's source may be on an interface first-found skips: it is still used
        ("172.17.0.1", "172.17.0.1/16", "docker0"),
    ],
)
def test_can_reach_matches_the_route_source_to_its_interface(
    source: str, address: str, interface: str
) -> None:
    found = detect(HOST, parse_method("can-reach=198.51.100.1"), IPv4Address(source))
    assert (found.address, found.interface) == (IPv4Interface(address), interface)


def test_can_reach_source_not_local_is_an_error() -> None:
    with pytest.raises(AutodetectError, match=r"192\.0\.2\.1 is not on any local interface"):
        detect(HOST, parse_method("can-reach=198.51.100.1"), IPv4Address("192.0.2.1"))


@pytest.mark.parametrize(
    ("interfaces", "method", "message"),
    [
        (
            [iface("lo", 1, "127.0.0.1/8"), iface("docker0", 2, "172.17.0.1/16")],
            "first-found",
            "no eligible interface",
        ),
        ([iface("eth0", 1, "198.51.100.1/24", up=False)], "first-found", r"eth0 \(down\)"),
        ([iface("eth0", 1, "169.254.3.3/16")], "first-found", "looked at eth0"),
        (HOST, "interface=wlan.*", "no eligible interface"),
        (HOST, "cidr=192.168.0.0/16", "no usable IPv4 address"),
    ],
)
def test_nothing_found(interfaces: list[HostInterface], method: str, message: str) -> None:
    with pytest.raises(AutodetectError, match=message):
        detect(interfaces, parse_method(method))


def test_first_found_order_is_by_ifindex_not_list_order() -> None:
    shuffled = [iface("eth1", 7, "203.0.113.5/24"), iface("eth0", 3, "198.51.100.5/24")]
    assert detect(shuffled, parse_method("first-found")).interface == "eth0"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, Method("first-found")),
        ("first-found", Method("first-found")),
        ("interface=eth.*,bond0", Method("interface", regexes=("eth.*", "bond0"))),
        ("skip-interface=eth1", Method("skip-interface", regexes=("eth1",))),
        ("can-reach=198.51.100.1", Method("can-reach", target="198.51.100.1")),
        ("can-reach=etcd.example", Method("can-reach", target="etcd.example")),
    ],
)
def test_parse_method(text: str | None, expected: Method) -> None:
    assert parse_method(text) == expected


def test_parse_cidr_method_masks_host_bits() -> None:
    m = parse_method("cidr=198.51.100.7/24")
    assert [str(c) for c in m.cidrs] == ["198.51.100.0/24"]
    assert str(m) == "cidr=198.51.100.0/24"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("first-fund", "unknown IP autodetection method"),
        ("kubernetes-internal-ip", "unknown IP autodetection method"),
        ("interface=", "at least one regex"),
        ("interface=eth[", "invalid regex"),
        ("cidr=", "at least one CIDR"),
        ("cidr=300.1.1.0/24", "invalid CIDR"),
        ("cidr=2001:db8::/64", "not an IPv4 CIDR"),
        ("can-reach=", "give an address or host name"),
    ],
)
def test_parse_method_errors(text: str, message: str) -> None:
    with pytest.raises(AutodetectError, match=message):
        parse_method(text)


def test_interfaces_from_ip_json() -> None:
    doc = [
        {
            "ifindex": 1,
            "ifname": "lo",
            "flags": ["LOOPBACK", "UP", "LOWER_UP"],
            "addr_info": [{"family": "inet", "local": "127.0.0.1", "prefixlen": 8}],
        },
        {
            "ifindex": 4,
            "ifname": "eth0",
            "flags": ["BROADCAST", "MULTICAST", "UP"],
            "addr_info": [
                {"family": "inet", "local": "198.51.100.11", "prefixlen": 24},
                {"family": "inet6", "local": "2001:db8::1", "prefixlen": 64},
                {"family": "inet", "local": "198.51.100.12", "prefixlen": 24},
            ],
        },
        {"ifindex": 5, "ifname": "eth1", "flags": ["BROADCAST"], "addr_info": []},
        {"ifindex": 6},  # no name: skipped
    ]
    got = interfaces_from_ip_json(doc)
    assert got == [
        iface("lo", 1, "127.0.0.1/8"),
        iface("eth0", 4, "198.51.100.11/24", "198.51.100.12/24"),
        iface("eth1", 5, up=False),
    ]
    assert interfaces_from_ip_json({"not": "a list"}) == []


def test_local_prefix_gives_a_bare_address_its_prefix() -> None:
    found = local_prefix(HOST, IPv4Address("203.0.113.11"))
    assert found is not None and found.address == IPv4Interface("203.0.113.11/25")
    assert local_prefix(HOST, IPv4Address("198.51.100.250")) is None
