"""Benchmark: tabby-bgp learning 10,000 routes into the kernel, next to BIRD; lab convergence;
session-loss detection against the configured hold time.

Run as root: ``.venv/bin/python -m bench.bench_bgp`` (writes docs/bench/bgp.md; ~6 minutes).
``--parts 1,3`` picks parts; ``--runs`` / ``--loss-runs`` set the repeats. ``--profile`` is the
diagnostics mode: the agent runs under ``python -m cProfile`` (slower, so the results file is NOT
rewritten); its top functions are printed and written to docs/bench/bgp-profile.txt.

Topology of parts 1 and 3 (every namespace is created here and deleted in ``finally``)::

    tabby node T (198.51.100.1/24) --eth0--eth0-- feeder namespace P1 (198.51.100.10/24)
    BIRD node  B (198.51.100.1/24) --eth0--eth0-- feeder namespace P2 (198.51.100.10/24)

The two receivers are in exactly the same position: same addresses, same link, same feed.
The feeder is a minimal BGP speaker written here (``Speaker``): a listening socket created inside
P1/P2 (the bench process enters the namespace in a short-lived thread), passive, iBGP AS 64512.
It exists to make the feed identical and instantaneous: 10,000 /26 NLRIs inside the IPPool
10.64.0.0/10 (next hop 198.51.100.10, ORIGIN IGP, empty AS_PATH, LOCAL_PREF 100) are encoded once,
packed ~800 per UPDATE (13 messages of <= 4096 bytes), and written with one ``sendall`` the moment
the session is Established (the receiver's KEEPALIVE arrived), followed by End-of-RIB. A BIRD or
ExaBGP sender would add its own start-up latency (BIRD 2.0.12 can hold its last updates ~3 s, see
FACTS.md) to both sides. The feeder accepts a connection only when a run arms it, so the receiver
that is not being measured waits in the listen backlog and costs nothing.

- T runs ``tabby-bgp`` under ``ip netns exec`` with TABBY_EXPECT_NETNS, against a private etcd
  (``lab.etcd.EtcdServer``) made reachable at 127.0.0.1:2379 by ``lab.nsbridge``. Resources:
  BGPConfiguration default (AS 64512, mesh on), IPPool 10.64.0.0/10 (blockSize 26, ipip Never),
  Node ``bench`` (198.51.100.1/24), BGPPeer ``feeder`` (198.51.100.10, AS 64512, holdTime 9s).
  The agent is started through ``python -m bench.bench_bgp agent-probe STATS -- ARGS``: the same
  ``bgp.main`` entry point with thin timing wrappers (monotonic stamps of the first/last UPDATE
  the agent applies to its RIB, and cumulative time in parse / decode / RIB / reconcile / kernel
  writes, plus a timeline of them), written to a JSON file by a thread every 0.1 s. The wrappers
  cost a few microseconds per event (13 UPDATEs, ~10 control passes, ~6 write batches per run).
- B runs ``bird -f`` (2.0.12): ``device``, ``direct`` (resolves the iBGP next hop), ``kernel``
  (export BGP routes into B's main table, proto ``bird`` = 12), ``bgp`` (hold 9, keepalive 3).

Measurements:
1. install: feeder's Established -> the 10,000th /26 route of the receiver's protocol (81 tabby,
   12 BIRD) appears in the receiver's kernel. Watched with an rtnetlink socket bound to
   RTMGRP_IPV4_ROUTE inside the receiver namespace (64 MiB receive buffer, no overflow seen), each
   message stamped with CLOCK_MONOTONIC when read (same clock as the feeder; resolution: the
   watcher's read lag, well under 1 ms per batch). Cross-checked with ``ip -j route show proto X``
   (must count 10,000). Removal: the feeder sends NOTIFICATION Cease and closes -> the last of the
   10,000 routes is deleted (no graceful restart advertised by the feeder in part 1).
   CPU: utime+stime(+cutime/cstime: the ``ip`` children) from /proc of the receiver's processes
   (tabby: agent + ExaBGP + API bridge; BIRD: bird) over the install (until 0.3 s after the last
   route) and over the removal; RSS: VmRSS / VmHWM after the install. Split (tabby): Established
   -> the last UPDATE applied to the agent's RIB (ExaBGP reads and hands over the bytes; the
   agent reads them between its route batches, so this overlaps its kernel work); that -> last
   route in the kernel. The CPU time of the bench's own route watcher (a thread of this process,
   on the same 2 CPUs) is reported for both receivers.
2. lab: ``tabby-lab up --nodes 10 --workloads-per-node 1`` (private name/state root), then every
   node's agent ``/status`` polled until each of its 9 mesh sessions is ``established``, then
   ``tabby-lab check --retries 1`` repeated until it exits 0; ``tabby-lab down`` in ``finally``.
3. session loss: with the feed installed, right after the feeder sent a KEEPALIVE, iptables DROP
   (INPUT and OUTPUT) inside the feeder namespace: no FIN, no RST, no NOTIFICATION, no carrier
   change. Detection: the receiver's TCP session to the feeder leaves ESTABLISHED (it sends its
   hold-timer NOTIFICATION and closes; ``ss`` polled every 20 ms in the receiver namespace), for
   tabby also the agent's ``state down`` event. Removal: the last of the 10,000 routes deleted.
   Two variants: the feeder's OPEN advertises graceful restart (restart time ``--restart-time``,
   default 6 s: routes kept stale that long after detection) or not. Hold time configured 9 s on
   both receivers (tabby: BGPPeer ``holdTime: 9s``); the feeder's keepalive interval is 3 s.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import platform
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

from bench.common import nsrun, run, write_results
from bgp import agent as agent_mod
from bgp import exabgp_api as api
from bgp import main as bgp_main
from datastore.codec import encode, resource_from_dict
from datastore.etcd import EtcdConfig, EtcdKVStore
from datastore.keys import resource_key
from kernel import routes as routes_mod
from kernel import rtnl_routes
from kernel.links import add_address, create_veth, set_link_up
from kernel.nl import run_in_netns
from lab.etcd import EtcdServer
from lab.nsbridge import NamespaceBridge, listen_in_netns

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "docs" / "bench" / "bgp.md"
PROFILE_OUT = REPO / "docs" / "bench" / "bgp-profile.txt"
VENV_BIN = Path(sys.executable).parent
API = "projectcalico.org/v3"
ASN = 64512
POOL = IPv4Network("10.64.0.0/10")
RECEIVER = IPv4Interface("198.51.100.1/24")
FEEDER = IPv4Interface("198.51.100.10/24")
PROTO_TABBY = 81
PROTO_BIRD = 12
HOLD = 9
KEEPALIVE = 3.0
NODE = "bench"
HEALTH_PORT = 9098


# ------------------------------------------------------------------------------ small helpers
def med(xs: Sequence[float]) -> float | None:
    return statistics.median(xs) if xs else None


class Namespaces:
    """Namespaces this run created (``tbb<pid>-*``); ``cleanup()`` kills what runs inside (our
    processes: we created the namespace) and deletes them."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self._n = 0

    def new(self, tag: str) -> str:
        self._n += 1
        name = f"tbb{os.getpid()}-{tag}{self._n}"
        run(["ip", "netns", "add", name])
        self.names.append(name)
        run(["ip", "-n", name, "link", "set", "lo", "up"])
        return name

    def cleanup(self) -> None:
        for name in reversed(list(self.names)):
            for pid in run(["ip", "netns", "pids", name], check=False).split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            run(["ip", "netns", "del", name], check=False)
        self.names.clear()


