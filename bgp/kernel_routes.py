"""Desired kernel routes from best BGP paths, local blackholes, and what this node announces.

Role: pure translation between the RIB and the route driver (``kernel.routes.RouteTable`` with
protocol 81). ``desired_routes`` maps best paths to ``Route`` values; ``blackhole_routes`` gives
one ``blackhole`` route per block affine to this node (so that traffic to an unallocated address
of our block dies here instead of following a less specific route); ``announcements`` lists the
prefixes this node originates.

Inputs: best paths per prefix (``Rib.best``), this node's BGP address *with prefix length* (its
subnet), its affine blocks, the IP pools, the addresses of the cluster's nodes.
Outputs: ``dict[prefix, Route]``; tuples of ``Route`` / ``IPv4Network``.

Rules:
- A learned prefix is installed when it lies inside an IP pool, or when every path kept for it
  comes from a peer that is not a cluster node (an external router may send anything, e.g. a
  default route); other paths are ignored.
- Never installed: one of our own blocks (exact match; more specific routes inside our blocks,
  e.g. a /32 borrowed by another node, are installed), a prefix inside our own subnet (it would
  shadow the connected route of the underlay), IPv6, and paths whose next hop is ourselves or
  lies inside the prefix itself while outside our subnet (it could only be reached through the
  route being installed; a default route via a next hop on our subnet is fine).
- Next hop per path, by the ``ipipMode`` of the most specific pool containing the prefix:
  ``Always``: ``via NH dev tunl0 onlink``; ``CrossSubnet``: ``via NH dev tunl0 onlink`` when NH is
  outside our subnet, plain ``via NH`` inside it; ``Never`` (or no pool): plain ``via NH`` (the
  kernel picks the device).
- Several best paths (ECMP) with different next hops give one multipath route; identical next
  hops are merged.
- Announced: our affine blocks that lie inside an enabled pool without ``disableBGPExport``;
  never a default route (/0) or a host route (/32).

Invariant: outputs are functions of the inputs' values (no order dependence, no I/O).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from bgp.model import IPAddress, IPNetwork, Path, PoolInfo
from kernel.routes import NextHop, Route

__all__ = [
    "TUNNEL_DEVICE",
    "announcements",
    "blackhole_routes",
    "containing_pool",
    "desired_routes",
    "route_for",
]

TUNNEL_DEVICE = "tunl0"


def containing_pool(prefix: IPNetwork, pools: Iterable[PoolInfo]) -> PoolInfo | None:
    """The most specific pool that contains ``prefix`` (ties: the first by name)."""
    best: PoolInfo | None = None
    for pool in pools:
        if pool.cidr.version != prefix.version or not prefix.subnet_of(pool.cidr):  # type: ignore[arg-type]
            continue
        if (
            best is None
            or pool.cidr.prefixlen > best.cidr.prefixlen
            or (pool.cidr.prefixlen == best.cidr.prefixlen and pool.name < best.name)
        ):
            best = pool
    return best


def _hop(nh: IPv4Address, mode: str, subnet: IPv4Network, tunnel: str) -> NextHop:
    if mode == "Always" or (mode == "CrossSubnet" and nh not in subnet):
        return NextHop(gateway=nh, ifname=tunnel, onlink=True)
    return NextHop(gateway=nh)


def route_for(
    prefix: IPv4Network,
    paths: Sequence[Path],
    *,
    my_address: IPv4Interface,
    pools: Sequence[PoolInfo],
    node_addresses: Collection[IPAddress],
    tunnel: str = TUNNEL_DEVICE,
) -> Route | None:
    """The kernel route for one learned prefix, or None when nothing should be installed."""
    subnet = my_address.network
    if prefix.subnet_of(subnet):
        return None
    pool = containing_pool(prefix, pools)
    kept = [p for p in paths if pool is not None or p.peer not in node_addresses]
    mode = pool.ipip_mode if pool is not None else "Never"
    hops: list[NextHop] = []
    for p in kept:
        nh = p.next_hop
        if not isinstance(nh, IPv4Address) or nh == my_address.ip:
            continue
        if nh in prefix and nh not in subnet:
            continue  # reachable only through this very route
        hop = _hop(nh, mode, subnet, tunnel)
        if hop not in hops:
            hops.append(hop)
    if not hops:
        return None
    if len(hops) == 1:
        h = hops[0]
        return Route(dst=prefix, gateway=h.gateway, ifname=h.ifname, onlink=h.onlink)
    return Route(dst=prefix, nexthops=tuple(hops))


def desired_routes(
    best: Mapping[IPNetwork, Sequence[Path]],
    *,
    my_address: IPv4Interface,
    my_blocks: Collection[IPNetwork],
    pools: Sequence[PoolInfo],
    node_addresses: Collection[IPAddress],
    tunnel: str = TUNNEL_DEVICE,
) -> dict[IPNetwork, Route]:
    """Kernel routes for every learned prefix (see the module doc); blackholes not included."""
    own = set(my_blocks)
    out: dict[IPNetwork, Route] = {}
    for prefix, paths in best.items():
        if not isinstance(prefix, IPv4Network) or prefix in own or not paths:
            continue
        route = route_for(
            prefix,
            paths,
            my_address=my_address,
            pools=pools,
            node_addresses=node_addresses,
            tunnel=tunnel,
        )
        if route is not None:
            out[prefix] = route
    return out


def blackhole_routes(my_blocks: Iterable[IPNetwork]) -> tuple[Route, ...]:
    """One ``blackhole`` route per IPv4 block affine to this node, sorted."""
    blocks = sorted({b for b in my_blocks if isinstance(b, IPv4Network)})
    return tuple(Route(dst=b, type="blackhole") for b in blocks)


def announcements(
    my_blocks: Iterable[IPNetwork],
    pools: Sequence[PoolInfo],
    my_address: IPv4Interface | None = None,
    borrowed: Iterable[IPNetwork] = (),
) -> tuple[IPv4Network, ...]:
    """The prefixes this node originates, sorted (see the module doc).

    ``my_address``: a block containing the node's own BGP address is never announced (it would
    draw the underlay's traffic to the node into the pod network). ``borrowed``: /32s of
    addresses this node holds in other nodes' blocks (announced as host routes, as Calico does).
    """
    out: set[IPv4Network] = set()
    for block in [*my_blocks, *borrowed]:
        if not isinstance(block, IPv4Network) or block.prefixlen == 0:
            continue
        if block.prefixlen == 32 and block not in set(borrowed):
            continue
        if my_address is not None and my_address.ip in block:
            continue
        pool = containing_pool(block, pools)
        if pool is None or pool.disabled or pool.disable_bgp_export:
            continue
        out.add(block)
    return tuple(sorted(out))
