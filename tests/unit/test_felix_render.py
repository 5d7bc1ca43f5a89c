"""felix.render: rendered chains and ipsets, checked by reading them and by running them.

Besides direct assertions on rule text, this file holds a small INTERPRETER for the subset of
iptables that felix.render emits (interfaces with ``+`` wildcards, ``-s/-d``, ``-p``, multiport,
set matches, icmp/icmp6, conntrack (packets are NEW), mark match and ``--set-xmark``, ``-j``/
``-g``/RETURN/ACCEPT/DROP/LOG/MARK). Synthetic packets are pushed through the rendered FORWARD
chain and the verdict is compared with ``policy.engine.evaluate`` (the reference semantics) for
random small policies: a differential test of felix's iptables semantics without a kernel.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_address,
    ip_network,
)
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from felix.calc import Calculator, DesiredState
from felix.ipsetdefs import SetDef, ipset_name
from felix.model import (
    NAMESPACE_LABEL,
    Endpoint,
    FrozenLabels,
    NamedPortSpec,
    NetworkSet,
    Policy,
    Pool,
    Profile,
    Tier,
)
from felix.render import (
    ALL_POOLS_SET,
    MASQ_SET,
    FailsafePort,
    IpSetRender,
    IpVersion,
    RenderConfig,
    TableRender,
    endpoint_chain,
    policy_chain,
    profile_chain,
    render_filter,
    render_ipsets,
    render_nat,
    render_tables,
    static_set_name,
)
from kernel.iptables import Chain
from policy.engine import (
    Packet,
    PeerInfo,
    PolicyView,
    ProfileView,
    StaticResolver,
    TierView,
    evaluate,
)
from policy.rules import Rule, parse_rule
from policy.selector import parse

HOST = "node1"
CFG = RenderConfig()
IPAddr = IPv4Address | IPv6Address


# --------------------------------------------------------------------------------------- builders


def wep(
    name: str,
    ips: tuple[str, ...],
    *,
    ns: str = "ns1",
    node: str = HOST,
    iface: str | None = None,
    labels: Mapping[str, str] | None = None,
    profiles: tuple[str, ...] = (),
    ports: tuple[NamedPortSpec, ...] = (),
) -> Endpoint:
    nets = [ip_network(i) for i in ips]
    lab = {**(labels or {}), NAMESPACE_LABEL: ns}
    return Endpoint(
        key=f"wep/{ns}/{name}",
        kind="workload",
        node=node,
        name=name,
        namespace=ns,
        iface=iface,
        ipv4=tuple(n for n in nets if isinstance(n, IPv4Network)),
        ipv6=tuple(n for n in nets if isinstance(n, IPv6Network)),
        labels=FrozenLabels(lab),
        profiles=profiles,
        ports=ports,
    )


def hep(name: str, iface: str = "eth0", labels: Mapping[str, str] | None = None) -> Endpoint:
    return Endpoint(
        key=f"hep/{name}",
        kind="host",
        node=HOST,
        name=name,
        namespace=None,
        iface=iface,
        ipv4=(IPv4Network("198.51.100.1/32"),),
        labels=FrozenLabels(labels or {}),
    )


def gnp(
    name: str,
    selector: str = "all()",
    *,
    tier: str = "default",
    order: float | None = None,
    types: tuple[str, ...] = ("Ingress", "Egress"),
    ingress: tuple[Rule, ...] = (),
    egress: tuple[Rule, ...] = (),
    **flags: bool,
) -> Policy:
    return Policy(
        key=f"gnp/{name}",
        name=name,
        namespace=None,
        tier=tier,
        order=order,
        selector=parse(selector),
        types=frozenset(types),
        ingress=ingress,
        egress=egress,
        **flags,
    )


def rules(*dicts: dict[str, Any]) -> tuple[Rule, ...]:
    return tuple(parse_rule(d) for d in dicts)


def state_of(*items: object, host: str = HOST) -> DesiredState:
    calc = Calculator(host)
    for it in items:
        if isinstance(it, Endpoint):
            calc.set_endpoint(it.key, it)
        elif isinstance(it, Policy):
            calc.set_policy(it.key, it)
        elif isinstance(it, Profile):
            calc.set_profile(it.name, it)
        elif isinstance(it, Tier):
            calc.set_tier(it.name, it)
        elif isinstance(it, NetworkSet):
            calc.set_network_set(it.key, it)
        elif isinstance(it, Pool):
            calc.set_pool(it.name, it)
        else:  # pragma: no cover
            raise TypeError(it)
    return calc.state()


def chains_of(tr: TableRender) -> dict[str, Chain]:
    return {c.name: c for c in tr.chains}


def texts(chain: Chain) -> list[str]:
    return [r.body() for r in chain.rules]


W1 = wep("w1", ("10.65.0.1/32", "fd00::1/128"), iface="tbw1")


# --------------------------------------------------------------------------- structural checks


def assert_integrity(state: DesiredState, cfg: RenderConfig, hep_ifaces: Any = None) -> None:
    """Chain names fit, every jump/goto target exists, every set referenced is rendered."""
    tables = render_tables(state, cfg, hep_ifaces or {})
    set_names = {s.name for s in render_ipsets(state, cfg)}
    for tr in tables:
        names = {c.name for c in tr.chains}
        all_rules = [r for c in tr.chains for r in c.rules]
        all_rules += [r for rs in tr.inserts.values() for r in rs]
        for c in tr.chains:
            assert len(c.name) <= 28, c.name
            assert c.name.startswith("tby-")
        for r in all_rules:
            for m in re.finditer(r"-[jg] (tby-\S+)", r.action):
                assert m.group(1) in names, f"{tr.table}/v{tr.ip_version}: {r.body()}"
            for m in re.finditer(r"--match-set (\S+)", r.match):
                assert m.group(1) in set_names, f"{tr.table}/v{tr.ip_version}: {r.body()}"
    for s in render_ipsets(state, cfg):
        assert len(s.name) <= 31


def test_workload_dispatch_anti_spoof_and_unknown_interface_drop() -> None:
    w2 = wep("w2", ("10.65.0.2/32",), iface="tbw2")
    w2 = Endpoint(**{**_fields(w2), "allow_spoofed": (ip_network("10.99.0.0/24"),)})
    st_ = state_of(W1, w2)
    f4 = chains_of(render_filter(st_, 4, CFG, {}))
    assert texts(f4["tby-from-wl-dispatch"]) == [
        "-i tbw1 -s 10.65.0.1/32 -g tby-fw-tbw1",
        "-i tbw1 -j DROP",
        "-i tbw2 -s 10.65.0.2/32 -g tby-fw-tbw2",
        "-i tbw2 -s 10.99.0.0/24 -g tby-fw-tbw2",
        "-i tbw2 -j DROP",
        "-j DROP",
    ]
    assert texts(f4["tby-to-wl-dispatch"]) == [
        "-o tbw1 -g tby-tw-tbw1",
        "-o tbw2 -g tby-tw-tbw2",
        "-j DROP",
    ]
    f6 = chains_of(render_filter(st_, 6, CFG, {}))
    assert texts(f6["tby-from-wl-dispatch"])[:3] == [
        "-i tbw1 -s fd00::1/128 -g tby-fw-tbw1",
        "-i tbw1 -s fe80::/10 -g tby-fw-tbw1",
        "-i tbw1 -j DROP",
    ]
    # No IPv6 address for w2: no IPv6 at all passes, in either direction, and it needs no
    # IPv6 policy chains.
    assert texts(f6["tby-from-wl-dispatch"])[3:] == ["-i tbw2 -j DROP", "-j DROP"]
    assert "-o tbw2 -j DROP" in texts(f6["tby-to-wl-dispatch"])
    assert "tby-fw-tbw2" not in f6 and "tby-tw-tbw2" not in f6
    assert "tby-fw-tbw2" in f4 and "tby-tw-tbw2" in f4


def _fields(ep: Endpoint) -> dict[str, Any]:
    return {f: getattr(ep, f) for f in Endpoint.__slots__}


def test_no_workloads_still_drops_unknown_interfaces() -> None:
    f = chains_of(render_filter(state_of(), 4, CFG, {}))
    assert texts(f["tby-from-wl-dispatch"]) == ["-j DROP"]
    assert texts(f["tby-to-wl-dispatch"]) == ["-j DROP"]
    assert "-i tbw+ -g tby-wl-to-host" in texts(f["tby-INPUT"])
    assert texts(f["tby-wl-to-host"])[-1] == "-j DROP"


def test_endpoint_to_host_action() -> None:
    cfg = RenderConfig(endpoint_to_host_action="Accept")
    f = chains_of(render_filter(state_of(), 4, cfg, {}))
    assert texts(f["tby-wl-to-host"]) == ["-j tby-from-wl-dispatch", "-j ACCEPT"]


def test_endpoint_chain_tiers_end_of_tier_drop_and_profiles() -> None:
    w = wep("w1", ("10.65.0.1/32",), iface="tbw1", profiles=("kns",))
    st_ = state_of(
        w,
        Tier("sec", 1),
        gnp("sec.a", tier="sec", types=("Ingress",), ingress=rules({"action": "Pass"})),
        gnp("b", types=("Ingress",)),
        Profile("kns", ingress=rules({"action": "Allow"})),
    )
    tw = chains_of(render_filter(st_, 4, CFG, {}))["tby-tw-tbw1"]
    a, b = policy_chain("gnp/sec.a", "ingress"), policy_chain("gnp/b", "ingress")
    pr = profile_chain("kns", "ingress")
    assert texts(tw) == [
        "-j MARK --set-xmark 0x0/0x30000",
        "-j MARK --set-xmark 0x0/0x20000",
        f"-m mark --mark 0x0/0x20000 -j {a}",
        "-m mark --mark 0x10000/0x10000 -j RETURN",
        "-m mark --mark 0x0/0x20000 -j DROP",
        "-j MARK --set-xmark 0x0/0x20000",
        f"-m mark --mark 0x0/0x20000 -j {b}",
        "-m mark --mark 0x10000/0x10000 -j RETURN",
        "-m mark --mark 0x0/0x20000 -j DROP",
        "-j MARK --set-xmark 0x0/0x20000",
        f"-j {pr}",
        "-m mark --mark 0x10000/0x10000 -j RETURN",
        "-j DROP",
    ]
    # Egress: no policy applies in that direction, so no tier and no end-of-tier drop.
    fw = chains_of(render_filter(st_, 4, CFG, {}))["tby-fw-tbw1"]
    assert not any("DROP" in t and "mark" in t for t in texts(fw))
    assert texts(fw)[-1] == "-j DROP"
    po = chains_of(render_filter(st_, 4, CFG, {}))[a]
    assert texts(po) == [
        "-j MARK --set-xmark 0x20000/0x20000",
        "-m mark --mark 0x20000/0x20000 -j RETURN",
    ]


def test_tier_default_action_pass_has_no_end_of_tier_drop() -> None:
    w = wep("w1", ("10.65.0.1/32",), iface="tbw1", profiles=("kns",))
    st_ = state_of(
        w,
        Tier("sec", 1, "Pass"),
        gnp("sec.a", tier="sec", types=("Ingress",), ingress=rules({"action": "Deny"})),
        gnp("b", types=("Ingress",)),
        Profile("kns", ingress=rules({"action": "Allow"})),
    )
    tw = texts(chains_of(render_filter(st_, 4, CFG, {}))["tby-tw-tbw1"])
    drops = [t for t in tw if t == "-m mark --mark 0x0/0x20000 -j DROP"]
    assert len(drops) == 1  # the default tier's only: tier "sec" passes what it did not decide
    assert tw.index(drops[0]) > tw.index(
        f"-m mark --mark 0x0/0x20000 -j {policy_chain('gnp/b', 'ingress')}"
    )


def test_nat_outgoing_only_with_a_nat_pool() -> None:
    assert render_nat(state_of(Pool("p", ip_network("10.65.0.0/16"))), 4).chains == ()
    st_ = state_of(
        Pool("p", ip_network("10.65.0.0/16"), nat_outgoing=True),
        Pool("q", ip_network("10.66.0.0/16")),
    )
    nat = render_nat(st_, 4)
    c = chains_of(nat)
    assert texts(c["tby-nat-outgoing"]) == [
        f"-m set --match-set {static_set_name(MASQ_SET, 4)} src "
        f"-m set ! --match-set {static_set_name(ALL_POOLS_SET, 4)} dst "
        "-j MASQUERADE --random-fully"
    ]
    assert nat.inserts["POSTROUTING"][0].action == "-j tby-POSTROUTING"
    assert render_nat(st_, 6).chains == ()  # no IPv6 pool
    sets = {s.name: s for s in render_ipsets(st_, CFG)}
    assert sets[static_set_name(MASQ_SET, 4)].members == {"10.65.0.0/16"}
    assert sets[static_set_name(ALL_POOLS_SET, 4)].members == {"10.65.0.0/16", "10.66.0.0/16"}
    assert_integrity(st_, CFG)


def test_failsafe_only_with_host_endpoints() -> None:
    f = chains_of(render_filter(state_of(W1), 4, CFG, {}))
    assert "tby-failsafe-in" not in f
    assert not any("failsafe" in t for t in texts(f["tby-INPUT"]) + texts(f["tby-OUTPUT"]))
    cfg = RenderConfig(
        failsafe_in=(FailsafePort("tcp", 22), FailsafePort("udp", 68, ip_network("10.0.0.0/8"))),
        failsafe_out=(FailsafePort("tcp", 2379, ip_network("fd00::/8")),),
    )
    st_ = state_of(W1, hep("h"))
    f = chains_of(render_filter(st_, 4, cfg, {"hep/h": ["eth0"]}))
    assert texts(f["tby-failsafe-in"]) == [
        "-p tcp -m tcp --dport 22 -j ACCEPT",
        "-p udp -m udp --dport 68 -s 10.0.0.0/8 -j ACCEPT",
    ]
    assert texts(f["tby-failsafe-out"]) == []  # only an IPv6 net
    assert "-j tby-failsafe-in" in texts(f["tby-INPUT"])
    f6 = chains_of(render_filter(st_, 6, cfg, {"hep/h": ["eth0"]}))
    assert texts(f6["tby-failsafe-out"]) == ["-p tcp -m tcp --dport 2379 -d fd00::/8 -j ACCEPT"]
    assert_integrity(st_, cfg, {"hep/h": ["eth0"]})


def _policy_texts(st_: DesiredState, key: str, v: int, direction: str = "ingress") -> list[str]:
    f = chains_of(render_filter(st_, v, CFG, {}))  # type: ignore[arg-type]
    return texts(f[policy_chain(key, direction)])


def test_ipv6_skips_ipv4_only_rules_and_icmp_versions() -> None:
    st_ = state_of(
        W1,
        gnp(
            "p",
            types=("Ingress",),
            ingress=rules(
                {"action": "Allow", "ipVersion": 4},
                {"action": "Allow", "source": {"nets": ["10.1.0.0/16"]}},
                {"action": "Allow", "protocol": "ICMP", "icmp": {"type": 8, "code": 0}},
                {"action": "Deny", "protocol": "ICMPv6", "notICMP": {"type": 128}},
                {"action": "Deny", "source": {"nets": ["fd00:1::/64"]}},
            ),
        ),
    )
    v4 = _policy_texts(st_, "gnp/p", 4)
    v6 = _policy_texts(st_, "gnp/p", 6)
    acc = "-j MARK --set-xmark 0x10000/0x10000"
    assert v4 == [
        acc,
        "-m mark --mark 0x10000/0x10000 -j RETURN",
        f"-s 10.1.0.0/16 {acc}",
        "-m mark --mark 0x10000/0x10000 -j RETURN",
        f"-p icmp -m icmp --icmp-type 8/0 {acc}",
        "-m mark --mark 0x10000/0x10000 -j RETURN",
    ]
    assert v6 == [
        "-p ipv6-icmp -m icmp6 ! --icmpv6-type 128 -j DROP",
        "-s fd00:1::/64 -j DROP",
    ]


@pytest.mark.parametrize(
    ("not_nets", "v4", "v6"),
    [
        (["10.1.0.0/16"], ["! -s 10.1.0.0/16 -j DROP"], []),
        (["fd00:1::/64"], [], ["! -s fd00:1::/64 -j DROP"]),
        (["10.1.0.0/16", "10.2.0.0/16"], ["<set>"], []),
    ],
)
def test_not_nets_of_the_other_family_never_match(
    not_nets: list[str], v4: list[str], v6: list[str]
) -> None:
    """A rule whose notNets are all of the other family cannot match (Calico, policy.engine):
    rendering it without the notNets match would drop every packet of this family."""
    st_ = state_of(
        W1,
        gnp(
            "p",
            types=("Ingress",),
            ingress=rules({"action": "Deny", "source": {"notNets": not_nets}}),
        ),
    )
    got4 = _policy_texts(st_, "gnp/p", 4)
    if v4 == ["<set>"]:
        assert len(got4) == 1 and got4[0].startswith("-m set ! --match-set tby4n:")
    else:
        assert got4 == v4
    assert _policy_texts(st_, "gnp/p", 6) == v6


def test_multiport_chunks_at_fifteen() -> None:
    ports: list[Any] = list(range(1000, 1020))  # 20 single ports
    ports.append("2000:2010")  # a range counts as two
    st_ = state_of(
        W1,
        gnp(
            "p",
            types=("Ingress",),
            ingress=rules({"action": "Deny", "protocol": "TCP", "destination": {"ports": ports}}),
        ),
    )
    got = _policy_texts(st_, "gnp/p", 4)
    assert got == [
        "-p tcp -m multiport --dports " + ",".join(str(p) for p in range(1000, 1015)) + " -j DROP",
        "-p tcp -m multiport --dports "
        + ",".join(str(p) for p in range(1015, 1020))
        + ",2000:2010 -j DROP",
    ]
    for t in got:
        listed = t.split("--dports ")[1].split()[0].split(",")
        assert sum(2 if ":" in p else 1 for p in listed) <= 15


def test_named_ports_use_ip_port_sets() -> None:
    w = wep(
        "w1", ("10.65.0.1/32", "fd00::1/128"), iface="tbw1", ports=(NamedPortSpec("http", 6, 8080),)
    )
    st_ = state_of(
        w,
        gnp(
            "p",
            types=("Ingress",),
            ingress=rules(
                {
                    "action": "Allow",
                    "protocol": "TCP",
                    "destination": {"ports": ["http", 443], "selector": "has(x)"},
                }
            ),
        ),
    )
    sd = SetDef.for_named_port(parse("all()"), "http", 6)
    sel = SetDef.for_selector(parse("has(x)"))
    got = _policy_texts(st_, "gnp/p", 4)
    assert got[0] == (
        f"-p tcp -m set --match-set {ipset_name(sel.id, 4)} dst -m multiport --dports 443 "
        "-j MARK --set-xmark 0x10000/0x10000"
    )
    # The named-port set already encodes the destination selector.
    sd = SetDef.for_named_port(parse("has(x)"), "http", 6)
    assert got[2] == (
        f"-p tcp -m set --match-set {ipset_name(sd.id, 4)} dst,dst "
        "-j MARK --set-xmark 0x10000/0x10000"
    )
    sets = {s.name: s for s in render_ipsets(st_, CFG)}
    assert sets[ipset_name(sd.id, 4)].set_type == "hash:ip,port"
    assert sets[ipset_name(sd.id, 4)].members == frozenset()  # w1 has no label x
    w_x = Endpoint(**{**_fields(w), "labels": FrozenLabels({**w.labels, "x": "1"})})
    st2 = state_of(w_x, *st_.policies.values())
    sets = {s.name: s for s in render_ipsets(st2, CFG)}
    assert sets[ipset_name(sd.id, 4)].members == {"10.65.0.1,tcp:8080"}
    assert sets[ipset_name(sd.id, 6)].members == {"fd00::1,tcp:8080"}
    assert sets[ipset_name(sd.id, 6)].family == "inet6"
    assert_integrity(st2, CFG)


def test_chain_names_fit_for_long_interfaces() -> None:
    assert len(endpoint_chain("fhf", "averylonginterf")) <= 28
    assert endpoint_chain("tw", "tbw1") == "tby-tw-tbw1"
    assert endpoint_chain("fh", "*") == "tby-fh-any"


def test_integrity_of_a_rich_state() -> None:
    w2 = wep("w2", ("10.65.0.2/32",), iface="tbw2abcdefghijk", profiles=("kns",))
    st_ = state_of(
        W1,
        w2,
        hep("h1", labels={"host": "y"}),
        hep("h2", iface="*", labels={"host": "y"}),
        Profile("kns", ingress=rules({"action": "Allow", "source": {"selector": "a == 'b'"}})),
        Tier("t", 1),
        gnp(
            "t.p",
            tier="t",
            ingress=rules(
                {"action": "Allow", "source": {"nets": ["10.0.0.0/8", "10.9.0.0/16"]}},
                {"action": "Allow", "source": {"nets": ["fd00::/8", "fd01::/16"]}},
                {"action": "Deny", "source": {"notNets": ["10.0.0.0/8", "10.1.0.0/16"]}},
                {"action": "Allow", "protocol": "TCP", "destination": {"notPorts": ["http"]}},
                {"action": "Log", "source": {"notSelector": "x == 'y'"}},
            ),
        ),
        gnp(
            "pd",
            "host == 'y'",
            pre_dnat=True,
            types=("Ingress",),
            ingress=rules({"action": "Deny"}),
        ),
        gnp("ut", "host == 'y'", do_not_track=True, ingress=rules({"action": "Allow"})),
        gnp("fw", "host == 'y'", apply_on_forward=True, egress=rules({"action": "Allow"})),
        Pool("p", ip_network("10.65.0.0/16"), nat_outgoing=True),
        Pool("p6", ip_network("fd00:65::/64"), nat_outgoing=True),
    )
    heps = {"hep/h1": ["eth0", "eth1"]}
    assert_integrity(st_, CFG, heps)
    tables = {(t.table, t.ip_version): t for t in render_tables(st_, CFG, heps)}
    raw = chains_of(tables[("raw", 4)])
    assert "tby-fhu-eth0" in raw and "tby-fhu-any" in raw
    mangle = chains_of(tables[("mangle", 4)])
    assert "-i eth1 -g tby-fhp-eth1" in texts(mangle["tby-PREROUTING"])
    assert texts(mangle["tby-PREROUTING"])[-1] == "-g tby-fhp-any"  # wildcard last


def test_missing_profile_is_not_jumped_to() -> None:
    """An endpoint naming a profile that does not exist must not jump to a missing chain
    (iptables-restore would reject the whole table)."""
    st_ = state_of(wep("w1", ("10.65.0.1/32",), iface="tbw1", profiles=("gone",)))
    assert_integrity(st_, CFG)


# ------------------------------------------------------------------------------- interpreter


@dataclass
class Pkt:
    src: IPAddr
    dst: IPAddr
    proto: int
    sport: int | None = None
    dport: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    iif: str = ""
    oif: str = ""
    mark: int = 0


_PROTO = {"tcp": 6, "udp": 17, "icmp": 1, "ipv6-icmp": 58, "sctp": 132, "udplite": 136}


def _iface_match(pattern: str, name: str) -> bool:
    if pattern.endswith("+"):
        return name.startswith(pattern[:-1])
    return name == pattern


class Interp:
    """Runs rendered chains of one table and family on synthetic packets."""

    def __init__(self, tr: TableRender, sets: list[IpSetRender]) -> None:
        self.chains = chains_of(tr)
        self.inserts = tr.inserts
        fam = "inet" if tr.ip_version == 4 else "inet6"
        self.sets = {s.name: s for s in sets if s.family == fam}
        self.steps = 0

    def run_builtin(self, name: str, pkt: Pkt) -> str:
        for r in self.inserts.get(name, ()):
            if self._matches(r.match, pkt):
                res = self._act(r.action, pkt)
                if res in ("ACCEPT", "DROP"):
                    return res
        return "ACCEPT"  # built-in policy

    def _run(self, name: str, pkt: Pkt) -> str:
        for r in self.chains[name].rules:
            self.steps += 1
            assert self.steps < 10_000, "loop"
            if not self._matches(r.match, pkt):
                continue
            res = self._act(r.action, pkt)
            if res != "CONTINUE":
                return res
        return "RETURN"

    def _act(self, action: str, pkt: Pkt) -> str:
        tok = shlex.split(action)
        if tok[0] == "-g":
            return self._run(tok[1], pkt)
        assert tok[0] == "-j", action
        target = tok[1]
        if target in ("ACCEPT", "DROP", "RETURN"):
            return target
        if target == "LOG":
            return "CONTINUE"
        if target == "MARK":
            assert tok[2] == "--set-xmark"
            val, mask = (int(x, 0) for x in tok[3].split("/"))
            pkt.mark = (pkt.mark & ~mask) ^ val
            return "CONTINUE"
        res = self._run(target, pkt)
        return "CONTINUE" if res == "RETURN" else res

    def _in_set(self, name: str, spec: str, pkt: Pkt) -> bool:
        s = self.sets[name]
        dirs = spec.split(",")
        ip = pkt.src if dirs[0] == "src" else pkt.dst
        if s.set_type == "hash:net":
            return any(ip in ip_network(m) for m in s.members)
        assert s.set_type == "hash:ip,port" and len(dirs) == 2
        port = pkt.sport if dirs[1] == "src" else pkt.dport
        name_ = {v: k for k, v in _PROTO.items()}.get(pkt.proto)
        return port is not None and f"{ip},{name_}:{port}" in s.members

    def _matches(self, match: str, pkt: Pkt) -> bool:
        tok = shlex.split(match)
        i = 0
        ok = True
        while i < len(tok):
            neg = False
            if tok[i] == "!":
                neg, i = True, i + 1
            t = tok[i]
            if t in ("-i", "-o"):
                res = _iface_match(tok[i + 1], pkt.iif if t == "-i" else pkt.oif)
                i += 2
            elif t in ("-s", "-d"):
                res = (pkt.src if t == "-s" else pkt.dst) in ip_network(tok[i + 1])
                i += 2
            elif t == "-p":
                res = pkt.proto == _PROTO[tok[i + 1]]
                i += 2
            elif t == "-m":
                mod = tok[i + 1]
                i += 2
                if tok[i] == "!":
                    neg, i = True, i + 1
                opt = tok[i]
                if mod == "conntrack":
                    res = "NEW" in tok[i + 1].split(",")
                    i += 2
                elif mod == "mark":
                    val, mask = (int(x, 0) for x in tok[i + 1].split("/"))
                    res = pkt.mark & mask == val
                    i += 2
                elif mod == "multiport":
                    port = pkt.sport if opt == "--sports" else pkt.dport
                    res = port is not None and any(
                        int(a) <= port <= int(b or a)
                        for a, _, b in (p.partition(":") for p in tok[i + 1].split(","))
                    )
                    i += 2
                elif mod == "set":
                    assert opt == "--match-set"
                    res = self._in_set(tok[i + 1], tok[i + 2], pkt)
                    i += 3
                elif mod in ("icmp", "icmp6"):
                    typ, _, code = tok[i + 1].partition("/")
                    res = pkt.icmp_type == int(typ) and (not code or pkt.icmp_code == int(code))
                    res = res and pkt.proto in (1, 58)
                    i += 2
                elif mod in ("tcp", "udp"):
                    assert opt == "--dport"
                    res = pkt.dport == int(tok[i + 1])
                    i += 2
                else:  # pragma: no cover
                    raise AssertionError(f"unknown match {mod} in {match!r}")
            else:  # pragma: no cover
                raise AssertionError(f"unknown token {t} in {match!r}")
            ok = ok and (res != neg)
        return ok


def forward_verdict(state: DesiredState, pkt: Pkt, v: int) -> str:
    tables = render_tables(state, CFG, {})
    tr = next(t for t in tables if t.table == "filter" and t.ip_version == v)
    return Interp(tr, render_ipsets(state, CFG)).run_builtin("FORWARD", pkt)


def test_interpreter_on_a_hand_written_case() -> None:
    st_ = state_of(
        W1,
        gnp(
            "p",
            types=("Ingress",),
            ingress=rules(
                {"action": "Deny", "protocol": "TCP", "destination": {"ports": [22]}},
                {"action": "Allow", "protocol": "TCP", "source": {"nets": ["10.70.0.0/16"]}},
            ),
        ),
    )
    src, dst = ip_address("10.70.0.5"), ip_address("10.65.0.1")
    base: dict[str, Any] = {
        "src": src,
        "dst": dst,
        "proto": 6,
        "sport": 999,
        "iif": "eth0",
        "oif": "tbw1",
    }
    assert forward_verdict(st_, Pkt(**base, dport=80), 4) == "ACCEPT"
    assert forward_verdict(st_, Pkt(**base, dport=22), 4) == "DROP"
    other = {**base, "src": ip_address("10.71.0.5")}
    assert forward_verdict(st_, Pkt(**other, dport=80), 4) == "DROP"  # end of tier
    # Unknown workload interface: dropped whatever the policy.
    assert forward_verdict(st_, Pkt(**{**base, "oif": "tbw9"}, dport=80), 4) == "DROP"
    # Egress from w1: no egress policy and no profile: dropped; spoofed source: dropped.
    out: dict[str, Any] = {
        "src": dst,
        "dst": src,
        "proto": 6,
        "sport": 1,
        "dport": 2,
        "iif": "tbw1",
        "oif": "eth0",
    }
    assert forward_verdict(st_, Pkt(**out), 4) == "DROP"
    # Non-workload traffic is not ours to judge.
    assert forward_verdict(st_, Pkt(**{**out, "iif": "eth1"}), 4) == "ACCEPT"


# -------------------------------------------------------------- differential test vs engine

LOCAL = wep("w0", ("10.65.0.1/32", "fd00::1/128"), iface="tbw0")
LOCAL2_IPS = ("10.65.0.2/32", "fd00::2/128")
PEER_IPS = {
    "p1": ("10.65.1.1/32", "fd00::11/128"),
    "p2": ("10.65.1.2/32", "fd00::12/128"),
}
# The network set also covers the remote peers (addresses with two owners).
NETSET_NETS = ("10.70.0.0/16", "fd00:70::/64", "10.65.1.0/24", "fd00::10/124")
UNKNOWN = ("10.80.0.1", "fd00:80::1")
_LABELS = st.dictionaries(st.sampled_from(["a", "b"]), st.sampled_from(["1", "2"]), max_size=2)
_SELS = ["a == '1'", "has(b)", "a == '2' || b == '1'", "!has(a)", "all()"]
_PORTS = [80, 443, 8080]


_NETS = {
    4: ["10.65.0.0/16", "10.70.0.0/16", "10.65.1.1/32", "10.65.1.0/24"],
    6: ["fd00::/64", "fd00:70::/64", "fd00::11/128", "fd00::/120"],
}


@st.composite
def _entity(draw: st.DrawFn, with_ports: bool, fam: int) -> dict[str, Any]:
    e: dict[str, Any] = {}
    if draw(st.integers(0, 3)) == 0:
        e["selector"] = draw(st.sampled_from(_SELS))
    if draw(st.integers(0, 6)) == 0:
        e["notSelector"] = draw(st.sampled_from(_SELS))
    k = draw(st.integers(0, 12))
    if k in (1, 2):
        e["nets"] = draw(st.lists(st.sampled_from(_NETS[fam]), min_size=1, max_size=k, unique=True))
    elif k in (3, 4):
        e["notNets"] = draw(
            st.lists(st.sampled_from(_NETS[fam]), min_size=1, max_size=k - 2, unique=True)
        )
    if with_ports:
        p = draw(st.integers(0, 4))
        if p == 1:
            e["ports"] = draw(
                st.lists(st.sampled_from([80, 443, "http", "8000:8100"]), min_size=1, max_size=2)
            )
        elif p == 2:
            e["notPorts"] = draw(st.lists(st.sampled_from([80, "http"]), min_size=1, max_size=2))
    return e


@st.composite
def _prule(draw: st.DrawFn, profile: bool = False) -> Rule:
    actions = ["Allow", "Allow", "Allow", "Deny", "Log", "Pass"]
    del profile  # profiles get Pass rules too (test_pass_bit_from_a_tier_does_not_cut...)
    d: dict[str, Any] = {"action": draw(st.sampled_from(actions))}
    proto = draw(st.sampled_from([None, None, None, "TCP", "UDP", "ICMP"]))
    ports = proto in ("TCP", "UDP")
    if proto is not None:
        d["protocol"] = proto
    if proto == "ICMP" and draw(st.booleans()):
        d["icmp"] = {"type": 8} if draw(st.booleans()) else {"type": 8, "code": 0}
    if proto is None and draw(st.integers(0, 3)) == 0:
        d["notProtocol"] = "UDP"
    fam = draw(st.sampled_from([4, 6]))
    if proto == "ICMP":
        fam = 4
    src = draw(_entity(False, fam))
    dst = draw(_entity(ports, fam))
    if src:
        d["source"] = src
    if dst:
        d["destination"] = dst
    return parse_rule(d)


@dataclass(frozen=True)
class Scenario:
    items: tuple[object, ...]
    tiers: Mapping[str, Tier]


@st.composite
def _scenario(draw: st.DrawFn) -> Scenario:
    http = (NamedPortSpec("http", 6, 8080), NamedPortSpec("http", 17, 80))
    profs = [
        Profile(
            name,
            ingress=tuple(draw(st.lists(_prule(profile=True), min_size=1, max_size=2))),
            egress=tuple(draw(st.lists(_prule(profile=True), min_size=1, max_size=2))),
        )
        for name in ("pr0", "pr1")
        if draw(st.sampled_from([True, True, False]))
    ]
    names = [p.name for p in profs] + ["missing"]  # a missing profile allows nothing
    items: list[object] = [
        *profs,
        Endpoint(
            **{
                **_fields(LOCAL),
                "labels": FrozenLabels({**draw(_LABELS), NAMESPACE_LABEL: "ns1"}),
                "profiles": tuple(draw(st.permutations(names))[: draw(st.integers(1, 2))]),
                "ports": http if draw(st.booleans()) else (),
            }
        ),
        wep(
            "w2",
            LOCAL2_IPS,
            iface="tbw2",
            labels=draw(_LABELS),
            ports=http if draw(st.booleans()) else (),
        ),
    ]
    for name, ips in PEER_IPS.items():
        items.append(
            wep(
                name,
                ips,
                node="node2",
                ns=draw(st.sampled_from(["ns1", "ns2"])),
                labels=draw(_LABELS),
                ports=(NamedPortSpec("http", 6, draw(st.sampled_from([80, 443]))),),
            )
        )
    items.append(
        NetworkSet(
            "gns/n", None, FrozenLabels(draw(_LABELS)), tuple(ip_network(n) for n in NETSET_NETS)
        )
    )
    tiers: dict[str, Tier] = {}
    if draw(st.booleans()):
        tiers["t1"] = Tier("t1", draw(st.sampled_from([None, 1.0, 5.0])))
        items.append(tiers["t1"])
    for i in range(draw(st.integers(1, 4))):
        tier = draw(st.sampled_from(["default", "t1"]))
        name = f"p{i}" if tier == "default" else f"t1.p{i}"
        types = tuple(
            draw(st.lists(st.sampled_from(["Ingress", "Egress"]), min_size=1, unique=True))
        )
        ns = draw(st.sampled_from([None, "ns1"]))
        sel = draw(st.sampled_from(["all()", "all()", "all()", *_SELS]))
        pol = Policy(
            key=f"gnp/{name}" if ns is None else f"np/{ns}/{name}",
            name=name,
            namespace=ns,
            tier=tier,
            order=draw(st.sampled_from([None, 1.0, 2.0])),
            selector=parse(sel if ns is None else f"({sel}) && {NAMESPACE_LABEL} == '{ns}'"),
            types=frozenset(types),
            ingress=tuple(draw(st.lists(_prule(), min_size=1, max_size=3))),
            egress=tuple(draw(st.lists(_prule(), min_size=1, max_size=3))),
        )
        items.append(pol)
    return Scenario(tuple(items), tiers)


def _resolver(items: tuple[object, ...], calc: Calculator) -> StaticResolver:
    r = StaticResolver()
    for it in items:
        if isinstance(it, Endpoint):
            labels = calc._eff_labels[it.key]
            ports = tuple((p.name, p.protocol, p.port) for p in it.ports)
            r.put(
                it.key,
                PeerInfo(labels, ports, it.key),
                ips=[n.network_address for n in it.nets],
            )
        elif isinstance(it, NetworkSet):
            r.put(it.key, PeerInfo(it.labels, (), it.key), nets=it.nets)
    return r


def _engine_verdict(
    state: DesiredState,
    ep_key: str,
    direction: str,
    pkt: Packet,
    scen: Scenario,
    resolver: StaticResolver,
) -> str:
    plan = state.endpoints[ep_key]
    tplans = plan.ingress if direction == "ingress" else plan.egress
    views = []
    for tp in tplans:
        for pk in tp.policies:
            p = state.policies[pk]
            views.append(
                PolicyView(p.name, p.tier, p.order, p.ingress, p.egress, p.types, p.namespace)
            )
    tiers = {"default": TierView("default", None)}
    tiers |= {t.name: TierView(t.name, t.order) for t in scen.tiers.values()}
    profiles = [
        ProfileView(n, state.profiles[n].ingress, state.profiles[n].egress)
        for n in plan.profiles
        if n in state.profiles
    ]
    v = evaluate(direction, pkt, views, tiers, profiles, resolver)  # type: ignore[arg-type]
    return "ACCEPT" if v.action == "allow" else "DROP"


def _packets(
    src: IPAddr, dst: IPAddr, iif: str, oif: str, p: int, port: int, itype: int, icode: int
) -> tuple[Packet, Pkt]:
    """The same packet for the engine and for the interpreter."""
    if p in (6, 17):
        ep = Packet(src, dst, p, src_port=40000, dst_port=port)
        return ep, Pkt(src, dst, p, sport=40000, dport=port, iif=iif, oif=oif)
    ep = Packet(src, dst, p, icmp_type=itype, icmp_code=icode)
    return ep, Pkt(src, dst, p, icmp_type=itype, icmp_code=icode, iif=iif, oif=oif)


_IP_VERSIONS: list[IpVersion] = [4, 6]
_PACKETS = st.tuples(
    st.sampled_from([6, 17, 1]),
    st.sampled_from(_PORTS),
    st.sampled_from([(8, 0), (0, 0)]),
    st.sampled_from(_IP_VERSIONS),
)


@settings(
    max_examples=int(__import__("os").environ.get("RENDER_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(scen=_scenario(), pkts=st.lists(_PACKETS, min_size=1, max_size=4))
def test_rendered_iptables_agree_with_policy_engine(
    scen: Scenario, pkts: list[tuple[int, int, tuple[int, int], IpVersion]]
) -> None:
    calc = Calculator(HOST)
    for it in scen.items:
        if isinstance(it, Endpoint):
            calc.set_endpoint(it.key, it)
        elif isinstance(it, Policy):
            calc.set_policy(it.key, it)
        elif isinstance(it, Profile):
            calc.set_profile(it.name, it)
        elif isinstance(it, Tier):
            calc.set_tier(it.name, it)
        elif isinstance(it, NetworkSet):
            calc.set_network_set(it.key, it)
    state = calc.state()
    resolver = _resolver(scen.items, calc)
    tables = render_tables(state, CFG, {})
    sets = render_ipsets(state, CFG)
    interp = {t.ip_version: Interp(t, sets) for t in tables if t.table == "filter"}
    k = 4
    for proto, port, (itype, icode), v in pkts:
        idx = 0 if v == 4 else 1
        local = LOCAL.nets[idx].network_address
        local2 = ip_network(LOCAL2_IPS[idx]).network_address
        remotes = [ip_network(ips[idx]).network_address for ips in PEER_IPS.values()]
        remotes.append(ip_network(NETSET_NETS[idx]).network_address + k)  # netset only
        remotes.append(ip_address(UNKNOWN[idx]))
        k += 1
        icmp_proto = 1 if v == 4 else 58
        p = icmp_proto if proto == 1 else proto

        pk = (p, port, itype, icode)
        for remote in remotes:
            # Ingress to w0 from a remote address.
            ep_pkt, ipt_pkt = _packets(remote, local, "eth0", "tbw0", *pk)
            want = _engine_verdict(state, LOCAL.key, "ingress", ep_pkt, scen, resolver)
            got = interp[v].run_builtin("FORWARD", ipt_pkt)
            assert got == want, f"ingress {ep_pkt} iptables={got} engine={want}"
            # Egress from w0 to a remote address.
            ep_pkt, ipt_pkt = _packets(local, remote, "tbw0", "eth0", *pk)
            want = _engine_verdict(state, LOCAL.key, "egress", ep_pkt, scen, resolver)
            got = interp[v].run_builtin("FORWARD", ipt_pkt)
            assert got == want, f"egress {ep_pkt} iptables={got} engine={want}"
        # Local workload to local workload: egress of w0 and ingress of w2 must both allow.
        ep_pkt, ipt_pkt = _packets(local, local2, "tbw0", "tbw2", *pk)
        out = _engine_verdict(state, LOCAL.key, "egress", ep_pkt, scen, resolver)
        inn = _engine_verdict(state, "wep/ns1/w2", "ingress", ep_pkt, scen, resolver)
        want = "ACCEPT" if out == inn == "ACCEPT" else "DROP"
        assert interp[v].run_builtin("FORWARD", ipt_pkt) == want


@pytest.mark.parametrize("first_profile_passes", [False, True])
def test_pass_bit_from_a_tier_does_not_cut_profiles_short(first_profile_passes: bool) -> None:
    """Tier passes; the profile has a non-matching Pass rule, then Allow: the engine allows."""
    profile_rules = rules(
        {"action": "Pass", "source": {"nets": ["10.99.0.0/16"]}},
        {"action": "Allow"},
    )
    w = wep("w1", ("10.65.0.1/32",), iface="tbw1", profiles=("a", "b"))
    items: list[object] = [w, Profile("b", ingress=profile_rules)]
    if first_profile_passes:
        items += [Profile("a", ingress=rules({"action": "Pass"}))]
    else:
        items += [
            Profile("a"),
            gnp("p", types=("Ingress",), ingress=rules({"action": "Pass"})),
        ]
    st_ = state_of(*items)
    pkt = Pkt(ip_address("10.70.0.1"), ip_address("10.65.0.1"), 6, 1, 80, iif="eth0", oif="tbw1")
    assert forward_verdict(st_, pkt, 4) == "ACCEPT"


def test_not_named_ports_only_count_endpoints_matching_the_selector() -> None:
    """10.65.1.1 belongs to a network set (a=1) and to an endpoint (no labels) that declares
    http=80. ``selector: a == '1', notPorts: [http]``: the endpoint does not match the selector,
    so its named port does not exclude port 80 (policy.engine; Calico's named-port sets)."""
    items = (
        W1,
        wep("p1", ("10.65.1.1/32",), node="node2", ports=(NamedPortSpec("http", 6, 80),)),
        NetworkSet("gns/n", None, FrozenLabels({"a": "1"}), (ip_network("10.65.1.0/24"),)),
        gnp(
            "p",
            types=("Egress",),
            egress=rules(
                {
                    "action": "Allow",
                    "protocol": "TCP",
                    "destination": {"selector": "a == '1'", "notPorts": ["http"]},
                }
            ),
        ),
    )
    st_ = state_of(*items)
    pkt = Pkt(ip_address("10.65.0.1"), ip_address("10.65.1.1"), 6, 1, 80, iif="tbw1", oif="eth0")
    resolver = StaticResolver()
    resolver.put("p1", PeerInfo({NAMESPACE_LABEL: "ns1"}, (("http", 6, 80),)), ips=[pkt.dst])
    resolver.put("n", PeerInfo({"a": "1"}), nets=[ip_network("10.65.1.0/24")])
    pol = st_.policies["gnp/p"]
    view = PolicyView(pol.name, pol.tier, pol.order, pol.ingress, pol.egress, pol.types)
    engine = evaluate(
        "egress",
        Packet(pkt.src, pkt.dst, 6, 1, 80),
        [view],
        {"default": TierView("default", None)},
        [],
        resolver,
    )
    assert engine.action == "allow"
    assert forward_verdict(st_, pkt, 4) == "ACCEPT"


@pytest.mark.parametrize("v", [4, 6])
def test_interpreter_spoofed_source_dropped(v: int) -> None:
    st_ = state_of(W1, gnp("allow", egress=rules({"action": "Allow"})))
    src = ip_address("10.65.0.9" if v == 4 else "fd00::9")
    dst = ip_address("10.80.0.1" if v == 4 else "fd00:80::1")
    real = W1.nets[0 if v == 4 else 1].network_address
    kw: dict[str, Any] = {"proto": 17, "sport": 1, "dport": 2, "iif": "tbw1", "oif": "eth0"}
    assert forward_verdict(st_, Pkt(src, dst, **kw), v) == "DROP"
    assert forward_verdict(st_, Pkt(real, dst, **kw), v) == "ACCEPT"
