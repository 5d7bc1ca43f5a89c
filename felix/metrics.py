"""Felix's Prometheus metrics (``tabby_felix_*``), named after what Calico's felix exports.

Role: ``FelixMetrics`` owns one ``CollectorRegistry`` (never the global one) holding
- event series, updated by the agent after every dataplane apply (``observe_apply``): the apply
  duration histogram, failure and write counters;
- state series, computed at scrape time from a ``FelixState`` snapshot (``FelixStateCollector``):
  sync state, active endpoints/policies/profiles, iptables chains and rules per table and IP
  version, ipsets and their members, routes;
- the datastore syncer's series (``datastore.metrics.SyncerCollector``).
Inputs: ``ApplyStats`` and snapshots (``felix_state``). Outputs: the registry (served by
``datastore.metrics.MetricsServer`` when ``PrometheusMetricsEnabled`` is true).
Invariants: pure bookkeeping, no I/O; a snapshot only reads the calculation and the drivers'
desired state (no kernel reads).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector

from datastore.metrics import SyncerCollector
from datastore.syncer import Syncer
from felix.calc import Calculator
from felix.dataplane import ApplyStats, Dataplane

PREFIX = "tabby_felix"
APPLY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(frozen=True, slots=True)
class FelixState:
    """What the state series show; see ``felix_state``."""

    in_sync: bool = False
    ready: bool = False
    live: bool = True
    local_endpoints: int = 0
    policies: int = 0
    profiles: int = 0
    cluster_hosts: int = 0
    # (table, ip version) -> count; empty until the dataplane exists (first apply)
    iptables_chains: Mapping[tuple[str, int], int] = field(default_factory=dict)
    iptables_rules: Mapping[tuple[str, int], int] = field(default_factory=dict)
    ipsets: int | None = None
    ipset_members: int | None = None
    routes: Mapping[int, int] = field(default_factory=dict)  # ip version -> felix routes
    last_apply_at: float | None = None


def felix_state(
    calc: Calculator,
    dataplane: Dataplane | None,
    *,
    in_sync: bool,
    ready: bool,
    live: bool = True,
    last_apply_at: float | None = None,
) -> FelixState:
    """Count what felix holds now: the calculation and the drivers' desired state."""
    st = calc.state()
    chains: dict[tuple[str, int], int] = {}
    rules: dict[tuple[str, int], int] = {}
    ipsets = members = None
    routes: dict[int, int] = {}
    if dataplane is not None:
        for key, table in dataplane.tables.items():
            ours = table.chains
            chains[key] = len(ours)
            rules[key] = sum(len(c.rules) for c in ours.values())
        sets = dataplane.ipsets.sets
        ipsets = len(sets)
        members = sum(len(s.members) for s in sets.values())
        routes = {v: len(rt.desired_routes()) for v, rt in dataplane.routes.items()}
    return FelixState(
        in_sync=in_sync,
        ready=ready,
        live=live,
        local_endpoints=len(st.endpoints),
        policies=len(st.policies),
        profiles=len(st.profiles),
        cluster_hosts=len(st.host_addresses),
        iptables_chains=chains,
        iptables_rules=rules,
        ipsets=ipsets,
        ipset_members=members,
        routes=routes,
        last_apply_at=last_apply_at,
    )