# ------------------------------------------------------------------------------ BGP wire format
MARKER = b"\xff" * 16
OPEN, UPDATE, NOTIFICATION, KEEPALIVE_MSG = 1, 2, 3, 4
MAX_MSG = 4096


def bgp_msg(mtype: int, body: bytes = b"") -> bytes:
    return MARKER + struct.pack("!HB", 19 + len(body), mtype) + body


def open_msg(asn: int, hold: int, router_id: IPv4Address, gr_time: int | None) -> bytes:
    caps = bytes([1, 4]) + struct.pack("!HBB", 1, 0, 1)  # multiprotocol: IPv4 unicast
    caps += bytes([65, 4]) + struct.pack("!I", asn)  # 4-octet AS
    caps += bytes([2, 0])  # route refresh
    if gr_time is not None:  # graceful restart: flags+time, then IPv4 unicast, no F bit
        caps += bytes([64, 6]) + struct.pack("!HHBB", gr_time & 0x0FFF, 1, 1, 0)
    params = bytes([2, len(caps)]) + caps
    my_as = asn if asn < 65536 else 23456
    body = struct.pack("!BHH4sB", 4, my_as, hold, router_id.packed, len(params)) + params
    return bgp_msg(OPEN, body)


def feed_prefixes(count: int) -> list[IPv4Network]:
    base = int(POOL.network_address)
    return [IPv4Network((base + (i << 6), 26)) for i in range(count)]


def update_msgs(prefixes: Sequence[IPv4Network], next_hop: IPv4Address) -> bytes:
    """iBGP UPDATEs carrying ``prefixes`` (same attributes), packed into <= 4096-byte messages."""
    attrs = (
        bytes([0x40, 1, 1, 0])  # ORIGIN IGP
        + bytes([0x40, 2, 0])  # AS_PATH (empty: iBGP, originated by the neighbour)
        + bytes([0x40, 3, 4])
        + next_hop.packed  # NEXT_HOP
        + bytes([0x40, 5, 4])
        + struct.pack("!I", 100)  # LOCAL_PREF
    )
    room = MAX_MSG - 19 - 4 - len(attrs)
    out: list[bytes] = []
    nlri = bytearray()
    for p in prefixes:
        octets = (p.prefixlen + 7) // 8
        item = bytes([p.prefixlen]) + p.network_address.packed[:octets]
        if len(nlri) + len(item) > room:
            out.append(bgp_msg(UPDATE, struct.pack("!HH", 0, len(attrs)) + attrs + bytes(nlri)))
            nlri = bytearray()
        nlri += item
    if nlri:
        out.append(bgp_msg(UPDATE, struct.pack("!HH", 0, len(attrs)) + attrs + bytes(nlri)))
    return b"".join(out)


EOR = bgp_msg(UPDATE, b"\x00\x00\x00\x00")
KEEPALIVE_BYTES = bgp_msg(KEEPALIVE_MSG)
CEASE = bgp_msg(NOTIFICATION, bytes([6, 2]))  # Cease / Administrative Shutdown


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return bytes(buf)


def read_msg(sock: socket.socket) -> tuple[int, bytes]:
    head = recv_exact(sock, 19)
    length, mtype = struct.unpack("!HB", head[16:19])
    return mtype, recv_exact(sock, length - 19) if length > 19 else b""


# ------------------------------------------------------------------------------ the feeder
@dataclass
class SessionConfig:
    feed: bytes
    hold: int = 90
    keepalive: float = KEEPALIVE
    gr_time: int | None = None
    accept_timeout: float = 120.0


