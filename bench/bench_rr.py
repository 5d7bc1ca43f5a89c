"""Benchmark: tabby-bgp as a route reflector (RFC 4456) next to BIRD; full mesh vs reflectors.

Run as root: ``.venv/bin/python -m bench.bench_rr`` (writes docs/bench/rr.md). ``--parts 1,2``
picks parts; ``--runs`` sets part 1's repeats per reflector, ``--clients`` its client count,
``--lab-sizes 10,30`` part 2's lab sizes. ``--profile`` runs the tabby reflector of part 1 under
``python -m cProfile`` (one run, results file NOT rewritten; top functions printed and written to
docs/bench/rr-profile.txt).

Part 1, reflector scale (every namespace is created here and deleted in ``finally``)::

    reflector namespace R (eth0: 198.51.100.1/24, 203.0.113.253/24)
        --eth0--eth0-- clients namespace C (198.51.100.10 .. .209/24, 203.0.113.254/24)

- C runs ONE BIRD process with 200 ``protocol bgp cN`` (``local 198.51.100.(10+N)``, own
  ``router id``), each importing into its own table ``tN``, where a ``static`` protocol ``sN``
  holds its /26 (10.80.0.0/16 carved in /26s), exported with ``bgp_next_hop 203.0.113.(10+N)``
  (on-link on both sides, not a local address of the receiver: ``direct`` sessions resolve it).
  "Every client holds all routes" is then: every ``cN`` imported 199 routes (``show protocols
  all``), i.e. every table ``tN`` holds 200 (its own + 199 reflected).
- BIRD keys a session by neighbour address + port, so one BIRD process cannot hold 200 sessions
  to the reflector's 198.51.100.1:179 (measured: the 2nd and later stay Idle). The clients are
  therefore *passive* (each listens on its own address; ``neighbor 198.51.100.1 port 20000+N``
  only makes the key unique, the port is never dialled) and the reflector connects out, which
  is what both reflectors do by default for a peer address that is not a cluster node.
  ``strict bind on`` gives each client address its own listening socket: without it the 200
  clients share one ``*:179`` socket whose accept queue (8) overflows when a reflector dials all
  200 at once, and the dropped SYNs come back after the kernel's 1, 3, 7 s retransmission
  back-off (measured: 50-150 ``ListenOverflows`` per tabby run, sessions spread over 1-8 s, one
  run 29 s). Each run records the TCP counters of both namespaces (``nstat``: listen
  overflows, SYN retransmissions) in the raw results and on its progress line.
- The BIRD reflector's ``connect delay time 1`` is BIRD's minimum (0 measured the same): its
  sessions come up 0.75-1.0 s after its start. ExaBGP dials at once.
- (a) tabby: ``tabby-bgp --route-reflector`` (dedicated: no kernel routes) under ``ip netns
  exec`` with a private etcd (``lab.etcd.EtcdServer`` bridged to 127.0.0.1:2379 inside R).
  Resources: BGPConfiguration default (AS 64512, mesh off), IPPool 10.80.0.0/16, Node ``rr``
  (198.51.100.1/24, ``routeReflectorClusterID 224.0.0.1``, label ``route-reflector: "true"``)
  and one BGPPeer per client: ``node: rr``, ``peerIP: 198.51.100.X``, ``asNumber: 64512``. The
  clients are not tabby nodes, so Calico's selector recipe does not apply: node-specific
  BGPPeers by address are what a user configures for external routers; a peer that is not a
  node (no cluster ID) is a reflector client (Calico's rule, ``bgp/peers.py``).
  (b) BIRD 2.0.12: one ``protocol bgp rN`` per client with ``rr client; rr cluster id
  224.0.0.1; direct;``, exporting every BGP route (next hop kept).
- Per run: fresh client BIRD, then the reflector starts. Convergence = last route imported by
  any client minus last client session established. Both are read from the client BIRD itself
  at millisecond resolution (``timeformat protocol/route iso long ms``: the protocol's state
  change time and each route's import time, read once after ``show protocols all`` reported
  199 imported routes on every client, polled every ~50 ms). A route replaced by an identical
  announcement keeps its time (BIRD ignores it). CPU: utime+stime(+waited children) of the
  reflector's processes from /proc (tabby: agent + ExaBGP + API bridge; BIRD: bird): total from
  start to converged+0.3 s, and the part after the first session was established (start-up
  excluded; sampled at the poll that first saw one). RSS: VmRSS summed, after convergence.

Part 2, per-node cost of the full mesh vs reflectors in ``tabby-lab`` (private name and state
root, ``tabby-lab down`` in ``finally``): ``up --nodes N --workloads-per-node W`` (default W=1:
with 0 there is no IPAM block, so no route to reflect); then for each layout -- ``mesh``, then
the Calico recipe with 1 reflector and with 2 (``spec.bgp.routeReflectorClusterID`` + label on
the first node(s), BGPPeer ``nodeSelector all()`` / ``peerSelector route-reflector == 'true'``,
``nodeToNodeMeshEnabled: false``): wait until every node's ``/status`` shows its expected
sessions established and its routes, then restart every node's ``tabby-bgp`` (``tabby-lab agent
stop/start``) so the processes measured are fresh for that layout, and measure: time from the
first start to converged; per node CPU of tabby-bgp + ExaBGP + bridge from start to converged;
CPU over an idle window (``--idle`` s); RSS. Reflector nodes and clients are reported apart.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

from exabgp.reactor.api.command.limit import (  # type: ignore[import-untyped]
    extract_neighbors,
    match_neighbors,
)

from bench.bench_bgp import Namespaces, cpu_seconds, descendants, memory_kib
from bench.common import nsrun, run, wait_for, write_results
from bgp.exabgp_launch import prefilter_neighbor_match
from bgp.model import Path as RibPath
from bgp.reflect import PeerRole, ReflectContext, plan_prefix
from datastore.codec import encode, resource_from_dict
from datastore.etcd import EtcdConfig, EtcdKVStore
from datastore.keys import resource_key
from kernel.links import add_address, create_veth, set_link_up
from lab.etcd import EtcdServer
from lab.nsbridge import NamespaceBridge

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "docs" / "bench" / "rr.md"
PROFILE_OUT = REPO / "docs" / "bench" / "rr-profile.txt"
VENV_BIN = Path(sys.executable).parent
API = "projectcalico.org/v3"
ASN = 64512
CLUSTER_ID = "224.0.0.1"
RR_IP = IPv4Address("198.51.100.1")
RR_NH_ADDR = "203.0.113.253/24"
CLIENT_NH_ADDR = "203.0.113.254/24"
CLIENT_BASE = 10  # client N: 198.51.100.(10+N), next hop 203.0.113.(10+N)
POOL = IPv4Network("10.80.0.0/16")
HEALTH_PORT = 9098
RR_NODE = "rr"


def med(xs: Sequence[float]) -> float | None:
    return statistics.median(xs) if xs else None


def client_ip(i: int) -> IPv4Address:
    return IPv4Address(f"198.51.100.{CLIENT_BASE + i}")


def client_nh(i: int) -> IPv4Address:
    return IPv4Address(f"203.0.113.{CLIENT_BASE + i}")


def client_prefix(i: int) -> IPv4Network:
    return IPv4Network((int(POOL.network_address) + (i << 6), 26))


# ------------------------------------------------------------------------------ BIRD configs
def client_bird_conf(n: int) -> str:
    out = [
        "router id 203.0.113.254;",
        "timeformat protocol iso long ms;",
        "timeformat route iso long ms;",
        "protocol device { scan time 60; }",
    ]
    for i in range(n):
        ip = client_ip(i)
        out.append(
            f"ipv4 table t{i};\n"
            f"protocol static s{i} {{ ipv4 {{ table t{i}; }}; "
            f"route {client_prefix(i)} blackhole; }}\n"
            f"protocol bgp c{i} {{\n"
            f"  router id {ip}; local {ip} as {ASN};\n"
            f"  neighbor {RR_IP} port {20000 + i} as {ASN};\n"
            "  passive on; strict bind on; direct; hold time 90; keepalive time 30;\n"
            f"  ipv4 {{ table t{i}; import all; export filter {{\n"
            f'    if proto = "s{i}" then {{ bgp_next_hop = {client_nh(i)}; accept; }}\n'
            "    reject; }; };\n}"
        )
    return "\n".join(out) + "\n"


def rr_bird_conf(n: int) -> str:
    out = [
        f"router id {RR_IP};",
        "protocol device { scan time 60; }",
        f"template bgp rrc {{ local {RR_IP} as {ASN}; direct; rr client; "
        f"rr cluster id {CLUSTER_ID}; hold time 90; keepalive time 30; "
        "connect delay time 1; connect retry time 2; error wait time 1, 2; "
        "ipv4 { import all; export where source = RTS_BGP; }; }",
    ]
    out += [f"protocol bgp r{i} from rrc {{ neighbor {client_ip(i)} as {ASN}; }}" for i in range(n)]
    return "\n".join(out) + "\n"


def birdc(sock: Path, *cmd: str) -> str:
    return run(["birdc", "-s", str(sock), *cmd], check=False)


def _bird_time(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f").timestamp()


@dataclass
class ClientState:
    established: int = 0
    complete: int = 0  # protocols that imported n-1 routes
    since: dict[str, float] = field(default_factory=dict)


def client_state(sock: Path, n: int) -> ClientState:
    """Parse ``show protocols all`` of the clients' BIRD."""
    st = ClientState()
    name = ""
    for line in birdc(sock, "show", "protocols", "all").splitlines():
        parts = line.split()
        if len(parts) >= 6 and parts[1] == "BGP" and parts[0].startswith("c"):
            name = parts[0]
            if "Established" in parts:
                st.established += 1
                st.since[name] = _bird_time(f"{parts[4]} {parts[5]}")
        elif parts[:1] == ["Routes:"] and name:
            if int(parts[1]) >= n - 1:
                st.complete += 1
            name = ""
    return st


