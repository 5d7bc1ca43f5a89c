"""``tabbyctl ipam`` logic against the in-memory etcd model.

Allocations are made through ``datastore.ipam.IPAM``; WorkloadEndpoints and Nodes are stored as
Calico documents. Tests assert on the reports, the rendered text and the stored IPAM records.
"""

from __future__ import annotations

import json
import re
from ipaddress import IPv4Address, ip_address, ip_network
from typing import Any

import pytest

from ctl import ipam as ctl_ipam
from ctl.main import main
from datastore.codec import encode, resource_from_dict
from datastore.fake import FakeEtcd
from datastore.ipam import IPAM
from datastore.ipam_block import handle_key
from datastore.keys import resource_key

POOL = "10.65.0.0/24"  # four /26 blocks


def put(store: FakeEtcd, doc: dict[str, Any]) -> None:
    doc = {"apiVersion": "projectcalico.org/v3", **doc}
    r = resource_from_dict(doc)
    store.put(r.key, encode(r))


def put_pool(store: FakeEtcd, name: str, cidr: str, **spec: Any) -> None:
    put(store, {"kind": "IPPool", "metadata": {"name": name}, "spec": {"cidr": cidr, **spec}})


def put_node(store: FakeEtcd, name: str, **spec: Any) -> None:
    put(store, {"kind": "Node", "metadata": {"name": name}, "spec": spec})


def put_wep(store: FakeEtcd, name: str, node: str, *ips: str, namespace: str = "default") -> None:
    put(
        store,
        {
            "kind": "WorkloadEndpoint",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "node": node,
                "interfaceName": "tbw0123456789ab",
                "ipNetworks": [f"{ip}/32" for ip in ips],
            },
        },
    )


def pod_attrs(node: str, pod: str, namespace: str = "default") -> dict[str, str]:
    return {"node": node, "namespace": namespace, "pod": pod}


def alloc(ipam: IPAM, handle: str, node: str, pod: str, n: int = 1) -> list[IPv4Address]:
    v4, _ = ipam.auto_assign(handle, node, num_v4=n, attrs=pod_attrs(node, pod))
    return v4


@pytest.fixture
def etcd() -> FakeEtcd:
    e = FakeEtcd()
    put_pool(e, "default-ipv4", POOL)
    return e


@pytest.fixture
def ipam(etcd: FakeEtcd) -> IPAM:
    return IPAM(etcd)


def rows(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines()]


# ------------------------------------------------------------------------------------ show


def test_show_counts_pool_usage_with_percentages(etcd: FakeEtcd, ipam: IPAM) -> None:
    alloc(ipam, "net.a", "node-a", "a", n=3)
    alloc(ipam, "net.b", "node-b", "b", n=1)
    pools, blocks = ctl_ipam.usage(etcd)
    text = ctl_ipam.render_usage(pools, blocks)
    assert rows(text) == [
        ["GROUPING", "NAME", "CIDR", "TOTAL", "IN-USE", "FREE"],
        ["pool", "default-ipv4", POOL, "256", "4", "(1.6%)", "252", "(98.4%)"],
    ]


def test_show_blocks_lists_each_block_with_its_affinity(etcd: FakeEtcd, ipam: IPAM) -> None:
    a = alloc(ipam, "net.a", "node-a", "a", n=2)
    b = alloc(ipam, "net.b", "node-b", "b")
    put_pool(etcd, "other", "10.66.0.0/26")
    pools, blocks = ctl_ipam.usage(etcd)
    got = rows(ctl_ipam.render_usage(pools, blocks, show_blocks=True))
    block_a = str(ip_network(f"{a[0]}/26", strict=False))
    block_b = str(ip_network(f"{b[0]}/26", strict=False))
    assert got[0] == ["GROUPING", "NAME", "CIDR", "TOTAL", "IN-USE", "FREE", "NODE"]
    body = sorted(got[1:4])
    assert body == sorted(
        [
            ["pool", "default-ipv4", POOL, "256", "3", "(1.2%)", "253", "(98.8%)"],
            ["block", "default-ipv4", block_a, "64", "2", "(3.1%)", "62", "(96.9%)", "node-a"],
            ["block", "default-ipv4", block_b, "64", "1", "(1.6%)", "63", "(98.4%)", "node-b"],
        ]
    )
    assert got[1][0] == "pool"  # a pool's blocks follow it
    assert got[4] == ["pool", "other", "10.66.0.0/26", "64", "0", "(0%)", "64", "(100%)"]
    assert len(got) == 5


