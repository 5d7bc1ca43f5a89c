"""tabby-felix's Prometheus endpoint, scraped from inside the node namespace.

Felix runs in the FelixBed (real etcd, node namespace, two workloads, a NAT pool) with
``FELIX_PROMETHEUSMETRICSENABLED=true`` and JSON logs. Proves: ``/metrics`` answers on
127.0.0.1:9091 inside the node namespace; the key series hold what the kernel holds (rules and
chains of tabby's from ``iptables-save``, ipsets and members from ``ipset save``, routes of
protocol 80 from ``ip route``); the datastore series show the snapshot was loaded; every log
line is a JSON object with time, level, logger and msg.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.support.felix import ALLOW_ALL, FelixBed, wait_for
from tests.support.netns import ns_exec

PORT = 9091
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(bed: FelixBed, path: str = "/metrics") -> tuple[int, Samples]:
    res = subprocess.run(
        [
            *("ip", "netns", "exec", bed.node, "curl", "-s", "-w", "\n%{http_code}"),
            f"http://127.0.0.1:{PORT}{path}",
        ],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    body, _, code = res.stdout.rpartition("\n")
    samples: Samples = {}
    if code.strip() == "200":
        for fam in text_string_to_metric_families(body):
            for s in fam.samples:
                samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return int(code.strip() or 0), samples


def get(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def kernel_rules(bed: FelixBed, table: str) -> tuple[int, int]:
    """(chains, rules) of tabby's chains in ``table``, read back from the kernel."""
    text = ns_exec(bed.node, ["iptables-save", "-t", table])
    chains = sum(1 for ln in text.splitlines() if ln.startswith(":tby-"))
    rules = sum(1 for ln in text.splitlines() if ln.startswith("-A tby-"))
    return chains, rules


def test_felix_metrics_in_the_node_namespace(felix_bed: FelixBed, tmp_path: Path) -> None:
    bed = felix_bed
    bed.put(ALLOW_ALL)
    bed.put(
        {
            "apiVersion": "projectcalico.org/v3",
            "kind": "IPPool",
            "metadata": {"name": "pool1"},
            "spec": {"cidr": "10.65.0.0/16", "natOutgoing": True},
        }
    )
    bed.add_workload("w1", "10.65.0.1", {"app": "a"}, profiles=("allow-all",))
    bed.add_workload("w2", "10.65.0.2", {"app": "b"}, profiles=("allow-all",))
    bed.start_felix(
        tmp_path,
        env={
            "FELIX_PROMETHEUSMETRICSENABLED": "true",
            "FELIX_PROMETHEUSMETRICSPORT": str(PORT),
            "FELIX_LOGFORMAT": "json",
        },
    )
    bed.wait_ready()

    last: Samples = {}

    def settled() -> bool:
        nonlocal last
        code, last = scrape(bed)
        return (
            code == 200
            and last.get(("tabby_felix_ready", ()), 0) == 1
            and last.get(("tabby_felix_active_local_endpoints", ()), 0) == 2
        )

    assert wait_for(settled, 20, 0.2), f"metrics: {sorted(last)[:20]}\n{bed.felix_log()}"
    s = last
    assert get(s, "tabby_felix_in_sync") == 1
    assert get(s, "tabby_felix_live") == 1
    assert get(s, "tabby_felix_active_local_endpoints") == 2
    assert get(s, "tabby_felix_active_local_profiles") == 1
    assert get(s, "tabby_felix_int_dataplane_apply_time_seconds_count") >= 1
    assert get(s, "tabby_felix_int_dataplane_failures_total") == 0
    assert get(s, "tabby_felix_iptables_restore_calls_total") >= 1
    assert get(s, "tabby_felix_datastore_resync_state") == 2
    assert get(s, "tabby_felix_datastore_updates_delivered_total") >= 3
    assert get(s, "tabby_felix_datastore_seconds_since_update") >= 0
    saved = ns_exec(bed.node, ["ipset", "save"]).splitlines()
    assert get(s, "tabby_felix_ipset_members") >= 1  # the pool's NAT sets
    assert get(s, "tabby_felix_ipsets") == sum(ln.startswith("create tby") for ln in saved)
    assert get(s, "tabby_felix_ipset_members") == sum(ln.startswith("add tby") for ln in saved)
    assert ("process_resident_memory_bytes", ()) in s

    # The gauges agree with the kernel: rules and chains per table, routes of protocol 80.
    for table in ("filter", "raw", "mangle", "nat"):
        chains, rules = kernel_rules(bed, table)
        assert get(s, "tabby_felix_iptables_chains", table=table, ip_version="4") == chains
        assert get(s, "tabby_felix_iptables_rules", table=table, ip_version="4") == rules
    assert get(s, "tabby_felix_iptables_rules", table="filter", ip_version="4") > 0
    felix_routes = [r for r in bed.routes() if str(r.get("protocol")) == "80"]
    assert get(s, "tabby_felix_routes", ip_version="4") == len(felix_routes) == 2

    code, _ = scrape(bed, "/nothing")
    assert code == 404

    # JSON logs: one object per line with the structured fields.
    bed.stop_felix()
    assert bed.log_path is not None
    lines = [ln for ln in bed.log_path.read_text().splitlines() if ln.strip()]
    assert lines
    for line in lines:
        doc = json.loads(line)
        assert {"time", "level", "logger", "msg"} <= set(doc), line
    assert any(json.loads(ln)["msg"].startswith("metrics.listen") for ln in lines)
