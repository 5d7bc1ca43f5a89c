"""The node's IP-in-IP device: ``tunl0``, its MTU and its tunnel address (owned by tabby-bgp).

Role: when an enabled IPv4 pool has ``ipipMode`` ``Always`` or ``CrossSubnet``, the routes that
``bgp.kernel_routes`` computes go ``via NH dev tunl0 onlink``. This module makes that device
usable: it exists, is up, has MTU = uplink MTU - 20 (or the configured value), and carries the
node's tunnel address (from IPAM, handle ``ipip-tunnel-addr-<node>``) as a /32, which the kernel
then picks as the source address of packets the node itself sends through the tunnel. The
address is also recorded in the Node resource (``spec.bgp.ipv4IPIPTunnelAddr``).

Parts:
- pure decisions: ``ipip_pools`` (which pools need the tunnel), ``tunnel_mtu``, ``link_steps``
  (what to change on the device to reach the desired state);
- the datastore steps: ``ensure_tunnel_address`` (IPAM, allocate once and reuse) and
  ``record_tunnel_address`` (compare-and-swap update of the Node, only that field);
- the ``TunnelKernel`` seam with ``IpTunnelKernel`` (``ip`` commands in a namespace) and its
  stateful fake ``FakeTunnelKernel``;
- ``TunnelManager``: the driver the agent calls from its reconcile loop.

Inputs: the IP pools, this node's BGP address (to find the uplink), its Node resource.
Outputs: the kernel's ``tunl0`` (state, MTU, addresses), one IPAM allocation, one Node field.

Invariants and choices:
- A kernel with the ipip module creates ``tunl0`` by itself in every namespace; otherwise
  ``ip link add name tunl0 type ipip`` loads the module (which creates it: "File exists" is
  success). A kernel without ipip (no module) gets one ``ipip.unavailable`` error log line; the
  agent carries on and the routes via ``tunl0`` stay pending in the route driver.
- Addresses on ``tunl0`` other than ours are removed (the device is ours while IP-in-IP is on).
- When no enabled pool needs IP-in-IP, nothing is torn down: ``tunl0`` keeps its address and
  MTU, the IPAM allocation and the Node field stay. Disabled pools keep their routes via
  ``tunl0`` (``bgp.kernel_routes`` does not look at ``disabled``), and a released address could
  be handed to a workload while the kernel still holds it. An operator who switches IP-in-IP off
  for good releases the handle with ``tabbyctl ipam release``.
- An existing tunnel address outside every IP-in-IP pool (the pools changed) is replaced:
  a new one is allocated first, then the old one is released.
- ``TunnelManager.reconcile`` never raises: failures are logged and retried after
  ``retry_interval``; with nothing changed it re-reads the kernel only every
  ``resync_interval`` and writes nothing.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any, Literal, Protocol

from bgp.kernel_routes import TUNNEL_DEVICE
from bgp.model import PoolInfo
from datastore import kinds
from datastore.client import ResourceClient, ResourceConflict, ResourceNotFound
from datastore.errors import DatastoreError
from datastore.ipam import IPAM, IPAMError
from datastore.kv import KVStore
from datastore.model import NodeBGPSpec, NodeSpec, Resource
from kernel.netns import guard_writes
from kernel.nl import run_cmd

__all__ = [
    "IPIP_OVERHEAD",
    "MTU_ENV",
    "FakeTunnelKernel",
    "IpTunnelKernel",
    "TunnelError",
    "TunnelKernel",
    "TunnelLink",
    "TunnelManager",
    "TunnelStep",
    "TunnelUnavailableError",
    "ensure_tunnel_address",
    "handle_id",
    "ipip_pools",
    "link_steps",
    "mtu_from_env",
    "record_tunnel_address",
    "tunnel_mtu",
]

log = logging.getLogger(__name__)

IPIP_OVERHEAD = 20  # the outer IPv4 header
MTU_ENV = "TABBY_BGP_IPIPMTU"
HANDLE_PREFIX = "ipip-tunnel-addr-"
ADDRESS_TYPE = "ipipTunnelAddress"  # IPAM attribute "type", as Calico writes it
MIN_MTU = 68


class TunnelError(RuntimeError):
    """A tunnel device operation failed (names the namespace and the device)."""


class TunnelUnavailableError(TunnelError):
    """The kernel cannot make IP-in-IP devices (no ipip module)."""


# ---------------------------------------------------------------------------------------------
# pure decisions


def handle_id(node: str) -> str:
    """The IPAM handle of ``node``'s tunnel address."""
    return f"{HANDLE_PREFIX}{node}"


