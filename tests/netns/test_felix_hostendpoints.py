"""Host endpoints on the node's uplink ``eth0``: default deny with failsafe ports, policy that
opens a port, pre-DNAT deny and doNotTrack allow, on real TCP connections from outside."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.support.felix import ALLOW, ALLOW_ALL, API, DENY, FelixBed, gnp, wait_for
from tests.support.netns import ns_exec

NODE_IP = "198.51.100.1"
OUTSIDE_IP = "198.51.100.2"
HOST = "host == 'node1'"


def hep() -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "HostEndpoint",
        "metadata": {"name": "node1-eth0", "labels": {"host": "node1"}},
        "spec": {"node": "node1", "interfaceName": "eth0", "expectedIPs": [NODE_IP]},
    }


def test_host_endpoint_deny_all_keeps_failsafe_ports(felix_bed: FelixBed, tmp_path: Path) -> None:
    bed = felix_bed
    bed.put(ALLOW_ALL)
    a = bed.add_workload("a", "10.65.0.1", {}, profiles=("allow-all",))
    bed.serve(bed.node, (22, 179, 8080, 8081))
    bed.start_felix(tmp_path)
    bed.wait_ready()
    out = bed.outside

    def port(p: int) -> Any:
        return bed.can_tcp(out, NODE_IP, p)

    bed.expect(
        {"no hep: 8080": (port(8080), True), "no hep: ping": (bed.can_ping(out, NODE_IP), True)}
    )

    # A host endpoint with no policy at all: everything but failsafe is dropped.
    bed.put(hep())
    bed.expect(
        {
            "hep, no policy: 22": (port(22), True),
            "hep, no policy: 179": (port(179), True),
            "hep, no policy: 8080": (port(8080), False),
            "hep, no policy: ping": (bed.can_ping(out, NODE_IP), False),
        }
    )
    # An explicit deny-all policy: the same, and felix itself (etcd over lo) keeps working.
    bed.put(gnp("deny-all", HOST, ingress=[DENY], egress=[DENY]))
    bed.expect(
        {
            "deny-all: 22": (port(22), True),
            "deny-all: 179": (port(179), True),
            "deny-all: 8080": (port(8080), False),
            "deny-all: node->outside ping": (bed.can_ping(bed.node, OUTSIDE_IP), False),
        }
    )
    # Forwarded workload traffic is not host endpoint traffic (no applyOnForward policy).
    bed.expect({"workload->outside": (bed.can_ping(a.netns, OUTSIDE_IP), True)})
    # A policy ordered before the deny opens one port.
    bed.put(
        gnp(
            "allow-8080",
            HOST,
            order=10,
            ingress=[{"action": "Allow", "protocol": "TCP", "destination": {"ports": [8080]}}],
        )
    )
    bed.expect({"allow 8080: 8080": (port(8080), True), "allow 8080: 8081": (port(8081), False)})
    assert bed.health() == 200
    # Removing the host endpoint opens everything again.
    bed.delete("HostEndpoint", "node1-eth0")
    bed.expect({"hep gone: 8081": (port(8081), True)})


def _conntrack(bed: FelixBed, dport: int) -> str:
    return ns_exec(bed.node, ["conntrack", "-L", "-p", "tcp", "--dport", str(dport)], check=False)


def test_pre_dnat_deny_and_do_not_track_allow(felix_bed: FelixBed, tmp_path: Path) -> None:
    bed = felix_bed
    bed.serve(bed.node, (8080, 8081, 8082))
    bed.put(hep())
    bed.put(gnp("allow-all", HOST, ingress=[ALLOW], egress=[ALLOW]))
    bed.start_felix(tmp_path)
    bed.wait_ready()
    out = bed.outside
    p8080, p8081, p8082 = (bed.can_tcp(out, NODE_IP, p) for p in (8080, 8081, 8082))
    bed.expect({"allow-all: 8080": (p8080, True), "allow-all: 8081": (p8081, True)})

    bed.put(
        gnp(
            "pre-dnat-deny",
            HOST,
            preDNAT=True,
            applyOnForward=True,
            order=10,
            ingress=[{"action": "Deny", "protocol": "TCP", "destination": {"ports": [8080]}}],
        )
    )
    # Deny blocks before normal policy; what pre-DNAT policy does not deny goes on to normal
    # policy (no end-of-tier drop for pre-DNAT).
    bed.expect({"preDNAT deny: 8080": (p8080, False), "preDNAT deny: 8081": (p8081, True)})
    bed.delete("GlobalNetworkPolicy", "pre-dnat-deny")
    bed.expect({"preDNAT gone: 8080": (p8080, True)})

    bed.put(
        gnp(
            "untracked",
            HOST,
            doNotTrack=True,
            applyOnForward=True,
            order=10,
            ingress=[{"action": "Allow", "protocol": "TCP", "destination": {"ports": [8082]}}],
            egress=[{"action": "Allow", "protocol": "TCP", "source": {"ports": [8082]}}],
        )
    )
    # allow-all already lets 8082 through, so a probe succeeding says nothing about whether the
    # raw-table rules are in: wait for them, and forget connections tracked before they were.
    assert wait_for(lambda: "--dports 8082" in ns_exec(bed.node, ["iptables-save", "-t", "raw"]))
    ns_exec(bed.node, ["conntrack", "-D", "-p", "tcp", "--dport", "8082"], check=False)
    # Untracked connection works; tracked traffic to other ports still goes through normal
    # policy (no end-of-tier drop for doNotTrack).
    bed.expect({"doNotTrack: 8082": (p8082, True), "doNotTrack: 8081": (p8081, True)})
    assert "dport=8082" not in _conntrack(bed, 8082)
    assert "dport=8081" in _conntrack(bed, 8081)
    # With normal policy denying, the untracked allow still lets 8082 through.
    bed.put(gnp("allow-all", HOST, ingress=[DENY], egress=[DENY]))
    bed.expect({"deny + untracked: 8082": (p8082, True), "deny + untracked: 8081": (p8081, False)})
