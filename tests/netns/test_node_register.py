"""``tabbyctl node register`` run inside a namespace of our own, as it runs on a host.

The namespace has a docker-like bridge created first (so ``first-found`` must skip it), two
uplinks with different subnets (veth pairs whose peers stay in the same namespace, without
addresses) and a default route through the first one. etcd runs on our loopback and is reached
from inside through a NamespaceBridge. Assertions are on the Node stored in etcd.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from datastore.etcd import EtcdConfig, EtcdKVStore
from lab.etcd import EtcdServer
from lab.nsbridge import NamespaceBridge
from tests.support.netns import NetnsFactory, ns_exec

REPO = Path(__file__).resolve().parents[2]
TABBYCTL = (
    [str(REPO / ".venv/bin/tabbyctl")]
    if (REPO / ".venv/bin/tabbyctl").exists()
    else [sys.executable, "-c", "from ctl.main import main; main()"]
)
NODES = "/calico/resources/v3/projectcalico.org/nodes/"


def build_host(netns: NetnsFactory) -> str:
    ns = netns.new("reg")
    ns_exec(ns, ["ip", "link", "add", "docker0", "type", "bridge"])
    ns_exec(ns, ["ip", "addr", "add", "10.99.0.1/24", "dev", "docker0"])
    ns_exec(ns, ["ip", "link", "set", "docker0", "up"])
    for dev, peer, addr in (
        ("eth0", "peer0", "198.51.100.10/24"),
        ("eth1", "peer1", "203.0.113.10/25"),
    ):
        ns_exec(ns, ["ip", "link", "add", dev, "type", "veth", "peer", "name", peer])
        ns_exec(ns, ["ip", "addr", "add", addr, "dev", dev])
        ns_exec(ns, ["ip", "link", "set", peer, "up"])
        ns_exec(ns, ["ip", "link", "set", dev, "up"])
    ns_exec(ns, ["ip", "route", "add", "default", "via", "198.51.100.1", "dev", "eth0"])
    return ns


@pytest.fixture
def host(netns: NetnsFactory, etcd_server: EtcdServer, etcd_endpoint: str) -> Iterator[str]:
    ns = build_host(netns)
    bridge = NamespaceBridge(("127.0.0.1", etcd_server.client_port))
    try:
        bridge.add_listener(ns, "127.0.0.1", 2379)
        yield ns
    finally:
        bridge.stop()


def register(ns: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETCD_", "IP_AUTODETECT"))}
    return subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            ns,
            *TABBYCTL,
            "node",
            "register",
            "--etcd-endpoints",
            "http://127.0.0.1:2379",
            *args,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def stored_node(etcd_endpoint: str, name: str) -> dict[str, Any] | None:
    store = EtcdKVStore(EtcdConfig(endpoints=(etcd_endpoint,)))
    try:
        kv = store.get(NODES + name)
    finally:
        store.close()
    if kv is None:
        return None
    doc: dict[str, Any] = json.loads(kv.value)
    return doc


@pytest.mark.parametrize(
    ("method", "address"),
    [
        ("first-found", "198.51.100.10/24"),
        ("interface=eth1", "203.0.113.10/25"),
        ("skip-interface=eth0", "203.0.113.10/25"),
        ("cidr=203.0.113.0/24", "203.0.113.10/25"),
        ("can-reach=203.0.113.99", "203.0.113.10/25"),  # connected on eth1
        ("can-reach=203.0.113.200", "198.51.100.10/24"),  # outside eth1's /25: default route
    ],
)
def test_register_by_method(host: str, etcd_endpoint: str, method: str, address: str) -> None:
    res = register(host, "--name", "host1", "--ip-autodetection-method", method)
    assert res.returncode == 0, res.stderr
    assert f"Node host1 created: ipv4Address {address}" in res.stdout
    doc = stored_node(etcd_endpoint, "host1")
    assert doc is not None
    assert doc["spec"]["bgp"]["ipv4Address"] == address
    assert {"address": address, "type": "CalicoNodeIP"} in doc["spec"]["addresses"]


def test_reregister_updates_and_keeps_fields(host: str, etcd_endpoint: str) -> None:
    first = register(host, "--name", "host1", "--as-number", "64600", "--labels", "rack=r1")
    assert first.returncode == 0, first.stderr
    second = register(
        host, "--name", "host1", "--ip-autodetection-method", "interface=eth1", "--labels", "z=a"
    )
    assert second.returncode == 0, second.stderr
    assert "Node host1 updated" in second.stdout
    doc = stored_node(etcd_endpoint, "host1")
    assert doc is not None
    assert doc["spec"]["bgp"] == {"ipv4Address": "203.0.113.10/25", "asNumber": 64600}
    assert doc["metadata"]["labels"] == {"rack": "r1", "z": "a"}
    assert doc["spec"]["addresses"] == [{"address": "203.0.113.10/25", "type": "CalicoNodeIP"}]


def test_bare_ip_takes_its_prefix_from_the_interface(host: str, etcd_endpoint: str) -> None:
    res = register(host, "--name", "host1", "--ip", "203.0.113.10")
    assert res.returncode == 0, res.stderr
    doc = stored_node(etcd_endpoint, "host1")
    assert doc is not None and doc["spec"]["bgp"]["ipv4Address"] == "203.0.113.10/25"


def test_duplicate_address_is_refused(host: str, etcd_endpoint: str) -> None:
    assert register(host, "--name", "host1").returncode == 0
    res = register(host, "--name", "host2")
    assert res.returncode == 1
    assert "198.51.100.10 is already used by Node host1" in res.stderr
    assert stored_node(etcd_endpoint, "host2") is None


def test_unreachable_can_reach_target_is_an_error(host: str, etcd_endpoint: str) -> None:
    ns_exec(host, ["ip", "route", "del", "default"])
    res = register(host, "--name", "host1", "--ip-autodetection-method", "can-reach=192.168.7.7")
    assert res.returncode == 1
    assert res.stderr.startswith("error: ") and "unreachable" in res.stderr.lower()
    assert stored_node(etcd_endpoint, "host1") is None


def agent_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETCD_", "IP_AUTODETECT"))}
    return {**env, "ETCD_ENDPOINTS": "http://127.0.0.1:2379", **extra}


TABBY_BGP = (
    [str(REPO / ".venv/bin/tabby-bgp")]
    if (REPO / ".venv/bin/tabby-bgp").exists()
    else [sys.executable, "-m", "bgp.main"]
)


def test_agent_registers_at_start(host: str, etcd_endpoint: str, tmp_path: Path) -> None:
    env = agent_env(
        TABBY_REGISTER_NODE="true",
        IP_AUTODETECTION_METHOD="cidr=203.0.113.0/24",
        TABBY_NODE_LABELS="rack=r9",
    )
    argv = ["ip", "netns", "exec", host, *TABBY_BGP, "--node-name", "host1"]
    proc = subprocess.Popen(
        [*argv, "--state-dir", str(tmp_path / "bgp")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    try:
        assert proc.stderr is not None  # stderr=PIPE
        deadline = time.monotonic() + 30
        doc = None
        while doc is None and time.monotonic() < deadline and proc.poll() is None:
            doc = stored_node(etcd_endpoint, "host1")
            time.sleep(0.2)
        assert doc is not None, proc.stderr.read().decode() if proc.poll() is not None else ""
        assert doc["spec"]["bgp"]["ipv4Address"] == "203.0.113.10/25"
        assert doc["metadata"]["labels"] == {"rack": "r9"}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()


def test_agent_refused_registration_stops_it(host: str, etcd_endpoint: str) -> None:
    assert register(host, "--name", "host1", "--ip", "198.51.100.10/24").returncode == 0
    env = agent_env(TABBY_REGISTER_NODE="true", IP="198.51.100.10/24")
    res = subprocess.run(
        ["ip", "netns", "exec", host, *TABBY_BGP, "--node-name", "host2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert res.returncode == 2
    assert "already used by Node host1" in res.stderr
    assert stored_node(etcd_endpoint, "host2") is None
