"""Kernel plumbing of one workload interface: the veth pair, addresses, routes, sysctls.

Role: the ``Dataplane`` seam of the CNI plugin and its real implementation ``KernelDataplane``.
The plugin's own network namespace is the "host" (a node); the container's namespace is given
by path (``CNI_NETNS``: ``/run/netns/NAME``, ``/proc/PID/ns/net`` or any bind mount).

``create_pair`` then ``configure_container`` do, with as few processes as possible (start-up
latency is what a runtime sees):
1. one ``ip -batch`` in the host namespace: create the pair (host end ``tbw...`` with MAC
   ``ee:ee:ee:ee:ee:ee``, peer created *directly* inside the container namespace, named
   ``CNI_IFNAME``, with a MAC we choose, so nothing needs reading back) and set the host end up;
2. the host-side sysctls from ``kernel.sysctl.workload_interface_sysctls`` (single source of
   truth shared with felix), written in-process;
3. one ``nsenter --net=PATH ip -batch`` in the container: link up, the /32 (/128) addresses, an
   on-link route to 169.254.1.1 and the default route via it (IPv6: default via
   fe80::ecee:eeff:feee:eeee, the link-local address the host end gets from its MAC).
``delete_host(name)`` removes the host end (the kernel removes the peer with it).
``inspect(path, ifname)`` reads the container interface back (CHECK).

Safety invariants: ``guard_writes(None)`` runs before every host-side write; the container
namespace must exist and must be neither the plugin's own namespace nor the machine's root
namespace (``check_container_netns``), otherwise nothing is written.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import secrets
import socket
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from cni.errors import BAD_ENV, CONTAINER_UNKNOWN, KERNEL, CNIError

__all__ = [
    "GATEWAY_V4",
    "GATEWAY_V6",
    "HOST_MAC",
    "ContainerState",
    "Dataplane",
    "KernelDataplane",
    "VethSpec",
    "check_container_netns",
    "random_mac",
]

log = logging.getLogger(__name__)

HOST_MAC = "ee:ee:ee:ee:ee:ee"
GATEWAY_V4 = ipaddress.IPv4Address("169.254.1.1")
# The EUI-64 link-local address of a host end with MAC ee:ee:ee:ee:ee:ee.
GATEWAY_V6 = ipaddress.IPv6Address("fe80::ecee:eeff:feee:eeee")
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
CMD_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class VethSpec:
    """What ``create_pair`` and ``configure_container`` build for one workload interface.

    ``ipv4``/``ipv6`` select the host-side sysctls; ``addresses`` may be empty for
    ``create_pair`` (the pair can be made while IPAM is still allocating).
    """

    host_ifname: str
    container_ifname: str
    netns_path: str
    container_mac: str
    addresses: tuple[IPInterface, ...] = ()
    mtu: int = 1500
    ipv4: bool = True
    ipv6: bool = False


@dataclass(frozen=True, slots=True)
class ContainerState:
    """The container interface as the kernel reports it (CHECK)."""

    ifname: str
    mac: str
    up: bool
    mtu: int
    addresses: frozenset[IPInterface] = frozenset()
    # (destination, gateway or None) of every route out of the interface
    routes: frozenset[tuple[str, str | None]] = field(default_factory=frozenset)


class Dataplane(Protocol):
    """Kernel side of the plugin (real: ``KernelDataplane``; tests: a stateful fake)."""

    def check_netns(self, path: str) -> None:
        """Raise ``CNIError`` unless ``path`` is a usable container namespace."""
        ...

    def host_link_exists(self, name: str) -> bool: ...

    def create_pair(self, spec: VethSpec) -> None:
        """The veth pair, host end up with its sysctls; the container end is left down."""
        ...

    def configure_container(self, spec: VethSpec) -> None:
        """Container end up, with ``spec.addresses`` and the routes via the host end."""
        ...

    def delete_host(self, name: str) -> bool:
        """Delete the host end ``name``; False when it was not there."""
        ...

    def inspect(self, path: str, ifname: str) -> ContainerState | None:
        """The container interface, or None when it (or the namespace) is missing."""
        ...


def random_mac() -> str:
    """A random unicast, locally administered MAC address."""
    raw = bytearray(secrets.token_bytes(6))
    raw[0] = (raw[0] & 0xFE) | 0x02
    return ":".join(f"{b:02x}" for b in raw)


def _inode(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def check_container_netns(path: str) -> None:
    """Refuse a container namespace that is missing, ours, or the machine's root namespace."""
    from kernel.netns import REQUIRE_ENV  # noqa: PLC0415 - keep start-up lean

    try:
        target = _inode(path)
    except FileNotFoundError:
        raise CNIError(
            CONTAINER_UNKNOWN, f"CNI_NETNS={path}: the container network namespace does not exist"
        ) from None
    except OSError as exc:
        raise CNIError(CONTAINER_UNKNOWN, f"CNI_NETNS={path}: cannot open: {exc}") from None
    if target[1] == os.stat("/proc/self/ns/net").st_ino:
        raise CNIError(
            BAD_ENV,
            f"CNI_NETNS={path} is the plugin's own network namespace; "
            "it must name the container's namespace",
        )
    recorded = os.environ.get(REQUIRE_ENV, "")
    root: int | None = int(recorded) if recorded.isdigit() else None
    if root is None:
        try:
            root = os.stat("/proc/1/ns/net").st_ino
        except OSError:
            root = None
    if root is not None and target[1] == root:
        raise CNIError(
            BAD_ENV, f"CNI_NETNS={path} is the root network namespace; refusing to configure it"
        )


