"""Traffic that something other than felix exempted from connection tracking (a raw-table
``CT --notrack`` rule of the host's own firewall) still meets workload policy: felix accepts
untracked packets only when its own doNotTrack policy allowed them (fail closed)."""

from __future__ import annotations

from pathlib import Path

from tests.support.felix import ALLOW_ALL, FelixBed, gnp, wait_for
from tests.support.netns import ns_exec

NOTRACK = [  # both directions of TCP 8081, as a host firewall might exempt a busy service
    ["-p", "tcp", "--dport", "8081", "-j", "CT", "--notrack"],
    ["-p", "tcp", "--sport", "8081", "-j", "CT", "--notrack"],
]


def test_foreign_notrack_does_not_bypass_workload_policy(
    felix_bed: FelixBed, tmp_path: Path
) -> None:
    bed = felix_bed
    bed.put(ALLOW_ALL)
    a = bed.add_workload("a", "10.65.0.1", {"role": "client"}, profiles=("allow-all",))
    b = bed.add_workload("b", "10.65.0.2", {"role": "server"}, profiles=("allow-all",))
    bed.serve(b.netns, (8080, 8081))
    bed.start_felix(tmp_path)
    bed.wait_ready()
    p8080, p8081 = bed.can_tcp(a.netns, b.ip, 8080), bed.can_tcp(a.netns, b.ip, 8081)
    bed.expect({"allow-all: 8080": (p8080, True), "allow-all: 8081": (p8081, True)})

    for rule in NOTRACK:  # the host's own rules, not felix's
        ns_exec(bed.node, ["iptables", "-w", "-t", "raw", "-A", "PREROUTING", *rule])
    rules = {"action": "Allow", "protocol": "TCP", "destination": {"ports": [8080]}}
    bed.put(gnp("only-8080", "role == 'server'", ingress=[rules]))
    bed.expect({"policy: 8080": (p8080, True), "policy, untracked: 8081": (p8081, False)})
    # the packets really were untracked (the rules above matched them)
    counts = ns_exec(
        bed.node, ["iptables", "-w", "-t", "raw", "-L", "PREROUTING", "-v", "-n", "-x"]
    )
    hits = [int(line.split()[0]) for line in counts.splitlines() if "CT notrack" in line]
    assert hits and hits[0] > 0, counts

    bed.delete("GlobalNetworkPolicy", "only-8080")
    assert wait_for(lambda: "only-8080" not in bed.iptables_save(), 15)
    bed.expect({"no policy, untracked: 8081": (p8081, True)})
