"""The lab supervisor: one long-running process that keeps a lab's services alive.

Role: started (detached) by ``tabby-lab up``; it runs the lab's etcd (unless external endpoints
were given), the namespace bridges that make etcd reachable at 127.0.0.1:2379 inside every node,
and each node's agents (``tabby-felix``, ``tabby-bgp``) under ``ip netns exec NODE``, restarting
an agent that exits (with backoff) as systemd would. ``SIGTERM`` stops everything it started.
Inputs: the lab state directory (``topology.json``). Outputs: ``supervisor.json`` (PIDs,
endpoint), logs under ``logs/``.
Invariants: every process it starts is its own child, stopped by PID; it never touches a
namespace that is not in the topology; agents are started with ``TABBY_EXPECT_NETNS`` so they
refuse to program any namespace but their node's.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from lab.etcd import EtcdServer
from lab.nsbridge import NamespaceBridge
from lab.topology import Topology

log = logging.getLogger(__name__)
VENV_BIN = Path(sys.executable).parent


def agent_bin(name: str) -> list[str]:
    path = VENV_BIN / name
    if path.exists():
        return [str(path)]
    module = {"tabby-felix": "felix", "tabby-bgp": "bgp"}[name]
    return [sys.executable, "-m", module]


@dataclass
class Agent:
    node: str
    netns: str
    name: str  # tabby-felix | tabby-bgp
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0
    backoff: float = 0.5
    paused: bool = False

    def start(self) -> None:
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, *self.argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                start_new_session=True,
            )
        log.info(
            "supervisor.agent_started node=%s agent=%s pid=%d", self.node, self.name, self.proc.pid
        )

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@dataclass
class Supervisor:
    state_dir: Path
    topo: Topology
    etcd_endpoints: str | None = None  # external etcd; None = start our own
    agents: list[Agent] = field(default_factory=list)
    etcd: EtcdServer | None = None
    bridge: NamespaceBridge | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def _endpoint(self) -> tuple[str, int]:
        if self.etcd is not None:
            return ("127.0.0.1", self.etcd.client_port)
        assert self.etcd_endpoints is not None
        first = self.etcd_endpoints.split(",")[0].split("://")[-1]
        host, _, port = first.rpartition(":")
        return (host or "127.0.0.1", int(port or 2379))

    def start(self, agents: list[str]) -> None:
        logs = self.state_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        if self.etcd_endpoints is None:
            self.etcd = EtcdServer(self.state_dir / "etcd", log_path=logs / "etcd.log")
            self.etcd.start()
        self.bridge = NamespaceBridge(self._endpoint())
        for node in self.topo.nodes:
            self.bridge.add_listener(node.netns, "127.0.0.1", 2379)
        for node in self.topo.nodes:
            env = {
                **os.environ,
                "NODENAME": node.name,
                "FELIX_FELIXHOSTNAME": node.name,
                "FELIX_ETCDENDPOINTS": "http://127.0.0.1:2379",
                "ETCD_ENDPOINTS": "http://127.0.0.1:2379",
                "FELIX_HEALTHHOST": "127.0.0.1",
                "TABBY_EXPECT_NETNS": node.netns,
                "TABBY_BGP_STATE_DIR": str(self.state_dir / "nodes" / node.name / "bgp"),
                # Prometheus /metrics on 127.0.0.1 in each node: felix 9091, bgp 9092
                "FELIX_PROMETHEUSMETRICSENABLED": "true",
                "TABBY_BGP_METRICSPORT": "9092",
                # BGP passwords (bgp/secrets.py): `tabby-lab secret set` writes them here
                "TABBY_SECRETS_DIR": str(self.state_dir / "secrets"),
            }
            for name in agents:
                self.agents.append(
                    Agent(
                        node=node.name,
                        netns=node.netns,
                        name=name,
                        argv=agent_bin(name),
                        env=env,
                        log_path=logs / f"{node.name}-{name}.log",
                    )
                )
        for agent in self.agents:
            agent.start()
        self.write_state()

    def write_state(self) -> None:
        state = {
            "pid": os.getpid(),
            "etcd_endpoint": "{}:{}".format(*self._endpoint()),
            "etcd_pid": self.etcd.pid if self.etcd is not None else None,
            "agents": [
                {
                    "node": a.node,
                    "agent": a.name,
                    "pid": a.proc.pid if a.proc else None,
                    "restarts": a.restarts,
                    "log": str(a.log_path),
                    "paused": a.paused,
                }
                for a in self.agents
            ],
        }
        tmp = self.state_dir / "supervisor.json.tmp"
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_dir / "supervisor.json")

    def _control(self) -> None:
        """Commands from `tabby-lab` (stop/start one agent), through files in ``control/``."""
        ctl = self.state_dir / "control"
        if not ctl.exists():
            return
        for f in sorted(ctl.iterdir()):
            try:
                cmd = json.loads(f.read_text())
            except (OSError, ValueError):
                continue
            finally:
                f.unlink(missing_ok=True)
            for agent in self.agents:
                if agent.node == cmd.get("node") and agent.name == cmd.get("agent"):
                    if cmd.get("action") == "stop":
                        agent.paused = True
                        agent.stop()
                    elif cmd.get("action") == "start":
                        agent.paused = False
                        agent.next_start = 0.0
                    elif cmd.get("action") == "kill" and agent.proc is not None:
                        agent.proc.kill()
            self.write_state()

    def loop(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            changed = False
            self._control()
            for agent in self.agents:
                if agent.paused:
                    continue
                if agent.proc is not None and agent.proc.poll() is not None:
                    log.warning(
                        "supervisor.agent_exited node=%s agent=%s code=%s",
                        agent.node,
                        agent.name,
                        agent.proc.returncode,
                    )
                    agent.proc = None
                    agent.next_start = now + agent.backoff
                    agent.backoff = min(agent.backoff * 2, 10.0)
                    changed = True
                if agent.proc is None and now >= agent.next_start:
                    agent.restarts += 1
                    agent.start()
                    changed = True
            if changed:
                self.write_state()
            self._stop.wait(0.2)

    def stop(self) -> None:
        self._stop.set()

    def shutdown(self) -> None:
        for agent in self.agents:
            agent.stop()
        if self.bridge is not None:
            self.bridge.stop()
        if self.etcd is not None:
            self.etcd.stop()


def main() -> None:
    """``python -m lab.supervisor STATE_DIR AGENTS [ETCD_ENDPOINTS]`` (used by tabby-lab up)."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s supervisor %(levelname)s %(message)s"
    )
    state_dir = Path(sys.argv[1])
    agents = [a for a in sys.argv[2].split(",") if a]
    endpoints = sys.argv[3] if len(sys.argv) > 3 and sys.argv[3] else None
    topo = Topology.from_json(json.loads((state_dir / "topology.json").read_text()))
    sup = Supervisor(state_dir, topo, endpoints)
    signal.signal(signal.SIGTERM, lambda *_: sup.stop())
    signal.signal(signal.SIGINT, lambda *_: sup.stop())
    try:
        sup.start(agents)
        (state_dir / "supervisor.ready").write_text("ok")
        sup.loop()
    finally:
        sup.shutdown()
        (state_dir / "supervisor.ready").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