def _run(argv: Sequence[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=CMD_TIMEOUT,
        check=False,
        stdin=None if stdin is not None else subprocess.DEVNULL,
    )


def _nsenter(path: str, argv: Sequence[str]) -> list[str]:
    return ["nsenter", f"--net={path}", *argv]


class KernelDataplane:
    """The real kernel (see module docstring)."""

    def check_netns(self, path: str) -> None:
        check_container_netns(path)

    def host_link_exists(self, name: str) -> bool:
        # An ioctl on a socket of this namespace; /sys/class/net would show the namespace that
        # mounted /sys, which is not ours when the runtime entered the namespace with setns(2).
        try:
            socket.if_nametoindex(name)
        except OSError:
            return False
        return True

    def create_pair(self, spec: VethSpec) -> None:
        from kernel.netns import guard_writes  # noqa: PLC0415
        from kernel.sysctl import SysctlDriver, workload_interface_sysctls  # noqa: PLC0415

        check_container_netns(spec.netns_path)
        guard_writes(None)
        host, cif, mtu = spec.host_ifname, spec.container_ifname, spec.mtu
        batch = (
            f"link add {host} address {HOST_MAC} mtu {mtu} type veth peer name {cif}"
            f" address {spec.container_mac} mtu {mtu} netns {spec.netns_path}\n"
            f"link set {host} up\n"
        )
        res = _run(["ip", "-batch", "-"], batch)
        if res.returncode != 0:
            err = res.stderr.strip()
            if "File exists" in err:
                raise CNIError(
                    KERNEL,
                    f"cannot create veth {host}/{cif}: an interface named {cif} already exists "
                    f"in {spec.netns_path} (or {host} on the host)",
                    err,
                )
            raise CNIError(KERNEL, f"cannot create veth {host}/{cif}", err)
        sysctls = SysctlDriver(None)
        sysctls.set_many(workload_interface_sysctls(host, spec.ipv4, spec.ipv6))
        result = sysctls.apply()
        if result.failed:
            raise CNIError(
                KERNEL,
                f"cannot set sysctls on {host}",
                "; ".join(f"{p}: {e}" for p, e in result.failed),
            )
        log.info("cni.dataplane.pair host=%s container=%s netns=%s", host, cif, spec.netns_path)

    def configure_container(self, spec: VethSpec) -> None:
        check_container_netns(spec.netns_path)
        cif = spec.container_ifname
        v4 = any(a.version == 4 for a in spec.addresses)
        v6 = any(a.version == 6 for a in spec.addresses)
        lines = [f"link set {cif} up"]
        for addr in spec.addresses:
            if addr.version == 4:
                lines.append(f"addr add {addr.ip}/32 dev {cif}")
            else:
                lines.append(f"addr add {addr.ip}/128 dev {cif} nodad")
        if v4:
            lines.append(f"route add {GATEWAY_V4} dev {cif} scope link")
            lines.append(f"route add default via {GATEWAY_V4} dev {cif}")
        if v6:
            lines.append(f"route add ::/0 via {GATEWAY_V6} dev {cif}")
        res = _run(_nsenter(spec.netns_path, ["ip", "-batch", "-"]), "\n".join(lines) + "\n")
        if res.returncode != 0:
            raise CNIError(
                KERNEL, f"cannot configure {cif} in {spec.netns_path}", res.stderr.strip()
            )
        log.info(
            "cni.dataplane.container ifname=%s netns=%s addresses=%s",
            cif,
            spec.netns_path,
            ",".join(str(a) for a in spec.addresses),
        )

    def delete_host(self, name: str) -> bool:
        from kernel.netns import guard_writes  # noqa: PLC0415

        if not self.host_link_exists(name):
            return False
        guard_writes(None)
        res = _run(["ip", "link", "del", name])
        if res.returncode == 0:
            return True
        if "Cannot find device" in res.stderr:
            return False
        raise CNIError(KERNEL, f"cannot delete host interface {name}", res.stderr.strip())

    def inspect(self, path: str, ifname: str) -> ContainerState | None:
        if not os.path.exists(path):
            return None
        res = _run(_nsenter(path, ["ip", "-j", "addr", "show", "dev", ifname]))
        if res.returncode != 0:
            if "does not exist" in res.stderr or "Cannot find device" in res.stderr:
                return None
            raise CNIError(KERNEL, f"cannot read {ifname} in {path}", res.stderr.strip())
        links: list[dict[str, Any]] = json.loads(res.stdout or "[]")
        if not links:
            return None
        link = links[0]
        addrs: set[IPInterface] = set()
        for info in link.get("addr_info", []):
            if info.get("scope") == "link":
                continue
            addrs.add(ipaddress.ip_interface(f"{info['local']}/{info['prefixlen']}"))
        routes: set[tuple[str, str | None]] = set()
        for family in ("-4", "-6"):
            r = _run(_nsenter(path, ["ip", "-j", family, "route", "show", "dev", ifname]))
            if r.returncode != 0:
                raise CNIError(KERNEL, f"cannot read routes of {ifname} in {path}", r.stderr)
            for route in json.loads(r.stdout or "[]"):
                dst = str(route.get("dst", ""))
                if dst.startswith("fe80::") or route.get("type") == "multicast":
                    continue
                routes.add((dst, route.get("gateway")))
        return ContainerState(
            ifname=ifname,
            mac=str(link.get("address", "")),
            up="UP" in link.get("flags", []),
            mtu=int(link.get("mtu", 0)),
            addresses=frozenset(addrs),
            routes=frozenset(routes),
        )
