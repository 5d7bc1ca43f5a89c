"""Workload endpoints in the kernel: fail closed, anti-spoofing, workload-to-host traffic,
routes, conntrack clean-up and per-interface sysctls (real packets, kernel read-back)."""

from __future__ import annotations

import os
from pathlib import Path

from tests.support.felix import ALLOW_ALL, API, FelixBed, wait_for
from tests.support.netns import ns_exec

NODE_IP = "198.51.100.1"


def test_unknown_workload_interface_is_dropped(felix_bed: FelixBed, tmp_path: Path) -> None:
    bed = felix_bed
    bed.put(ALLOW_ALL)
    a = bed.add_workload("a", "10.65.0.1", {}, profiles=("allow-all",))
    # x: a workload interface with no WorkloadEndpoint (yet), present before felix starts.
    x = bed.add_workload("x", "10.65.0.9", {}, profiles=("allow-all",), write=False)
    # "Another program" routes to it, so only felix's rules stand in the way.
    ns_exec(bed.node, ["ip", "route", "add", f"{x.ip}/32", "dev", x.iface])
    bed.start_felix(tmp_path)
    bed.wait_ready()
    checks = {
        "a->x": (bed.can_ping(a.netns, x.ip), False),
        "x->a": (bed.can_ping(x.netns, a.ip), False),
        "node->x": (bed.can_ping(bed.node, x.ip), False),
        "x->node": (bed.can_ping(x.netns, NODE_IP), False),
        "outside->x": (bed.can_ping(bed.outside, x.ip), False),
    }
    bed.expect(
        {
            **checks,
            "a->node gateway path works (a->outside)": (
                bed.can_ping(a.netns, "198.51.100.2"),
                True,
            ),
        }
    )

    # y: appears while felix is running.
    y = bed.add_workload("y", "10.65.0.10", {}, profiles=("allow-all",), write=False)
    ns_exec(bed.node, ["ip", "route", "add", f"{y.ip}/32", "dev", y.iface])
    bed.expect(
        {
            "a->y": (bed.can_ping(a.netns, y.ip), False),
            "y->a": (bed.can_ping(y.netns, a.ip), False),
            "y->outside": (bed.can_ping(y.netns, "198.51.100.2"), False),
        }
    )
    # Once its endpoint exists, the same interface works (so the checks above can fail). The
    # foreign route stays (felix leaves routes of other protocols alone).
    bed.put_workload(x)
    bed.expect(
        {
            "a->x with WEP": (bed.can_ping(a.netns, x.ip), True),
            "x->a with WEP": (bed.can_ping(x.netns, a.ip), True),
        }
    )


def test_anti_spoofing(felix_bed: FelixBed, tmp_path: Path) -> None:
    bed = felix_bed
    bed.put(ALLOW_ALL)
    a = bed.add_workload("a", "10.65.0.1", {}, profiles=("allow-all",))
    b = bed.add_workload("b", "10.65.0.2", {}, profiles=("allow-all",))
    spoofed = "10.65.0.50"
    ns_exec(a.netns, ["ip", "addr", "add", f"{spoofed}/32", "dev", "eth0"])
    # Route the spoofed address back to a's interface in the node, so strict rp_filter does
    # not drop it on its own: felix's iptables anti-spoofing rule is what is tested.
    ns_exec(bed.node, ["ip", "route", "add", f"{spoofed}/32", "dev", a.iface])
    bed.start_felix(tmp_path)
    bed.wait_ready()
    bed.expect(
        {
            "own address": (bed.can_ping(a.netns, b.ip), True),
            "spoofed to b": (bed.can_ping(a.netns, b.ip, "-I", spoofed), False),
            "spoofed to outside": (bed.can_ping(a.netns, "198.51.100.2", "-I", spoofed), False),
        }
    )
    assert "source address is not the workload address" in bed.iptables_save()
    # allowSpoofedSourcePrefixes lets it through (the check above is about the address).
    doc = bed.wep_doc(a)
    doc["spec"]["allowSpoofedSourcePrefixes"] = [f"{spoofed}/32"]
    bed.put(doc)
    bed.expect({"allowed spoof": (bed.can_ping(a.netns, b.ip, "-I", spoofed), True)})


def test_workload_to_host_default_drop_then_accept(felix_bed: FelixBed, tmp_path: Path) -> None:
    bed = felix_bed
    bed.put(ALLOW_ALL)
    a = bed.add_workload("a", "10.65.0.1", {}, profiles=("allow-all",))
    bed.serve(bed.node, (8080,))
    bed.start_felix(tmp_path)
    bed.wait_ready()
    to_host = bed.can_tcp(a.netns, NODE_IP, 8080)
    ping_host = bed.can_ping(a.netns, NODE_IP)
    bed.expect(
        {
            "default Drop: tcp": (to_host, False),
            "default Drop: ping": (ping_host, False),
            "forwarded still fine": (bed.can_ping(a.netns, "198.51.100.2"), True),
        }
    )
    # Accept via FelixConfiguration: felix exits to restart with the new config.
    bed.put(
        {
            "apiVersion": API,
            "kind": "FelixConfiguration",
            "metadata": {"name": "default"},
            "spec": {"defaultEndpointToHostAction": "Accept"},
        }
    )
    proc = bed.felix
    assert proc is not None
    assert wait_for(lambda: proc.poll() is not None, 15), bed.felix_log()
    bed.start_felix(tmp_path)
    bed.wait_ready()
    bed.expect({"Accept: tcp": (to_host, True), "Accept: ping": (ping_host, True)})
    # Accept still applies the workload's egress policy first.
    bed.put(
        {
            "apiVersion": API,
            "kind": "Profile",
            "metadata": {"name": "allow-all"},
            "spec": {
                "ingress": [{"action": "Allow"}],
                "egress": [{"action": "Allow", "protocol": "ICMP"}],
            },
        }
    )
    bed.expect(
        {"egress icmp only: tcp": (to_host, False), "egress icmp only: ping": (ping_host, True)}
    )


