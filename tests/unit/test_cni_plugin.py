"""The network plugin's ADD/DEL/CHECK logic against a fake etcd and a fake kernel.

The fakes are stateful models: ``FakeKVStore`` (datastore.fake) with the real IPAM on top, and
``FakeDataplane`` below, which keeps host links and container interfaces and applies what it is
told. Assertions read the resulting state (stored WEPs, IPAM handles, links), not calls.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from ipaddress import ip_interface, ip_network
from typing import Any

import pytest

from cni.config import CniEnv, NetConf, parse_env, parse_netconf
from cni.errors import CHECK_FAILED, KERNEL, TRY_AGAIN_LATER, CNIError
from cni.netlink import GATEWAY_V4, GATEWAY_V6, ContainerState, VethSpec
from cni.plugin import TabbyPlugin
from datastore.client import ResourceClient
from datastore.codec import resource_from_dict
from datastore.fake import FakeEtcd, FakeKVStore
from datastore.ipam import IPAM
from datastore.kv import KVStore

NETNS = "/run/netns/c1"
CID = "0123456789abcdef"


@dataclass
class FakeDataplane:
    namespaces: set[str] = field(default_factory=lambda: {NETNS, "/run/netns/c2"})
    host: dict[str, VethSpec] = field(default_factory=dict)
    containers: dict[tuple[str, str], ContainerState] = field(default_factory=dict)
    fail_setup: bool = False

    def check_netns(self, path: str) -> None:
        if path not in self.namespaces:
            raise CNIError(3, f"no namespace {path}")

    def host_link_exists(self, name: str) -> bool:
        return name in self.host

    def create_pair(self, spec: VethSpec) -> None:
        if (
            spec.netns_path,
            spec.container_ifname,
        ) in self.containers or spec.host_ifname in self.host:
            raise CNIError(KERNEL, "File exists")
        self.host[spec.host_ifname] = spec
        self.containers[(spec.netns_path, spec.container_ifname)] = ContainerState(
            spec.container_ifname, spec.container_mac, False, spec.mtu
        )

    def configure_container(self, spec: VethSpec) -> None:
        if self.fail_setup:  # fails after the veth exists, before the container is configured
            raise CNIError(KERNEL, "injected failure")
        assert (spec.netns_path, spec.container_ifname) in self.containers
        routes: set[tuple[str, str | None]] = set()
        if any(a.version == 4 for a in spec.addresses):
            routes |= {(str(GATEWAY_V4), None), ("default", str(GATEWAY_V4))}
        if any(a.version == 6 for a in spec.addresses):
            routes.add(("default", str(GATEWAY_V6)))
        self.containers[(spec.netns_path, spec.container_ifname)] = ContainerState(
            spec.container_ifname,
            spec.container_mac,
            True,
            spec.mtu,
            frozenset(spec.addresses),
            frozenset(routes),
        )

    def delete_host(self, name: str) -> bool:
        spec = self.host.pop(name, None)
        if spec is None:
            return False
        self.containers.pop((spec.netns_path, spec.container_ifname), None)
        return True

    def inspect(self, path: str, ifname: str) -> ContainerState | None:
        return self.containers.get((path, ifname))


@pytest.fixture
def etcd() -> FakeEtcd:
    e = FakeEtcd()
    store = FakeKVStore(e)
    pool = {
        "apiVersion": "projectcalico.org/v3",
        "kind": "IPPool",
        "metadata": {"name": "pool1"},
        "spec": {"cidr": "10.65.0.0/24", "blockSize": 28},
    }
    pool6 = {
        "apiVersion": "projectcalico.org/v3",
        "kind": "IPPool",
        "metadata": {"name": "pool6"},
        "spec": {"cidr": "fd00:65::/120", "blockSize": 124},
    }
    ResourceClient(store).create(resource_from_dict(pool))
    ResourceClient(store).create(resource_from_dict(pool6))
    return e


def make_conf(**extra: Any) -> NetConf:
    d: dict[str, Any] = {
        "cniVersion": "1.0.0",
        "name": "net1",
        "type": "tabby",
        "nodename": "node1",
        "ipam": {"type": "tabby-ipam"},
    }
    d.update(extra)
    return parse_netconf(json.dumps(d))


def make_env(command: str, cid: str = CID, netns: str = NETNS, args: str = "") -> CniEnv:
    return parse_env(
        {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": cid,
            "CNI_NETNS": netns,
            "CNI_IFNAME": "eth0",
            "CNI_ARGS": args,
        }
    )


def plugin(
    etcd: FakeEtcd, dp: FakeDataplane, command: str, conf: NetConf | None = None, **kw: Any
) -> TabbyPlugin:
    def factory(_: NetConf) -> KVStore:
        return FakeKVStore(etcd)

    return TabbyPlugin(
        conf or make_conf(), make_env(command, **kw), store_factory=factory, dataplane=dp
    )


def weps(etcd: FakeEtcd) -> dict[str, Any]:
    client = ResourceClient(FakeKVStore(etcd))
    return {r.name: r for r in client.list("WorkloadEndpoint", all_namespaces=True)}


def test_add_check_del(etcd: FakeEtcd) -> None:
    dp = FakeDataplane()
    args = "K8S_POD_NAMESPACE=team-a;K8S_POD_NAME=web-0"
    conf = make_conf(labels={"app": "web"})
    result = plugin(etcd, dp, "ADD", conf, args=args).add()
    d = result.to_dict("1.0.0")
    [host, cont] = d["interfaces"]
    assert host["name"].startswith("tbw")
    assert host["mac"] == "ee:ee:ee:ee:ee:ee"
    assert cont["sandbox"] == NETNS
    [ip] = d["ips"]
    assert ip["interface"] == 1
    assert ip_interface(ip["address"]).ip in ip_network("10.65.0.0/24")
    assert ip["address"].endswith("/32")
    # the WEP, named and labelled as Calico does
    [wep] = weps(etcd).values()
    assert wep.name == "node1-k8s-web--0-eth0"
    assert wep.namespace == "team-a"
    assert wep.metadata.labels == {
        "app": "web",
        "projectcalico.org/namespace": "team-a",
        "projectcalico.org/orchestrator": "k8s",
    }
    assert wep.spec.interface_name == host["name"]
    assert wep.spec.profiles == ("kns.team-a",)
    assert wep.spec.container_id == CID
    assert wep.spec.mac == cont["mac"]
    assert [str(n) for n in wep.spec.ip_networks] == [ip["address"]]
    assert IPAM(FakeKVStore(etcd)).ips_by_handle(f"net1.{CID}")

    plugin(etcd, dp, "CHECK", conf, args=args).check()

    plugin(etcd, dp, "DEL", conf, args=args).delete()
    assert weps(etcd) == {}
    assert dp.host == {}
    assert IPAM(FakeKVStore(etcd)).ips_by_handle(f"net1.{CID}") == []
    # DEL again: nothing left, still fine
    plugin(etcd, dp, "DEL", conf, args=args).delete()
    with pytest.raises(CNIError) as info:
        plugin(etcd, dp, "CHECK", conf, args=args).check()
    assert info.value.code == CHECK_FAILED


def test_cni_orchestrator_and_dual_stack(etcd: FakeEtcd) -> None:
    dp = FakeDataplane()
    conf = make_conf(ipam={"type": "tabby-ipam", "assign_ipv6": "true"}, profiles=["p1", "p2"])
    result = plugin(etcd, dp, "ADD", conf).add().to_dict("0.4.0")
    assert sorted(ip["version"] for ip in result["ips"]) == ["4", "6"]
    [wep] = weps(etcd).values()
    assert wep.name == f"node1-cni-{CID}-eth0"
    assert wep.namespace == "default"
    assert wep.spec.workload == CID
    assert wep.spec.orchestrator == "cni"
    assert wep.spec.profiles == ("p1", "p2")
    assert {n.version for n in wep.spec.ip_networks} == {4, 6}
    plugin(etcd, dp, "CHECK", conf).check()


def test_retried_add_reuses_addresses(etcd: FakeEtcd) -> None:
    dp = FakeDataplane()
    first = plugin(etcd, dp, "ADD").add().to_dict("1.0.0")
    again = plugin(etcd, dp, "ADD").add().to_dict("1.0.0")
    assert first["ips"][0]["address"] == again["ips"][0]["address"]
    assert len(dp.host) == 1
    assert len(weps(etcd)) == 1


def test_failed_add_rolls_back_and_del_is_clean(etcd: FakeEtcd) -> None:
    dp = FakeDataplane(fail_setup=True)
    with pytest.raises(CNIError):
        plugin(etcd, dp, "ADD").add()
    assert dp.host == {}
    assert weps(etcd) == {}
    assert IPAM(FakeKVStore(etcd)).ips_by_handle(f"net1.{CID}") == []
    plugin(etcd, dp, "DEL").delete()


def test_half_done_add_is_cleaned_by_del(etcd: FakeEtcd) -> None:
    """A plugin killed after IPAM and the veth but before the WEP: DEL finds it all."""
    dp = FakeDataplane()
    plugin(etcd, dp, "ADD").add()
    # simulate the crash: the WEP was never written
    ResourceClient(FakeKVStore(etcd)).delete("WorkloadEndpoint", f"node1-cni-{CID}-eth0")
    plugin(etcd, dp, "DEL").delete()
    assert dp.host == {}
    assert IPAM(FakeKVStore(etcd)).ips_by_handle(f"net1.{CID}") == []


def test_del_keeps_wep_of_a_newer_container(etcd: FakeEtcd) -> None:
    dp = FakeDataplane()
    args = "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=pod"
    plugin(etcd, dp, "ADD", args=args, cid="old").add()
    plugin(etcd, dp, "ADD", args=args, cid="new", netns="/run/netns/c2").add()
    plugin(etcd, dp, "DEL", args=args, cid="old").delete()
    [wep] = weps(etcd).values()
    assert wep.spec.container_id == "new"
    assert len(dp.host) == 1
    assert IPAM(FakeKVStore(etcd)).ips_by_handle("net1.old") == []
    assert IPAM(FakeKVStore(etcd)).ips_by_handle("net1.new")


def test_twenty_workloads_get_distinct_addresses(etcd: FakeEtcd) -> None:
    dp = FakeDataplane()
    seen = set()
    for i in range(20):
        dp.namespaces.add(f"/run/netns/w{i}")
        r = plugin(etcd, dp, "ADD", cid=f"c{i}", netns=f"/run/netns/w{i}").add()
        seen.add(r.ips[0].address)
    assert len(seen) == 20


def test_check_reports_what_is_wrong(etcd: FakeEtcd) -> None:
    dp = FakeDataplane()
    plugin(etcd, dp, "ADD").add()
    (key,) = dp.containers
    state = dp.containers[key]
    dp.containers[key] = ContainerState(
        state.ifname, state.mac, state.up, state.mtu, frozenset(), state.routes
    )
    with pytest.raises(CNIError) as info:
        plugin(etcd, dp, "CHECK").check()
    assert info.value.code == CHECK_FAILED
    assert "missing on eth0" in info.value.msg
    ResourceClient(FakeKVStore(etcd)).delete("WorkloadEndpoint", f"node1-cni-{CID}-eth0")
    with pytest.raises(CNIError) as info:
        plugin(etcd, dp, "CHECK").check()
    assert "WorkloadEndpoint default/node1-cni-" in info.value.details


def test_missing_namespace_and_etcd_down(etcd: FakeEtcd) -> None:
    dp = FakeDataplane()
    with pytest.raises(CNIError) as info:
        plugin(etcd, dp, "ADD", netns="/run/netns/gone").add()
    assert info.value.code == 3
    etcd.set_available(False)
    with pytest.raises(CNIError) as info:
        plugin(etcd, dp, "ADD").add()
    assert info.value.code == TRY_AGAIN_LATER
    with pytest.raises(CNIError) as info:
        plugin(etcd, dp, "DEL").delete()
    assert info.value.code == TRY_AGAIN_LATER
    assert dp.host == {}
