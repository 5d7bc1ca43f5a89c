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
    "RouteCalculator",
    "announcements",
    "blackhole_routes",
    "containing_pool",
    "desired_routes",
]

TUNNEL_DEVICE = "tunl0"


def _span(net: IPNetwork) -> tuple[int, int]:
    """First and last address of ``net`` as integers."""
    lo = int(net.network_address)
    return lo, lo + (1 << (net.max_prefixlen - net.prefixlen)) - 1


class _PoolIndex:
    """Pools ordered for "most specific containing pool" lookups on integer spans.

    Most specific first, ties by name (a stable sort, so equal names keep their input order):
    the first pool whose span covers the prefix is the one ``containing_pool`` defines. Built
    once per ``desired_routes`` call instead of comparing ``ipaddress`` objects per prefix.
    """

    __slots__ = ("_spans",)

    def __init__(self, pools: Iterable[PoolInfo]) -> None:
        ordered = sorted(pools, key=lambda p: (-p.cidr.prefixlen, p.name))
        self._spans = [(p.cidr.version, *_span(p.cidr), p) for p in ordered]

    def find(self, version: int, lo: int, hi: int) -> PoolInfo | None:
        for v, plo, phi, pool in self._spans:
            if v == version and plo <= lo and hi <= phi:
                return pool
        return None


def containing_pool(prefix: IPNetwork, pools: Iterable[PoolInfo]) -> PoolInfo | None:
    """The most specific pool that contains ``prefix`` (ties: the first by name)."""
    return _PoolIndex(pools).find(prefix.version, *_span(prefix))


class _Context:
    """What every prefix of one ``desired_routes`` call shares, precomputed once."""

    __slots__ = (
        "hops",
        "my_ip",
        "node_addresses",
        "pools",
        "single",
        "sub_hi",
        "sub_lo",
        "tunnel",
    )

    def __init__(
        self,
        my_address: IPv4Interface,
        pools: Iterable[PoolInfo],
        node_addresses: Collection[IPAddress],
        tunnel: str,
    ) -> None:
        self.my_ip = int(my_address.ip)
        self.sub_lo, self.sub_hi = _span(my_address.network)
        self.pools = _PoolIndex(pools)
        self.node_addresses = node_addresses
        self.tunnel = tunnel
        self.hops: dict[tuple[int, str, bool], NextHop] = {}
        # (id(path), id(pool)) -> (next hop as int, next hop in our subnet, next hop) of a
        # prefix's only best path; None: that path gives no route. Keyed by identity: a
        # context lives for one calculation, during which the RIB keeps every path alive.
        self.single: dict[tuple[int, int], tuple[int, bool, NextHop] | None] = {}

    def hop(self, nh: IPv4Address, mode: str, in_subnet: bool) -> NextHop:
        key = (int(nh), mode, in_subnet)
        hop = self.hops.get(key)
        if hop is None:
            if mode == "Always" or (mode == "CrossSubnet" and not in_subnet):
                hop = NextHop(gateway=nh, ifname=self.tunnel, onlink=True)
            else:
                hop = NextHop(gateway=nh)
            self.hops[key] = hop
        return hop


_SIZES = tuple(1 << (32 - n) for n in range(33))  # addresses in an IPv4 prefix, by length


def _hop_for(p: Path, pool: PoolInfo | None, ctx: _Context) -> tuple[int, bool, NextHop] | None:
    """What the next hop of ``p`` gives under ``pool``, before the per-prefix check."""
    if pool is None and p.peer in ctx.node_addresses:
        return None
    nh = p.next_hop
    if not isinstance(nh, IPv4Address):
        return None
    n = int(nh)
    if n == ctx.my_ip:
        return None
    in_subnet = ctx.sub_lo <= n <= ctx.sub_hi
    mode = pool.ipip_mode if pool is not None else "Never"
    return n, in_subnet, ctx.hop(nh, mode, in_subnet)


def _route_for(prefix: IPv4Network, paths: Sequence[Path], ctx: _Context) -> Route | None:
    lo = int(prefix.network_address)
    hi = lo + _SIZES[prefix.prefixlen] - 1
    if ctx.sub_lo <= lo and hi <= ctx.sub_hi:
        return None  # inside our own subnet
    pool = ctx.pools.find(4, lo, hi)
    if len(paths) == 1:  # the common case: computed once per path and pool
        p = paths[0]
        key = (id(p), id(pool))
        try:
            info = ctx.single[key]
        except KeyError:
            info = ctx.single[key] = _hop_for(p, pool, ctx)
        if info is None:
            return None
        n, in_subnet, h = info
        if lo <= n <= hi and not in_subnet:
            return None  # reachable only through this very route
        assert h.gateway is not None
        return Route.via(prefix, h.gateway, h.ifname, h.onlink)
    hops: list[NextHop] = []
    for p in paths:
        got = _hop_for(p, pool, ctx)
        if got is None:
            continue
        n, in_subnet, hop = got
        if lo <= n <= hi and not in_subnet:
            continue  # reachable only through this very route
        if hop not in hops:
            hops.append(hop)
    if not hops:
        return None
    if len(hops) == 1:
        h = hops[0]
        assert h.gateway is not None
        return Route.via(prefix, h.gateway, h.ifname, h.onlink)
    return Route(dst=prefix, nexthops=tuple(hops))


class RouteCalculator:
    """The kernel route for one learned prefix (None: nothing to install), for many prefixes
    with the same inputs: the pool index and next-hop cache are built once (the agent makes
    one calculator per reconcile). Not to be kept across RIB changes: it remembers best paths
    by identity, which is only safe while they are alive."""

    __slots__ = ("_ctx",)

    def __init__(
        self,
        *,
        my_address: IPv4Interface,
        pools: Sequence[PoolInfo],
        node_addresses: Collection[IPAddress],
        tunnel: str = TUNNEL_DEVICE,
    ) -> None:
        self._ctx = _Context(my_address, pools, node_addresses, tunnel)

    def route(self, prefix: IPv4Network, paths: Sequence[Path]) -> Route | None:
        return _route_for(prefix, paths, self._ctx)


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
    ctx = _Context(my_address, pools, node_addresses, tunnel)
    out: dict[IPNetwork, Route] = {}
    for prefix, paths in best.items():
        if not isinstance(prefix, IPv4Network) or not paths or (own and prefix in own):
            continue
        route = _route_for(prefix, paths, ctx)
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
