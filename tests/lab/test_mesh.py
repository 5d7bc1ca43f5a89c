"""Three nodes on one subnet: full connectivity and a full mesh with one passive side per pair.

Drives ``tabby-lab up/check/exec`` only. Proves: every workload reaches every other workload
(the check's matrix, parsed); every node's ``tabbyctl node status`` shows the other two nodes as
established mesh peers; for every pair exactly one side is passive, and the kernel agrees: the
single TCP session of each pair was opened by the active side (its remote port is 179).
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from tests.lab.labdriver import Lab

pytestmark = [pytest.mark.lab, pytest.mark.slow]


def _bgp_connections(lab: Lab, node: str) -> list[tuple[str, int, str, int]]:
    """Established TCP connections of ``node`` involving port 179: (local, lport, peer, pport)."""
    out = lab.exec(node, "ss", "-Htn", "state", "established").stdout
    conns = []
    for line in out.splitlines():
        parts = line.split()
        local, peer = parts[-2], parts[-1]
        lip, lport = local.rsplit(":", 1)
        pip, pport = peer.rsplit(":", 1)
        if "179" in (lport, pport):
            conns.append((lip, int(lport), pip, int(pport)))
    return conns


def test_three_node_mesh(make_lab: Callable[[str], Lab]) -> None:
    lab = make_lab("mesh")
    lab.up(3, 1)
    nodes = lab.nodes
    took = lab.wait_mesh(nodes, expected_peers=2)
    print(f"\nmesh established {took:.1f}s after `up` returned")

    matrix = lab.check()
    assert matrix.exit_code == 0, matrix.text
    assert len(matrix.ok) == 6 and all(matrix.ok.values()), matrix.text

    ips = {n: lab.node_ip(n) for n in nodes}
    status = {n: lab.peers_of(n) for n in nodes}
    for node in nodes:
        peers = status[node]
        assert set(peers) == {ips[o] for o in nodes if o != node}, json.dumps(peers, indent=1)
        for p in peers.values():
            assert p["state"] == "established" and p["type"] == "mesh", p
            assert p["prefixesReceived"] == 1 and p["prefixesInstalled"] == 1, p

    for i, a in enumerate(nodes):
        for b in nodes[i + 1 :]:
            a_passive = status[a][ips[b]]["passive"]
            b_passive = status[b][ips[a]]["passive"]
            assert a_passive != b_passive, f"{a}/{b}: passive {a_passive}/{b_passive}"
            active, passive = (b, a) if a_passive else (a, b)
            # the kernel's view: one session per pair, opened by the active side
            pair = [
                c
                for c in _bgp_connections(lab, active)
                if c[2] == ips[passive] and c[0] == ips[active]
            ]
            assert len(pair) == 1, f"{active}->{passive}: {pair}"
            assert pair[0][3] == 179 and pair[0][1] != 179, (
                f"{active} should have connected to {passive}:179, saw {pair}"
            )
