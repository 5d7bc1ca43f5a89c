"""felix/metrics.py, bgp/metrics.py and datastore/metrics.py: series from synthetic inputs and
from a real calculation and dataplane (on the stateful kernel fakes), read back through the
Prometheus text exposition parsed with ``prometheus_client.parser``, and served over HTTP on
loopback by ``MetricsServer``."""

from __future__ import annotations

import asyncio
import time
from ipaddress import ip_network
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bgp.metrics import BgpMetrics, BgpSnapshot
from datastore.fake import FakeEtcd
from datastore.metrics import MetricsServer
from datastore.syncer import Syncer
from felix.calc import Calculator
from felix.dataplane import TABLES, ApplyStats, Dataplane
from felix.metrics import FelixMetrics, FelixState, felix_state
from felix.model import NAMESPACE_LABEL, Endpoint, FrozenLabels, Policy, Pool
from felix.render import RenderConfig
from kernel import conntrack
from kernel.conntrack import ConntrackResult
from kernel.ipsets import FakeIpsetBackend, IpsetDriver
from kernel.iptables import IptablesTable
from kernel.iptables_fake import FakeIptablesBackend
from kernel.routes import PROTO_FELIX, ApplyResult, FakeRouteBackend, RouteFailure, RouteTable
from policy.rules import parse_rule
from policy.selector import parse

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(registry: Any) -> Samples:
    """Every sample of the exposition: (name, sorted labels) -> value."""
    text = generate_latest(registry).decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def names(samples: Samples) -> set[str]:
    return {n for n, _ in samples}


# ------------------------------------------------------------------------------ felix
def test_felix_apply_series_from_apply_stats() -> None:
    m = FelixMetrics()
    m.observe_apply(ApplyStats(seconds=0.004, iptables_restores=3, rules_written=40))
    m.observe_apply(
        ApplyStats(
            seconds=0.2,
            iptables_restores=1,
            ipset_writes=2,
            routes_written=5,
            sysctls_written=7,
            failures=["iptables filter/v4: restore failed", "ipsets: boom", "route 10.65.0.1/32"],
        )
    )
    s = scrape(m.registry)
    h = "tabby_felix_int_dataplane_apply_time_seconds"
    assert value(s, f"{h}_count") == 2
    assert value(s, f"{h}_sum") == pytest.approx(0.204)
    assert value(s, f"{h}_bucket", le="0.005") == 1
    assert value(s, f"{h}_bucket", le="0.25") == 2
    assert value(s, "tabby_felix_int_dataplane_failures_total") == 1
    for driver in ("iptables", "ipsets", "route"):
        assert value(s, "tabby_felix_dataplane_errors_total", driver=driver) == 1
    assert value(s, "tabby_felix_iptables_restore_calls_total") == 4
    assert value(s, "tabby_felix_iptables_rules_written_total") == 40
    assert value(s, "tabby_felix_ipset_writes_total") == 2
    assert value(s, "tabby_felix_route_writes_total") == 5
    assert value(s, "tabby_felix_sysctl_writes_total") == 7


def test_felix_state_series_from_a_synthetic_snapshot() -> None:
    m = FelixMetrics()
    state = FelixState(
        in_sync=True,
        ready=False,
        local_endpoints=2,
        policies=3,
        profiles=1,
        cluster_hosts=4,
        iptables_chains={("filter", 4): 12, ("nat", 4): 2},
        iptables_rules={("filter", 4): 30, ("nat", 4): 3},
        ipsets=5,
        ipset_members=17,
        routes={4: 2, 6: 1},
        last_apply_at=1234.5,
    )
    m.add_state(lambda: state)
    s = scrape(m.registry)
    assert value(s, "tabby_felix_in_sync") == 1
    assert value(s, "tabby_felix_ready") == 0
    assert value(s, "tabby_felix_live") == 1
    assert value(s, "tabby_felix_active_local_endpoints") == 2
    assert value(s, "tabby_felix_active_local_policies") == 3
    assert value(s, "tabby_felix_active_local_profiles") == 1
    assert value(s, "tabby_felix_cluster_num_hosts") == 4
    assert value(s, "tabby_felix_iptables_chains", table="filter", ip_version="4") == 12
    assert value(s, "tabby_felix_iptables_rules", table="nat", ip_version="4") == 3
    assert value(s, "tabby_felix_ipsets") == 5
    assert value(s, "tabby_felix_ipset_members") == 17
    assert value(s, "tabby_felix_routes", ip_version="6") == 1
    assert value(s, "tabby_felix_int_dataplane_last_apply_timestamp_seconds") == 1234.5


