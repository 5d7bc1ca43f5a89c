"""The syncer against the stateful fake etcd: snapshot, updates, deletes, coalescing, outages,
compaction, resume without loss or duplication, and the asyncio interface.

Every test asserts on what a consumer observes: the state rebuilt from the batches (must equal
the store's), per-key revisions (strictly increasing = nothing delivered twice), and statuses.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from datastore.fake import FakeEtcd
from datastore.kv import KVStore
from datastore.syncer import Batch, Syncer, SyncStatus, Update

P1, P2 = "/calico/v1/a/", "/calico/v1/b/"


class Mirror:
    """A consumer: applies batches, checks per-key revision order, records what it saw."""

    def __init__(self) -> None:
        self.state: dict[str, bytes] = {}
        self.last_rev: dict[str, int] = {}
        self.updates: list[Update] = []
        self.last_batch: Batch | None = None

    def apply(self, batch: Batch) -> None:
        self.last_batch = batch
        for u in batch.updates:
            prev = self.last_rev.get(u.key, 0)
            assert u.revision > prev, f"{u.key}: revision {u.revision} after {prev} (duplicate)"
            self.last_rev[u.key] = u.revision
            self.updates.append(u)
            if u.value is None:
                self.state.pop(u.key, None)
            else:
                self.state[u.key] = u.value

    def in_sync(self) -> bool:
        return self.last_batch is not None and self.last_batch.in_sync


def expected(etcd: FakeEtcd, *prefixes: str) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for p in prefixes:
        out.update(etcd.snapshot(p))
    return out


def converge(
    syncer: Syncer,
    mirror: Mirror,
    want: Callable[[], dict[str, bytes]],
    timeout: float = 10.0,
    max_updates: int | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        mirror.apply(syncer.next_batch(0.05, max_updates))
        if mirror.in_sync() and mirror.state == want():
            # and nothing more in flight
            extra = syncer.next_batch(0.05)
            mirror.apply(extra)
            if not extra.updates and mirror.state == want():
                return
        assert time.monotonic() < deadline, (
            f"no convergence: status={syncer.status} mirror={len(mirror.state)} "
            f"want={len(want())} stats={syncer.stats()}"
        )


def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


@pytest.fixture
def etcd() -> FakeEtcd:
    return FakeEtcd()


@pytest.fixture
def make_syncer(etcd: FakeEtcd) -> Iterator[Callable[..., tuple[Syncer, list[SyncStatus]]]]:
    made: list[Syncer] = []

    def make(
        *prefixes: str, factory: Callable[[], KVStore] | None = None, **kw: object
    ) -> tuple[Syncer, list[SyncStatus]]:
        statuses: list[SyncStatus] = []
        s = Syncer(
            factory or etcd.connect,
            prefixes or (P1, P2),
            backoff_initial=0.01,
            backoff_max=0.05,
            on_status=statuses.append,
            **kw,  # type: ignore[arg-type]
        )
        made.append(s)
        return s, statuses

    yield make
    for s in made:
        s.stop()


def test_initial_snapshot(
    etcd: FakeEtcd, make_syncer: Callable[..., tuple[Syncer, list[SyncStatus]]]
) -> None:
    for i in range(50):
        etcd.put(f"{P1}{i:02d}", b"a%d" % i)
        etcd.put(f"{P2}{i:02d}", b"b%d" % i)
    etcd.put("/calico/v1/other/x", b"not watched")
    syncer, statuses = make_syncer(page_size=7)
    first = syncer.next_batch(0)
    assert first.status is SyncStatus.WAIT_FOR_DATASTORE and not first.in_sync
    syncer.start()
    mirror = Mirror()
    converge(syncer, mirror, lambda: expected(etcd, P1, P2))
    assert statuses == [SyncStatus.RESYNC, SyncStatus.IN_SYNC]
    assert len(mirror.updates) == 100  # each key exactly once
    assert syncer.stats().lists == 2


def test_empty_datastore_reaches_in_sync(
    make_syncer: Callable[..., tuple[Syncer, list[SyncStatus]]],
) -> None:
    syncer, _ = make_syncer()
    syncer.start()
    deadline = time.monotonic() + 5
    while True:
        batch = syncer.next_batch(1.0)
        if batch.in_sync:
            break
        assert time.monotonic() < deadline
    assert batch.updates == [] and batch.status is SyncStatus.IN_SYNC


def test_updates_and_deletes(
    etcd: FakeEtcd, make_syncer: Callable[..., tuple[Syncer, list[SyncStatus]]]
) -> None:
    etcd.put(P1 + "keep", b"1")
    etcd.put(P1 + "gone", b"1")
    syncer, statuses = make_syncer()
    syncer.start()
    mirror = Mirror()
    converge(syncer, mirror, lambda: expected(etcd, P1, P2))
    r_new = etcd.put(P2 + "new", b"n")
    r_del = etcd.delete(P1 + "gone") and etcd.revision
    r_upd = etcd.put(P1 + "keep", b"2")
    etcd.put("/elsewhere", b"x")
    mirror.updates.clear()
    converge(syncer, mirror, lambda: expected(etcd, P1, P2))
    # Order is by revision within a prefix; across prefixes (separate watches) it is not fixed.
    assert sorted(mirror.updates, key=lambda u: u.revision) == [
        Update(P2 + "new", b"n", r_new),
        Update(P1 + "gone", None, r_del),
        Update(P1 + "keep", b"2", r_upd),
    ]
    assert statuses == [SyncStatus.RESYNC, SyncStatus.IN_SYNC]


def test_coalescing_keeps_newest_value_in_first_arrival_order(
    etcd: FakeEtcd, make_syncer: Callable[..., tuple[Syncer, list[SyncStatus]]]
) -> None:
    syncer, _ = make_syncer()
    syncer.start()
    mirror = Mirror()
    converge(syncer, mirror, dict)
    etcd.put(P1 + "a", b"0")
    etcd.put(P1 + "b", b"0")
    for i in range(1, 100):
        etcd.put(P1 + "a", b"%d" % i)
    etcd.delete(P1 + "b")
    last = etcd.put(P1 + "c", b"c")
    wait_for(lambda: syncer.stats().last_revision == last)
    batch = syncer.next_batch(0)
    assert [(u.key, u.value) for u in batch.updates] == [
        (P1 + "a", b"99"),
        (P1 + "b", None),
        (P1 + "c", b"c"),
    ]
    assert batch.in_sync
    stats = syncer.stats()
    assert stats.coalesced == 100 and stats.emitted == 103


def test_in_sync_only_when_the_snapshot_is_delivered(
    etcd: FakeEtcd, make_syncer: Callable[..., tuple[Syncer, list[SyncStatus]]]
) -> None:
    for i in range(10):
        etcd.put(f"{P1}{i}", b"")
    syncer, _ = make_syncer()
    syncer.start()
    wait_for(lambda: syncer.status is SyncStatus.IN_SYNC)
    etcd.put(P2 + "after", b"")  # arrives after the snapshot: not needed for in_sync
    wait_for(lambda: syncer.stats().emitted == 11)
    flags = []
    for _ in range(4):
        batch = syncer.next_batch(1.0, max_updates=3)
        flags.append((len(batch.updates), batch.in_sync))
    assert flags == [(3, False), (3, False), (3, False), (2, True)]


def test_outage_resumes_without_loss_or_duplication(
    etcd: FakeEtcd, make_syncer: Callable[..., tuple[Syncer, list[SyncStatus]]]
) -> None:
    for i in range(20):
        etcd.put(f"{P1}{i}", b"v0")
    syncer, statuses = make_syncer()
    syncer.start()
    mirror = Mirror()
    converge(syncer, mirror, lambda: expected(etcd, P1, P2))
    etcd.set_available(False)
    wait_for(lambda: etcd.connections >= 3)  # the syncer is retrying
    # Other writers still reach etcd; the syncer does not see this yet.
    changes = 0
    for i in range(0, 20, 2):
        etcd.put(f"{P1}{i}", b"v1")
        changes += 1
    etcd.delete(f"{P1}1")
    etcd.put(P2 + "new", b"n")
    before = syncer.next_batch(0.2)
    assert before.updates == [] and before.in_sync  # nothing destructive, last state kept
    assert syncer.status is SyncStatus.IN_SYNC
    mirror.updates.clear()
    etcd.set_available(True)
    converge(syncer, mirror, lambda: expected(etcd, P1, P2))
    assert len(mirror.updates) == changes + 2  # exactly the missed changes, once each
    assert statuses == [SyncStatus.RESYNC, SyncStatus.IN_SYNC]  # no re-list was needed
    stats = syncer.stats()
    assert stats.lists == 2 and stats.reconnects >= 2 and stats.compactions == 0


def test_compaction_during_outage_relists_and_synthesises_deletes(
    etcd: FakeEtcd, make_syncer: Callable[..., tuple[Syncer, list[SyncStatus]]]
) -> None:
    for k in "abc":
        etcd.put(P1 + k, b"1")
    etcd.put(P2 + "x", b"1")
    syncer, statuses = make_syncer()
    syncer.start()
    mirror = Mirror()
    converge(syncer, mirror, lambda: expected(etcd, P1, P2))
    etcd.set_available(False)
    wait_for(lambda: etcd.connections >= 2)
    etcd.delete(P1 + "a")
    r_b = etcd.put(P1 + "b", b"2")
    r_d = etcd.put(P1 + "d", b"1")
    etcd.put(P1 + "tmp", b"1")
    etcd.delete(P1 + "tmp")  # created and deleted while away: never reported
    etcd.compact(etcd.revision)
    mirror.updates.clear()
    etcd.set_available(True)
    converge(syncer, mirror, lambda: expected(etcd, P1, P2))
    got = {u.key: u for u in mirror.updates}
    assert set(got) == {P1 + "a", P1 + "b", P1 + "d"}  # not c, not x: unchanged
    assert got[P1 + "a"].value is None and got[P1 + "a"].revision == etcd.revision
    assert (got[P1 + "b"].value, got[P1 + "b"].revision) == (b"2", r_b)
    assert got[P1 + "d"].revision == r_d
    assert statuses == [
        SyncStatus.RESYNC,
        SyncStatus.IN_SYNC,
        SyncStatus.RESYNC,
        SyncStatus.IN_SYNC,
    ]
    assert syncer.stats().compactions >= 1


def test_datastore_down_at_start(
    etcd: FakeEtcd, make_syncer: Callable[..., tuple[Syncer, list[SyncStatus]]]
) -> None:
    etcd.put(P1 + "a", b"1")
    etcd.set_available(False)
    syncer, statuses = make_syncer()
    syncer.start()
    wait_for(lambda: etcd.connections >= 3)
    assert syncer.status is SyncStatus.WAIT_FOR_DATASTORE
    assert statuses == []
    etcd.put(P1 + "b", b"1")
    etcd.set_available(True)
    mirror = Mirror()
    converge(syncer, mirror, lambda: expected(etcd, P1, P2))
    assert statuses == [SyncStatus.RESYNC, SyncStatus.IN_SYNC]


def test_backoff_grows_and_is_capped(etcd: FakeEtcd) -> None:
    etcd.set_available(False)
    syncer = Syncer(etcd.connect, [P1], backoff_initial=0.02, backoff_max=0.1)
    syncer.start()
    try:
        time.sleep(1.0)
        attempts = etcd.connections
        # 0.02, 0.04, 0.08, then 0.1 each (+-20%): about 10-13 in one second; without backoff
        # it would be thousands, without the cap about 6.
        assert 5 <= attempts <= 20, attempts
    finally:
        syncer.stop()


def test_factory_errors_do_not_kill_the_syncer(etcd: FakeEtcd) -> None:
    calls = 0

    def flaky() -> KVStore:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise RuntimeError("boom")
        return etcd.connect()

    etcd.put(P1 + "a", b"1")
    syncer = Syncer(flaky, [P1], backoff_initial=0.01, backoff_max=0.02)
    syncer.start()
    try:
        mirror = Mirror()
        converge(syncer, mirror, lambda: expected(etcd, P1))
    finally:
        syncer.stop()


def test_stop_and_start_resume_from_last_revision(
    etcd: FakeEtcd, make_syncer: Callable[..., tuple[Syncer, list[SyncStatus]]]
) -> None:
    etcd.put(P1 + "a", b"1")
    syncer, statuses = make_syncer()
    syncer.start()
    mirror = Mirror()
    converge(syncer, mirror, lambda: expected(etcd, P1, P2))
    syncer.stop()
    assert not [t for t in threading.enumerate() if t.name == syncer.name]
    etcd.put(P1 + "a", b"2")
    etcd.put(P2 + "b", b"1")
    syncer.start()
    mirror.updates.clear()
    converge(syncer, mirror, lambda: expected(etcd, P1, P2))
    assert len(mirror.updates) == 2 and syncer.stats().lists == 2
    assert statuses == [SyncStatus.RESYNC, SyncStatus.IN_SYNC]


def test_overlapping_prefixes_are_refused(etcd: FakeEtcd) -> None:
    with pytest.raises(ValueError, match="overlap"):
        Syncer(etcd.connect, ["/calico/", "/calico/v1/"])
    with pytest.raises(ValueError):
        Syncer(etcd.connect, [])


def test_next_batch_async_is_cancellation_safe(
    etcd: FakeEtcd, make_syncer: Callable[..., tuple[Syncer, list[SyncStatus]]]
) -> None:
    syncer, _ = make_syncer()
    syncer.start()

    async def main() -> list[Update]:
        seen: list[Update] = []
        while not (batch := await syncer.next_batch_async(5.0)).in_sync:
            seen.extend(batch.updates)
        # A waiter that is cancelled must not swallow updates.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(syncer.next_batch_async(), 0.05)
        etcd.put(P1 + "x", b"1")
        batch = await syncer.next_batch_async(5.0)
        seen.extend(batch.updates)
        empty = await syncer.next_batch_async(0.05)
        assert empty.updates == [] and empty.in_sync
        return seen

    seen = asyncio.run(main())
    assert [(u.key, u.value) for u in seen] == [(P1 + "x", b"1")]


@pytest.mark.parametrize("seed", range(8))
def test_random_histories_converge(
    seed: int, etcd: FakeEtcd, make_syncer: Callable[..., tuple[Syncer, list[SyncStatus]]]
) -> None:
    """Random writes, deletes, outages and compactions, with a consumer that reads at random
    moments and sizes: the consumer always ends with the store's state, never a duplicate."""
    rng = random.Random(seed)
    keys = [f"{p}{i}" for p in (P1, P2) for i in range(15)]
    for k in rng.sample(keys, 10):
        etcd.put(k, b"init")
    syncer, statuses = make_syncer(page_size=4)
    syncer.start()
    mirror = Mirror()
    for step in range(300):
        r = rng.random()
        if r < 0.55:
            etcd.put(rng.choice(keys), b"%d" % step)
        elif r < 0.75:
            etcd.delete(rng.choice(keys))
        elif r < 0.80:
            etcd.set_available(not etcd.available)
        elif r < 0.84 and etcd.revision > etcd.compacted_revision:
            etcd.compact(rng.randint(etcd.compacted_revision + 1, etcd.revision))
        elif r < 0.95:
            mirror.apply(syncer.next_batch(0, max_updates=rng.choice([None, 1, 5])))
        else:
            time.sleep(0.002)
    etcd.set_available(True)
    converge(syncer, mirror, lambda: expected(etcd, P1, P2))
    assert statuses[-1] is SyncStatus.IN_SYNC
    # Statuses alternate RESYNC/IN_SYNC: an outage alone never shows up here.
    assert statuses == [SyncStatus.RESYNC, SyncStatus.IN_SYNC] * (len(statuses) // 2)
