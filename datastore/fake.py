"""A stateful in-memory model of etcd, for tests of everything above the ``KVStore`` seam.

Role: ``FakeEtcd`` is the "server": one global revision counter, per-key create/mod revisions,
the change history (for watch replay and for ``list`` at a past revision), compaction, and
transactions. It implements ``KVStore`` itself (direct access, as another node or an operator
would have, unaffected by outages). ``FakeEtcd.connect()`` returns a ``FakeKVStore`` client that
*is* affected by ``set_available(False)``: its calls raise ``UnavailableError`` and its watches
break, which is how tests simulate an etcd outage or a partitioned agent while other writers
continue through the ``FakeEtcd`` itself.

Invariants (the same contract as real etcd, see ``datastore.kv``):
- revision starts at 1; each write request that changes something adds exactly 1; a failed or
  empty transaction and a delete of an absent key add nothing;
- history keeps every change with revision >= the compaction point, so a watch from any
  non-compacted revision replays exactly the changes after it, in order;
- watches older than the compaction point raise ``CompactedError`` on their first ``poll``
  (as etcd reports it after creating the watch); a watch that is caught up is not affected
  by later compactions.
Thread safety: every method may be called from any thread (one condition variable guards all).
"""

from __future__ import annotations

import bisect
import builtins
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from datastore.kv import (
    DEFAULT_PAGE_SIZE,
    KV,
    AlreadyExistsError,
    CompactedError,
    Compare,
    ConflictError,
    DatastoreError,
    DeleteOp,
    EventKind,
    NotFoundError,
    Op,
    PutOp,
    UnavailableError,
    WatchEvent,
    validate_txn,
)


@dataclass(frozen=True, slots=True)
class _Change:
    """One key change in the history: the key's state before and after revision ``revision``."""

    revision: int
    key: str
    before: KV | None
    after: KV | None


