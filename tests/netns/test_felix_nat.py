"""natOutgoing: workload traffic to the outside is masqueraded to the node's address only when
its pool says so (the outside listener reports the peer address it sees)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.support.felix import ALLOW_ALL, API, FelixBed

OUTSIDE_IP = "198.51.100.2"


def pool(nat: bool) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "IPPool",
        "metadata": {"name": "pool1"},
        "spec": {"cidr": "10.65.0.0/16", "natOutgoing": nat},
    }


def test_nat_outgoing(felix_bed: FelixBed, tmp_path: Path) -> None:
    bed = felix_bed
    bed.put(ALLOW_ALL)
    a = bed.add_workload("a", "10.65.0.1", {}, profiles=("allow-all",))
    b = bed.add_workload("b", "10.65.0.2", {}, profiles=("allow-all",))
    bed.serve(bed.outside, (8080,))
    bed.serve(b.netns, (8080,))
    bed.put(pool(False))
    bed.start_felix(tmp_path)
    bed.wait_ready()

    def peer_is(ns: str, ip: str, want: str) -> Any:
        return lambda: bed.connect(ns, ip, 8080) == want

    bed.expect({"no NAT: workload IP": (peer_is(a.netns, OUTSIDE_IP, a.ip), True)})
    bed.put(pool(True))
    bed.expect(
        {
            "NAT: node IP": (peer_is(a.netns, OUTSIDE_IP, "198.51.100.1"), True),
            # Pool to pool is never masqueraded.
            "NAT: within pools": (peer_is(a.netns, b.ip, a.ip), True),
        }
    )
    bed.put(pool(False))
    bed.expect({"NAT off again": (peer_is(a.netns, OUTSIDE_IP, a.ip), True)})
    bed.delete("IPPool", "pool1")
    bed.expect({"pool gone": (peer_is(a.netns, OUTSIDE_IP, a.ip), True)})
