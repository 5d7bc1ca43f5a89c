"""tabby-cni and tabby-ipam run as a runtime runs them: real kernel, real etcd, node namespace.

Each test reads back observable state: links, addresses, routes and sysctls in the namespaces
(``ip -j``, /proc/sys), WorkloadEndpoints and IPAM handles in etcd.
"""

from __future__ import annotations

import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

import pytest

from datastore.ipam import IPAM
from tests.netns.test_cni_harness import (
    POOL_CIDR,
    NodeBed,
    have_reference_plugins,
    ip_pool,
    link,
    node_bed,
    put_resource,
    routes,
    sysctl,
)

__all__ = ["node_bed"]  # the fixture, re-exported for pytest

pytestmark = [pytest.mark.netns, pytest.mark.etcd]

CID = "4f1c2a7be5d94c0e8a1b"
K8S_ARGS = "IgnoreUnknown=1;K8S_POD_NAMESPACE=team-a;K8S_POD_NAME=web-0"


def handle_ips(bed: NodeBed, handle: str) -> list[Any]:
    return IPAM(bed.store).ips_by_handle(handle)


def test_add_check_del_del(node_bed: NodeBed, tmp_path: Path) -> None:
    bed = node_bed
    cname, cpath = bed.container()
    log_file = tmp_path / "log" / "cni.log"
    conf = bed.conf(log_file_path=str(log_file), labels={"app": "web"})
    rt = bed.runtime

    out = rt.exec(conf, "ADD", CID, cpath, args=K8S_ARGS).ok()
    # --- the result
    assert out["cniVersion"] == "1.0.0"
    host, cont = out["interfaces"]
    assert host["name"].startswith("tbw") and len(host["name"]) == 15
    assert host["mac"] == "ee:ee:ee:ee:ee:ee"
    assert "sandbox" not in host
    assert cont["name"] == "eth0"
    assert cont["sandbox"] == cpath
    [ip] = out["ips"]
    assert ip["interface"] == 1
    addr = ip["address"]
    assert addr.endswith("/32")
    assert ip_address(addr.split("/")[0]) in ip_network(POOL_CIDR)
    assert out["routes"] == [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}]

    # --- the kernel: host end in the node namespace
    h = link(bed.node, host["name"])
    assert h is not None
    assert h["address"] == "ee:ee:ee:ee:ee:ee"
    assert h["mtu"] == 1440
    assert "UP" in h["flags"]
    for path, want in {
        f"net/ipv4/conf/{host['name']}/proxy_arp": "1",
        f"net/ipv4/conf/{host['name']}/forwarding": "1",
        f"net/ipv4/neigh/{host['name']}/proxy_delay": "0",
        "net/ipv4/ip_forward": "1",
    }.items():
        assert sysctl(bed.node, path) == want, path
    # --- container side
    c = link(cname, "eth0")
    assert c is not None
    assert c["address"] == cont["mac"]
    assert c["mtu"] == 1440
    assert "UP" in c["flags"]
    assert [f"{a['local']}/{a['prefixlen']}" for a in c["addr_info"] if a["family"] == "inet"] == [
        addr
    ]
    r = {(x["dst"], x.get("gateway"), x.get("scope")) for x in routes(cname)}
    assert ("169.254.1.1", None, "link") in r
    assert ("default", "169.254.1.1", None) in r
    # --- the WorkloadEndpoint and the allocation
    weps = bed.weps()
    assert list(weps) == ["node1-k8s-web--0-eth0"]
    wep = weps["node1-k8s-web--0-eth0"]
    assert wep.namespace == "team-a"
    assert wep.metadata.labels == {
        "app": "web",
        "projectcalico.org/namespace": "team-a",
        "projectcalico.org/orchestrator": "k8s",
    }
    assert wep.spec.orchestrator == "k8s"
    assert wep.spec.pod == "web-0"
    assert wep.spec.endpoint == "eth0"
    assert wep.spec.node == "node1"
    assert wep.spec.interface_name == host["name"]
    assert wep.spec.container_id == CID
    assert wep.spec.mac == cont["mac"]
    assert wep.spec.profiles == ("kns.team-a",)
    assert [str(n) for n in wep.spec.ip_networks] == [addr]
    assert [str(i) for i in handle_ips(bed, f"net1.{CID}")] == [addr.split("/")[0]]

    # --- CHECK (with prevResult, as a runtime passes it)
    rt.exec({**conf, "prevResult": out}, "CHECK", CID, cpath, args=K8S_ARGS).ok()
    # logs went to the file, not to stdout
    assert "cni.add.done" in log_file.read_text()

    # --- DEL, twice
    for _ in range(2):
        inv = rt.exec(conf, "DEL", CID, cpath, args=K8S_ARGS)
        assert inv.rc == 0, inv
        assert inv.out is None
        assert link(bed.node, host["name"]) is None
        assert link(cname, "eth0") is None
        assert bed.weps() == {}
        assert handle_ips(bed, f"net1.{CID}") == []

    # CHECK now fails, with a CNI error naming what is missing
    inv = rt.exec({**conf, "prevResult": out}, "CHECK", CID, cpath, args=K8S_ARGS)
    assert inv.rc != 0
    assert inv.out is not None
    assert inv.out["code"] == 105
    assert "eth0" in inv.out["msg"]