def test_felix_state_before_the_first_apply_has_no_dataplane_series() -> None:
    m = FelixMetrics()
    m.add_state(lambda: felix_state(Calculator("node1"), None, in_sync=False, ready=False))
    s = scrape(m.registry)
    assert value(s, "tabby_felix_in_sync") == 0
    assert value(s, "tabby_felix_active_local_endpoints") == 0
    assert "tabby_felix_ipsets" not in names(s)
    assert not any(n == "tabby_felix_iptables_rules" for n, _ in s)


HOST = "node1"


def _wep(name: str, iface: str, ip: str, **labels: str) -> Endpoint:
    return Endpoint(
        key=f"wep/ns1/{name}",
        kind="workload",
        node=HOST,
        name=name,
        namespace="ns1",
        iface=iface,
        ipv4=(ip_network(ip),),  # type: ignore[arg-type]
        labels=FrozenLabels({**labels, NAMESPACE_LABEL: "ns1"}),
    )


class _Sysctls:
    def __init__(self) -> None:
        self.desired: dict[str, str] = {}

    def set(self, path: str, value: str) -> None:
        self.desired[path] = value

    def set_many(self, values: dict[str, str]) -> None:
        self.desired.update(values)

    def forget_interface(self, ifname: str) -> None:
        pass

    def apply(self) -> Any:
        return type("R", (), {"written": ()})()


def test_felix_state_counts_match_the_fake_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """A real calculation applied to the kernel fakes: the gauges equal what the fakes hold."""
    monkeypatch.setattr(conntrack, "delete_entries", lambda netns, ips: ConntrackResult(deleted=0))
    ipsets = FakeIpsetBackend()
    ipt = FakeIptablesBackend(set_exists=ipsets.exists)
    ipsets.references = ipt.set_references
    routes = FakeRouteBackend(["tbw1", "tbw2", "eth0"])
    dp = Dataplane(
        None,
        RenderConfig(),
        tables={(t, 4): IptablesTable(t, 4, backend=ipt) for t in TABLES},
        ipsets=IpsetDriver(backend=ipsets),
        routes={4: RouteTable(None, PROTO_FELIX, 4, backend=routes)},
        sysctls=_Sysctls(),  # type: ignore[arg-type]
    )
    dp.set_interfaces(["tbw1", "tbw2", "eth0", "lo"])
    calc = Calculator(HOST)
    calc.set_endpoint("wep/ns1/w1", _wep("w1", "tbw1", "10.65.0.1/32", app="web"))
    calc.set_endpoint("wep/ns1/w2", _wep("w2", "tbw2", "10.65.0.2/32", app="db"))
    calc.set_policy(
        "gnp/p",
        Policy(
            key="gnp/p",
            name="p",
            namespace=None,
            tier="default",
            order=None,
            selector=parse("app == 'db'"),
            types=frozenset({"Ingress"}),
            ingress=(parse_rule({"action": "Allow", "source": {"selector": "app == 'web'"}}),),
        ),
    )
    calc.set_pool("pool", Pool("pool", ip_network("10.65.0.0/16"), nat_outgoing=True))
    m = FelixMetrics()
    stats = dp.apply(calc)
    assert stats.failures == []
    m.observe_apply(stats)
    m.add_state(lambda: felix_state(calc, dp, in_sync=True, ready=True))
    s = scrape(m.registry)

    assert value(s, "tabby_felix_active_local_endpoints") == 2
    assert value(s, "tabby_felix_active_local_policies") == 1
    for table in TABLES:
        ours = [c for c in ipt.chain_names(table) if c.startswith("tby-")]
        rules = sum(len(ipt.rules(table, c)) for c in ours)
        assert value(s, "tabby_felix_iptables_chains", table=table, ip_version="4") == len(ours)
        assert value(s, "tabby_felix_iptables_rules", table=table, ip_version="4") == rules
    assert value(s, "tabby_felix_iptables_rules", table="filter", ip_version="4") > 0
    kernel_sets = {n: ks for n, ks in ipsets.sets.items() if n.startswith("tby")}
    assert value(s, "tabby_felix_ipsets") == len(kernel_sets) > 0
    assert value(s, "tabby_felix_ipset_members") == sum(
        len(ks.members) for ks in kernel_sets.values()
    )
    assert value(s, "tabby_felix_routes", ip_version="4") == len(routes.table(PROTO_FELIX)) == 2
    assert value(s, "tabby_felix_iptables_restore_calls_total") == stats.iptables_restores > 0


