"""``tabbyctl ipam``: show, check and release IPAM allocations, shaped like ``calicoctl ipam``.

Role: the logic and the click commands behind ``tabbyctl ipam show|check|release``. The logic
(``usage``, ``lookup_ip``, ``check``, ``release``) works on any ``KVStore`` (etcd, or
``datastore.fake.FakeEtcd`` in tests) through ``datastore.ipam.IPAM`` and
``datastore.client.ResourceClient``; rendering (``render_*``, ``check_document``) is pure.
``command_group`` builds the click group; ``ctl.main`` registers it and passes in its connection
options, connection factory, error boundary and ``fail`` so that these commands connect and
report errors exactly as every other ``tabbyctl`` command (one ``error: ...`` line, exit 1).

Inputs: IPAM records (blocks, affinities, handles), ``IPPool``, ``WorkloadEndpoint`` and ``Node``
resources. Outputs: text or JSON on stdout; ``release`` frees allocations.

Invariants:
- An address counts as *used* when a WorkloadEndpoint lists it in ``spec.ipNetworks`` or a Node
  names it as a tunnel address (``bgp.ipv4IPIPTunnelAddr``, ``ipv4VXLANTunnelAddr``,
  ``ipv6VXLANTunnelAddr``). ``check`` calls an allocation that no one uses *leaked*.
- ``check`` reads the records one after another, not at one revision: a pod that is being set up
  or torn down at that moment can show up as a problem; run it again to confirm.
- ``release`` is all-or-nothing on refusal: if any requested address is still used and
  ``force`` is off, nothing is released. Between the check and the release another process may
  release and re-allocate an address (the same window ``calicoctl ipam release`` has).
- Nothing here writes except ``release``.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any, NoReturn, ParamSpec, Protocol, TypeVar

import click

from ctl.output import format_rows
from datastore.client import ResourceClient
from datastore.ipam import IPAM, Allocation, BlockInfo, IPAMError, PoolUsage
from datastore.kinds import NODE, WORKLOAD_ENDPOINT
from datastore.kv import KVStore
from datastore.model import NodeSpec, Resource, WorkloadEndpointSpec

__all__ = [
    "AddressUser",
    "CheckReport",
    "IPOwner",
    "ReleaseRefusedError",
    "ReleaseResult",
    "StaleAffinity",
    "UnallocatedAddress",
    "check",
    "check_document",
    "command_group",
    "lookup_ip",
    "parse_ips",
    "release",
    "render_check",
    "render_owner",
    "render_usage",
]

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

IPAddr = IPv4Address | IPv6Address
IPNet = IPv4Network | IPv6Network


# --------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class AddressUser:
    """A resource that uses an address: ``kind`` is ``WorkloadEndpoint`` or ``Node``."""

    kind: str
    namespace: str | None
    name: str
    node: str

    def describe(self) -> str:
        name = f"{self.namespace}/{self.name}" if self.namespace else self.name
        return f"{self.kind} {name}"


@dataclass(frozen=True, slots=True)
class UnallocatedAddress:
    """An address a WorkloadEndpoint uses although IPAM has no allocation for it."""

    ip: IPAddr
    user: AddressUser


@dataclass(frozen=True, slots=True)
class StaleAffinity:
    """A block affine to a node that has no Node resource (from the block or the affinity)."""

    node: str
    block: IPNet
    allocated: int | None  # None: the affinity exists but the block does not


@dataclass(frozen=True, slots=True)
class CheckReport:
    pools: int
    blocks: int
    allocations: int
    endpoints: int
    nodes: int
    leaked: tuple[Allocation, ...]
    unallocated: tuple[UnallocatedAddress, ...]
    stale: tuple[StaleAffinity, ...]
    node_check_skipped: bool
    consistency: tuple[str, ...]

    @property
    def problem_count(self) -> int:
        return len(self.leaked) + len(self.unallocated) + len(self.stale) + len(self.consistency)


@dataclass(frozen=True, slots=True)
class IPOwner:
    """What ``show --ip`` knows about one address."""

    ip: IPAddr
    allocation: Allocation | None
    block: BlockInfo | None
    pool: PoolUsage | None
    users: tuple[AddressUser, ...]


@dataclass(frozen=True, slots=True)
class ReleaseResult:
    released: tuple[tuple[IPAddr, str | None], ...]  # (address, handle it had)
    not_allocated: tuple[IPAddr, ...]
    forced: tuple[tuple[IPAddr, tuple[AddressUser, ...]], ...]  # released although in use


class ReleaseRefusedError(Exception):
    """Some requested addresses are still used (and ``force`` is off); nothing was released."""

    def __init__(self, busy: Mapping[IPAddr, Sequence[AddressUser]]) -> None:
        self.busy = dict(busy)
        parts = [
            f"{ip} (used by {', '.join(u.describe() for u in users)})"
            for ip, users in self.busy.items()
        ]
        super().__init__(
            f"refusing to release {'; '.join(parts)}: nothing was released"
            " (--force releases addresses that are still in use)"
        )


# --------------------------------------------------------------------------- logic


def _ip_key(ip: IPAddr) -> tuple[int, int]:
    return (ip.version, int(ip))


def _net_key(net: IPNet) -> tuple[int, int]:
    return (net.version, int(net.network_address))


def parse_ips(texts: Iterable[str]) -> list[IPAddr]:
    """Addresses from the command line, without duplicates; ``ValueError`` names a bad one."""
    out: list[IPAddr] = []
    for text in texts:
        try:
            ip = ipaddress.ip_address(text.strip())
        except ValueError:
            raise ValueError(f"--ip: {text!r} is not an IPv4 or IPv6 address") from None
        if ip not in out:
            out.append(ip)
    return out


def _address_users(
    endpoints: Iterable[Resource], nodes: Iterable[Resource]
) -> dict[IPAddr, list[AddressUser]]:
    users: dict[IPAddr, list[AddressUser]] = {}
    for r in endpoints:
        spec = r.spec
        if not isinstance(spec, WorkloadEndpointSpec):
            continue
        user = AddressUser(WORKLOAD_ENDPOINT.kind, r.namespace, r.name, spec.node)
        for net in spec.ip_networks:
            users.setdefault(net.network_address, []).append(user)
    for r in nodes:
        spec = r.spec
        if not isinstance(spec, NodeSpec):
            continue
        tunnel: list[IPAddr | None] = [spec.ipv4_vxlan_tunnel_addr, spec.ipv6_vxlan_tunnel_addr]
        if spec.bgp is not None:
            tunnel.append(spec.bgp.ipv4_ipip_tunnel_addr)
        user = AddressUser(NODE.kind, None, r.name, r.name)
        for ip in tunnel:
            if ip is not None:
                users.setdefault(ip, []).append(user)
    return users


def _read_users(client: ResourceClient) -> tuple[list[Resource], list[Resource]]:
    endpoints = client.list(WORKLOAD_ENDPOINT, all_namespaces=True)
    nodes = client.list(NODE)
    return endpoints, nodes


def usage(store: KVStore) -> tuple[list[PoolUsage], list[BlockInfo]]:
    """Every pool's usage and every block (sorted by address)."""
    ipam = IPAM(store)
    return ipam.pool_usage(), ipam.blocks()


