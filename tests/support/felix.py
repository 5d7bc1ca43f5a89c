"""A one-node felix test bed in network namespaces, built the way a CNI plugin would.

Topology (every namespace created by the test and deleted afterwards):
  outside (198.51.100.2/24) --eth0--eth0-- node (198.51.100.1/24, default via outside)
  node --tbw<x>--eth0-- workload namespaces (10.65.0.N/32, default via 169.254.1.1; with
  ``ip6``: also an IPv6 /128, default via fe80::ecee:eeff:feee:eeee, as tabby's CNI plugin does)
etcd runs on our loopback; a NamespaceBridge makes it reachable at 127.0.0.1:2379 inside the
node namespace, where ``tabby-felix`` runs under ``ip netns exec`` as it would on a host.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import ip_interface
from pathlib import Path
from typing import Any

from datastore.codec import encode, resource_from_dict
from datastore.etcd import EtcdConfig, EtcdKVStore
from datastore.keys import resource_key
from kernel.links import add_address, create_veth, set_link_up
from lab.etcd import EtcdServer
from lab.nsbridge import NamespaceBridge
from tests.support.netns import NetnsFactory, ns_exec

REPO = Path(__file__).resolve().parents[2]
FELIX = (
    [str(REPO / ".venv/bin/tabby-felix")]
    if (REPO / ".venv/bin/tabby-felix").exists()
    else [sys.executable, "-m", "felix"]
)


def wait_for(pred: Callable[[], bool], timeout: float = 15.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return pred()


@dataclass
class Workload:
    name: str
    netns: str
    iface: str  # host side, in the node namespace
    ip: str
    labels: dict[str, str]
    namespace: str = "default"
    profiles: tuple[str, ...] = ()
    ports: tuple[dict[str, Any], ...] = ()
    ip6: str | None = None  # an IPv6 address (a /128 in the WorkloadEndpoint), or None


# The link-local address the host end of a workload veth gets from its MAC ee:ee:ee:ee:ee:ee:
# the workload's IPv6 gateway (cni.netlink.GATEWAY_V6).
GATEWAY_V6 = "fe80::ecee:eeff:feee:eeee"


@dataclass
class FelixBed:
    netns: NetnsFactory
    etcd: EtcdServer
    node: str = ""
    outside: str = ""
    node_name: str = "node1"
    workloads: dict[str, Workload] = field(default_factory=dict)
    bridge: NamespaceBridge | None = None
    felix: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    _store: EtcdKVStore | None = None
    health_port: int = 9099
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    # -------------------------------------------------------------- topology
    def build(self) -> None:
        self.node = self.netns.new("node")
        self.outside = self.netns.new("out")
        create_veth(self.node, "eth0", self.outside, "eth0")
        add_address(self.node, "eth0", ip_interface("198.51.100.1/24"))
        add_address(self.outside, "eth0", ip_interface("198.51.100.2/24"))
        set_link_up(self.node, "eth0")
        set_link_up(self.outside, "eth0")
        ns_exec(self.node, ["ip", "route", "add", "default", "via", "198.51.100.2"])
        ns_exec(self.outside, ["ip", "route", "add", "10.65.0.0/16", "via", "198.51.100.1"])
        self.bridge = NamespaceBridge(("127.0.0.1", self.etcd.client_port))
        self.bridge.add_listener(self.node, "127.0.0.1", 2379)

    def add_workload(
        self,
        name: str,
        ip: str,
        labels: Mapping[str, str] | None = None,
        *,
        namespace: str = "default",
        profiles: tuple[str, ...] = (),
        ports: tuple[dict[str, Any], ...] = (),
        write: bool = True,
        ip6: str | None = None,
    ) -> Workload:
        """A workload namespace wired to the node as tabby's CNI plugin does it.

        ``ip6``: also an IPv6 address (``/128``, no DAD, as ``cni.netlink``) with the IPv6
        default route via the host end's link-local address, and the ``/128`` in the endpoint's
        ``ipNetworks``. The host side is left to felix (routes, sysctls, rules)."""
        wns = self.netns.new(name[:6])
        iface = f"tbw{name}"[:15]
        create_veth(self.node, iface, wns, "eth0", mac_a="ee:ee:ee:ee:ee:ee")
        set_link_up(self.node, iface)
        add_address(wns, "eth0", ip_interface(f"{ip}/32"))
        set_link_up(wns, "eth0")
        ns_exec(wns, ["ip", "route", "add", "169.254.1.1", "dev", "eth0", "scope", "link"])
        ns_exec(wns, ["ip", "route", "add", "default", "via", "169.254.1.1", "dev", "eth0"])
        if ip6 is not None:
            ns_exec(wns, ["ip", "-6", "addr", "add", f"{ip6}/128", "dev", "eth0", "nodad"])
            ns_exec(wns, ["ip", "-6", "route", "add", "::/0", "via", GATEWAY_V6, "dev", "eth0"])
        wl = Workload(name, wns, iface, ip, dict(labels or {}), namespace, profiles, ports, ip6)
        self.workloads[name] = wl
        if write:
            self.put_workload(wl)
        return wl

    # -------------------------------------------------------------- datastore
    @property
    def store(self) -> EtcdKVStore:
        if self._store is None:
            self._store = EtcdKVStore(EtcdConfig(endpoints=(self.etcd.endpoint,)))
        return self._store

    def put(self, doc: Mapping[str, Any]) -> None:
        res = resource_from_dict(dict(doc))
        key = resource_key(res.kind, res.metadata.name, res.metadata.namespace)
        self.store.put(key, encode(res))

    def delete(self, kind: str, name: str, namespace: str | None = None) -> None:
        self.store.delete(resource_key(kind, name, namespace))

    def wep_doc(self, wl: Workload) -> dict[str, Any]:
        name = f"{self.node_name}-k8s-{wl.name}-eth0"
        spec: dict[str, Any] = {
            "orchestrator": "k8s",
            "node": self.node_name,
            "pod": wl.name,
            "endpoint": "eth0",
            "interfaceName": wl.iface,
            "ipNetworks": [f"{wl.ip}/32", *([f"{wl.ip6}/128"] if wl.ip6 else [])],
            "profiles": list(wl.profiles),
        }
        if wl.ports:
            spec["ports"] = list(wl.ports)
        return {
            "apiVersion": "projectcalico.org/v3",
            "kind": "WorkloadEndpoint",
            "metadata": {"name": name, "namespace": wl.namespace, "labels": wl.labels},
            "spec": spec,
        }

    def put_workload(self, wl: Workload) -> None:
        self.put(self.wep_doc(wl))

    def delete_workload(self, wl: Workload) -> None:
        self.delete("WorkloadEndpoint", f"{self.node_name}-k8s-{wl.name}-eth0", wl.namespace)

    # -------------------------------------------------------------- felix
    def start_felix(self, tmp: Path, env: Mapping[str, str] | None = None) -> None:
        self.log_path = tmp / f"felix-{int(time.time() * 1000)}.log"
        full_env = {
            **os.environ,
            "FELIX_FELIXHOSTNAME": self.node_name,
            "FELIX_ETCDENDPOINTS": "http://127.0.0.1:2379",
            "FELIX_HEALTHPORT": str(self.health_port),
            "FELIX_LOGSEVERITYSCREEN": "Info",
            "TABBY_EXPECT_NETNS": self.node,
            **(env or {}),
        }
        with open(self.log_path, "ab") as out:
            self.felix = subprocess.Popen(
                ["ip", "netns", "exec", self.node, *FELIX, "--config-file", "/nonexistent"],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=full_env,
            )

    def health(self, path: str = "/readiness") -> int:
        # The health port is inside the node namespace: ask from there.
        res = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                self.node,
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                f"http://127.0.0.1:{self.health_port}{path}",
            ],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        try:
            return int(res.stdout.strip() or 0)
        except ValueError:
            return 0

    def wait_ready(self, timeout: float = 30.0) -> None:
        if not wait_for(lambda: self.health() == 200, timeout, 0.1):
            raise AssertionError(f"felix not ready after {timeout}s; log:\n{self.felix_log()}")

    def felix_log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:] if self.log_path else ""

    def stop_felix(self, sig: int = signal.SIGTERM) -> None:
        proc, self.felix = self.felix, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                # felix must exit on SIGTERM; say so loudly (seen once, not reproduced).
                print(f"WARNING: felix pid {proc.pid} ignored signal {sig} for 15s; killed")
                proc.kill()
                proc.wait(5)

    def close(self) -> None:
        self.stop_felix()
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(5)
        self.procs.clear()
        if self.bridge is not None:
            self.bridge.stop()
        if self._store is not None:
            self._store.close()

    # -------------------------------------------------------------- traffic
    def ping(self, src_ns: str, dst_ip: str, count: int = 1, wait: float = 1.0) -> bool:
        res = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                src_ns,
                "ping",
                "-c",
                str(count),
                "-W",
                str(wait),
                "-i",
                "0.2",
                "-q",
                dst_ip,
            ],
            capture_output=True,
            text=True,
            timeout=count * wait + 10,
            check=False,
        )
        return res.returncode == 0

    def tcp(self, src_ns: str, dst_ns: str, dst_ip: str, port: int, timeout: float = 1.0) -> bool:
        """A real TCP connection from src_ns to dst_ip:port (a listener runs in dst_ns)."""
        server = subprocess.Popen(
            ["ip", "netns", "exec", dst_ns, sys.executable, "-c", _LISTENER, str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
        try:
            assert server.stdout is not None
            server.stdout.readline()  # "ready"
            res = subprocess.run(
                [
                    "ip",
                    "netns",
                    "exec",
                    src_ns,
                    sys.executable,
                    "-c",
                    _CONNECTOR,
                    dst_ip,
                    str(port),
                    str(timeout),
                ],
                capture_output=True,
                text=True,
                timeout=timeout + 10,
                check=False,
            )
            return res.stdout.strip() == "ok"
        finally:
            server.kill()
            server.wait()

    def spawn(self, ns: str, argv: Sequence[str]) -> subprocess.Popen[bytes]:
        """A helper process in ``ns``; killed by PID in ``close()`` (or earlier by the test)."""
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
        self.procs.append(proc)
        return proc

    def serve(
        self, ns: str, ports: Sequence[int], *, ipv6: bool = False
    ) -> subprocess.Popen[bytes]:
        """TCP listeners on ``ports`` in ``ns``; each connection is answered with the peer IP.

        ``ipv6``: listen on ``::`` too (IPv6 only there, so IPv4 peers still show as IPv4)."""
        flag = ["-6"] if ipv6 else []
        proc = self.spawn(ns, [sys.executable, "-c", _MULTI_LISTENER, *flag, *map(str, ports)])
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"ready":
            raise AssertionError(f"listener in {ns} on {ports} did not start")
        return proc

    def connect(self, src_ns: str, dst_ip: str, port: int, timeout: float = 0.5) -> str | None:
        """Connect from ``src_ns``; the peer address the server saw, or None if it failed."""
        res = subprocess.run(
            [
                *("ip", "netns", "exec", src_ns, sys.executable, "-c", _PEER_CONNECTOR),
                *(dst_ip, str(port), str(timeout)),
            ],
            capture_output=True,
            text=True,
            timeout=timeout + 10,
            check=False,
        )
        out = res.stdout.strip()
        return out[3:] if out.startswith("ok ") else None

    def can_tcp(self, src_ns: str, dst_ip: str, port: int) -> Callable[[], bool]:
        return lambda: self.connect(src_ns, dst_ip, port) is not None

    def can_ping(self, src_ns: str, dst_ip: str, *extra: str) -> Callable[[], bool]:
        def check() -> bool:
            argv = ["ping", "-c", "1", "-W", "0.5", "-q", *extra, dst_ip]
            res = subprocess.run(
                ["ip", "netns", "exec", src_ns, *argv],
                capture_output=True,
                timeout=10,
                check=False,
            )
            return res.returncode == 0

        return check

    def expect(
        self, checks: Mapping[str, tuple[Callable[[], bool], bool]], timeout: float = 10.0
    ) -> None:
        """Wait until every check gives its wanted result (all at the same time)."""
        last: dict[str, bool] = {}

        def all_hold() -> bool:
            ok = True
            for name, (fn, want) in checks.items():
                last[name] = fn()
                if last[name] != want:
                    ok = False
                    break
            return ok

        if not wait_for(all_hold, timeout, 0.1):
            wrong = {n: last.get(n) for n, (_, w) in checks.items() if last.get(n) != w}
            v6 = (
                f"ip6tables:\n{self.ip6tables_save()[-4000:]}\n"
                if any(wl.ip6 for wl in self.workloads.values())
                else ""
            )
            raise AssertionError(
                f"not converged in {timeout}s, wrong (name: got): {wrong}\n"
                f"iptables:\n{self.iptables_save()[-4000:]}\n{v6}felix log:\n{self.felix_log()}"
            )

    def iptables_save(self) -> str:
        return ns_exec(self.node, ["iptables-save"])

    def ip6tables_save(self) -> str:
        return ns_exec(self.node, ["ip6tables-save"])

    def routes(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = json.loads(ns_exec(self.node, ["ip", "-j", "route"]))
        return out

    def routes6(self) -> list[dict[str, Any]]:
        """The node namespace's IPv6 main table (``ip -j -6 route``)."""
        out: list[dict[str, Any]] = json.loads(ns_exec(self.node, ["ip", "-j", "-6", "route"]))
        return out


