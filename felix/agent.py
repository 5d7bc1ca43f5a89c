"""The felix agent: the composition root that wires syncer -> inputs -> calc -> dataplane.

Role: one asyncio loop running three named tasks: the syncer consumer (decodes datastore updates
into the calculation), the link watcher (interface events), and the apply loop (converges the
kernel whenever something changed or a driver asks for a check). Plus the health endpoint.
Inputs: ``FelixConfig`` (bootstrap), the datastore, netlink. Outputs: kernel state, health.
Invariants:
- no kernel write before the datastore snapshot is loaded (in sync) and the interfaces are known;
- the dataplane is never flushed on exit or restart: a restarted felix finds its own objects by
  their markers and, with unchanged data, writes nothing;
- etcd unreachable: the dataplane stays as it is (the syncer keeps the last state and retries);
- persistent dataplane failure: exit non-zero (fail closed; the supervisor restarts us);
- a change of effective configuration after start: exit 0 so the supervisor restarts us with it
  (as Calico's felix does); the dataplane is left in place.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from datastore.etcd import EtcdConfig, EtcdKVStore
from datastore.kv import KVStore
from datastore.metrics import MetricsServer
from datastore.syncer import Syncer, SyncStatus
from felix.calc import Calculator
from felix.config import ConfigLoader, FelixConfig, describe
from felix.dataplane import Dataplane
from felix.inputs import InputState, felix_prefixes
from felix.metrics import FelixMetrics, FelixState, felix_state
from felix.render import RenderConfig
from kernel.links import LinkEvent, LinkWatcher
from kernel.netns import ns_argv
from kernel.proc import run as run_proc

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_DATAPLANE_FAILED = 1
EXIT_CONFIG_CHANGED = 0


def render_config(cfg: FelixConfig) -> RenderConfig:
    accept, pass_ = cfg.mark_bits
    return RenderConfig(
        iface_prefix=cfg.interface_prefix,
        mark_accept=accept,
        mark_pass=pass_,
        failsafe_in=cfg.failsafe_inbound_host_ports,
        failsafe_out=cfg.failsafe_outbound_host_ports,
        endpoint_to_host_action=cfg.default_endpoint_to_host_action,  # type: ignore[arg-type]
        ipv6=cfg.ipv6_support,
    )


def etcd_config(cfg: FelixConfig) -> EtcdConfig:
    endpoints = tuple(e.strip() for e in cfg.etcd_endpoints.split(",") if e.strip())
    return EtcdConfig(
        endpoints=endpoints,
        ca_cert_file=cfg.etcd_ca_file or None,
        cert_file=cfg.etcd_cert_file or None,
        key_file=cfg.etcd_key_file or None,
    )


@dataclass
class Health:
    live: bool = True
    in_sync: bool = False
    applied: bool = False
    last_apply_ok: bool = False
    last_apply_at: float = 0.0

    @property
    def ready(self) -> bool:
        return self.live and self.in_sync and self.applied and self.last_apply_ok


class FelixAgent:
    def __init__(
        self,
        loader: ConfigLoader,
        *,
        netns: str | None = None,
        store_factory: Callable[[], KVStore] | None = None,
    ) -> None:
        self.loader = loader
        self.cfg, sources = loader.load()
        self.netns = netns
        for line in describe(self.cfg, sources):
            log.info("config.loaded %s", line)
        self._store_factory = store_factory or (lambda: EtcdKVStore(etcd_config(self.cfg)))
        self.calc = Calculator(self.cfg.node_name)
        self.inputs = InputState(self.calc)
        self.syncer = Syncer(self._store_factory, felix_prefixes(), name="felix-syncer")
        self.health = Health()
        self.dataplane: Dataplane | None = None
        self.exit_code: int | None = None
        self._work = asyncio.Event()
        self._links_ready = False
        self._link_events: list[LinkEvent] = []
        self._watcher: LinkWatcher | None = None
        self._stop = asyncio.Event()
        self._apply_count = 0
        # -- metrics (felix/metrics.py): a registry of our own, served when enabled
        self.metrics = FelixMetrics()
        self._last_update_at: float | None = None
        self.metrics.add_state(self._metrics_state)
        self.metrics.add_syncer(self.syncer, lambda: self._last_update_at)

    # ------------------------------------------------------------------ tasks
    async def _consume(self) -> None:
        while not self._stop.is_set():
            batch = await self.syncer.next_batch_async(timeout=1.0)
            for upd in batch.updates:
                self.inputs.apply_update(upd)
            if batch.updates:
                self._last_update_at = time.time()  # metrics: datastore lag
            if batch.in_sync and not self.health.in_sync:
                log.info("felix.in_sync keys=%d", self.syncer.stats().delivered)
                self.health.in_sync = True
            if batch.updates or batch.in_sync:
                self._work.set()

    def _on_link(self, ev: LinkEvent) -> None:
        self._link_events.append(ev)
        self._work.set()

    async def _links(self) -> None:
        self._watcher = LinkWatcher(self.netns, self._on_link)
        await self._watcher.run()

    def _effective_config(self) -> FelixConfig:
        cfg, sources = self.loader.load(self.inputs.felix_configs)
        if cfg != self.cfg:
            for line in describe(cfg, sources):
                log.info("config.loaded %s", line)
        return cfg

    def _hep_ifaces(self) -> dict[str, list[str]]:
        """Interfaces of local host endpoints: by name, or found by their expected IPs."""
        out: dict[str, list[str]] = {}
        by_ip: list[tuple[str, tuple[str, ...]]] = []
        for key in self.calc.local_endpoint_keys():
            plan = self.calc.plan(key)
            if plan is None or plan.endpoint.kind != "host":
                continue
            ep = plan.endpoint
            if ep.iface:
                out[key] = [ep.iface]
            elif ep.nets:
                by_ip.append((key, tuple(str(n.network_address) for n in ep.nets)))
        if by_ip:
            addr_map = self._addresses()
            for key, ips in by_ip:
                out[key] = sorted({addr_map[ip] for ip in ips if ip in addr_map})
        return out

    def _addresses(self) -> dict[str, str]:
        res = run_proc(ns_argv(self.netns, ["ip", "-j", "addr", "show"]), timeout=10)
        out: dict[str, str] = {}
        if res.returncode != 0:
            return out
        for link in json.loads(res.stdout or "[]"):
            for a in link.get("addr_info", []):
                out[str(a.get("local"))] = str(link.get("ifname"))
        return out

    def _apply(
        self,
        checks: bool = True,
        readbacks: dict[tuple[str, int], tuple[int, str]] | None = None,
    ) -> None:
        if self.dataplane is None:
            cfg = self._effective_config()
            self.cfg = cfg
            self.dataplane = Dataplane(
                self.netns,
                render_config(cfg),
                iptables_backend=cfg.iptables_backend,  # type: ignore[arg-type]
                refresh_interval=cfg.iptables_refresh_interval,
                route_refresh_interval=cfg.route_refresh_interval,
            )
            for table in self.dataplane.tables.values():
                table.post_write_check = cfg.iptables_post_write_check_interval
                table.max_consecutive_failures = cfg.max_consecutive_failures
            assert self._watcher is not None
            self.dataplane.set_interfaces(link.name for link in self._watcher.links.values())
            self._link_events.clear()
        elif self.inputs.config_changed:
            self.inputs.config_changed = False
            if self._effective_config() != self.cfg:
                log.warning("felix.config_changed action=restart")
                self.exit_code = EXIT_CONFIG_CHANGED
                self._stop.set()
                return
        dp = self.dataplane
        events, self._link_events = self._link_events, []
        for ev in events:
            dp.on_link_event(ev)
        stats = dp.apply(self.calc, self._hep_ifaces(), checks=checks, readbacks=readbacks)
        self._apply_count += 1
        self.metrics.observe_apply(stats)
        self.health.applied = True
        self.health.last_apply_ok = not stats.failures
        self.health.last_apply_at = time.time()
        if dp.failed_persistently:
            log.error("felix.dataplane_failed action=exit code=%d", EXIT_DATAPLANE_FAILED)
            self.exit_code = EXIT_DATAPLANE_FAILED
            self._stop.set()

    async def _apply_loop(self) -> None:
        """Changes first, checks when idle.

        When datastore or interface changes are waiting, apply them at once without the
        read-backs that may be due (post-write checks, refreshes). When nothing is waiting and
        a check is due, the iptables read-backs run in a worker thread (they only run save
        tools) while the loop keeps consuming updates; if a change arrives meanwhile it is
        applied first and the (then stale) read-back is discarded by the driver.
        """
        loop = asyncio.get_running_loop()
        fetch: asyncio.Future[dict[tuple[str, int], tuple[int, str]]] | None = None
        while not self._stop.is_set():
            timeout = 1.0
            if self.dataplane is not None:
                timeout = max(0.0, min(5.0, self.dataplane.next_check_at() - time.monotonic()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._work.wait(), timeout)
            if not self.health.in_sync:
                self._work.clear()
                continue
            if self._watcher is None or not self._watcher.ready.is_set():
                self._work.clear()
                continue
            if self._work.is_set() or self.dataplane is None:
                self._work.clear()
                self._apply(checks=self.dataplane is None)
                continue
            dp = self.dataplane
            if dp.next_check_at() > time.monotonic():
                continue
            due = dp.tables_due()
            readbacks: dict[tuple[str, int], tuple[int, str]] = {}
            if due:
                if fetch is None:
                    fetch = loop.run_in_executor(None, dp.fetch_readbacks, due)
                waiter: asyncio.Future[Any] = asyncio.ensure_future(self._work.wait())
                pending: set[asyncio.Future[Any]] = {fetch, waiter}
                await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                if not fetch.done():
                    continue  # a change arrived: the loop applies it first
                readbacks = fetch.result()
                fetch = None
            self._work.clear()
            self._apply(checks=True, readbacks=readbacks)

    # ------------------------------------------------------------------ metrics
    def _metrics_state(self) -> FelixState:
        """Called at scrape time, on the event loop (``datastore.metrics.MetricsServer``)."""
        h = self.health
        return felix_state(
            self.calc,
            self.dataplane,
            in_sync=h.in_sync and self.syncer.status is SyncStatus.IN_SYNC,
            ready=h.ready,
            live=h.live,
            last_apply_at=h.last_apply_at or None,
        )

    # ------------------------------------------------------------------ health
    async def _health_handler(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            parts = line.decode(errors="replace").split()
            path = parts[1] if len(parts) > 1 else "/"
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            if path.startswith("/liveness"):
                ok = self.health.live
            elif path.startswith("/readiness"):
                ok = self.health.ready
            else:
                writer.write(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                return
            body = json.dumps(
                {
                    "live": self.health.live,
                    "ready": self.health.ready,
                    "inSync": self.health.in_sync,
                    "applied": self.health.applied,
                    "lastApplyOk": self.health.last_apply_ok,
                }
            ).encode()
            status = b"200 OK" if ok else b"503 Service Unavailable"
            writer.write(
                b"HTTP/1.0 "
                + status
                + b"\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
        except (TimeoutError, ConnectionError):
            pass
        finally:
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            writer.close()

    # ------------------------------------------------------------------ run
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._stop.set)
        server = None
        if self.cfg.health_enabled:
            server = await asyncio.start_server(
                self._health_handler, self.cfg.health_host, self.cfg.health_port
            )
            log.info("felix.health listen=%s:%d", self.cfg.health_host, self.cfg.health_port)
        metrics_server = None
        if self.cfg.prometheus_metrics_enabled:
            self.metrics.add_process()
            metrics_server = MetricsServer(self.metrics.registry, "tabby-felix")
            await metrics_server.start(
                self.cfg.prometheus_metrics_host, self.cfg.prometheus_metrics_port
            )
        self.syncer.start()
        log.info("felix.start node=%s netns=%s", self.cfg.node_name, self.netns or "(current)")
        tasks: list[asyncio.Task[Any]] = []
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [
                    tg.create_task(self._consume(), name="felix-syncer-consumer"),
                    tg.create_task(self._links(), name="felix-link-watcher"),
                    tg.create_task(self._apply_loop(), name="felix-apply"),
                ]
                await self._stop.wait()
                for t in tasks:
                    t.cancel()
        except* Exception as group:
            for exc in group.exceptions:
                log.error("felix.task_failed error=%r", exc, exc_info=exc)
            self.exit_code = EXIT_DATAPLANE_FAILED
        finally:
            self.syncer.stop()
            if server is not None:
                server.close()
            if metrics_server is not None:
                metrics_server.close()
        log.info("felix.stop exit_code=%s", self.exit_code)
        return self.exit_code if self.exit_code is not None else EXIT_OK

    def stop(self) -> None:
        self._stop.set()