def lookup_ip(store: KVStore, ip: IPAddr) -> IPOwner:
    """Who owns ``ip``: its allocation (if any), block, pool and the resources using it."""
    ipam = IPAM(store)
    allocation = ipam.who_owns(ip)
    block = next((b for b in ipam.blocks() if ip in b.cidr), None)
    pool = next(
        (p for p in ipam.pool_usage() if p.cidr.version == ip.version and ip in p.cidr), None
    )
    endpoints, nodes = _read_users(ResourceClient(store))
    users = tuple(_address_users(endpoints, nodes).get(ip, ()))
    return IPOwner(ip, allocation, block, pool, users)


def check(store: KVStore) -> CheckReport:
    """Cross-check IPAM against WorkloadEndpoints and Nodes (see the module docstring)."""
    ipam = IPAM(store)
    pools = ipam.pool_usage()
    blocks = ipam.blocks()
    endpoints, nodes = _read_users(ResourceClient(store))
    users = _address_users(endpoints, nodes)
    allocated: dict[IPAddr, Allocation] = {a.ip: a for b in blocks for a in b.allocations}

    leaked = tuple(allocated[ip] for ip in sorted(allocated, key=_ip_key) if ip not in users)
    unallocated = tuple(
        UnallocatedAddress(ip, u)
        for ip in sorted(users, key=_ip_key)
        if ip not in allocated
        for u in users[ip]
        if u.kind == WORKLOAD_ENDPOINT.kind
    )

    stale: list[StaleAffinity] = []
    if nodes:
        names = {n.name for n in nodes}
        seen: dict[tuple[str, IPNet], int | None] = {}
        for b in blocks:
            if b.affinity_node is not None:
                seen[(b.affinity_node, b.cidr)] = b.allocated
        for node, cidrs in ipam.affinities().items():
            for cidr in cidrs:
                seen.setdefault((node, cidr), None)
        stale = [
            StaleAffinity(node, cidr, n)
            for (node, cidr), n in sorted(
                seen.items(), key=lambda kv: (kv[0][0], _net_key(kv[0][1]))
            )
            if node not in names
        ]

    return CheckReport(
        pools=len(pools),
        blocks=len(blocks),
        allocations=len(allocated),
        endpoints=len(endpoints),
        nodes=len(nodes),
        leaked=leaked,
        unallocated=unallocated,
        stale=tuple(stale),
        node_check_skipped=not nodes,
        consistency=tuple(ipam.consistency_problems()),
    )


