"""Benchmark: felix end to end at scale: programming latency, start of day, physical limit, idle.

Run as root: ``.venv/bin/python -m bench.bench_felix`` (writes docs/bench/felix.md; ~3 minutes).
``--profile`` is the diagnostics mode: felix runs under ``python -m cProfile`` (slower, so the
results file is NOT rewritten) and the top functions are printed and saved next to the log.

Data (one private etcd, ``lab.etcd.EtcdServer``): 250 local WorkloadEndpoints on ``node1``,
10,000 remote ones on 100 other nodes, 500 policies in three tiers (``security`` order 100 and
``platform`` order 200 ending in Pass, ``default`` with Allow rules; 350 global, 150 namespaced),
20 profiles, selectors over small label alphabets (app x25, role x4, tier x3, env x2, version x3)
so that each selects tens to hundreds of endpoints; rules carry selectors, ports, port ranges,
nets. Loaded as typed resources (``resource_from_dict`` + ``encode``) in 128-op transactions.

Topology (every namespace created here and deleted in ``finally``, even on Ctrl-C):
  outside (198.51.100.2) --eth0-- node (198.51.100.1, default via outside, runs tabby-felix)
  node --tbwrNNN-- 24 real workload namespaces (10.65.0.N/32, default via 169.254.1.1)
  node: 226 more local endpoints are veth pairs with both ends in the node namespace
        (tbwfNNN / tbpfNNN): felix sees a real interface, no namespace behind it.
As a CNI plugin would, each host-side veth gets forwarding=1, proxy_arp=1, proxy_delay=0 before
its WorkloadEndpoint is written (rp_filter and the route are left to felix).

Measurements:
1. programming latency: per trial a fresh workload namespace + veth (as CNI), then ONE
   WorkloadEndpoint write; an ICMP echo probe (raw socket, one request per ``--interval``,
   default 1 ms) runs from the new workload to an existing local workload; latency = first echo
   reply received - start of the etcd put (same CLOCK_MONOTONIC across namespaces). Resolution:
   the probe interval plus one RTT. Felix's own ``dataplane.apply ms=`` of that change is taken
   from its log. Between trials the WEP is deleted and the namespace removed.
2. start of day: ``Popen`` of felix to readiness 200 (polled every 10 ms from a socket in the
   node namespace) and to the first echo reply between two real local workloads.
3. physical limit: felix's first ``dataplane.apply`` divided by one ``ipset restore`` of felix's
   ``ipset save`` + one ``iptables-restore`` and one ``ip6tables-restore`` of its ``*-save``
   output (same backend felix chose), each into a fresh namespace (median of 3).
4. idle refresh: felix restarted (a second start of day, on a programmed node) with
   Iptables/Route/IpsetsRefreshInterval=2s; over 10 s with nothing changing: kernel writes
   reported by felix's log, ``ip monitor route`` events, ``nft monitor`` events, and
   ``iptables-save``/``ipset save`` before/after; refresh time = ``dataplane.apply ms=`` of the
   refresh applies (read-back + diff, no write).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import re
import select
import shutil
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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from ipaddress import ip_interface
from pathlib import Path
from typing import Any

from bench.common import nsrun, profile_summary, run
from datastore.codec import encode, resource_from_dict
from datastore.etcd import EtcdConfig, EtcdKVStore
from datastore.keys import resource_key
from datastore.kv import MAX_TXN_OPS, PutOp
from kernel.links import add_address, create_veth, set_link_up
from kernel.netns import guard_writes
from kernel.nl import run_in_netns
from lab.etcd import EtcdServer
from lab.nsbridge import NamespaceBridge
from policy.selector import parse as parse_selector

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "docs" / "bench" / "felix.md"
API = "projectcalico.org/v3"
NODE = "node1"
HEALTH_PORT = 9099
NAMESPACES = tuple(f"team-{i}" for i in range(10))
APPS = tuple(f"app-{i:02d}" for i in range(25))
ROLES = ("frontend", "backend", "worker", "cache")
TIERS = ("web", "api", "db")
ENVS = ("prod", "staging")
VERSIONS = ("v1", "v2", "v3")
# The workload each latency trial adds: matched by several policies of every tier.
TRIAL_LABELS = {"app": "app-03", "role": "frontend", "tier": "web", "env": "prod", "version": "v1"}
TRIAL_NS = "team-3"
APPLY_RE = re.compile(
    r"dataplane\.apply ms=([\d.]+) (?:[a-z_]+_ms=[\d.]+ )*iptables_restores=(\d+) rules=(\d+) "
    r"ipset_writes=(\d+) "
    r"routes=(\d+) sysctls=(\d+) failures=(\d+)"
)


# ------------------------------------------------------------------------------ small helpers
def pct(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    s = sorted(samples)
    k = max(0, min(len(s) - 1, round(q / 100 * len(s) + 0.5) - 1))
    return s[k]


class Namespaces:
    """Namespaces this run created (``tbb<pid>-*``); ``cleanup()`` kills what runs inside
    (our processes: we created the namespace) and deletes them."""

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

    def delete(self, name: str) -> None:
        for pid in run(["ip", "netns", "pids", name], check=False).split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        run(["ip", "netns", "del", name], check=False)
        with contextlib.suppress(ValueError):
            self.names.remove(name)

    def cleanup(self) -> None:
        for name in reversed(list(self.names)):
            self.delete(name)


# ------------------------------------------------------------------------------ dataset
def labels_for(rng: random.Random) -> dict[str, str]:
    return {
        "app": rng.choice(APPS),
        "role": rng.choice(ROLES),
        "tier": rng.choice(TIERS),
        "env": rng.choice(ENVS),
        "version": rng.choice(VERSIONS),
    }


def wep_doc(
    node: str, pod: str, ns: str, iface: str, ip: str, labels: dict[str, str]
) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "WorkloadEndpoint",
        "metadata": {"name": f"{node}-k8s-{pod}-eth0", "namespace": ns, "labels": labels},
        "spec": {
            "orchestrator": "k8s",
            "node": node,
            "pod": pod,
            "endpoint": "eth0",
            "interfaceName": iface,
            "ipNetworks": [f"{ip}/32"],
            "profiles": [f"kns.{ns}", f"ksa.{ns}.default"],
            "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
        },
    }


def selector(rng: random.Random, form: int) -> str:
    a, b, c = rng.sample(APPS, 3)
    r, t, e, v = rng.choice(ROLES), rng.choice(TIERS), rng.choice(ENVS), rng.choice(VERSIONS)
    return (
        f"app == '{a}'",
        f"app == '{a}' && role == '{r}'",
        f"role == '{r}' && env == '{e}' && version == '{v}'",
        f"tier == '{t}' && env == '{e}' && app in {{'{a}', '{b}', '{c}'}}",
        f"app in {{'{a}', '{b}'}} && tier == '{t}'",
    )[form % 5]


def policy_docs(rng: random.Random, count: int) -> list[dict[str, Any]]:
    """``count`` policies: 15% security tier, 15% platform tier, the rest default (40% of
    those namespaced). Security and platform policies end in Pass; default ones allow ICMP."""
    out: list[dict[str, Any]] = []
    n_sec = count * 15 // 100
    n_plat = count * 15 // 100
    for i in range(count):
        form = rng.randrange(5)
        sel = selector(rng, form)
        if i < n_sec:
            tier, name, kind, ns = "security", f"security.p{i:04d}", "GlobalNetworkPolicy", None
            ingress: list[dict[str, Any]] = [
                {
                    "action": "Deny",
                    "protocol": "TCP",
                    "source": {"nets": ["203.0.113.0/24", "198.51.100.128/25"]},
                    "destination": {"ports": [22, 3389, "6000:6063"]},
                },
                {
                    "action": "Deny",
                    "source": {"selector": selector(rng, rng.randrange(5))},
                    "protocol": "UDP",
                    "destination": {"ports": [11211]},
                },
                {"action": "Pass"},
            ]
            egress: list[dict[str, Any]] = [
                {
                    "action": "Deny",
                    "protocol": "TCP",
                    "destination": {"nets": ["203.0.113.64/26"], "ports": [25, 465]},
                },
                {"action": "Pass"},
            ]
        elif i < n_sec + n_plat:
            tier, name, kind, ns = "platform", f"platform.p{i:04d}", "GlobalNetworkPolicy", None
            ingress = [
                {
                    "action": "Allow",
                    "protocol": "TCP",
                    "source": {"selector": f"role == '{rng.choice(ROLES)}'"},
                    "destination": {"ports": [9090, 9100, "9400:9410"]},
                },
                {"action": "Pass"},
            ]
            egress = [
                {
                    "action": "Allow",
                    "protocol": "UDP",
                    "destination": {"nets": ["10.96.0.10/32"], "ports": [53]},
                },
                {"action": "Pass"},
            ]
        else:
            namespaced = rng.random() < 0.4
            tier = "default"
            kind = "NetworkPolicy" if namespaced else "GlobalNetworkPolicy"
            ns = rng.choice(NAMESPACES) if namespaced else None
            name = f"p{i:04d}"
            icmp_src: dict[str, Any] = (
                {"nets": ["10.64.0.0/10"]} if namespaced else {"selector": "has(env)"}
            )
            ingress = [
                {
                    "action": "Allow",
                    "protocol": "TCP",
                    "source": {"selector": selector(rng, rng.randrange(5))},
                    "destination": {"ports": [80, 443, "8000:8100"]},
                },
                {
                    "action": "Allow",
                    "protocol": "TCP",
                    "source": {
                        "selector": f"tier == '{rng.choice(TIERS)}'",
                        "nets": ["10.64.0.0/10"],
                    },
                    "destination": {"ports": [8080]},
                },
                {"action": "Deny", "protocol": "TCP", "source": {"nets": ["10.200.0.0/16"]}},
                {"action": "Allow", "protocol": "ICMP", "source": icmp_src},
            ]
            egress = [
                {
                    "action": "Allow",
                    "protocol": "TCP",
                    "destination": {
                        "selector": selector(rng, rng.randrange(5)),
                        "ports": [5432, 6379],
                    },
                },
                {
                    "action": "Allow",
                    "protocol": "UDP",
                    "destination": {"nets": ["10.96.0.0/12"], "ports": [53]},
                },
                {"action": "Allow", "protocol": "ICMP"},
            ]
        meta: dict[str, Any] = {"name": name}
        if ns is not None:
            meta["namespace"] = ns
        out.append(
            {
                "apiVersion": API,
                "kind": kind,
                "metadata": meta,
                "spec": {
                    "tier": tier,
                    "order": rng.randrange(1, 1000),
                    "selector": sel,
                    "types": ["Ingress", "Egress"],
                    "ingress": ingress,
                    "egress": egress,
                },
            }
        )
    return out


def static_docs() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = [
        {
            "apiVersion": API,
            "kind": "Tier",
            "metadata": {"name": "security"},
            "spec": {"order": 100},
        },
        {
            "apiVersion": API,
            "kind": "Tier",
            "metadata": {"name": "platform"},
            "spec": {"order": 200},
        },
    ]
    for ns in NAMESPACES:
        docs.append(
            {
                "apiVersion": API,
                "kind": "Profile",
                "metadata": {"name": f"kns.{ns}"},
                "spec": {"ingress": [{"action": "Allow"}], "egress": [{"action": "Allow"}]},
            }
        )
        docs.append(
            {
                "apiVersion": API,
                "kind": "Profile",
                "metadata": {"name": f"ksa.{ns}.default"},
                "spec": {},
            }
        )
    return docs


def selected_by(
    policies: Sequence[dict[str, Any]], labels: dict[str, str], ns: str
) -> dict[str, int]:
    """How many policies (per tier) select an endpoint with ``labels`` in namespace ``ns``."""
    full = {**labels, "projectcalico.org/namespace": ns}
    out: dict[str, int] = {}
    for doc in policies:
        pns = doc["metadata"].get("namespace")
        if pns is not None and pns != ns:
            continue
        if parse_selector(doc["spec"]["selector"]).evaluate(full):
            tier = doc["spec"]["tier"]
            out[tier] = out.get(tier, 0) + 1
    return out


def encode_doc(doc: dict[str, Any]) -> tuple[str, bytes]:
    res = resource_from_dict(doc)
    return resource_key(res.kind, res.metadata.name, res.metadata.namespace), encode(res)


def load(store_factory: Callable[[], EtcdKVStore], items: Sequence[tuple[str, bytes]]) -> None:
    batches = [items[i : i + MAX_TXN_OPS] for i in range(0, len(items), MAX_TXN_OPS)]
    local = threading.local()

    def put(batch: Sequence[tuple[str, bytes]]) -> None:
        if not hasattr(local, "store"):
            local.store = store_factory()
        local.store.txn([], [PutOp(k, v) for k, v in batch])

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(put, batches))


# ------------------------------------------------------------------------------ probes
def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


@dataclass
class ProbeResult:
    ok_send: float | None = None  # send time of the first request that got a reply
    ok_recv: float | None = None  # time that reply arrived
    prev_send: float | None = None  # send time of the request before it (no reply seen)
    sent: int = 0


class IcmpProbe:
    """Echo requests from a raw socket opened inside ``ns``, one per ``interval`` s, until the
    first reply from ``dst`` (or ``timeout``). Runs in a thread of this process."""

    def __init__(self, ns: str, dst: str, interval: float = 0.001, timeout: float = 15.0) -> None:
        self.dst, self.interval, self.timeout = dst, interval, timeout
        self.sock = run_in_netns(
            ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        )
        self.ident = random.randrange(1, 0xFFFF)
        self.result = ProbeResult()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"probe-{dst}", daemon=True)

    def start(self) -> IcmpProbe:
        self._thread.start()
        return self

    def _run(self) -> None:
        sends: dict[int, float] = {}
        seq = 0
        start = time.monotonic()
        next_send = start
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if now - start > self.timeout:
                    return
                if now >= next_send:
                    seq = (seq + 1) & 0xFFFF
                    hdr = struct.pack("!BBHHH", 8, 0, 0, self.ident, seq)
                    payload = b"tabby-bench"
                    pkt = struct.pack("!BBHHH", 8, 0, _checksum(hdr + payload), self.ident, seq)
                    sends[seq] = time.monotonic()
                    with contextlib.suppress(OSError):
                        self.sock.sendto(pkt + payload, (self.dst, 0))
                    self.result.sent += 1
                    next_send += self.interval
                    if next_send < now:
                        next_send = now + self.interval
                wait = max(0.0, next_send - time.monotonic())
                ready, _, _ = select.select([self.sock], [], [], wait)
                if not ready:
                    continue
                data, addr = self.sock.recvfrom(2048)
                recv = time.monotonic()
                ihl = (data[0] & 0x0F) * 4
                if len(data) < ihl + 8 or addr[0] != self.dst:
                    continue
                typ, _, _, ident, rseq = struct.unpack("!BBHHH", data[ihl : ihl + 8])
                if typ != 0 or ident != self.ident or rseq not in sends:
                    continue
                self.result.ok_send, self.result.ok_recv = sends[rseq], recv
                self.result.prev_send = sends.get((rseq - 1) & 0xFFFF)
                return
        finally:
            self.sock.close()

    def wait(self, timeout: float | None = None) -> ProbeResult:
        self._thread.join(timeout)
        return self.result

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def http_status(ns: str, port: int, path: str) -> int:
    """Status of ``GET path`` on 127.0.0.1:port inside ``ns`` (0 if it cannot connect)."""
    try:
        s = run_in_netns(ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    except OSError:
        return 0
    try:
        s.settimeout(1.0)
        s.connect(("127.0.0.1", port))
        s.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
        head = s.recv(64).decode(errors="replace").split()
        return int(head[1]) if len(head) > 1 else 0
    except (OSError, ValueError):
        return 0
    finally:
        s.close()


# ------------------------------------------------------------------------------ the lab
@dataclass
class Local:
    pod: str
    iface: str
    ip: str
    labels: dict[str, str]
    ns: str
    netns: str | None = None  # the workload's own namespace (real workloads only)


@dataclass
class Lab:
    args: argparse.Namespace
    tmp: Path
    nss: Namespaces = field(default_factory=Namespaces)
    etcd: EtcdServer | None = None
    bridge: NamespaceBridge | None = None
    store: EtcdKVStore | None = None
    node: str = ""
    outside: str = ""
    felix: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    locals_: list[Local] = field(default_factory=list)
    policies: list[dict[str, Any]] = field(default_factory=list)

    # -- setup ---------------------------------------------------------------------------
    def build(self) -> None:
        self.etcd = EtcdServer(self.tmp / "etcd")
        self.etcd.start()
        self.store = EtcdKVStore(EtcdConfig(endpoints=(self.etcd.endpoint,)))
        self.node = self.nss.new("node")
        self.outside = self.nss.new("out")
        create_veth(self.node, "eth0", self.outside, "eth0")
        add_address(self.node, "eth0", ip_interface("198.51.100.1/24"))
        add_address(self.outside, "eth0", ip_interface("198.51.100.2/24"))
        set_link_up(self.node, "eth0")
        set_link_up(self.outside, "eth0")
        run(["ip", "-n", self.node, "route", "add", "default", "via", "198.51.100.2"])
        run(["ip", "-n", self.outside, "route", "add", "10.64.0.0/10", "via", "198.51.100.1"])
        self.bridge = NamespaceBridge(("127.0.0.1", self.etcd.client_port))
        self.bridge.add_listener(self.node, "127.0.0.1", 2379)

    def cni_sysctls(self, ifaces: Sequence[str]) -> None:
        """What a CNI plugin sets on the host side before writing the endpoint."""
        guard_writes(self.node)

        def work() -> None:
            for ifname in ifaces:
                for path, value in (
                    (f"net/ipv4/conf/{ifname}/forwarding", "1"),
                    (f"net/ipv4/conf/{ifname}/proxy_arp", "1"),
                    (f"net/ipv4/neigh/{ifname}/proxy_delay", "0"),
                ):
                    with open(f"/proc/sys/{path}", "w") as f:
                        f.write(value)

        run_in_netns(self.node, work)

    def add_real_workload(self, tag: str, iface: str, ip: str) -> str:
        wns = self.nss.new(tag)
        create_veth(self.node, iface, wns, "eth0", mac_a="ee:ee:ee:ee:ee:ee")
        set_link_up(self.node, iface)
        run(
            ["ip", "-n", wns, "-batch", "-"],
            input_text=(
                f"addr add {ip}/32 dev eth0\nlink set eth0 up\n"
                "route add 169.254.1.1 dev eth0 scope link\n"
                "route add default via 169.254.1.1 dev eth0\n"
            ),
        )
        self.cni_sysctls([iface])
        return wns

    def build_locals(self, rng: random.Random) -> None:
        n_real = min(self.args.real, self.args.local)
        batch: list[str] = []
        for i in range(self.args.local):
            ns = rng.choice(NAMESPACES)
            labels = labels_for(rng)
            ip = f"10.65.{i // 250}.{i % 250 + 1}"
            if i < n_real:
                iface = f"tbwr{i:03d}"
                loc = Local(f"pod-r{i:03d}", iface, ip, labels, ns)
                loc.netns = self.add_real_workload("w", iface, ip)
            else:
                iface = f"tbwf{i:03d}"
                loc = Local(f"pod-f{i:03d}", iface, ip, labels, ns)
                batch += [
                    f"link add {iface} address ee:ee:ee:ee:ee:ee type veth peer name tbpf{i:03d}",
                    f"link set {iface} up",
                    f"link set tbpf{i:03d} up",
                ]
            self.locals_.append(loc)
        guard_writes(self.node)
        run(["ip", "-n", self.node, "-batch", "-"], input_text="\n".join(batch) + "\n")
        self.cni_sysctls([loc.iface for loc in self.locals_ if loc.netns is None])

    def load_data(self, rng: random.Random) -> tuple[int, float]:
        docs = static_docs()
        self.policies = policy_docs(rng, self.args.policies)
        docs += self.policies
        for loc in self.locals_:
            docs.append(wep_doc(NODE, loc.pod, loc.ns, loc.iface, loc.ip, loc.labels))
        for i in range(self.args.remote):
            node = f"node-{i % 100:03d}"
            ip = f"10.66.{i // 250}.{i % 250 + 1}"
            pod = f"rpod-{i:05d}"
            docs.append(
                wep_doc(node, pod, rng.choice(NAMESPACES), f"tbw{i:011x}", ip, labels_for(rng))
            )
        t0 = time.perf_counter()
        items = [encode_doc(d) for d in docs]
        assert self.etcd is not None
        endpoint = self.etcd.endpoint
        load(lambda: EtcdKVStore(EtcdConfig(endpoints=(endpoint,))), items)
        return len(items), time.perf_counter() - t0

    # -- felix -----------------------------------------------------------------------------
    def start_felix(self, tag: str, env: dict[str, str] | None = None) -> float:
        self.log_path = self.tmp / f"felix-{tag}.log"
        felix_cmd = [str(REPO / ".venv/bin/tabby-felix")]
        if self.args.profile:
            # profiling on from the start; SIGUSR2 dumps a phase, SIGUSR1 starts the next one
            felix_cmd = [sys.executable, "-c", PROFILE_WRAPPER, str(self.tmp / f"felix-{tag}")]
        full_env = {
            **os.environ,
            "FELIX_FELIXHOSTNAME": NODE,
            "FELIX_ETCDENDPOINTS": "http://127.0.0.1:2379",
            "FELIX_HEALTHPORT": str(HEALTH_PORT),
            "FELIX_LOGSEVERITYSCREEN": "Info",
            "TABBY_EXPECT_NETNS": self.node,
            **(env or {}),
        }
        with open(self.log_path, "ab") as out:
            t0 = time.monotonic()
            self.felix = subprocess.Popen(
                ["ip", "netns", "exec", self.node, *felix_cmd, "--config-file", "/nonexistent"],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=full_env,
            )
        return t0

    def profile_mark(self, sig: int) -> None:
        """Diagnostics mode: SIGUSR2 = dump the current phase's profile, SIGUSR1 = start one."""
        if self.args.profile and self.felix is not None and self.felix.poll() is None:
            self.felix.send_signal(sig)
            time.sleep(0.5)

    def stop_felix(self) -> None:
        proc, self.felix = self.felix, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def log_size(self) -> int:
        return self.log_path.stat().st_size if self.log_path and self.log_path.exists() else 0

    def log_since(self, offset: int) -> str:
        assert self.log_path is not None
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")

    def ready(self) -> bool:
        return http_status(self.node, HEALTH_PORT, "/readiness") == 200

    def spawn(self, ns: str, argv: Sequence[str]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        self.stop_felix()
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(5)
        self.procs.clear()
        if self.bridge is not None:
            self.bridge.stop()
        if self.store is not None:
            self.store.close()
        self.nss.cleanup()
        if self.etcd is not None:
            self.etcd.stop()


@dataclass
class Apply:
    ms: float
    restores: int
    rules: int
    ipsets: int
    routes: int
    sysctls: int
    failures: int

    @property
    def writes(self) -> int:
        return self.restores + self.ipsets + self.routes + self.sysctls


def applies(text: str) -> list[Apply]:
    return [Apply(float(m[1]), *map(int, m.groups()[1:])) for m in APPLY_RE.finditer(text)]


# ------------------------------------------------------------------------------ measurements
def start_of_day(lab: Lab, tag: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    reals = [loc for loc in lab.locals_ if loc.netns is not None]
    src, dst = reals[0], reals[-1]
    assert src.netns is not None
    probe = IcmpProbe(src.netns, dst.ip, interval=0.002, timeout=60)
    probe.start()
    t0 = lab.start_felix(tag, env)
    t_ready = None
    deadline = t0 + 60
    while time.monotonic() < deadline:
        if lab.ready():
            t_ready = time.monotonic()
            break
        time.sleep(0.01)
    res = probe.wait(30)
    probe.stop()
    text = lab.log_since(0)
    first = applies(text)
    in_sync = re.search(r"felix\.in_sync keys=(\d+)", text)
    if t_ready is None:
        raise RuntimeError(f"felix not ready after 60 s; log tail:\n{text[-4000:]}")
    return {
        "ready_s": t_ready - t0,
        "reach_s": (res.ok_recv - t0) if res.ok_recv is not None else None,
        "first_apply": first[0] if first else None,
        "keys": int(in_sync[1]) if in_sync else 0,
        "log": text,
    }


def latency_trials(lab: Lab, n: int, interval: float) -> dict[str, Any]:
    target = next(loc for loc in lab.locals_ if loc.netns is not None)
    lat: list[float] = []
    lat_send: list[float] = []
    put_ms: list[float] = []
    apply_ms: list[float] = []
    extra_applies: list[int] = []
    early = 0
    failed = 0
    assert lab.store is not None
    for i in range(n):
        iface, ip = f"tbwt{i:03d}", f"10.65.200.{i + 1}"
        wns = lab.add_real_workload("t", iface, ip)
        time.sleep(lab.args.settle)  # felix sees the new interface (still fail closed)
        probe = IcmpProbe(wns, target.ip, interval=interval, timeout=10).start()
        time.sleep(0.1)  # the probe is sending (and being dropped)
        if probe.result.ok_recv is not None:
            early += 1
        offset = lab.log_size()
        key, value = encode_doc(wep_doc(NODE, f"trial-{i:03d}", TRIAL_NS, iface, ip, TRIAL_LABELS))
        t0 = time.monotonic()
        lab.store.put(key, value)
        t1 = time.monotonic()
        res = probe.wait(12)
        probe.stop()
        put_ms.append((t1 - t0) * 1000)
        if res.ok_recv is None or res.ok_send is None:
            failed += 1
        else:
            lat.append((res.ok_recv - t0) * 1000)
            lat_send.append((res.ok_send - t0) * 1000)
        time.sleep(0.3)  # felix logs its apply after routes and sysctls
        writes = [a for a in applies(lab.log_since(offset)) if a.writes]
        if writes:
            apply_ms.append(writes[0].ms)
            extra_applies.append(len(writes) - 1)
        lab.store.delete(key)
        time.sleep(0.2)
        lab.nss.delete(wns)
        time.sleep(lab.args.settle)
    return {
        "n": n,
        "lat": lat,
        "lat_send": lat_send,
        "put_ms": put_ms,
        "apply_ms": apply_ms,
        "extra_applies": extra_applies,
        "early": early,
        "failed": failed,
        "selected": selected_by(lab.policies, TRIAL_LABELS, TRIAL_NS),
    }


# Runs felix's module under cProfile in the felix process (bench diagnostics only): profiling is
# on from the start; SIGUSR2 writes PREFIX-<n>.prof and stops, SIGUSR1 starts a new phase.
PROFILE_WRAPPER = r"""
import cProfile, runpy, signal, sys
prefix, state = sys.argv[1], {"n": 0, "prof": cProfile.Profile()}
def start(*_):
    state["prof"] = cProfile.Profile(); state["prof"].enable()
def dump(*_):
    state["prof"].disable()
    state["prof"].dump_stats(f"{prefix}-{state['n']}.prof")
    state["n"] += 1
signal.signal(signal.SIGUSR1, start)
signal.signal(signal.SIGUSR2, dump)
sys.argv = ["tabby-felix", *sys.argv[2:]]
state["prof"].enable()
runpy.run_module("felix", run_name="__main__")
"""

RESTORE_TIMER = r"""
import subprocess, sys, time, json
texts = json.load(sys.stdin)
out = {}
for tool in ("ipset", "iptables", "ip6tables"):
    if not texts.get(tool):
        continue
    argv = {"ipset": ["ipset", "restore"],
            "iptables": [texts["iptables_restore"]],
            "ip6tables": [texts["ip6tables_restore"]]}[tool]
    t = time.perf_counter()
    r = subprocess.run(argv, input=texts[tool], text=True, capture_output=True)
    out[tool] = (time.perf_counter() - t) * 1000
    if r.returncode != 0:
        out[tool + "_error"] = r.stderr[:300]
print(json.dumps(out))
"""


def physical_limit(lab: Lab, backend: str, repeat: int = 3) -> dict[str, Any]:
    save4 = nsrun(lab.node, [f"iptables-{backend}-save"])
    save6 = nsrun(lab.node, [f"ip6tables-{backend}-save"])
    sets = nsrun(lab.node, ["ipset", "save"])
    texts = {
        "ipset": sets,
        "iptables": save4,
        "ip6tables": save6,
        "iptables_restore": f"iptables-{backend}-restore",
        "ip6tables_restore": f"ip6tables-{backend}-restore",
    }
    runs: list[dict[str, float]] = []
    for _ in range(repeat):
        fresh = lab.nss.new("phys")
        try:
            out = json.loads(
                nsrun(fresh, [sys.executable, "-c", RESTORE_TIMER], input_text=json.dumps(texts))
            )
            errors = {k: v for k, v in out.items() if k.endswith("_error")}
            if errors:
                raise RuntimeError(f"restore into fresh namespace failed: {errors}")
            runs.append(out)
        finally:
            lab.nss.delete(fresh)
    med = {k: statistics.median(r[k] for r in runs) for k in ("ipset", "iptables", "ip6tables")}
    return {
        **med,
        "rules4": sum(1 for line in save4.splitlines() if line.startswith("-A ")),
        "rules6": sum(1 for line in save6.splitlines() if line.startswith("-A ")),
        "chains4": sum(1 for line in save4.splitlines() if line.startswith(":tby-")),
        "sets": sum(1 for line in sets.splitlines() if line.startswith("create ")),
        "members": sum(1 for line in sets.splitlines() if line.startswith("add ")),
    }


class Monitor:
    """A monitor command in a namespace whose output lines are timestamped as they arrive."""

    def __init__(self, lab: Lab, ns: str, argv: Sequence[str]) -> None:
        self.proc = lab.spawn(ns, argv)
        self.lines: list[tuple[float, str]] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").strip()
            if line:
                self.lines.append((time.monotonic(), line))

    def count(self, t0: float, t1: float) -> int:
        return sum(1 for t, _ in self.lines if t0 <= t < t1)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)
        self._thread.join(5)


def ruleset(lab: Lab, backend: str) -> str:
    text = nsrun(lab.node, [f"iptables-{backend}-save"])
    text += nsrun(lab.node, [f"ip6tables-{backend}-save"])
    return "\n".join(line for line in text.splitlines() if not line.startswith("#"))


def idle(lab: Lab, backend: str, seconds: float) -> dict[str, Any]:
    """Count kernel writes over an idle window; then a positive control (one WEP added and
    removed) shows that the monitors and the log parsing do see writes when there are some."""
    assert lab.store is not None
    ipt_before, sets_before = ruleset(lab, backend), nsrun(lab.node, ["ipset", "save"])
    monitors = {"route": Monitor(lab, lab.node, ["ip", "monitor", "route"])}
    if shutil.which("nft"):
        monitors["nft"] = Monitor(lab, lab.node, ["nft", "monitor"])
    try:
        time.sleep(0.3)
        offset = lab.log_size()
        t0 = time.monotonic()
        time.sleep(seconds)
        t1 = time.monotonic()
        text = lab.log_since(offset)
        ipt_after, sets_after = ruleset(lab, backend), nsrun(lab.node, ["ipset", "save"])
        # positive control
        guard_writes(lab.node)
        run(
            ["ip", "-n", lab.node, "-batch", "-"],
            input_text="link add tbwc000 type veth peer name tbpc000\n"
            "link set tbwc000 up\nlink set tbpc000 up\n",
        )
        lab.cni_sysctls(["tbwc000"])
        key, value = encode_doc(
            wep_doc(NODE, "control", TRIAL_NS, "tbwc000", "10.65.201.1", TRIAL_LABELS)
        )
        c_offset = lab.log_size()
        lab.store.put(key, value)
        time.sleep(1.0)
        lab.store.delete(key)
        time.sleep(1.0)
        run(["ip", "-n", lab.node, "link", "del", "tbwc000"])
        time.sleep(0.5)
        t2 = time.monotonic()
        control = applies(lab.log_since(c_offset))
    finally:
        for mon in monitors.values():
            mon.stop()
    apps = applies(text)
    return {
        "applies": apps,
        "writes": sum(a.writes for a in apps),
        "route_events": monitors["route"].count(t0, t1),
        "nft_events": monitors["nft"].count(t0, t1) if "nft" in monitors else None,
        "ruleset_same": ipt_before == ipt_after,
        "ipsets_same": sets_before == sets_after,
        "iptables_lines": len(re.findall(r"iptables\.apply ", text)),
        "ipset_lines": len(re.findall(r"ipset\.apply", text)),
        "control_writes": sum(a.writes for a in control),
        "control_route_events": monitors["route"].count(t1, t2),
        "control_nft_events": monitors["nft"].count(t1, t2) if "nft" in monitors else None,
    }


# ------------------------------------------------------------------------------ report
def fmt(x: float | None, unit: str = "ms", digits: int = 1) -> str:
    return "n/a" if x is None else f"{x:.{digits}f} {unit}"


def report(args: argparse.Namespace, r: dict[str, Any]) -> str:
    lt = r["lat"]
    sod, sod2 = r["sod"], r["sod2"]
    phys, idl = r["phys"], r["idle"]
    fa = sod["first_apply"]
    phys_total = phys["ipset"] + phys["iptables"] + phys["ip6tables"]
    ratio = fa.ms / phys_total if fa else None
    lat, lat_send = lt["lat"], lt["lat_send"]
    refresh = [a.ms for a in idl["applies"]]
    sel = ", ".join(f"{k}: {v}" for k, v in sorted(lt["selected"].items()))
    p50, p99 = (pct(lat, 50), pct(lat, 99)) if lat else (None, None)
    idle_ok = idl["writes"] == 0 and idl["ruleset_same"] and idl["ipsets_same"]
    reach2 = sod2["reach_s"]
    reach2_text = (
        "already reachable (first probe answered)"
        if reach2 is not None and reach2 < 0.05
        else fmt(reach2, "s", 2)
    )
    lines = [
        "# felix end-to-end benchmark",
        "",
        f"`.venv/bin/python -m bench.bench_felix` ({time.strftime('%Y-%m-%d')}, "
        f"{platform.node()}, kernel {platform.release()}, {os.cpu_count()} CPUs, "
        f"iptables backend {r['backend']}). Total run {r['total_s']:.0f} s.",
        "",
        f"Dataset in etcd: {args.local} local WorkloadEndpoints ({r['n_real']} in real workload "
        f"namespaces, {args.local - r['n_real']} as veth pairs with both ends in the node "
        f"namespace), {args.remote} remote WorkloadEndpoints on 100 other nodes, {args.policies} "
        f"policies (tiers security/platform/default, global and namespaced), 2 tiers + 20 profiles "
        f"= {r['keys']} keys, loaded in {r['load_s']:.1f} s. Felix delivered {sod['keys']} keys.",
        "",
        "| measurement | result | target | |",
        "|---|---|---|---|",
        f"| programming latency p50 (WEP put -> first echo reply), n={len(lat)} | {fmt(p50)} | "
        f"<= 50 ms | {'ok' if p50 is not None and p50 <= 50 else 'MISSED'} |",
        f"| programming latency p99 | {fmt(p99)} | <= 250 ms | "
        f"{'ok' if p99 is not None and p99 <= 250 else 'MISSED'} |",
        f"| felix `dataplane.apply` for that WEP, p50 / p99 | "
        f"{fmt(pct(lt['apply_ms'], 50) if lt['apply_ms'] else None)} / "
        f"{fmt(pct(lt['apply_ms'], 99) if lt['apply_ms'] else None)} | | |",
        f"| start of day: felix start -> readiness 200 | {fmt(sod['ready_s'], 's', 2)} | <= 5 s | "
        f"{'ok' if sod['ready_s'] <= 5 else 'MISSED'} |",
        f"| start of day: felix start -> workload-to-workload echo reply | "
        f"{fmt(sod['reach_s'], 's', 2)} | <= 5 s | "
        f"{'ok' if sod['reach_s'] is not None and sod['reach_s'] <= 5 else 'MISSED'} |",
        f"| felix first apply (full dataplane) | {fmt(fa.ms if fa else None)} | | |",
        f"| physical limit: ipset restore + iptables-restore + ip6tables-restore | "
        f"{fmt(phys_total)} | | |",
        f"| ratio felix first apply / physical limit | "
        f"{'n/a' if ratio is None else f'{ratio:.2f}x'} | | |",
        f"| idle 10 s with refresh every 2 s: kernel writes by felix | {idl['writes']} | 0 | "
        f"{'ok' if idle_ok else 'MISSED'} |",
        f"| refresh apply (read-back + diff, no write), median / max | "
        f"{fmt(statistics.median(refresh) if refresh else None)} / "
        f"{fmt(max(refresh) if refresh else None)} | | |",
        f"| restart on a programmed node: start -> readiness 200; first-apply writes | "
        f"{fmt(sod2['ready_s'], 's', 2)}; "
        f"{sod2['first_apply'].writes if sod2['first_apply'] else 'n/a'} | | |",
        "",
        "## 1. Programming latency",
        "",
        f"{lt['n']} trials. Each adds a fresh workload as a CNI plugin would (namespace, veth "
        f"`tbwtNNN`, /32, default via 169.254.1.1, host-side forwarding/proxy_arp/proxy_delay=0), "
        f"waits {args.settle:.1f} s (felix sees the interface; it stays fail-closed), starts the "
        f"probe, then writes ONE WorkloadEndpoint (labels {TRIAL_LABELS}, namespace {TRIAL_NS}; "
        f"selected by {sel} policies per tier). The probe sends ICMP echo requests from the new "
        f"workload to an existing local workload every {args.interval * 1000:.1f} ms from a raw "
        f"socket; latency = arrival of the first echo reply - start of the etcd put (both "
        f"CLOCK_MONOTONIC). Resolution: one probe interval + one RTT (~0.1 ms). The path needs "
        f"the new endpoint's egress chain, the target's ingress rules matching the new IP "
        f"(ipset membership), and the route to the new workload for the reply.",
        "",
        "| | p50 | p90 | p99 | max | min |",
        "|---|---|---|---|---|---|",
    ]
    for label, s in (
        ("put -> first reply", lat),
        ("put -> send of the first request that passed", lat_send),
        ("felix `dataplane.apply ms` (first apply with writes)", lt["apply_ms"]),
        ("etcd put itself", lt["put_ms"]),
    ):
        if s:
            lines.append(
                f"| {label} | {pct(s, 50):.1f} | {pct(s, 90):.1f} | {pct(s, 99):.1f} | "
                f"{max(s):.1f} | {min(s):.1f} |"
            )
    lines += [
        "",
        f"Trials with a reply before the write (fail-open, must be 0): {lt['early']}; trials with "
        f"no reply within 10 s: {lt['failed']}; extra applies with writes before the reply "
        f"(median): {statistics.median(lt['extra_applies']) if lt['extra_applies'] else 'n/a'}.",
        "",
        "## 2. Start of day",
        "",
        "Felix started (`Popen` of `ip netns exec NODE tabby-felix`) with the full dataset in etcd "
        "and an empty dataplane. Readiness is polled every 10 ms from a socket opened in the node "
        "namespace; reachability is an ICMP probe (every 2 ms) between the first and the last "
        "real local workload, started before felix.",
        "",
        "| | fresh node | restart on a programmed node |",
        "|---|---|---|",
        f"| start -> readiness 200 | {fmt(sod['ready_s'], 's', 2)} | "
        f"{fmt(sod2['ready_s'], 's', 2)} |",
        f"| start -> echo reply | {fmt(sod['reach_s'], 's', 2)} | {reach2_text} |",
        f"| first `dataplane.apply` | {fmt(fa.ms if fa else None)} | "
        f"{fmt(sod2['first_apply'].ms if sod2['first_apply'] else None)} |",
        f"| its writes (restores + ipset + routes + sysctls) | {fa.writes if fa else 'n/a'} | "
        f"{sod2['first_apply'].writes if sod2['first_apply'] else 'n/a'} |",
        "",
        "Felix's own log of the fresh start (driver lines):",
        "",
        "```",
        *r["sod_lines"],
        "```",
        "",
        "## 3. Against the physical limit",
        "",
        f"Felix's final `iptables-{r['backend']}-save`, `ip6tables-{r['backend']}-save` and "
        f"`ipset save` output ({phys['chains4']} tby- chains and {phys['rules4']} rules for IPv4, "
        f"{phys['rules6']} rules for IPv6, {phys['sets']} ipsets with {phys['members']} members) "
        "restored into a fresh namespace (one process each, spawn included, median of 3):",
        "",
        "| ipset restore | iptables-restore | ip6tables-restore | sum | felix first apply "
        "| ratio |",
        "|---|---|---|---|---|---|",
        f"| {phys['ipset']:.1f} ms | {phys['iptables']:.1f} ms | {phys['ip6tables']:.1f} ms | "
        f"{phys_total:.1f} ms | {fmt(fa.ms if fa else None)} | "
        f"{'n/a' if ratio is None else f'{ratio:.2f}x'} |",
        "",
        "Felix's first apply also includes its read-back of every table (empty), rendering, "
        f"{fa.routes if fa else 'n/a'} route writes and {fa.sysctls if fa else 'n/a'} sysctl "
        "writes "
        "(rp_filter per interface and globals), which the restore-only limit does not.",
        "",
        "## 4. Idle refresh",
        "",
        "Felix restarted with `FELIX_IPTABLESREFRESHINTERVAL=2s`, "
        "`FELIX_ROUTEREFRESHINTERVAL=2s`, "
        f"`FELIX_IPSETSREFRESHINTERVAL=2s`; after readiness and {args.settle:.1f} s, a window of "
        f"{args.idle:.0f} s with nothing changing:",
        "",
        f"- felix `dataplane.apply` lines: {len(idl['applies'])}, sum of their writes: "
        f"**{idl['writes']}**; `iptables.apply`/`ipset.apply` info lines (logged only when they "
        f"write): {idl['iptables_lines']}/{idl['ipset_lines']}",
        f"- `ip monitor route` events in the node namespace: {idl['route_events']}",
        f"- `nft monitor` events: {idl['nft_events'] if idl['nft_events'] is not None else 'n/a'}",
        f"- ruleset identical before/after (`*-save` without comments): {idl['ruleset_same']}; "
        f"`ipset save` identical: {idl['ipsets_same']}",
        f"- refresh apply times (ms): {', '.join(f'{x:.1f}' for x in refresh) or 'none'}",
        f"- positive control right after the window (one WEP + veth added, then removed): felix "
        f"writes {idl['control_writes']}, route events {idl['control_route_events']}, nft events "
        f"{idl['control_nft_events']} (non-zero: the counters do see writes)",
        "",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ main
def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--local", type=int, default=250)
    ap.add_argument("--real", type=int, default=24, help="local endpoints with their own netns")
    ap.add_argument("--remote", type=int, default=10_000)
    ap.add_argument("--policies", type=int, default=500)
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--interval", type=float, default=0.001, help="probe interval (s)")
    ap.add_argument("--settle", type=float, default=1.2, help="quiet time around trials (s)")
    ap.add_argument("--idle", type=float, default=10.0)
    ap.add_argument("--profile", action="store_true", help="felix under cProfile; no results file")
    ap.add_argument("--keep-logs", action="store_true")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("run as root", file=sys.stderr)
        return 2
    os.environ.setdefault("TABBY_REQUIRE_NETNS", "1")
    t_start = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="tabby-bench-felix-"))
    lab = Lab(args, tmp)
    results: dict[str, Any] = {}
    try:
        rng = random.Random(42)
        lab.build()
        lab.build_locals(rng)
        n_keys, load_s = lab.load_data(rng)
        print(f"lab: {len(lab.nss.names)} namespaces, {n_keys} keys loaded in {load_s:.1f} s")
        results.update(keys=n_keys, load_s=load_s, n_real=min(args.real, args.local))

        sod = start_of_day(lab, "fresh")
        m = re.search(r"iptables\.backend_detected .* chosen=(\w+)", sod["log"])
        backend = m[1] if m else "nft"
        results["backend"] = backend
        results["sod_lines"] = [
            re.sub(r"^\S+ \S+ tabby-felix ", "", line)
            for line in sod["log"].splitlines()
            if re.search(r"(iptables|ipset|routes|sysctl|dataplane)\.(apply|apply_deletions)", line)
        ][:14]
        results["sod"] = sod
        lab.profile_mark(signal.SIGUSR2)  # felix-fresh-0.prof: start of day
        fa = sod["first_apply"]
        print(
            f"start of day: ready {sod['ready_s']:.2f} s, reach "
            f"{fmt(sod['reach_s'], 's', 2)}, first apply {fmt(fa.ms if fa else None)}"
        )
        time.sleep(args.settle)
        lab.profile_mark(signal.SIGUSR1)
        results["lat"] = latency_trials(lab, args.trials, args.interval)
        lab.profile_mark(signal.SIGUSR2)  # felix-fresh-1.prof: latency trials
        lt = results["lat"]
        if lt["lat"]:
            print(
                f"latency: p50 {pct(lt['lat'], 50):.1f} ms p99 {pct(lt['lat'], 99):.1f} ms "
                f"(n={len(lt['lat'])}, failed {lt['failed']}, early {lt['early']})"
            )
        results["phys"] = physical_limit(lab, backend)
        print(f"physical limit: {results['phys']}")
        lab.stop_felix()

        refresh_env = {
            "FELIX_IPTABLESREFRESHINTERVAL": "2s",
            "FELIX_ROUTEREFRESHINTERVAL": "2s",
            "FELIX_IPSETSREFRESHINTERVAL": "2s",
        }
        results["sod2"] = start_of_day(lab, "restart", refresh_env)
        lab.profile_mark(signal.SIGUSR2)  # felix-restart-0.prof: restart on a programmed node
        time.sleep(args.settle)
        lab.profile_mark(signal.SIGUSR1)
        results["idle"] = idle(lab, backend, args.idle)
        lab.profile_mark(signal.SIGUSR2)  # felix-restart-1.prof: idle window + control
        idl = results["idle"]
        print(
            f"idle: writes {idl['writes']}, applies {len(idl['applies'])}, route events "
            f"{idl['route_events']}, nft events {idl['nft_events']}, same "
            f"{idl['ruleset_same']}/{idl['ipsets_same']}"
        )
        lab.stop_felix()
        results["total_s"] = time.monotonic() - t_start
        text = report(args, results)
        if args.profile:
            for prof in sorted(tmp.glob("felix-*.prof")):
                (tmp / f"{prof.name}.txt").write_text(profile_summary(prof, 30))
                print(f"profile: {prof} (summary in {prof}.txt)")
            print(text)
            args.keep_logs = True
        else:
            RESULTS.write_text(text)
            print(text)
            print(f"wrote {RESULTS}")
    except KeyboardInterrupt:
        print("interrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        lab.close()
        leftovers = [
            n for n in run(["ip", "netns", "list"]).split() if n.startswith(f"tbb{os.getpid()}-")
        ]
        if leftovers:
            print(f"WARNING: namespaces left: {leftovers}", file=sys.stderr)
        if args.keep_logs:
            print(f"logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
