"""bgp.kernel_routes: routes from best paths (plain, IP-in-IP, ECMP), blackholes, announcements."""

from __future__ import annotations

from ipaddress import IPv4Interface, ip_address, ip_network

import pytest

from bgp.kernel_routes import (
    announcements,
    blackhole_routes,
    containing_pool,
    desired_routes,
)
from bgp.model import Path, PoolInfo
from kernel.routes import NextHop, Route

ME = IPv4Interface("198.51.100.1/24")
POOLS = [
    PoolInfo(ip_network("10.65.0.0/16"), ipip_mode="Never", name="plain"),
    PoolInfo(ip_network("10.66.0.0/16"), ipip_mode="Always", name="ipip"),
    PoolInfo(ip_network("10.67.0.0/16"), ipip_mode="CrossSubnet", name="cross"),
    PoolInfo(ip_network("10.67.128.0/17"), ipip_mode="Always", name="cross-more-specific"),
    PoolInfo(ip_network("10.68.0.0/16"), disabled=True, name="off"),
    PoolInfo(ip_network("10.69.0.0/16"), disable_bgp_export=True, name="noexport"),
]
NODES = {ip_address("198.51.100.2"), ip_address("203.0.113.2"), ip_address("198.51.100.3")}


def p(nh: str, peer: str | None = None) -> Path:
    return Path(next_hop=ip_address(nh), peer=ip_address(peer or nh))


def routes(best: dict[str, list[Path]], blocks: tuple[str, ...] = ()) -> dict[str, Route]:
    out = desired_routes(
        {ip_network(k): v for k, v in best.items()},
        my_address=ME,
        my_blocks=[ip_network(b) for b in blocks],
        pools=POOLS,
        node_addresses=NODES,
    )
    return {str(k): v for k, v in out.items()}


ON = ip_address("198.51.100.2")
OFF = ip_address("203.0.113.2")


@pytest.mark.parametrize(
    ("prefix", "nh", "expected"),
    [
        ("10.65.1.0/26", "198.51.100.2", Route(ip_network("10.65.1.0/26"), gateway=ON)),
        ("10.65.1.0/26", "203.0.113.2", Route(ip_network("10.65.1.0/26"), gateway=OFF)),
        (
            "10.66.1.0/26",
            "198.51.100.2",
            Route(ip_network("10.66.1.0/26"), gateway=ON, ifname="tunl0", onlink=True),
        ),
        ("10.67.1.0/26", "198.51.100.2", Route(ip_network("10.67.1.0/26"), gateway=ON)),
        (
            "10.67.1.0/26",
            "203.0.113.2",
            Route(ip_network("10.67.1.0/26"), gateway=OFF, ifname="tunl0", onlink=True),
        ),
        (
            "10.67.200.0/26",  # the more specific pool (Always) decides
            "198.51.100.2",
            Route(ip_network("10.67.200.0/26"), gateway=ON, ifname="tunl0", onlink=True),
        ),
        ("10.68.1.0/26", "198.51.100.2", Route(ip_network("10.68.1.0/26"), gateway=ON)),
    ],
)
def test_next_hop_per_pool_mode(prefix: str, nh: str, expected: Route) -> None:
    assert routes({prefix: [p(nh)]}) == {prefix: expected}


def test_ecmp_multipath_and_merge() -> None:
    got = routes(
        {
            "10.67.1.0/26": [
                p("198.51.100.2"),
                p("203.0.113.2"),
                p("198.51.100.2", "198.51.100.3"),
            ],
        }
    )
    assert got == {
        "10.67.1.0/26": Route(
            ip_network("10.67.1.0/26"),
            nexthops=(
                NextHop(gateway=ON),
                NextHop(gateway=OFF, ifname="tunl0", onlink=True),
            ),
        )
    }


def test_filters() -> None:
    got = routes(
        {
            "10.65.1.0/26": [p("198.51.100.2")],  # our own block: never installed
            "10.65.1.5/32": [p("198.51.100.2")],  # a borrowed address inside our block: installed
            "172.16.0.0/16": [p("198.51.100.2")],  # outside every pool, from a cluster node
            "0.0.0.0/0": [p("198.51.100.254")],  # from an external peer: anything goes
            "198.51.100.0/25": [p("198.51.100.254")],  # inside our own subnet: never
            "10.65.2.0/26": [p("198.51.100.1")],  # next hop is ourselves
            "10.65.3.0/26": [p("10.65.3.1", "198.51.100.2")],  # next hop inside the prefix
            "10.65.4.0/26": [],
            "10.65.5.0/26": [p("198.51.100.1"), p("198.51.100.2")],  # self dropped, other kept
        },
        blocks=("10.65.1.0/26",),
    )
    assert set(got) == {"10.65.1.5/32", "0.0.0.0/0", "10.65.5.0/26"}
    assert got["0.0.0.0/0"] == Route(ip_network("0.0.0.0/0"), gateway=ip_address("198.51.100.254"))
    assert got["10.65.5.0/26"].gateway == ON


def test_ipv6_ignored() -> None:
    out = desired_routes(
        {
            ip_network("fd00::/64"): [
                Path(next_hop=ip_address("fd00::1"), peer=ip_address("fd00::1"))
            ]
        },
        my_address=ME,
        my_blocks=[],
        pools=POOLS,
        node_addresses=set(),
    )
    assert out == {}


def test_blackholes() -> None:
    got = blackhole_routes(
        [
            ip_network("10.65.1.64/26"),
            ip_network("10.65.1.0/26"),
            ip_network("fd00::/122"),
            ip_network("10.65.1.0/26"),
        ]
    )
    assert got == (
        Route(ip_network("10.65.1.0/26"), type="blackhole"),
        Route(ip_network("10.65.1.64/26"), type="blackhole"),
    )


def test_announcements() -> None:
    blocks = [
        ip_network(b)
        for b in (
            "10.66.0.0/26",
            "10.65.1.0/26",
            "10.68.0.0/26",  # disabled pool
            "10.69.0.0/26",  # disableBGPExport
            "172.16.0.0/26",  # no pool
            "10.65.9.9/32",  # host route
            "0.0.0.0/0",
            "fd00::/122",
        )
    ]
    assert announcements(blocks, POOLS, ME) == (
        ip_network("10.65.1.0/26"),
        ip_network("10.66.0.0/26"),
    )
    weird = [ip_network("198.51.100.0/26")]
    pools = [*POOLS, PoolInfo(ip_network("198.51.100.0/24"))]
    assert announcements(weird, pools, ME) == ()
    assert announcements(weird, pools) == (ip_network("198.51.100.0/26"),)


def test_containing_pool_picks_most_specific() -> None:
    pool = containing_pool(ip_network("10.67.200.0/26"), POOLS)
    assert pool is not None and pool.name == "cross-more-specific"
    assert containing_pool(ip_network("10.0.0.0/8"), POOLS) is None
    assert containing_pool(ip_network("fd00::/64"), POOLS) is None


def test_borrowed_addresses_are_announced_as_host_routes() -> None:
    blocks = [ip_network("10.65.1.0/26")]
    borrowed = [ip_network("10.65.9.7/32"), ip_network("10.69.0.5/32"), ip_network("10.99.0.1/32")]
    got = announcements(blocks, POOLS, None, borrowed=borrowed)
    # The pool-less and the no-export addresses are not announced; a /32 is only ever
    # announced when it is borrowed, never as a "block".
    assert got == (ip_network("10.65.1.0/26"), ip_network("10.65.9.7/32"))
    assert announcements([ip_network("10.65.9.8/32")], POOLS) == ()
