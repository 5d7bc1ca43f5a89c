"""IPAM against a real etcd: concurrent allocation (one node, several nodes), release and reuse,
and the raw JSON at Calico's keys (read with ``etcdctl``, independently of our code)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address, IPv4Network, ip_network
from typing import Any

import pytest

from datastore.codec import encode, resource_from_dict
from datastore.etcd import EtcdConfig, EtcdKVStore
from datastore.ipam import IPAM
from datastore.keys import resource_key

ROOT = "/calico/ipam/v2/"


def connect(endpoint: str) -> EtcdKVStore:
    return EtcdKVStore(EtcdConfig(endpoints=(endpoint,), timeout=10.0))


@pytest.fixture
def store(etcd_endpoint: str) -> Iterator[EtcdKVStore]:
    s = connect(etcd_endpoint)
    try:
        yield s
    finally:
        s.close()


def put_pool(store: EtcdKVStore, name: str, cidr: str, **spec: Any) -> None:
    doc = {
        "kind": "IPPool",
        "apiVersion": "projectcalico.org/v3",
        "metadata": {"name": name},
        "spec": {"cidr": cidr, **spec},
    }
    store.put(resource_key("IPPool", name), encode(resource_from_dict(doc)))


def etcdctl_dump(endpoint: str, prefix: str = ROOT) -> dict[str, Any]:
    """Every key under ``prefix`` with its JSON value, read with etcdctl (not our client)."""
    out = subprocess.run(
        ["etcdctl", "--endpoints", endpoint, "get", prefix, "--prefix", "-w", "json"],
        env={**os.environ, "ETCDCTL_API": "3"},
        check=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,
    ).stdout
    kvs = json.loads(out).get("kvs", [])
    return {
        base64.b64decode(kv["key"]).decode(): json.loads(base64.b64decode(kv["value"]))
        for kv in kvs
    }


def check_stored_consistency(dump: dict[str, Any]) -> dict[str, int]:
    """Independent check of the raw records; returns handle -> number of addresses."""
    per_handle: Counter[tuple[str, str]] = Counter()
    for key, block in dump.items():
        if "/assignment/" not in key:
            continue
        cidr = ip_network(block["cidr"])
        assert key.endswith("/" + str(cidr).replace("/", "-"))
        allocs = block["allocations"]
        assert len(allocs) == cidr.num_addresses
        free = block["unallocated"]
        assert len(free) == len(set(free))
        assert sorted(free + [o for o, a in enumerate(allocs) if a is not None]) == list(
            range(cidr.num_addresses)
        )
        for a in allocs:
            if a is None:
                continue
            handle = block["attributes"][a]["handle_id"]
            assert handle
            per_handle[(handle, str(cidr))] += 1
        if block["affinity"]:
            node = block["affinity"].removeprefix("host:")
            aff = dump[f"{ROOT}host/{node}/ipv{cidr.version}/block/{key.rsplit('/', 1)[1]}"]
            assert aff == {"state": "confirmed", "deleted": False}
    handles = {k[len(ROOT + "handle/") :]: v for k, v in dump.items() if "/handle/" in k}
    from_blocks: dict[str, dict[str, int]] = {}
    for (h, block_cidr), n in per_handle.items():
        from_blocks.setdefault(h, {})[block_cidr] = n
    assert {h: v["block"] for h, v in handles.items()} == from_blocks
    return {h: sum(v.values()) for h, v in from_blocks.items()}


def run_threads(n: int, work: Callable[[int], list[IPv4Address]]) -> list[IPv4Address]:
    results: list[list[IPv4Address]] = [[] for _ in range(n)]
    errors: list[BaseException] = []
    start = threading.Barrier(n)

    def run(i: int) -> None:
        try:
            start.wait()
            results[i] = work(i)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    return [ip for r in results for ip in r]


def test_50_concurrent_allocations_on_one_node(etcd_endpoint: str, store: EtcdKVStore) -> None:
    put_pool(store, "pool", "10.65.0.0/16")

    def work(i: int) -> list[IPv4Address]:
        client = connect(etcd_endpoint)
        try:
            return IPAM(client).auto_assign(f"k8s-pod-network.c{i:02d}", "node-a")[0]
        finally:
            client.close()

    ips = run_threads(50, work)
    assert len(ips) == 50 and len(set(ips)) == 50
    dump = etcdctl_dump(etcd_endpoint)
    counts = check_stored_consistency(dump)
    assert counts == {f"k8s-pod-network.c{i:02d}": 1 for i in range(50)}
    # One node: all its blocks are affine to it, and 50 fit in one /26.
    assert IPAM(store).affinities().keys() == {"node-a"}
    blocks = {str(IPv4Network(f"{ip}/26", strict=False)) for ip in ips}
    assert len(IPAM(store).affinities()["node-a"]) == len(blocks)


def test_three_nodes_allocating_at_once(etcd_endpoint: str, store: EtcdKVStore) -> None:
    put_pool(store, "pool", "10.66.0.0/24", blockSize=28)  # 16 blocks of 16
    nodes = ("node-a", "node-b", "node-c")
    per_worker = 10

    def work(i: int) -> list[IPv4Address]:
        client = connect(etcd_endpoint)
        ipam = IPAM(client)
        got: list[IPv4Address] = []
        try:
            for j in range(per_worker):
                got += ipam.auto_assign(f"h-{i}-{j}", nodes[i % 3], attrs={"node": nodes[i % 3]})[0]
        finally:
            client.close()
        return got

    ips = run_threads(6, work)  # two workers per node
    assert len(ips) == 60 and len(set(ips)) == 60
    counts = check_stored_consistency(etcdctl_dump(etcd_endpoint))
    assert len(counts) == 60 and set(counts.values()) == {1}
    ipam = IPAM(store)
    aff = ipam.affinities()
    assert set(aff) == set(nodes)
    claimed = [c for cs in aff.values() for c in cs]
    assert len(claimed) == len(set(claimed))
    # Every node allocated from its own blocks (the pool had room: nobody borrowed).
    for info in ipam.blocks():
        assert {a.attrs["node"] for a in info.allocations} <= {info.affinity_node}
    assert ipam.consistency_problems() == []


def test_release_and_reuse(etcd_endpoint: str, store: EtcdKVStore) -> None:
    put_pool(store, "pool", "10.67.0.0/28", blockSize=28)
    ipam = IPAM(store)
    first, _ = ipam.auto_assign("a", "node-a", num_v4=16)
    assert len(set(first)) == 16
    assert ipam.release_by_handle("a")[:1] and ipam.release_by_handle("a") == []
    assert ipam.ips_by_handle("a") == []

    def work(i: int) -> list[IPv4Address]:
        client = connect(etcd_endpoint)
        try:
            return IPAM(client).auto_assign(f"b{i}", "node-a", num_v4=4)[0]
        finally:
            client.close()

    again = run_threads(4, work)
    assert sorted(again) == sorted(first)
    check_stored_consistency(etcdctl_dump(etcd_endpoint))
    ipam.release_ips(again)
    assert ipam.release_empty_blocks("node-a") == [IPv4Network("10.67.0.0/28")]
    assert etcdctl_dump(etcd_endpoint) == {}


def test_stored_json_at_calico_keys(etcd_endpoint: str, store: EtcdKVStore) -> None:
    put_pool(store, "pool", "10.68.0.0/26")
    put_pool(store, "pool6", "fd00:68::/122")
    ipam = IPAM(store)
    v4, v6 = ipam.auto_assign(
        "k8s-pod-network.abc", "node-a", num_v6=1, attrs={"namespace": "ns", "pod": "p"}
    )
    assert v4 == [IPv4Address("10.68.0.0")]
    dump = etcdctl_dump(etcd_endpoint)
    assert set(dump) == {
        f"{ROOT}assignment/ipv4/block/10.68.0.0-26",
        f"{ROOT}assignment/ipv6/block/fd00:68::-122",
        f"{ROOT}host/node-a/ipv4/block/10.68.0.0-26",
        f"{ROOT}host/node-a/ipv6/block/fd00:68::-122",
        f"{ROOT}handle/k8s-pod-network.abc",
    }
    block = dump[f"{ROOT}assignment/ipv4/block/10.68.0.0-26"]
    assert list(block)[:9] == [
        "cidr",
        "affinity",
        "strictAffinity",
        "allocations",
        "unallocated",
        "attributes",
        "sequenceNumber",
        "sequenceNumberForAllocation",
        "deleted",
    ]
    assert block["cidr"] == "10.68.0.0/26" and block["affinity"] == "host:node-a"
    assert block["allocations"] == [0] + [None] * 63
    assert block["unallocated"] == list(range(1, 64))
    assert block["attributes"] == [
        {"handle_id": "k8s-pod-network.abc", "secondary": {"namespace": "ns", "pod": "p"}}
    ]
    assert dump[f"{ROOT}handle/k8s-pod-network.abc"] == {
        "block": {"10.68.0.0/26": 1, "fd00:68::/122": 1},
        "deleted": False,
    }
    assert dump[f"{ROOT}host/node-a/ipv6/block/fd00:68::-122"] == {
        "state": "confirmed",
        "deleted": False,
    }
    assert v6[0] in ip_network("fd00:68::/122")
