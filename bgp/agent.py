"""The tabby-bgp agent: datastore -> peers/announcements -> ExaBGP; ExaBGP -> RIB -> kernel.

Role: the composition root of the BGP agent. One asyncio loop runs: the syncer consumer (Nodes,
BGPConfigurations, BGPPeers, IPPools and this node's block affinities), the API server that the
ExaBGP API process (``bgp.api_bridge``) connects to, and the control loop that keeps ExaBGP's
configuration, our announcements and the kernel routes (proto 81) in line with the state.
Inputs: etcd (via ``datastore.syncer``), ExaBGP JSON events. Outputs: ExaBGP configuration and
commands, kernel routes, a status document (``/status`` on the health port).
Invariants:
- every command to ExaBGP is acknowledged; at most ``AckTracker.window`` are in flight;
- after a (re)start of ExaBGP, all announcements are re-sent before End-of-RIB is sent to a peer
  (``manual-eor``), so graceful-restart peers keep our routes without a change;
- at agent start, kernel routes already carrying our protocol are kept until the initial
  convergence (every established peer sent End-of-RIB, or the restart time passed): a restarted
  agent changes no route that is still right;
- a session going down keeps its routes as stale for the peer's restart time (graceful restart
  receiver), then drops them; without graceful restart they are dropped at once;
- only routes with our protocol are ever written (``kernel.routes.RouteTable``); a destination
  held by another protocol's route (e.g. a static default) is left alone, and re-checked every
  5 s so that ours is installed once the foreign route is gone;
- BGP passwords come from ``bgp.secrets.FileSecretResolver`` (one file per secret key).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import gc
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, ip_network
from pathlib import Path
from typing import Any, TypeVar

from bgp import exabgp_api as api
from bgp import reflect
from bgp.exabgp_config import render_config
from bgp.exabgp_proc import ExabgpProcess
from bgp.kernel_routes import (
    RouteCalculator,
    announcements,
    blackhole_routes,
    desired_routes,
)
from bgp.metrics import BgpMetrics, bgp_snapshot
from bgp.model import (
    BGPConfig,
    BGPPeerInfo,
    IPAddress,
    IPNetwork,
    NodeInfo,
    PeerSpec,
    PoolInfo,
    from_bgpconfig_resources,
    from_bgppeer_resource,
    from_ippool_resource,
    from_node_resource,
)
from bgp.model import Path as RibPath
from bgp.peers import desired_peers
from bgp.rib import Rib
from bgp.secrets import FileSecretResolver
from bgp.tunnel import TunnelManager
from bgp.wire import UpdateMessageError
from datastore import kinds
from datastore.decoder import ResourceDecoder
from datastore.etcd import EtcdConfig, EtcdKVStore
from datastore.ipam_block import Block, IPAMRecordError, parse_block_key
from datastore.keys import kind_prefix
from datastore.kv import KVStore
from datastore.metrics import MetricsServer
from datastore.model import Resource
from datastore.syncer import Syncer, Update
from kernel.routes import (
    PROTO_BGP,
    ApplyResult,
    OpResult,
    OpStatus,
    PlannedApply,
    Route,
    RouteTable,
)

log = logging.getLogger(__name__)
_T = TypeVar("_T")

BGP_KINDS = (kinds.NODE, kinds.BGP_CONFIGURATION, kinds.BGP_PEER, kinds.IP_POOL)
AFFINITY_ROOT = "/calico/ipam/v2/host/"
BLOCK_ROOT = "/calico/ipam/v2/assignment/ipv4/block/"
LIVENESS_TIMEOUT = 30.0  # /liveness fails when the control loop has not run for this long


@dataclass(frozen=True, slots=True)
class BgpSettings:
    node_name: str
    etcd_endpoints: tuple[str, ...] = ("http://127.0.0.1:2379",)
    etcd_ca_file: str | None = None
    etcd_cert_file: str | None = None
    etcd_key_file: str | None = None
    state_dir: Path = Path("/run/tabby-bgp")
    health_host: str = "127.0.0.1"
    health_port: int = 9098
    health_enabled: bool = True
    ecmp: bool = True
    route_reflector: bool = False
    metrics_host: str = "127.0.0.1"  # Prometheus /metrics (bgp/metrics.py)
    metrics_port: int = 0  # 0: no metrics endpoint
    secrets_dir: Path | None = None  # BGP passwords (bgp/secrets.py); None: $TABBY_SECRETS_DIR


@dataclass
class PeerStatus:
    spec: PeerSpec
    state: str = "idle"
    since: float = field(default_factory=time.time)
    received: int = 0
    router_id: IPv4Address | None = None
    graceful_restart: int | None = None
    eor_sent: bool = False
    eor_received: bool = False
    rejected: int = 0  # received routes dropped by the RFC 4456 loop checks
    asn4: bool = True  # 4-octet AS numbers in its UPDATEs (its OPEN's capability 65)
    malformed: int = 0  # UPDATEs treated as withdrawn or ending the session (RFC 7606)
    resetting: bool = False  # torn down for a malformed UPDATE: ignore it until it is back up


# The API reader lets the control loop run (route computation, kernel writes) after this many
# prefixes of buffered UPDATEs (see BgpAgent._api_client).
YIELD_AFTER_PREFIXES = 500
# Learned prefixes whose kernel route one control pass computes at most; the rest wait for the
# next pass, so that a table load is written in batches while the next batch is computed
# (BgpAgent._apply_routes).
KERNEL_BATCH = 2000
WRITES_IN_FLIGHT = 3  # batches queued to the writer thread at most
SWITCH_INTERVAL = 0.001  # seconds a thread holds the interpreter lock when another waits
GC_GEN0_THRESHOLD = 20_000  # allocations between young-generation collections (default 700)


class BgpAgent:
    def __init__(
        self,
        settings: BgpSettings,
        *,
        store_factory: Callable[[], KVStore] | None = None,
        routes: RouteTable | None = None,
    ) -> None:
        self.s = settings
        cfg = EtcdConfig(
            endpoints=settings.etcd_endpoints,
            ca_cert_file=settings.etcd_ca_file,
            cert_file=settings.etcd_cert_file,
            key_file=settings.etcd_key_file,
        )
        self._store_factory = store_factory or (lambda: EtcdKVStore(cfg))
        me = settings.node_name
        self.syncer = Syncer(
            self._store_factory,
            [*(kind_prefix(k.kind) for k in BGP_KINDS), f"{AFFINITY_ROOT}{me}/", BLOCK_ROOT],
            name="bgp-syncer",
        )
        self.decoder = ResourceDecoder()
        self.nodes: dict[str, Resource] = {}
        self._node_infos_cache: dict[str, NodeInfo] | None = None  # see _node_infos
        self.bgp_configs: dict[str, Resource] = {}
        self.bgp_peers: dict[str, Resource] = {}
        self.pools: dict[str, Resource] = {}
        self.my_blocks: set[IPv4Network] = set()
        # Addresses this node holds in blocks affine to other nodes (announced as /32s).
        self.borrowed: dict[IPv4Network, frozenset[IPv4Network]] = {}
        self.in_sync = False
        self.routes = routes if routes is not None else RouteTable(None, PROTO_BGP, 4)
        self.exabgp = ExabgpProcess(settings.state_dir)
        self.rib = Rib(ecmp=settings.ecmp)
        self.secrets = FileSecretResolver(settings.secrets_dir)
        self.acks = api.AckTracker(window=2000)
        self.peers: dict[IPv4Address, PeerStatus] = {}
        self.announced: set[IPv4Network] = set()
        # -- route reflection (bgp/reflect.py): what each neighbour was sent, loop-check ids
        self.adj_out = reflect.AdjRibOut()
        self._reflect_key: tuple[object, ...] | None = None
        # Neighbours known to be in ExaBGP's running configuration, with an Adj-RIB-Out there
        # that matches ``adj_out`` (those of the configuration it started with, and those whose
        # session came up since they were added or changed): an un-targeted command reaches
        # them, and when their session comes back ExaBGP re-sends what it kept for them.
        self._confirmed: set[IPv4Address] = set()
        self._config_peers: tuple[str, frozenset[IPv4Address]] = ("", frozenset())
        self._loop_ids: tuple[IPv4Address, IPv4Address | None] | None = None
        # The reflection context is rebuilt only when its inputs change: the neighbours' roles
        # (``_roles_changed`` is bumped wherever ``peers`` gains or loses a neighbour or one's
        # spec or router id changes), our address, cluster ID and announcements.
        self._roles_changed = 0
        self._ctx_cache: tuple[tuple[object, ...], reflect.ReflectContext] | None = None
        self.rib.watch("reflect")
        self._writer: asyncio.StreamWriter | None = None
        self._outbox: collections.deque[str] = collections.deque()
        self._eor_pending: set[IPv4Address] = set()
        self.api_errors = 0  # lines from ExaBGP that could not be parsed or processed (skipped)
        self._work = asyncio.Event()
        self._stop = asyncio.Event()
        self._started = time.monotonic()
        self._converged = False
        self._keep: dict[Any, Route] = {}  # kernel routes found at start, kept until converged
        self._learned: dict[Any, Route] | None = None  # desired routes for learned prefixes
        self._changed: set[IPNetwork] = set()  # RIB changes whose kernel route is not computed
        # batches of kernel writes queued to the writer thread (RouteTable.begin_apply), oldest
        # first; one thread, so that they reach the kernel in the order they were planned
        self._writing: collections.deque[tuple[PlannedApply, asyncio.Future[list[OpResult]]]]
        self._writing = collections.deque()
        self._writer_thread = concurrent.futures.ThreadPoolExecutor(1, "tabby-bgp-routes")
        self._kernel_inputs: tuple[Any, ...] | None = None
        self._kernel_converged = False  # the convergence _keep was last applied for
        self._next_route_check = 0.0
        self.exit_code = 0
        # -- health and metrics (bgp/metrics.py)
        self._heartbeat = time.monotonic()  # the control loop's last turn (liveness)
        self._peers_known = False  # the configured sessions were computed (readiness)
        self._last_update_at: float | None = None
        self.metrics = BgpMetrics()
        self.metrics.add_state(lambda: bgp_snapshot(self))
        self.metrics.add_syncer(self.syncer, lambda: self._last_update_at)

    # ------------------------------------------------------------------ datastore
    def _on_block(self, upd: Update) -> None:
        cidr = parse_block_key(upd.key)
        if not isinstance(cidr, IPv4Network):
            return
        held: frozenset[IPv4Network] = frozenset()
        if upd.value is not None:
            try:
                block = Block.from_json(upd.value, upd.key)
            except IPAMRecordError as exc:
                log.warning("bgp.bad_block key=%s error=%s", upd.key, exc)
                block = None
            if block is not None and block.host != self.s.node_name:
                me = self.s.node_name
                held = frozenset(
                    IPv4Network(block.ip(o))
                    for o in block.allocated_ordinals()
                    if (a := block.attribute_of(o)) is not None and a.secondary.get("node") == me
                )
        if held:
            self.borrowed[cidr] = held
        else:
            self.borrowed.pop(cidr, None)

    def _on_update(self, upd: Update) -> None:
        if upd.key.startswith(BLOCK_ROOT):
            self._on_block(upd)
            return
        if upd.key.startswith(AFFINITY_ROOT):
            tail = upd.key.rsplit("/", 1)[-1]
            try:
                net = ip_network(tail.replace("-", "/"))
            except ValueError:
                return
            if not isinstance(net, IPv4Network):
                return
            confirmed = False
            if upd.value is not None:
                try:
                    confirmed = json.loads(upd.value).get("state") == "confirmed"
                except (ValueError, AttributeError):
                    confirmed = False
            if confirmed:
                self.my_blocks.add(net)
            else:
                self.my_blocks.discard(net)
            return
        ru = self.decoder.decode(upd)
        if ru is None:
            return
        table = {
            kinds.NODE.kind: self.nodes,
            kinds.BGP_CONFIGURATION.kind: self.bgp_configs,
            kinds.BGP_PEER.kind: self.bgp_peers,
            kinds.IP_POOL.kind: self.pools,
        }.get(ru.info.kind)
        if table is None:
            return
        if ru.resource is None:
            table.pop(ru.name, None)
        else:
            table[ru.name] = ru.resource
        if table is self.nodes:
            self._node_infos_cache = None

    async def _consume(self) -> None:
        while not self._stop.is_set():
            batch = await self.syncer.next_batch_async(timeout=1.0)
            for upd in batch.updates:
                self._on_update(upd)
            if batch.updates:
                self._last_update_at = time.time()  # metrics: datastore lag
            if batch.in_sync and not self.in_sync:
                self.in_sync = True
                log.info(
                    "bgp.in_sync nodes=%d pools=%d blocks=%d",
                    len(self.nodes),
                    len(self.pools),
                    len(self.my_blocks),
                )
            if batch.updates or batch.in_sync:
                self._work.set()

    # ------------------------------------------------------------------ calculation
    def _node_infos(self) -> Mapping[str, NodeInfo]:
        """Every Node parsed (read-only; parsed again only after a Node changed: our address
        and cluster ID are asked for per command, and a cluster may have hundreds of nodes)."""
        if self._node_infos_cache is None:
            out = {}
            for name, res in self.nodes.items():
                try:
                    out[name] = from_node_resource(res)
                except ValueError as exc:
                    log.warning("bgp.bad_node name=%s error=%s", name, exc)
            self._node_infos_cache = out
        return self._node_infos_cache

    def _config(self) -> BGPConfig:
        return from_bgpconfig_resources(
            self.bgp_configs.get("default"),
            self.bgp_configs.get(f"node.{self.s.node_name}"),
            self.secrets,
        )

    def _peer_infos(self) -> list[BGPPeerInfo]:
        out = []
        for name, res in sorted(self.bgp_peers.items()):
            try:
                out.append(from_bgppeer_resource(res, self.secrets))
            except ValueError as exc:
                log.warning("bgp.bad_peer name=%s error=%s", name, exc)
        return out

    def _pool_infos(self) -> list[PoolInfo]:
        return [from_ippool_resource(r) for _, r in sorted(self.pools.items())]

    def my_address(self) -> IPv4Interface | None:
        node = self._node_infos().get(self.s.node_name)
        return node.ipv4_address if node is not None else None

    # ------------------------------------------------------------------ ExaBGP I/O
    def _send(self, command: str) -> None:
        self._outbox.append(command)
        self._flush()

    def _flush(self) -> None:
        w = self._writer
        if w is None:
            return
        while self._outbox and self.acks.can_send():
            cmd = self._outbox.popleft()
            self.acks.sent(cmd)
            w.write(cmd.encode() + b"\n")

    async def _api_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._writer is not None:
            log.warning("bgp.api_second_connection action=replace")
            self._writer.close()
        self._writer = writer
        self.acks.reset()
        self._outbox.clear()
        self.announced.clear()  # a new ExaBGP knows nothing: announce everything again
        self.adj_out.clear()  # ... and has no reflected route either
        self._reflect_key = None
        text, peers = self._config_peers
        self._confirmed = set(peers) if self.exabgp.started_config == text else set()
        log.info("bgp.api_connected neighbours_known=%d", len(self._confirmed))
        self._work.set()
        try:
            unyielded = 0  # prefixes read since the control loop last had a turn
            while True:
                line = await reader.readline()
                if not line:
                    break
                text = line.decode(errors="replace")
                try:
                    ev = api.parse_line(text)
                except api.ExabgpApiError as exc:
                    # One line we cannot read must not take every session down with it. If it
                    # is an UPDATE, which routes it carried is unknown: only its session is
                    # reset (RFC 7606), so that the peer sends its routes again.
                    self.api_errors += 1
                    log.error("bgp.api_bad_line error=%s line=%.300s", exc, text)
                    lost = api.unreadable_update_peer(text)
                    if lost is not None:
                        self._reset_session(lost, f"unreadable update line: {exc}")
                    continue
                if isinstance(ev, api.RawUpdateEvent):
                    decoded = self._decode(ev)
                    if decoded is None:
                        continue
                    ev = decoded
                elif isinstance(ev, api.UpdateEvent | api.EorEvent):
                    # ExaBGP's parsed copy of an UPDATE (only an unpatched ExaBGP sends one):
                    # its bytes came just before and are what counts
                    continue
                try:
                    self._on_event(ev)
                except Exception:  # a bug here must not end every session either
                    self.api_errors += 1
                    log.exception("bgp.api_event_failed event=%.300r", ev)
                    if isinstance(ev, api.UpdateEvent):  # its effect may be half applied
                        self._treat_as_withdraw(ev.session.peer, ev.prefixes())
                    self._work.set()
                if isinstance(ev, api.UpdateEvent):
                    # readline() does not yield while ExaBGP's lines are buffered: without
                    # this, a table load is parsed whole before the first route is computed
                    # and written (the kernel writes would start only after the last UPDATE).
                    # Every YIELD_AFTER_PREFIXES, not after each UPDATE: a reflector's burst of
                    # one-prefix UPDATEs would otherwise cost a control pass each (measured:
                    # +280 ms of agent CPU with 200 clients).
                    unyielded += ev.size
                    if unyielded >= YIELD_AFTER_PREFIXES:
                        unyielded = 0
                        await asyncio.sleep(0)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # The agent is stopping. Not re-raised: Python 3.11's stream server calls
            # ``task.exception()`` on a cancelled handler and logs a spurious traceback.
            pass
        finally:
            if self._writer is writer:
                self._writer = None
                log.warning("bgp.api_disconnected")
                for peer in list(self.peers):
                    self._peer_down(peer, "api disconnected")
            writer.close()

    def _decode(self, ev: api.RawUpdateEvent) -> api.UpdateEvent | api.EorEvent | None:
        """The routes of a raw UPDATE; None for one that cannot be delimited: RFC 7606 asks
        for a session reset, so the peer's routes go and the session is torn down."""
        peer = ev.session.peer
        st = self.peers.get(peer)  # type: ignore[arg-type]
        if st is not None and st.resetting:
            return None  # what the session still sends before it is down is not trusted
        try:
            return api.decode_raw(ev, asn4=st.asn4 if st is not None else True)
        except UpdateMessageError as exc:
            self._reset_session(peer, f"malformed update: {exc}")
            return None

    def _reset_session(self, peer: IPAddress, reason: str) -> None:
        """An UPDATE from ``peer`` could not be read: its routes go now, its session is torn
        down (it sends them again when it is back), and what the session still delivers
        before it is down is ignored."""
        log.error("bgp.update_malformed peer=%s action=reset error=%s", peer, reason)
        st = self.peers.get(peer)  # type: ignore[arg-type]
        if st is not None:
            st.malformed += 1
            st.resetting = True
        if isinstance(peer, IPv4Address):
            self._peer_down(peer, reason, graceful=False)
            self._send(api.teardown(peer, 4))  # Cease, administrative reset
        else:
            self.rib.peer_down(peer)
        self._work.set()

    def _treat_as_withdraw(self, peer: IPAddress, prefixes: tuple[IPv4Network, ...]) -> None:
        """Withdraw ``prefixes`` of ``peer`` (an UPDATE we could not read or apply)."""
        if not prefixes:
            return
        try:
            self.rib.update_many(peer, ((p, None) for p in prefixes))
        except Exception:
            log.exception("bgp.treat_as_withdraw_failed peer=%s prefixes=%d", peer, len(prefixes))
        st = self.peers.get(peer) if isinstance(peer, IPv4Address) else None
        if st is not None:
            st.received = self.rib.count(peer)
        self._work.set()

    def _on_event(self, ev: api.Event) -> None:
        if isinstance(ev, api.Ack):
            with contextlib.suppress(api.ExabgpApiError):
                self.acks.on_ack(ev)
            self._flush()
            self._maybe_send_eor()
            return
        if isinstance(ev, api.StateEvent):
            peer = ev.session.peer
            if not isinstance(peer, IPv4Address):
                return
            st = self.peers.get(peer)
            if st is None:
                return
            if ev.state == "up":
                st.state, st.since = "established", time.time()
                st.eor_sent = st.eor_received = st.resetting = False
                self._eor_pending.add(peer)
                log.info("bgp.session_up peer=%s", peer)
                self._announce_to(peer)
                self._maybe_send_eor()
            elif ev.state == "down":
                self._peer_down(peer, ev.reason)
            else:
                st.state = ev.state
            self._work.set()
        elif isinstance(ev, api.OpenEvent):
            st = self.peers.get(ev.session.peer)  # type: ignore[arg-type]
            if st is not None and ev.direction == "receive":
                if st.router_id != ev.router_id:
                    self._roles_changed += 1
                st.router_id = ev.router_id
                st.graceful_restart = ev.graceful_restart_time
                st.asn4 = ev.asn4
        elif isinstance(ev, api.UpdateEvent):
            peer = ev.session.peer
            st = self.peers.get(peer)  # type: ignore[arg-type]
            rid = st.router_id if st is not None else None
            if ev.problem:
                log.warning(
                    "bgp.update_treat_as_withdraw peer=%s prefixes=%d error=%s",
                    peer,
                    len(ev.withdrawn),
                    ev.problem,
                )
                if st is not None:
                    st.malformed += 1
            # in the order of the message: its withdrawn routes first, then its NLRI (as BIRD)
            self.rib.update_many(peer, ((p, None) for p in ev.withdrawn))
            for path, prefixes in ev.path_groups(rid):
                if self._loop_rejects(st, path):  # RFC 4456: treated as withdrawn
                    self.rib.update_many(peer, ((p, None) for p in prefixes))
                else:
                    self.rib.announce(peer, path, prefixes)
            if st is not None:
                st.received = self.rib.count(peer)
            self._work.set()
        elif isinstance(ev, api.EorEvent):
            if (ev.afi, ev.safi) != ("ipv4", "unicast"):
                return  # tabby negotiates IPv4 unicast only
            self.rib.eor(ev.session.peer)
            st = self.peers.get(ev.session.peer)  # type: ignore[arg-type]
            if st is not None:
                st.eor_received = True
            self._work.set()
        elif isinstance(ev, api.NotificationEvent):
            log.warning(
                "bgp.notification peer=%s code=%d subcode=%d %s",
                ev.session.peer,
                ev.code,
                ev.subcode,
                ev.message,
            )

    def _peer_down(self, peer: IPv4Address, reason: str, *, graceful: bool = True) -> None:
        st = self.peers.get(peer)
        if st is not None and st.state == "established":
            log.warning("bgp.session_down peer=%s reason=%s", peer, reason)
        # RFC 4724: graceful restart covers a session that ended without a NOTIFICATION (the
        # peer's BGP process restarting). A NOTIFICATION (hold timer expired, cease...) ends it
        # for good: the routes go now, as BIRD does.
        if reason.startswith("notification"):
            graceful = False
        restart = st.graceful_restart if st is not None and graceful else None
        if restart:
            self.rib.peer_down(peer, stale=True, now=time.monotonic(), restart_time=restart)
        else:
            self.rib.peer_down(peer)
        if st is not None:
            st.state, st.since = "down", time.time()
        self._eor_pending.discard(peer)
        self._work.set()

    def _announce_to(self, peer: IPv4Address) -> None:
        """Send our announcements to one newly established peer (before its End-of-RIB).

        ExaBGP keeps API-announced routes only for the neighbours it had when the command came:
        a neighbour added later by a reload (a node that joined or came back) would get an
        empty Adj-RIB-Out and, with ``manual-eor``, our End-of-RIB right after. Re-announcing
        to a neighbour that already had the routes is an implicit replace with equal
        attributes: no change at the peer."""
        me = self.my_address()
        if me is None:
            return
        for prefix in sorted(self.announced):
            self._send(api.announce_route(peer, prefix, me.ip))
        self._reflect_to(peer)  # and every route we reflect to it (Adj-RIB-Out re-sent)

    def _maybe_send_eor(self) -> None:
        """End-of-RIB to newly established peers once every announcement was acknowledged."""
        if self._outbox or self.acks.pending or not self._eor_pending:
            return
        if not self._announcements_current():
            return
        holding = self._holding_client_eor()  # once, not per peer: O(peers) each
        for peer in sorted(self._eor_pending):
            if holding and self._eor_deferred(peer):
                continue
            self._send(api.announce_eor(peer))
            st = self.peers.get(peer)
            if st is not None:
                st.eor_sent = True
            self._eor_pending.discard(peer)

    # ------------------------------------------------------------------ reconcile
    def _wanted_announcements(self) -> set[IPv4Network]:
        """Our affine blocks, plus /32s of addresses we borrowed from other nodes' blocks."""
        pools = self._pool_infos()
        held = {ip for ips in self.borrowed.values() for ip in ips}
        return set(announcements(self.my_blocks, pools, self.my_address(), borrowed=held))

    def _announcements_current(self) -> bool:
        return self.announced == self._wanted_announcements()

    def _reconcile_exabgp(self) -> None:
        me = self.my_address()
        if me is None:
            log.warning("bgp.no_address node=%s (Node.spec.bgp.ipv4Address)", self.s.node_name)
            return
        nodes = self._node_infos()
        labels = {n: dict(r.metadata.labels) for n, r in self.nodes.items()}
        cfg = self._config()
        peers = desired_peers(self.s.node_name, nodes, cfg, self._peer_infos(), labels)
        wanted = {p.address: p for p in peers}
        for addr, spec in wanted.items():
            st = self.peers.get(addr)
            if st is None:
                self.peers[addr] = PeerStatus(spec)
                self._confirmed.discard(addr)
                self._roles_changed += 1
            else:
                if st.spec != spec:
                    self._confirmed.discard(addr)  # ExaBGP may rebuild it, Adj-RIB-Out and all
                    self._roles_changed += 1
                st.spec = spec
        self._peers_known = True  # readiness: the configured sessions are known
        api_cmd = [sys.executable, "-m", "bgp.api_bridge", str(self.s.state_dir / "api.sock")]
        text = render_config(me.ip, me.ip, cfg.listen_port, peers, api_cmd)
        self._config_peers = (text, frozenset(wanted))
        if self.exabgp.write_config(text):
            if self.exabgp.running:
                self.exabgp.reload()
            else:
                self.exabgp.next_start = 0.0
        self.exabgp.check(time.monotonic())
        if self.exabgp.reload_pending:
            # ExaBGP still runs the previous configuration (its reload is deferred): a removed
            # peer's session is still up, and if the peer comes back before the reload, ExaBGP
            # keeps that session without a new "up" event. So removals wait for the reload.
            return
        for addr in list(self.peers):
            if addr not in wanted:
                # A peer taken out of the configuration is gone, not restarting: its routes go
                # at once (graceful restart only covers a session that is expected back).
                self._peer_down(addr, "peer removed", graceful=False)
                del self.peers[addr]
                self._roles_changed += 1
                self.adj_out.forget(addr)  # a neighbour added again starts empty in ExaBGP
                self._confirmed.discard(addr)

    def _reconcile_announcements(self) -> None:
        if self._writer is None:
            return
        me = self.my_address()
        if me is None:
            return
        wanted = self._wanted_announcements()
        for prefix in sorted(wanted - self.announced):
            self._send(api.announce_route(None, prefix, me.ip))
        for prefix in sorted(self.announced - wanted):
            self._send(api.withdraw_route(None, prefix))
        self.announced = wanted
        self._maybe_send_eor()

    def _converged_now(self) -> bool:
        if self._converged:
            return True
        established = [st for st in self.peers.values() if st.state == "established"]
        everyone = bool(self.peers) and all(
            st.state == "established" and st.eor_received for st in self.peers.values()
        )
        timeout = max((st.spec.restart_time for st in self.peers.values()), default=0)
        if everyone or not self.peers or time.monotonic() - self._started > min(timeout, 60):
            self._converged = True
            log.info("bgp.converged peers=%d established=%d", len(self.peers), len(established))
        return self._converged

    # -- route reflection (bgp/reflect.py; RFC 4456, docs/design/route-reflection.md) --------
    def _cluster_id(self) -> IPv4Address | None:
        mine = self._node_infos().get(self.s.node_name)
        return mine.route_reflector_cluster_id if mine is not None else None

    def _loop_rejects(self, st: PeerStatus | None, path: RibPath) -> bool:
        """True when a received path fails the loop checks (our router id as ORIGINATOR_ID,
        our cluster ID in CLUSTER_LIST); counted per peer."""
        if self._loop_ids is None:
            return False
        router_id, cluster_id = self._loop_ids
        why = reflect.rejects(path, router_id=router_id, cluster_id=cluster_id)
        if why and st is not None:
            st.rejected += 1
            log.debug("bgp.loop_rejected peer=%s reason=%s", path.peer, why)
        return bool(why)

    def _reflect_context(self) -> reflect.ReflectContext | None:
        me = self.my_address()
        if me is None:
            return None
        key = (self._roles_changed, me.ip, self._cluster_id(), frozenset(self.announced))
        if self._ctx_cache is not None and self._ctx_cache[0] == key:
            return self._ctx_cache[1]
        roles = {
            addr: reflect.PeerRole(
                ibgp=not st.spec.ebgp,
                client=st.spec.route_reflector_client,
                router_id=st.router_id,
            )
            for addr, st in self.peers.items()
        }
        ctx = reflect.ReflectContext(me.ip, key[2], roles, key[3])
        self._ctx_cache = (key, ctx)
        return ctx

    def _best_path(self, prefix: IPv4Network) -> RibPath | None:
        paths = self.rib.best(prefix)
        return paths[0] if paths else None  # with ECMP the set is sorted: the first is best

    def _send_reflect(self, commands: list[reflect.Command]) -> None:
        for cmd in commands:
            if isinstance(cmd, reflect.Withdraw):
                self._send(api.withdraw_route(cmd.neighbor, cmd.prefix))
                continue
            if isinstance(cmd, reflect.WithdrawAll):
                self._send(api.withdraw_route(None, cmd.prefix))
                continue
            r = cmd.route
            self._send(
                api.announce_route(
                    cmd.neighbor if isinstance(cmd, reflect.Announce) else None,
                    r.prefix,
                    r.next_hop,
                    origin=r.origin,
                    as_path=r.as_path,
                    local_pref=r.local_pref,
                    med=r.med,
                    originator_id=r.originator_id,
                    cluster_list=r.cluster_list,
                )
            )

    def _reflect_to(self, peer: IPv4Address) -> None:
        """A session came up: what we reflect to ``peer`` (before its End-of-RIB). For a
        neighbour in ``_confirmed`` only the differences (ExaBGP re-sends what it kept);
        otherwise everything, after which it is confirmed."""
        ctx = self._reflect_context()
        if ctx is None or (ctx.cluster_id is None and not self.adj_out.count(peer)):
            self._confirmed.add(peer)
            return
        wanted: dict[IPv4Network, reflect.ReflectedRoute] = {}
        pending = self.rib.pending("reflect")  # the next reflection pass sends those to it
        for prefix in self.rib.prefixes():
            if isinstance(prefix, IPv4Network) and prefix not in pending:
                route = reflect.plan_prefix(prefix, self._best_path(prefix), ctx).get(peer)
                if route is not None:
                    wanted[prefix] = route
        if peer in self._confirmed:
            self._send_reflect(self.adj_out.sync_neighbor(peer, wanted, pending))
        else:
            self._send_reflect(self.adj_out.resync(peer, wanted, pending))
            self._confirmed.add(peer)

    def _reconcile_reflection(self) -> None:
        """Reflected routes of changed prefixes; every prefix when the roles, the cluster ID or
        our own prefixes changed. A session coming up is handled by ``_reflect_to``.

        A prefix whose route goes to every neighbour but its originator (the usual case: a
        client's block, to all other clients and reflectors) costs one un-targeted ExaBGP
        command instead of one per neighbour (``reflect.broadcast_plan``): ExaBGP spends
        ~0.5 ms per command choosing its neighbours, 20 s for 200 clients' blocks otherwise
        (docs/bench/rr.md)."""
        ctx = self._reflect_context()
        self._loop_ids = (ctx.router_id, ctx.cluster_id) if ctx is not None else None
        changed = self.rib.changes("reflect")
        if ctx is None or self._writer is None:
            return
        if ctx.cluster_id is None and not self.adj_out.neighbors():
            return  # not a reflector, and nothing reflected earlier to take back
        established = [a for a, st in self.peers.items() if st.state == "established"]
        key = ctx.key()
        prefixes: set[Any] = set(changed)
        if key != self._reflect_key:
            self._reflect_key = key
            prefixes = set(self.rib.prefixes()) | self.adj_out.prefixes()
        for prefix in sorted(p for p in prefixes if isinstance(p, IPv4Network)):
            wanted = reflect.plan_prefix(prefix, self._best_path(prefix), ctx)
            commands = self.adj_out.sync_prefix(
                prefix,
                wanted,
                established,
                everyone=reflect.broadcast_plan(wanted, ctx),
                reached=self._confirmed,
            )
            self._send_reflect(commands)

    def _holding_client_eor(self) -> bool:
        """A reflector holds End-of-RIB to its clients until it has converged itself (every
        peer sent End-of-RIB, or the restart time passed; RFC 4724 4.1): a client keeping our
        routes as stale across our restart must not flush them before we re-learned and
        re-sent them."""
        return self._cluster_id() is not None and not self._converged_now()

    def _eor_deferred(self, peer: IPv4Address) -> bool:
        """While ``_holding_client_eor``: is ``peer`` one whose End-of-RIB waits (a client)?
        Other reflectors get it at once (they may be waiting for ours)."""
        st = self.peers.get(peer)
        return st is not None and st.spec.route_reflector_client and st.spec.peer_cluster_id is None

    def _dedicated_reflector_kernel(self) -> bool:
        """``--route-reflector``: reflect only; no learned route (and no blackhole: no blocks)
        is programmed, and routes of ours left from an earlier role are removed."""
        self.rib.changes()  # drained: nothing consumes them here
        if self._learned is None:
            self._learned = {}
            self.routes.set_routes(())
            return True
        return False

    # -- IP-in-IP: tunl0, its MTU and tunnel address (bgp/tunnel.py, docs/design/ipip.md) ----
    def _reconcile_tunnel(self) -> None:
        """Keep tunl0 usable while a pool needs IP-in-IP; when it changes, the routes waiting for
        it are retried. ``TunnelManager.reconcile`` never raises."""
        tunnel: TunnelManager | None = getattr(self, "_tunnel", None)
        if tunnel is None:
            tunnel = self._tunnel = TunnelManager.for_node(self.s.node_name, self._store_factory)
        mine = self.nodes.get(self.s.node_name)
        if tunnel.reconcile(self._pool_infos(), self.my_address(), mine):
            self.routes.on_interface_change(tunnel.device)

    def _reconcile_kernel(self) -> bool:
        """Update the route table's desired state; True when it may need an apply.

        Incremental: only prefixes whose candidates changed are recomputed, unless an input
        of every route changed (our address, blocks, pools, node addresses, convergence), in
        which case everything is."""
        me = self.my_address()
        if me is None:
            return False
        self.rib.expire_stale(time.monotonic())
        if self.s.route_reflector:
            return self._dedicated_reflector_kernel()
        pools = self._pool_infos()
        node_addrs = frozenset(
            n.ipv4_address.ip for n in self._node_infos().values() if n.ipv4_address
        )
        converged = self._converged_now()
        inputs = (me, frozenset(self.my_blocks), tuple(pools), node_addrs)
        changed = self.rib.changes()
        if inputs != self._kernel_inputs or self._learned is None:
            self._changed.clear()
            self._kernel_inputs = inputs
            self._kernel_converged = converged
            best = {p: self.rib.best(p) for p in self.rib.prefixes()}
            self._learned = dict(
                desired_routes(
                    best,
                    my_address=me,
                    my_blocks=self.my_blocks,
                    pools=pools,
                    node_addresses=node_addrs,
                )
            )
            routes: dict[Any, Route] = dict(self._learned)
            for r in blackhole_routes(self.my_blocks):
                routes[r.dst] = r
            if not converged:
                for dst, r in self._keep.items():
                    routes.setdefault(dst, r)
            else:
                self._keep.clear()
            self.routes.set_routes(routes.values())
            return True
        flipped = converged and not self._kernel_converged
        if flipped:
            # Converged (typically right after the last End-of-RIB, i.e. at the end of a full
            # table load): only the routes kept from before a restart and not learned again
            # go; recomputing every route here would add a full pass to the load's tail.
            self._kernel_converged = True
            for dst, kept in self._keep.items():
                if (
                    dst not in self._learned
                    and dst not in self.my_blocks  # its blackhole
                    and self.routes.desired(dst) == kept
                ):
                    self.routes.remove_route(dst)
            self._keep.clear()
        if changed:
            self._changed |= changed
        if not self._changed:
            return flipped
        if len(self._changed) > KERNEL_BATCH:
            pending = self._changed
            batch = [pending.pop() for _ in range(KERNEL_BATCH)]
            self._work.set()  # the rest in the next pass, while this batch is written
        else:
            batch, self._changed = list(self._changed), set()
        route_for = RouteCalculator(my_address=me, pools=pools, node_addresses=node_addrs).route
        best_of, learned, own = self.rib.best, self._learned, self.my_blocks
        set_route = self.routes.set_route  # (it compares with what it has: no change, no write)
        for prefix in batch:
            paths = best_of(prefix)
            route = None
            if paths and isinstance(prefix, IPv4Network) and prefix not in own:
                route = route_for(prefix, paths)
            if route is None:
                if learned.pop(prefix, None) is not None:
                    self.routes.remove_route(prefix)
            else:
                learned[prefix] = route
                set_route(route)
        return True

    async def _apply_routes(self) -> None:
        """Write the route table's changes to the kernel from the writer thread (ExaBGP's
        messages keep being read meanwhile: its pipe must never fill).

        Pipelined: each pass plans what changed and queues its writes, while the writes of the
        passes before may still be under way (up to ``WRITES_IN_FLIGHT`` batches, in order, one
        writer thread); finished batches are recorded first. A read-back of the kernel, when
        due, waits until nothing is under way and runs with the whole apply in the thread."""
        self._record_writes(wait=False)
        if self.routes.resync_due():
            await self._drain_writes()
            self._log_routes(await self._in_writer(self.routes.apply))
            return
        while len(self._writing) >= WRITES_IN_FLIGHT:
            await asyncio.wait({self._writing[0][1]})
            self._record_writes(wait=False)
        # a periodic read-back only through the branch above: one falling due between that
        # check and this call must not run here, with batches under way
        planned = self.routes.begin_apply(allow_refresh=False)
        if not planned.ops:
            self._log_routes(self.routes.finish_apply(planned, []))
            return
        future = self._in_writer(self.routes.backend.send, planned.prepared)
        future.add_done_callback(lambda _f: self._work.set())  # a pass records it
        self._writing.append((planned, future))

    def _in_writer(self, fn: Callable[..., _T], *args: Any) -> asyncio.Future[_T]:
        """``fn(*args)`` in the writer thread (one thread: writes reach the kernel in order)."""
        return asyncio.get_running_loop().run_in_executor(self._writer_thread, fn, *args)

    def _record_writes(self, *, wait: bool) -> None:
        """Record the finished batches at the head of the queue (in the order planned)."""
        while self._writing and (wait or self._writing[0][1].done()):
            planned, future = self._writing.popleft()
            exc = future.exception() if future.done() else None
            if exc is not None:  # the backend reports failures per op: this is a bug
                log.error("bgp.route_write_failed error=%r", exc)
                err = OpResult(OpStatus.ERROR, f"route writer failed: {exc}")
                results = [err] * len(planned.ops)
                self.routes.invalidate()
            else:
                results = future.result()
            self._log_routes(self.routes.finish_apply(planned, results))

    async def _drain_writes(self) -> None:
        """Wait for every batch under way and record it."""
        if self._writing:
            await asyncio.wait({f for _p, f in self._writing})
            self._record_writes(wait=True)

    def _log_routes(self, res: ApplyResult) -> None:
        self.metrics.observe_routes(res)
        if res.writes:
            log.info(
                "bgp.routes added=%d replaced=%d deleted=%d failed=%d ms=%.1f",
                res.added,
                res.replaced,
                res.deleted,
                len(res.failed),
                res.duration * 1000,
            )

    async def _control(self) -> None:
        while not self._stop.is_set():
            self._heartbeat = time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._work.wait(), 0.5)
            self._work.clear()
            if not self.in_sync:
                continue
            try:
                self._reconcile_exabgp()
                self._reconcile_announcements()
                self._reconcile_reflection()
                self._reconcile_tunnel()
                periodic = time.monotonic() >= self._next_route_check
                if self._reconcile_kernel() or periodic or self._writing:
                    self._next_route_check = time.monotonic() + 5.0
                    if periodic and self.routes.conflicts:
                        # A foreign route (e.g. a static default) holds a destination we want:
                        # it is never replaced; re-read so that ours goes in once it is gone.
                        self.routes.invalidate()
                    await self._apply_routes()
            except Exception:
                log.exception("bgp.reconcile_failed")

    # ------------------------------------------------------------------ status / health
    def status(self) -> dict[str, Any]:
        me = self.my_address()
        tunnel: TunnelManager | None = getattr(self, "_tunnel", None)
        nodes = self._node_infos()
        mine = nodes.get(self.s.node_name)
        cluster_id = mine.route_reflector_cluster_id if mine is not None else None
        role = "mesh"
        if cluster_id is not None:
            role = "reflector"
        elif not self._config().node_to_node_mesh_enabled or any(
            st.spec.peer_cluster_id is not None for st in self.peers.values()
        ):
            role = "client"
        conflicts = self.routes.conflicts  # held by another protocol's route: not ours
        installed = {str(d) for d in self.routes.desired_routes() if d not in conflicts}
        peers = []
        for addr, st in sorted(self.peers.items()):
            got = self.rib.paths(addr)
            peers.append(
                {
                    "peer": str(addr),
                    "type": st.spec.kind,
                    "name": st.spec.name,
                    "state": st.state,
                    "since": st.since,
                    "asn": st.spec.remote_as,
                    "passive": st.spec.passive,
                    "prefixesReceived": len(got),
                    "prefixesInstalled": sum(1 for p in got if str(p) in installed),
                    "prefixesAnnounced": len(self.announced) if st.state == "established" else 0,
                    # route reflection: rr-client (we reflect to it), rr-peer (a fellow
                    # reflector, non-client), reflector (it reflects to us), "" (none)
                    "rrRole": _rr_role(st.spec, cluster_id),
                    "prefixesReflected": self.adj_out.count(addr, st.router_id),
                    "rejectedLoops": st.rejected,
                    # RFC 7606: UPDATEs treated as withdrawn or that reset the session
                    "malformedUpdates": st.malformed,
                }
            )
        return {
            "node": self.s.node_name,
            "address": str(me) if me else None,
            "role": role,
            "clusterID": str(cluster_id) if cluster_id is not None else None,
            "dedicatedReflector": self.s.route_reflector,
            "inSync": self.in_sync,
            "exabgp": {
                "running": self.exabgp.running,
                "restarts": max(0, self.exabgp.restarts - 1),
                "stuckReloads": self.exabgp.stuck_reloads,
                "unreadableLines": self.api_errors,
                "reloadWaiting": self.exabgp.reload_waiting is not None,
            },
            "ipip": tunnel.status() if tunnel is not None else {"needed": False},
            "peers": peers,
        }

    @property
    def ready(self) -> bool:
        """In sync, the configured sessions computed, and every one of them established (none
        configured: ready). Without its own address (Node.spec.bgp) the node is never ready."""
        return (
            self.in_sync
            and self._peers_known
            and all(st.state == "established" for st in self.peers.values())
        )

    @property
    def live(self) -> bool:
        """The event loop answered (whoever asks runs on it) and the control loop turned
        within ``LIVENESS_TIMEOUT``."""
        return time.monotonic() - self._heartbeat < LIVENESS_TIMEOUT

    async def _http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            first = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            path = [*first.decode(errors="replace").split(), "/", "/"][1]
            if path.startswith("/status"):
                code, body = 200, self.status()
            elif path.startswith("/liveness"):
                live = self.live
                code = 200 if live else 503
                body = {"live": live, "controlLoopAge": time.monotonic() - self._heartbeat}
            elif path.startswith("/readiness"):
                code = 200 if self.ready else 503
                body = {
                    "ready": self.ready,
                    "inSync": self.in_sync,
                    "sessions": len(self.peers),
                    "established": sum(st.state == "established" for st in self.peers.values()),
                }
            else:
                code, body = 404, {}
            data = json.dumps(body).encode()
            reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[code]
            writer.write(
                f"HTTP/1.0 {code} {reason}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\n\r\n".encode()
                + data
            )
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    # ------------------------------------------------------------------ run
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._stop.set)
        self.s.state_dir.mkdir(parents=True, exist_ok=True)
        sock_path = self.s.state_dir / "api.sock"
        with contextlib.suppress(FileNotFoundError):
            sock_path.unlink()
        api_server = await asyncio.start_unix_server(self._api_client, path=str(sock_path))
        os.chmod(sock_path, 0o600)
        http = None
        if self.s.health_enabled:
            http = await asyncio.start_server(self._http, self.s.health_host, self.s.health_port)
        metrics_server = None
        if self.s.metrics_port:
            self.metrics.add_process()
            metrics_server = MetricsServer(self.metrics.registry, "tabby-bgp")
            await metrics_server.start(self.s.metrics_host, self.s.metrics_port)
        self.exabgp.kill_leftover()
        # Routes of ours already in the kernel (a restart): keep them until convergence.
        try:
            self._keep = {r.dst: r for r in self._kernel_routes()}
        except Exception as exc:  # a read failure just means nothing is kept
            log.warning("bgp.read_kernel_failed error=%s", exc)
        self.syncer.start()
        # Everything allocated so far (modules, clients) lives as long as the agent: out of the
        # collector's way. A table load allocates ~5 objects per route, almost none in cycles:
        # with the default gen0 threshold (700) the collector ran ~70 times per 10,000 routes,
        # gen2 passes included (measured: ~10 % of the receive path's time).
        gc.freeze()
        gc.set_threshold(GC_GEN0_THRESHOLD, 20, 20)
        # The route writer thread needs the interpreter lock for a moment after each batch the
        # kernel took: with the default 5 ms switch interval it waited up to that long behind
        # the control loop each time (docs/bench/bgp.md).
        sys.setswitchinterval(SWITCH_INTERVAL)
        log.info("bgp.start node=%s state_dir=%s", self.s.node_name, self.s.state_dir)
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [
                    tg.create_task(self._consume(), name="bgp-syncer-consumer"),
                    tg.create_task(self._control(), name="bgp-control"),
                ]
                await self._stop.wait()
                for t in tasks:
                    t.cancel()
        except* Exception as group:
            for failure in group.exceptions:
                log.error("bgp.task_failed error=%r", failure, exc_info=failure)
            self.exit_code = 1
        finally:
            self.syncer.stop()
            # writes still queued are dropped (the routes stay as they are: a restarted agent
            # reads them back), the one under way ends
            self._writer_thread.shutdown(wait=True, cancel_futures=True)
            self.exabgp.stop()
            api_server.close()
            if http is not None:
                http.close()
            if metrics_server is not None:
                metrics_server.close()
        log.info("bgp.stop exit_code=%d", self.exit_code)
        return self.exit_code

    def _kernel_routes(self) -> list[Route]:
        return [
            kr.route
            for kr in self.routes.backend.dump(4, self.routes.table)
            if kr.protocol == PROTO_BGP
        ]


def _rr_role(spec: PeerSpec, my_cluster: IPv4Address | None) -> str:
    """The session's route-reflection role as ``tabbyctl node status`` shows it."""
    if my_cluster is not None and spec.route_reflector_client:
        return "rr-client"
    if spec.peer_cluster_id is not None:
        return "rr-peer" if my_cluster is not None else "reflector"
    return ""