def test_syncer_series(monkeypatch: pytest.MonkeyPatch) -> None:
    etcd = FakeEtcd()
    for i in range(3):
        etcd.put(f"/t/a/{i}", b"x")
    syncer = Syncer(etcd.connect, ["/t/a/"], backoff_initial=0.01, backoff_max=0.05)
    m = FelixMetrics()
    last: list[float] = []
    m.add_syncer(syncer, lambda: last[-1] if last else None)
    s = scrape(m.registry)
    assert value(s, "tabby_felix_datastore_resync_state") == 0  # not started: waiting
    assert "tabby_felix_datastore_seconds_since_update" not in names(s)
    syncer.start()
    try:
        got = 0
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            batch = syncer.next_batch(timeout=0.5)
            got += len(batch.updates)
            if batch.in_sync:
                break
        last.append(time.time() - 5.0)
        s = scrape(m.registry)
    finally:
        syncer.stop()
    assert got == 3
    assert value(s, "tabby_felix_datastore_resync_state") == 2
    assert value(s, "tabby_felix_datastore_updates_delivered_total") == 3
    assert value(s, "tabby_felix_datastore_lists_total") >= 1
    assert value(s, "tabby_felix_datastore_revision") == etcd.revision
    assert value(s, "tabby_felix_datastore_seconds_since_update") == pytest.approx(5.0, abs=2)
    for counter in ("updates_coalesced", "compactions", "reconnects", "updates_emitted"):
        assert f"tabby_felix_datastore_{counter}_total" in names(s)


def test_two_agents_in_one_process_do_not_collide() -> None:
    a, b = FelixMetrics(), FelixMetrics()
    a.observe_apply(ApplyStats(seconds=0.1))
    assert value(scrape(b.registry), "tabby_felix_int_dataplane_apply_time_seconds_count") == 0
    BgpMetrics()
    BgpMetrics()  # would raise (duplicated timeseries) with a shared registry


# ------------------------------------------------------------------------------ bgp
def _peer(addr: str, kind: str, state: str, received: int, installed: int) -> dict[str, Any]:
    return {
        "peer": addr,
        "type": kind,
        "name": "",
        "state": state,
        "since": 0.0,
        "asn": 64512,
        "passive": False,
        "prefixesReceived": received,
        "prefixesInstalled": installed,
        "prefixesAnnounced": 1 if state == "established" else 0,
    }


