"""A node removed from the cluster and added back, while the others keep running.

Proves: deleting a node's Node resource (with its agents stopped through ``tabby-lab agent
stop``) makes the other nodes drop its sessions and its block route at once (not after the
graceful-restart time), traffic among the remaining nodes keeps flowing; re-adding the Node and
starting its agents brings its sessions, its routes (both directions) and full connectivity
back. Only the churned node's sessions change: the other sessions keep their ``since``.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from tests.lab.labdriver import Lab, wait_for

pytestmark = [pytest.mark.lab, pytest.mark.slow]

# Far below the graceful-restart time (120 s): a removed node is not a restarting one.
REMOVAL_DEADLINE = 20.0


def _since(lab: Lab, node: str, peer_ip: str) -> float:
    return float(lab.peers_of(node)[peer_ip]["since"])


def test_node_removed_and_readded(make_lab: Callable[[str], Lab]) -> None:
    lab = make_lab("chrn")
    lab.up(3, 1)
    n1, n2, n3 = lab.nodes
    lab.wait_mesh(lab.nodes, expected_peers=2)
    assert lab.check().exit_code == 0
    ip1, ip2, ip3 = (lab.node_ip(n) for n in (n1, n2, n3))
    block3 = lab.block_of(n3)
    for n in (n1, n2):
        assert lab.bgp_routes(n).get(block3) == ip3
    since_12, since_21 = _since(lab, n1, ip2), _since(lab, n2, ip1)
    stayed = {lab.workload_of(n1), lab.workload_of(n2)}

    # ---- remove node3: its agents stop, its Node resource goes
    lab.agent("stop", n3, "tabby-bgp")
    lab.agent("stop", n3, "tabby-felix")
    wait_for(lambda: lab.node_status(n3) == {}, 20, f"{n3}'s tabby-bgp to stop")
    lab.tabbyctl("delete", "node", n3)

    def gone() -> bool:
        return not any(ip3 in lab.peers_of(n) or block3 in lab.bgp_routes(n) for n in (n1, n2))

    _, took = wait_for(gone, REMOVAL_DEADLINE, f"{n1} and {n2} to drop {n3}'s session and route")
    print(f"\nremoval: sessions and routes of {n3} gone after {took:.1f}s")
    matrix = lab.check(retries=3)
    among = matrix.among(stayed)
    assert among and all(among.values()), matrix.text
    # node3's workload is now unreachable from the others: the route really is gone
    assert not matrix.ok[(lab.workload_of(n1), lab.workload_of(n3))], matrix.text
    assert _since(lab, n1, ip2) == since_12 and _since(lab, n2, ip1) == since_21

    # ---- re-add node3
    lab.tabbyctl("apply", "-f", "-", input_text=json.dumps(lab.node_resource(n3)))
    lab.agent("start", n3, "tabby-felix")
    lab.agent("start", n3, "tabby-bgp")
    took = lab.wait_mesh(lab.nodes, expected_peers=2, timeout=60)

    def routes_back() -> bool:
        want = {
            n: {lab.block_of(o): lab.node_ip(o) for o in lab.nodes if o != n} for n in lab.nodes
        }
        return all(
            all(lab.bgp_routes(n).get(b) == gw for b, gw in want[n].items()) for n in lab.nodes
        )

    _, took_routes = wait_for(routes_back, 30, "every block routed on every node again")
    print(f"re-add: sessions back after {took:.1f}s, routes after a further {took_routes:.1f}s")
    matrix = lab.check()
    assert matrix.exit_code == 0, matrix.text
    for n in lab.nodes:
        for p in lab.peers_of(n).values():
            assert p["prefixesReceived"] == 1 and p["prefixesInstalled"] == 1, (n, p)
    assert _since(lab, n1, ip2) == since_12 and _since(lab, n2, ip1) == since_21
