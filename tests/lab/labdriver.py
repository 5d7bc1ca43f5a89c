"""Drive ``tabby-lab`` from tests, as a user would: one subprocess per command.

Role: a thin client of the lab's command line (``up``, ``check``, ``exec``, ``agent``, ``peer``,
``down``) plus readers of what the lab leaves in its state directory (topology, workload
addresses, supervisor PIDs, ExaBGP PID file), and ``Background``: long-running probes (``ping``,
``ip monitor``) started inside lab namespaces and always stopped by PID.
It is not a second harness: every namespace, agent and peer is made and removed by ``tabby-lab``.
Inputs: a lab name. Outputs: parsed results (connectivity matrix, ``tabbyctl node status``
documents, kernel routes) for behavioural assertions.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, ip_address
from pathlib import Path
from typing import Any, TypeVar

from lab.topology import Topology

VENV_BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
TABBY_LAB = str(VENV_BIN / "tabby-lab")
TABBYCTL = str(VENV_BIN / "tabbyctl")
STATE_ROOT = Path("/run/tabby-lab")
BLOCK_PREFIX = 26

T = TypeVar("T")


class LabCommandError(AssertionError):
    """A ``tabby-lab`` command failed (carries its output)."""


@dataclass(frozen=True, slots=True)
class Matrix:
    """The connectivity matrix printed by ``tabby-lab check``."""

    ok: dict[tuple[str, str], bool]
    exit_code: int
    text: str

    def failed(self) -> list[tuple[str, str]]:
        return sorted(pair for pair, good in self.ok.items() if not good)

    def among(self, names: set[str]) -> dict[tuple[str, str], bool]:
        return {(a, b): v for (a, b), v in self.ok.items() if a in names and b in names}


def parse_matrix(text: str, exit_code: int) -> Matrix:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    names = lines[0].split()
    ok: dict[tuple[str, str], bool] = {}
    for line in lines[1 : 1 + len(names)]:
        row, *cells = line.split()
        assert len(cells) == len(names), f"malformed matrix row: {line!r}"
        for col, cell in zip(names, cells, strict=True):
            if row != col:
                assert cell in ("ok", "FAIL"), f"unexpected cell {cell!r} in {line!r}"
                ok[(row, col)] = cell == "ok"
    summary = re.search(r"(\d+)/(\d+) pairs connect", text)
    assert summary, f"no summary line in check output:\n{text}"
    assert int(summary.group(1)) == sum(ok.values()), text
    return Matrix(ok, exit_code, text)


def wait_for(
    probe: Callable[[], T], timeout: float, what: str, interval: float = 0.2
) -> tuple[T, float]:
    """Poll ``probe`` until it returns a truthy value; returns (value, seconds waited)."""
    t0 = time.monotonic()
    while True:
        last = probe()
        if last:
            return last, time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


@dataclass
class Lab:
    name: str
    state_root: Path = STATE_ROOT
    up_done: bool = False

    @property
    def state(self) -> Path:
        return self.state_root / self.name

    # ---------------------------------------------------------------- the command line
    def run(
        self,
        *args: str,
        check: bool = True,
        timeout: float = 120,
        input_text: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        argv = [TABBY_LAB, "--name", self.name, "--state-root", str(self.state_root), *args]
        res = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO,
            input=input_text,
            stdin=None if input_text is not None else subprocess.DEVNULL,
            check=False,
        )
        if check and res.returncode != 0:
            raise LabCommandError(
                f"{' '.join(args)} exited {res.returncode}\n{res.stdout}\n{res.stderr}"
            )
        return res

    def up(self, nodes: int, workloads_per_node: int = 1, *extra: str) -> None:
        self.up_done = True  # from here on ``down`` is due, whatever happens
        self.run(
            "up", "--nodes", str(nodes), "--workloads-per-node", str(workloads_per_node), *extra
        )

    def down(self) -> str:
        return self.run("down", check=False, timeout=180).stdout

    def check(self, retries: int = 3) -> Matrix:
        res = self.run("check", "--retries", str(retries), check=False)
        return parse_matrix(res.stdout, res.returncode)

    def exec(
        self, target: str, *argv: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return self.run("exec", target, "--", *argv, check=check, timeout=timeout)

    def agent(self, action: str, node: str, agent: str) -> None:
        self.run("agent", action, node, agent)

    def tabbyctl(self, *args: str, input_text: str | None = None) -> str:
        return self.run("exec", self.nodes[0], "--", TABBYCTL, *args, input_text=input_text).stdout

    def node_status(self, node: str) -> dict[str, Any]:
        res = self.exec(node, TABBYCTL, "node", "status", "-o", "json", check=False)
        if res.returncode != 0:
            return {}
        data: dict[str, Any] = json.loads(res.stdout)
        return data

    def peers_of(self, node: str) -> dict[str, dict[str, Any]]:
        """``tabbyctl node status`` sessions of ``node``, by peer address."""
        return {p["peer"]: p for p in self.node_status(node).get("peers", [])}

    def routes(self, target: str) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = json.loads(self.exec(target, "ip", "-j", "route").stdout)
        return data

    def bgp_routes(self, node: str) -> dict[str, str]:
        """Proto 81 unicast routes of ``node``: destination -> gateway."""
        return {
            r["dst"]: r.get("gateway", "")
            for r in self.routes(node)
            if str(r.get("protocol")) == "81" and r.get("type", "unicast") == "unicast"
        }

    def peer_add(self, name: str, kind: str) -> dict[str, Any]:
        self.run("peer", "add", name, "--kind", kind)
        return self.peer(name)

    def peer(self, name: str) -> dict[str, Any]:
        found: list[dict[str, Any]] = json.loads(self.run("peer", "list", "-o", "json").stdout)
        return next(p for p in found if p["name"] == name)

    def peer_cli(self, name: str, *cmd: str) -> str:
        return self.run("peer", "cli", name, *cmd).stdout

    def vtysh(self, name: str, *commands: str) -> str:
        """Run vtysh commands (``-c`` each, in order) on FRR peer or ToR ``name``."""
        argv = ["vtysh", "--vty_socket", self.peer(name)["socket"]]
        for c in commands:
            argv += ["-c", c]
        return self.exec(name, *argv).stdout

    def frr_json(self, name: str, command: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.vtysh(name, f"{command} json"))
        return data

    def secret_set(self, name: str, key: str, value: str) -> None:
        self.run("secret", "set", name, key, "--value", value)

    def secret_del(self, name: str, key: str) -> None:
        self.run("secret", "del", name, key)

    # ---------------------------------------------------------------- state directory
    @property
    def topology(self) -> Topology:
        return Topology.from_json(json.loads((self.state / "topology.json").read_text()))

    @property
    def nodes(self) -> list[str]:
        return [n.name for n in self.topology.nodes]

    def node_ip(self, node: str) -> str:
        return self.topology.node(node).address.split("/")[0]

    def node_netns(self, node: str) -> str:
        return self.topology.node(node).netns

    def workload_ips(self) -> dict[str, str]:
        data: dict[str, str] = json.loads((self.state / "workloads.json").read_text())
        return data

    def workload_of(self, node: str) -> str:
        return next(w.name for w in self.topology.workloads if w.node == node)

    def block_of(self, node: str) -> str:
        """The /26 block holding ``node``'s first workload."""
        ip = self.workload_ips()[self.workload_of(node)]
        return str(IPv4Network(f"{ip}/{BLOCK_PREFIX}", strict=False))

    def agent_pid(self, node: str, agent: str) -> int | None:
        sup = json.loads((self.state / "supervisor.json").read_text())
        for a in sup["agents"]:
            if a["node"] == node and a["agent"] == agent:
                pid: int | None = a["pid"]
                return pid
        return None

    def exabgp_pid(self, node: str) -> int | None:
        try:
            pid = int((self.state / "nodes" / node / "bgp" / "exabgp.pid").read_text())
        except (OSError, ValueError):
            return None
        return pid if _cmdline_has(pid, f"nodes/{node}/bgp/exabgp.conf") else None

    def node_resource(self, node: str) -> dict[str, Any]:
        plan = self.topology.node(node)
        return {
            "apiVersion": "projectcalico.org/v3",
            "kind": "Node",
            "metadata": {"name": node, "labels": {"rack": f"r{plan.subnet}"}},
            "spec": {"bgp": {"ipv4Address": plan.address}},
        }

    # ---------------------------------------------------------------- convergence
    def mesh_established(self, nodes: list[str], expected_peers: int) -> bool:
        for node in nodes:
            peers = self.peers_of(node)
            if len(peers) != expected_peers:
                return False
            if any(p["state"] != "established" for p in peers.values()):
                return False
        return True

    def wait_mesh(self, nodes: list[str], expected_peers: int, timeout: float = 60) -> float:
        _, took = wait_for(
            lambda: self.mesh_established(nodes, expected_peers),
            timeout,
            f"{expected_peers} established sessions on each of {', '.join(nodes)}",
        )
        return took