def release(store: KVStore, ips: Sequence[IPAddr], *, force: bool = False) -> ReleaseResult:
    """Free the allocations of ``ips``; ``ReleaseRefusedError`` (nothing freed) when any is
    still used by a WorkloadEndpoint or Node and ``force`` is off."""
    ipam = IPAM(store)
    wanted = list(dict.fromkeys(ips))
    owners = {ip: ipam.who_owns(ip) for ip in wanted}
    endpoints, nodes = _read_users(ResourceClient(store))
    users = _address_users(endpoints, nodes)
    busy = {ip: users[ip] for ip in wanted if owners[ip] is not None and ip in users}
    if busy and not force:
        raise ReleaseRefusedError(busy)
    freed = ipam.release_ips([ip for ip in wanted if owners[ip] is not None])
    released: list[tuple[IPAddr, str | None]] = []
    for ip in freed:
        owner = owners[ip]
        handle = owner.handle_id if owner is not None else None
        released.append((ip, handle))
        log.info("ctl.ipam.release ip=%s handle=%s forced=%s", ip, handle, ip in busy)
    freed_set = set(freed)
    return ReleaseResult(
        released=tuple(released),
        not_allocated=tuple(ip for ip in wanted if ip not in freed_set),
        forced=tuple((ip, tuple(u)) for ip, u in busy.items() if ip in freed_set),
    )


# --------------------------------------------------------------------------- rendering


def _percent(part: int, total: int) -> str:
    if total <= 0:
        return "0%"
    pct = 100.0 * part / total
    if 0 < pct < 0.1:
        return "<0.1%"
    if 99.9 < pct < 100:
        return ">99.9%"
    text = f"{pct:.1f}".removesuffix(".0")
    return f"{text}%"


def _counts(used: int, total: int) -> list[str]:
    free = total - used
    return [str(total), f"{used} ({_percent(used, total)})", f"{free} ({_percent(free, total)})"]


def render_usage(
    pools: Sequence[PoolUsage], blocks: Sequence[BlockInfo], *, show_blocks: bool = False
) -> str:
    """The ``ipam show`` table: one row per pool; with ``show_blocks`` each pool's blocks follow
    it (NODE: the block's affinity, ``-`` for none), then blocks outside every pool."""
    header = ["GROUPING", "NAME", "CIDR", "TOTAL", "IN-USE", "FREE"]
    if show_blocks:
        header.append("NODE")
    rows: list[list[str]] = [header]
    placed: set[IPNet] = set()
    for p in pools:
        name = f"{p.name} (disabled)" if p.disabled else p.name
        row = ["pool", name, str(p.cidr), *_counts(p.in_use, p.total)]
        rows.append([*row, ""] if show_blocks else row)
        if not show_blocks:
            continue
        for b in blocks:
            if b.cidr in placed or b.cidr.version != p.cidr.version:
                continue
            if b.cidr.subnet_of(p.cidr):  # type: ignore[arg-type]
                placed.add(b.cidr)
                rows.append(_block_row(b, p.name))
    if show_blocks:
        rows.extend(_block_row(b, "-") for b in blocks if b.cidr not in placed)
    return format_rows(rows)


def _block_row(b: BlockInfo, pool: str) -> list[str]:
    return ["block", pool, str(b.cidr), *_counts(b.allocated, b.size), b.affinity_node or "-"]


