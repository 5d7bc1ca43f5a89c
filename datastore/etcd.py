"""The real ``KVStore``: etcd v3 over gRPC, through the ``etcd3`` client (cslab-etcd3 fork).

Role: translate ``datastore.kv`` calls into etcd requests and every client/gRPC failure into a
``datastore.kv`` error. Inputs: ``EtcdConfig`` (calicoctl's ``ETCD_*`` variables). Outputs:
``KV`` records, revisions, ``WatchEvent``s.

Invariants and client-library traps handled here (see also ../shared/FACTS.md):
- The client is built as ``MultiEndpointEtcd3Client([Endpoint(..., time_retry=1)],
  failover=True)``: the library's default marks a failed endpoint dead for 300 s.
- Every unary RPC has a deadline (``EtcdConfig.timeout``); the library's default is none.
- ``grpc.max_receive_message_length`` is raised AND ``list`` paginates (``page_size`` keys per
  request) at the revision of the first page, so a snapshot is consistent whatever its size.
- gRPC keepalive is on, so a silently dead server breaks the watch stream instead of hanging it.
- Watches use the library's callback API with our own queue: ``poll(timeout)`` can time out, a
  stream that ends without our ``cancel()`` becomes ``UnavailableError`` (the library's own
  iterator just stops), and a compacted start revision becomes ``CompactedError``.
- No ``etcd3`` or ``grpc`` exception escapes: see ``_translate``.
- Keys are str on our side and UTF-8 on the wire (``surrogateescape`` keeps odd bytes lossless).
Thread safety: one ``EtcdKVStore`` may be shared, but the library's endpoint bookkeeping is not
locked; long-lived users (the syncer) create their own store.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import os
import queue
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import etcd3
import etcd3.events
import etcd3.exceptions
import etcd3.transactions
import grpc

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
    prefix_range_end,
    validate_txn,
)

log = logging.getLogger(__name__)

DEFAULT_PORT = 2379
DEFAULT_ENDPOINTS = ("http://127.0.0.1:2379",)
MAX_RECEIVE_BYTES = 64 * 1024 * 1024
# A single poll() hands out at most this many events (bounds one batch of work).
MAX_POLL_EVENTS = 10_000


class ConfigError(DatastoreError):
    """The etcd configuration is unusable (names the variable and the problem)."""


@dataclass(frozen=True, slots=True)
class EtcdConfig:
    """Where etcd is and how to authenticate; endpoints are ``[scheme://]host[:port]``."""

    endpoints: tuple[str, ...] = DEFAULT_ENDPOINTS
    ca_cert_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    timeout: float = 10.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> EtcdConfig:
        """calicoctl's variables: ``ETCD_ENDPOINTS`` (comma-separated), ``ETCD_CA_CERT_FILE``,
        ``ETCD_CERT_FILE``, ``ETCD_KEY_FILE``."""
        env = os.environ if environ is None else environ
        raw = env.get("ETCD_ENDPOINTS", "").strip()
        endpoints = tuple(e.strip() for e in raw.split(",") if e.strip()) if raw else None
        return cls(
            endpoints=endpoints or DEFAULT_ENDPOINTS,
            ca_cert_file=env.get("ETCD_CA_CERT_FILE") or None,
            cert_file=env.get("ETCD_CERT_FILE") or None,
            key_file=env.get("ETCD_KEY_FILE") or None,
        )


@dataclass(frozen=True, slots=True)
class ParsedEndpoint:
    host: str
    port: int
    secure: bool


def parse_endpoint(text: str, *, tls_configured: bool) -> ParsedEndpoint:
    """``http://h:p`` / ``https://h:p`` / ``h:p`` / ``[v6]:p``; no scheme = TLS iff certs given."""
    raw = text.strip()
    has_scheme = "://" in raw
    url = urllib.parse.urlsplit(raw if has_scheme else f"//{raw}")
    if has_scheme and url.scheme not in ("http", "https"):
        raise ConfigError(f"ETCD_ENDPOINTS: unsupported scheme in {text!r} (use http or https)")
    try:
        port = url.port or DEFAULT_PORT
    except ValueError as exc:
        raise ConfigError(f"ETCD_ENDPOINTS: bad port in {text!r}") from exc
    if not url.hostname:
        raise ConfigError(f"ETCD_ENDPOINTS: no host in {text!r}")
    secure = url.scheme == "https" if has_scheme else tls_configured
    return ParsedEndpoint(url.hostname, port, secure)


def _read(path: str | None, variable: str) -> bytes | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ConfigError(f"{variable}: cannot read {path}: {exc}") from exc


def _grpc_options() -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
        ("grpc.max_send_message_length", MAX_RECEIVE_BYTES),
        ("grpc.keepalive_time_ms", 10_000),
        ("grpc.keepalive_timeout_ms", 5_000),
        ("grpc.http2.max_pings_without_data", 0),
        # New channels per (re)connect attempt are cheap; keep gRPC's own backoff short.
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 2_000),
    ]


