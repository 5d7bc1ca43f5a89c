"""ExaBGP killed with SIGKILL under the agent: restarted, sessions and routes back, outage measured.

Proves: the agent notices its ExaBGP died (the API bridge's pipe closes), starts a new one (a
new PID, ``exabgp.restarts`` counted in ``tabbyctl node status``), the sessions on both sides
are re-established after the kill, our block is announced again (the peer receives it from the
new session) and traffic between the two nodes' workloads flows. The outage is measured with a
20 ms ping; graceful restart (the peer keeps our routes as stale, the agent keeps its kernel
routes) should make it zero.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import pytest

from tests.lab.labdriver import Background, Lab, parse_ping, wait_for

pytestmark = [pytest.mark.lab, pytest.mark.slow]

INTERVAL = 0.02


def test_exabgp_sigkill(make_lab: Callable[[str], Lab], background: Background) -> None:
    lab = make_lab("exa")
    lab.up(2, 1)
    n1, n2 = lab.nodes
    lab.wait_mesh(lab.nodes, expected_peers=1)
    assert lab.check().exit_code == 0
    ip1, ip2 = lab.node_ip(n1), lab.node_ip(n2)
    block2 = lab.block_of(n2)
    ping = background.start(
        lab.topology.node(n1).netns + "-w1",
        ["ping", "-i", str(INTERVAL), "-W", "1", lab.workload_ips()[lab.workload_of(n2)]],
        "ping",
    )
    time.sleep(1.0)
    old = lab.exabgp_pid(n2)
    assert old is not None, "no ExaBGP PID file for node2"
    restarts_before = lab.node_status(n2)["exabgp"]["restarts"]
    t0 = time.time()
    os.kill(old, signal.SIGKILL)  # a process the lab started, found by its PID file

    def back() -> bool:
        new = lab.exabgp_pid(n2)
        if new is None or new == old:
            return False
        mine, theirs = lab.peers_of(n2).get(ip1), lab.peers_of(n1).get(ip2)
        return bool(
            mine
            and theirs
            and mine["state"] == theirs["state"] == "established"
            and mine["since"] > t0
            and theirs["since"] > t0
            and theirs["prefixesReceived"] == 1
            and mine["prefixesReceived"] == 1
        )

    _, took = wait_for(back, 60, "a new ExaBGP with both sessions re-established")
    status = lab.node_status(n2)
    assert status["exabgp"]["running"] and status["exabgp"]["restarts"] > restarts_before
    assert lab.bgp_routes(n1).get(block2) == ip2
    assert lab.bgp_routes(n2).get(lab.block_of(n1)) == ip1
    time.sleep(1.0)
    stats = parse_ping(background.stop(ping))
    outage = stats.lost * INTERVAL
    print(
        f"\nExaBGP SIGKILL: sessions back after {took:.1f}s; pings {stats.received}/"
        f"{stats.transmitted}, outage {outage * 1000:.0f} ms"
    )
    assert lab.check().exit_code == 0
    assert stats.transmitted > 50
    assert stats.lost == 0, f"outage of {outage:.2f}s ({stats.lost} pings lost)"