def ipip_pools(pools: Iterable[PoolInfo]) -> tuple[PoolInfo, ...]:
    """Enabled IPv4 pools whose ``ipipMode`` is not ``Never``, sorted by name."""
    return tuple(
        sorted(
            (
                p
                for p in pools
                if not p.disabled
                and isinstance(p.cidr, IPv4Network)
                and p.ipip_mode in ("Always", "CrossSubnet")
            ),
            key=lambda p: p.name,
        )
    )


def tunnel_mtu(uplink_mtu: int | None, configured: int | None) -> int | None:
    """``configured`` if set, else uplink MTU - 20; None when neither is known."""
    if configured is not None:
        return configured
    if uplink_mtu is None:
        return None
    return max(MIN_MTU, uplink_mtu - IPIP_OVERHEAD)


def mtu_from_env(env: dict[str, str] | None = None) -> int | None:
    """The configured tunnel MTU (``TABBY_BGP_IPIPMTU``); None when unset or invalid."""
    text = (env if env is not None else dict(os.environ)).get(MTU_ENV, "").strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not MIN_MTU <= value <= 65535:
        log.warning("ipip.bad_mtu %s=%r: using uplink MTU - %d", MTU_ENV, text, IPIP_OVERHEAD)
        return None
    return value


@dataclass(frozen=True, slots=True)
class TunnelLink:
    """What the kernel has for the tunnel device (``exists=False``: nothing)."""

    exists: bool
    up: bool = False
    mtu: int = 0
    addresses: tuple[IPv4Interface, ...] = ()


StepKind = Literal["set_mtu", "set_up", "add_address", "del_address"]


@dataclass(frozen=True, slots=True)
class TunnelStep:
    kind: StepKind
    mtu: int | None = None
    address: IPv4Interface | None = None


def link_steps(
    have: TunnelLink, mtu: int | None, address: IPv4Address | None
) -> tuple[TunnelStep, ...]:
    """Changes that bring an existing device to ``mtu`` (None: leave), up, and ``address``/32.

    With ``address`` None the addresses are left as they are (IPAM did not answer yet).
    Order: MTU, up, add the new address, then remove the others.
    """
    steps: list[TunnelStep] = []
    if mtu is not None and have.mtu != mtu:
        steps.append(TunnelStep("set_mtu", mtu=mtu))
    if not have.up:
        steps.append(TunnelStep("set_up"))
    if address is not None:
        want = IPv4Interface(f"{address}/32")
        if want not in have.addresses:
            steps.append(TunnelStep("add_address", address=want))
        for other in sorted(have.addresses):
            if other != want:
                steps.append(TunnelStep("del_address", address=other))
    return tuple(steps)


# ---------------------------------------------------------------------------------------------
# datastore steps


def ensure_tunnel_address(ipam: IPAM, node: str, pools: Sequence[PoolInfo]) -> IPv4Address:
    """The node's tunnel address: the one its handle holds (inside an IP-in-IP pool), else a
    new one from those pools. Raises ``IPAMError`` / ``DatastoreError``."""
    wanted = ipip_pools(pools)
    handle = handle_id(node)
    held = [ip for ip in ipam.ips_by_handle(handle) if isinstance(ip, IPv4Address)]
    usable = sorted(ip for ip in held if any(ip in p.cidr for p in wanted))
    if usable:
        extra = [ip for ip in held if ip != usable[0]]
        if extra:
            ipam.release_ips(extra)
        return usable[0]
    got, _ = ipam.auto_assign(
        handle,
        node,
        num_v4=1,
        pools_v4=[p.name for p in wanted],
        attrs={"node": node, "type": ADDRESS_TYPE},
    )
    if not got:
        raise IPAMError(f"no IPv4 address for handle {handle}")
    if held:
        log.info("ipip.address_replaced node=%s old=%s new=%s", node, held, got[0])
        ipam.release_ips(held)
    return got[0]