class FakeEtcd:
    """The in-memory etcd model (see module docstring)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._revision = 1
        self._compacted = 0
        self._data: dict[str, KV] = {}
        self._history: list[_Change] = []
        self._available = True
        self._outage_epoch = 0  # incremented when an outage starts; breaks client watches
        self._watches: set[_FakeWatch] = set()
        self.connections = 0  # how many clients were handed out (observable by tests)

    # --- test controls ------------------------------------------------------------------------

    def connect(self) -> FakeKVStore:
        """A client affected by outages (use as a syncer's ``store_factory``)."""
        with self._cond:
            self.connections += 1
        return FakeKVStore(self)

    def set_available(self, available: bool) -> None:
        """Start (False) or end (True) an outage for all ``connect()`` clients."""
        with self._cond:
            if self._available and not available:
                self._outage_epoch += 1
            self._available = available
            self._wake_all()

    @property
    def available(self) -> bool:
        return self._available

    @property
    def revision(self) -> int:
        return self._revision

    @property
    def compacted_revision(self) -> int:
        return self._compacted

    def snapshot(self, prefix: str = "") -> dict[str, bytes]:
        """The current values under ``prefix`` (for assertions)."""
        with self._cond:
            return {k: kv.value for k, kv in self._data.items() if k.startswith(prefix)}

    # --- KVStore ------------------------------------------------------------------------------

    def get(self, key: str) -> KV | None:
        with self._cond:
            return self._data.get(key)

    def list(
        self, prefix: str, page_size: int = DEFAULT_PAGE_SIZE, revision: int | None = None
    ) -> tuple[list[KV], int]:
        if page_size <= 0:
            raise DatastoreError(f"page_size must be positive, got {page_size}")
        with self._cond:
            at = revision if revision else self._revision
            if at > self._revision:
                raise DatastoreError(f"mvcc: required revision is a future revision ({at})")
            if at < self._compacted:
                raise CompactedError(self._compacted)
            state = {k: kv for k, kv in self._data.items() if k.startswith(prefix)}
            # Undo the changes after ``at`` (all retained: at >= compaction point).
            for change in reversed(self._history):
                if change.revision <= at:
                    break
                if change.key.startswith(prefix):
                    if change.before is None:
                        state.pop(change.key, None)
                    else:
                        state[change.key] = change.before
            return [state[k] for k in sorted(state)], at

    def create(self, key: str, value: bytes) -> int:
        with self._cond:
            if key in self._data:
                raise AlreadyExistsError(key)
            return self._commit([PutOp(key, value)])

    def update(self, key: str, value: bytes, expected_mod_revision: int) -> int:
        with self._cond:
            self._check_revision(key, expected_mod_revision)
            return self._commit([PutOp(key, value)])

    def put(self, key: str, value: bytes) -> int:
        with self._cond:
            return self._commit([PutOp(key, value)])

    def delete(self, key: str, expected_mod_revision: int | None = None) -> bool:
        with self._cond:
            if expected_mod_revision is not None:
                self._check_revision(key, expected_mod_revision)
            if key not in self._data:
                return False
            self._commit([DeleteOp(key)])
            return True

    def txn(self, compares: Sequence[Compare], success: Sequence[Op]) -> bool:
        validate_txn(compares, success)
        with self._cond:
            for c in compares:
                current = self._data.get(c.key)
                if (current.mod_revision if current else 0) != c.mod_revision:
                    return False
            self._commit(list(success))
            return True

    def watch(
        self, prefix: str, start_revision: int, wakeup: threading.Event | None = None
    ) -> _FakeWatch:
        with self._cond:
            return self._new_watch(prefix, start_revision, wakeup, None)

    def compact(self, revision: int) -> None:
        with self._cond:
            if revision > self._revision:
                raise DatastoreError(f"mvcc: required revision is a future revision ({revision})")
            if revision <= self._compacted:
                raise CompactedError(self._compacted)
            # A connected watch has already been pushed its events (as etcd streams them), so a
            # compaction after that does not affect it: move them into its buffer first.
            for w in self._watches:
                w._prefetch()
            self._compacted = revision
            cut = bisect.bisect_left(self._history, revision, key=lambda c: c.revision)
            del self._history[:cut]
            self._wake_all()

    def close(self) -> None:
        """Nothing to release (the model outlives its clients)."""

    # --- internals (call with self._cond held) ------------------------------------------------

    def _check_revision(self, key: str, expected: int) -> None:
        current = self._data.get(key)
        if current is None:
            raise NotFoundError(key)
        if current.mod_revision != expected:
            raise ConflictError(key)

    def _commit(self, ops: builtins.list[Op]) -> int:
        """Apply ``ops`` at the next revision (if any changes); return the store revision."""
        rev = self._revision + 1
        changes: builtins.list[_Change] = []
        for op in ops:
            before = self._data.get(op.key)
            if isinstance(op, PutOp):
                create = before.create_revision if before is not None else rev
                after = KV(op.key, bytes(op.value), rev, create)
                self._data[op.key] = after
                changes.append(_Change(rev, op.key, before, after))
            elif before is not None:
                del self._data[op.key]
                changes.append(_Change(rev, op.key, before, None))
        if not changes:
            return self._revision
        self._revision = rev
        self._history.extend(changes)
        self._wake_all()
        return rev

    def _wake_all(self) -> None:
        self._cond.notify_all()
        for w in self._watches:
            if w.wakeup is not None:
                w.wakeup.set()

    def _new_watch(
        self,
        prefix: str,
        start_revision: int,
        wakeup: threading.Event | None,
        client: FakeKVStore | None,
    ) -> _FakeWatch:
        start = start_revision if start_revision > 0 else self._revision + 1
        w = _FakeWatch(self, prefix, start, wakeup=wakeup, client=client, epoch=self._outage_epoch)
        self._watches.add(w)
        if wakeup is not None:
            wakeup.set()  # there may be history to replay
        return w

    def _drop_watch(self, w: _FakeWatch) -> None:
        self._watches.discard(w)


class _FakeWatch:
    """A watch on a ``FakeEtcd``; see ``datastore.kv.Watch``."""

    def __init__(
        self,
        etcd: FakeEtcd,
        prefix: str,
        next_revision: int,
        *,
        wakeup: threading.Event | None,
        client: FakeKVStore | None,
        epoch: int,
    ) -> None:
        self._etcd = etcd
        self._prefix = prefix
        self._next = next_revision
        self.wakeup = wakeup
        self._client = client
        self._epoch = epoch
        self._cancelled = False
        self._dead = False
        self._buffer: list[WatchEvent] = []

    def poll(self, timeout: float | None = None) -> list[WatchEvent] | None:
        etcd = self._etcd
        deadline = None if timeout is None else time.monotonic() + timeout
        with etcd._cond:
            while True:
                if self._cancelled:
                    return None
                if self._dead:
                    raise UnavailableError("watch is dead (it already failed)")
                if self._client is not None and (
                    self._client.closed or not etcd._available or etcd._outage_epoch != self._epoch
                ):
                    self._fail()
                    raise UnavailableError("fake etcd unavailable: watch stream broken")
                if self._buffer:
                    events, self._buffer = self._buffer, []
                    return events
                if self._next < etcd._compacted:
                    self._fail()
                    raise CompactedError(etcd._compacted)
                events = self._take()
                if events:
                    return events
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return []
                etcd._cond.wait(remaining)

    def _prefetch(self) -> None:
        """Move available events into the buffer, if this watch is live and not compacted."""
        if self._cancelled or self._dead or self._next < self._etcd._compacted:
            return
        if self._client is not None and (
            self._client.closed
            or not self._etcd._available
            or self._etcd._outage_epoch != self._epoch
        ):
            return
        self._buffer.extend(self._take())

    def _take(self) -> list[WatchEvent]:
        etcd = self._etcd
        if self._next > etcd._revision:
            return []
        start = bisect.bisect_left(etcd._history, self._next, key=lambda c: c.revision)
        out: list[WatchEvent] = []
        for change in etcd._history[start:]:
            if not change.key.startswith(self._prefix):
                continue
            if change.after is None:
                out.append(WatchEvent(EventKind.DELETE, change.key, b"", change.revision))
            else:
                out.append(
                    WatchEvent(EventKind.PUT, change.key, change.after.value, change.revision)
                )
        self._next = etcd._revision + 1
        return out

    def _fail(self) -> None:
        self._dead = True
        self._etcd._drop_watch(self)

    def cancel(self) -> None:
        with self._etcd._cond:
            self._cancelled = True
            self._etcd._drop_watch(self)
            self._etcd._cond.notify_all()
            if self.wakeup is not None:
                self.wakeup.set()

    def __iter__(self) -> Iterator[WatchEvent]:
        while (events := self.poll(None)) is not None:
            yield from events


class FakeKVStore:
    """A client of a ``FakeEtcd``: same behaviour, but subject to outages and ``close()``."""

    def __init__(self, etcd: FakeEtcd) -> None:
        self._etcd = etcd
        self.closed = False

    def _check(self) -> FakeEtcd:
        if self.closed:
            raise UnavailableError("client closed")
        if not self._etcd.available:
            raise UnavailableError("fake etcd unavailable")
        return self._etcd

    def get(self, key: str) -> KV | None:
        return self._check().get(key)

    def list(
        self, prefix: str, page_size: int = DEFAULT_PAGE_SIZE, revision: int | None = None
    ) -> tuple[list[KV], int]:
        return self._check().list(prefix, page_size, revision)

    def create(self, key: str, value: bytes) -> int:
        return self._check().create(key, value)

    def update(self, key: str, value: bytes, expected_mod_revision: int) -> int:
        return self._check().update(key, value, expected_mod_revision)

    def put(self, key: str, value: bytes) -> int:
        return self._check().put(key, value)

    def delete(self, key: str, expected_mod_revision: int | None = None) -> bool:
        return self._check().delete(key, expected_mod_revision)

    def txn(self, compares: Sequence[Compare], success: Sequence[Op]) -> bool:
        return self._check().txn(compares, success)

    def watch(
        self, prefix: str, start_revision: int, wakeup: threading.Event | None = None
    ) -> _FakeWatch:
        etcd = self._check()
        with etcd._cond:
            return etcd._new_watch(prefix, start_revision, wakeup, self)

    def compact(self, revision: int) -> None:
        self._check().compact(revision)

    def close(self) -> None:
        with self._etcd._cond:
            self.closed = True
            self._etcd._wake_all()