def _cmdline_has(pid: int, needle: str) -> bool:
    try:
        return needle.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def processes_mentioning(needle: str) -> list[tuple[int, str]]:
    """Live processes whose command line contains ``needle`` (zombies have none)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle.encode() in raw:
            found.append((int(entry.name), raw.replace(b"\0", b" ").decode(errors="replace")))
    return found


@dataclass
class Background:
    """Probes running inside lab namespaces (``ping``, ``ip monitor``); ``stop_all`` by PID."""

    procs: list[tuple[subprocess.Popen[str], Path]] = field(default_factory=list)
    workdir: Path = Path("/tmp")

    def start(self, netns: str, argv: list[str], tag: str) -> subprocess.Popen[str]:
        out = self.workdir / f"{tag}.out"
        with open(out, "w") as fh:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", netns, *argv],
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                start_new_session=True,
            )
        self.procs.append((proc, out))
        return proc

    def stop(self, proc: subprocess.Popen[str], sig: int = signal.SIGINT) -> str:
        """Stop one probe (SIGINT: ping prints its statistics) and return its output."""
        out = next(o for p, o in self.procs if p is proc)
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        return out.read_text()

    def stop_all(self) -> None:
        for proc, _ in self.procs:
            with contextlib.suppress(ProcessLookupError):
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(5)
        self.procs.clear()


@dataclass(frozen=True, slots=True)
class PingStats:
    transmitted: int
    received: int

    @property
    def lost(self) -> int:
        return self.transmitted - self.received


def parse_ping(text: str) -> PingStats:
    m = re.search(r"(\d+) packets transmitted, (\d+) received", text)
    assert m, f"no ping statistics in:\n{text}"
    return PingStats(int(m.group(1)), int(m.group(2)))


def is_ip(text: str) -> bool:
    try:
        return isinstance(ip_address(text), IPv4Address)
    except ValueError:
        return False


def kill_pid(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