def record_tunnel_address(
    client: ResourceClient, node: str, address: IPv4Address, attempts: int = 5
) -> Resource:
    """Set ``spec.bgp.ipv4IPIPTunnelAddr`` of Node ``node`` (compare-and-swap on a fresh read,
    retried on a lost race; every other field is kept as read). Returns the stored Node."""
    for _ in range(max(1, attempts)):
        res = client.get(kinds.NODE, node)
        spec = res.spec
        if not isinstance(spec, NodeSpec):
            raise TunnelError(f"{res.describe()}: not a Node")
        bgp = spec.bgp or NodeBGPSpec()
        if bgp.ipv4_ipip_tunnel_addr == address:
            return res
        new_spec = dataclasses.replace(
            spec, bgp=dataclasses.replace(bgp, ipv4_ipip_tunnel_addr=address)
        )
        try:
            stored = client.replace(dataclasses.replace(res, spec=new_spec))
        except ResourceConflict:
            continue
        log.info("ipip.node_recorded node=%s address=%s", node, address)
        return stored
    raise ResourceConflict(kinds.NODE.kind, None, node, "tunnel address: modified concurrently")


# ---------------------------------------------------------------------------------------------
# the kernel seam


class TunnelKernel(Protocol):
    def read(self, name: str) -> TunnelLink: ...
    def uplink_mtu(self, address: IPv4Address) -> int | None: ...
    def create(self, name: str) -> None: ...
    def apply(self, name: str, step: TunnelStep) -> None: ...


class IpTunnelKernel:
    """``TunnelKernel`` with ``ip`` commands in ``netns`` (None: the current namespace)."""

    def __init__(self, netns: str | None) -> None:
        self.netns = netns

    def _addrs(self, argv: list[str]) -> list[dict[str, Any]]:
        # No "-4": it would hide interfaces without an IPv4 address (a fresh tunl0).
        res = run_cmd(self.netns, ["ip", "-j", "addr", "show", *argv])
        if res.returncode != 0:
            if "does not exist" in res.stderr:
                return []
            raise TunnelError(f"ip addr show netns={self.netns}: {res.stderr.strip()}")
        data: list[dict[str, Any]] = json.loads(res.stdout or "[]")
        return data

    def read(self, name: str) -> TunnelLink:
        links = [x for x in self._addrs(["dev", name]) if x.get("ifname") == name]
        if not links:
            return TunnelLink(exists=False)
        link = links[0]
        addrs = tuple(
            IPv4Interface(f"{a['local']}/{a['prefixlen']}")
            for a in link.get("addr_info", [])
            if a.get("family") == "inet" and "local" in a
        )
        return TunnelLink(
            exists=True,
            up="UP" in link.get("flags", []),
            mtu=int(link.get("mtu", 0)),
            addresses=addrs,
        )

    def uplink_mtu(self, address: IPv4Address) -> int | None:
        for link in self._addrs([]):
            for a in link.get("addr_info", []):
                if a.get("family") == "inet" and a.get("local") == str(address):
                    return int(link.get("mtu", 0)) or None
        return None

    def _ip(self, argv: list[str], what: str) -> None:
        guard_writes(self.netns)
        res = run_cmd(self.netns, ["ip", *argv])
        if res.returncode != 0:
            raise TunnelError(f"{what} netns={self.netns}: {res.stderr.strip()}")

    def create(self, name: str) -> None:
        guard_writes(self.netns)
        res = run_cmd(self.netns, ["ip", "link", "add", "name", name, "type", "ipip"])
        err = res.stderr.strip()
        if res.returncode == 0 or "File exists" in err:
            return  # loading the module created it already
        if "Unknown device type" in err or "not supported" in err.lower():
            raise TunnelUnavailableError(f"create {name} netns={self.netns}: {err}")
        raise TunnelError(f"create {name} netns={self.netns}: {err}")

    def apply(self, name: str, step: TunnelStep) -> None:
        if step.kind == "set_mtu":
            self._ip(["link", "set", "dev", name, "mtu", str(step.mtu)], f"mtu of {name}")
        elif step.kind == "set_up":
            self._ip(["link", "set", "dev", name, "up"], f"set {name} up")
        elif step.kind == "add_address" and step.address is not None:
            self._ip(
                ["addr", "replace", step.address.with_prefixlen, "dev", name],
                f"address {step.address} on {name}",
            )
        elif step.kind == "del_address" and step.address is not None:
            self._ip(
                ["addr", "del", step.address.with_prefixlen, "dev", name],
                f"remove address {step.address} from {name}",
            )