_LISTENER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(16)
print("ready", flush=True)
while True:
    c, _ = s.accept(); c.sendall(b"hi"); c.close()
"""
_CONNECTOR = """
import socket, sys
try:
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
    print("ok" if c.recv(2) == b"hi" else "bad")
except OSError as e:
    print("fail", e)
"""


_MULTI_LISTENER = """
import selectors, socket, sys
sel = selectors.DefaultSelector()
args = sys.argv[1:]
v6 = args[:1] == ["-6"]
for port in args[1:] if v6 else args:
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", int(port))); s.listen(64); sel.register(s, selectors.EVENT_READ)
    if v6:
        s = socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind(("::", int(port))); s.listen(64); sel.register(s, selectors.EVENT_READ)
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        c, peer = key.fileobj.accept()
        try:
            c.sendall(peer[0].encode() + b"\\n")
        except OSError:
            pass
        c.close()
"""
_PEER_CONNECTOR = """
import socket, sys
try:
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
    data = c.recv(64).decode().strip()
    print("ok " + data if data else "fail empty")
except OSError as e:
    print("fail", e)
"""


def http_get(url: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


# ------------------------------------------------------------------ resource documents
API = "projectcalico.org/v3"


def gnp(name: str, selector: str, **spec: Any) -> dict[str, Any]:
    """A GlobalNetworkPolicy; ``types`` defaults to the directions that have rules."""
    body: dict[str, Any] = {"selector": selector, **spec}
    if "types" not in body:
        body["types"] = [t for t, k in (("Ingress", "ingress"), ("Egress", "egress")) if k in body]
    return {
        "apiVersion": API,
        "kind": "GlobalNetworkPolicy",
        "metadata": {"name": name},
        "spec": body,
    }


def np_(name: str, namespace: str, selector: str, **spec: Any) -> dict[str, Any]:
    doc = gnp(name, selector, **spec)
    doc["kind"] = "NetworkPolicy"
    doc["metadata"]["namespace"] = namespace
    return doc


def profile(name: str, ingress: list[Any], egress: list[Any]) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "Profile",
        "metadata": {"name": name},
        "spec": {"ingress": ingress, "egress": egress},
    }


ALLOW = {"action": "Allow"}
DENY = {"action": "Deny"}
ALLOW_ALL = profile("allow-all", [ALLOW], [ALLOW])