def test_bgp_state_series_from_a_synthetic_status() -> None:
    status = {
        "node": "node1",
        "address": "198.51.100.1/24",
        "role": "mesh",
        "inSync": True,
        "exabgp": {"running": True, "restarts": 2},
        "peers": [
            _peer("198.51.100.2", "mesh", "established", 1, 1),
            _peer("198.51.100.3", "mesh", "established", 2, 1),
            _peer("203.0.113.9", "global", "connect", 0, 0),
        ],
    }
    m = BgpMetrics()
    snap = BgpSnapshot(status=status, ready=False, rib_prefixes=3, kernel_routes=4, announced=1)
    m.add_state(lambda: snap)
    s = scrape(m.registry)
    assert value(s, "tabby_bgp_sessions", state="established", type="mesh") == 2
    assert value(s, "tabby_bgp_sessions", state="down", type="mesh") == 0
    assert value(s, "tabby_bgp_sessions", state="established", type="global") == 0
    assert value(s, "tabby_bgp_sessions", state="connect", type="global") == 1
    assert value(s, "tabby_bgp_prefixes_received", peer="198.51.100.3", type="mesh") == 2
    assert value(s, "tabby_bgp_prefixes_installed", peer="198.51.100.3", type="mesh") == 1
    assert value(s, "tabby_bgp_prefixes_announced") == 1
    assert value(s, "tabby_bgp_rib_prefixes") == 3
    assert value(s, "tabby_bgp_kernel_routes") == 4
    assert value(s, "tabby_bgp_exabgp_restarts_total") == 2
    assert value(s, "tabby_bgp_exabgp_running") == 1
    assert value(s, "tabby_bgp_in_sync") == 1
    assert value(s, "tabby_bgp_ready") == 0
    assert value(s, "tabby_bgp_info", node="node1", role="mesh") == 1


def test_bgp_route_write_series() -> None:
    m = BgpMetrics()
    s = scrape(m.registry)
    assert value(s, "tabby_bgp_kernel_route_writes_total", op="add") == 0  # exists from start
    m.observe_routes(ApplyResult(added=3, replaced=1, deleted=2, writes=6, duration=0.02))
    failure = RouteFailure(ip_network("10.65.1.0/26"), "error", "boom")  # type: ignore[arg-type]
    m.observe_routes(ApplyResult(added=1, failed=(failure,), resynced=True, duration=0.3))
    s = scrape(m.registry)
    assert value(s, "tabby_bgp_kernel_route_writes_total", op="add") == 4
    assert value(s, "tabby_bgp_kernel_route_writes_total", op="replace") == 1
    assert value(s, "tabby_bgp_kernel_route_writes_total", op="delete") == 2
    assert value(s, "tabby_bgp_kernel_route_failures_total") == 1
    assert value(s, "tabby_bgp_kernel_route_resyncs_total") == 1
    assert value(s, "tabby_bgp_kernel_route_apply_seconds_count") == 2


# ------------------------------------------------------------------------------ server
async def _get(port: int, path: str, accept: str = "") -> tuple[str, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    extra = f"Accept: {accept}\r\n" if accept else ""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode())
    await writer.drain()
    data = (await reader.read()).decode()
    writer.close()
    head, _, body = data.partition("\r\n\r\n")
    return head, body


def test_metrics_server_serves_the_registry_on_loopback() -> None:
    m = FelixMetrics()
    m.observe_apply(ApplyStats(seconds=0.01, iptables_restores=2))

    async def main() -> tuple[tuple[str, str], tuple[str, str], tuple[str, str]]:
        server = MetricsServer(m.registry, "test")
        await server.start("127.0.0.1", 0)
        try:
            return (
                await _get(server.port, "/metrics"),
                await _get(server.port, "/other"),
                await _get(server.port, "/metrics", "application/openmetrics-text; version=1.0.0"),
            )
        finally:
            server.close()

    (head, body), (head404, _), (om_head, om_body) = asyncio.run(main())
    assert head.startswith("HTTP/1.0 200"), head
    assert "text/plain" in head
    fams = {f.name: f for f in text_string_to_metric_families(body)}
    assert fams["tabby_felix_iptables_restore_calls"].samples[0].value == 2
    assert head404.startswith("HTTP/1.0 404")
    assert "application/openmetrics-text" in om_head and om_body.rstrip().endswith("# EOF")