class FakeTunnelKernel:
    """A stateful fake: a namespace's links and uplink addresses, with or without ipip."""

    def __init__(self, *, ipip: bool = True, uplinks: dict[IPv4Address, int] | None = None):
        self.ipip = ipip
        self.uplinks = dict(uplinks or {})
        self.links: dict[str, TunnelLink] = {}
        self.writes = 0

    def read(self, name: str) -> TunnelLink:
        return self.links.get(name, TunnelLink(exists=False))

    def uplink_mtu(self, address: IPv4Address) -> int | None:
        return self.uplinks.get(address)

    def create(self, name: str) -> None:
        if not self.ipip:
            raise TunnelUnavailableError(f"create {name}: Error: Unknown device type.")
        self.writes += 1
        # As the kernel does: the fallback device starts down with MTU 1480.
        self.links.setdefault(name, TunnelLink(exists=True, up=False, mtu=1480))

    def apply(self, name: str, step: TunnelStep) -> None:
        link = self.links.get(name)
        if link is None:
            raise TunnelError(f"{name}: Cannot find device")
        self.writes += 1
        if step.kind == "set_mtu" and step.mtu is not None:
            link = dataclasses.replace(link, mtu=step.mtu)
        elif step.kind == "set_up":
            link = dataclasses.replace(link, up=True)
        elif step.kind == "add_address" and step.address is not None:
            if step.address not in link.addresses:
                link = dataclasses.replace(link, addresses=(*link.addresses, step.address))
        elif step.kind == "del_address" and step.address is not None:
            link = dataclasses.replace(
                link, addresses=tuple(a for a in link.addresses if a != step.address)
            )
        self.links[name] = link


# ---------------------------------------------------------------------------------------------
# the driver


@dataclass(frozen=True, slots=True)
class _Inputs:
    pools: tuple[PoolInfo, ...]
    uplink: IPv4Interface
    recorded: IPv4Address | None


