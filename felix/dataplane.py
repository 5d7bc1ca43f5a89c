"""Felix's managers: the calculation's desired model -> desired state of each kernel driver.

Role: after each batch of datastore updates, turn what changed in ``felix.calc`` into cheap
desired-state calls on the drivers (iptables tables, ipsets, routes, sysctls), then call their
``apply()`` in a safe order: ipsets (creations and updates) -> iptables -> routes and sysctls ->
ipset deletions (only after no rule references them) -> conntrack flush of removed endpoints.
Inputs: a ``Calculator``, interface events. Outputs: kernel state (through drivers only).
Invariants: nothing is written before ``apply()`` is first called (the agent calls it only once
the datastore is in sync); rendering is cached by object identity so an apply costs in proportion
to what changed; a second apply with nothing changed issues no kernel writes.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from typing import Any, Literal

from felix.calc import Calculator, Dirty, EndpointPlan
from felix.render import (
    IpSetRender,
    RenderConfig,
    TableRender,
    render_ipsets_static,
    render_tables,
    set_renders,
)
from kernel import conntrack
from kernel.ipsets import IPSet, IpsetDriver
from kernel.iptables import BUILTIN_CHAINS, BackendSetting, IptablesTable, detect_backend
from kernel.iptables import ApplyResult as IptablesApplyResult
from kernel.links import LinkEvent
from kernel.routes import PROTO_FELIX, Route, RouteTable
from kernel.routes import ApplyResult as RouteApplyResult
from kernel.sysctl import SysctlDriver, workload_interface_sysctls

log = logging.getLogger(__name__)
TABLES: tuple[Literal["filter", "raw", "mangle", "nat"], ...] = ("filter", "raw", "mangle", "nat")


@dataclass
class ApplyStats:
    seconds: float = 0.0
    iptables_restores: int = 0
    rules_written: int = 0
    ipset_writes: int = 0
    routes_written: int = 0
    sysctls_written: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def writes(self) -> int:
        return (
            self.iptables_restores
            + self.ipset_writes
            + self.routes_written
            + (self.sysctls_written)
        )


class Dataplane:
    """Owns the kernel drivers of one node (in ``netns``; None = the current namespace)."""

    def __init__(
        self,
        netns: str | None,
        cfg: RenderConfig,
        *,
        iptables_backend: BackendSetting = "auto",
        refresh_interval: float = 90.0,
        route_refresh_interval: float = 90.0,
        tables: Mapping[tuple[str, int], IptablesTable] | None = None,
        ipsets: IpsetDriver | None = None,
        routes: Mapping[int, RouteTable] | None = None,
        sysctls: SysctlDriver | None = None,
    ) -> None:
        self.netns = netns
        self.cfg = cfg
        versions: tuple[Literal[4, 6], ...] = (4, 6) if cfg.ipv6 else (4,)
        if tables is None:
            # Detect the backend once for all tables (it runs the save tools of both backends).
            mode = detect_backend(netns, iptables_backend)
            log.info("dataplane.iptables_backend setting=%s mode=%s", iptables_backend, mode)
            tables = {
                (t, v): IptablesTable(
                    t,
                    v,
                    backend=mode,
                    netns=netns,
                    refresh_interval=refresh_interval,
                )
                for v in versions
                for t in TABLES
            }
        self.tables: dict[tuple[str, int], IptablesTable] = dict(tables)
        self.ipsets = (
            ipsets if ipsets is not None else IpsetDriver(netns, refresh_interval=refresh_interval)
        )
        self.routes: dict[int, RouteTable] = (
            dict(routes)
            if routes is not None
            else {
                v: RouteTable(netns, PROTO_FELIX, v, refresh_interval=route_refresh_interval)
                for v in versions
            }
        )
        self.sysctls = sysctls if sysctls is not None else SysctlDriver(netns)
        self._ifaces: set[str] = set()  # interfaces that exist now (from the link watcher)
        self._ep_iface: dict[str, str] = {}  # local workload endpoint -> interface we routed
        self._ep_ips: dict[str, tuple[IPv4Address | IPv6Address, ...]] = {}
        self._set_names: dict[str, tuple[str, ...]] = {}  # set id -> ipset names we want
        self._static_sets: set[str] = set()
        self._pending_conntrack: set[IPv4Address | IPv6Address] = set()
        self._render_cache: dict[Any, Any] = {}
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="dataplane")
        self._first_apply_done = False
        self._globals_set = False
        self._links_changed = False
        self._last_heps: dict[str, Sequence[str]] = {}

    # ------------------------------------------------------------------ interface events
    def on_link_event(self, ev: LinkEvent) -> bool:
        """Update the interface view; True when something must be (re)applied."""
        self._links_changed = True
        name = ev.link.name
        changed = False
        if ev.kind == "removed":
            if name in self._ifaces:
                self._ifaces.discard(name)
                self.sysctls.forget_interface(name)
                changed = True
        elif ev.kind == "renamed":
            old = ev.old.name if ev.old is not None else None
            if old is not None and old in self._ifaces:
                self._ifaces.discard(old)
                self.sysctls.forget_interface(old)
                for rt in self.routes.values():
                    rt.on_interface_change(old)
            self._ifaces.add(name)
            changed = True
        elif name not in self._ifaces or ev.kind == "changed":
            self._ifaces.add(name)
            changed = True
        if changed and name.startswith(self.cfg.iface_prefix):
            for rt in self.routes.values():
                rt.on_interface_change(name)
            return True
        return changed and name.startswith(self.cfg.iface_prefix)

    def set_interfaces(self, names: Iterable[str]) -> None:
        self._ifaces = set(names)

    # ------------------------------------------------------------------ desired state
    def _workload_sysctls(self, plans: Iterable[EndpointPlan]) -> None:
        for plan in plans:
            ep = plan.endpoint
            if ep.kind != "workload" or not ep.iface or ep.iface not in self._ifaces:
                continue
            values = workload_interface_sysctls(
                ep.iface, ipv4=True, ipv6=self.cfg.ipv6 and bool(ep.ipv6)
            )
            self.sysctls.set_many(values)

    def _update_routes(self, calc: Calculator, dirty_eps: Iterable[str]) -> None:
        for key in dirty_eps:
            plan = calc.plan(key)
            old_iface = self._ep_iface.get(key)
            ep = plan.endpoint if plan is not None else None
            if ep is None or ep.kind != "workload" or not ep.iface:
                if old_iface is not None:
                    for rt in self.routes.values():
                        rt.delete_interface(old_iface)
                    del self._ep_iface[key]
                    self._pending_conntrack.update(self._ep_ips.pop(key, ()))
                continue
            if old_iface is not None and old_iface != ep.iface:
                for rt in self.routes.values():
                    rt.delete_interface(old_iface)
            self._ep_iface[key] = ep.iface
            new_ips = tuple(n.network_address for n in ep.nets)
            gone = set(self._ep_ips.get(key, ())) - set(new_ips)
            self._pending_conntrack.update(gone)
            self._ep_ips[key] = new_ips
            for v, rt in self.routes.items():
                nets = ep.ipv4 if v == 4 else ep.ipv6
                rt.set_routes_for_interface(
                    ep.iface, [Route(dst=n, ifname=ep.iface, scope="link") for n in nets]
                )

    def _update_ipsets(self, calc: Calculator, dirty_sets: Iterable[str], full: bool) -> None:
        versions = (4, 6) if self.cfg.ipv6 else (4,)
        ids = list(calc.state().sets) if full else list(dirty_sets)
        for sid in ids:
            st = calc.set_state_or_none(sid)
            if st is None:
                for name in self._set_names.pop(sid, ()):
                    self.ipsets.remove_set(name)
                continue
            renders = set_renders(sid, st, versions)
            self._set_names[sid] = tuple(r.name for r in renders)
            for r in renders:
                self.ipsets.update_set(_ipset(r))
        if full:
            for sid in list(self._set_names):
                if calc.set_state_or_none(sid) is None:
                    for name in self._set_names.pop(sid):
                        self.ipsets.remove_set(name)

    def _update_static_sets(self, calc: Calculator) -> None:
        wanted = render_ipsets_static(calc.pools.values(), self.cfg, calc.host_addresses)
        names = {r.name for r in wanted}
        for name in self._static_sets - names:
            self.ipsets.remove_set(name)
        for r in wanted:
            self.ipsets.update_set(_ipset(r))
        self._static_sets = names

    def _update_tables(self, renders: Sequence[TableRender]) -> None:
        for tr in renders:
            table = self.tables.get((tr.table, tr.ip_version))
            if table is None:
                continue
            table.set_chains(tr.chains)
            for builtin in _builtins(tr.table):
                table.set_insert_rules(builtin, tr.inserts.get(builtin, ()))

    # ------------------------------------------------------------------ apply
    def apply(
        self,
        calc: Calculator,
        hep_ifaces: Mapping[str, Sequence[str]] | None = None,
        *,
        checks: bool = True,
        readbacks: Mapping[tuple[str, int], tuple[int, str]] | None = None,
    ) -> ApplyStats:
        """Bring the kernel in line with ``calc``. Only called once the datastore is in sync.

        ``checks=False`` (changes are waiting) postpones due read-backs (post-write checks,
        periodic refreshes) to a later, idle apply; ``readbacks`` are iptables read-backs taken
        in the background (``fetch_readbacks``)."""
        start = time.perf_counter()
        stats = ApplyStats()
        dirty = calc.take_dirty()
        full = not self._first_apply_done
        heps = dict(hep_ifaces or {})
        if full or dirty or self._links_changed or heps != self._last_heps:
            self._update_desired(calc, dirty, full, heps)
        # else: nothing new to render; the drivers still retry, check and refresh below.
        t_render = time.perf_counter()
        self._apply_drivers(stats, checks, readbacks, start, t_render)
        return stats

    def _update_desired(
        self, calc: Calculator, dirty: Dirty, full: bool, heps: dict[str, Sequence[str]]
    ) -> None:
        """Desired state of every driver from the calculation (no kernel I/O)."""
        self._links_changed = False
        self._last_heps = heps
        state = calc.state()
        if not self._globals_set:
            self.sysctls.set("net/ipv4/ip_forward", "1")
            if self.cfg.ipv6:
                self.sysctls.set("net/ipv6/conf/all/forwarding", "1")
            self._globals_set = True
        self._update_routes(calc, list(state.endpoints) if full else dirty.endpoints)
        # Endpoints that vanished while we were down need nothing here: the route table's
        # read-back (it owns proto 80) sweeps their routes.
        self._workload_sysctls(state.endpoints.values())
        self._update_ipsets(calc, dirty.sets, full)
        if full or dirty.pools or dirty.hosts:
            self._update_static_sets(calc)
        self._update_tables(render_tables(state, self.cfg, heps, self._render_cache))

    def _apply_drivers(
        self,
        stats: ApplyStats,
        checks: bool,
        readbacks: Mapping[tuple[str, int], tuple[int, str]] | None,
        start: float,
        t_render: float,
    ) -> None:

        # 1) ipsets that rules are about to reference.
        r = self.ipsets.apply(allow_refresh=checks)
        stats.ipset_writes += r.restores if hasattr(r, "restores") else 0
        if not r.ok:
            stats.failures.append(f"ipsets: {r.error or r.failed}")
        # 2) iptables (every table) and 3) routes and sysctls, in parallel: the tables are
        # independent of each other, and routes or sysctls of a new workload are harmless
        # before its chains exist (the dispatch chains drop traffic of unknown interfaces).
        t_ipsets = time.perf_counter()
        rb = readbacks or {}

        def table_job(key: tuple[str, int], table: IptablesTable) -> tuple[str, object]:
            return f"iptables {key[0]}/v{key[1]}", table.apply(
                allow_refresh=checks, readback=rb.get(key)
            )

        def route_job(rt: RouteTable) -> tuple[str, object]:
            return "routes", rt.apply(allow_refresh=checks)

        def sysctl_job() -> tuple[str, object]:
            return "sysctls", self.sysctls.apply()

        jobs: list[Callable[[], tuple[str, object]]] = [
            functools.partial(table_job, key, t)
            for key, t in sorted(self.tables.items())
            if t.has_work(checks)
        ]
        jobs += [functools.partial(route_job, rt) for rt in self.routes.values()]
        jobs.append(sysctl_job)
        results = (
            list(self._pool.map(lambda job: job(), jobs))
            if len(jobs) > 1
            else [job() for job in jobs]
        )
        for label, res in results:
            if isinstance(res, IptablesApplyResult):
                stats.iptables_restores += res.restores
                stats.rules_written += res.rules_written
                if not res.ok:
                    stats.failures.append(f"{label}: {res.error or res.failed}")
            elif isinstance(res, RouteApplyResult):
                stats.routes_written += res.writes
                for failure in res.failed:
                    stats.failures.append(f"route {failure}")
            else:
                stats.sysctls_written += len(getattr(res, "written", ()))
        t_kernel = time.perf_counter()
        # 4) ipsets no longer referenced by any rule.
        d = self.ipsets.apply_deletions(allow_refresh=checks)
        stats.ipset_writes += d.restores if hasattr(d, "restores") else 0
        # 5) conntrack entries of addresses that no longer belong to a local workload.
        if self._pending_conntrack:
            still = {ip for ips in self._ep_ips.values() for ip in ips}
            flush = self._pending_conntrack - still
            self._pending_conntrack.clear()
            if flush:
                conntrack.delete_entries(self.netns, sorted(flush, key=str))
        self._first_apply_done = True
        stats.seconds = time.perf_counter() - start
        log.info(
            "dataplane.apply ms=%.1f calc_render_ms=%.1f ipsets_ms=%.1f kernel_ms=%.1f "
            "iptables_restores=%d rules=%d ipset_writes=%d routes=%d sysctls=%d failures=%d",
            stats.seconds * 1000,
            (t_render - start) * 1000,
            (t_ipsets - t_render) * 1000,
            (t_kernel - t_ipsets) * 1000,
            stats.iptables_restores,
            stats.rules_written,
            stats.ipset_writes,
            stats.routes_written,
            stats.sysctls_written,
            len(stats.failures),
        )
        for f in stats.failures:
            log.warning("dataplane.failure %s", f)

    def tables_due(self) -> list[tuple[str, int]]:
        """The iptables tables whose read-back (check or refresh) is due now."""
        return [key for key, t in sorted(self.tables.items()) if t.check_due()]

    def fetch_readbacks(
        self, keys: Sequence[tuple[str, int]]
    ) -> dict[tuple[str, int], tuple[int, str]]:
        """Read the given tables back (run it in a worker thread: it only runs save tools)."""
        out: dict[tuple[str, int], tuple[int, str]] = {}
        for key in keys:
            try:
                out[key] = self.tables[key].fetch_readback()
            except Exception as exc:  # the apply that follows reads it again itself
                log.warning("dataplane.readback_failed table=%s error=%s", key, exc)
        return out

    def next_check_at(self) -> float:
        times = [t.next_check_at() for t in self.tables.values()]
        times.append(self.ipsets.next_check_at())
        return min(times)

    @property
    def failed_persistently(self) -> bool:
        return any(t.failed_persistently for t in self.tables.values()) or (
            self.ipsets.failed_persistently
        )


def _builtins(table: str) -> tuple[str, ...]:
    return BUILTIN_CHAINS[table]


def _ipset(r: IpSetRender) -> IPSet:
    # felix renders members in ipset's canonical text (str() of ipaddress values), so the
    # driver need not parse them again.
    return IPSet.trusted(r.name, r.set_type, r.family, r.members)  # type: ignore[arg-type]


__all__ = ["ApplyStats", "Dataplane"]
