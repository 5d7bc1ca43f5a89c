"""tabby-bgp's Prometheus metrics (``tabby_bgp_*``).

Role: ``BgpMetrics`` owns one ``CollectorRegistry`` (never the global one) holding
- event series, updated by the agent after each kernel route apply (``observe_routes``);
- state series computed at scrape time from a ``BgpSnapshot`` (``BgpStateCollector``): sessions
  by state and type, prefixes received/installed per peer, prefixes announced, RIB and kernel
  route counts, ExaBGP restarts, sync/readiness;
- the datastore syncer's series (``datastore.metrics.SyncerCollector``).
Inputs: the agent's ``status()`` document and counts (``bgp_snapshot``), route ``ApplyResult``s.
Outputs: the registry (served by ``datastore.metrics.MetricsServer`` with ``--metrics-port``).
Invariants: pure bookkeeping, no I/O; a snapshot reads only in-memory agent state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Network
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector

from bgp.rib import Rib
from datastore.metrics import SyncerCollector
from datastore.syncer import Syncer
from kernel.routes import ApplyResult, RouteTable

PREFIX = "tabby_bgp"
# States always exported (as 0 when no session is in them) for every peer type present, so
# that "established == N" alerts have a series to look at.
SESSION_STATES = ("established", "idle", "down")
ROUTE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True, slots=True)
class BgpSnapshot:
    """``status`` is the agent's ``/status`` document; the rest are counts it does not carry."""

    status: Mapping[str, Any] = field(default_factory=dict)
    ready: bool = False
    live: bool = True
    rib_prefixes: int = 0
    kernel_routes: int = 0
    announced: int = 0


class BgpView(Protocol):
    """What ``bgp_snapshot`` reads from the agent."""

    rib: Rib
    routes: RouteTable
    announced: set[IPv4Network]

    def status(self) -> dict[str, Any]: ...

    @property
    def ready(self) -> bool: ...

    @property
    def live(self) -> bool: ...


def bgp_snapshot(agent: BgpView) -> BgpSnapshot:
    return BgpSnapshot(
        status=agent.status(),
        ready=agent.ready,
        live=agent.live,
        rib_prefixes=sum(1 for _ in agent.rib.prefixes()),
        kernel_routes=len(agent.routes.desired_routes()),
        announced=len(agent.announced),
    )


class BgpStateCollector:
    def __init__(self, snapshot: Callable[[], BgpSnapshot]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterable[Metric]:
        s = self.snapshot()
        p = PREFIX
        status = s.status
        peers: list[Mapping[str, Any]] = list(status.get("peers", []))
        info = GaugeMetricFamily(
            f"{p}_info", "This agent's node and role (value 1).", labels=["node", "role"]
        )
        info.add_metric([str(status.get("node", "")), str(status.get("role", ""))], 1)
        yield info
        yield GaugeMetricFamily(
            f"{p}_in_sync",
            "1 when the datastore snapshot is loaded.",
            int(bool(status.get("inSync"))),
        )
        yield GaugeMetricFamily(f"{p}_ready", "1 when /readiness answers 200.", int(s.ready))
        yield GaugeMetricFamily(f"{p}_live", "1 when /liveness answers 200.", int(s.live))
        counts: dict[tuple[str, str], int] = {}
        for peer in peers:
            kind = str(peer.get("type", ""))
            for state in SESSION_STATES:
                counts.setdefault((state, kind), 0)
            key = (str(peer.get("state", "")), kind)
            counts[key] = counts.get(key, 0) + 1
        sessions = GaugeMetricFamily(
            f"{p}_sessions",
            "Configured BGP sessions by state and peer type (mesh, global, node).",
            labels=["state", "type"],
        )
        for (state, kind), n in sorted(counts.items()):
            sessions.add_metric([state, kind], n)
        yield sessions
        received = GaugeMetricFamily(
            f"{p}_prefixes_received",
            "Prefixes in a peer's Adj-RIB-In.",
            labels=["peer", "type"],
        )
        installed = GaugeMetricFamily(
            f"{p}_prefixes_installed",
            "Prefixes from a peer that are in the kernel routes.",
            labels=["peer", "type"],
        )
        for peer in peers:
            labels = [str(peer.get("peer", "")), str(peer.get("type", ""))]
            received.add_metric(labels, int(peer.get("prefixesReceived", 0)))
            installed.add_metric(labels, int(peer.get("prefixesInstalled", 0)))
        yield received
        yield installed
        yield GaugeMetricFamily(
            f"{p}_prefixes_announced",
            "Prefixes this node announces (its blocks and borrowed /32s).",
            value=s.announced,
        )
        yield GaugeMetricFamily(
            f"{p}_rib_prefixes", "Prefixes with at least one path in the RIB.", s.rib_prefixes
        )
        yield GaugeMetricFamily(
            f"{p}_kernel_routes",
            "Routes tabby-bgp wants in the kernel (proto 81, blackholes included).",
            value=s.kernel_routes,
        )
        exabgp: Mapping[str, Any] = status.get("exabgp", {})
        yield GaugeMetricFamily(
            f"{p}_exabgp_running",
            "1 while the ExaBGP child runs.",
            int(bool(exabgp.get("running"))),
        )
        yield CounterMetricFamily(
            f"{p}_exabgp_restarts",
            "ExaBGP restarts after its first start.",
            value=int(exabgp.get("restarts", 0)),
        )
        yield CounterMetricFamily(
            f"{p}_exabgp_stuck_reloads",
            "Configuration reloads ExaBGP did not perform within the deadline (ExaBGP was "
            "restarted for each).",
            value=int(exabgp.get("stuckReloads", 0)),
        )
        yield CounterMetricFamily(
            f"{p}_exabgp_unreadable_lines",
            "Lines from ExaBGP's API that could not be parsed or processed (logged as "
            "bgp.api_bad_line or bgp.api_event_failed, and skipped).",
            value=int(exabgp.get("unreadableLines", 0)),
        )


class BgpMetrics:
    """tabby-bgp's registry and its event series."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r, p = self.registry, PREFIX
        self.route_writes = Counter(
            f"{p}_kernel_route_writes",
            "Kernel route writes by operation (add, replace, delete).",
            ["op"],
            registry=r,
        )
        self.route_failures = Counter(
            f"{p}_kernel_route_failures", "Kernel route writes that failed.", registry=r
        )
        self.route_resyncs = Counter(
            f"{p}_kernel_route_resyncs", "Full read-backs of the kernel routes.", registry=r
        )
        self.route_apply_time = Histogram(
            f"{p}_kernel_route_apply_seconds",
            "Time one kernel route apply took.",
            buckets=ROUTE_BUCKETS,
            registry=r,
        )
        for op in ("add", "replace", "delete"):
            self.route_writes.labels(op)  # the series exist from the start

    def observe_routes(self, res: ApplyResult) -> None:
        self.route_apply_time.observe(res.duration)
        self.route_writes.labels("add").inc(res.added)
        self.route_writes.labels("replace").inc(res.replaced)
        self.route_writes.labels("delete").inc(res.deleted)
        self.route_failures.inc(len(res.failed))
        if res.resynced:
            self.route_resyncs.inc()

    def add_state(self, snapshot: Callable[[], BgpSnapshot]) -> None:
        self.registry.register(BgpStateCollector(snapshot))

    def add_syncer(self, syncer: Syncer, last_update: Callable[[], float | None]) -> None:
        self.registry.register(SyncerCollector(PREFIX, syncer, last_update))

    def add_process(self) -> None:
        """Standard ``process_*`` series (CPU, memory, file descriptors) of this process."""
        ProcessCollector(registry=self.registry)
