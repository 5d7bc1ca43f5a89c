"""Carry TCP connections from inside network namespaces to a service in this process's namespace.

Role: the lab and the tests run etcd on 127.0.0.1 of the namespace the harness runs in, while
agents run inside node namespaces (``ip netns exec``) where that loopback is not reachable. A
listening socket keeps the namespace it was created in, so the bridge creates one listener per
node namespace (a short-lived thread enters the namespace with setns(2), binds, and leaves) and
forwards every accepted connection to the upstream address, connected from our own namespace.
Nothing is configured in any namespace: no links, addresses or routes; only loopback sockets.
Inputs: upstream (host, port); (netns, host, port) listeners. Outputs: bytes forwarded both ways.
Invariants: connections are closed when either side closes; ``stop()`` closes every socket.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import selectors
import socket
import threading
from dataclasses import dataclass

log = logging.getLogger(__name__)

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


class BridgeError(RuntimeError):
    """A listener could not be created in a namespace."""


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise BridgeError(f"setns failed: {os.strerror(err)}")


def listen_in_netns(netns: str, host: str, port: int) -> socket.socket:
    """A listening TCP socket bound inside ``netns`` (the caller's namespace is unchanged)."""
    result: list[socket.socket | BaseException] = []

    def work() -> None:
        try:
            with open(f"/run/netns/{netns}", "rb") as f:
                _setns(f.fileno())
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(128)
            result.append(sock)
        except BaseException as exc:  # handed to the caller below
            result.append(exc)

    # The thread that entered the namespace ends right away; the namespace of the other threads
    # (and of the process) never changes.
    t = threading.Thread(target=work, name=f"nsbridge-listen-{netns}")
    t.start()
    t.join()
    got = result[0]
    if isinstance(got, BaseException):
        raise BridgeError(f"cannot listen on {host}:{port} in netns {netns}: {got}") from got
    return got


@dataclass(frozen=True, slots=True)
class Listener:
    netns: str
    host: str
    port: int


class NamespaceBridge:
    """Forwards connections accepted in other namespaces to ``upstream`` (one thread)."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._sel = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._pairs: dict[socket.socket, socket.socket] = {}
        self._listeners: dict[Listener, socket.socket] = {}
        self._wake_r, self._wake_w = socket.socketpair()
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="nsbridge", daemon=True)
        self._thread.start()

    def add_listener(self, netns: str, host: str = "127.0.0.1", port: int = 2379) -> None:
        key = Listener(netns, host, port)
        with self._lock:
            if key in self._listeners:
                return
        sock = listen_in_netns(netns, host, port)
        sock.setblocking(False)
        with self._lock:
            self._listeners[key] = sock
            self._sel.register(sock, selectors.EVENT_READ, "listen")
        self._wake()
        log.info(
            "nsbridge.listen netns=%s addr=%s:%d upstream=%s:%d", netns, host, port, *self.upstream
        )

    def remove_listener(self, netns: str, host: str = "127.0.0.1", port: int = 2379) -> None:
        with self._lock:
            sock = self._listeners.pop(Listener(netns, host, port), None)
            if sock is not None:
                self._sel.unregister(sock)
                sock.close()
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def _close_pair(self, sock: socket.socket) -> None:
        other = self._pairs.pop(sock, None)
        for s in (sock, other):
            if s is None:
                continue
            self._pairs.pop(s, None)
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(s)
            s.close()

    def _accept(self, lsock: socket.socket) -> None:
        try:
            conn, _ = lsock.accept()
        except (BlockingIOError, OSError):
            return
        try:
            up = socket.create_connection(self.upstream, timeout=5)
        except OSError as exc:
            log.warning("nsbridge.upstream_failed error=%s", exc)
            conn.close()
            return
        for s in (conn, up):
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._pairs[conn] = up
        self._pairs[up] = conn
        self._sel.register(conn, selectors.EVENT_READ, "data")
        self._sel.register(up, selectors.EVENT_READ, "data")

    def _forward(self, sock: socket.socket) -> None:
        other = self._pairs.get(sock)
        if other is None:
            return
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close_pair(sock)
            return
        try:
            other.setblocking(True)
            other.sendall(data)
            other.setblocking(False)
        except OSError:
            self._close_pair(sock)

    def _run(self) -> None:
        while not self._stopping:
            for key, _ in self._sel.select(timeout=1.0):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if key.data == "wake":
                    sock.recv(4096)
                elif key.data == "listen":
                    with self._lock:
                        self._accept(sock)
                else:
                    self._forward(sock)

    def stop(self) -> None:
        self._stopping = True
        self._wake()
        self._thread.join(5)
        with self._lock:
            for sock in list(self._pairs):
                self._close_pair(sock)
            for sock in self._listeners.values():
                sock.close()
            self._listeners.clear()
        self._wake_r.close()
        self._wake_w.close()
        self._sel.close()
