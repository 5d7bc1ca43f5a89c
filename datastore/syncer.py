"""The datastore syncer: a bytes-level, coalescing mirror of some etcd prefixes.

Role (ARCHITECTURE.md, "Data flow (felix)" step 1): list each prefix once, then watch it from
the next revision; hand the consumer a stream of ``Update(key, value | None, revision)`` batches
plus a ``SyncStatus``. Decoding into typed resources happens above, in the codec.
Inputs: ``store_factory`` (a fresh ``KVStore`` per connection attempt) and the prefixes.
Outputs: ``Batch``es from ``next_batch(timeout)`` / ``await next_batch_async(timeout)``.

Invariants:
- Memory: per key only its last seen ``mod_revision`` is kept (no values), plus at most ONE
  pending ``Update`` per key (coalescing: a newer value replaces the pending one in place, so
  keys keep their first-arrival order). That is the back-pressure: a slow consumer sees fewer,
  newer updates, never an unbounded queue.
- Per key, the revisions handed out are strictly increasing: no update is delivered twice.
  Within a prefix, keys first arrive in revision order; across prefixes (one watch each) the
  interleaving is not defined.
- Nothing is lost: after an outage the watch resumes at (last seen revision + 1) of each prefix.
  If that revision was compacted meanwhile, the prefix is re-listed and the difference emitted:
  updates only for keys whose ``mod_revision`` changed, deletes (``value=None``) for keys that
  vanished. The consumer's view after applying all batches equals the store's state.
- Status: ``WAIT_FOR_DATASTORE`` until the first successful list starts, ``RESYNC`` while
  listing, ``IN_SYNC`` once every prefix is loaded. An outage alone never leaves ``IN_SYNC``
  (the last known state is kept; nothing destructive is emitted); only a needed re-list does,
  and the syncer returns to ``IN_SYNC`` after it. ``Batch.in_sync`` is true only when the
  consumer, having applied that batch, holds the complete snapshot.
- Errors never kill the syncer thread: it retries with exponential backoff (capped, jittered),
  with a new store each time. Prefixes must not overlap (a key belongs to one prefix).
Threading: one daemon thread does all store I/O (the etcd client is blocking); ``next_batch`` may
be called from any thread and ``next_batch_async`` from any event loop (cancellation-safe:
a batch is only taken by a coroutine that is running, never by a helper thread).
Logs: ``syncer.*`` events with key=value pairs.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from datastore.kv import (
    DEFAULT_PAGE_SIZE,
    KV,
    CompactedError,
    DatastoreError,
    EventKind,
    KVStore,
    Watch,
    WatchEvent,
)

log = logging.getLogger(__name__)


class SyncStatus(enum.Enum):
    WAIT_FOR_DATASTORE = "wait-for-datastore"
    RESYNC = "resync"
    IN_SYNC = "in-sync"


@dataclass(frozen=True, slots=True)
class Update:
    """The newest state of one key: ``value=None`` means deleted. ``revision`` is the key's
    ``mod_revision`` (for a delete: the deletion's, or the re-list's revision if synthesised)."""

    key: str
    value: bytes | None
    revision: int


@dataclass(frozen=True, slots=True)
class Batch:
    updates: list[Update]
    status: SyncStatus
    in_sync: bool


@dataclass(frozen=True, slots=True)
class SyncerStats:
    emitted: int  # updates put in flight
    coalesced: int  # of those, replaced in flight by a newer update of the same key
    delivered: int  # updates handed to the consumer
    lists: int  # prefix listings done
    compactions: int  # watches that found their start revision compacted
    reconnects: int  # store connections made after the first
    last_revision: int  # the newest revision emitted on any prefix (prefixes may lag it)


@dataclass(slots=True)
class _Prefix:
    prefix: str
    revs: dict[str, int]  # key -> mod_revision last emitted
    next_revision: int | None = None  # None: needs a (re-)list


class Syncer:
    """See the module docstring."""

    def __init__(
        self,
        store_factory: Callable[[], KVStore],
        prefixes: Sequence[str],
        *,
        page_size: int = DEFAULT_PAGE_SIZE,
        backoff_initial: float = 0.2,
        backoff_max: float = 5.0,
        on_status: Callable[[SyncStatus], None] | None = None,
        name: str = "syncer",
    ) -> None:
        prefixes = list(prefixes)
        if not prefixes:
            raise ValueError("syncer needs at least one prefix")
        for a in prefixes:
            for b in prefixes:
                if a is not b and b.startswith(a):
                    raise ValueError(f"syncer prefixes overlap: {a!r} and {b!r}")
        self._factory = store_factory
        self._prefixes = [_Prefix(p, {}) for p in prefixes]
        self._page_size = page_size
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._on_status = on_status
        self.name = name

        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._pending: dict[str, Update] = {}
        self._status = SyncStatus.WAIT_FOR_DATASTORE
        self._status_dirty = True  # a status not yet reported in a Batch
        self._barrier = 0  # pending entries (from the front) still belonging to the snapshot
        self._async_waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self._emitted = 0
        self._coalesced = 0
        self._delivered = 0
        self._lists = 0
        self._compactions = 0
        self._connects = 0
        self._last_revision = 0

        self._backoff = backoff_initial
        self._stopping = threading.Event()
        self._wakeup = threading.Event()
        self._thread: threading.Thread | None = None

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the syncer thread (again, after ``stop()``: it resumes where it was)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the thread (cancels watches, closes the store) and join it."""
        self._stopping.set()
        self._wakeup.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.warning("syncer.stop.timeout name=%s timeout=%.1f", self.name, timeout)
        self._notify()

    @property
    def status(self) -> SyncStatus:
        return self._status

    def stats(self) -> SyncerStats:
        with self._lock:
            return SyncerStats(
                emitted=self._emitted,
                coalesced=self._coalesced,
                delivered=self._delivered,
                lists=self._lists,
                compactions=self._compactions,
                reconnects=max(0, self._connects - 1),
                last_revision=self._last_revision,
            )

    # --- consumer side ------------------------------------------------------------------------

    def next_batch(self, timeout: float | None = None, max_updates: int | None = None) -> Batch:
        """Wait up to ``timeout`` (None: no limit, until stopped) for updates or a status change;
        return them (possibly none), at most ``max_updates`` updates, oldest keys first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._ready() and not self._stopping.is_set():
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self._cond.wait(remaining)
            return self._take(max_updates)

    async def next_batch_async(
        self, timeout: float | None = None, max_updates: int | None = None
    ) -> Batch:
        """``next_batch`` for an asyncio loop: waits on an ``asyncio.Event`` that the syncer
        thread sets through ``call_soon_threadsafe``; takes the batch in the coroutine itself."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            event = asyncio.Event()
            waiter = (loop, event)
            with self._lock:
                if self._ready() or self._stopping.is_set():
                    return self._take(max_updates)
                self._async_waiters.add(waiter)
            try:
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    with self._lock:
                        return self._take(max_updates)
                try:
                    await asyncio.wait_for(event.wait(), remaining)
                except TimeoutError:
                    with self._lock:
                        return self._take(max_updates)
            finally:
                with self._lock:
                    self._async_waiters.discard(waiter)

    def _ready(self) -> bool:
        return bool(self._pending) or self._status_dirty

    def _take(self, max_updates: int | None) -> Batch:
        """Take a batch; call with the lock held."""
        if max_updates is None or max_updates >= len(self._pending):
            updates = list(self._pending.values())
            self._pending = {}
        else:
            updates = []
            for key in list(self._pending)[:max_updates]:
                updates.append(self._pending.pop(key))
        self._barrier = max(0, self._barrier - len(updates))
        self._delivered += len(updates)
        self._status_dirty = False
        in_sync = self._status is SyncStatus.IN_SYNC and self._barrier == 0
        return Batch(updates, self._status, in_sync)

    def _notify(self) -> None:
        """Wake every waiter (thread or coroutine)."""
        with self._lock:
            self._cond.notify_all()
            waiters = list(self._async_waiters)
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):  # loop closed
                loop.call_soon_threadsafe(event.set)

    # --- producer side (syncer thread only) ---------------------------------------------------

    def _emit(self, updates: list[Update]) -> None:
        if not updates:
            return
        with self._lock:
            pending = self._pending
            for u in updates:
                if u.key in pending:
                    self._coalesced += 1
                pending[u.key] = u
            self._emitted += len(updates)
        self._notify()

    def _set_status(self, status: SyncStatus) -> None:
        with self._lock:
            if status is self._status:
                return
            old, self._status = self._status, status
            self._status_dirty = True
            if status is SyncStatus.IN_SYNC:
                self._barrier = len(self._pending)
        log.info("syncer.status name=%s old=%s new=%s", self.name, old.value, status.value)
        if self._on_status is not None:
            try:
                self._on_status(status)
            except Exception:
                log.exception("syncer.on_status.failed name=%s", self.name)
        self._notify()

    def _run(self) -> None:
        log.info("syncer.start name=%s prefixes=%d", self.name, len(self._prefixes))
        self._backoff = self._backoff_initial
        compacted_in_row = 0
        while not self._stopping.is_set():
            store: KVStore | None = None
            try:
                store = self._factory()
                with self._lock:
                    self._connects += 1
                self._load(store)
                self._watch(store)
            except CompactedError as exc:
                # A watch (or a list at the snapshot revision) hit the compaction point; the
                # prefix is marked for a re-list. Retry at once, unless it keeps happening.
                compacted_in_row += 1
                log.info(
                    "syncer.compacted name=%s compacted_revision=%d in_row=%d",
                    self.name,
                    exc.compacted_revision,
                    compacted_in_row,
                )
                if compacted_in_row > 2:
                    self._sleep_backoff(exc)
                continue
            except Exception as exc:
                self._sleep_backoff(exc)
            finally:
                if store is not None:
                    with contextlib.suppress(Exception):
                        store.close()
            compacted_in_row = 0
        log.info("syncer.stop name=%s", self.name)

    def _sleep_backoff(self, exc: Exception) -> None:
        delay = min(self._backoff, self._backoff_max) * random.uniform(0.8, 1.2)
        level = logging.WARNING if isinstance(exc, DatastoreError) else logging.ERROR
        log.log(
            level,
            "syncer.retry name=%s error=%s detail=%s retry_in=%.2f status=%s",
            self.name,
            type(exc).__name__,
            exc,
            delay,
            self._status.value,
            exc_info=not isinstance(exc, DatastoreError),
        )
        self._backoff = min(self._backoff * 2, self._backoff_max)
        self._stopping.wait(delay)

    def _load(self, store: KVStore) -> None:
        """List every prefix that needs it, at one revision when possible, and emit the diff."""
        todo = [p for p in self._prefixes if p.next_revision is None]
        if not todo:
            return
        if self._status is not SyncStatus.WAIT_FOR_DATASTORE:
            self._set_status(SyncStatus.RESYNC)  # a re-list is needed: we are not in sync
        at: int | None = None
        for p in todo:
            t0 = time.monotonic()
            kvs, rev = store.list(p.prefix, self._page_size, at)
            self._set_status(SyncStatus.RESYNC)  # (first time: the datastore answered)
            at = rev
            updates, deletes = self._apply_snapshot(p, kvs, rev)
            with self._lock:
                self._lists += 1
                self._last_revision = max(self._last_revision, rev)
            log.info(
                "syncer.list name=%s prefix=%s keys=%d revision=%d updates=%d deletes=%d ms=%.1f",
                self.name,
                p.prefix,
                len(kvs),
                rev,
                updates,
                deletes,
                (time.monotonic() - t0) * 1000,
            )
        self._set_status(SyncStatus.IN_SYNC)

    def _apply_snapshot(self, p: _Prefix, kvs: list[KV], revision: int) -> tuple[int, int]:
        old = p.revs
        new: dict[str, int] = {}
        out: list[Update] = []
        for kv in kvs:
            new[kv.key] = kv.mod_revision
            if old.get(kv.key) != kv.mod_revision:
                out.append(Update(kv.key, kv.value, kv.mod_revision))
            if len(out) >= 4096:
                self._emit(out)
                out = []
        changed = len(out)
        gone = [key for key in old if key not in new]
        out.extend(Update(key, None, revision) for key in gone)
        p.revs = new
        p.next_revision = revision + 1
        self._emit(out)
        return changed, len(gone)

    def _watch(self, store: KVStore) -> None:
        """Watch every prefix from its next revision until stopped or something fails."""
        watches: list[tuple[_Prefix, Watch]] = []
        try:
            for p in self._prefixes:
                assert p.next_revision is not None
                watches.append((p, store.watch(p.prefix, p.next_revision, self._wakeup)))
                log.debug(
                    "syncer.watch name=%s prefix=%s start_revision=%d",
                    self.name,
                    p.prefix,
                    p.next_revision,
                )
            self._backoff = self._backoff_initial  # every watch was created: the store is healthy
            while not self._stopping.is_set():
                self._wakeup.wait(1.0)
                self._wakeup.clear()
                for p, w in watches:
                    try:
                        events = w.poll(0)
                    except CompactedError as exc:
                        with self._lock:
                            self._compactions += 1
                        # Every prefix still behind the compaction point needs a re-list too:
                        # do them all in one go (one status round trip, one revision).
                        for q in self._prefixes:
                            if q.next_revision is not None and q.next_revision < (
                                exc.compacted_revision
                            ):
                                q.next_revision = None
                        log.info(
                            "syncer.watch.compacted name=%s prefix=%s start_revision=%s",
                            self.name,
                            p.prefix,
                            p.next_revision,
                        )
                        p.next_revision = None
                        raise
                    if events:
                        self._apply_events(p, events)
                        self._wakeup.set()  # poll() hands out a bounded amount: look again
        finally:
            for _, w in watches:
                with contextlib.suppress(Exception):
                    w.cancel()

    def _apply_events(self, p: _Prefix, events: list[WatchEvent]) -> None:
        assert p.next_revision is not None
        floor = p.next_revision  # events below this were already seen: never re-emit
        top = floor - 1
        out: list[Update] = []
        for ev in events:
            if ev.mod_revision < floor:
                continue
            top = max(top, ev.mod_revision)
            if ev.kind is EventKind.PUT:
                p.revs[ev.key] = ev.mod_revision
                out.append(Update(ev.key, ev.value, ev.mod_revision))
            elif p.revs.pop(ev.key, None) is not None:
                out.append(Update(ev.key, None, ev.mod_revision))
        p.next_revision = top + 1
        self._emit(out)
        with self._lock:
            self._last_revision = max(self._last_revision, top)