def test_show_blocks_keeps_blocks_whose_pool_was_deleted(etcd: FakeEtcd, ipam: IPAM) -> None:
    a = alloc(ipam, "net.a", "node-a", "a")
    etcd.delete(resource_key("IPPool", "default-ipv4"))
    pools, blocks = ctl_ipam.usage(etcd)
    got = rows(ctl_ipam.render_usage(pools, blocks, show_blocks=True))
    block = str(ip_network(f"{a[0]}/26", strict=False))
    assert got[1:] == [["block", "-", block, "64", "1", "(1.6%)", "63", "(98.4%)", "node-a"]]


def test_tiny_usage_of_a_big_pool_is_not_shown_as_zero(etcd: FakeEtcd, ipam: IPAM) -> None:
    put_pool(etcd, "big", "172.16.0.0/12")
    ipam.assign_ip(ip_address("172.16.2.3"), "net.x", "node-a")
    pools, blocks = ctl_ipam.usage(etcd)
    big = next(r for r in rows(ctl_ipam.render_usage(pools, blocks)) if r[1] == "big")
    assert big[3:] == ["1048576", "1", "(<0.1%)", "1048575", "(>99.9%)"]


def test_disabled_pool_is_marked(etcd: FakeEtcd) -> None:
    put_pool(etcd, "old", "10.66.0.0/26", disabled=True)
    pools, blocks = ctl_ipam.usage(etcd)
    assert "old (disabled)  10.66.0.0/26" in ctl_ipam.render_usage(pools, blocks)


def test_show_ip_names_handle_attributes_block_and_user(etcd: FakeEtcd, ipam: IPAM) -> None:
    (ip,) = alloc(ipam, "net.c1", "node-a", "web-1")
    put_wep(etcd, "node--a-k8s-web--1-eth0", "node-a", str(ip))
    text = ctl_ipam.render_owner(ctl_ipam.lookup_ip(etcd, ip))
    block = ip_network(f"{ip}/26", strict=False)
    assert text.splitlines() == [
        f"IP {ip} is in use",
        "  handle: net.c1",
        "  node: node-a",
        "  namespace: default",
        "  pod: web-1",
        f"  block: {block} (affinity: node-a)",
        f"  pool: default-ipv4 ({POOL})",
        "  used by: WorkloadEndpoint default/node--a-k8s-web--1-eth0 (node node-a)",
    ]


def test_show_ip_free_and_outside_every_pool(etcd: FakeEtcd, ipam: IPAM) -> None:
    (ip,) = alloc(ipam, "net.c1", "node-a", "web-1")
    ipam.release_ips([ip])
    free = ctl_ipam.render_owner(ctl_ipam.lookup_ip(etcd, ip)).splitlines()
    assert free[0] == f"IP {ip} is free (not allocated)"
    assert f"  block: {ip_network(f'{ip}/26', strict=False)} (affinity: node-a)" in free
    outside = ctl_ipam.lookup_ip(etcd, ip_address("10.99.0.1"))
    assert outside.allocation is None and outside.pool is None
    assert ctl_ipam.render_owner(outside) == "IP 10.99.0.1 is not in any IP pool\n"


# ------------------------------------------------------------------------------------ check


def test_check_clean_cluster(etcd: FakeEtcd, ipam: IPAM) -> None:
    put_node(etcd, "node-a")
    a = alloc(ipam, "net.a", "node-a", "a", n=2)
    put_wep(etcd, "wa", "node-a", *map(str, a))
    report = ctl_ipam.check(etcd)
    assert report.problem_count == 0
    assert (report.pools, report.blocks, report.allocations, report.endpoints) == (1, 1, 2, 1)
    assert not report.node_check_skipped
    assert ctl_ipam.render_check(report).splitlines()[-1] == "No problems found."


