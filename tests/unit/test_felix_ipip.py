"""felix and IP-in-IP: node addresses from Node resources, the ``tby4-all-hosts`` ipset and the
tby-INPUT rule that drops IP-in-IP (protocol 4) from anyone but a node.

Inputs are real datastore documents through ``felix.inputs``; the dataplane runs against the
stateful iptables/ipset fakes and every assertion reads their kernel state back."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, ip_network
from typing import Any

import pytest

from datastore.keys import resource_key
from datastore.syncer import Update
from felix.calc import Calculator
from felix.dataplane import TABLES, Dataplane
from felix.inputs import InputState
from felix.model import Pool
from felix.render import (
    ALL_HOSTS_SET,
    RenderConfig,
    ipip_enabled,
    ipip_filter_rule,
    render_filter,
    render_ipsets_static,
    static_set_name,
)
from kernel.ipsets import FakeIpsetBackend, IpsetDriver
from kernel.iptables import IptablesTable
from kernel.iptables_fake import FakeIptablesBackend
from kernel.routes import PROTO_FELIX, FakeRouteBackend, RouteTable
from tests.unit.test_felix_dataplane import FakeSysctls

HOST = "node1"
HOSTS_SET = static_set_name(ALL_HOSTS_SET, 4)
V3 = "projectcalico.org/v3"
_rev = [0]


def upd(kind: str, name: str, spec: dict[str, Any] | None) -> Update:
    _rev[0] += 1
    value = None
    if spec is not None:
        value = json.dumps(
            {"apiVersion": V3, "kind": kind, "metadata": {"name": name}, "spec": spec}
        ).encode()
    return Update(resource_key(kind, name, None), value, _rev[0])


def node(name: str, address: str | None) -> Update:
    spec: dict[str, Any] = {"bgp": {"ipv4Address": address}} if address else {}
    return upd("Node", name, spec)


def pool(mode: str, name: str = "p1", cidr: str = "10.65.0.0/16", **extra: Any) -> Update:
    return upd("IPPool", name, {"cidr": cidr, "ipipMode": mode, **extra})


class Bed:
    def __init__(self) -> None:
        self.ipsets = FakeIpsetBackend()
        self.ipt = FakeIptablesBackend(set_exists=self.ipsets.exists)
        ipt6 = FakeIptablesBackend(set_exists=self.ipsets.exists)
        self.ipsets.references = lambda n: self.ipt.set_references(n) + ipt6.set_references(n)
        backends = {4: self.ipt, 6: ipt6}
        tables: dict[tuple[str, int], IptablesTable] = {
            (t, v): IptablesTable(t, v, backend=backends[v]) for t in TABLES for v in (4, 6)
        }
        self.calc = Calculator(HOST)
        self.inputs = InputState(self.calc)
        self.dp = Dataplane(
            None,
            RenderConfig(),
            tables=tables,
            ipsets=IpsetDriver(backend=self.ipsets),
            routes={
                v: RouteTable(None, PROTO_FELIX, v, backend=FakeRouteBackend(["eth0"]))
                for v in (4, 6)
            },
            sysctls=FakeSysctls(),  # type: ignore[arg-type]
        )

    def feed(self, *updates: Update) -> None:
        for u in updates:
            self.inputs.apply_update(u)

    def apply(self) -> int:
        stats = self.dp.apply(self.calc)
        assert stats.failures == []
        return stats.writes

    def input_rules(self) -> list[str]:
        return self.ipt.rules("filter", "tby-INPUT")

    def ipip_rules(self) -> list[str]:
        return [r for r in self.input_rules() if "-p 4 " in f"{r} "]

    def hosts(self) -> set[str] | None:
        return self.ipsets.members(HOSTS_SET) if self.ipsets.exists(HOSTS_SET) else None


@pytest.fixture
def bed() -> Bed:
    return Bed()


# ------------------------------------------------------------------------------ inputs / calc


def test_node_documents_give_host_addresses() -> None:
    calc = Calculator(HOST)
    inputs = InputState(calc)
    for u in (
        node("node1", "198.51.100.2/26"),
        node("node2", "198.51.100.66/26"),
        node("bare", None),  # no BGP address: not a source of IP-in-IP
    ):
        inputs.apply_update(u)
    assert calc.host_addresses == {IPv4Address("198.51.100.2"), IPv4Address("198.51.100.66")}
    assert calc.take_dirty().hosts
    # The address moves, then the node goes away.
    inputs.apply_update(node("node2", "198.51.100.70/26"))
    assert IPv4Address("198.51.100.70") in calc.host_addresses
    inputs.apply_update(upd("Node", "node2", None))
    assert calc.host_addresses == {IPv4Address("198.51.100.2")}
    assert calc.state().host_addresses == {IPv4Address("198.51.100.2")}


def test_same_address_again_is_not_a_change() -> None:
    calc = Calculator(HOST)
    calc.set_host("node1", IPv4Address("198.51.100.2"))
    calc.take_dirty()
    calc.set_host("node1", IPv4Address("198.51.100.2"))
    calc.set_host("gone", None)
    assert not calc.take_dirty()


def test_invalid_node_document_counts_as_absent() -> None:
    calc = Calculator(HOST)
    inputs = InputState(calc)
    inputs.apply_update(node("node2", "198.51.100.66/26"))
    bad = Update(resource_key("Node", "node2", None), b'{"kind": "Node", "spec": 5}', 999)
    inputs.apply_update(bad)
    assert calc.host_addresses == frozenset()


def test_node_address_converter_ignores_ipv6_only_nodes() -> None:
    calc = Calculator(HOST)
    inputs = InputState(calc)
    inputs.apply_update(upd("Node", "v6", {"bgp": {"ipv6Address": "fd00::2/64"}}))
    assert calc.host_addresses == frozenset()


# ------------------------------------------------------------------------------ render (pure)


def test_ipip_enabled_by_any_ipv4_pool_with_a_mode() -> None:
    never = Pool("a", ip_network("10.65.0.0/16"))
    cross = Pool("b", ip_network("10.66.0.0/16"), ipip_mode="CrossSubnet")
    always_disabled = Pool("c", ip_network("10.67.0.0/16"), disabled=True, ipip_mode="Always")
    assert not ipip_enabled([never])
    assert ipip_enabled([never, cross])
    # A disabled pool's routes may still carry IP-in-IP: the filter stays (fail closed).
    assert ipip_enabled([always_disabled])
    assert not ipip_enabled([])


def test_static_sets_include_all_hosts_only_with_ipip() -> None:
    hosts = [IPv4Address("198.51.100.2"), IPv4Address("198.51.100.66")]
    never = [Pool("a", ip_network("10.65.0.0/16"))]
    assert [r.name for r in render_ipsets_static(never, RenderConfig(), hosts)] == []
    cross = [Pool("a", ip_network("10.65.0.0/16"), ipip_mode="CrossSubnet")]
    (r,) = render_ipsets_static(cross, RenderConfig(), hosts)
    assert (r.name, r.set_type, r.family) == ("tby4-all-hosts", "hash:net", "inet")
    assert r.members == {"198.51.100.2", "198.51.100.66"}


def test_filter_rule_first_in_tby_input_for_ipv4_only() -> None:
    calc = Calculator(HOST)
    calc.set_pool("p", Pool("p", ip_network("10.65.0.0/16"), ipip_mode="Always"))
    state = calc.state()
    v4 = render_filter(state, 4, RenderConfig(), {})
    chain = next(c for c in v4.chains if c.name == "tby-INPUT")
    assert chain.rules[0] == ipip_filter_rule()
    assert chain.rules[0].match == "-p 4 -m set ! --match-set tby4-all-hosts src"
    assert chain.rules[0].action == "-j DROP"
    v6 = render_filter(state, 6, RenderConfig(), {})
    chain6 = next(c for c in v6.chains if c.name == "tby-INPUT")
    assert all("-p 4" not in r.match for r in chain6.rules)


# ------------------------------------------------------------------------------ dataplane


def test_no_ipip_pool_no_rule_no_set(bed: Bed) -> None:
    bed.feed(pool("Never"), node("node1", "198.51.100.2/26"))
    bed.apply()
    assert bed.ipip_rules() == []
    assert bed.hosts() is None


def test_ipip_pool_programs_set_and_rule(bed: Bed) -> None:
    bed.feed(
        pool("CrossSubnet"),
        node("node1", "198.51.100.2/26"),
        node("node2", "198.51.100.3/26"),
        node("node3", "198.51.100.66/26"),
    )
    bed.apply()
    assert bed.hosts() == {"198.51.100.2", "198.51.100.3", "198.51.100.66"}
    rules = bed.input_rules()
    assert "-p 4" in rules[0] and "! --match-set tby4-all-hosts src" in rules[0]
    assert rules[0].rstrip().endswith("-j DROP")
    assert len(bed.ipip_rules()) == 1
    # Nothing changed: nothing written.
    assert bed.apply() == 0


def test_node_changes_update_the_set_not_the_rules(bed: Bed) -> None:
    bed.feed(pool("Always"), node("node1", "198.51.100.2/26"), node("node2", "198.51.100.3/26"))
    bed.apply()
    iptables_restores = len(bed.ipt.restores)
    bed.feed(node("node4", "203.0.113.5/26"), upd("Node", "node2", None))
    assert bed.apply() > 0
    assert bed.hosts() == {"198.51.100.2", "203.0.113.5"}
    assert len(bed.ipt.restores) == iptables_restores  # only the ipset changed


def test_switching_ipip_off_removes_rule_then_set(bed: Bed) -> None:
    bed.feed(pool("Always"), node("node1", "198.51.100.2/26"))
    bed.apply()
    assert bed.ipip_rules() and bed.hosts() is not None
    bed.feed(pool("Never"))
    bed.apply()
    assert bed.ipip_rules() == []
    assert bed.hosts() is None
    # And on again (a second pool), with the nodes still known.
    bed.feed(pool("CrossSubnet", name="p2", cidr="10.70.0.0/16"))
    bed.apply()
    assert bed.hosts() == {"198.51.100.2"}
    assert len(bed.ipip_rules()) == 1


def test_pool_before_nodes_gives_an_empty_set_that_fills(bed: Bed) -> None:
    bed.feed(pool("Always"))
    bed.apply()
    assert bed.hosts() == set()  # fail closed: no node known, all IP-in-IP dropped
    assert len(bed.ipip_rules()) == 1
    bed.feed(node("node1", "198.51.100.2/26"))
    bed.apply()
    assert bed.hosts() == {"198.51.100.2"}


def test_result_depends_on_state_not_order() -> None:
    final = [pool("CrossSubnet"), node("node1", "198.51.100.2/26"), node("node2", "203.0.113.7/26")]
    detour = [node("node2", "198.51.100.66/26"), pool("Never"), node("node3", "198.51.100.9/26")]
    gone = [upd("Node", "node3", None)]
    results = []
    for seq in (final, list(reversed(final)), [*detour, *final, *gone], [*final[1:], final[0]]):
        b = Bed()
        b.feed(*seq)
        b.apply()
        results.append((b.hosts(), b.ipip_rules()))
    assert results[0][0] == {"198.51.100.2", "203.0.113.7"}
    assert all(r == results[0] for r in results)
