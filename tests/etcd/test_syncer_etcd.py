"""The syncer against a real etcd: snapshot and live updates, a network cut (through a TCP proxy
the test controls) with and without compaction, an etcd crash/restart mid-watch, and 10,000
writes in flight. The consumer's rebuilt state must equal etcd's; no update may repeat."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from datastore.etcd import EtcdConfig, EtcdKVStore
from datastore.kv import DeleteOp, KVStore, PutOp
from datastore.syncer import Syncer, SyncStatus
from lab.etcd import EtcdServer
from tests.unit.test_syncer import Mirror

pytestmark = pytest.mark.etcd
log = logging.getLogger(__name__)

P1, P2 = "/calico/resources/v3/projectcalico.org/workloadendpoints/", "/calico/ipam/v2/"


def connect(endpoint: str) -> EtcdKVStore:
    return EtcdKVStore(EtcdConfig(endpoints=(endpoint,), timeout=5.0))


def etcd_state(store: KVStore, *prefixes: str) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for p in prefixes:
        kvs, _ = store.list(p)
        out.update({kv.key: kv.value for kv in kvs})
    return out


def converge(syncer: Syncer, mirror: Mirror, store: KVStore, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    want = etcd_state(store, P1, P2)
    while True:
        mirror.apply(syncer.next_batch(0.1))
        if mirror.in_sync() and mirror.state == want:
            extra = syncer.next_batch(0.2)
            mirror.apply(extra)
            if not extra.updates:
                assert mirror.state == etcd_state(store, P1, P2)
                return
        assert time.monotonic() < deadline, (
            f"no convergence: status={syncer.status} mirror={len(mirror.state)} "
            f"want={len(want)} stats={syncer.stats()}"
        )


class TcpProxy:
    """127.0.0.1:port -> target; ``cut()`` drops every connection and refuses new ones (a
    network partition between the syncer and etcd while other clients still write)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self._open = True
        self._closed = False
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self._open:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._socks.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def cut(self) -> None:
        self._open = False
        with self._lock:
            socks, self._socks = self._socks, set()
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def restore(self) -> None:
        self._open = True

    def close(self) -> None:
        self._closed = True
        self.cut()
        self.listener.close()


@pytest.fixture
def run_syncer() -> Iterator[Callable[[str], tuple[Syncer, list[SyncStatus]]]]:
    made: list[Syncer] = []

    def make(endpoint: str) -> tuple[Syncer, list[SyncStatus]]:
        statuses: list[SyncStatus] = []
        s = Syncer(
            lambda: connect(endpoint),
            [P1, P2],
            page_size=100,
            backoff_initial=0.05,
            backoff_max=0.5,
            on_status=statuses.append,
        )
        made.append(s)
        s.start()
        return s, statuses

    yield make
    for s in made:
        s.stop()


def put_many(store: KVStore, items: list[tuple[str, bytes]]) -> None:
    for i in range(0, len(items), 100):
        assert store.txn([], [PutOp(k, v) for k, v in items[i : i + 100]])


def test_snapshot_then_live_updates(
    etcd_endpoint: str, run_syncer: Callable[[str], tuple[Syncer, list[SyncStatus]]]
) -> None:
    store = connect(etcd_endpoint)
    put_many(store, [(f"{p}k{i:03d}", b"v0") for p in (P1, P2) for i in range(150)])
    store.put("/calico/other", b"ignored")
    syncer, statuses = run_syncer(etcd_endpoint)
    mirror = Mirror()
    converge(syncer, mirror, store)
    assert len(mirror.updates) == 300
    for i in range(0, 150, 3):
        store.put(f"{P1}k{i:03d}", b"v1")
        store.delete(f"{P2}k{i:03d}")
    store.put(P2 + "new", b"n")
    mirror.updates.clear()
    converge(syncer, mirror, store)
    assert len(mirror.updates) == 101
    assert statuses == [SyncStatus.RESYNC, SyncStatus.IN_SYNC]
    store.close()


@pytest.mark.parametrize("compact", [False, True], ids=["resume", "compacted"])
def test_network_cut(
    compact: bool,
    private_etcd: EtcdServer,
    run_syncer: Callable[[str], tuple[Syncer, list[SyncStatus]]],
) -> None:
    proxy = TcpProxy(private_etcd.client_port)
    store = connect(private_etcd.endpoint)  # the test's own path, not through the proxy
    try:
        put_many(store, [(f"{P1}k{i:02d}", b"v0") for i in range(30)])
        store.put(P2 + "block", b"b0")
        syncer, statuses = run_syncer(proxy.endpoint)
        mirror = Mirror()
        converge(syncer, mirror, store)
        proxy.cut()
        time.sleep(0.3)  # the syncer notices and starts retrying
        changed = {f"{P1}k{i:02d}" for i in range(0, 30, 3)}
        for k in sorted(changed):
            store.put(k, b"v1")
        for i in (1, 2):
            store.delete(f"{P1}k{i:02d}")
        store.put(f"{P1}tmp", b"x")
        store.delete(f"{P1}tmp")
        last = store.put(P2 + "new", b"n")
        if compact:
            store.compact(last)
        gone = syncer.next_batch(0.3)
        assert gone.updates == [] and gone.in_sync  # last known state kept during the cut
        mirror.updates.clear()
        proxy.restore()
        converge(syncer, mirror, store)
        want = {*changed, f"{P1}k01", f"{P1}k02", P2 + "new"}
        if not compact:
            # Replayed from the watch: the put and delete of tmp coalesce into one delete.
            # Re-listed after compaction: tmp never existed as far as the consumer knows.
            want.add(f"{P1}tmp")
        assert sorted(u.key for u in mirror.updates) == sorted(want)
        stats = syncer.stats()
        if compact:
            assert stats.compactions >= 1
            assert statuses == [SyncStatus.RESYNC, SyncStatus.IN_SYNC] * 2
        else:
            assert stats.compactions == 0 and stats.lists == 2
            assert statuses == [SyncStatus.RESYNC, SyncStatus.IN_SYNC]
        assert stats.reconnects >= 1
    finally:
        store.close()
        proxy.close()