def _attrs_text(attrs: Mapping[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(attrs.items()))


def render_owner(owner: IPOwner) -> str:
    """The ``ipam show --ip`` text: in use (handle, attributes, block) / free / not in a pool."""
    ip = owner.ip
    lines: list[str] = []
    if owner.allocation is not None:
        a = owner.allocation
        lines.append(f"IP {ip} is in use")
        lines.append(f"  handle: {a.handle_id or '(none)'}")
        for key in ("node", "namespace", "pod"):
            if key in a.attrs:
                lines.append(f"  {key}: {a.attrs[key]}")
        others = {k: v for k, v in a.attrs.items() if k not in ("node", "namespace", "pod")}
        if others:
            lines.append(f"  attributes: {_attrs_text(others)}")
    elif owner.pool is not None:
        lines.append(f"IP {ip} is free (not allocated)")
    else:
        lines.append(f"IP {ip} is not in any IP pool")
    if owner.block is not None:
        lines.append(f"  block: {owner.block.cidr} (affinity: {owner.block.affinity_node or '-'})")
    if owner.pool is not None:
        disabled = ", disabled" if owner.pool.disabled else ""
        lines.append(f"  pool: {owner.pool.name} ({owner.pool.cidr}{disabled})")
    for u in owner.users:
        lines.append(f"  used by: {u.describe()} (node {u.node or '-'})")
    return "\n".join(lines) + "\n"


def _allocation_line(a: Allocation) -> str:
    attrs = _attrs_text(a.attrs)
    return f"  {a.ip}  handle={a.handle_id or '(none)'}  block={a.block}" + (
        f"  {attrs}" if attrs else ""
    )


def render_check(report: CheckReport) -> str:
    r = report
    out = [
        f"Checked {r.pools} IP pool(s), {r.blocks} block(s), {r.allocations} allocation(s),"
        f" {r.endpoints} WorkloadEndpoint(s), {r.nodes} Node(s).",
        f"Allocations that no WorkloadEndpoint or Node uses (leaked): {len(r.leaked)}",
    ]
    out.extend(_allocation_line(a) for a in r.leaked)
    out.append(f"WorkloadEndpoint addresses without an allocation: {len(r.unallocated)}")
    out.extend(f"  {u.ip}  {u.user.describe()}  node={u.user.node or '-'}" for u in r.unallocated)
    if r.node_check_skipped:
        out.append(
            "Blocks and affinities of nodes without a Node resource: not checked"
            " (there are no Node resources)"
        )
    else:
        out.append(f"Blocks and affinities of nodes without a Node resource: {len(r.stale)}")
        for s in r.stale:
            held = "no block" if s.allocated is None else f"{s.allocated} allocated"
            out.append(f"  {s.block}  node={s.node}  ({held})")
    out.append(f"IPAM record inconsistencies: {len(r.consistency)}")
    out.extend(f"  {p}" for p in r.consistency)
    n = r.problem_count
    out.append(f"Found {n} problem(s)." if n else "No problems found.")
    return "\n".join(out) + "\n"


def _user_doc(u: AddressUser) -> dict[str, Any]:
    d: dict[str, Any] = {"kind": u.kind, "name": u.name, "node": u.node}
    if u.namespace is not None:
        d["namespace"] = u.namespace
    return d


def check_document(report: CheckReport) -> dict[str, Any]:
    """``ipam check -o json``; ``nodeCheckSkipped`` says the Node-based check did not run."""
    r = report
    return {
        "checked": {
            "ipPools": r.pools,
            "blocks": r.blocks,
            "allocations": r.allocations,
            "workloadEndpoints": r.endpoints,
            "nodes": r.nodes,
        },
        "leakedAllocations": [
            {
                "ip": str(a.ip),
                "handle": a.handle_id,
                "block": str(a.block),
                "attributes": dict(a.attrs),
            }
            for a in r.leaked
        ],
        "unallocatedEndpointAddresses": [
            {"ip": str(u.ip), **_user_doc(u.user)} for u in r.unallocated
        ],
        "nodeCheckSkipped": r.node_check_skipped,
        "staleNodeAffinities": [
            {"node": s.node, "block": str(s.block), "allocated": s.allocated} for s in r.stale
        ],
        "consistencyProblems": list(r.consistency),
        "problemCount": r.problem_count,
    }


# --------------------------------------------------------------------------- commands


class Decorator(Protocol):
    def __call__(self, fn: Callable[P, R], /) -> Callable[P, R]: ...


def command_group(
    *,
    connect: Callable[[str | None, float], ResourceClient],
    guard: Decorator,
    connection_options: Decorator,
    fail: Callable[[str], NoReturn],
) -> click.Group:
    """The ``ipam`` click group; ``ctl.main`` passes its own connection and error handling."""

    def store_of(etcd_endpoints: str | None, timeout: float) -> KVStore:
        return connect(etcd_endpoints, timeout).store

    def ips_or_fail(texts: Iterable[str]) -> list[IPAddr]:
        try:
            return parse_ips(texts)
        except ValueError as exc:
            fail(str(exc))

    def ipam_or_fail(exc: IPAMError) -> NoReturn:
        fail(" ".join(str(exc).split()))

    @click.group()
    def ipam() -> None:
        """Show, check and release IP address allocations (IPAM), as calicoctl ipam does."""

    @ipam.command()
    @click.option(
        "--show-blocks",
        is_flag=True,
        help="Also list every block: its pool, usage and affinity (NODE, '-' for none).",
    )
    @click.option(
        "--ip",
        "ip_text",
        metavar="ADDR",
        help="Instead of the table: who owns ADDR (handle, node/namespace/pod attributes,"
        " block, pool, the WorkloadEndpoint or Node using it), or that it is free or in no pool.",
    )
    @connection_options
    @guard
    def show(
        *, show_blocks: bool, ip_text: str | None, etcd_endpoints: str | None, timeout: float
    ) -> None:
        """Show IP pool usage: total, in-use and free addresses with percentages.

        Free counts every pool address that is not allocated, inside blocks or not.
        """
        if ip_text is not None and show_blocks:
            fail("--ip and --show-blocks cannot be used together")
        ip = ips_or_fail([ip_text])[0] if ip_text is not None else None
        store = store_of(etcd_endpoints, timeout)
        try:
            if ip is not None:
                click.echo(render_owner(lookup_ip(store, ip)), nl=False)
                return
            pools, blocks = usage(store)
        except IPAMError as exc:
            ipam_or_fail(exc)
        click.echo(render_usage(pools, blocks, show_blocks=show_blocks), nl=False)

    @ipam.command(name="check")
    @click.option(
        "-o",
        "--output",
        "fmt",
        type=click.Choice(["text", "json"]),
        default="text",
        show_default=True,
        help="Report format.",
    )
    @connection_options
    @guard
    def check_cmd(*, fmt: str, etcd_endpoints: str | None, timeout: float) -> None:
        """Check IPAM against WorkloadEndpoints and Nodes; exit status 1 if problems are found.

        Reports: allocations that no WorkloadEndpoint (or Node, as tunnel address) uses
        (leaked); WorkloadEndpoint addresses that have no allocation; blocks and affinities of
        nodes that have no Node resource (checked only when Node resources exist); and
        inconsistent IPAM records (handle counts, affinities, malformed blocks). Records are
        read one after another: a pod being set up or torn down meanwhile may show up; run
        again to confirm.
        """
        store = store_of(etcd_endpoints, timeout)
        try:
            report = check(store)
        except IPAMError as exc:
            ipam_or_fail(exc)
        if fmt == "json":
            click.echo(json.dumps(check_document(report), indent=2))
        else:
            click.echo(render_check(report), nl=False)
        if report.problem_count:
            sys.exit(1)

    @ipam.command(name="release")
    @click.option(
        "--ip",
        "ip_texts",
        multiple=True,
        required=True,
        metavar="ADDR",
        help="Address to release. Repeatable.",
    )
    @click.option(
        "--force",
        is_flag=True,
        help="Release even addresses a WorkloadEndpoint or Node still uses.",
    )
    @connection_options
    @guard
    def release_cmd(
        *, ip_texts: tuple[str, ...], force: bool, etcd_endpoints: str | None, timeout: float
    ) -> None:
        """Release the allocations of the given addresses.

        Refuses, releasing nothing, when a WorkloadEndpoint (or a Node, as tunnel address)
        still uses any of them, unless --force. Exit status 1 if an address was not allocated
        (the others are still released).
        """
        ips = ips_or_fail(ip_texts)
        store = store_of(etcd_endpoints, timeout)
        try:
            result = release(store, ips, force=force)
        except ReleaseRefusedError as exc:
            fail(str(exc))
        except IPAMError as exc:
            ipam_or_fail(exc)
        for ip, users in result.forced:
            click.echo(
                f"warning: {ip} is still used by {', '.join(u.describe() for u in users)};"
                " released anyway (--force)",
                err=True,
            )
        for ip, handle in result.released:
            click.echo(f"Released {ip} (handle {handle or '(none)'})")
        if result.not_allocated:
            fail(
                "not allocated, nothing to release: "
                + ", ".join(str(ip) for ip in result.not_allocated)
            )

    return ipam