def test_del_without_namespace_and_retry_add(node_bed: NodeBed) -> None:
    bed, rt = node_bed, node_bed.runtime
    cname, cpath = bed.container()
    conf = bed.conf()
    first = rt.exec(conf, "ADD", CID, cpath).ok()
    # a runtime retrying ADD for the same container gets the same address, one veth, one WEP
    again = rt.exec(conf, "ADD", CID, cpath).ok()
    assert again["ips"][0]["address"] == first["ips"][0]["address"]
    assert len([n for n in bed.weps()]) == 1
    tbw = [
        x["ifname"]
        for x in json.loads(_ns(bed.node, "ip", "-j", "link"))
        if x["ifname"].startswith("tbw")
    ]
    assert tbw == [first["interfaces"][0]["name"]]
    # the container namespace disappears before DEL: DEL must still clean up everything
    subprocess.run(["ip", "netns", "del", cname], check=True)
    bed.netns.names.remove(cname)
    inv = rt.exec(conf, "DEL", CID, "")
    assert inv.rc == 0, inv
    assert bed.weps() == {}
    assert handle_ips(bed, f"net1.{CID}") == []
    assert link(bed.node, first["interfaces"][0]["name"]) is None


def _ns(ns: str, *argv: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, check=True
    ).stdout


def test_twenty_parallel_workloads(node_bed: NodeBed) -> None:
    bed, rt = node_bed, node_bed.runtime
    conf = bed.conf()
    containers = [bed.container(f"p{i}") for i in range(20)]

    def add(i: int) -> dict[str, Any]:
        return rt.exec(conf, "ADD", f"par{i:02d}", containers[i][1]).ok()

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(add, range(20)))
    addresses = [r["ips"][0]["address"] for r in results]
    assert len(set(addresses)) == 20
    for (cname, _), res in zip(containers, results, strict=True):
        c = link(cname, "eth0")
        assert c is not None and "UP" in c["flags"]
        v4 = [f"{a['local']}/{a['prefixlen']}" for a in c["addr_info"] if a["family"] == "inet"]
        assert v4 == [res["ips"][0]["address"]]
        assert link(bed.node, res["interfaces"][0]["name"]) is not None
    weps = bed.weps()
    assert len(weps) == 20
    assert {str(w.spec.ip_networks[0]) for w in weps.values()} == set(addresses)

    def delete(i: int) -> None:
        inv = rt.exec(conf, "DEL", f"par{i:02d}", containers[i][1])
        assert inv.rc == 0, inv

    with ThreadPoolExecutor(20) as pool:
        list(pool.map(delete, range(20)))
    assert bed.weps() == {}
    links = json.loads(_ns(bed.node, "ip", "-j", "link"))
    assert [x["ifname"] for x in links if x["ifname"].startswith("tbw")] == []
    assert all(b.allocated == 0 for b in IPAM(bed.store).blocks())