def build_client(config: EtcdConfig) -> Any:
    """A ``MultiEndpointEtcd3Client`` for ``config`` (no I/O yet: gRPC connects lazily)."""
    if not config.endpoints:
        raise ConfigError("ETCD_ENDPOINTS: no endpoint given")
    if (config.cert_file is None) != (config.key_file is None):
        raise ConfigError("ETCD_CERT_FILE and ETCD_KEY_FILE must be given together")
    tls_configured = config.ca_cert_file is not None or config.cert_file is not None
    parsed = [parse_endpoint(e, tls_configured=tls_configured) for e in config.endpoints]
    creds = None
    if any(p.secure for p in parsed):
        creds = grpc.ssl_channel_credentials(
            root_certificates=_read(config.ca_cert_file, "ETCD_CA_CERT_FILE"),
            private_key=_read(config.key_file, "ETCD_KEY_FILE"),
            certificate_chain=_read(config.cert_file, "ETCD_CERT_FILE"),
        )
    endpoints = [
        etcd3.Endpoint(
            p.host,
            p.port,
            secure=p.secure,
            creds=creds if p.secure else None,
            time_retry=1,
            opts=_grpc_options(),
        )
        for p in parsed
    ]
    return etcd3.MultiEndpointEtcd3Client(
        endpoints=endpoints, timeout=config.timeout, failover=True
    )


_UNAVAILABLE_CODES = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNKNOWN,
}


def translate_error(exc: BaseException) -> DatastoreError:
    """The ``datastore.kv`` error for an ``etcd3``/gRPC exception."""
    if isinstance(exc, DatastoreError):
        return exc
    if isinstance(exc, etcd3.exceptions.RevisionCompactedError):
        return CompactedError(int(exc.compacted_revision))
    if isinstance(
        exc,
        etcd3.exceptions.ConnectionFailedError
        | etcd3.exceptions.ConnectionTimeoutError
        | etcd3.exceptions.NoServerAvailableError
        | etcd3.exceptions.WatchTimedOut
        | etcd3.exceptions.InternalServerError,
    ):
        return UnavailableError(f"etcd unavailable: {type(exc).__name__}: {exc}")
    if isinstance(exc, grpc.RpcError):
        code = exc.code() if hasattr(exc, "code") else None
        details = (exc.details() if hasattr(exc, "details") else None) or str(exc)
        if "compacted" in details:
            return CompactedError(0, f"etcd: {details}")
        if code in _UNAVAILABLE_CODES:
            return UnavailableError(f"etcd unavailable: {code}: {details}")
        return DatastoreError(f"etcd error: {code}: {details}")
    if isinstance(exc, etcd3.exceptions.Etcd3Exception):
        return DatastoreError(f"etcd error: {type(exc).__name__}: {exc}")
    return DatastoreError(f"etcd client error: {type(exc).__name__}: {exc}")


@contextlib.contextmanager
def _translate() -> Iterator[None]:
    try:
        yield
    except DatastoreError:
        raise
    except (etcd3.exceptions.Etcd3Exception, grpc.RpcError, ValueError) as exc:
        raise translate_error(exc) from exc