def test_check_finds_leaks_missing_allocations_and_gone_nodes(etcd: FakeEtcd, ipam: IPAM) -> None:
    put_node(etcd, "node-a")
    (used,) = alloc(ipam, "net.used", "node-a", "used")
    (leak,) = alloc(ipam, "net.leak", "node-a", "leak")
    (gone,) = alloc(ipam, "net.gone", "node-gone", "g")
    put_wep(etcd, "wa", "node-a", str(used), "10.65.0.250")
    put_wep(etcd, "wg", "node-gone", str(gone), namespace="ns2")

    report = ctl_ipam.check(etcd)
    assert [(a.ip, a.handle_id) for a in report.leaked] == [(leak, "net.leak")]
    assert [(u.ip, u.user.namespace, u.user.name) for u in report.unallocated] == [
        (ip_address("10.65.0.250"), "default", "wa")
    ]
    gone_block = ip_network(f"{gone}/26", strict=False)
    assert [(s.node, s.block, s.allocated) for s in report.stale] == [("node-gone", gone_block, 1)]
    assert report.consistency == ()
    assert report.problem_count == 3

    text = ctl_ipam.render_check(report)
    assert f"  {leak}  handle=net.leak" in text
    assert "namespace=default node=node-a pod=leak" in text
    assert "  10.65.0.250  WorkloadEndpoint default/wa  node=node-a" in text
    assert f"  {gone_block}  node=node-gone  (1 allocated)" in text
    assert text.splitlines()[-1] == "Found 3 problem(s)."

    doc = json.loads(json.dumps(ctl_ipam.check_document(report)))
    assert doc["problemCount"] == 3
    assert doc["leakedAllocations"] == [
        {
            "ip": str(leak),
            "handle": "net.leak",
            "block": str(ip_network(f"{leak}/26", strict=False)),
            "attributes": pod_attrs("node-a", "leak"),
        }
    ]
    assert doc["unallocatedEndpointAddresses"] == [
        {
            "ip": "10.65.0.250",
            "kind": "WorkloadEndpoint",
            "namespace": "default",
            "name": "wa",
            "node": "node-a",
        }
    ]
    assert doc["staleNodeAffinities"] == [
        {"node": "node-gone", "block": str(gone_block), "allocated": 1}
    ]
    assert doc["nodeCheckSkipped"] is False


def test_check_skips_node_check_without_node_resources(etcd: FakeEtcd, ipam: IPAM) -> None:
    a = alloc(ipam, "net.a", "node-a", "a")
    put_wep(etcd, "wa", "node-a", str(a[0]))
    report = ctl_ipam.check(etcd)
    assert report.node_check_skipped and report.stale == ()
    assert report.problem_count == 0
    text = ctl_ipam.render_check(report)
    assert "not checked (there are no Node resources)" in text
    assert ctl_ipam.check_document(report)["nodeCheckSkipped"] is True


def test_check_reports_empty_block_of_a_removed_node(etcd: FakeEtcd, ipam: IPAM) -> None:
    put_node(etcd, "node-a")
    (ip,) = alloc(ipam, "net.x", "node-old", "x")
    ipam.release_ips([ip])  # the block stays, empty, affine to node-old
    report = ctl_ipam.check(etcd)
    assert [(s.node, s.allocated) for s in report.stale] == [("node-old", 0)]


def test_node_tunnel_address_is_not_a_leak(etcd: FakeEtcd, ipam: IPAM) -> None:
    ipam.assign_ip(ip_address("10.65.0.1"), "ipip-tunnel-addr-node-a", "node-a")
    put_node(
        etcd, "node-a", bgp={"ipv4Address": "198.51.100.1/24", "ipv4IPIPTunnelAddr": "10.65.0.1"}
    )
    report = ctl_ipam.check(etcd)
    assert report.leaked == () and report.problem_count == 0


