"""The ``KVStore`` contract, and the fake's own outage model.

``KVContract`` holds the behaviour every ``KVStore`` must have; it runs here against the fake
(``FakeEtcd`` directly and a ``FakeKVStore`` client) and in tests/etcd against a real etcd, so
the fake cannot drift from etcd unnoticed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from datastore.fake import FakeEtcd
from datastore.kv import (
    MAX_TXN_OPS,
    AlreadyExistsError,
    CompactedError,
    Compare,
    ConflictError,
    DatastoreError,
    DeleteOp,
    EventKind,
    KVStore,
    NotFoundError,
    PutOp,
    UnavailableError,
    Watch,
    WatchEvent,
    prefix_range_end,
)


def collect(w: Watch, n: int, timeout: float = 5.0) -> list[WatchEvent]:
    """Poll ``w`` until ``n`` events arrived (or fail after ``timeout``)."""
    out: list[WatchEvent] = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"only {len(out)} of {n} events: {out}"
        got = w.poll(remaining)
        assert got is not None, "watch ended"
        out.extend(got)
    return out


def quiet(w: Watch, wait: float = 0.3) -> list[WatchEvent]:
    """Whatever else arrives within ``wait`` seconds (expected: nothing)."""
    got = w.poll(wait)
    assert got is not None
    return got


class KVContract:
    """Contract tests; subclasses provide a ``store`` fixture (an empty store)."""

    def test_get_put_revisions(self, store: KVStore) -> None:
        assert store.get("/k") is None
        r1 = store.put("/k", b"one")
        kv = store.get("/k")
        assert kv is not None
        assert (kv.key, kv.value, kv.mod_revision, kv.create_revision) == ("/k", b"one", r1, r1)
        r2 = store.put("/k", b"two")
        assert r2 == r1 + 1
        kv = store.get("/k")
        assert kv is not None
        assert (kv.value, kv.mod_revision, kv.create_revision) == (b"two", r2, r1)
        assert store.put("/other", b"") == r2 + 1
        other = store.get("/other")
        assert other is not None and other.value == b""

    def test_create(self, store: KVStore) -> None:
        rev = store.create("/c", b"v")
        kv = store.get("/c")
        assert kv is not None and kv.mod_revision == rev == kv.create_revision
        with pytest.raises(AlreadyExistsError):
            store.create("/c", b"w")
        kv2 = store.get("/c")
        assert kv2 is not None and kv2.value == b"v"
        assert store.delete("/c")
        rev2 = store.create("/c", b"again")
        kv3 = store.get("/c")
        assert kv3 is not None and kv3.create_revision == rev2 > rev

    def test_update_is_compare_and_swap(self, store: KVStore) -> None:
        rev = store.put("/u", b"1")
        rev2 = store.update("/u", b"2", rev)
        assert rev2 == rev + 1
        with pytest.raises(ConflictError) as info:
            store.update("/u", b"3", rev)
        assert not isinstance(info.value, NotFoundError)
        kv = store.get("/u")
        assert kv is not None and kv.value == b"2"
        with pytest.raises(NotFoundError):
            store.update("/absent", b"x", rev2)
        assert store.get("/absent") is None

    def test_delete(self, store: KVStore) -> None:
        rev = store.put("/d", b"x")
        assert store.delete("/d") is True
        assert store.get("/d") is None
        assert store.delete("/d") is False
        # A delete of an absent key writes nothing: the next write is only one revision later.
        assert store.put("/e", b"") == rev + 2

    def test_delete_compare_and_swap(self, store: KVStore) -> None:
        rev = store.put("/d", b"x")
        store.put("/d", b"y")
        with pytest.raises(ConflictError):
            store.delete("/d", expected_mod_revision=rev)
        assert store.get("/d") is not None
        current = store.get("/d")
        assert current is not None
        assert store.delete("/d", expected_mod_revision=current.mod_revision) is True
        with pytest.raises(NotFoundError):
            store.delete("/d", expected_mod_revision=current.mod_revision)

    def test_list_prefix_order_and_pagination(self, store: KVStore) -> None:
        keys = [f"/p/{i:03d}" for i in range(23)]
        for k in reversed(keys):
            store.put(k, k.encode())
        store.put("/pq", b"not under /p/")
        store.put("/o", b"before")
        last = store.put("/p0", b"not under /p/ either")
        for page_size in (1, 5, 23, 1000):
            kvs, rev = store.list("/p/", page_size=page_size)
            assert [kv.key for kv in kvs] == keys
            assert all(kv.value == kv.key.encode() for kv in kvs)
            assert rev == last
        kvs, _ = store.list("/nothing/")
        assert kvs == []

    def test_list_at_past_revision(self, store: KVStore) -> None:
        store.put("/h/a", b"a1")
        r_b = store.put("/h/b", b"b1")
        store.put("/h/a", b"a2")
        store.delete("/h/b")
        store.put("/h/c", b"c1")
        kvs, rev = store.list("/h/", page_size=1, revision=r_b)
        assert rev == r_b
        assert [(kv.key, kv.value) for kv in kvs] == [("/h/a", b"a1"), ("/h/b", b"b1")]
        now, _ = store.list("/h/")
        assert [(kv.key, kv.value) for kv in now] == [("/h/a", b"a2"), ("/h/c", b"c1")]

    def test_list_compacted_and_future(self, store: KVStore) -> None:
        r1 = store.put("/x/a", b"1")
        r2 = store.put("/x/a", b"2")
        store.compact(r2)
        with pytest.raises(CompactedError):
            store.list("/x/", revision=r1)
        kvs, rev = store.list("/x/", revision=r2)  # the compaction revision itself is readable
        assert rev == r2 and [kv.value for kv in kvs] == [b"2"]
        with pytest.raises(DatastoreError) as info:
            store.list("/x/", revision=r2 + 100)
        assert not isinstance(info.value, CompactedError)

    def test_txn(self, store: KVStore) -> None:
        r_a = store.put("/t/a", b"a")
        store.put("/t/gone", b"g")
        ok = store.txn(
            [Compare("/t/a", r_a), Compare("/t/new", 0)],
            [PutOp("/t/a", b"a2"), PutOp("/t/new", b"n"), DeleteOp("/t/gone")],
        )
        assert ok
        a, new = store.get("/t/a"), store.get("/t/new")
        assert a is not None and new is not None
        assert a.value == b"a2" and new.value == b"n"
        assert a.mod_revision == new.mod_revision  # one revision for the whole transaction
        assert store.get("/t/gone") is None
        # Failing compares: nothing is applied and no revision is used.
        assert not store.txn([Compare("/t/a", r_a)], [PutOp("/t/b", b"b")])
        assert not store.txn([Compare("/t/new", 0)], [PutOp("/t/b", b"b")])
        assert store.get("/t/b") is None
        assert store.put("/t/probe", b"") == a.mod_revision + 1

    def test_txn_limits(self, store: KVStore) -> None:
        with pytest.raises(DatastoreError):
            store.txn([], [PutOp("/dup", b"1"), DeleteOp("/dup")])
        with pytest.raises(DatastoreError):
            store.txn([], [PutOp(f"/many/{i}", b"") for i in range(MAX_TXN_OPS + 1)])
        assert store.txn([], [PutOp(f"/many/{i}", b"") for i in range(MAX_TXN_OPS)])
        kvs, _ = store.list("/many/")
        assert len(kvs) == MAX_TXN_OPS

    def test_watch_after_list_sees_exactly_later_changes(self, store: KVStore) -> None:
        store.put("/w/before", b"b")
        _, rev = store.list("/w/")
        w = store.watch("/w/", rev + 1)
        try:
            r1 = store.put("/w/a", b"1")
            store.put("/elsewhere", b"x")
            r2 = store.put("/w/a", b"2")
            r3 = store.put("/w/before", b"b2")
            r4 = store.txn([], [DeleteOp("/w/a"), PutOp("/w/t", b"t")]) and store.put("/w/z", b"")
            events = collect(w, 6)
            assert [(e.kind, e.key, e.value, e.mod_revision) for e in events] == [
                (EventKind.PUT, "/w/a", b"1", r1),
                (EventKind.PUT, "/w/a", b"2", r2),
                (EventKind.PUT, "/w/before", b"b2", r3),
                (EventKind.DELETE, "/w/a", b"", r3 + 1),
                (EventKind.PUT, "/w/t", b"t", r3 + 1),
                (EventKind.PUT, "/w/z", b"", r4),
            ]
            assert quiet(w) == []
        finally:
            w.cancel()
        assert w.poll(1.0) is None

    def test_watch_replays_history(self, store: KVStore) -> None:
        r1 = store.put("/r/a", b"1")
        store.put("/r/b", b"2")
        store.delete("/r/a")
        w = store.watch("/r/", r1 + 1)
        try:
            events = collect(w, 2)
            assert [(e.kind, e.key) for e in events] == [
                (EventKind.PUT, "/r/b"),
                (EventKind.DELETE, "/r/a"),
            ]
        finally:
            w.cancel()

    def test_watch_wakeup_and_iteration(self, store: KVStore) -> None:
        wakeup = threading.Event()
        w = store.watch("/i/", 0, wakeup)
        seen: list[str] = []

        def consume() -> None:
            for ev in w:
                seen.append(ev.key)

        t = threading.Thread(target=consume, daemon=True)
        t.start()
        wakeup.clear()
        store.put("/i/1", b"")
        assert wakeup.wait(5.0)
        store.put("/i/2", b"")
        deadline = time.monotonic() + 5
        while len(seen) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        w.cancel()
        t.join(5.0)
        assert not t.is_alive(), "iteration did not end after cancel()"
        assert seen == ["/i/1", "/i/2"]

    def test_watch_from_compacted_revision(self, store: KVStore) -> None:
        r1 = store.put("/cw/a", b"1")
        store.put("/cw/a", b"2")
        r3 = store.put("/cw/a", b"3")
        store.compact(r3)
        with pytest.raises(CompactedError) as info:
            w = store.watch("/cw/", r1)
            try:
                collect(w, 1)
            finally:
                w.cancel()
        assert info.value.compacted_revision == r3
        # From the compaction revision itself: allowed.
        w = store.watch("/cw/", r3)
        try:
            assert [e.value for e in collect(w, 1)] == [b"3"]
        finally:
            w.cancel()

    def test_caught_up_watch_survives_compaction(self, store: KVStore) -> None:
        w = store.watch("/s/", 0)
        try:
            store.put("/s/a", b"1")
            r2 = store.put("/s/a", b"2")
            assert len(collect(w, 2)) == 2
            store.compact(r2)
            r3 = store.put("/s/a", b"3")
            assert [e.mod_revision for e in collect(w, 1)] == [r3]
        finally:
            w.cancel()

    def test_compact_errors(self, store: KVStore) -> None:
        rev = store.put("/k", b"")
        store.put("/k", b"")
        store.compact(rev)
        with pytest.raises(CompactedError):
            store.compact(rev)
        with pytest.raises(DatastoreError) as info:
            store.compact(rev + 1000)
        assert not isinstance(info.value, CompactedError)


class TestFakeEtcdContract(KVContract):
    @pytest.fixture
    def store(self) -> FakeEtcd:
        return FakeEtcd()


class TestFakeClientContract(KVContract):
    @pytest.fixture
    def store(self) -> Iterator[KVStore]:
        client = FakeEtcd().connect()
        yield client
        client.close()


# --- the fake's outage model ------------------------------------------------------------------


def test_outage_breaks_clients_not_direct_access() -> None:
    etcd = FakeEtcd()
    client = etcd.connect()
    rev = client.put("/a", b"1")
    w = client.watch("/", rev + 1)
    etcd.set_available(False)
    for call in (
        lambda: client.get("/a"),
        lambda: client.put("/a", b"2"),
        lambda: client.list("/"),
        lambda: client.watch("/", 0),
    ):
        with pytest.raises(UnavailableError):
            call()
    with pytest.raises(UnavailableError):
        w.poll(0)
    # Others still reach etcd (a partitioned agent, not a dead cluster).
    rev2 = etcd.put("/a", b"2")
    etcd.set_available(True)
    with pytest.raises(UnavailableError):
        w.poll(0)  # a broken watch stays broken
    assert client.get("/a") is not None
    w2 = client.watch("/", rev + 1)
    assert [e.mod_revision for e in collect(w2, 1)] == [rev2]
    client.close()
    with pytest.raises(UnavailableError):
        client.get("/a")
    with pytest.raises(UnavailableError):
        w2.poll(0)
    assert etcd.connections == 1


def test_outage_wakes_a_waiting_poll() -> None:
    etcd = FakeEtcd()
    w = etcd.connect().watch("/", 0)
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            w.poll(10.0)
        except UnavailableError as exc:
            errors.append(exc)

    t = threading.Thread(target=wait, daemon=True)
    t.start()
    time.sleep(0.05)
    etcd.set_available(False)
    t.join(5.0)
    assert len(errors) == 1


def test_prefix_range_end() -> None:
    assert prefix_range_end(b"/a/") == b"/a0"
    assert prefix_range_end(b"a\xff") == b"b"
    assert prefix_range_end(b"") == b"\0"
    assert prefix_range_end(b"\xff\xff") == b"\0"