class TunnelManager:
    """Keeps ``tunl0`` in line with the pools (see the module doc). Call ``reconcile`` from the
    agent's loop after every datastore change (cheap when nothing changed)."""

    def __init__(
        self,
        node: str,
        kernel: TunnelKernel,
        store_factory: Callable[[], KVStore],
        *,
        device: str = TUNNEL_DEVICE,
        configured_mtu: int | None = None,
        resync_interval: float = 30.0,
        retry_interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.node = node
        self.kernel = kernel
        self.device = device
        self.configured_mtu = configured_mtu
        self.resync_interval = resync_interval
        self.retry_interval = retry_interval
        self._clock = clock
        self._store_factory = store_factory
        self._store: KVStore | None = None
        self.address: IPv4Address | None = None  # the tunnel address (once IPAM answered)
        self.unavailable = False  # the kernel has no ipip
        self.active = False  # some pool needs IP-in-IP
        self.mtu: int | None = None  # the MTU last set on (or found right on) the device
        self._last: _Inputs | None = None
        self._next_check = 0.0

    @classmethod
    def for_node(
        cls, node: str, store_factory: Callable[[], KVStore], netns: str | None = None
    ) -> TunnelManager:
        """The production manager: ``ip`` in ``netns``, MTU from ``TABBY_BGP_IPIPMTU``."""
        return cls(node, IpTunnelKernel(netns), store_factory, configured_mtu=mtu_from_env())

    def _kv(self) -> KVStore:
        if self._store is None:
            self._store = self._store_factory()
        return self._store

    def status(self) -> dict[str, object]:
        """For the agent's ``/status``: is IP-in-IP needed, is it usable, and how it is set up."""
        return {
            "needed": self.active,
            "device": self.device,
            "available": not self.unavailable,
            "address": str(self.address) if self.address is not None else None,
            "mtu": self.mtu,
        }

    def reconcile(
        self, pools: Sequence[PoolInfo], uplink: IPv4Interface | None, node: Resource | None
    ) -> bool:
        """One pass; True when the device changed (routes waiting for it should be retried).

        ``uplink``: this node's BGP address with its prefix (None: unknown yet, nothing done);
        ``node``: this node's Node resource as the agent last saw it. Never raises.
        """
        try:
            return self._reconcile(pools, uplink, node)
        except Exception:
            log.exception("ipip.reconcile_failed node=%s", self.node)
            self._next_check = self._clock() + self.retry_interval
            return False

    def _reconcile(
        self, pools: Sequence[PoolInfo], uplink: IPv4Interface | None, node: Resource | None
    ) -> bool:
        wanted = ipip_pools(pools)
        if not wanted:
            if self.active:
                log.info(
                    "ipip.inactive node=%s: no pool needs IP-in-IP; %s and its address stay",
                    self.node,
                    self.device,
                )
            self.active = False
            return False
        if uplink is None:
            return False
        self.active = True
        recorded = None
        if node is not None and isinstance(node.spec, NodeSpec) and node.spec.bgp is not None:
            recorded = node.spec.bgp.ipv4_ipip_tunnel_addr
        inputs = _Inputs(wanted, uplink, recorded)
        now = self._clock()
        if inputs == self._last and now < self._next_check:
            return False
        self._last = inputs
        ok = self._datastore(wanted, recorded)
        try:
            changed = self._kernel(uplink)
        except TunnelUnavailableError as exc:
            if not self.unavailable:
                log.error(
                    "ipip.unavailable node=%s device=%s error=%s: this kernel has no IP-in-IP;"
                    " routes via %s stay pending",
                    self.node,
                    self.device,
                    exc,
                    self.device,
                )
            self.unavailable = True
            self._next_check = now + self.resync_interval
            return False
        except Exception as exc:
            log.warning("ipip.kernel_failed node=%s error=%s", self.node, exc)
            self._next_check = now + self.retry_interval
            return False
        self._next_check = now + (self.resync_interval if ok else self.retry_interval)
        return changed

    def _datastore(self, wanted: Sequence[PoolInfo], recorded: IPv4Address | None) -> bool:
        try:
            if self.address is None or not any(self.address in p.cidr for p in wanted):
                self.address = ensure_tunnel_address(IPAM(self._kv()), self.node, wanted)
                log.info("ipip.address node=%s address=%s", self.node, self.address)
            if recorded != self.address:
                record_tunnel_address(ResourceClient(self._kv()), self.node, self.address)
        except ResourceNotFound:
            log.warning("ipip.no_node node=%s: tunnel address not recorded yet", self.node)
            return False
        except (IPAMError, DatastoreError, TunnelError) as exc:
            log.warning("ipip.datastore_failed node=%s error=%s", self.node, exc)
            return False
        return True

    def _kernel(self, uplink: IPv4Interface) -> bool:
        have = self.kernel.read(self.device)
        created = False
        if not have.exists:
            self.kernel.create(self.device)
            have = self.kernel.read(self.device)
            if not have.exists:
                raise TunnelError(f"{self.device} missing after creation")
            created = True
            log.info("ipip.created node=%s device=%s", self.node, self.device)
        if self.unavailable:
            self.unavailable = False
        mtu = tunnel_mtu(self.kernel.uplink_mtu(uplink.ip), self.configured_mtu)
        steps = link_steps(have, mtu, self.address)
        self.mtu = mtu
        for step in steps:
            self.kernel.apply(self.device, step)
        if steps:
            log.info(
                "ipip.device node=%s device=%s mtu=%s address=%s steps=%s",
                self.node,
                self.device,
                mtu,
                self.address,
                ",".join(s.kind for s in steps),
            )
        return created or bool(steps)