class Session:
    """One feeder session: accept (only now), OPEN/KEEPALIVE, feed + End-of-RIB, keepalives."""

    def __init__(self, lsock: socket.socket, router_id: IPv4Address, cfg: SessionConfig) -> None:
        self.lsock = lsock
        self.router_id = router_id
        self.cfg = cfg
        self.sock: socket.socket | None = None
        self.established = threading.Event()
        self.closed = threading.Event()
        self.keepalive_sent = threading.Event()
        self.t_established = 0.0
        self.t_feed_sent = 0.0
        self.t_last_keepalive = 0.0
        self.peer_hold = 0
        self.silent = False
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.error = ""
        threading.Thread(target=self._run, name="feeder", daemon=True).start()

    def _handshake(self, conn: socket.socket) -> bool:
        conn.settimeout(30)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            conn.sendall(open_msg(ASN, self.cfg.hold, self.router_id, self.cfg.gr_time))
            got_open = False
            while True:
                mtype, body = read_msg(conn)
                if mtype == OPEN:
                    self.peer_hold = struct.unpack("!H", body[3:5])[0]
                    got_open = True
                    conn.sendall(KEEPALIVE_BYTES)
                elif mtype == KEEPALIVE_MSG and got_open:
                    self.t_established = time.monotonic()
                    return True
                elif mtype == NOTIFICATION:
                    self.error = f"notification {body[:2].hex()}"
                    return False
        except (OSError, ConnectionError) as exc:
            self.error = str(exc)
            return False

    def _run(self) -> None:
        deadline = time.monotonic() + self.cfg.accept_timeout
        self.lsock.settimeout(0.5)
        while not self._stop.is_set():
            if time.monotonic() > deadline:
                self.error = "no connection"
                self.closed.set()
                return
            try:
                conn, _ = self.lsock.accept()
            except TimeoutError:
                continue
            if self._handshake(conn):
                break
            conn.close()
        else:
            self.closed.set()
            return
        self.sock = conn
        conn.settimeout(None)
        self.established.set()
        threading.Thread(target=self._reader, name="feeder-reader", daemon=True).start()
        try:
            with self._lock:
                conn.sendall(self.cfg.feed + EOR)
            self.t_feed_sent = time.monotonic()
            while not self._stop.wait(self.cfg.keepalive):
                if self.silent:
                    continue
                with self._lock:
                    conn.sendall(KEEPALIVE_BYTES)
                self.t_last_keepalive = time.monotonic()
                self.keepalive_sent.set()
        except OSError:
            pass

    def _reader(self) -> None:
        assert self.sock is not None
        try:
            while True:
                mtype, _ = read_msg(self.sock)
                if mtype == NOTIFICATION:
                    break
        except (OSError, ConnectionError):
            pass
        self.closed.set()

    def wait_established(self, timeout: float) -> bool:
        return self.established.wait(timeout)

    def next_keepalive(self, timeout: float) -> float:
        """Block until the next KEEPALIVE went out; its send time."""
        self.keepalive_sent.clear()
        if not self.keepalive_sent.wait(timeout):
            raise RuntimeError("feeder sent no keepalive")
        return self.t_last_keepalive

    def cease(self) -> float:
        """NOTIFICATION Cease and close; returns the time just before the NOTIFICATION."""
        t = time.monotonic()
        self._stop.set()
        if self.sock is not None:
            with self._lock, contextlib.suppress(OSError):
                self.sock.sendall(CEASE)
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
            self.sock.close()
        return t

    def close(self) -> None:
        self._stop.set()
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()


class Speaker:
    """The feeder's listening socket in its namespace; ``arm`` accepts one session."""

    def __init__(self, netns: str, address: IPv4Address, port: int = 179) -> None:
        self.netns = netns
        self.router_id = address
        self.lsock = listen_in_netns(netns, str(address), port)

    def arm(self, cfg: SessionConfig) -> Session:
        return Session(self.lsock, self.router_id, cfg)

    def close(self) -> None:
        self.lsock.close()


# ------------------------------------------------------------------------------ route watcher
RTMGRP_IPV4_ROUTE = 0x40
RTM_NEWROUTE, RTM_DELROUTE = 24, 25
SO_RCVBUFFORCE = 33


