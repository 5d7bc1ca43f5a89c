"""Sysctls land in the namespace and not in the root one; conntrack entries are deleted."""

from __future__ import annotations

import subprocess
from ipaddress import ip_address
from pathlib import Path

import pytest

from kernel.conntrack import delete_entries
from kernel.sysctl import SysctlDriver, workload_interface_sysctls
from tests.support.netns import NetnsFactory, ns_exec

pytestmark = pytest.mark.netns


def ns_read(ns: str, path: str) -> str:
    return ns_exec(ns, ["cat", f"/proc/sys/{path}"]).strip()


def root_read(path: str) -> str | None:
    p = Path("/proc/sys") / path
    return p.read_text().strip() if p.exists() else None


def test_sysctls_land_in_namespace_only(netns: NetnsFactory) -> None:
    ns = netns.new("sc")
    ns_exec(ns, ["ip", "link", "add", "tbw1", "type", "veth", "peer", "name", "tbp1"])
    values = workload_interface_sysctls("tbw1", ipv4=True, ipv6=True)
    watched = ["net/ipv4/ip_forward", "net/ipv4/conf/all/forwarding", "net/ipv4/conf/lo/proxy_arp"]
    root_before = {p: root_read(p) for p in watched}
    d = SysctlDriver(ns)
    d.set_many(values)
    d.set("net/ipv4/conf/lo/proxy_arp", "1")
    res = d.apply()
    assert not res.failed and not res.forgotten
    for path, value in values.items():
        assert ns_read(ns, path) == value, path
    assert ns_read(ns, "net/ipv4/conf/lo/proxy_arp") == "1"
    assert {p: root_read(p) for p in watched} == root_before
    assert root_read("net/ipv4/conf/tbw1/proxy_arp") is None  # no such interface at the root
    # nothing changed: nothing written, even after a full re-read
    assert d.apply().written == ()
    d.invalidate()
    again = d.apply()
    assert again.written == () and again.unchanged == len(values) + 1
    # the kernel drifts: only that value is rewritten
    ns_exec(ns, ["sh", "-c", "echo 0 > /proc/sys/net/ipv4/conf/tbw1/proxy_arp"])
    d.invalidate()
    assert d.apply().written == ("net/ipv4/conf/tbw1/proxy_arp",)
    assert ns_read(ns, "net/ipv4/conf/tbw1/proxy_arp") == "1"


def test_sysctls_of_vanished_interface_are_forgotten(netns: NetnsFactory) -> None:
    ns = netns.new("sg")
    ns_exec(ns, ["ip", "link", "add", "tbw1", "type", "veth", "peer", "name", "tbp1"])
    d = SysctlDriver(ns)
    d.set_many(workload_interface_sysctls("tbw1", ipv4=True, ipv6=False))
    d.apply()
    ns_exec(ns, ["ip", "link", "del", "tbw1"])
    d.invalidate()
    res = d.apply()
    assert len(res.forgotten) == 4 and not res.failed
    assert set(d.desired) == {"net/ipv4/ip_forward"}


def conntrack_count(ns: str) -> dict[str, int]:
    out = subprocess.run(
        ["ip", "netns", "exec", ns, "conntrack", "-L"], capture_output=True, text=True, check=False
    ).stdout
    counts: dict[str, int] = {}
    for ip in ("198.51.100.2", "198.51.100.3"):
        counts[ip] = sum(1 for line in out.splitlines() if f"src={ip} " in line)
    return counts


def test_conntrack_entries_deleted(netns: NetnsFactory) -> None:
    node = netns.new("cn")
    w1 = netns.new("cw")
    w2 = netns.new("cx")
    for ws, dev, ip in ((w1, "tbw1", "198.51.100.2"), (w2, "tbw2", "198.51.100.3")):
        ns_exec(
            node, ["ip", "link", "add", dev, "type", "veth", "peer", "name", "eth0", "netns", ws]
        )
        ns_exec(node, ["ip", "link", "set", dev, "up"])
        ns_exec(ws, ["ip", "addr", "add", f"{ip}/32", "dev", "eth0"])
        ns_exec(ws, ["ip", "link", "set", "eth0", "up"])
        ns_exec(ws, ["ip", "route", "add", "198.51.100.1", "dev", "eth0"])
        ns_exec(node, ["ip", "route", "add", f"{ip}/32", "dev", dev])
    ns_exec(node, ["ip", "addr", "add", "198.51.100.1/32", "dev", "lo"])
    # conntrack tracks flows once a conntrack-using rule is loaded in the namespace
    ns_exec(
        node,
        [
            "iptables",
            "-A",
            "INPUT",
            "-m",
            "conntrack",
            "--ctstate",
            "NEW,ESTABLISHED",
            "-j",
            "ACCEPT",
        ],
    )
    for ws in (w1, w2):
        ns_exec(ws, ["ping", "-c", "1", "-W", "2", "198.51.100.1"])
    before = conntrack_count(node)
    assert before["198.51.100.2"] >= 1 and before["198.51.100.3"] >= 1, before
    res = delete_entries(node, [ip_address("198.51.100.2"), ip_address("2001:db8::9")])
    assert res.errors == () and res.deleted >= 1
    after = conntrack_count(node)
    assert after["198.51.100.2"] == 0 and after["198.51.100.3"] == before["198.51.100.3"]
    # nothing left to match: exit status 1 from conntrack is not an error
    assert delete_entries(node, [ip_address("198.51.100.2")]).errors == ()