def test_proc_pid_netns_path(node_bed: NodeBed) -> None:
    """CNI_NETNS as /proc/PID/ns/net (how some runtimes pass it)."""
    bed, rt = node_bed, node_bed.runtime
    cname, _ = bed.container()
    # `ip netns exec` execs the command in the same process: the PID is the holder's
    holder = subprocess.Popen(
        ["ip", "netns", "exec", cname, "sh", "-c", "echo ready; exec sleep 60"],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == b"ready"
        path = f"/proc/{holder.pid}/ns/net"
        assert os.stat(path).st_ino == os.stat(f"/run/netns/{cname}").st_ino
        out = rt.exec(bed.conf(), "ADD", CID, path).ok()
        c = link(cname, "eth0")
        assert c is not None
        assert out["ips"][0]["address"].split("/")[0] in [a["local"] for a in c["addr_info"]]
        rt.exec(bed.conf(), "DEL", CID, path).ok()
        assert link(cname, "eth0") is None
    finally:
        holder.kill()
        holder.wait()


def test_errors_are_cni_json(node_bed: NodeBed) -> None:
    bed, rt = node_bed, node_bed.runtime
    _, cpath = bed.container()
    # etcd unreachable -> 11 (try again later), and nothing left behind in the kernel
    down = bed.conf(etcd_endpoints="http://127.0.0.1:1", etcd_timeout=1)
    inv = rt.exec(down, "ADD", CID, cpath)
    assert inv.rc != 0 and inv.out is not None
    assert inv.out["code"] == 11, inv.out
    assert "etcd" in inv.out["msg"]
    links = json.loads(_ns(bed.node, "ip", "-j", "link"))
    assert [x["ifname"] for x in links if x["ifname"].startswith("tbw")] == []
    # missing container namespace -> 3
    inv = rt.exec(bed.conf(), "ADD", CID, "/run/netns/does-not-exist-tbt")
    assert inv.out is not None and inv.out["code"] == 3
    # invalid config -> 7 naming the key
    inv = rt.exec(bed.conf(mtu=5), "ADD", CID, cpath)
    assert inv.out is not None and inv.out["code"] == 7 and "mtu" in inv.out["msg"]
    # no matching pool -> 102
    inv = rt.exec(bed.conf(ipam={"type": "tabby-ipam", "ipv4_pools": ["nope"]}), "ADD", CID, cpath)
    assert inv.out is not None and inv.out["code"] == 102, inv.out
    assert bed.weps() == {}
    # VERSION
    inv = rt.exec({"cniVersion": "1.0.0", "type": "tabby"}, "VERSION", "", "")
    assert inv.ok() == {
        "cniVersion": "1.0.0",
        "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0"],
    }


def test_tabby_ipam_on_its_own(node_bed: NodeBed) -> None:
    bed, rt = node_bed, node_bed.runtime
    conf = {
        "cniVersion": "0.4.0",
        "name": "net2",
        "type": "tabby-ipam",
        "etcd_endpoints": "http://127.0.0.1:2379",
        "nodename": "node1",
        "ipam": {"type": "tabby-ipam"},
    }
    out = rt.exec(conf, "ADD", CID, "/run/netns/unused").ok()
    [ip] = out["ips"]
    assert ip["version"] == "4"
    assert ip_address(ip["address"].split("/")[0]) in ip_network(POOL_CIDR)
    assert [str(i) for i in handle_ips(bed, f"net2.{CID}")] == [ip["address"].split("/")[0]]
    rt.exec(conf, "CHECK", CID, "/run/netns/unused").ok()
    for _ in range(2):
        assert rt.exec(conf, "DEL", CID, "").rc == 0
        assert handle_ips(bed, f"net2.{CID}") == []
    inv = rt.exec(conf, "CHECK", CID, "/run/netns/unused")
    assert inv.out is not None and inv.out["code"] == 105


def test_delegates_to_another_ipam_plugin(node_bed: NodeBed, tmp_path: Path) -> None:
    if not os.path.exists("/usr/lib/cni/host-local"):
        pytest.skip("containernetworking-plugins not installed")
    bed, rt = node_bed, node_bed.runtime
    cname, cpath = bed.container()
    conf = bed.conf(
        ipam={
            "type": "host-local",
            "ranges": [[{"subnet": "10.66.0.0/24"}]],
            "dataDir": str(tmp_path / "host-local"),
        }
    )
    out = rt.exec(conf, "ADD", CID, cpath).ok()
    assert out["ips"][0]["address"].startswith("10.66.0.")
    assert link(cname, "eth0") is not None
    rt.exec(conf, "DEL", CID, cpath).ok()
    assert not any((tmp_path / "host-local" / "net1").glob("10.66.*"))