class FelixStateCollector:
    """State series from a fresh ``FelixState`` at every scrape."""

    def __init__(self, snapshot: Callable[[], FelixState]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterable[Metric]:
        s = self.snapshot()
        p = PREFIX
        yield GaugeMetricFamily(
            f"{p}_in_sync", "1 when felix holds the complete datastore snapshot.", int(s.in_sync)
        )
        yield GaugeMetricFamily(f"{p}_ready", "1 when /readiness answers 200.", int(s.ready))
        yield GaugeMetricFamily(f"{p}_live", "1 when /liveness answers 200.", int(s.live))
        for name, value, doc in (
            ("active_local_endpoints", s.local_endpoints, "Local workload and host endpoints."),
            ("active_local_policies", s.policies, "Policies that apply to a local endpoint."),
            ("active_local_profiles", s.profiles, "Profiles used by a local endpoint."),
            ("cluster_num_hosts", s.cluster_hosts, "Nodes with a known address."),
        ):
            yield GaugeMetricFamily(f"{p}_{name}", doc, value=value)
        chains = GaugeMetricFamily(
            f"{p}_iptables_chains",
            "tabby's iptables chains (tby-*), per table and IP version.",
            labels=["table", "ip_version"],
        )
        for (table, v), n in sorted(s.iptables_chains.items()):
            chains.add_metric([table, str(v)], n)
        yield chains
        rules = GaugeMetricFamily(
            f"{p}_iptables_rules",
            "Rules in tabby's iptables chains, per table and IP version.",
            labels=["table", "ip_version"],
        )
        for (table, v), n in sorted(s.iptables_rules.items()):
            rules.add_metric([table, str(v)], n)
        yield rules
        if s.ipsets is not None:
            yield GaugeMetricFamily(f"{p}_ipsets", "tabby's ipsets (tby*).", value=s.ipsets)
        if s.ipset_members is not None:
            yield GaugeMetricFamily(
                f"{p}_ipset_members", "Members of tabby's ipsets, summed.", value=s.ipset_members
            )
        routes = GaugeMetricFamily(
            f"{p}_routes", "Workload routes felix programs (proto 80).", labels=["ip_version"]
        )
        for v, n in sorted(s.routes.items()):
            routes.add_metric([str(v)], n)
        yield routes
        if s.last_apply_at is not None:
            yield GaugeMetricFamily(
                f"{p}_int_dataplane_last_apply_timestamp_seconds",
                "Unix time of the last dataplane apply.",
                value=s.last_apply_at,
            )


class FelixMetrics:
    """Felix's registry and its event series."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r, p = self.registry, PREFIX
        self.apply_time = Histogram(
            f"{p}_int_dataplane_apply_time_seconds",
            "Time one dataplane apply took.",
            buckets=APPLY_BUCKETS,
            registry=r,
        )
        self.apply_failures = Counter(
            f"{p}_int_dataplane_failures",
            "Dataplane applies that had a failure (retried later).",
            registry=r,
        )
        self.driver_errors = Counter(
            f"{p}_dataplane_errors",
            "Failures reported by the kernel drivers, by driver.",
            ["driver"],
            registry=r,
        )
        self.iptables_restores = Counter(
            f"{p}_iptables_restore_calls", "iptables-restore runs.", registry=r
        )
        self.rules_written = Counter(
            f"{p}_iptables_rules_written", "iptables rules written.", registry=r
        )
        self.ipset_writes = Counter(f"{p}_ipset_writes", "ipset restore runs.", registry=r)
        self.route_writes = Counter(f"{p}_route_writes", "Route writes.", registry=r)
        self.sysctl_writes = Counter(f"{p}_sysctl_writes", "sysctl writes.", registry=r)

    def observe_apply(self, stats: ApplyStats) -> None:
        self.apply_time.observe(stats.seconds)
        if stats.failures:
            self.apply_failures.inc()
        for failure in stats.failures:
            driver = failure.split(maxsplit=1)[0].rstrip(":") if failure.strip() else "unknown"
            self.driver_errors.labels(driver).inc()
        self.iptables_restores.inc(stats.iptables_restores)
        self.rules_written.inc(stats.rules_written)
        self.ipset_writes.inc(stats.ipset_writes)
        self.route_writes.inc(stats.routes_written)
        self.sysctl_writes.inc(stats.sysctls_written)

    def add_state(self, snapshot: Callable[[], FelixState]) -> None:
        self.registry.register(FelixStateCollector(snapshot))

    def add_syncer(self, syncer: Syncer, last_update: Callable[[], float | None]) -> None:
        self.registry.register(SyncerCollector(PREFIX, syncer, last_update))

    def add_process(self) -> None:
        """Standard ``process_*`` series (CPU, memory, file descriptors) of this process."""
        ProcessCollector(registry=self.registry)
