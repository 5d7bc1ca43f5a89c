"""A new peer is added while a neighbour is down and announcements changed meanwhile.

ExaBGP performs a configuration reload (how tabby-bgp adds a peer) only once no neighbour has
routes waiting to be sent, and a neighbour we connect to that is down holds the routes
announced since it went down (until its next connection attempt fails and resets them).
Proves that this does not keep a node from adding a peer: with node1's tabby-bgp stopped (node2
and node3 connect to it: its address sorts first) and the pool's export toggled off and on
(every node withdraws and re-announces its block, queued for node1 too), a BIRD peer added to
the mesh gets its sessions to node2 and node3 and their blocks; node1 comes back afterwards and
the mesh is whole again.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest

from tests.lab.labdriver import Lab, wait_for

pytestmark = [pytest.mark.lab, pytest.mark.slow]


def _set_export(lab: Lab, pool: dict[str, Any], disabled: bool) -> None:
    pool = json.loads(json.dumps(pool))
    pool["spec"]["disableBGPExport"] = disabled
    pool["metadata"].pop("resourceVersion", None)
    lab.tabbyctl("replace", "-f", "-", input_text=json.dumps(pool))


def _session_down(lab: Lab, node: str, peer: str) -> bool:
    state: str = lab.peers_of(node)[peer]["state"]
    return state != "established"


def test_peer_added_while_a_neighbour_is_down(
    make_lab: Callable[[str], Lab], routing_daemons: None
) -> None:
    lab = make_lab("rlpd")
    lab.up(3, 1)
    n1, n2, n3 = lab.nodes
    lab.wait_mesh(lab.nodes, expected_peers=2)
    ip1 = lab.node_ip(n1)
    assert ip1 < lab.node_ip(n2) and ip1 < lab.node_ip(n3)  # node2/node3 connect to node1

    lab.agent("stop", n1, "tabby-bgp")
    for n in (n2, n3):
        wait_for(partial(_session_down, lab, n, ip1), 20, f"{n} to lose {n1}")

    pools = json.loads(lab.tabbyctl("get", "ippool", "-o", "json"))["items"]
    assert len(pools) == 1
    blocks = {n: lab.block_of(n) for n in (n2, n3)}
    _set_export(lab, pools[0], True)
    wait_for(
        lambda: all(blocks[o] not in lab.bgp_routes(n) for n, o in ((n2, n3), (n3, n2))),
        20,
        "node2 and node3 to withdraw their blocks",
    )
    _set_export(
        lab,
        json.loads(lab.tabbyctl("get", "ippool", pools[0]["metadata"]["name"], "-o", "json")),
        False,
    )
    wait_for(
        lambda: all(lab.bgp_routes(n).get(blocks[o]) for n, o in ((n2, n3), (n3, n2))),
        20,
        "node2 and node3 to announce their blocks again",
    )

    bird = lab.peer_add("bird1", "bird")
    bird_ip = bird["address"].split("/")[0]

    def bird_up() -> bool:
        return all(lab.peers_of(n).get(bird_ip, {}).get("state") == "established" for n in (n2, n3))

    _, took = wait_for(bird_up, 45, f"{n2} and {n3} to establish a session with the new peer")
    print(f"\nnew peer's sessions established {took:.1f}s after it was added, {n1} still down")
    out = lab.peer_cli("bird1", "show", "route", "where", "source", "=", "RTS_BGP")
    for b in blocks.values():
        assert b in out, out

    lab.agent("start", n1, "tabby-bgp")
    lab.wait_mesh(lab.nodes, expected_peers=3, timeout=60)
    assert lab.check().exit_code == 0
