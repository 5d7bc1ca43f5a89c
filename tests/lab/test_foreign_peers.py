"""A BIRD 2 node and an FRR node in the mesh with tabby nodes (``tabby-lab peer add``).

Each peer runs in its own namespace on the fabric, originates a /26 of the lab pool and has a
Node resource, so every tabby node peers with it in the node-to-node mesh. Proves, in both
directions: BIRD and FRR learn every tabby block with the right next hop and install it in
their kernel; the tabby nodes learn the peers' prefixes and install them (proto 81 via the
peer's address); a tabby workload reaches an address inside each peer's announced /26, and the
reply comes back over the route the peer learned from us.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.lab.labdriver import Lab, wait_for

pytestmark = [pytest.mark.lab, pytest.mark.slow]


def _kernel_unicast(lab: Lab, target: str) -> dict[str, str]:
    return {
        r["dst"]: r.get("gateway", "")
        for r in lab.routes(target)
        if r.get("type", "unicast") == "unicast" and "gateway" in r
    }


def _bird_routes(lab: Lab, name: str) -> dict[str, str]:
    """BIRD's routes learned over BGP: prefix -> next hop ("via X on eth0")."""
    out = lab.peer_cli(name, "show", "route", "where", "source", "=", "RTS_BGP")
    routes: dict[str, str] = {}
    current = ""
    for line in out.splitlines():
        parts = line.split()
        if parts and "/" in parts[0] and "unicast" in line:
            current = parts[0]
        elif parts[:1] == ["via"] and current:
            routes[current] = parts[1]
    return routes


def _frr_routes(lab: Lab, name: str) -> dict[str, str]:
    """FRR's best paths learned over iBGP: prefix -> next hop."""
    data: dict[str, Any] = json.loads(lab.peer_cli(name, "show", "bgp", "ipv4", "unicast", "json"))
    out = {}
    for prefix, paths in data.get("routes", {}).items():
        for p in paths:
            if p.get("bestpath") and p.get("pathFrom") == "internal":  # learned over iBGP
                out[prefix] = p["nexthops"][0]["ip"]
    return out


def test_bird_and_frr_in_the_mesh(make_lab: Callable[[str], Lab], routing_daemons: None) -> None:
    lab = make_lab("peer")
    lab.up(2, 1)
    lab.wait_mesh(lab.nodes, expected_peers=1)
    bird = lab.peer_add("bird1", "bird")
    frr = lab.peer_add("frr1", "frr")
    bird_ip, frr_ip = bird["address"].split("/")[0], frr["address"].split("/")[0]
    ours = {lab.block_of(n): lab.node_ip(n) for n in lab.nodes}

    # sessions: every tabby node has both nodes' worth of peers: the other node, BIRD, FRR
    took = lab.wait_mesh(lab.nodes, expected_peers=3, timeout=60)
    print(f"\nBIRD and FRR sessions established {took:.1f}s after they were added")
    for n in lab.nodes:
        peers = lab.peers_of(n)
        for ip in (bird_ip, frr_ip):
            assert peers[ip]["type"] == "mesh" and peers[ip]["state"] == "established"

    # they learn our blocks (BGP table and their kernel)
    _, t_bird = wait_for(lambda: _bird_routes(lab, "bird1") == ours, 30, "BIRD to learn our blocks")
    _, t_frr = wait_for(lambda: _frr_routes(lab, "frr1") == ours, 30, "FRR to learn our blocks")
    for name in ("bird1", "frr1"):

        def in_kernel(name: str = name) -> bool:
            return all(_kernel_unicast(lab, name).get(b) == gw for b, gw in ours.items())

        wait_for(in_kernel, 30, f"{name}'s kernel to hold our blocks")
        kernel = _kernel_unicast(lab, name)
        assert {b: kernel.get(b) for b in ours} == ours
    print(f"BIRD has our blocks after {t_bird:.1f}s, FRR after {t_frr:.1f}s")

    # we learn theirs and install them via their addresses (proto 81)
    theirs = {bird["originate"]: bird_ip, frr["originate"]: frr_ip}
    for n in lab.nodes:

        def installed(n: str = n) -> bool:
            return all(lab.bgp_routes(n).get(p) == gw for p, gw in theirs.items())

        wait_for(installed, 30, f"{n} to install the peers' prefixes")
        for ip in (bird_ip, frr_ip):
            assert lab.peers_of(n)[ip]["prefixesInstalled"] == 1

    # a workload reaches an address inside each peer's prefix (on the peer's lo), and back
    for n in lab.nodes:
        wl = lab.workload_of(n)
        for p in (bird, frr):
            res = lab.exec(wl, "ping", "-c", "3", "-i", "0.2", "-W", "1", p["target"], check=False)
            assert res.returncode == 0, f"{wl} -> {p['name']} {p['target']}: {res.stdout}"
    assert lab.check().exit_code == 0