def last_route_time(sock: Path, n: int) -> tuple[float, int]:
    """(newest import time of a BGP route in any client table, number of BGP routes seen)."""
    latest, count = 0.0, 0
    for start in range(0, n, 50):
        args: list[str] = ["show", "route"]
        for i in range(start, min(n, start + 50)):
            args += ["table", f"t{i}"]
        for line in birdc(sock, *args).splitlines():
            if "[c" not in line:
                continue
            inner = line.split("[", 1)[1].split("]", 1)[0].split()
            if len(inner) >= 3:
                latest = max(latest, _bird_time(f"{inner[1]} {inner[2]}"))
                count += 1
    return latest, count


# ------------------------------------------------------------------------------ part 1
WHATIF = "tabby-whatif"
# The what-if reflector: the same tabby-bgp with ExaBGP started without bgp.exabgp_launch's
# patch (``TABBY_EXABGP_PATCH=0``), i.e. with ExaBGP's per-neighbour deep copy of every route.


@dataclass
class Reflector:
    kind: str
    proc: subprocess.Popen[bytes]

    def pids(self) -> list[int]:
        return descendants(self.proc.pid)

    def cpu_by_role(self) -> dict[str, float]:
        """CPU seconds per process role: ``agent``, ``exabgp``, ``bridge`` (tabby); ``bird``."""
        out: dict[str, float] = {}
        for pid in self.pids():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if self.kind == "bird":
                role = "bird"
            else:
                role = (
                    "exabgp" if b"exabgp" in cmd else "bridge" if b"api_bridge" in cmd else "agent"
                )
            out[role] = out.get(role, 0.0) + cpu_seconds([pid])
        return out


