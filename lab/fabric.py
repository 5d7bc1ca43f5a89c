"""Build and remove the lab's network: namespaces, bridges, veths, addresses, routes.

Role: turn a ``lab.topology.Topology`` into kernel objects, all inside namespaces this module
creates (``ip netns add``), and remove them again. Nothing is ever configured in the namespace
the lab runs in: veth pairs are created with both ends placed directly in lab namespaces.
Inputs: a ``Topology``. Outputs: namespaces; ``destroy`` deletes them (killing processes still
inside, which are the lab's: it created the namespaces).
Invariants: ``build`` is all-or-nothing from the caller's view (on failure the caller runs
``destroy``); ``destroy`` is idempotent and only touches namespaces named in the topology.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
from collections.abc import Callable, Sequence
from ipaddress import ip_interface
from pathlib import Path

from kernel.links import add_address, create_veth, set_link_up
from lab.topology import Topology

log = logging.getLogger(__name__)


class FabricError(RuntimeError):
    """A step of building the lab network failed (names the step)."""


def _run(argv: Sequence[str], what: str) -> str:
    res = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if res.returncode != 0:
        raise FabricError(f"{what}: {' '.join(argv)}: {res.stderr.strip()}")
    return res.stdout


def ns_run(netns: str, argv: Sequence[str], what: str) -> str:
    return _run(["ip", "netns", "exec", netns, *argv], what)


def existing_netns() -> set[str]:
    out = _run(["ip", "netns", "list"], "list namespaces")
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def add_netns(name: str) -> None:
    _run(["ip", "netns", "add", name], f"create namespace {name}")
    _run(["ip", "-n", name, "link", "set", "lo", "up"], f"loopback up in {name}")


def build(topo: Topology, progress: Callable[[str], None] = lambda s: None) -> None:
    """Create the fabric, the router and every node namespace with its uplink."""
    present = existing_netns()
    clash = [
        n
        for n in (topo.fabric_netns, topo.router_netns, *(n.netns for n in topo.nodes))
        if n in present
    ]
    if clash:
        raise FabricError(
            f"namespaces already exist: {', '.join(clash)} (run `tabby-lab down` first)"
        )
    progress("fabric and router")
    add_netns(topo.fabric_netns)
    add_netns(topo.router_netns)
    ns_run(topo.router_netns, ["sysctl", "-qw", "net.ipv4.ip_forward=1"], "router forwarding")
    for sn in topo.subnets:
        _run(
            ["ip", "-n", topo.fabric_netns, "link", "add", sn.bridge, "type", "bridge"],
            f"bridge {sn.bridge}",
        )
        set_link_up(topo.fabric_netns, sn.bridge)
        if topo.spec.tor:
            continue  # the rack's gateway is its ToR (lab.tor builds it)
        port = f"r{sn.index}"
        create_veth(topo.router_netns, sn.router_iface, topo.fabric_netns, port)
        _run(
            ["ip", "-n", topo.fabric_netns, "link", "set", port, "master", sn.bridge],
            f"attach {port}",
        )
        set_link_up(topo.fabric_netns, port)
        add_address(topo.router_netns, sn.router_iface, ip_interface(sn.router_address))
        set_link_up(topo.router_netns, sn.router_iface)
    for node in topo.nodes:
        progress(f"node {node.name} ({node.address.split('/')[0]})")
        add_netns(node.netns)
        sn = topo.subnets[node.subnet]
        create_veth(node.netns, "eth0", topo.fabric_netns, node.fabric_port)
        _run(
            ["ip", "-n", topo.fabric_netns, "link", "set", node.fabric_port, "master", sn.bridge],
            f"attach {node.fabric_port}",
        )
        set_link_up(topo.fabric_netns, node.fabric_port)
        add_address(node.netns, "eth0", ip_interface(node.address))
        set_link_up(node.netns, "eth0")
        _run(
            ["ip", "-n", node.netns, "route", "replace", "default", "via", node.gateway],
            f"default route of {node.name}",
        )


def kernel_has_ipip(netns: str) -> bool:
    """Whether this kernel can make IP-in-IP devices, found without loading anything: a
    ``tunl0`` in the lab namespace ``netns`` (ipip loaded or built in), or an ipip module on
    disk for the running kernel (tabby-bgp's ``ip link add ... type ipip`` will load it)."""
    res = subprocess.run(
        ["ip", "-n", netns, "link", "show", "tunl0"],
        capture_output=True,
        timeout=10,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if res.returncode == 0 or Path("/sys/module/ipip").exists():
        return True
    return any((Path("/lib/modules") / os.uname().release).glob("kernel/net/ipv4/ipip.ko*"))


def _kill_inside(netns: str) -> None:
    res = subprocess.run(
        ["ip", "netns", "pids", netns], capture_output=True, text=True, timeout=10, check=False
    )
    for pid in res.stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError, PermissionError):
            os.kill(int(pid), signal.SIGKILL)


def destroy(names: Sequence[str]) -> list[str]:
    """Delete the named namespaces (workloads first); returns those that were removed."""
    present = existing_netns()
    removed = []
    for name in reversed(list(names)):
        if name not in present:
            continue
        _kill_inside(name)
        res = subprocess.run(
            ["ip", "netns", "del", name], capture_output=True, text=True, timeout=30, check=False
        )
        if res.returncode == 0:
            removed.append(name)
        else:
            log.warning("fabric.delete_failed netns=%s error=%s", name, res.stderr.strip())
    return removed