def _sysctl(ns: str | None, path: str) -> str:
    if ns is None:
        return Path("/proc/sys", path).read_text().strip()
    return ns_exec(ns, ["cat", f"/proc/sys/{path}"]).strip()


def test_routes_conntrack_and_sysctls(felix_bed: FelixBed, tmp_path: Path) -> None:
    bed = felix_bed
    root_before = {
        p: _sysctl(None, p)
        for p in (
            "net/ipv4/ip_forward",
            "net/ipv4/conf/all/rp_filter",
            "net/ipv4/conf/default/proxy_arp",
        )
        if os.path.exists(f"/proc/sys/{p}")
    }
    bed.put(ALLOW_ALL)
    a = bed.add_workload("a", "10.65.0.1", {}, profiles=("allow-all",))
    b = bed.add_workload("b", "10.65.0.2", {}, profiles=("allow-all",))
    ns_exec(bed.node, ["sysctl", "-qw", "net.ipv4.ip_forward=0"])
    bed.start_felix(tmp_path)
    bed.wait_ready()
    bed.expect({"a->b": (bed.can_ping(a.netns, b.ip), True)})

    def felix_routes() -> dict[str, dict[str, object]]:
        return {r["dst"]: r for r in bed.routes() if str(r.get("protocol")) == "80"}

    routes = felix_routes()
    for wl in (a, b):
        r = routes.get(wl.ip)
        assert r is not None, bed.routes()
        assert r["dev"] == wl.iface and r.get("scope") == "link", r
        for key, want in (("proxy_arp", "1"), ("rp_filter", "1"), ("forwarding", "1")):
            assert _sysctl(bed.node, f"net/ipv4/conf/{wl.iface}/{key}") == want, (wl.iface, key)
    assert _sysctl(bed.node, "net/ipv4/ip_forward") == "1"
    # Nothing changed in the root namespace.
    assert {p: _sysctl(None, p) for p in root_before} == root_before

    # A conntrack entry for a's address (long-lived TCP-less flow: a UDP "connection").
    ns_exec(a.netns, ["sh", "-c", f"echo x > /dev/udp/{b.ip}/5555"], check=False)
    ns_exec(b.netns, ["sh", "-c", f"echo x > /dev/udp/{a.ip}/5556"], check=False)

    def ct_has(ip: str) -> bool:
        return ip in ns_exec(bed.node, ["conntrack", "-L"], check=False)

    assert wait_for(lambda: ct_has(a.ip), 3), ns_exec(bed.node, ["conntrack", "-L"], check=False)
    bed.delete_workload(a)
    assert wait_for(lambda: a.ip not in felix_routes(), 10), bed.routes()
    assert b.ip in felix_routes()
    assert wait_for(lambda: not ct_has(a.ip), 5), ns_exec(
        bed.node, ["conntrack", "-L"], check=False
    )
    assert f"tby-tw-{a.iface}" not in bed.iptables_save()
    bed.expect({"b->a after delete": (bed.can_ping(b.netns, a.ip), False)})


def test_endpoint_with_missing_profile_does_not_break_the_dataplane(
    felix_bed: FelixBed, tmp_path: Path
) -> None:
    bed = felix_bed
    bed.put(ALLOW_ALL)
    a = bed.add_workload("a", "10.65.0.1", {}, profiles=("allow-all",))
    b = bed.add_workload("b", "10.65.0.2", {}, profiles=("allow-all",))
    bed.start_felix(tmp_path)
    bed.wait_ready()
    bed.expect({"a->b": (bed.can_ping(a.netns, b.ip), True)})
    # c names a profile that does not exist (yet): it gets no allow, everything else goes on.
    c = bed.add_workload("c", "10.65.0.3", {}, profiles=("not-yet", "allow-all"))
    bed.put(ALLOW_ALL | {"metadata": {"name": "other"}})
    bed.expect(
        {
            "a->c (allow-all after missing)": (bed.can_ping(a.netns, c.ip), True),
            "a->b": (bed.can_ping(a.netns, b.ip), True),
        }
    )
    c.profiles = ("not-yet",)
    bed.put_workload(c)
    bed.expect({"a->c (only missing)": (bed.can_ping(a.netns, c.ip), False)})
    bed.put(ALLOW_ALL | {"metadata": {"name": "not-yet"}})
    bed.expect({"a->c (profile created)": (bed.can_ping(a.netns, c.ip), True)})
    assert bed.felix is not None and bed.felix.poll() is None
    assert bed.health() == 200