def _enc(key: str) -> bytes:
    return key.encode("utf-8", "surrogateescape")


def _dec(key: bytes) -> str:
    return key.decode("utf-8", "surrogateescape")


def _kv(raw: Any) -> KV:
    return KV(_dec(raw.key), raw.value, raw.mod_revision, raw.create_revision)


class EtcdKVStore:
    """``KVStore`` on a real etcd (see the module docstring)."""

    def __init__(self, config: EtcdConfig, client: Any = None) -> None:
        self.config = config
        self._client = client if client is not None else build_client(config)

    def get(self, key: str) -> KV | None:
        with _translate():
            resp = self._client.get_response(_enc(key))
        return _kv(resp.kvs[0]) if resp.kvs else None

    def list(
        self, prefix: str, page_size: int = DEFAULT_PAGE_SIZE, revision: int | None = None
    ) -> tuple[list[KV], int]:
        if page_size <= 0:
            raise DatastoreError(f"page_size must be positive, got {page_size}")
        start = _enc(prefix)
        end = prefix_range_end(start)
        for _attempt in range(3):
            try:
                return self._list_once(start, end, page_size, revision)
            except CompactedError:
                # Compacted between two pages of a snapshot at the current revision: restart.
                if revision:
                    raise
                log.info("etcd.list.restart prefix=%s reason=compacted", prefix)
        raise UnavailableError(f"etcd list of {prefix!r} kept being compacted under us")

    def _list_once(
        self, start: bytes, end: bytes, page_size: int, revision: int | None
    ) -> tuple[builtins.list[KV], int]:
        out: builtins.list[KV] = []
        at = revision or None
        key = start
        while True:
            with _translate():
                resp = self._client.get_range_response(key, end, limit=page_size, revision=at)
            if at is None:
                at = int(resp.header.revision)
            out.extend(_kv(raw) for raw in resp.kvs)
            if not resp.more or not resp.kvs:
                return out, at
            key = resp.kvs[-1].key + b"\0"

    def _txn(
        self, compares: builtins.list[Any], success: builtins.list[Any], failure: builtins.list[Any]
    ) -> Any:
        with _translate():
            return self._client.transaction(compare=compares, success=success, failure=failure)

    @staticmethod
    def _mod_equals(key: str, revision: int) -> Any:
        # The library's compare objects build themselves through ``==`` (it returns the object).
        return etcd3.transactions.Mod(_enc(key)) == revision

    def create(self, key: str, value: bytes) -> int:
        k = _enc(key)
        ok, responses = self._txn(
            [self._mod_equals(key, 0)],
            [etcd3.transactions.Put(k, value), etcd3.transactions.Get(k)],
            [],
        )
        if not ok:
            raise AlreadyExistsError(key)
        return int(responses[1][0][1].mod_revision)

    def update(self, key: str, value: bytes, expected_mod_revision: int) -> int:
        if expected_mod_revision <= 0:
            raise DatastoreError(f"update of {key}: expected_mod_revision must be positive")
        k = _enc(key)
        ok, responses = self._txn(
            [self._mod_equals(key, expected_mod_revision)],
            [etcd3.transactions.Put(k, value), etcd3.transactions.Get(k)],
            [etcd3.transactions.Get(k)],
        )
        if not ok:
            raise ConflictError(key) if responses[0] else NotFoundError(key)
        return int(responses[1][0][1].mod_revision)

    def put(self, key: str, value: bytes) -> int:
        with _translate():
            resp = self._client.put(_enc(key), value)
        return int(resp.header.revision)

    def delete(self, key: str, expected_mod_revision: int | None = None) -> bool:
        k = _enc(key)
        if expected_mod_revision is None:
            with _translate():
                resp = self._client.delete(k, return_response=True)
            return int(resp.deleted) > 0
        ok, responses = self._txn(
            [self._mod_equals(key, expected_mod_revision)],
            [etcd3.transactions.Delete(k)],
            [etcd3.transactions.Get(k)],
        )
        if not ok:
            raise ConflictError(key) if responses[0] else NotFoundError(key)
        return int(responses[0].response_delete_range.deleted) > 0

    def txn(self, compares: Sequence[Compare], success: Sequence[Op]) -> bool:
        validate_txn(compares, success)
        ops: builtins.list[Any] = []
        for op in success:
            if isinstance(op, PutOp):
                ops.append(etcd3.transactions.Put(_enc(op.key), op.value))
            elif isinstance(op, DeleteOp):
                ops.append(etcd3.transactions.Delete(_enc(op.key)))
            else:  # pragma: no cover - guarded by the type
                raise DatastoreError(f"unknown txn op {op!r}")
        ok, _ = self._txn([self._mod_equals(c.key, c.mod_revision) for c in compares], ops, [])
        return bool(ok)

    def watch(
        self, prefix: str, start_revision: int, wakeup: threading.Event | None = None
    ) -> EtcdWatch:
        return EtcdWatch(self._client, prefix, start_revision, wakeup)

    def compact(self, revision: int) -> None:
        with _translate():
            self._client.compact(revision)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._client.close()


