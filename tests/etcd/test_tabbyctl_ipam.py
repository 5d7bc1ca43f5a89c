"""``tabbyctl ipam show|check|release`` run as a subprocess against a real etcd.

The pool, Nodes and WorkloadEndpoints are created with ``tabbyctl apply``; addresses are
allocated with ``datastore.ipam.IPAM`` directly (as the CNI plugin would). What ``release``
changes is read back with ``etcdctl``, independently of tabby's code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from ipaddress import IPv4Address, ip_network
from pathlib import Path

import pytest

from datastore.etcd import EtcdConfig, EtcdKVStore
from datastore.ipam import IPAM
from datastore.ipam_block import handle_key

pytestmark = pytest.mark.etcd

TABBYCTL = str(Path(sys.executable).parent / "tabbyctl")

POOL = """\
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: pods
spec:
  cidr: 10.70.0.0/24
  blockSize: 28
"""

NODE = """\
apiVersion: projectcalico.org/v3
kind: Node
metadata:
  name: {name}
spec: {{}}
"""

WEP = """\
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata:
  name: {name}
  namespace: shop
spec:
  node: {node}
  pod: {pod}
  interfaceName: tbw0123456789ab
  ipNetworks: [{ip}/32]
"""


def tabbyctl(
    endpoint: str, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}
    env["ETCD_ENDPOINTS"] = f"http://{endpoint}"
    return subprocess.run(
        [TABBYCTL, *args],
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr}"
    return result.stdout


def etcd_get(endpoint: str, key: str) -> str:
    return subprocess.run(
        ["etcdctl", "--endpoints", endpoint, "get", key, "--print-value-only"],
        env={**os.environ, "ETCDCTL_API": "3"},
        capture_output=True,
        text=True,
        check=True,
        stdin=subprocess.DEVNULL,
    ).stdout.strip()


@pytest.fixture
def ipam(etcd_endpoint: str) -> Iterator[IPAM]:
    store = EtcdKVStore(EtcdConfig(endpoints=(etcd_endpoint,), timeout=10.0))
    try:
        yield IPAM(store)
    finally:
        store.close()


def alloc(ipam: IPAM, pod: str, node: str) -> IPv4Address:
    (ip,), _ = ipam.auto_assign(
        f"net.{pod}", node, attrs={"node": node, "namespace": "shop", "pod": pod}
    )
    return ip


def block_of(ip: IPv4Address) -> str:
    return str(ip_network(f"{ip}/28", strict=False))


def test_ipam_show_check_release(etcd_endpoint: str, ipam: IPAM) -> None:
    ep = etcd_endpoint
    ok(tabbyctl(ep, "apply", "-f", "-", stdin=POOL))
    ok(tabbyctl(ep, "apply", "-f", "-", stdin=NODE.format(name="node-1")))
    web = alloc(ipam, "web", "node-1")
    db = alloc(ipam, "db", "node-1")  # no WorkloadEndpoint: leaked
    old = alloc(ipam, "old", "node-2")  # node-2 has no Node resource
    for pod, node, ip in (("web", "node-1", web), ("old", "node-2", old)):
        wep = WEP.format(name=f"{node}-k8s-{pod}-eth0", node=node, pod=pod, ip=ip)
        ok(tabbyctl(ep, "apply", "-f", "-", stdin=wep))

    # show: pool usage, then with blocks and their affinity.
    lines = ok(tabbyctl(ep, "ipam", "show")).splitlines()
    assert [line.split() for line in lines] == [
        ["GROUPING", "NAME", "CIDR", "TOTAL", "IN-USE", "FREE"],
        ["pool", "pods", "10.70.0.0/24", "256", "3", "(1.2%)", "253", "(98.8%)"],
    ]
    rows = [r.split() for r in ok(tabbyctl(ep, "ipam", "show", "--show-blocks")).splitlines()]
    assert rows[0][-1] == "NODE"
    assert sorted(r for r in rows if r[0] == "block") == sorted(
        [
            ["block", "pods", block_of(web), "16", "2", "(12.5%)", "14", "(87.5%)", "node-1"],
            ["block", "pods", block_of(old), "16", "1", "(6.2%)", "15", "(93.8%)", "node-2"],
        ]
    )

    # show --ip: owner, free address, address outside every pool.
    owner = ok(tabbyctl(ep, "ipam", "show", "--ip", str(db))).splitlines()
    assert owner[:5] == [
        f"IP {db} is in use",
        "  handle: net.db",
        "  node: node-1",
        "  namespace: shop",
        "  pod: db",
    ]
    assert f"  block: {block_of(db)} (affinity: node-1)" in owner
    assert "used by" not in "\n".join(owner)
    web_owner = ok(tabbyctl(ep, "ipam", "show", "--ip", str(web)))
    assert "  used by: WorkloadEndpoint shop/node-1-k8s-web-eth0 (node node-1)" in web_owner
    free = IPv4Address(int(web) + 5)
    assert ok(tabbyctl(ep, "ipam", "show", "--ip", str(free))).startswith(
        f"IP {free} is free (not allocated)\n"
    )
    assert ok(tabbyctl(ep, "ipam", "show", "--ip", "10.99.0.1")) == (
        "IP 10.99.0.1 is not in any IP pool\n"
    )

    # check: the leak and node-2's block are problems (exit 1), in text and JSON.
    res = tabbyctl(ep, "ipam", "check")
    assert res.returncode == 1, res.stderr
    assert f"  {db}  handle=net.db  block={block_of(db)}" in res.stdout
    assert f"  {block_of(old)}  node=node-2  (1 allocated)" in res.stdout
    assert res.stdout.splitlines()[-1] == "Found 2 problem(s)."
    res = tabbyctl(ep, "ipam", "check", "-o", "json")
    assert res.returncode == 1
    doc = json.loads(res.stdout)
    assert [a["ip"] for a in doc["leakedAllocations"]] == [str(db)]
    assert doc["staleNodeAffinities"] == [
        {"node": "node-2", "block": block_of(old), "allocated": 1}
    ]
    assert doc["unallocatedEndpointAddresses"] == []
    assert doc["problemCount"] == 2

    # release: refused for an address a WorkloadEndpoint uses; nothing is released.
    res = tabbyctl(ep, "ipam", "release", "--ip", str(db), "--ip", str(web))
    assert res.returncode == 1
    assert res.stdout == ""
    assert res.stderr.count("\n") == 1
    assert res.stderr.startswith(f"error: refusing to release {web} (used by WorkloadEndpoint")
    assert json.loads(etcd_get(ep, handle_key("net.db")))["block"] == {block_of(db): 1}

    # release of the leaked address: the handle record goes away in etcd.
    out = ok(tabbyctl(ep, "ipam", "release", "--ip", str(db)))
    assert out == f"Released {db} (handle net.db)\n"
    assert etcd_get(ep, handle_key("net.db")) == ""
    res = tabbyctl(ep, "ipam", "release", "--ip", str(db))
    assert res.returncode == 1
    assert res.stderr == f"error: not allocated, nothing to release: {db}\n"

    # node-2 comes back as a Node resource: the cluster is clean.
    ok(tabbyctl(ep, "apply", "-f", "-", stdin=NODE.format(name="node-2")))
    out = ok(tabbyctl(ep, "ipam", "check"))
    assert out.splitlines()[-1] == "No problems found."
    assert json.loads(ok(tabbyctl(ep, "ipam", "check", "-o", "json")))["problemCount"] == 0

    # --force releases an address in use; check then reports the endpoint's address.
    res = tabbyctl(ep, "ipam", "release", "--ip", str(web), "--force")
    assert res.returncode == 0, res.stderr
    assert res.stdout == f"Released {web} (handle net.web)\n"
    assert "released anyway (--force)" in res.stderr
    res = tabbyctl(ep, "ipam", "check")
    assert res.returncode == 1
    assert f"  {web}  WorkloadEndpoint shop/node-1-k8s-web-eth0  node=node-1" in res.stdout


def test_ipam_check_without_nodes_says_node_check_skipped(etcd_endpoint: str, ipam: IPAM) -> None:
    ok(tabbyctl(etcd_endpoint, "apply", "-f", "-", stdin=POOL))
    ip = alloc(ipam, "web", "node-1")
    wep = WEP.format(name="node-1-k8s-web-eth0", node="node-1", pod="web", ip=ip)
    ok(tabbyctl(etcd_endpoint, "apply", "-f", "-", stdin=wep))
    out = ok(tabbyctl(etcd_endpoint, "ipam", "check"))
    assert "not checked (there are no Node resources)" in out
    assert out.splitlines()[-1] == "No problems found."
