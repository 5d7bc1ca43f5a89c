"""Prometheus metrics and health of both agents in a three-node lab.

The lab supervisor starts every agent with metrics on (felix 127.0.0.1:9091, bgp
127.0.0.1:9092 inside each node namespace); the test scrapes them with ``curl`` through
``tabby-lab exec``, as an operator would. Proves: with the mesh up, every node's bgp series show
2 established mesh sessions and nothing in any other state, one prefix received and installed
per peer, its own block announced, and /readiness answers 200; felix shows its one local
endpoint and the synced datastore. Stopping node3's tabby-bgp takes node1's established count
to 1 and its /readiness to 503 (a configured session is down) while /liveness stays 200;
starting it again brings both back. A single node (no session configured) is ready.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.lab.labdriver import Lab, wait_for

pytestmark = [pytest.mark.lab, pytest.mark.slow]

FELIX_METRICS, BGP_METRICS, BGP_HEALTH = 9091, 9092, 9098
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def http(lab: Lab, node: str, port: int, path: str) -> tuple[int, str]:
    res = lab.exec(
        node, "curl", "-s", "-w", "\n%{http_code}", f"http://127.0.0.1:{port}{path}", check=False
    )
    body, _, code = res.stdout.rpartition("\n")
    return int(code.strip() or 0), body


def scrape(lab: Lab, node: str, port: int, *, must: bool = True) -> Samples:
    """The samples of ``node``'s /metrics on ``port``; when ``must`` is false, an agent that
    does not answer (yet) gives none."""
    code, body = http(lab, node, port, "/metrics")
    assert code == 200 or not must, f"{node}:{port}/metrics answered {code}"
    out: Samples = {}
    if code != 200:
        return out
    for fam in text_string_to_metric_families(body):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def get(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), float("nan"))


def series(samples: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


def established(lab: Lab, node: str) -> float:
    return sum(
        v
        for labels, v in series(
            scrape(lab, node, BGP_METRICS, must=False), "tabby_bgp_sessions"
        ).items()
        if dict(labels)["state"] == "established"
    )


def test_bgp_and_felix_metrics_in_a_lab(make_lab: Callable[[str], Lab]) -> None:
    lab = make_lab("metr")
    lab.up(3, 1)
    n1, _, n3 = lab.nodes
    lab.wait_mesh(lab.nodes, expected_peers=2)

    # The mesh being up (tabbyctl node status), the kernel routes being written and felix's
    # first apply are separate steps: wait for all of them on every node.
    def settled(node: str) -> bool:
        b = scrape(lab, node, BGP_METRICS, must=False)
        f = scrape(lab, node, FELIX_METRICS, must=False)
        return (
            get(b, "tabby_bgp_ready") == 1
            and sum(series(b, "tabby_bgp_prefixes_installed").values()) == 2
            and get(f, "tabby_felix_ready") == 1
        )

    wait_for(lambda: all(settled(n) for n in lab.nodes), 30, "both agents settled everywhere")

    for node in lab.nodes:
        s = scrape(lab, node, BGP_METRICS)
        sessions = series(s, "tabby_bgp_sessions")
        assert get(s, "tabby_bgp_sessions", state="established", type="mesh") == 2, sessions
        assert sum(sessions.values()) == 2, sessions  # nothing in any other state
        others = {lab.node_ip(o) for o in lab.nodes if o != node}
        received = series(s, "tabby_bgp_prefixes_received")
        assert {dict(k)["peer"] for k in received} == others
        assert all(v == 1 for v in received.values()), received
        assert all(v == 1 for v in series(s, "tabby_bgp_prefixes_installed").values())
        assert get(s, "tabby_bgp_prefixes_announced") == 1
        assert get(s, "tabby_bgp_rib_prefixes") == 2
        assert get(s, "tabby_bgp_in_sync") == 1 and get(s, "tabby_bgp_ready") == 1
        assert get(s, "tabby_bgp_exabgp_running") == 1
        assert get(s, "tabby_bgp_exabgp_restarts_total") == 0
        assert get(s, "tabby_bgp_kernel_route_writes_total", op="add") >= 2
        assert get(s, "tabby_bgp_datastore_resync_state") == 2
        assert http(lab, node, BGP_HEALTH, "/readiness")[0] == 200
        assert http(lab, node, BGP_HEALTH, "/liveness")[0] == 200

        f = scrape(lab, node, FELIX_METRICS)
        assert get(f, "tabby_felix_active_local_endpoints") == 1
        assert get(f, "tabby_felix_in_sync") == 1
        assert get(f, "tabby_felix_iptables_rules", table="filter", ip_version="4") > 0

    # ---- a configured session goes down: node1 is no longer ready, but still live
    lab.agent("stop", n3, "tabby-bgp")
    wait_for(lambda: established(lab, n1) == 1, 60, f"{n1} to count 1 established session")
    s = scrape(lab, n1, BGP_METRICS)
    assert get(s, "tabby_bgp_ready") == 0
    assert sum(series(s, "tabby_bgp_sessions").values()) == 2  # still configured
    assert http(lab, n1, BGP_HEALTH, "/readiness")[0] == 503
    assert http(lab, n1, BGP_HEALTH, "/liveness")[0] == 200

    lab.agent("start", n3, "tabby-bgp")
    wait_for(lambda: established(lab, n1) == 2, 60, f"{n1} to count 2 established sessions")
    wait_for(lambda: http(lab, n1, BGP_HEALTH, "/readiness")[0] == 200, 30, f"{n1} ready again")
    wait_for(lambda: established(lab, n3) == 2, 60, f"{n3} to count 2 established sessions")


def test_a_node_without_sessions_is_ready(make_lab: Callable[[str], Lab]) -> None:
    """One node: no session is configured, so tabby-bgp is ready once in sync."""
    lab = make_lab("solo")
    lab.up(1, 1)
    (node,) = lab.nodes
    wait_for(lambda: http(lab, node, BGP_HEALTH, "/readiness")[0] == 200, 30, f"{node} to be ready")
    s = scrape(lab, node, BGP_METRICS)
    assert series(s, "tabby_bgp_sessions") == {}
    assert get(s, "tabby_bgp_ready") == 1 and get(s, "tabby_bgp_in_sync") == 1
    assert get(s, "tabby_bgp_prefixes_announced") == 1