class RouteWatch:
    """Counts /26 routes of one protocol inside ``POOL`` in a namespace, from rtnetlink events."""

    def __init__(self, netns: str, protocol: int) -> None:
        self.protocol = protocol
        self.sock: socket.socket = run_in_netns(netns, self._open)
        self.routes: set[int] = set()
        self.t_last_new = 0.0
        self.t_last_del = 0.0
        self.t_first_new = 0.0
        self.overflow = False
        self.cpu = 0.0  # this thread's CPU time (the measurement's own load on the machine)
        self.cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="route-watch", daemon=True)
        self._thread.start()

    @staticmethod
    def _open() -> socket.socket:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 << 20)
        s.bind((0, RTMGRP_IPV4_ROUTE))
        s.settimeout(0.2)
        return s

    def _run(self) -> None:
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        lo, hi = int(POOL.network_address), int(POOL.broadcast_address)
        proto = self.protocol
        while not self._stop:
            try:
                n = self.sock.recv_into(buf)
            except TimeoutError:
                continue
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self.overflow = True
                    continue
                return
            now = time.monotonic()
            cpu0 = time.thread_time()
            off = 0
            changed = False
            while off + 16 <= n:
                mlen, mtype = struct.unpack_from("=IH", view, off)
                if mlen < 16:
                    break
                if mtype in (RTM_NEWROUTE, RTM_DELROUTE) and buf[off + 21] == proto:
                    dst = self._dst(view, off, mlen) if buf[off + 17] == 26 else None
                    if dst is not None and lo <= dst <= hi:
                        changed = True
                        if mtype == RTM_NEWROUTE:
                            if not self.routes:
                                self.t_first_new = now
                            self.routes.add(dst)
                            self.t_last_new = now
                        else:
                            self.routes.discard(dst)
                            self.t_last_del = now
                off += (mlen + 3) & ~3
            self.cpu += time.thread_time() - cpu0
            if changed:
                with self.cond:
                    self.cond.notify_all()

    @staticmethod
    def _dst(view: memoryview, off: int, mlen: int) -> int | None:
        pos = off + 16 + 12  # nlmsghdr + rtmsg
        end = off + mlen
        while pos + 4 <= end:
            alen, atype = struct.unpack_from("=HH", view, pos)
            if alen < 4:
                return None
            if atype == 1 and alen >= 8:  # RTA_DST
                value: int = struct.unpack_from("!I", view, pos + 4)[0]
                return value
            pos += (alen + 3) & ~3
        return None

    def wait_count(self, want: Callable[[int], bool], timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: want(len(self.routes)), timeout)

    def stop(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()


def kernel_count(ns: str, protocol: int) -> int:
    out = nsrun(ns, ["ip", "-j", "route", "show", "proto", str(protocol)])
    return sum(
        1
        for r in json.loads(out or "[]")
        if r.get("dst", "").endswith("/26") and IPv4Network(r["dst"]).subnet_of(POOL)
    )


# ------------------------------------------------------------------------------ process stats
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(_stat(int(entry))[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime+stime+cutime+cstime of ``pids`` (children already waited for count too)."""
    ticks = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            f = _stat(pid)
            ticks += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
    return ticks / CLK_TCK


def memory_kib(pids: Sequence[int]) -> tuple[int, int]:
    """(sum VmRSS, sum VmHWM) in KiB."""
    rss = hwm = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm += int(line.split()[1])
    return rss, hwm


# ------------------------------------------------------------------------------ receivers
def resource_docs(hold: int) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": API,
            "kind": "BGPConfiguration",
            "metadata": {"name": "default"},
            "spec": {"nodeToNodeMeshEnabled": True, "asNumber": ASN},
        },
        {
            "apiVersion": API,
            "kind": "IPPool",
            "metadata": {"name": "bench-pool"},
            "spec": {"cidr": str(POOL), "blockSize": 26, "ipipMode": "Never"},
        },
        {
            "apiVersion": API,
            "kind": "Node",
            "metadata": {"name": NODE},
            "spec": {"bgp": {"ipv4Address": str(RECEIVER)}},
        },
        {
            "apiVersion": API,
            "kind": "BGPPeer",
            "metadata": {"name": "feeder"},
            "spec": {"peerIP": str(FEEDER.ip), "asNumber": ASN, "holdTime": f"{hold}s"},
        },
    ]


@dataclass
class Receiver:
    kind: str  # "tabby" | "bird"
    netns: str
    feeder_ns: str
    protocol: int
    speaker: Speaker
    watch: RouteWatch
    proc: subprocess.Popen[bytes]
    log_path: Path
    stats_path: Path | None = None

    def pids(self) -> list[int]:
        return descendants(self.proc.pid)

    def cpu(self) -> float:
        return cpu_seconds(self.pids())

    def cpu_by_role(self) -> dict[str, float]:
        """CPU seconds per role: ``agent`` (with its ``ip`` children), ``exabgp``, ``bridge``."""
        out: dict[str, float] = {}
        for pid in self.pids():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            role = "exabgp" if b"exabgp" in cmd else "bridge" if b"api_bridge" in cmd else "agent"
            out[role] = out.get(role, 0.0) + cpu_seconds([pid])
        return out

    def probe(self) -> dict[str, Any]:
        if self.stats_path is None:
            return {}
        with contextlib.suppress(OSError, ValueError):
            data: dict[str, Any] = json.loads(self.stats_path.read_text())
            return data
        return {}


@dataclass
class Bed:
    tmp: Path
    ns: Namespaces = field(default_factory=Namespaces)
    etcd: EtcdServer | None = None
    bridge: NamespaceBridge | None = None
    store: EtcdKVStore | None = None
    receivers: list[Receiver] = field(default_factory=list)
    speakers: list[Speaker] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def pair(self, tag: str) -> tuple[str, str]:
        rx = self.ns.new(tag)
        fx = self.ns.new(f"{tag}f")
        create_veth(rx, "eth0", fx, "eth0")
        add_address(rx, "eth0", RECEIVER)
        add_address(fx, "eth0", FEEDER)
        set_link_up(rx, "eth0")
        set_link_up(fx, "eth0")
        return rx, fx

    def spawn(self, argv: Sequence[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                list(argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=REPO,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def start_tabby(self, profile: Path | None) -> Receiver:
        rx, fx = self.pair("tby")
        self.etcd = EtcdServer(self.tmp / "etcd")
        self.etcd.start()
        self.bridge = NamespaceBridge(("127.0.0.1", self.etcd.client_port))
        self.bridge.add_listener(rx, "127.0.0.1", 2379)
        self.store = EtcdKVStore(EtcdConfig(endpoints=(self.etcd.endpoint,)))
        for doc in resource_docs(HOLD):
            res = resource_from_dict(doc)
            self.store.put(resource_key(res.kind, res.metadata.name, None), encode(res))
        speaker = Speaker(fx, FEEDER.ip)
        self.speakers.append(speaker)
        watch = RouteWatch(rx, PROTO_TABBY)
        stats = self.tmp / "agent-stats.json"
        log = self.tmp / "tabby-bgp.log"
        py = [sys.executable]
        if profile is not None:
            py += ["-m", "cProfile", "-o", str(profile)]
        argv = [
            "ip",
            "netns",
            "exec",
            rx,
            *py,
            "-m",
            "bench.bench_bgp",
            "agent-probe",
            str(stats),
            "--",
            "--node-name",
            NODE,
            "--state-dir",
            str(self.tmp / "bgp-state"),
            "--health-port",
            str(HEALTH_PORT),
            "--log-level",
            "Info",
        ]
        env = {
            **os.environ,
            "ETCD_ENDPOINTS": "http://127.0.0.1:2379",
            "TABBY_EXPECT_NETNS": rx,
            "PYTHONPATH": str(REPO),
        }
        proc = self.spawn(argv, log, env)
        r = Receiver("tabby", rx, fx, PROTO_TABBY, speaker, watch, proc, log, stats)
        self.receivers.append(r)
        return r

    def start_bird(self) -> Receiver:
        rx, fx = self.pair("brd")
        conf = self.tmp / "bird.conf"
        log = self.tmp / "bird.log"
        conf.write_text(
            f"""
router id {RECEIVER.ip};
log "{self.tmp / "bird-daemon.log"}" {{ info, remote, warning, error, auth, fatal, bug }};
protocol device {{ scan time 10; }}
protocol direct {{ ipv4; interface "eth0"; }}
protocol kernel {{
    ipv4 {{ import none; export where source = RTS_BGP; }};
    learn off;
    scan time 60;
}}
protocol bgp feeder {{
    local {RECEIVER.ip} as {ASN};
    neighbor {FEEDER.ip} as {ASN};
    hold time {HOLD};
    keepalive time {int(KEEPALIVE)};
    connect delay time 1;
    connect retry time 2;
    error wait time 1, 2;
    error forget time 5;
    ipv4 {{ import all; export none; }};
}}
"""
        )
        speaker = Speaker(fx, FEEDER.ip)
        self.speakers.append(speaker)
        watch = RouteWatch(rx, PROTO_BIRD)
        sock = self.tmp / "bird.ctl"
        argv = ["ip", "netns", "exec", rx, "bird", "-f", "-c", str(conf), "-s", str(sock)]
        proc = self.spawn(argv, log, dict(os.environ))
        r = Receiver("bird", rx, fx, PROTO_BIRD, speaker, watch, proc, log)
        self.receivers.append(r)
        return r

    def close(self) -> None:
        for r in self.receivers:
            r.watch.stop()
        for s in self.speakers:
            s.close()
        for proc in self.procs:  # ours, by PID
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        if self.store is not None:
            self.store.close()
        if self.bridge is not None:
            self.bridge.stop()
        if self.etcd is not None:
            self.etcd.stop()
        self.ns.cleanup()


# ------------------------------------------------------------------------------ part 1
def install_run(r: Receiver, feed: bytes, n: int) -> dict[str, Any]:
    w = r.watch
    if not w.wait_count(lambda c: c == 0, 30):
        raise RuntimeError(f"{r.kind}: routes left over before the run")
    p0 = r.probe()
    watch_cpu0 = w.cpu
    roles0 = r.cpu_by_role()
    cpu0 = r.cpu()
    sess = r.speaker.arm(SessionConfig(feed=feed))
    try:
        if not sess.wait_established(120):
            raise RuntimeError(f"{r.kind}: no session ({sess.error}); see {r.log_path}")
        if not w.wait_count(lambda c: c >= n, 120):
            raise RuntimeError(f"{r.kind}: only {len(w.routes)}/{n} routes installed")
        t_full = w.t_last_new
        time.sleep(0.3)
        cpu_install = r.cpu() - cpu0
        watch_cpu = w.cpu - watch_cpu0
        roles1 = r.cpu_by_role()
        pids = r.pids()
        rss, hwm = memory_kib(pids)
        per_proc = {pid: memory_kib([pid])[0] for pid in pids}
        count = kernel_count(r.netns, r.protocol)
        p1 = r.probe()
        cpu1 = r.cpu()
        t_cut = sess.cease()
        if not w.wait_count(lambda c: c == 0, 120):
            raise RuntimeError(f"{r.kind}: {len(w.routes)} routes left after session loss")
        t_empty = w.t_last_del
        time.sleep(0.3)
        cpu_remove = r.cpu() - cpu1
    finally:
        sess.close()
    out: dict[str, Any] = {
        "install": t_full - sess.t_established,
        "first": w.t_first_new - sess.t_established,
        "remove": t_empty - t_cut,
        "cpu_install": cpu_install,
        "cpu_watch": watch_cpu,
        "cpu_remove": cpu_remove,
        "rss_kib": rss,
        "hwm_kib": hwm,
        "rss_per_proc": sorted(per_proc.values(), reverse=True),
        "kernel_count": count,
        "feed_sent": sess.t_feed_sent - sess.t_established,
        "overflow": w.overflow,
    }
    for role, value in roles1.items():
        out[f"cpu_{role}"] = value - roles0.get(role, 0.0)
    if p1:
        d = {k: p1.get(k, 0) - p0.get(k, 0) for k in p1 if isinstance(p1.get(k), (int, float))}
        out["probe"] = d
        out["exabgp_part"] = p1["t_last_update"] - sess.t_established
        out["first_update"] = p1["t_first_update_run"] - sess.t_established
        out["tabby_part"] = t_full - p1["t_last_update"]
        out["last_reconcile_end"] = p1["t_reconcile_end"] - sess.t_established
    return out


def part1(bed: Bed, runs: int, n: int) -> dict[str, list[dict[str, Any]]]:
    feed = update_msgs(feed_prefixes(n), FEEDER.ip)
    res: dict[str, list[dict[str, Any]]] = {r.kind: [] for r in bed.receivers}
    for i in range(runs):
        order = bed.receivers if i % 2 == 0 else list(reversed(bed.receivers))
        for r in order:
            one = install_run(r, feed, n)
            res[r.kind].append(one)
            split = (
                f" (ExaBGP {one['exabgp_part'] * 1000:.0f} ms + tabby "
                f"{one['tabby_part'] * 1000:.0f} ms)"
                if "exabgp_part" in one
                else ""
            )
            print(
                f"  run {i + 1} {r.kind:5}: install {one['install'] * 1000:7.1f} ms{split}, "
                f"remove {one['remove'] * 1000:6.1f} ms, cpu {one['cpu_install']:.2f}+"
                f"{one['cpu_remove']:.2f} s, rss {one['rss_kib'] / 1024:.1f} MiB",
                flush=True,
            )
    return res


# ------------------------------------------------------------------------------ part 3
def session_up(ns: str) -> bool:
    out = nsrun(ns, ["ss", "-Htn", "state", "established", "dst", str(FEEDER.ip)], check=False)
    return bool(out.strip())


def loss_run(r: Receiver, feed: bytes, n: int, gr_time: int | None) -> dict[str, Any]:
    w = r.watch
    if not w.wait_count(lambda c: c == 0, 60):
        raise RuntimeError(f"{r.kind}: routes left over before the run")
    sess = r.speaker.arm(SessionConfig(feed=feed, gr_time=gr_time))
    dropped = False
    try:
        if not sess.wait_established(120):
            raise RuntimeError(f"{r.kind}: no session ({sess.error})")
        if not w.wait_count(lambda c: c >= n, 120):
            raise RuntimeError(f"{r.kind}: only {len(w.routes)}/{n} routes installed")
        time.sleep(0.5)
        t_ka = sess.next_keepalive(2 * KEEPALIVE + 1)
        for chain in ("INPUT", "OUTPUT"):
            nsrun(r.feeder_ns, ["iptables", "-w", "-I", chain, "-j", "DROP"])
        dropped = True
        sess.silent = True
        t_cut = time.monotonic()
        deadline = t_cut + 4 * HOLD
        while session_up(r.netns) and time.monotonic() < deadline:
            time.sleep(0.02)
        t_down = time.monotonic()
        limit = HOLD * 4 + (gr_time or 0) + 30
        if not w.wait_count(lambda c: c == 0, limit):
            raise RuntimeError(f"{r.kind}: {len(w.routes)} routes left after the cut")
        t_empty = w.t_last_del
        p = r.probe()
    finally:
        if dropped:
            for chain in ("INPUT", "OUTPUT"):
                nsrun(r.feeder_ns, ["iptables", "-w", "-D", chain, "-j", "DROP"], check=False)
        sess.close()
    out: dict[str, Any] = {
        "gap": t_cut - t_ka,
        "detect": t_down - t_ka,
        "remove": t_empty - t_ka,
        "remove_after_detect": t_empty - t_down,
    }
    if p.get("t_state_down", 0) > t_ka:
        out["agent_down"] = p["t_state_down"] - t_ka
    return out


def part3(bed: Bed, runs: int, n: int, restart: int) -> dict[str, list[dict[str, Any]]]:
    feed = update_msgs(feed_prefixes(n), FEEDER.ip)
    res: dict[str, list[dict[str, Any]]] = {}
    for variant, gr in (("gr", restart), ("nogr", None)):
        for r in bed.receivers:
            key = f"{r.kind}-{variant}"
            res[key] = []
            for i in range(runs):
                one = loss_run(r, feed, n, gr)
                res[key].append(one)
                agent = (
                    f", agent state down {one['agent_down']:.2f} s" if "agent_down" in one else ""
                )
                print(
                    f"  {key:10} run {i + 1}: detect {one['detect']:.2f} s{agent}, "
                    f"routes gone {one['remove']:.2f} s after the last keepalive",
                    flush=True,
                )
    return res


# ------------------------------------------------------------------------------ part 2
def lab_status(ns: str) -> list[str]:
    out = nsrun(
        ns,
        ["curl", "-s", "-m", "2", f"http://127.0.0.1:{HEALTH_PORT}/status"],
        check=False,
    )
    try:
        doc = json.loads(out)
    except ValueError:
        return []
    return [str(p.get("state")) for p in doc.get("peers", [])]


def part2(tmp: Path, nodes: int) -> dict[str, Any]:
    name = f"bb{os.getpid() % 100000}"
    root = tmp / "lab"
    lab = [str(VENV_BIN / "tabby-lab"), "--name", name, "--state-root", str(root)]
    topo_file = root / name / "topology.json"
    out: dict[str, Any] = {"nodes": nodes}
    established: list[float] = []
    stop = threading.Event()

    def all_established() -> bool:
        try:
            topo = json.loads(topo_file.read_text())
        except (OSError, ValueError):
            return False
        node_ns = [nd["netns"] for nd in topo["nodes"]]
        if not all(Path(f"/run/netns/{ns}").exists() for ns in node_ns):
            return False
        for ns in node_ns:
            st = lab_status(ns)
            if len(st) != nodes - 1 or set(st) != {"established"}:
                return False
        return True

    def poll() -> None:  # concurrently with `up`: agents start before `up` returns
        while not stop.is_set():
            if all_established():
                established.append(time.monotonic() - t0)
                return
            stop.wait(0.3)

    t0 = time.monotonic()
    poller = threading.Thread(target=poll, name="lab-sessions", daemon=True)
    poller.start()
    try:
        res = subprocess.run(
            [*lab, "up", "--nodes", str(nodes), "--workloads-per-node", "1"],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        out["up"] = time.monotonic() - t0
        out["up_log"] = res.stdout[-3000:]
        if res.returncode != 0:
            raise RuntimeError(f"tabby-lab up failed: {res.stdout[-2000:]} {res.stderr[-2000:]}")
        poller.join(600)
        if not established:
            raise RuntimeError("not every mesh session established after 600 s")
        out["sessions"] = established[0]
        checks = 0
        while True:
            checks += 1
            res = subprocess.run(
                [*lab, "check", "--retries", "1"],
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
                stdin=subprocess.DEVNULL,
            )
            if res.returncode == 0:
                out["check_output"] = res.stdout.strip().splitlines()[-1]
                break
            if time.monotonic() - t0 > 900:
                raise RuntimeError(f"check never green: {res.stdout[-2000:]}")
        out["green"] = time.monotonic() - t0
        out["checks"] = checks
    finally:
        stop.set()
        subprocess.run([*lab, "down"], capture_output=True, timeout=300, check=False)
    return out


# ------------------------------------------------------------------------------ agent probe
def agent_probe(stats_path: str, argv: list[str]) -> None:
    """Run ``bgp.main`` with timing wrappers (see the module doc); never returns."""
    st: dict[str, float] = {
        "lines": 0,
        "parse_s": 0.0,
        "decode_s": 0.0,
        "decoded": 0,
        "updates": 0,
        "prefixes": 0,
        "update_s": 0.0,
        "reconciles": 0,
        "reconcile_s": 0.0,
        "ip_s": 0.0,
        "ip_calls": 0,
        "ops": 0,
        "t_first_update_run": 0.0,
        "t_last_update": 0.0,
        "t_reconcile_end": 0.0,
        "t_state_down": 0.0,
        "t_state_up": 0.0,
    }
    # (monotonic time, what, count, seconds): UPDATE events, kernel reconciles, apply calls
    timeline: list[tuple[float, str, int, float]] = []
    path = Path(stats_path)
    clock = time.perf_counter

    def save() -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({**st, "timeline": timeline}))
        tmp.replace(path)

    orig_parse = api.parse_line

    def parse_line(line: str) -> api.Event:
        t = clock()
        try:
            return orig_parse(line)
        finally:
            st["parse_s"] += clock() - t
            st["lines"] += 1

    api.parse_line = parse_line
    orig_decode = api.decode_raw

    def decode_raw(ev: api.RawUpdateEvent, *, asn4: bool = True) -> api.UpdateEvent | api.EorEvent:
        t = clock()
        try:
            return orig_decode(ev, asn4=asn4)
        finally:
            st["decode_s"] += clock() - t
            st["decoded"] += 1

    api.decode_raw = decode_raw
    orig_event = agent_mod.BgpAgent._on_event

    def on_event(self: agent_mod.BgpAgent, ev: api.Event) -> None:
        if isinstance(ev, api.UpdateEvent):
            now = time.monotonic()
            if st["t_last_update"] < st["t_state_up"]:
                st["t_first_update_run"] = now
            st["t_last_update"] = now
            t = clock()
            orig_event(self, ev)
            st["update_s"] += clock() - t
            st["updates"] += 1
            st["prefixes"] += ev.size
            timeline.append((now, "update", ev.size, clock() - t))
            return
        orig_event(self, ev)
        if isinstance(ev, api.StateEvent):
            st["t_state_up" if ev.state == "up" else "t_state_down"] = time.monotonic()
            save()

    agent_mod.BgpAgent._on_event = on_event  # type: ignore[method-assign]
    orig_reconcile = agent_mod.BgpAgent._reconcile_kernel

    def reconcile(self: agent_mod.BgpAgent) -> bool:
        t = clock()
        ops0 = st["ops"]
        changed = orig_reconcile(self)
        timeline.append((time.monotonic(), "reconcile", int(changed), clock() - t))
        st["reconcile_s"] += clock() - t
        st["reconciles"] += 1
        if st["ops"] != ops0:
            st["t_reconcile_end"] = time.monotonic()
        return changed

    agent_mod.BgpAgent._reconcile_kernel = reconcile  # type: ignore[method-assign]
    orig_send = rtnl_routes.NetlinkRouteBackend.send

    def send(
        self: rtnl_routes.NetlinkRouteBackend, prepared: routes_mod.PreparedOps
    ) -> list[routes_mod.OpResult]:
        t = clock()
        try:
            return orig_send(self, prepared)
        finally:
            timeline.append((time.monotonic(), "apply", len(prepared.ops), clock() - t))
            st["ip_s"] += clock() - t
            st["ip_calls"] += 1
            st["ops"] += len(prepared.ops)

    rtnl_routes.NetlinkRouteBackend.send = send  # type: ignore[method-assign]

    def saver() -> None:
        # every 0.1 s, not at every reconcile: writing the file there cost the agent ~1 ms per
        # control pass, which the measurement would include (the bench reads it 0.3 s after
        # the last route)
        while True:
            time.sleep(0.1)
            with contextlib.suppress(Exception):
                save()

    save()
    threading.Thread(target=saver, daemon=True, name="bench-probe-saver").start()
    bgp_main.main.main(args=argv, prog_name="tabby-bgp")


# ------------------------------------------------------------------------------ report
def ms(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 1000:.1f}"


def sec(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f} s"


def col(rows: list[dict[str, Any]], key: str) -> list[float]:
    return [float(r[key]) for r in rows if key in r]


def report(args: argparse.Namespace, r: dict[str, Any]) -> str:
    lines: list[str] = [
        "# BGP benchmark: tabby-bgp next to BIRD",
        "",
        f"`.venv/bin/python -m bench.bench_bgp {' '.join(args.argv)}`".replace(" `", "`"),
        f"— {platform.node()} ({os.cpu_count()} CPUs, kernel {platform.release()}), "
        f"{time.strftime('%Y-%m-%d %H:%M')}, load average at start {r['load']}. "
        "Method: see the module docstring of `bench/bench_bgp.py`.",
        "",
    ]
    p1 = r.get("part1")
    if p1:
        t, b = p1.get("tabby", []), p1.get("bird", [])
        n = args.routes
        lines += [
            f"## 1. {n:,} learned /26 routes into the kernel (median of {len(t)} runs each)",
            "",
            "Feeder: the bench's own minimal BGP speaker (identical bytes to both receivers, "
            "sent in one write at Established). Times from the feeder's Established; kernel "
            "events from an rtnetlink listener in the receiver's namespace.",
            "",
            "| metric | tabby-bgp | BIRD 2.0.12 | tabby/BIRD |",
            "|---|---:|---:|---:|",
        ]

        def row(label: str, key: str, scale: float = 1000.0, unit: str = "ms") -> None:
            a, c = med(col(t, key)), med(col(b, key))
            ratio = f"{a / c:.1f}x" if a is not None and c else "n/a"
            fa = "n/a" if a is None else f"{a * scale:.1f} {unit}"
            fc = "n/a" if c is None else f"{c * scale:.1f} {unit}"
            lines.append(f"| {label} | {fa} | {fc} | {ratio} |")

        row("Established -> first route in kernel", "first")
        row("**Established -> last route in kernel**", "install")
        row("**session loss (Cease) -> last route removed**", "remove")
        row("CPU during install (all receiver processes)", "cpu_install")
        row("CPU during removal", "cpu_remove")
        row("CPU of the bench's route watcher during install (same machine)", "cpu_watch")
        row("RSS after install", "rss_kib", 1 / 1024, "MiB")
        row("peak RSS (VmHWM, summed)", "hwm_kib", 1 / 1024, "MiB")
        lines += [
            "",
            "Per run (ms): tabby install "
            + ", ".join(ms(x) for x in col(t, "install"))
            + "; BIRD install "
            + ", ".join(ms(x) for x in col(b, "install"))
            + "; tabby removal "
            + ", ".join(ms(x) for x in col(t, "remove"))
            + "; BIRD removal "
            + ", ".join(ms(x) for x in col(b, "remove"))
            + ".",
            f"Kernel read-back after install: tabby {sorted({x['kernel_count'] for x in t})}, "
            f"BIRD {sorted({x['kernel_count'] for x in b})} routes; rtnetlink overflow: "
            f"{any(x['overflow'] for x in t + b)}. Feed write took "
            f"{ms(med(col(t + b, 'feed_sent')))} ms (median).",
        ]
        if t and "probe" in t[0]:
            rss = t[-1]["rss_per_proc"]
            lines += [
                "",
                "### Split of tabby's install time (median)",
                "",
                "| part | ms |",
                "|---|---:|",
                f"| Established -> the agent applies the first UPDATE to its RIB | "
                f"{ms(med(col(t, 'first_update')))} |",
                f"| Established -> the agent applies the last UPDATE (ExaBGP's read, the API "
                f"bridge, and the agent reading between its route batches) | "
                f"{ms(med(col(t, 'exabgp_part')))} |",
                f"| last UPDATE applied -> last route in the kernel | "
                f"{ms(med(col(t, 'tabby_part')))} |",
                "",
                "Time inside tabby's code during one install (median, summed over the run):",
                "",
                "| tabby code | ms | count |",
                "|---|---:|---:|",
            ]
            pr = [x["probe"] for x in t]

            def prow(label: str, key: str, count: str) -> None:
                lines.append(
                    f"| {label} | {ms(med([p[key] for p in pr]))} | {med([p[count] for p in pr])} |"
                )

            prow("`exabgp_api.parse_line` (JSON -> events), lines", "parse_s", "lines")
            prow("`exabgp_api.decode_raw` (UPDATE bytes -> routes), UPDATEs", "decode_s", "decoded")
            prow("`_on_event` for UPDATE events (RIB updates), events", "update_s", "updates")
            prow(
                "`_reconcile_kernel` (best paths, kernel routes, desired state), calls",
                "reconcile_s",
                "reconciles",
            )
            prow(
                "kernel writes (`NetlinkRouteBackend.send`, in the writer thread), calls",
                "ip_s",
                "ip_calls",
            )
            lines += [
                "",
                f"CPU during install by process (median): agent (incl. its `ip` children) "
                f"{ms(med(col(t, 'cpu_agent')))} ms, ExaBGP {ms(med(col(t, 'cpu_exabgp')))} ms, "
                f"API bridge {ms(med(col(t, 'cpu_bridge')))} ms. RSS per process after install "
                f"(KiB, largest first; agent, ExaBGP, bridge): {rss}.",
            ]
        ratio = None
        if med(col(t, "install")) and med(col(b, "install")):
            ratio = med(col(t, "install")) / med(col(b, "install"))  # type: ignore[operator]
        lines += [
            "",
            f"**Install ratio tabby/BIRD: {ratio:.1f}x** (target <= 1.5x)."
            if ratio is not None
            else "",
        ]
    p2 = r.get("part2")
    if p2:
        lines += [
            "",
            f"## 2. Lab convergence: `tabby-lab up --nodes {p2['nodes']} --workloads-per-node 1`",
            "",
            "Sessions are polled (every node's agent `/status`, every 0.3 s) while `up` runs: "
            "the agents start before `up` has created the workloads. `check` runs after `up` "
            "returned, repeated until it exits 0.",
            "",
            "| milestone | wall time from the start of `up` |",
            "|---|---:|",
        ]
        if "sessions" in p2:
            lines.append(
                f"| every node: all {p2['nodes'] - 1} mesh sessions established "
                f"| {sec(p2['sessions'])} |"
            )
        lines.append(
            f"| `tabby-lab up` returned (fabric, etcd, agents, resources, CNI) "
            f"| {sec(p2.get('up'))} |"
        )
        if "green" in p2:
            lines.append(
                f"| `tabby-lab check` green ({p2['checks']} check run(s); {p2['check_output']}) "
                f"| {sec(p2['green'])} |"
            )
            lines.append(f"\n`tabby-lab up` output:\n\n```\n{p2.get('up_log', '').strip()}\n```")
        if "error" in p2:
            lines.append(f"\nFAILED: {p2['error']}")
    p3 = r.get("part3")
    if p3:
        lines += [
            "",
            f"## 3. Silent session loss (hold time {HOLD} s configured on the receiver)",
            "",
            f"Cut = iptables DROP in the feeder namespace right after the feeder's KEEPALIVE (the "
            f"receiver's hold timer restarted then, so detection is expected at ~{HOLD} s). "
            f"Times from that last KEEPALIVE; median of {args.loss_runs} runs. `gr`: the feeder "
            f"advertised graceful restart with restart time {args.restart_time} s (stale routes "
            f"kept that long); `nogr`: it did not.",
            "",
            "| receiver | variant | detection (TCP session closed) | agent `state down` | "
            "last route removed | removal after detection |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for key, rows in p3.items():
            kind, variant = key.split("-")
            lines.append(
                f"| {kind} | {variant} | {sec(med(col(rows, 'detect')))} | "
                f"{sec(med(col(rows, 'agent_down')))} | {sec(med(col(rows, 'remove')))} | "
                f"{sec(med(col(rows, 'remove_after_detect')))} |"
            )
        gaps = [x["gap"] for v in p3.values() for x in v]
        lines.append("")
        lines.append(
            "Per run detection (s): "
            + "; ".join(
                f"{k} " + ", ".join(sec(x) for x in col(v, "detect")) for k, v in p3.items()
            )
            + f". Keepalive -> DROP in place: {ms(med(gaps))} ms."
        )
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ main
def main(argv: Sequence[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    if args_in[:1] == ["agent-probe"]:
        rest = args_in[2:]
        agent_probe(args_in[1], rest[1:] if rest[:1] == ["--"] else rest)
        return 0
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--parts", default="1,2,3", help="comma-separated: 1 install, 2 lab, 3 loss")
    ap.add_argument("--routes", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=7, help="part 1 repeats per receiver")
    ap.add_argument("--loss-runs", type=int, default=3, help="part 3 repeats per variant")
    ap.add_argument("--restart-time", type=int, default=6, help="feeder's graceful restart time")
    ap.add_argument("--lab-nodes", type=int, default=10)
    ap.add_argument("--profile", action="store_true", help="cProfile the agent; no results file")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--keep-tmp", action="store_true")
    args = ap.parse_args(args_in)
    args.argv = args_in
    if os.geteuid() != 0:
        print("run as root", file=sys.stderr)
        return 2
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if args.profile:
        parts &= {"1"}
    tmp = Path(tempfile.mkdtemp(prefix="tabby-bench-bgp-"))
    r: dict[str, Any] = {"load": Path("/proc/loadavg").read_text().split()[:3]}
    prof = tmp / "agent.prof" if args.profile else None
    bed = Bed(tmp)
    try:
        if parts & {"1", "3"}:
            print("setting up tabby and BIRD receivers ...", flush=True)
            bed.start_tabby(prof)
            if not args.profile:
                bed.start_bird()
            if "1" in parts:
                print(f"part 1: {args.routes} routes, {args.runs} runs per receiver", flush=True)
                r["part1"] = part1(bed, args.runs, args.routes)
            if "3" in parts:
                print("part 3: silent session loss", flush=True)
                r["part3"] = part3(bed, args.loss_runs, args.routes, args.restart_time)
    finally:
        bed.close()
    if "2" in parts:
        print(f"part 2: lab with {args.lab_nodes} nodes", flush=True)
        try:
            r["part2"] = part2(tmp, args.lab_nodes)
        except Exception as exc:  # reported, not hidden
            r["part2"] = {"nodes": args.lab_nodes, "error": str(exc)}
    text = report(args, r)
    print(text)
    write_results(
        text,
        args.out,
        prof,
        PROFILE_OUT,
        f"cProfile of tabby-bgp during `bench.bench_bgp --profile` ({args.runs} installs + "
        f"removals of {args.routes} routes)",
        tmp,
        args.keep_tmp,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