_CANCELLED = object()


class EtcdWatch:
    """A prefix watch on etcd; see ``datastore.kv.Watch``.

    The library calls ``_on_response`` on its watcher thread with a ``WatchResponse``, a
    ``RevisionCompactedError``, a ``grpc.RpcError`` (stream broke) or ``None`` (stream ended);
    everything goes through one queue so ``poll`` sees events and failures in order.
    """

    def __init__(
        self,
        client: Any,
        prefix: str,
        start_revision: int,
        wakeup: threading.Event | None,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._wakeup = wakeup
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._cancelled = False
        self._cancel_requested = False
        self._error: DatastoreError | None = None
        start = _enc(prefix)
        kwargs: dict[str, Any] = {"range_end": prefix_range_end(start)}
        if start_revision > 0:
            kwargs["start_revision"] = start_revision
        with _translate():
            self._watch_id = client.add_watch_callback(start, self._on_response, **kwargs)

    def _on_response(self, response: object) -> None:
        self._queue.put(response)
        if self._wakeup is not None:
            self._wakeup.set()

    def poll(self, timeout: float | None = None) -> list[WatchEvent] | None:
        if self._cancelled:
            return None
        if self._error is not None:
            raise self._error
        events: list[WatchEvent] = []
        deadline = None if timeout is None else time.monotonic() + timeout
        while len(events) < MAX_POLL_EVENTS:
            try:
                if events:
                    item = self._queue.get_nowait()
                else:  # wait for the first event; empty responses (progress) keep waiting
                    remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                    item = self._queue.get(timeout=remaining)
            except queue.Empty:
                break
            if item is _CANCELLED:
                self._cancelled = True
                return events or None
            error = self._failure(item)
            if error is not None:
                self._error = error
                if events:
                    return events  # hand out what arrived before the failure first
                raise error
            for ev in item.events:  # type: ignore[attr-defined]
                raw = ev._event.kv
                key = _dec(raw.key)
                if isinstance(ev, etcd3.events.DeleteEvent):
                    events.append(WatchEvent(EventKind.DELETE, key, b"", raw.mod_revision))
                else:
                    events.append(WatchEvent(EventKind.PUT, key, raw.value, raw.mod_revision))
        return events

    def _failure(self, item: object) -> DatastoreError | None:
        if item is None:
            return UnavailableError(f"etcd watch stream on {self._prefix!r} ended")
        if isinstance(item, BaseException):
            err = translate_error(item)
            if isinstance(err, CompactedError):
                log.info(
                    "etcd.watch.compacted prefix=%s compacted_revision=%d",
                    self._prefix,
                    err.compacted_revision,
                )
            return err
        return None

    def cancel(self) -> None:
        if self._cancel_requested:
            return
        self._cancel_requested = True
        with contextlib.suppress(Exception):
            self._client.cancel_watch(self._watch_id)
        self._queue.put(_CANCELLED)
        if self._wakeup is not None:
            self._wakeup.set()

    def __iter__(self) -> Iterator[WatchEvent]:
        while (events := self.poll(None)) is not None:
            yield from events