@pytest.mark.parametrize("how", ["kill", "restart", "kill-unseen"])
def test_etcd_restart_mid_watch(
    how: str,
    private_etcd: EtcdServer,
    run_syncer: Callable[[str], tuple[Syncer, list[SyncStatus]]],
) -> None:
    """etcd crashes (SIGKILL) or restarts (SIGTERM) under a live watch. A burst right before it
    may or may not have reached the syncer; with ``kill-unseen`` the syncer's path is cut first,
    so those writes were certainly not seen. Writes right after the restart too."""
    proxy = TcpProxy(private_etcd.client_port)
    store = connect(private_etcd.endpoint)
    try:
        put_many(store, [(f"{P1}k{i:04d}", b"v0") for i in range(200)])
        syncer, statuses = run_syncer(proxy.endpoint)
        mirror = Mirror()
        converge(syncer, mirror, store)
        if how == "kill-unseen":
            proxy.cut()
        put_many(store, [(f"{P1}k{i:04d}", b"v1") for i in range(0, 2000)])
        assert store.txn([], [DeleteOp(f"{P1}k{i:04d}") for i in range(0, 100)])
        for i in range(100, 150):
            store.put(f"{P1}k{i:04d}", b"v2")
        etcd_revision = store.put(P2 + "before", b"x")
        seen_before = syncer.stats().last_revision
        store.close()
        if how == "restart":
            private_etcd.restart()
        else:
            private_etcd.kill()
            private_etcd.start()
        log.info("restart how=%s seen_before=%d etcd_revision=%d", how, seen_before, etcd_revision)
        if how == "kill-unseen":
            assert seen_before < etcd_revision - 50
        store = connect(private_etcd.endpoint)
        store.put(P2 + "after", b"y")
        store.delete(f"{P1}k0150")
        proxy.restore()
        converge(syncer, mirror, store)
        assert statuses == [SyncStatus.RESYNC, SyncStatus.IN_SYNC]  # resumed, no re-list
        stats = syncer.stats()
        assert stats.lists == 2 and stats.reconnects >= 1
    finally:
        store.close()
        proxy.close()


def test_ten_thousand_writes_in_flight(
    etcd_endpoint: str, run_syncer: Callable[[str], tuple[Syncer, list[SyncStatus]]]
) -> None:
    """10,000 writes (2,000 keys x 5 rounds, the last deleting every 4th key) while the consumer
    reads nothing: the syncer holds one pending update per key, and the consumer gets exactly
    the final state in one batch."""
    store = connect(etcd_endpoint)
    syncer, _ = run_syncer(etcd_endpoint)
    mirror = Mirror()
    converge(syncer, mirror, store)
    t0 = time.monotonic()
    for rnd in range(5):
        for start in range(0, 2000, 100):
            ops: list[PutOp | DeleteOp] = []
            for i in range(start, start + 100):
                key = f"{P1 if i % 2 else P2}k{i:04d}"
                if rnd == 4 and i % 4 == 0:
                    ops.append(DeleteOp(key))
                else:
                    ops.append(PutOp(key, b"r%d" % rnd))
            assert store.txn([], ops)
    deadline = time.monotonic() + 20
    # Each prefix has its own watch: wait for both to catch up (all events emitted).
    while syncer.stats().emitted < 10_000:
        assert time.monotonic() < deadline, syncer.stats()
        time.sleep(0.01)
    time.sleep(0.2)  # anything extra (a duplicate) would show up in ``emitted`` now
    log.info("ten_thousand writes+seen s=%.2f", time.monotonic() - t0)
    batch = syncer.next_batch(0)
    mirror.apply(batch)
    assert len(batch.updates) == 2000 and batch.in_sync
    stats = syncer.stats()
    log.info("ten_thousand emitted=%d coalesced=%d", stats.emitted, stats.coalesced)
    assert stats.emitted == 10_000  # every event seen exactly once
    assert stats.coalesced == 8_000  # four of each key's five updates replaced in flight
    assert mirror.state == etcd_state(store, P1, P2)
    assert len(mirror.state) == 1500
    assert set(mirror.state.values()) == {b"r4"}
    converge(syncer, mirror, store)
    store.close()
