"""deploy/ROUTE-REFLECTOR.md, followed as written, on a dedicated reflector host in a lab.

The how-to's ``console`` blocks are parsed with the doc tests' parser (tests/docs) and run in
order, each command verbatim in its own ``bash -c``, inside the "reflector host": a namespace
``tl<lab>-rr1`` attached to the lab's subnet (uplink ``eno1``, as in the how-to; the lab's etcd
at 127.0.0.1:2379 through a namespace bridge, as in every lab node), with the settings of
``/etc/tabby/tabby-route-reflector.env`` exported, as the how-to says. The two blocks the test
machine cannot run (``notest``) are replaced, and only these:
  install  the sample ``deploy/tabby-route-reflector.env`` with the lab's settings (NODENAME,
           ETCD_ENDPOINTS, TABBY_BGP_STATE_DIR in the lab's state directory), each a setting the
           sample documents; the path installed to must be the unit's ``EnvironmentFile``;
  systemd  exactly the unit's ``ExecStart`` (``deploy/tabby-route-reflector.service``), with
           the ``/opt/tabby/venv`` prefix replaced by this virtualenv, in the reflector host with
           that environment (plus ``TABBY_EXPECT_NETNS``, the lab's guard).
Any other ``notest`` block fails the test (the how-to cannot grow an untested step).
Proves: the how-to's commands work as written (exit codes and the outputs its annotations name),
its YAML examples are valid, the clients converge through the dedicated reflector with the mesh
off (one session each, every other node's block with the originating node as next hop, the full
workload matrix), and the reflector programs no route in its own kernel.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from ipaddress import IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

import pytest

from kernel.links import add_address, create_veth, set_link_up
from lab import fabric
from lab.nsbridge import NamespaceBridge
from tests.docs.test_docs_commands import Block, Runner, parse_doc
from tests.lab.labdriver import REPO, TABBYCTL, VENV_BIN, Lab, wait_for

HOWTO = REPO / "deploy" / "ROUTE-REFLECTOR.md"
UNIT = REPO / "deploy" / "tabby-route-reflector.service"
SAMPLE_ENV = REPO / "deploy" / "tabby-route-reflector.env"
PROD_PREFIX = "/opt/tabby/venv"
RR = "rr1"  # the how-to's reflector
CLUSTER_ID = "244.0.0.1"


# ------------------------------------------------------------------------------ parsing
def unit_service(text: str) -> dict[str, list[str]]:
    """The ``[Service]`` section of a systemd unit: key -> values (keys may repeat)."""
    out: dict[str, list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        if sep and section == "Service":
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def exec_start_argv(unit: dict[str, list[str]], venv: Path) -> list[str]:
    (line,) = unit["ExecStart"]
    assert not line.startswith(("-", "@", "+", "!", ":")), f"ExecStart prefix: {line}"
    argv = shlex.split(line)
    assert argv[0].startswith(PROD_PREFIX + "/"), f"ExecStart outside {PROD_PREFIX}: {line}"
    return [str(venv) + argv[0][len(PROD_PREFIX) :], *argv[1:]]


def documented_keys(sample: str) -> set[str]:
    """Settings the sample environment file names (``#KEY=...`` or ``KEY=...`` lines)."""
    return {m.group(1) for m in re.finditer(r"^#?([A-Z][A-Z0-9_]*)=", sample, re.M)}


def environment_file(text: str) -> dict[str, str]:
    """systemd ``EnvironmentFile`` semantics for the simple case: KEY=value lines, # comments."""
    env: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not KEY=value: {raw!r}"
        env[key.strip()] = value.strip()
    return env


def lab_env_file(sample: str, settings: dict[str, str]) -> str:
    """The sample with ``settings`` set, as an admin edits it (uncomment, give the value)."""
    unknown = set(settings) - documented_keys(sample)
    assert not unknown, f"settings the sample env file does not document: {sorted(unknown)}"
    lines = sample.splitlines()
    for key, value in settings.items():
        pattern = re.compile(rf"^#?{key}=")
        i = next(k for k, ln in enumerate(lines) if pattern.match(ln))
        lines[i] = f"{key}={value}"
    return "\n".join(lines) + "\n"


def is_install_env(block: Block) -> bool:
    return any(
        c.text.startswith("install ") and "tabby-route-reflector.env" in c.text
        for c in block.commands
    )


def is_systemd_start(block: Block) -> bool:
    return any(
        c.text.startswith("systemctl enable --now tabby-route-reflector") for c in block.commands
    )


# ------------------------------------------------------------------------------ the host
@dataclass
class ReflectorHost:
    """A namespace on the lab's subnet 0 that plays the dedicated reflector host."""

    netns: str
    address: IPv4Interface
    bridge: NamespaceBridge
    proc: subprocess.Popen[bytes] | None = None

    def routes(self) -> list[dict[str, Any]]:
        out = fabric.ns_run(self.netns, ["ip", "-j", "route"], "routes of the reflector host")
        data: list[dict[str, Any]] = json.loads(out or "[]")
        return data

    def start(self, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        with open(log_path, "ab") as out:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, *argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)  # as systemd's KillMode=mixed: the agent stops ExaBGP
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture
def reflector_host(make_lab: Callable[[str], Lab]) -> Iterator[tuple[Lab, ReflectorHost]]:
    lab = make_lab("rrh")
    lab.up(3, 1)
    topo = lab.topology
    subnet = topo.subnets[0]
    cidr = IPv4Network(subnet.cidr)
    taken = {IPv4Interface(n.address).ip for n in topo.nodes}
    ip = next(
        cidr.network_address + k
        for k in range(cidr.num_addresses - 2, 1, -1)
        if cidr.network_address + k not in taken
    )
    netns = f"{topo.ns_prefix}{RR}"
    sup = json.loads((lab.state / "supervisor.json").read_text())
    host, _, port = str(sup["etcd_endpoint"]).rpartition(":")
    bridge = NamespaceBridge((host, int(port)))
    rr = ReflectorHost(netns, IPv4Interface(f"{ip}/{cidr.prefixlen}"), bridge)
    try:
        fabric.add_netns(netns)
        create_veth(netns, "eno1", topo.fabric_netns, RR)
        fabric.ns_run(
            topo.fabric_netns,
            ["ip", "link", "set", RR, "master", subnet.bridge],
            "attach the reflector host",
        )
        set_link_up(topo.fabric_netns, RR)
        add_address(netns, "eno1", rr.address)
        set_link_up(netns, "eno1")
        fabric.ns_run(
            netns,
            ["ip", "route", "replace", "default", "via", str(cidr.network_address + 1)],
            "default route of the reflector host",
        )
        bridge.add_listener(netns, "127.0.0.1", 2379)
        yield lab, rr
    finally:
        rr.stop()
        bridge.stop()
        fabric.destroy([netns])


# ------------------------------------------------------------------------------ checks
def node_sessions(lab: Lab, node: str) -> dict[str, dict[str, Any]]:
    return lab.peers_of(node)


def reflector_session_up(lab: Lab, node: str, rr_ip: str) -> bool:
    p = node_sessions(lab, node).get(rr_ip)
    return p is not None and p["state"] == "established" and p.get("rrRole") == "reflector"


def only_the_reflector(lab: Lab, node: str, rr_ip: str) -> bool:
    got = node_sessions(lab, node)
    return set(got) == {rr_ip} and got[rr_ip]["state"] == "established"


def no_session_to(lab: Lab, node: str, ip: str) -> bool:
    return ip not in node_sessions(lab, node)


def blocks_by_node(lab: Lab) -> dict[str, str]:
    return {lab.block_of(n): lab.node_ip(n) for n in lab.nodes}


def routes_converged(lab: Lab, node: str, want: dict[str, str]) -> bool:
    expected = {p: gw for p, gw in want.items() if gw != lab.node_ip(node)}
    return lab.bgp_routes(node) == expected


# ------------------------------------------------------------------------------ the tests
def test_howto_untested_steps_are_only_install_and_systemd() -> None:
    """No root needed: the how-to parses, and what the lab test replaces is all it skips."""
    doc = parse_doc(HOWTO)
    assert doc.env == "reflector"
    kinds = [
        "install" if is_install_env(b) else "systemd" if is_systemd_start(b) else b.where_text
        for b in doc.skipped
    ]
    assert kinds == ["install", "systemd"], kinds
    unit = unit_service(UNIT.read_text())
    assert exec_start_argv(unit, Path("/v")) == ["/v/bin/tabby-bgp", "--route-reflector"]
    assert unit["EnvironmentFile"] == ["/etc/tabby/tabby-route-reflector.env"]
    assert {"NODENAME", "ETCD_ENDPOINTS", "TABBY_BGP_STATE_DIR"} <= documented_keys(
        SAMPLE_ENV.read_text()
    )
    assert len(doc.runnable) >= 6, [b.where_text for b in doc.runnable]


@pytest.mark.lab
@pytest.mark.slow
def test_route_reflector_howto_as_written(
    reflector_host: tuple[Lab, ReflectorHost], tmp_path: Path
) -> None:
    lab, rr = reflector_host
    doc = parse_doc(HOWTO)
    assert doc.env == "reflector"
    unit = unit_service(UNIT.read_text())
    argv = exec_start_argv(unit, VENV_BIN.parent)
    assert argv[1:] == ["--route-reflector"], argv
    (env_path,) = unit["EnvironmentFile"]
    rr_ip = str(rr.address.ip)
    lab.wait_mesh(lab.nodes, expected_peers=len(lab.nodes) - 1)

    # /etc/tabby/tabby-route-reflector.env with the lab's settings, as the how-to tells
    env_text = lab_env_file(
        SAMPLE_ENV.read_text(),
        {
            "NODENAME": RR,
            "ETCD_ENDPOINTS": "http://127.0.0.1:2379",
            "TABBY_BGP_STATE_DIR": str(lab.state / RR / "bgp"),
        },
    )
    settings = environment_file(env_text)
    (tmp_path / "tabby-route-reflector.env").write_text(env_text)
    base = {k: v for k, v in os.environ.items() if k not in ("NODENAME", "ETCD_ENDPOINTS")}
    base["PATH"] = f"{VENV_BIN}{os.pathsep}{base.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
    env = {**base, **settings, "TABBY_EXPECT_NETNS": rr.netns}
    work = tmp_path / "shell"
    work.mkdir()
    runner = Runner(env, netns={"host": rr.netns}, cwd=work)
    routes_before = rr.routes()

    handled = []
    for block in doc.blocks:
        if block.notest is not None:
            if is_install_env(block):
                installs = [c.text for c in block.commands if c.text.startswith("install ")]
                assert any(t.split()[-1] == env_path for t in installs), (installs, env_path)
                handled.append("install")
            elif is_systemd_start(block):
                assert any("tabby-route-reflector.service" in c.text for c in block.commands)
                rr.start(argv, env, lab.state / "rr1-tabby-bgp.log")
                handled.append("systemd")
            else:
                raise AssertionError(f"{block.where_text}: notest block the test cannot replace")
            continue
        texts = " ".join(c.text for c in block.commands)
        if "nodeToNodeMeshEnabled: false" in texts:
            # step 5's condition: every node has its session to the reflector up
            for n in lab.nodes:
                wait_for(partial(reflector_session_up, lab, n, rr_ip), 60, f"{n}: reflector up")
            text = lab.exec(lab.nodes[-1], TABBYCTL, "node", "status").stdout
            assert "node specific, reflector" in text and "node-to-node mesh" in text, text
        runner.run_block(block)
        if "tabbyctl replace -f rr1.yaml" in texts:
            node = json.loads(lab.tabbyctl("get", "node", RR, "-o", "json"))
            assert node["metadata"]["labels"]["route-reflector"] == "true", node
            assert node["spec"]["bgp"] == {
                "ipv4Address": str(rr.address),
                "routeReflectorClusterID": CLUSTER_ID,
            }, node
            # a Node with a cluster ID is in nobody's mesh (register alone put it there)
            for n in lab.nodes:
                wait_for(partial(no_session_to, lab, n, rr_ip), 30, f"{n}: no mesh to {RR}")
    assert handled == ["install", "systemd"], handled
    assert rr.proc is not None and rr.proc.poll() is None, "the reflector exited"

    # The how-to's YAML examples are valid resources.
    for i, body in enumerate(re.findall(r"^```yaml\n(.*?)^```", HOWTO.read_text(), re.S | re.M)):
        f = tmp_path / f"example{i}.yaml"
        f.write_text(body)
        res = subprocess.run(
            [TABBYCTL, "validate", "-f", str(f)], capture_output=True, text=True, check=False
        )
        assert res.returncode == 0, f"{f}: {res.stdout}{res.stderr}"

    # Converged through the dedicated reflector, with the mesh off.
    want = blocks_by_node(lab)
    for n in lab.nodes:
        wait_for(partial(only_the_reflector, lab, n, rr_ip), 60, f"{n}: only the reflector")
        wait_for(partial(routes_converged, lab, n, want), 30, f"{n}: every other block")
        st = lab.node_status(n)
        assert st["role"] == "client", st
        (p,) = st["peers"]
        assert p["rrRole"] == "reflector" and p["prefixesReceived"] == len(want) - 1, p
    st = json.loads(
        subprocess.run(
            ["ip", "netns", "exec", rr.netns, TABBYCTL, "node", "status", "-o", "json"],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        ).stdout
    )
    assert st["role"] == "reflector" and st["clusterID"] == CLUSTER_ID, st
    assert st["dedicatedReflector"] is True, st
    assert {p["peer"] for p in st["peers"]} == {lab.node_ip(n) for n in lab.nodes}, st
    for p in st["peers"]:
        assert p["state"] == "established" and p["rrRole"] == "rr-client", p
        assert p["prefixesReflected"] == len(lab.nodes) - 1, p
    matrix = lab.check()
    assert matrix.exit_code == 0, matrix.text
    # The reflector's kernel: exactly the routes it had before tabby-bgp started.
    assert rr.routes() == routes_before, rr.routes()
    assert not any(str(r.get("protocol")) == "81" for r in rr.routes())
    print(f"{HOWTO.relative_to(REPO)}: {len(doc.runnable)} blocks run\n{runner.trail()}")