@dataclass
class Bed:
    tmp: Path
    n: int
    ns: Namespaces = field(default_factory=Namespaces)
    etcd: EtcdServer | None = None
    bridge: NamespaceBridge | None = None
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def build(self) -> tuple[str, str]:
        rr = self.ns.new("rr")
        cl = self.ns.new("cl")
        create_veth(rr, "eth0", cl, "eth0")
        add_address(rr, "eth0", IPv4Interface(f"{RR_IP}/24"))
        add_address(rr, "eth0", IPv4Interface(RR_NH_ADDR))
        add_address(cl, "eth0", IPv4Interface(CLIENT_NH_ADDR))
        batch = "".join(f"address add {client_ip(i)}/24 dev eth0\n" for i in range(self.n))
        nsrun(cl, ["ip", "-batch", "-"], input_text=batch)
        set_link_up(rr, "eth0")
        set_link_up(cl, "eth0")
        return rr, cl

    def spawn(
        self, argv: Sequence[str], log: Path, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                list(argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env if env is not None else dict(os.environ),
                cwd=REPO,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        """Stop one of our processes (by PID: SIGTERM, then SIGKILL)."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if proc in self.procs:
            self.procs.remove(proc)

    def start_etcd(self, rr_ns: str) -> None:
        self.etcd = EtcdServer(self.tmp / "etcd")
        self.etcd.start()
        self.bridge = NamespaceBridge(("127.0.0.1", self.etcd.client_port))
        self.bridge.add_listener(rr_ns, "127.0.0.1", 2379)
        store = EtcdKVStore(EtcdConfig(endpoints=(self.etcd.endpoint,)))
        try:
            for doc in tabby_resources(self.n):
                res = resource_from_dict(doc)
                store.put(resource_key(res.kind, res.metadata.name, None), encode(res))
        finally:
            store.close()

    def close(self) -> None:
        for proc in list(self.procs):
            self.stop(proc)
        if self.bridge is not None:
            self.bridge.stop()
        if self.etcd is not None:
            self.etcd.stop()
        self.ns.cleanup()


def tabby_resources(n: int) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = [
        {
            "apiVersion": API,
            "kind": "BGPConfiguration",
            "metadata": {"name": "default"},
            "spec": {"nodeToNodeMeshEnabled": False, "asNumber": ASN},
        },
        {
            "apiVersion": API,
            "kind": "IPPool",
            "metadata": {"name": "rr-pool"},
            "spec": {"cidr": str(POOL), "blockSize": 26, "ipipMode": "Never"},
        },
        {
            "apiVersion": API,
            "kind": "Node",
            "metadata": {"name": RR_NODE, "labels": {"route-reflector": "true"}},
            "spec": {"bgp": {"ipv4Address": f"{RR_IP}/24", "routeReflectorClusterID": CLUSTER_ID}},
        },
    ]
    docs += [
        {
            "apiVersion": API,
            "kind": "BGPPeer",
            "metadata": {"name": f"client-{i:03d}"},
            "spec": {"node": RR_NODE, "peerIP": str(client_ip(i)), "asNumber": ASN},
        }
        for i in range(n)
    ]
    return docs


def start_reflector(
    bed: Bed, kind: str, rr_ns: str, run_dir: Path, profile: Path | None
) -> Reflector:
    if kind == "bird":
        conf = run_dir / "rr.conf"
        conf.write_text(rr_bird_conf(bed.n))
        argv = ["ip", "netns", "exec", rr_ns, "bird", "-f", "-c", str(conf)]
        argv += ["-s", str(run_dir / "rr.ctl")]
        return Reflector(kind, bed.spawn(argv, run_dir / "rr-bird.log"))
    py = [sys.executable]
    if profile is not None:
        py += ["-m", "cProfile", "-o", str(profile)]
    argv = [
        "ip", "netns", "exec", rr_ns, *py, "-m", "bgp",
        "--node-name", RR_NODE, "--route-reflector",
        "--state-dir", str(run_dir / "bgp-state"), "--health-port", str(HEALTH_PORT),
        "--log-level", "Info",
    ]  # fmt: skip
    env = {
        **os.environ,
        "ETCD_ENDPOINTS": "http://127.0.0.1:2379",
        "TABBY_EXPECT_NETNS": rr_ns,
        "PYTHONPATH": os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(REPO)) if p),
        "PYTHONUNBUFFERED": "1",
        "TABBY_EXABGP_PATCH": "0" if kind == WHATIF else "1",
    }
    return Reflector(kind, bed.spawn(argv, run_dir / "tabby-bgp.log", env))


TCP_COUNTERS = (
    "TcpExtListenOverflows",
    "TcpExtListenDrops",
    "TcpExtTCPReqQFullDrop",
    "TcpAttemptFails",
    "TcpExtTCPSynRetrans",
    "TcpRetransSegs",
    "TcpActiveOpens",
    "TcpPassiveOpens",
)


def tcp_counters(ns: str) -> dict[str, int]:
    """The namespace's TCP counters that explain a late session (``nstat``, absolute)."""
    out: dict[str, int] = {}
    for line in nsrun(ns, ["nstat", "-asz", *TCP_COUNTERS], check=False).splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in TCP_COUNTERS and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    return out


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def rr_run(
    bed: Bed, kind: str, rr_ns: str, cl_ns: str, idx: int, profile: Path | None, timeout: float
) -> dict[str, Any]:
    n = bed.n
    run_dir = bed.tmp / f"{kind}-{idx}"
    run_dir.mkdir()
    conf = run_dir / "clients.conf"
    conf.write_text(client_bird_conf(n))
    sock = run_dir / "clients.ctl"
    cl_argv = ["ip", "netns", "exec", cl_ns, "bird", "-f", "-c", str(conf), "-s", str(sock)]
    clients = bed.spawn(cl_argv, run_dir / "clients.log")
    rr: Reflector | None = None
    try:

        def started() -> bool:
            return sock.exists() and "c0" in birdc(sock, "show", "protocols")

        if not wait_for(started, 30, 0.1):
            raise RuntimeError(f"clients' BIRD did not start, see {run_dir}")
        tcp0 = {ns: tcp_counters(ns) for ns in (rr_ns, cl_ns)}
        t0 = time.time()
        rr = start_reflector(bed, kind, rr_ns, run_dir, profile)
        cpu_first: float | None = None
        t_all_est: float | None = None
        st = ClientState()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            cpu_now = cpu_seconds(rr.pids())
            st = client_state(sock, n)
            if st.established and cpu_first is None:
                cpu_first = cpu_now
            if st.established == n and t_all_est is None:
                t_all_est = time.time()
            if st.established == n and st.complete == n:
                break
            if rr.proc.poll() is not None:
                raise RuntimeError(f"{kind} reflector exited, see {run_dir}")
            time.sleep(0.05)
        else:
            raise RuntimeError(
                f"{kind}: {st.established}/{n} established, {st.complete}/{n} complete "
                f"after {timeout:.0f} s; see {run_dir}"
            )
        t_seen = time.time()
        time.sleep(0.3)
        pids = rr.pids()
        cpu_total = cpu_seconds(pids)
        roles = rr.cpu_by_role()
        rss, hwm = memory_kib(pids)
        last_route, count = last_route_time(sock, n)
        last_est = max(st.since.values())
        first_est = min(st.since.values())
        ups = sorted(st.since.values())
        return {
            "tcp_reflector": delta(tcp_counters(rr_ns), tcp0[rr_ns]),
            "tcp_clients": delta(tcp_counters(cl_ns), tcp0[cl_ns]),
            # sessions up by 0.5 s after the first: [0.5 s, 1 s, 2 s, 4 s, 8 s, later]
            "sessions_by": [
                sum(1 for u in ups if u - first_est <= lim) for lim in (0.5, 1, 2, 4, 8, 1e9)
            ],
            "converge": last_route - last_est,
            "sessions_spread": last_est - first_est,
            "start_to_last_est": last_est - t0,
            "start_to_converged": last_route - t0,
            "poll_seen": t_seen - last_est,
            "cpu_total": cpu_total,
            "cpu_sessions": cpu_total - (cpu_first or 0.0),
            "rss_kib": rss,
            "hwm_kib": hwm,
            "routes": count,
            "procs": len(pids),
            **{f"cpu_{k}": v for k, v in roles.items()},
        }
    finally:
        if rr is not None:
            bed.stop(rr.proc)
        bed.stop(clients)


def part1(
    tmp: Path, n: int, runs: int, profile: Path | None, timeout: float, whatif: bool
) -> dict[str, Any]:
    bed = Bed(tmp, n)
    kinds = ["tabby"] if profile is not None else ["tabby", "bird"]
    if whatif and profile is None:
        kinds.append(WHATIF)
    res: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    try:
        rr_ns, cl_ns = bed.build()
        bed.start_etcd(rr_ns)
        for i in range(runs):
            for kind in kinds if i % 2 == 0 else list(reversed(kinds)):
                try:
                    one = rr_run(bed, kind, rr_ns, cl_ns, i, profile, timeout)
                except RuntimeError as exc:
                    print(f"  run {i + 1} {kind}: FAILED {exc}", flush=True)
                    res[kind].append({"error": str(exc)})
                    continue
                res[kind].append(one)
                print(
                    f"  run {i + 1} {kind:5}: converged {one['converge'] * 1000:8.1f} ms after the "
                    f"last session (sessions spread {one['sessions_spread']:.2f} s), cpu "
                    f"{one['cpu_total']:.2f} s ({one['cpu_sessions']:.2f} s after the first "
                    f"session), rss {one['rss_kib'] / 1024:.1f} MiB, {one['routes']} routes",
                    flush=True,
                )
                print(
                    f"      sessions up within 0.5/1/2/4/8 s/all: {one['sessions_by']}; TCP "
                    f"reflector {one['tcp_reflector']}, clients {one['tcp_clients']}",
                    flush=True,
                )
    finally:
        bed.close()
    return {"n": n, "runs": res, "split": split_costs(n)}


def split_costs(n: int) -> dict[str, float]:
    """Per-operation costs behind the tabby reflector's numbers, measured in this process:
    ``plan_prefix`` per prefix with ``n`` client neighbours, and ExaBGP's own neighbour
    selection for one API command (``extract_neighbors`` + ``match_neighbors``, which tries
    every configured neighbour's description with a regular expression) naming one neighbour,
    naming ``n - 1`` neighbours (``neighbor A , neighbor B ...``), and naming none."""
    addrs = [client_ip(i) for i in range(n)]
    ctx = ReflectContext(
        RR_IP,
        IPv4Address(CLUSTER_ID),
        {a: PeerRole(ibgp=True, client=True, router_id=a) for a in addrs},
    )
    paths = [
        (client_prefix(i), RibPath(next_hop=client_nh(i), peer=a, router_id=a))
        for i, a in enumerate(addrs)
    ]
    t = time.perf_counter()
    for prefix, path in paths:
        plan_prefix(prefix, path, ctx)
    out = {"plan_prefix": (time.perf_counter() - t) / n}
    names = [
        f"neighbor {a} local-ip {RR_IP} local-as {ASN} peer-as {ASN} router-id {RR_IP} "
        "family-allowed in-open"
        for a in addrs
    ]
    route = f"announce route {client_prefix(0)} next-hop {client_nh(0)} origin igp"
    cases = {
        "exabgp_match_one": (f"neighbor {addrs[-1]} {route}", 200),
        "exabgp_match_all_but_one": (
            " , ".join(f"neighbor {a}" for a in addrs[1:]) + f" {route}",
            3,
        ),
        "exabgp_match_none": (route, 2000),
    }
    for key, (line, reps) in cases.items():
        t = time.perf_counter()
        for _ in range(reps):
            descriptions, _cmd = extract_neighbors(line)
            match_neighbors(names, descriptions)
        out[key] = (time.perf_counter() - t) / reps
    # the same one-neighbour command with bgp/exabgp_launch.py's literal pre-test, as tabby runs
    # ExaBGP (patched here for the measurement only, then put back)
    limit: Any = importlib.import_module("exabgp.reactor.api.command.limit")
    original = limit.match_neighbor
    try:
        prefilter_neighbor_match()
        line, reps = cases["exabgp_match_one"]
        t = time.perf_counter()
        for _ in range(reps * 10):
            descriptions, _cmd = extract_neighbors(line)
            match_neighbors(names, descriptions)
        out["exabgp_match_one_tabby"] = (time.perf_counter() - t) / (reps * 10)
    finally:
        limit.match_neighbor = original
    return out


# ------------------------------------------------------------------------------ part 2
def lab_cmd(name: str, root: Path) -> list[str]:
    return [str(VENV_BIN / "tabby-lab"), "--name", name, "--state-root", str(root)]


def lab_run(
    base: list[str], *args: str, input_text: str | None = None, timeout: float = 900
) -> str:
    res = subprocess.run(
        [*base, *args],
        capture_output=True,
        text=True,
        input=input_text,
        stdin=None if input_text is not None else subprocess.DEVNULL,
        timeout=timeout,
        check=False,
        cwd=REPO,
    )
    if res.returncode != 0:
        raise RuntimeError(
            f"tabby-lab {' '.join(args[:4])}: {res.stdout[-1500:]} {res.stderr[-1500:]}"
        )
    return res.stdout


def node_status(ns: str) -> dict[str, Any]:
    out = nsrun(
        ns, ["curl", "-s", "-m", "2", f"http://127.0.0.1:{HEALTH_PORT}/status"], check=False
    )
    try:
        doc: dict[str, Any] = json.loads(out)
    except ValueError:
        return {}
    return doc


@dataclass
class LabNode:
    name: str
    netns: str
    address: str
    reflector: bool = False


def lab_nodes(state: Path) -> list[LabNode]:
    topo = json.loads((state / "topology.json").read_text())
    return [LabNode(n["name"], n["netns"], n["address"]) for n in topo["nodes"]]


def agent_pid(state: Path, node: str) -> int | None:
    sup = json.loads((state / "supervisor.json").read_text())
    for a in sup["agents"]:
        if a["node"] == node and a["agent"] == "tabby-bgp":
            pid: int | None = a["pid"]
            return pid
    return None


def expected_sessions(nodes: list[LabNode], node: LabNode) -> int:
    rrs = [n for n in nodes if n.reflector]
    if not rrs:
        return len(nodes) - 1
    if node.reflector:
        return len(nodes) - 1  # every client + the fellow reflectors
    return len(rrs)


def node_converged(nodes: list[LabNode], node: LabNode, routes: int) -> bool:
    st = node_status(node.netns)
    peers = st.get("peers", [])
    if len(peers) != expected_sessions(nodes, node):
        return False
    if any(p.get("state") != "established" for p in peers):
        return False
    got = [int(p.get("prefixesReceived", 0)) for p in peers]
    if any(n.reflector for n in nodes) and not node.reflector:
        return all(g >= routes for g in got)  # every reflector sent us everything
    return sum(got) >= routes


def laggards(nodes: list[LabNode], routes: int) -> str:
    """The nodes that have not converged: sessions by state, prefixes received."""
    out = []
    for n in nodes:
        if node_converged(nodes, n, routes):
            continue
        peers = node_status(n.netns).get("peers", [])
        states: dict[str, int] = {}
        for p in peers:
            states[str(p.get("state"))] = states.get(str(p.get("state")), 0) + 1
        got = sum(int(p.get("prefixesReceived", 0)) for p in peers)
        out.append(
            f"{n.name}: {len(peers)}/{expected_sessions(nodes, n)} sessions {states}, "
            f"{got} prefixes"
        )
    return "; ".join(out[:8]) + (f" (+{len(out) - 8} more)" if len(out) > 8 else "")


def all_converged(nodes: list[LabNode], routes: int) -> bool:
    return all(node_converged(nodes, n, routes) for n in nodes)


def apply_docs(base: list[str], first_node: str, docs: list[dict[str, Any]]) -> None:
    text = "\n---\n".join(json.dumps(d) for d in docs)
    lab_run(base, "exec", first_node, "--", str(VENV_BIN / "tabbyctl"), "apply", "-f", "-",
            input_text=text)  # fmt: skip


def node_doc(n: LabNode, cluster: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {"ipv4Address": n.address}
    labels = {"rack": "r0"}
    if cluster:
        spec["routeReflectorClusterID"] = CLUSTER_ID
        labels["route-reflector"] = "true"
    return {
        "apiVersion": API,
        "kind": "Node",
        "metadata": {"name": n.name, "labels": labels},
        "spec": {"bgp": spec},
    }


def layout_measure(
    base: list[str], state: Path, nodes: list[LabNode], routes: int, idle: float
) -> dict[str, Any]:
    """Restart every tabby-bgp, wait for convergence, measure CPU and RSS per node."""
    if not wait_for(lambda: all_converged(nodes, routes), 300, 0.5):
        raise RuntimeError(f"layout never converged before the restart: {laggards(nodes, routes)}")
    for n in nodes:
        lab_run(base, "agent", "stop", n.name, "tabby-bgp", timeout=120)
    t0 = time.monotonic()
    for n in nodes:
        lab_run(base, "agent", "start", n.name, "tabby-bgp", timeout=120)
    t_started = time.monotonic() - t0
    if not wait_for(lambda: all_converged(nodes, routes), 600, 0.3):
        raise RuntimeError(f"not converged 600 s after the restart: {laggards(nodes, routes)}")
    t_conv = time.monotonic() - t0
    pids = {n.name: agent_pid(state, n.name) for n in nodes}
    procs = {k: descendants(p) if p else [] for k, p in pids.items()}
    cpu_conv = {k: cpu_seconds(v) for k, v in procs.items()}
    time.sleep(idle)
    procs = {k: descendants(p) if p else [] for k, p in pids.items()}
    cpu_idle = {k: (cpu_seconds(v) - cpu_conv[k]) / idle for k, v in procs.items()}
    rss = {k: memory_kib(v)[0] for k, v in procs.items()}
    sessions = {n.name: len(node_status(n.netns).get("peers", [])) for n in nodes}
    out: dict[str, Any] = {"restart_spread": t_started, "converge": t_conv, "roles": {}}
    mesh = not any(n.reflector for n in nodes)
    for role in ("reflector", "client"):
        names = [n.name for n in nodes if n.reflector == (role == "reflector")]
        if not names:
            continue
        out["roles"]["mesh node" if mesh else role] = {
            "count": len(names),
            "sessions": med([sessions[k] for k in names]),
            "cpu_converge": med([cpu_conv[k] for k in names]),
            "cpu_idle": med([cpu_idle[k] for k in names]),
            "rss_kib": med([rss[k] for k in names]),
            "procs": med([len(procs[k]) for k in names]),
        }
    return out


def part2(tmp: Path, size: int, workloads: int, idle: float) -> dict[str, Any]:
    name = f"br{os.getpid() % 100000}"
    root = tmp / "lab"
    base = lab_cmd(name, root)
    state = root / name
    out: dict[str, Any] = {"nodes": size, "workloads": workloads, "layouts": {}}
    t0 = time.monotonic()
    try:
        lab_run(base, "up", "--nodes", str(size), "--workloads-per-node", str(workloads))
        out["up"] = time.monotonic() - t0
        nodes = lab_nodes(state)
        routes = (size - 1) if workloads else 0
        for layout, k in (("mesh", 0), ("1 reflector", 1), ("2 reflectors", 2)):
            print(f"  {size} nodes, {layout} ...", flush=True)
            try:
                if k:
                    for n in nodes[:k]:
                        n.reflector = True
                    # Calico's recipe: the BGPPeer first, then the reflectors, then mesh off
                    apply_docs(base, nodes[-1].name, [
                        {"apiVersion": API, "kind": "BGPPeer",
                         "metadata": {"name": "peer-with-route-reflectors"},
                         "spec": {"nodeSelector": "all()",
                                  "peerSelector": "route-reflector == 'true'"}},
                        *(node_doc(n, True) for n in nodes[:k]),
                        {"apiVersion": API, "kind": "BGPConfiguration",
                         "metadata": {"name": "default"},
                         "spec": {"nodeToNodeMeshEnabled": False, "asNumber": ASN}},
                    ])  # fmt: skip
                res = layout_measure(base, state, nodes, routes, idle)
            except RuntimeError as exc:
                res = {"error": str(exc)}
            out["layouts"][layout] = res
            print(f"    {json.dumps(res)}", flush=True)
    finally:
        subprocess.run([*base, "down"], capture_output=True, timeout=600, check=False)
    return out


# ------------------------------------------------------------------------------ report
def col(rows: list[dict[str, Any]], key: str) -> list[float]:
    return [float(r[key]) for r in rows if key in r]


def report(args: argparse.Namespace, r: dict[str, Any]) -> str:
    lines = [
        "# Route-reflector benchmark: tabby-bgp next to BIRD; full mesh vs reflectors",
        "",
        f"`.venv/bin/python -m bench.bench_rr {' '.join(args.argv)}`".replace(" `", "`"),
        f"— {platform.node()} ({os.cpu_count()} CPUs, kernel {platform.release()}), "
        f"{time.strftime('%Y-%m-%d %H:%M')}, load average at start {r['load']}. "
        "Method: see the module docstring of `bench/bench_rr.py`.",
        "",
    ]
    p1 = r.get("part1")
    if p1:
        n = p1["n"]
        t = [x for x in p1["runs"].get("tabby", []) if "error" not in x]
        b = [x for x in p1["runs"].get("bird", []) if "error" not in x]
        errs = [x["error"] for v in p1["runs"].values() for x in v if "error" in x]
        lines += [
            f"## 1. One reflector, {n} clients (one /26 each): every client holds all {n} "
            f"routes (median of {len(t)} tabby / {len(b)} BIRD runs)",
            "",
            "| metric | tabby-bgp --route-reflector | BIRD 2.0.12 | tabby/BIRD |",
            "|---|---:|---:|---:|",
        ]

        def row(label: str, key: str, scale: float, unit: str, digits: int = 1) -> None:
            a, c = med(col(t, key)), med(col(b, key))
            ratio = f"{a / c:.1f}x" if a is not None and c else "n/a"
            fa = "n/a" if a is None else f"{a * scale:.{digits}f} {unit}"
            fc = "n/a" if c is None else f"{c * scale:.{digits}f} {unit}"
            lines.append(f"| {label} | {fa} | {fc} | {ratio} |")

        row("**last session established -> every client has every route**", "converge", 1000, "ms")
        row("reflector start -> last session established", "start_to_last_est", 1, "s", 2)
        row("first -> last session established", "sessions_spread", 1, "s", 2)
        row("reflector start -> converged", "start_to_converged", 1, "s", 2)
        row("reflector CPU, start -> converged", "cpu_total", 1000, "ms", 0)
        row(
            "reflector CPU after the first session (start-up excluded)",
            "cpu_sessions",
            1000,
            "ms",
            0,
        )
        for role, label in (
            ("agent", "tabby agent"),
            ("exabgp", "ExaBGP"),
            ("bridge", "API bridge"),
        ):
            v = med(col(t, f"cpu_{role}"))
            if v is not None:
                lines.append(f"| &nbsp;&nbsp;of which {label} | {v * 1000:.0f} ms | | |")
        row("reflector RSS after convergence", "rss_kib", 1 / 1024, "MiB")
        row("reflector peak RSS (VmHWM, summed)", "hwm_kib", 1 / 1024, "MiB")

        def ratio_of(key: str) -> float | None:
            a, c = med(col(t, key)), med(col(b, key))
            return a / c if a is not None and c else None

        ratio = ratio_of("converge")
        ratio_start = ratio_of("start_to_converged")
        lines += [
            "",
            "Per run convergence (ms): tabby "
            + ", ".join(f"{x * 1000:.0f}" for x in col(t, "converge"))
            + "; BIRD "
            + ", ".join(f"{x * 1000:.0f}" for x in col(b, "converge"))
            + ". Per run reflector start -> converged (s): tabby "
            + ", ".join(f"{x:.2f}" for x in col(t, "start_to_converged"))
            + "; BIRD "
            + ", ".join(f"{x:.2f}" for x in col(b, "start_to_converged"))
            + f". BGP routes read back from the client tables after convergence: tabby "
            f"{sorted({int(x['routes']) for x in t})}, "
            f"BIRD {sorted({int(x['routes']) for x in b})} "
            f"(want {n * (n - 1)}). Reflector processes: tabby {sorted({x['procs'] for x in t})}, "
            f"BIRD {sorted({x['procs'] for x in b})}.",
            "",
            "**Time until every client holds all routes, from the reflector's start, "
            f"tabby/BIRD: {ratio_start:.1f}x** (target <= 2.0x). Both reflectors connect out "
            "to 200 passive clients first. BIRD waits its connect delay before it dials (1 s, "
            "its minimum, less RFC 4271's up to 25 % jitter: its sessions come up 0.75-1.0 s "
            "after start); ExaBGP dials at once, so tabby's time is mostly reflection work."
            if ratio_start is not None
            else "**Start -> converged ratio: n/a**",
            "",
            "**Reflection work left after the last session came up (last session -> converged), "
            f"tabby/BIRD: {ratio:.1f}x** (the figure that isolates the reflector's work)."
            if ratio is not None
            else "**Convergence ratio: n/a**",
        ]
        if errs:
            lines += ["", "Failed runs: " + "; ".join(errs)]
        sp = p1.get("split")
        if sp:
            cmds = n * (n - 1)
            lines += [
                "",
                "### Where the tabby reflector's time goes",
                "",
                "The reflector sends every client route as ONE un-targeted ExaBGP API command "
                f"(`announce route ... originator-id ... cluster-list [ ... ]`, no `neighbor` "
                f"selector: {n} commands in all; the originator drops its own copy), and a "
                "session coming up costs no command (ExaBGP re-sends the Adj-RIB-Out it kept): "
                "see docs/design/route-reflection.md. Per-neighbour commands would be "
                f"{cmds:,}; ExaBGP's cost of choosing the neighbours of one command, measured "
                f"in this run (this process, {n} configured neighbours), shows why:",
                "",
                "| operation | cost | x count = total |",
                "|---|---:|---:|",
                f"| ExaBGP: select the neighbours of one command naming ONE neighbour "
                f"(regex match against all {n} neighbours) | {sp['exabgp_match_one'] * 1000:.3f} "
                f"ms | x {cmds:,} = {sp['exabgp_match_one'] * cmds:.1f} s |",
                f"| the same, with `bgp/exabgp_launch.py`'s literal pre-test (as tabby runs "
                f"ExaBGP; the reflector's {n} End-of-RIBs are such commands) | "
                f"{sp.get('exabgp_match_one_tabby', float('nan')) * 1000:.3f} ms | x {n} = "
                f"{sp.get('exabgp_match_one_tabby', float('nan')) * n * 1000:.1f} ms |",
                f"| ExaBGP: the same for one command naming {n - 1} neighbours "
                f"(`neighbor A , neighbor B ...`) | {sp['exabgp_match_all_but_one'] * 1000:.1f} "
                f"ms | x {n} = {sp['exabgp_match_all_but_one'] * n:.1f} s |",
                f"| ExaBGP: the same for one command naming no neighbour (sent to all) | "
                f"{sp['exabgp_match_none'] * 1e6:.1f} us | x {n} = "
                f"{sp['exabgp_match_none'] * n * 1000:.2f} ms |",
                f"| tabby: `reflect.plan_prefix` for one prefix ({n} neighbours) | "
                f"{sp['plan_prefix'] * 1e6:.1f} us | x {n} per session up x {n} sessions = "
                f"{sp['plan_prefix'] * n * n:.2f} s |",
            ]
        w = [x for x in p1["runs"].get(WHATIF, []) if "error" not in x]
        if w:

            def cpu(rows: list[dict[str, Any]], key: str) -> str:
                v = med(col(rows, key))
                return "n/a" if v is None else f"{v:.1f} s"

            lines += [
                "",
                "What-if (`--what-if`): the same tabby reflector with ExaBGP started WITHOUT "
                "`bgp/exabgp_launch.py`'s patch (`TABBY_EXABGP_PATCH=0`: ExaBGP deep-copies "
                f"every route once per neighbour), median of {len(w)} runs:",
                "",
                "| reflector | last session -> converged | start -> converged | CPU total | "
                "agent | ExaBGP | bridge |",
                "|---|---:|---:|---:|---:|---:|---:|",
            ]
            for label, rows in (("tabby", t), ("tabby, ExaBGP unpatched", w)):
                conv = med(col(rows, "converge"))
                total = med(col(rows, "start_to_converged"))
                lines.append(
                    f"| {label} | {'n/a' if conv is None else f'{conv:.1f} s'} | "
                    f"{'n/a' if total is None else f'{total:.1f} s'} | {cpu(rows, 'cpu_total')} | "
                    f"{cpu(rows, 'cpu_agent')} | {cpu(rows, 'cpu_exabgp')} | "
                    f"{cpu(rows, 'cpu_bridge')} |"
                )
    for p2 in r.get("part2", []):
        lines += [
            "",
            f"## 2. Per-node cost in `tabby-lab`: {p2['nodes']} nodes, "
            f"{p2['workloads']} workload(s) per node",
            "",
        ]
        if "error" in p2:
            lines.append(f"FAILED: {p2['error']}")
            continue
        lines += [
            f"`tabby-lab up` took {p2.get('up', 0):.1f} s. Each layout: every node's tabby-bgp "
            "restarted, then measured (medians over the nodes of a role).",
            "",
            "| layout | role (nodes) | sessions/node | restart -> converged | CPU to converge "
            "(incl. start-up) | idle CPU | RSS (agent+ExaBGP+bridge) |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for layout, res in p2["layouts"].items():
            if "error" in res:
                lines.append(f"| {layout} | FAILED: {res['error']} | | | | | |")
                continue
            for role, v in res["roles"].items():
                lines.append(
                    f"| {layout} | {role} ({v['count']}) | {v['sessions']:.0f} | "
                    f"{res['converge']:.1f} s | {v['cpu_converge'] * 1000:.0f} ms | "
                    f"{v['cpu_idle'] * 100:.2f} % | {v['rss_kib'] / 1024:.1f} MiB |"
                )
        lines.append(
            "\nrestart -> converged counts from the first `agent start`; starting all agents "
            "(one `tabby-lab agent start` each) took "
            + ", ".join(
                f"{k} {v['restart_spread']:.1f} s"
                for k, v in p2["layouts"].items()
                if "restart_spread" in v
            )
            + f". Idle CPU: over {args.idle:.0f} s after convergence, % of one core."
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--parts", default="1,2")
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=300.0, help="per part-1 run")
    ap.add_argument("--lab-sizes", default="10,30")
    ap.add_argument("--lab-workloads", type=int, default=1)
    ap.add_argument("--idle", type=float, default=10.0)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument(
        "--what-if",
        action="store_true",
        help="part 1: also run the tabby reflector with ExaBGP unpatched "
        "(TABBY_EXABGP_PATCH=0: what bgp/exabgp_launch.py's patch saves)",
    )
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--keep-tmp", action="store_true")
    args = ap.parse_args(args_in)
    args.argv = args_in
    if os.geteuid() != 0:
        print("run as root", file=sys.stderr)
        return 2
    if not 2 <= args.clients <= 200:
        print("--clients: 2..200 (198.51.100.10 .. .209)", file=sys.stderr)
        return 2
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    tmp = Path(tempfile.mkdtemp(prefix="tabby-bench-rr-"))
    r: dict[str, Any] = {"load": Path("/proc/loadavg").read_text().split()[:3]}
    prof = tmp / "rr.prof" if args.profile else None
    if "1" in parts or args.profile:
        print(f"part 1: {args.clients} clients, {args.runs} run(s) per reflector", flush=True)
        r["part1"] = part1(
            tmp, args.clients, 1 if prof else args.runs, prof, args.timeout, args.what_if
        )
    if "2" in parts and not args.profile:
        r["part2"] = []
        for size in (int(s) for s in args.lab_sizes.split(",") if s.strip()):
            print(f"part 2: lab with {size} nodes", flush=True)
            try:
                r["part2"].append(part2(tmp, size, args.lab_workloads, args.idle))
            except Exception as exc:  # reported, not hidden
                r["part2"].append(
                    {"nodes": size, "workloads": args.lab_workloads, "error": str(exc)}
                )
    text = report(args, r)
    print(text)
    raw = tmp.parent / f"{tmp.name}.json"
    raw.write_text(json.dumps(r, indent=1, default=str))
    print(f"raw results: {raw}")
    write_results(
        text,
        args.out,
        prof,
        PROFILE_OUT,
        "cProfile of the tabby reflector (bench.bench_rr --profile)",
        tmp,
        args.keep_tmp,
        top=40,
    )
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
