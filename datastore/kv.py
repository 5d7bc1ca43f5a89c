"""The key-value seam between tabby and etcd: value types, errors and the ``KVStore`` protocol.

Role: the one interface every datastore user (syncer, codec-level CRUD, IPAM, ctl) talks to.
Implementations: ``datastore.etcd.EtcdKVStore`` (real etcd v3 over gRPC) and
``datastore.fake.FakeEtcd`` / ``FakeKVStore`` (a stateful in-memory model for tests).
Inputs: string keys, byte values. Outputs: ``KV`` records carrying etcd revisions, ``WatchEvent``s.

Invariants (both implementations, checked by the shared contract tests):
- Revisions are etcd's: one global counter, starting at 1 on an empty store, incremented once per
  write request that changes something (a transaction's writes share one revision). A write's
  return value is the new store revision, which is also the written key's ``mod_revision``.
- ``list`` returns every key under a prefix at ONE revision (it paginates at that revision) and
  returns that revision; ``watch(prefix, list_revision + 1)`` then yields exactly the changes after
  the snapshot: nothing lost, nothing repeated.
- Watch events come in revision order per watch; events of one transaction share a revision.
- A watch (or ``list`` at an explicit revision) older than the last compaction raises
  ``CompactedError`` carrying the compacted revision (0 when the server did not say).
- Every failure surfaces as a ``DatastoreError`` subclass; no client-library or gRPC exception
  escapes an implementation. ``UnavailableError`` means "could not talk to the store": the
  outcome of a write that raised it is unknown.
- Compare-and-swap: ``mod_revision == 0`` in a ``Compare`` means "the key must not exist".
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from datastore.errors import DatastoreError as DatastoreError  # noqa: PLC0414 (re-export)

DEFAULT_PAGE_SIZE = 1000


# --- errors -----------------------------------------------------------------------------------

# DatastoreError (from datastore.errors) is the one base of every datastore failure.


class UnavailableError(DatastoreError):
    """The store could not be reached (or did not answer in time); retry later."""


class AlreadyExistsError(DatastoreError):
    """``create`` found the key present."""

    def __init__(self, key: str) -> None:
        super().__init__(f"key already exists: {key}")
        self.key = key


class ConflictError(DatastoreError):
    """A compare-and-swap found a different ``mod_revision`` than expected."""

    def __init__(self, key: str, message: str | None = None) -> None:
        super().__init__(message or f"revision conflict on key: {key}")
        self.key = key


class NotFoundError(ConflictError):
    """A compare-and-swap found the key absent (also a conflict: re-read and retry)."""

    def __init__(self, key: str) -> None:
        super().__init__(key, f"key not found: {key}")


class CompactedError(DatastoreError):
    """The requested revision is older than the store's compaction point."""

    def __init__(self, compacted_revision: int, message: str | None = None) -> None:
        super().__init__(message or f"revision compacted (compacted_revision={compacted_revision})")
        self.compacted_revision = compacted_revision


# --- values -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KV:
    """One key as stored, with etcd's revisions."""

    key: str
    value: bytes
    mod_revision: int
    create_revision: int


class EventKind(enum.Enum):
    PUT = "PUT"
    DELETE = "DELETE"


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One change seen by a watch. For ``DELETE``, ``value`` is ``b""`` and ``mod_revision`` is
    the revision of the deletion."""

    kind: EventKind
    key: str
    value: bytes
    mod_revision: int


@dataclass(frozen=True, slots=True)
class Compare:
    """Transaction guard: the key's ``mod_revision`` equals this (0 = the key must not exist)."""

    key: str
    mod_revision: int


@dataclass(frozen=True, slots=True)
class PutOp:
    key: str
    value: bytes


@dataclass(frozen=True, slots=True)
class DeleteOp:
    key: str


Op = PutOp | DeleteOp

# etcd's default --max-txn-ops; both implementations refuse more operations per transaction.
MAX_TXN_OPS = 128


# --- protocols --------------------------------------------------------------------------------


class Watch(Protocol):
    """A live watch on a key prefix.

    ``poll`` returns the events available now (waiting up to ``timeout`` seconds for the first;
    ``None`` waits without limit): ``[]`` on timeout, ``None`` once the watch was cancelled. It
    raises ``CompactedError`` when the start revision was compacted and ``UnavailableError`` when
    the stream broke; after raising, the watch is dead (create a new one). Iterating yields events
    one by one until ``cancel()``.
    """

    def poll(self, timeout: float | None = None) -> list[WatchEvent] | None: ...

    def cancel(self) -> None: ...

    def __iter__(self) -> Iterator[WatchEvent]: ...


class KVStore(Protocol):
    """A small, etcd-shaped key-value store (see the module invariants)."""

    def get(self, key: str) -> KV | None: ...

    def list(
        self, prefix: str, page_size: int = DEFAULT_PAGE_SIZE, revision: int | None = None
    ) -> tuple[list[KV], int]:
        """All keys under ``prefix`` in key order, at ``revision`` (default: the current one),
        and the revision of that snapshot."""
        ...

    def create(self, key: str, value: bytes) -> int: ...

    def update(self, key: str, value: bytes, expected_mod_revision: int) -> int: ...

    def put(self, key: str, value: bytes) -> int: ...

    def delete(self, key: str, expected_mod_revision: int | None = None) -> bool:
        """Delete ``key``; ``True`` if something was deleted. With ``expected_mod_revision``,
        delete only that version: ``ConflictError`` if it changed, ``NotFoundError`` if absent."""
        ...

    def txn(self, compares: Sequence[Compare], success: Sequence[Op]) -> bool:
        """Apply all of ``success`` atomically iff every compare holds; ``True`` if applied.
        A key may appear at most once in ``success``; at most ``MAX_TXN_OPS`` operations."""
        ...

    def watch(
        self, prefix: str, start_revision: int, wakeup: threading.Event | None = None
    ) -> Watch:
        """Watch changes under ``prefix`` from ``start_revision`` (inclusive; 0 = from now).
        ``wakeup`` (optional) is set whenever the watch has something for ``poll``, so one
        thread can wait on several watches."""
        ...

    def compact(self, revision: int) -> None: ...

    def close(self) -> None: ...


def validate_txn(compares: Sequence[Compare], success: Sequence[Op]) -> None:
    """The request checks etcd applies before a transaction; raises ``DatastoreError``."""
    if len(compares) > MAX_TXN_OPS or len(success) > MAX_TXN_OPS:
        raise DatastoreError(f"too many operations in txn request (max {MAX_TXN_OPS})")
    seen: set[str] = set()
    for op in success:
        if op.key in seen:
            raise DatastoreError(f"duplicate key given in txn request: {op.key}")
        seen.add(op.key)


def prefix_range_end(prefix: bytes) -> bytes:
    """etcd's range end for "every key starting with ``prefix``" (``b"\\0"`` = all keys)."""
    end = bytearray(prefix)
    for i in reversed(range(len(end))):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"
