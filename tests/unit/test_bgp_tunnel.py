"""bgp.tunnel: the pure decisions, and ``TunnelManager`` against the stateful fakes (a fake
kernel namespace and ``FakeEtcd`` with real IPAM). Assertions read back the fake kernel's
``tunl0``, the IPAM records and the stored Node."""

from __future__ import annotations

import logging
from ipaddress import IPv4Address, IPv4Interface, ip_network
from typing import Any

import pytest

from bgp.model import PoolInfo
from bgp.tunnel import (
    FakeTunnelKernel,
    TunnelLink,
    TunnelManager,
    TunnelStep,
    handle_id,
    ipip_pools,
    link_steps,
    mtu_from_env,
    tunnel_mtu,
)
from datastore import kinds
from datastore.client import ResourceClient
from datastore.codec import encode, resource_from_dict
from datastore.fake import FakeEtcd
from datastore.ipam import IPAM
from datastore.keys import resource_key
from datastore.model import NodeSpec, Resource

NODE = "node1"
UPLINK = IPv4Interface("198.51.100.2/26")
POOL = PoolInfo(ip_network("10.65.0.0/16"), "CrossSubnet", name="lab-pool")
NEVER = PoolInfo(ip_network("10.66.0.0/16"), "Never", name="plain")


def put(store: FakeEtcd, kind: str, name: str, spec: dict[str, Any], **meta: Any) -> None:
    doc = {
        "apiVersion": "projectcalico.org/v3",
        "kind": kind,
        "metadata": {"name": name, **meta},
        "spec": spec,
    }
    store.put(resource_key(kind, name), encode(resource_from_dict(doc)))


@pytest.fixture
def etcd() -> FakeEtcd:
    e = FakeEtcd()
    put(e, "IPPool", "lab-pool", {"cidr": "10.65.0.0/16", "ipipMode": "CrossSubnet"})
    put(e, "IPPool", "plain", {"cidr": "10.66.0.0/16"})
    put(
        e,
        "Node",
        NODE,
        {"bgp": {"ipv4Address": str(UPLINK), "asNumber": 64513}},
        labels={"rack": "r0"},
    )
    return e


def node_res(etcd: FakeEtcd) -> Resource:
    return ResourceClient(etcd).get(kinds.NODE, NODE)


def recorded(etcd: FakeEtcd) -> IPv4Address | None:
    spec = node_res(etcd).spec
    assert isinstance(spec, NodeSpec) and spec.bgp is not None
    return spec.bgp.ipv4_ipip_tunnel_addr


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def manager(etcd: FakeEtcd, kernel: FakeTunnelKernel, **kw: Any) -> TunnelManager:
    return TunnelManager(NODE, kernel, lambda: etcd, clock=kw.pop("clock", Clock()), **kw)


# ------------------------------------------------------------------------------ pure


def test_ipip_pools_are_enabled_ipv4_pools_with_a_mode() -> None:
    disabled = PoolInfo(ip_network("10.67.0.0/16"), "Always", disabled=True, name="off")
    v6 = PoolInfo(ip_network("fd00::/64"), "Always", name="six")
    always = PoolInfo(ip_network("10.68.0.0/16"), "Always", name="a")
    assert ipip_pools([POOL, NEVER, disabled, v6, always]) == (always, POOL)
    assert ipip_pools([NEVER]) == ()


def test_mtu_is_uplink_minus_20_unless_configured() -> None:
    assert tunnel_mtu(1500, None) == 1480
    assert tunnel_mtu(9000, None) == 8980
    assert tunnel_mtu(1500, 1400) == 1400
    assert tunnel_mtu(None, None) is None
    assert mtu_from_env({"TABBY_BGP_IPIPMTU": "1440"}) == 1440
    assert mtu_from_env({"TABBY_BGP_IPIPMTU": "lots"}) is None
    assert mtu_from_env({}) is None


