"""felix.dataplane: the managers against the stateful kernel fakes (iptables, ipsets, routes,
sysctls, conntrack). Every assertion reads back the fakes' kernel state."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_network

import pytest

from felix.calc import Calculator
from felix.dataplane import TABLES, Dataplane
from felix.ipsetdefs import SetDef, ipset_name
from felix.model import NAMESPACE_LABEL, Endpoint, FrozenLabels, Policy, Pool
from felix.render import ALL_POOLS_SET, MASQ_SET, RenderConfig, static_set_name
from kernel import conntrack
from kernel.conntrack import ConntrackResult
from kernel.ipsets import FakeIpsetBackend, IpsetDriver
from kernel.iptables import IptablesTable
from kernel.iptables_fake import FakeIptablesBackend
from kernel.links import LinkEvent
from kernel.nl import Link
from kernel.routes import PROTO_FELIX, FakeRouteBackend, Route, RouteTable
from policy.rules import parse_rule
from policy.selector import parse

HOST = "node1"


@dataclass(frozen=True)
class _SysctlResult:
    written: tuple[str, ...] = ()


@dataclass
class FakeSysctls:
    """Same interface as kernel.sysctl.SysctlDriver; ``kernel`` is the fake /proc/sys."""

    kernel: dict[str, str] = field(default_factory=dict)
    desired: dict[str, str] = field(default_factory=dict)

    def set(self, path: str, value: str) -> None:
        self.desired[path] = value

    def set_many(self, values: dict[str, str]) -> None:
        for p, v in values.items():
            self.set(p, v)

    def forget_interface(self, ifname: str) -> None:
        for p in [p for p in self.desired if f"/conf/{ifname}/" in p]:
            del self.desired[p]

    def apply(self) -> _SysctlResult:
        written = tuple(p for p, v in sorted(self.desired.items()) if self.kernel.get(p) != v)
        for p in written:
            self.kernel[p] = self.desired[p]
        return _SysctlResult(written)


@dataclass
class FakeConntrack:
    """A conntrack table: flows as (src, dst); delete_entries removes flows touching the IPs."""

    flows: set[tuple[str, str]] = field(default_factory=set)
    deleted_ips: list[str] = field(default_factory=list)

    def delete_entries(
        self, netns: str | None, ips: Iterable[IPv4Address | IPv6Address]
    ) -> ConntrackResult:
        gone = {str(i) for i in ips}
        self.deleted_ips.extend(sorted(gone))
        before = len(self.flows)
        self.flows = {f for f in self.flows if f[0] not in gone and f[1] not in gone}
        return ConntrackResult(deleted=before - len(self.flows))


@dataclass
class Bed:
    dp: Dataplane
    calc: Calculator
    ipt: dict[int, FakeIptablesBackend]
    ipsets: FakeIpsetBackend
    routes: dict[int, FakeRouteBackend]
    sysctls: FakeSysctls
    ct: FakeConntrack

    def apply(self, allow_pending: bool = False) -> int:
        stats = self.dp.apply(self.calc)
        failures = stats.failures
        if allow_pending:  # a route waiting for its interface is reported (as pending)
            failures = [f for f in failures if "no-interface" not in f]
        assert failures == []
        return stats.writes

    def total_restores(self) -> int:
        return len(self.ipt[4].restores) + len(self.ipt[6].restores) + len(self.ipsets.restores)


@pytest.fixture
def bed(monkeypatch: pytest.MonkeyPatch) -> Bed:
    ipsets = FakeIpsetBackend()
    ipt = {v: FakeIptablesBackend(set_exists=ipsets.exists) for v in (4, 6)}
    ipsets.references = lambda name: ipt[4].set_references(name) + ipt[6].set_references(name)
    tables: dict[tuple[str, int], IptablesTable] = {
        (t, v): IptablesTable(t, v, backend=ipt[v]) for t in TABLES for v in (4, 6)
    }
    routes = {v: FakeRouteBackend(["tbw1", "tbw2", "eth0"]) for v in (4, 6)}
    sysctls = FakeSysctls()
    ct = FakeConntrack()
    monkeypatch.setattr(conntrack, "delete_entries", ct.delete_entries)
    dp = Dataplane(
        None,
        RenderConfig(),
        tables=tables,
        ipsets=IpsetDriver(backend=ipsets),
        routes={v: RouteTable(None, PROTO_FELIX, v, backend=routes[v]) for v in (4, 6)},
        sysctls=sysctls,  # type: ignore[arg-type]
    )
    dp.set_interfaces(["tbw1", "tbw2", "eth0", "lo"])
    return Bed(dp, Calculator(HOST), ipt, ipsets, routes, sysctls, ct)


def wep(name: str, iface: str, ips: tuple[str, ...], **labels: str) -> Endpoint:
    nets = [ip_network(i) for i in ips]
    return Endpoint(
        key=f"wep/ns1/{name}",
        kind="workload",
        node=HOST,
        name=name,
        namespace="ns1",
        iface=iface,
        ipv4=tuple(n for n in nets if n.version == 4),
        ipv6=tuple(n for n in nets if n.version == 6),
        labels=FrozenLabels({**labels, NAMESPACE_LABEL: "ns1"}),
    )


W1 = wep("w1", "tbw1", ("10.65.0.1/32", "fd00::1/128"), app="web")
W2 = wep("w2", "tbw2", ("10.65.0.2/32",), app="db")
POL = Policy(
    key="gnp/p",
    name="p",
    namespace=None,
    tier="default",
    order=None,
    selector=parse("app == 'db'"),
    types=frozenset({"Ingress"}),
    ingress=(parse_rule({"action": "Allow", "source": {"selector": "app == 'web'"}}),),
)
WEB_SET = SetDef.for_selector(parse("app == 'web'"))


def populate(calc: Calculator) -> None:
    calc.set_endpoint(W1.key, W1)
    calc.set_endpoint(W2.key, W2)
    calc.set_policy(POL.key, POL)
    calc.set_pool("pool", Pool("pool", ip_network("10.65.0.0/16"), nat_outgoing=True))


def test_converges_from_empty(bed: Bed) -> None:
    populate(bed.calc)
    assert bed.apply() > 0
    # Routes for every workload address, protocol 80, scope link.
    r4 = bed.routes[4].table(PROTO_FELIX)
    assert set(r4) == {ip_network("10.65.0.1/32"), ip_network("10.65.0.2/32")}
    assert r4[ip_network("10.65.0.1/32")].ifname == "tbw1"
    assert set(bed.routes[6].table(PROTO_FELIX)) == {ip_network("fd00::1/128")}
    # Chains and hooks in the fake kernel.
    names = bed.ipt[4].chain_names("filter")
    assert {"tby-tw-tbw1", "tby-tw-tbw2", "tby-fw-tbw1", "tby-FORWARD"} <= set(names)
    assert any("tby-FORWARD" in r for r in bed.ipt[4].rules("filter", "FORWARD"))
    assert any("MASQUERADE" in r for r in bed.ipt[4].rules("nat", "tby-nat-outgoing"))
    # ipsets with members.
    assert bed.ipsets.members(ipset_name(WEB_SET.id, 4)) == {"10.65.0.1"}
    assert bed.ipsets.members(ipset_name(WEB_SET.id, 6)) == {"fd00::1"}
    assert bed.ipsets.members(static_set_name(MASQ_SET, 4)) == {"10.65.0.0/16"}
    assert bed.ipsets.members(static_set_name(ALL_POOLS_SET, 4)) == {"10.65.0.0/16"}
    # Sysctls: forwarding, and per-interface values for existing workload interfaces.
    assert bed.sysctls.kernel["net/ipv4/ip_forward"] == "1"
    assert bed.sysctls.kernel["net/ipv4/conf/tbw1/rp_filter"] == "1"
    assert bed.sysctls.kernel["net/ipv6/conf/tbw1/forwarding"] == "1"
    assert not any("/tbw2/" in p and "ipv6" in p for p in bed.sysctls.kernel)


def test_second_apply_writes_nothing(bed: Bed) -> None:
    populate(bed.calc)
    bed.apply()
    restores = bed.total_restores()
    route_writes = bed.routes[4].writes + bed.routes[6].writes
    assert bed.apply() == 0
    assert bed.total_restores() == restores
    assert bed.routes[4].writes + bed.routes[6].writes == route_writes


def test_endpoint_removal_removes_routes_chains_and_flushes_conntrack(bed: Bed) -> None:
    populate(bed.calc)
    bed.apply()
    bed.ct.flows = {("10.65.0.1", "10.65.0.2"), ("10.65.0.2", "8.8.8.8"), ("10.9.9.9", "10.8.8.8")}
    bed.calc.set_endpoint(W1.key, None)
    bed.apply()
    assert set(bed.routes[4].table(PROTO_FELIX)) == {ip_network("10.65.0.2/32")}
    assert bed.routes[6].table(PROTO_FELIX) == {}
    names = set(bed.ipt[4].chain_names("filter"))
    assert "tby-tw-tbw1" not in names and "tby-fw-tbw1" not in names
    assert "tby-tw-tbw2" in names
    assert not any("tbw1" in r for r in bed.ipt[4].rules("filter", "tby-from-wl-dispatch"))
    # The web set is still needed (policy applies to w2) but now empty.
    assert bed.ipsets.members(ipset_name(WEB_SET.id, 4)) == set()
    assert set(bed.ct.deleted_ips) == {"10.65.0.1", "fd00::1"}
    assert bed.ct.flows == {("10.65.0.2", "8.8.8.8"), ("10.9.9.9", "10.8.8.8")}
    assert bed.apply() == 0


def test_policy_removal_destroys_sets_after_rules(bed: Bed) -> None:
    populate(bed.calc)
    bed.apply()
    name = ipset_name(WEB_SET.id, 4)
    assert bed.ipsets.exists(name)
    bed.calc.set_policy(POL.key, None)
    bed.apply()  # the fake refuses to destroy a set still referenced by a rule
    assert not bed.ipsets.exists(name)
    assert not bed.ipsets.exists(ipset_name(WEB_SET.id, 6))
    assert not any(n.startswith("tby-pi-") for n in bed.ipt[4].chain_names("filter"))


def test_pool_nat_change_updates_static_sets(bed: Bed) -> None:
    populate(bed.calc)
    bed.apply()
    bed.calc.set_pool("pool", Pool("pool", ip_network("10.65.0.0/16")))
    bed.apply()
    assert not bed.ipsets.exists(static_set_name(MASQ_SET, 4))
    assert "tby-nat-outgoing" not in bed.ipt[4].chain_names("nat")


def test_stale_objects_are_swept_on_first_apply(bed: Bed) -> None:
    # Left behind by an earlier run: a chain of ours, a set of ours, a route of ours; and
    # foreign objects, which must survive.
    bed.ipt[4].external(
        "filter",
        "*filter\n:tby-tw-tbwold - [0:0]\n:foreign - [0:0]\n-A tby-tw-tbwold -j DROP\nCOMMIT\n",
    )
    bed.ipsets.external("create tby4s:stale hash:net family inet\ncreate other hash:ip\n")
    bed.routes[4].put(Route(ip_network("10.65.9.9/32"), ifname="eth0", metric=0), PROTO_FELIX)
    bed.routes[4].put(Route(ip_network("10.1.0.0/16"), ifname="eth0", metric=0), 4)
    populate(bed.calc)
    bed.apply()
    names = bed.ipt[4].chain_names("filter")
    assert "tby-tw-tbwold" not in names and "foreign" in names
    assert not bed.ipsets.exists("tby4s:stale") and bed.ipsets.exists("other")
    table = bed.routes[4].table()
    assert ip_network("10.65.9.9/32") not in table
    assert ip_network("10.1.0.0/16") in table
    assert bed.apply() == 0


def test_interface_appearing_later_gets_sysctls_and_routes(bed: Bed) -> None:
    w3 = wep("w3", "tbw3", ("10.65.0.3/32",))
    bed.calc.set_endpoint(w3.key, w3)
    bed.apply(allow_pending=True)
    assert bed.routes[4].table(PROTO_FELIX) == {}
    assert "net/ipv4/conf/tbw3/rp_filter" not in bed.sysctls.kernel
    bed.routes[4].add_interface("tbw3")
    ev = LinkEvent("added", Link(9, "tbw3", True, "up", 1500, None))
    assert bed.dp.on_link_event(ev)
    bed.apply()
    assert bed.sysctls.kernel["net/ipv4/conf/tbw3/rp_filter"] == "1"
    assert ip_network("10.65.0.3/32") in bed.routes[4].table(PROTO_FELIX)


def test_tampered_chain_is_repaired_on_refresh(bed: Bed) -> None:
    populate(bed.calc)
    bed.apply()
    bed.ipt[4].external("filter", "*filter\n-F tby-tw-tbw2\nCOMMIT\n")
    for t in bed.dp.tables.values():
        t.invalidate()
    bed.apply()
    assert bed.ipt[4].rules("filter", "tby-tw-tbw2") != []
    assert bed.apply() == 0