@pytest.mark.skipif(
    not have_reference_plugins(), reason="apt-get install containernetworking-plugins"
)
def test_chained_before_reference_plugins(node_bed: NodeBed) -> None:
    """tabby first, then Debian's tuning and bandwidth, each receiving prevResult."""
    bed, rt = node_bed, node_bed.runtime
    cname, cpath = bed.container()
    ours = {k: v for k, v in bed.conf().items() if k not in ("name", "cniVersion")}
    conflist = {
        "cniVersion": "1.0.0",
        "name": "net1",
        "plugins": [
            ours,
            {"type": "tuning", "mtu": 1400, "sysctl": {"net.core.somaxconn": "512"}},
            {"type": "bandwidth", "ingressRate": 8_000_000, "ingressBurst": 80_000},
        ],
    }
    result = rt.run_list(conflist, "ADD", CID, cpath)
    assert result is not None
    # the final result still carries our interfaces and addresses
    host = result["interfaces"][0]["name"]
    assert host.startswith("tbw")
    assert result["interfaces"][1]["sandbox"] == cpath
    addr = result["ips"][0]["address"]
    # tuning acted inside the container on the interface we created
    assert sysctl(cname, "net/core/somaxconn") == "512"
    c = link(cname, "eth0")
    assert c is not None and c["mtu"] == 1400
    assert addr.split("/")[0] in [a["local"] for a in c["addr_info"]]
    # bandwidth found our host end (via prevResult) and shaped it
    qdisc = _ns(bed.node, "tc", "qdisc", "show", "dev", host)
    assert "tbf" in qdisc, qdisc
    # CHECK the whole chain with the final result as prevResult
    rt.run_list(conflist, "CHECK", CID, cpath, prev=result)
    # DEL in reverse order
    rt.run_list(conflist, "DEL", CID, cpath, prev=result)
    assert link(bed.node, host) is None
    assert bed.weps() == {}
    assert handle_ips(bed, f"net1.{CID}") == []


def test_dual_stack(node_bed: NodeBed) -> None:
    bed, rt = node_bed, node_bed.runtime
    put_resource(bed.store, ip_pool("pool6", "fd00:65::/120", 122))
    cname, cpath = bed.container()
    conf = bed.conf(ipam={"type": "tabby-ipam", "assign_ipv6": "true"})
    out = rt.exec(conf, "ADD", CID, cpath).ok()
    addrs = sorted(ip["address"] for ip in out["ips"])
    v4 = next(a for a in addrs if "." in a)
    v6 = next(a for a in addrs if ":" in a)
    assert v6.endswith("/128") and ip_address(v6.split("/")[0]) in ip_network("fd00:65::/120")
    assert {"dst": "::/0", "gw": "fe80::ecee:eeff:feee:eeee"} in out["routes"]
    host = out["interfaces"][0]["name"]
    assert sysctl(bed.node, f"net/ipv6/conf/{host}/proxy_ndp") == "1"
    assert sysctl(bed.node, f"net/ipv6/conf/{host}/accept_ra") == "0"
    c = link(cname, "eth0")
    assert c is not None
    have = {f"{a['local']}/{a['prefixlen']}" for a in c["addr_info"] if a.get("scope") == "global"}
    assert have == {v4, v6}
    r6 = {(x["dst"], x.get("gateway")) for x in routes(cname, "-6")}
    assert ("default", "fe80::ecee:eeff:feee:eeee") in r6
    wep = next(iter(bed.weps().values()))
    assert sorted(str(n) for n in wep.spec.ip_networks) == sorted([v4, v6])
    rt.exec({**conf, "prevResult": out}, "CHECK", CID, cpath).ok()
    rt.exec(conf, "DEL", CID, cpath).ok()
    assert handle_ips(bed, f"net1.{CID}") == []