def test_link_steps() -> None:
    addr = IPv4Address("10.65.1.0")
    fresh = TunnelLink(exists=True, up=False, mtu=1480)
    assert link_steps(fresh, 1480, addr) == (
        TunnelStep("set_up"),
        TunnelStep("add_address", address=IPv4Interface("10.65.1.0/32")),
    )
    done = TunnelLink(True, True, 1480, (IPv4Interface("10.65.1.0/32"),))
    assert link_steps(done, 1480, addr) == ()
    stale = TunnelLink(True, True, 1500, (IPv4Interface("10.9.9.9/32"),))
    assert link_steps(stale, 1480, addr) == (
        TunnelStep("set_mtu", mtu=1480),
        TunnelStep("add_address", address=IPv4Interface("10.65.1.0/32")),
        TunnelStep("del_address", address=IPv4Interface("10.9.9.9/32")),
    )
    # No address known yet: addresses are left alone; no MTU known: MTU left alone.
    assert link_steps(stale, None, None) == ()


# ------------------------------------------------------------------------------ manager


def test_brings_up_tunl0_with_address_and_records_it(etcd: FakeEtcd) -> None:
    kernel = FakeTunnelKernel(uplinks={UPLINK.ip: 1500})
    m = manager(etcd, kernel)
    assert m.reconcile([POOL, NEVER], UPLINK, node_res(etcd)) is True
    link = kernel.read("tunl0")
    assert link.up and link.mtu == 1480
    (addr,) = link.addresses
    assert addr.network.prefixlen == 32 and addr.ip in POOL.cidr
    # IPAM: one address under the node's handle, in an IP-in-IP pool, with Calico's attributes.
    ipam = IPAM(etcd)
    assert ipam.ips_by_handle(handle_id(NODE)) == [addr.ip]
    owner = ipam.who_owns(addr.ip)
    assert owner is not None and owner.handle_id == "ipip-tunnel-addr-node1"
    assert dict(owner.attrs) == {"node": NODE, "type": "ipipTunnelAddress"}
    # The Node records it; nothing else of the Node changed.
    assert recorded(etcd) == addr.ip
    res = node_res(etcd)
    assert res.metadata.labels == {"rack": "r0"}
    assert isinstance(res.spec, NodeSpec) and res.spec.bgp is not None
    assert res.spec.bgp.ipv4_address == UPLINK and res.spec.bgp.as_number == 64513
    assert m.status() == {
        "needed": True,
        "device": "tunl0",
        "available": True,
        "address": str(addr.ip),
        "mtu": 1480,
    }


def test_status_before_any_pool_needs_ipip(etcd: FakeEtcd) -> None:
    m = manager(etcd, FakeTunnelKernel(uplinks={UPLINK.ip: 1500}))
    assert m.reconcile([NEVER], UPLINK, node_res(etcd)) is False
    assert m.status()["needed"] is False and m.status()["address"] is None


def test_second_pass_writes_nothing(etcd: FakeEtcd) -> None:
    kernel = FakeTunnelKernel(uplinks={UPLINK.ip: 1500})
    clock = Clock()
    m = manager(etcd, kernel, clock=clock)
    m.reconcile([POOL], UPLINK, node_res(etcd))
    writes, revision = kernel.writes, etcd.revision
    assert m.reconcile([POOL], UPLINK, node_res(etcd)) is False
    clock.t += 3600  # a resync: re-read, still nothing to write
    assert m.reconcile([POOL], UPLINK, node_res(etcd)) is False
    assert (kernel.writes, etcd.revision) == (writes, revision)


def test_restart_reuses_the_address(etcd: FakeEtcd) -> None:
    kernel = FakeTunnelKernel(uplinks={UPLINK.ip: 1500})
    manager(etcd, kernel).reconcile([POOL], UPLINK, node_res(etcd))
    first = kernel.read("tunl0").addresses
    revision = etcd.revision
    # A new agent process (fresh manager), same kernel and datastore.
    assert manager(etcd, kernel).reconcile([POOL], UPLINK, node_res(etcd)) is False
    assert kernel.read("tunl0").addresses == first
    assert etcd.revision == revision
    assert len(IPAM(etcd).ips_by_handle(handle_id(NODE))) == 1