def test_check_includes_ipam_record_inconsistencies(etcd: FakeEtcd, ipam: IPAM) -> None:
    a = alloc(ipam, "net.a", "node-a", "a")
    put_wep(etcd, "wa", "node-a", str(a[0]))
    block = str(ip_network(f"{a[0]}/26", strict=False))
    etcd.put(handle_key("net.a"), json.dumps({"block": {block: 5}, "deleted": False}).encode())
    report = ctl_ipam.check(etcd)
    assert len(report.consistency) == 1 and "handle net.a" in report.consistency[0]
    assert report.problem_count == 1


# ------------------------------------------------------------------------------------ release


def test_release_refuses_an_address_in_use_and_releases_nothing(etcd: FakeEtcd, ipam: IPAM) -> None:
    used, leaked = alloc(ipam, "net.a", "node-a", "a", n=2)
    put_wep(etcd, "wa", "node-a", str(used))
    with pytest.raises(ctl_ipam.ReleaseRefusedError) as err:
        ctl_ipam.release(etcd, [leaked, used])
    assert f"{used} (used by WorkloadEndpoint default/wa)" in str(err.value)
    assert ipam.ips_by_handle("net.a") == [used, leaked]


def test_release_frees_leaked_address_and_keeps_records_consistent(
    etcd: FakeEtcd, ipam: IPAM
) -> None:
    used, leaked = alloc(ipam, "net.a", "node-a", "a", n=2)
    put_wep(etcd, "wa", "node-a", str(used))
    result = ctl_ipam.release(etcd, [leaked, ip_address("10.65.0.200"), leaked])
    assert result.released == ((leaked, "net.a"),)
    assert result.not_allocated == (ip_address("10.65.0.200"),)
    assert result.forced == ()
    assert ipam.ips_by_handle("net.a") == [used]
    assert ipam.who_owns(leaked) is None
    assert ipam.consistency_problems() == []
    assert ctl_ipam.check(etcd).problem_count == 0


def test_release_force_releases_an_address_in_use(etcd: FakeEtcd, ipam: IPAM) -> None:
    (used,) = alloc(ipam, "net.a", "node-a", "a")
    put_wep(etcd, "wa", "node-a", str(used))
    result = ctl_ipam.release(etcd, [used], force=True)
    assert result.released == ((used, "net.a"),)
    assert [(ip, [u.name for u in users]) for ip, users in result.forced] == [(used, ["wa"])]
    assert ipam.ips_by_handle("net.a") == []
    # The WEP now has an address without allocation: check says so.
    assert [u.ip for u in ctl_ipam.check(etcd).unallocated] == [used]


# ------------------------------------------------------------------------------------ CLI


def test_parse_ips_dedupes_and_rejects_garbage() -> None:
    assert ctl_ipam.parse_ips(["10.0.0.1", "fd00::1", "10.0.0.1"]) == [
        ip_address("10.0.0.1"),
        ip_address("fd00::1"),
    ]
    with pytest.raises(ValueError, match=re.escape("'10.0.0.300' is not an IPv4 or IPv6 address")):
        ctl_ipam.parse_ips(["10.0.0.300"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["ipam", "release", "--ip", "nope"],
            "error: --ip: 'nope' is not an IPv4 or IPv6 address",
        ),
        (
            ["ipam", "show", "--ip", "10.0.0.1", "--show-blocks"],
            "error: --ip and --show-blocks cannot be used together",
        ),
    ],
)
def test_usage_errors_are_one_line_before_connecting(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # The endpoint is unreachable: these errors must come before any connection attempt.
    code = main([*argv, "--etcd-endpoints", "http://127.0.0.1:1", "--timeout", "0.2"])
    out, err = capsys.readouterr()
    assert code == 1
    assert out == ""
    assert err == message + "\n"


def test_unreachable_etcd_is_one_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["ipam", "check", "--etcd-endpoints", "http://127.0.0.1:1", "--timeout", "0.2"])
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    assert err.startswith("error: cannot reach etcd at http://127.0.0.1:1")
    assert err.count("\n") == 1
