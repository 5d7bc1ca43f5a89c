"""``tabby-bgp`` restarted on one node under continuous traffic: no loss, no route change.

Proves graceful restart end to end (ExaBGP's capability, ``manual-eor``, the agent keeping its
kernel routes until convergence and re-announcing before End-of-RIB, the peers keeping stale
routes): while workloads on the other nodes ping the restarted node's workload every 20 ms,
``tabby-lab agent stop`` + ``start`` and then ``agent kill`` (the supervisor restarts it) lose
no packet, and ``ip -4 monitor route`` in every node namespace records no IPv4 route change at all.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial

import pytest

from tests.lab.labdriver import Background, Lab, parse_ping, wait_for

pytestmark = [pytest.mark.lab, pytest.mark.slow]

SETTLE = 3.0  # seconds after re-convergence in which a late route change would still show


def _restarted(lab: Lab, node: str, after: float) -> bool:
    """``node``'s agent is back and every session, on both sides, was re-established."""
    mine = lab.peers_of(node)
    if not mine or any(p["state"] != "established" for p in mine.values()):
        return False
    me = lab.node_ip(node)
    for other in lab.nodes:
        if other == node:
            continue
        theirs = lab.peers_of(other).get(me)
        if theirs is None or theirs["state"] != "established" or theirs["since"] < after:
            return False
    return True


def test_bgp_agent_restart_is_hitless(
    make_lab: Callable[[str], Lab], background: Background
) -> None:
    lab = make_lab("gr")
    lab.up(3, 1)
    lab.wait_mesh(lab.nodes, expected_peers=2)
    assert lab.check().exit_code == 0
    n1, n2, n3 = lab.nodes
    target = lab.workload_ips()[lab.workload_of(n2)]
    routes_before = {n: lab.bgp_routes(n) for n in lab.nodes}

    for phase in ("stop-start", "kill"):
        monitors = {
            n: background.start(
                lab.node_netns(n), ["ip", "-4", "monitor", "route"], f"{phase}-mon-{n}"
            )
            for n in lab.nodes
        }
        pings = {
            src: background.start(
                lab.topology.node(src).netns + "-w1",
                ["ping", "-i", "0.02", "-W", "1", target],
                f"{phase}-ping-{src}",
            )
            for src in (n1, n3)
        }
        time.sleep(1.0)
        old_pid = lab.agent_pid(n2, "tabby-bgp")
        t0 = time.time()
        if phase == "stop-start":
            lab.agent("stop", n2, "tabby-bgp")
            wait_for(lambda: lab.node_status(n2) == {}, 20, "tabby-bgp on node2 to stop")
            time.sleep(2.0)
            lab.agent("start", n2, "tabby-bgp")
        else:
            lab.agent("kill", n2, "tabby-bgp")
        _, took = wait_for(partial(_restarted, lab, n2, t0), 60, f"{phase}: sessions back")
        new_pid = lab.agent_pid(n2, "tabby-bgp")
        assert new_pid and new_pid != old_pid, f"{phase}: agent not restarted ({old_pid})"
        time.sleep(SETTLE)
        stats = {src: parse_ping(background.stop(p)) for src, p in pings.items()}
        changes = {n: background.stop(m).strip() for n, m in monitors.items()}
        print(
            f"\n{phase}: sessions re-established {took:.1f}s after the {phase}; "
            + ", ".join(f"{s}: {st.received}/{st.transmitted}" for s, st in stats.items())
        )
        for src, st in stats.items():
            assert st.transmitted > 100, (phase, src, st)
            assert st.lost == 0, f"{phase}: {src} lost {st.lost}/{st.transmitted} pings"
        assert changes == {n: "" for n in lab.nodes}, f"{phase}: route changes seen: {changes}"
        assert {n: lab.bgp_routes(n) for n in lab.nodes} == routes_before


def test_route_left_from_before_a_restart_goes_once_converged(
    make_lab: Callable[[str], Lab], background: Background
) -> None:
    """A route of ours in the kernel at start that no peer announces any more (it went away
    while the agent was down) is kept until convergence, then removed; nothing else changes."""
    lab = make_lab("keep")
    lab.up(2, 1)
    lab.wait_mesh(lab.nodes, expected_peers=1)
    n1, n2 = lab.nodes
    learned = lab.bgp_routes(n2)
    assert learned, "node2 learned no route from node1"
    lab.agent("stop", n2, "tabby-bgp")
    wait_for(lambda: lab.node_status(n2) == {}, 20, "tabby-bgp on node2 to stop")
    stale = "10.250.0.0/26"
    lab.exec(n2, "ip", "route", "add", stale, "via", lab.node_ip(n1), "proto", "81")
    monitor = background.start(lab.node_netns(n2), ["ip", "-4", "monitor", "route"], "keep-mon")
    time.sleep(0.5)
    t0 = time.time()
    lab.agent("start", n2, "tabby-bgp")
    wait_for(partial(_restarted, lab, n2, t0), 60, "node2's sessions back")
    _, took = wait_for(lambda: stale not in lab.bgp_routes(n2), 30, "the stale route to go")
    time.sleep(1.0)
    changes = [line for line in background.stop(monitor).splitlines() if line.strip()]
    print(f"\nstale route removed {took:.1f}s after the sessions were back: {changes}")
    assert lab.bgp_routes(n2) == learned  # the learned routes stayed, the stale one went
    assert len(changes) == 1 and changes[0].startswith(f"Deleted {stale} "), changes