def test_kernel_without_ipip_logs_once_and_keeps_going(
    etcd: FakeEtcd, caplog: pytest.LogCaptureFixture
) -> None:
    kernel = FakeTunnelKernel(ipip=False, uplinks={UPLINK.ip: 1500})
    clock = Clock()
    m = manager(etcd, kernel, clock=clock)
    with caplog.at_level(logging.ERROR, logger="bgp.tunnel"):
        for _ in range(3):
            assert m.reconcile([POOL], UPLINK, node_res(etcd)) is False
            clock.t += 3600
    errors = [r for r in caplog.records if "ipip.unavailable" in r.getMessage()]
    assert len(errors) == 1 and errors[0].levelno == logging.ERROR
    assert not kernel.read("tunl0").exists
    assert m.unavailable
    assert m.status()["needed"] is True and m.status()["available"] is False
    # The datastore side still happened: the address is allocated and recorded.
    assert recorded(etcd) is not None


def test_no_ipip_pool_touches_nothing(etcd: FakeEtcd) -> None:
    kernel = FakeTunnelKernel(uplinks={UPLINK.ip: 1500})
    m = manager(etcd, kernel)
    revision = etcd.revision
    assert m.reconcile([NEVER], UPLINK, node_res(etcd)) is False
    assert not kernel.read("tunl0").exists
    assert etcd.revision == revision


def test_ipip_switched_off_leaves_tunnel_and_address(etcd: FakeEtcd) -> None:
    kernel = FakeTunnelKernel(uplinks={UPLINK.ip: 1500})
    m = manager(etcd, kernel)
    m.reconcile([POOL], UPLINK, node_res(etcd))
    link, revision = kernel.read("tunl0"), etcd.revision
    assert m.reconcile([NEVER], UPLINK, node_res(etcd)) is False
    assert kernel.read("tunl0") == link
    assert etcd.revision == revision  # nothing released, Node untouched
    assert recorded(etcd) == link.addresses[0].ip


def test_configured_mtu_and_foreign_address_removed(etcd: FakeEtcd) -> None:
    kernel = FakeTunnelKernel(uplinks={UPLINK.ip: 9000})
    kernel.links["tunl0"] = TunnelLink(True, True, 1480, (IPv4Interface("10.99.0.1/32"),))
    m = manager(etcd, kernel, configured_mtu=1400)
    assert m.reconcile([POOL], UPLINK, node_res(etcd)) is True
    link = kernel.read("tunl0")
    assert link.mtu == 1400
    assert [a.ip in POOL.cidr for a in link.addresses] == [True]


def test_address_outside_the_ipip_pools_is_replaced(etcd: FakeEtcd) -> None:
    ipam = IPAM(etcd)
    (old,), _ = ipam.auto_assign(handle_id(NODE), NODE, pools_v4=["plain"])
    kernel = FakeTunnelKernel(uplinks={UPLINK.ip: 1500})
    manager(etcd, kernel).reconcile([POOL, NEVER], UPLINK, node_res(etcd))
    (new,) = ipam.ips_by_handle(handle_id(NODE))
    assert new in POOL.cidr and new != old
    assert ipam.who_owns(old) is None
    assert [a.ip for a in kernel.read("tunl0").addresses] == [new]


def test_concurrent_node_update_is_not_clobbered(etcd: FakeEtcd) -> None:
    kernel = FakeTunnelKernel(uplinks={UPLINK.ip: 1500})
    stale = node_res(etcd)  # what the agent saw
    # Someone relabels the node after the agent's read.
    put(
        etcd,
        "Node",
        NODE,
        {"bgp": {"ipv4Address": str(UPLINK), "asNumber": 64513}},
        labels={"rack": "r9"},
    )
    manager(etcd, kernel).reconcile([POOL], UPLINK, stale)
    res = node_res(etcd)
    assert res.metadata.labels == {"rack": "r9"}
    assert recorded(etcd) is not None


def test_missing_uplink_mtu_still_brings_device_up(etcd: FakeEtcd) -> None:
    kernel = FakeTunnelKernel()  # the uplink address is on no interface (yet)
    manager(etcd, kernel).reconcile([POOL], UPLINK, node_res(etcd))
    link = kernel.read("tunl0")
    assert link.up and link.mtu == 1480 and len(link.addresses) == 1
