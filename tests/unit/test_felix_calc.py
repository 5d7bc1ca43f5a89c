"""felix.calc: state-sequence tests (incremental == from scratch == naive reference), semantics.

Every sequence is a list of complete datastore states. Feeding the differences between
consecutive states into a Calculator must always give the same ``state()`` as a fresh calculator
fed only the current state, and the same as a naive reference computed here from first
principles. Each sequence also runs reversed, with empty states inserted and squashed.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from felix.calc import Calculator, DesiredState, EndpointPlan, SetState, TierPlan
from felix.ipsetdefs import SetDef, rule_sets
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
from policy.ordering import DEFAULT_TIER, sort_key
from policy.rules import Rule, parse_rule
from policy.selector import parse

HOST = "node1"

# --------------------------------------------------------------------------------------- builders


def net(text: str) -> IPv4Network | IPv6Network:
    return ip_network(text)


def wep(
    name: str,
    ip: str | tuple[str, ...],
    *,
    ns: str = "ns1",
    node: str = HOST,
    labels: Mapping[str, str] | None = None,
    profiles: tuple[str, ...] = (),
    ports: tuple[NamedPortSpec, ...] = (),
    iface: str | None = None,
) -> Endpoint:
    ips = (ip,) if isinstance(ip, str) else ip
    nets = [net(i) for i in ips]
    lab = dict(labels or {})
    lab[NAMESPACE_LABEL] = ns
    return Endpoint(
        key=f"wep/{ns}/{name}",
        kind="workload",
        node=node,
        name=name,
        namespace=ns,
        iface=iface or f"tbw{name}"[:15],
        ipv4=tuple(n for n in nets if isinstance(n, IPv4Network)),
        ipv6=tuple(n for n in nets if isinstance(n, IPv6Network)),
        labels=FrozenLabels(lab),
        profiles=profiles,
        ports=ports,
    )


def hep(
    name: str,
    ips: tuple[str, ...] = (),
    *,
    node: str = HOST,
    iface: str = "eth0",
    labels: Mapping[str, str] | None = None,
    profiles: tuple[str, ...] = (),
) -> Endpoint:
    nets = [net(i) for i in ips]
    return Endpoint(
        key=f"hep/{name}",
        kind="host",
        node=node,
        name=name,
        namespace=None,
        iface=iface,
        ipv4=tuple(n for n in nets if isinstance(n, IPv4Network)),
        ipv6=tuple(n for n in nets if isinstance(n, IPv6Network)),
        labels=FrozenLabels(labels or {}),
        profiles=profiles,
    )


def rules(*dicts: dict[str, Any]) -> tuple[Rule, ...]:
    return tuple(parse_rule(d) for d in dicts)


def gnp(
    name: str,
    selector: str = "all()",
    *,
    tier: str = DEFAULT_TIER,
    order: float | None = None,
    types: tuple[str, ...] = ("Ingress", "Egress"),
    ingress: tuple[Rule, ...] = (),
    egress: tuple[Rule, ...] = (),
    pre_dnat: bool = False,
    do_not_track: bool = False,
    apply_on_forward: bool = False,
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
        pre_dnat=pre_dnat,
        do_not_track=do_not_track,
        apply_on_forward=apply_on_forward,
    )


def np_(
    ns: str,
    name: str,
    selector: str = "all()",
    *,
    tier: str = DEFAULT_TIER,
    order: float | None = None,
    types: tuple[str, ...] = ("Ingress", "Egress"),
    ingress: tuple[Rule, ...] = (),
    egress: tuple[Rule, ...] = (),
) -> Policy:
    """A NetworkPolicy as felix.inputs builds it (selector scoped to the namespace)."""
    return Policy(
        key=f"np/{ns}/{name}",
        name=name,
        namespace=ns,
        tier=tier,
        order=order,
        selector=parse(f"({selector}) && {NAMESPACE_LABEL} == '{ns}'"),
        types=frozenset(types),
        ingress=ingress,
        egress=egress,
    )


def prof(
    name: str,
    *,
    labels: Mapping[str, str] | None = None,
    ingress: tuple[Rule, ...] = (),
    egress: tuple[Rule, ...] = (),
) -> Profile:
    return Profile(name, ingress, egress, FrozenLabels(labels or {}))


def gns(name: str, nets: tuple[str, ...], labels: Mapping[str, str]) -> NetworkSet:
    return NetworkSet(f"gns/{name}", None, FrozenLabels(labels), tuple(net(n) for n in nets))


# --------------------------------------------------------------------------------------- worlds

KINDS = ("tiers", "profiles", "policies", "netsets", "pools", "endpoints")


@dataclass(frozen=True)
class World:
    """One complete datastore state (what felix would see after a full sync)."""

    endpoints: Mapping[str, Endpoint] = field(default_factory=dict)
    policies: Mapping[str, Policy] = field(default_factory=dict)
    profiles: Mapping[str, Profile] = field(default_factory=dict)
    tiers: Mapping[str, Tier] = field(default_factory=dict)
    netsets: Mapping[str, NetworkSet] = field(default_factory=dict)
    pools: Mapping[str, Pool] = field(default_factory=dict)


def world(*items: object) -> World:
    eps: dict[str, Endpoint] = {}
    pols: dict[str, Policy] = {}
    profs: dict[str, Profile] = {}
    tiers: dict[str, Tier] = {}
    nsets: dict[str, NetworkSet] = {}
    pools: dict[str, Pool] = {}
    for it in items:
        if isinstance(it, Endpoint):
            eps[it.key] = it
        elif isinstance(it, Policy):
            pols[it.key] = it
        elif isinstance(it, Profile):
            profs[it.name] = it
        elif isinstance(it, Tier):
            tiers[it.name] = it
        elif isinstance(it, NetworkSet):
            nsets[it.key] = it
        elif isinstance(it, Pool):
            pools[it.name] = it
        else:  # pragma: no cover
            raise TypeError(it)
    return World(eps, pols, profs, tiers, nsets, pools)


EMPTY = World()


def _setter(calc: Calculator, kind: str) -> Callable[[str, Any], None]:
    setters: dict[str, Callable[[str, Any], None]] = {
        "endpoints": calc.set_endpoint,
        "policies": calc.set_policy,
        "profiles": calc.set_profile,
        "tiers": calc.set_tier,
        "netsets": calc.set_network_set,
        "pools": calc.set_pool,
    }
    return setters[kind]


def feed(
    calc: Calculator, old: World, new: World, order: tuple[str, ...] = KINDS, rnd: Any = None
) -> None:
    """Apply the difference old -> new as set_* calls (kind order and key order selectable)."""
    calls: list[tuple[str, str, Any]] = []
    for kind in order:
        o: Mapping[str, Any] = getattr(old, kind)
        n: Mapping[str, Any] = getattr(new, kind)
        for key in sorted(set(o) | set(n)):
            if o.get(key) != n.get(key):
                calls.append((kind, key, n.get(key)))
    if rnd is not None:
        rnd.shuffle(calls)
    for kind, key, value in calls:
        _setter(calc, kind)(key, value)


def scratch(w: World, host: str = HOST) -> DesiredState:
    calc = Calculator(host)
    feed(calc, EMPTY, w)
    return calc.state()


# --------------------------------------------------------------------------- naive reference


def effective_labels(ep: Endpoint, profiles: Mapping[str, Profile]) -> dict[str, str]:
    """Calico: the endpoint's own labels, then each profile's labelsToApply in profile order
    (an earlier profile wins over a later one)."""
    out = dict(ep.labels)
    for name in ep.profiles:
        p = profiles.get(name)
        if p is None:
            continue
        for k, v in p.labels_to_apply.items():
            out.setdefault(k, v)
    return out


def applies(pol: Policy, ep: Endpoint, labels: Mapping[str, str]) -> bool:
    if ep.kind == "workload" and (pol.pre_dnat or pol.do_not_track):
        return False
    if pol.namespace is not None and (ep.kind != "workload" or ep.namespace != pol.namespace):
        return False
    return pol.selector.evaluate(labels)


def naive_tiers(w: World, pols: list[Policy], want: str, variant: str) -> tuple[TierPlan, ...]:
    keep: list[Policy] = []
    for p in pols:
        if want not in p.types:
            continue
        if p.tier != DEFAULT_TIER and p.tier not in w.tiers:
            continue
        ok = {
            "normal": not p.pre_dnat and not p.do_not_track,
            "forward": p.apply_on_forward and not p.pre_dnat and not p.do_not_track,
            "pre_dnat": p.pre_dnat,
            "untracked": p.do_not_track,
        }[variant]
        if ok:
            keep.append(p)
    tier_names = sorted(
        {p.tier for p in keep},
        key=lambda t: sort_key(w.tiers[t].order if t in w.tiers else None, t),
    )
    return tuple(
        TierPlan(
            t,
            tuple(
                p.key
                for p in sorted(
                    (p for p in keep if p.tier == t), key=lambda p: sort_key(p.order, p.name)
                )
            ),
        )
        for t in tier_names
    )


def naive_members(w: World, sdef: SetDef) -> tuple[frozenset[str], frozenset[str]]:
    out: set[str] = set()

    def text(n: IPv4Network | IPv6Network) -> str:
        return str(n.network_address) if n.prefixlen == n.max_prefixlen else str(n)

    if sdef.kind == "nets":
        out = {text(n) for n in sdef.nets}
    else:
        assert sdef.selector is not None
        for ep in w.endpoints.values():
            if not sdef.selector.evaluate(effective_labels(ep, w.profiles)):
                continue
            if sdef.kind == "selector":
                out |= {text(n) for n in ep.nets}
            else:
                proto = {6: "tcp", 17: "udp", 132: "sctp"}[sdef.protocol or 6]
                for p in ep.ports:
                    if p.name == sdef.port_name and p.protocol == sdef.protocol:
                        out |= {f"{n.network_address},{proto}:{p.port}" for n in ep.nets}
        if sdef.kind == "selector":
            for ns in w.netsets.values():
                if sdef.selector.evaluate(ns.labels):
                    out |= {text(n) for n in ns.nets}
    v6 = frozenset(m for m in out if ":" in m.split(",")[0])
    return frozenset(out) - v6, v6


def naive(w: World, host: str = HOST) -> DesiredState:
    plans: dict[str, EndpointPlan] = {}
    active: dict[str, Policy] = {}
    active_profiles: dict[str, Profile] = {}
    for key, ep in w.endpoints.items():
        if ep.node != host:
            continue
        labels = effective_labels(ep, w.profiles)
        pols = [p for p in w.policies.values() if applies(p, ep, labels)]
        for p in pols:
            active[p.key] = p
        for name in ep.profiles:
            if name in w.profiles:
                active_profiles[name] = w.profiles[name]
        common: dict[str, Any] = {
            "endpoint": ep,
            "ingress": naive_tiers(w, pols, "Ingress", "normal"),
            "egress": naive_tiers(w, pols, "Egress", "normal"),
            "profiles": ep.profiles,
        }
        if ep.kind == "host":
            common |= {
                "forward_ingress": naive_tiers(w, pols, "Ingress", "forward"),
                "forward_egress": naive_tiers(w, pols, "Egress", "forward"),
                "pre_dnat_ingress": naive_tiers(w, pols, "Ingress", "pre_dnat"),
                "untracked_ingress": naive_tiers(w, pols, "Ingress", "untracked"),
                "untracked_egress": naive_tiers(w, pols, "Egress", "untracked"),
            }
        plans[key] = EndpointPlan(**common)
    defs: dict[str, SetDef] = {}
    for pol in active.values():
        for r in (*pol.ingress, *pol.egress):
            for sd in rule_sets(r, pol.namespace).all():
                defs[sd.id] = sd
    for prof in active_profiles.values():
        for r in (*prof.ingress, *prof.egress):
            for sd in rule_sets(r, None).all():
                defs[sd.id] = sd
    sets = {sid: SetState(sd, *naive_members(w, sd)) for sid, sd in defs.items()}
    return DesiredState(plans, active, active_profiles, sets, dict(w.pools))


# --------------------------------------------------------------------------------- sequence runs


def tiers_of(state: DesiredState, ep_key: str, direction: str = "ingress") -> list[tuple[str, ...]]:
    plan = state.endpoints[ep_key]
    return [(t.name, *t.policies) for t in getattr(plan, direction)]


def members(state: DesiredState, sd: SetDef) -> set[str]:
    st_ = state.sets[sd.id]
    return set(st_.members_v4 | st_.members_v6)


Check = Callable[[DesiredState], None]


def run_sequence(steps: list[tuple[World, Check | None]]) -> DesiredState:
    """Feed the steps; after each one compare with from-scratch and the naive reference and
    verify dirty tracking; return the final state."""
    calc = Calculator(HOST)
    prev_w = EMPTY
    prev_state = calc.state()
    calc.take_dirty()
    for w, check in steps:
        feed(calc, prev_w, w)
        got = calc.state()
        assert got == scratch(w), "incremental differs from from-scratch"
        assert got == naive(w), "calculator differs from the naive reference"
        assert_dirty_covers(prev_state, got, calc)
        if check is not None:
            check(got)
        prev_w, prev_state = w, got
    return prev_state


def assert_dirty_covers(before: DesiredState, after: DesiredState, calc: Calculator) -> None:
    dirty = calc.take_dirty()
    for attr, got in (
        ("endpoints", dirty.endpoints),
        ("policies", dirty.policies),
        ("profiles", dirty.profiles),
        ("sets", dirty.sets),
    ):
        old: Mapping[str, Any] = getattr(before, attr)
        new: Mapping[str, Any] = getattr(after, attr)
        changed = {k for k in set(old) | set(new) if old.get(k) != new.get(k)}
        assert changed <= got, f"{attr} changed but not dirty: {sorted(changed - got)}"
    if before.pools != after.pools:
        assert dirty.pools


def run_all_variants(steps: list[tuple[World, Check | None]]) -> None:
    final_w = steps[-1][0]
    expected = scratch(final_w)
    forward = run_sequence(steps)
    assert forward == expected
    rev = run_sequence(list(reversed(steps)))
    assert rev == scratch(steps[0][0])
    with_empty: list[tuple[World, Check | None]] = []
    for s in steps:
        with_empty += [s, (EMPTY, check_empty)]
    with_empty.append(steps[-1])
    assert run_sequence(with_empty) == expected
    assert run_sequence([steps[-1]]) == expected
    # Random call order inside each step.
    rnd = random.Random(7)
    calc = Calculator(HOST)
    prev = EMPTY
    for w, _ in steps:
        feed(calc, prev, w, order=tuple(rnd.sample(KINDS, len(KINDS))), rnd=rnd)
        assert calc.state() == scratch(w)
        prev = w


def check_empty(state: DesiredState) -> None:
    assert state.endpoints == {}
    assert state.policies == {}
    assert state.profiles == {}
    assert state.sets == {}
    assert state.pools == {}


# --------------------------------------------------------------------------------- sequence A
# A namespace with a frontend and a backend, a global default policy, tiers coming and going.

ALLOW_FROM_FRONTEND = rules(
    {"action": "Allow", "protocol": "TCP", "source": {"selector": "role == 'frontend'"}}
)
ALLOW_DNS_OUT = rules(
    {
        "action": "Allow",
        "protocol": "UDP",
        "destination": {"nets": ["10.96.0.10/32", "10.96.0.11/32"], "ports": [53]},
    }
)
DENY_BAD = rules({"action": "Deny", "source": {"selector": "quarantine == 'true'"}})
PASS_ALL = rules({"action": "Pass"})
FE_SET = SetDef.for_selector(parse("role == 'frontend'"))
# NetworkPolicy rules are scoped to the policy's namespace.
FE_SET_NS1 = SetDef.for_selector(
    parse(f"{NAMESPACE_LABEL} == 'ns1' && role == 'frontend'"),
)
DNS_NETS = SetDef.for_nets(frozenset({net("10.96.0.10/32"), net("10.96.0.11/32")}))
BAD_SET = SetDef.for_selector(parse("quarantine == 'true'"))

A0 = world(
    wep("be1", "10.65.0.1/32", labels={"role": "backend"}),
    wep("fe1", "10.65.1.1/32", node="node2", labels={"role": "frontend"}),
    gnp("default-egress", "all()", types=("Egress",), egress=ALLOW_DNS_OUT, order=1000),
)
A1 = world(
    *A0.endpoints.values(),
    *A0.policies.values(),
    wep("fe2", "10.65.0.2/32", labels={"role": "frontend"}),
    wep("fe3", ("10.65.1.3/32", "fd00::3/128"), node="node3", labels={"role": "frontend"}),
    np_("ns1", "backend-ingress", "role == 'backend'", order=10, ingress=ALLOW_FROM_FRONTEND),
    np_("ns2", "other-ns", "all()", ingress=ALLOW_FROM_FRONTEND),
    gns("office", ("192.168.0.0/16",), {"role": "frontend"}),
    Pool("pool1", net("10.65.0.0/16"), nat_outgoing=True),
)
A2 = world(
    *A1.endpoints.values(),
    *A1.policies.values(),
    *A1.netsets.values(),
    *A1.pools.values(),
    Tier("security", 10),
    gnp("security.quarantine", "all()", tier="security", order=1, ingress=DENY_BAD),
    gnp("security.pass", "all()", tier="security", order=2, types=("Ingress",), ingress=PASS_ALL),
    Tier("platform", 5),
    gnp("platform.observe", "role == 'backend'", tier="platform", types=("Ingress",)),
    wep("q1", "10.65.1.9/32", node="node2", labels={"quarantine": "true"}),
)
A3 = world(
    # The platform tier is deleted (its policy stays but is not enforced); fe2 moves away;
    # be1 becomes a frontend too.
    *[e for k, e in A2.endpoints.items() if k not in ("wep/ns1/fe2", "wep/ns1/be1")],
    wep("fe2", "10.65.0.2/32", node="node2", labels={"role": "frontend"}),
    wep("be1", "10.65.0.1/32", labels={"role": "backend", "extra": "x"}),
    *A2.policies.values(),
    *A2.netsets.values(),
    Tier("security", 10),
    Pool("pool1", net("10.65.0.0/16"), nat_outgoing=False),
)


def check_a0(s: DesiredState) -> None:
    assert set(s.endpoints) == {"wep/ns1/be1"}
    assert tiers_of(s, "wep/ns1/be1", "egress") == [("default", "gnp/default-egress")]
    assert tiers_of(s, "wep/ns1/be1", "ingress") == []
    assert members(s, DNS_NETS) == {"10.96.0.10", "10.96.0.11"}


def check_a1(s: DesiredState) -> None:
    assert set(s.endpoints) == {"wep/ns1/be1", "wep/ns1/fe2"}
    assert tiers_of(s, "wep/ns1/be1") == [("default", "np/ns1/backend-ingress")]
    assert tiers_of(s, "wep/ns1/fe2") == []  # not role=backend
    assert "np/ns2/other-ns" not in s.policies  # other namespace
    # Namespaced rule: frontends of ns1 only (fe1, fe2; fe3 is ns1 too; not the netset).
    assert members(s, FE_SET_NS1) == {"10.65.1.1", "10.65.0.2", "10.65.1.3", "fd00::3"}
    assert s.sets[FE_SET_NS1.id].members_v6 == frozenset({"fd00::3"})
    assert FE_SET.id not in s.sets
    assert set(s.pools) == {"pool1"}


def check_a2(s: DesiredState) -> None:
    assert tiers_of(s, "wep/ns1/be1") == [
        ("platform", "gnp/platform.observe"),
        ("security", "gnp/security.quarantine", "gnp/security.pass"),
        ("default", "np/ns1/backend-ingress"),
    ]
    assert tiers_of(s, "wep/ns1/fe2") == [
        ("security", "gnp/security.quarantine", "gnp/security.pass")
    ]
    assert tiers_of(s, "wep/ns1/fe2", "egress") == [
        ("security", "gnp/security.quarantine"),
        ("default", "gnp/default-egress"),
    ]
    assert members(s, BAD_SET) == {"10.65.1.9"}


def check_a3(s: DesiredState) -> None:
    assert set(s.endpoints) == {"wep/ns1/be1"}
    # No Tier resource for "platform": its policy is not enforced.
    assert tiers_of(s, "wep/ns1/be1") == [
        ("security", "gnp/security.quarantine", "gnp/security.pass"),
        ("default", "np/ns1/backend-ingress"),
    ]
    assert members(s, FE_SET_NS1) == {"10.65.1.1", "10.65.0.2", "10.65.1.3", "fd00::3"}
    assert s.pools["pool1"].nat_outgoing is False


SEQ_A: list[tuple[World, Check | None]] = [
    (A0, check_a0),
    (A1, check_a1),
    (A2, check_a2),
    (A3, check_a3),
]


def test_sequence_a_namespaces_and_tiers() -> None:
    run_all_variants(SEQ_A)


# --------------------------------------------------------------------------------- sequence B
# Profiles with labelsToApply, and named ports.

HTTP = NamedPortSpec("http", 6, 8080)
HTTP_ALT = NamedPortSpec("http", 6, 9090)
DNS_UDP = NamedPortSpec("dns", 17, 53)
ALLOW_HTTP_TO_WEB = rules(
    {
        "action": "Allow",
        "protocol": "TCP",
        "destination": {"selector": "app == 'web'", "ports": ["http"]},
    }
)
ALLOW_DNS_NAMED = rules({"action": "Allow", "protocol": "UDP", "destination": {"ports": ["dns"]}})
HTTP_SET = SetDef.for_named_port(parse("app == 'web'"), "http", 6)
DNS_SET = SetDef.for_named_port(parse("all()"), "dns", 17)
TEAM_A_SET = SetDef.for_selector(parse("team == 'a'"))

B0 = world(
    prof("kns.ns1", labels={"team": "a", "app": "web"}),
    wep("web1", "10.65.0.1/32", profiles=("kns.ns1",), ports=(HTTP,)),
    wep("web2", "10.65.1.2/32", node="node2", labels={"app": "web"}, ports=(HTTP_ALT, DNS_UDP)),
    wep("cli", "10.65.0.3/32", labels={"app": "client"}, profiles=("kns.ns1",)),
    gnp("web-egress", "app == 'client'", types=("Egress",), egress=ALLOW_HTTP_TO_WEB),
    gnp("team-a", "team == 'a'", types=("Ingress",), ingress=ALLOW_DNS_NAMED),
)
B1 = world(
    # The profile's labels change: cli is no longer on team a, web1 no longer a web app.
    prof(
        "kns.ns1",
        labels={"team": "b", "app": "db"},
        ingress=rules({"action": "Allow", "source": {"selector": "team == 'a'"}}),
    ),
    *B0.endpoints.values(),
    *B0.policies.values(),
)
B2 = world(
    # A second profile; the earlier profile's labels win over the later one's.
    prof("kns.ns1", labels={"team": "b", "app": "db"}),
    prof("sa.default", labels={"team": "a", "app": "web", "tier": "gold"}),
    wep("web1", "10.65.0.1/32", profiles=("kns.ns1", "sa.default"), ports=(HTTP,)),
    wep("cli", "10.65.0.3/32", labels={"app": "client", "team": "a"}, profiles=("kns.ns1",)),
    B0.endpoints["wep/ns1/web2"],
    *B0.policies.values(),
)


def check_b0(s: DesiredState) -> None:
    # cli's own label app=client overrides the profile's app=web.
    assert tiers_of(s, "wep/ns1/cli", "egress") == [("default", "gnp/web-egress")]
    assert tiers_of(s, "wep/ns1/cli") == [("default", "gnp/team-a")]
    assert tiers_of(s, "wep/ns1/web1") == [("default", "gnp/team-a")]
    assert tiers_of(s, "wep/ns1/web1", "egress") == []
    assert members(s, HTTP_SET) == {"10.65.0.1,tcp:8080", "10.65.1.2,tcp:9090"}
    assert members(s, DNS_SET) == {"10.65.1.2,udp:53"}
    assert set(s.profiles) == {"kns.ns1"}


def check_b1(s: DesiredState) -> None:
    assert tiers_of(s, "wep/ns1/cli") == []
    assert tiers_of(s, "wep/ns1/cli", "egress") == [("default", "gnp/web-egress")]
    assert "gnp/team-a" not in s.policies
    assert DNS_SET.id not in s.sets
    assert members(s, HTTP_SET) == {"10.65.1.2,tcp:9090"}  # web1 is app=db now
    assert members(s, TEAM_A_SET) == set()  # the profile's own rule; nobody is team a


def check_b2(s: DesiredState) -> None:
    assert tiers_of(s, "wep/ns1/web1") == []  # team=b from the first profile wins
    assert tiers_of(s, "wep/ns1/cli") == [("default", "gnp/team-a")]
    assert members(s, HTTP_SET) == {"10.65.1.2,tcp:9090"}  # app=db from the first profile
    assert set(s.profiles) == {"kns.ns1", "sa.default"}
    assert TEAM_A_SET.id not in s.sets


SEQ_B: list[tuple[World, Check | None]] = [(B0, check_b0), (B1, check_b1), (B2, check_b2)]


def test_sequence_b_profiles_and_named_ports() -> None:
    run_all_variants(SEQ_B)


# --------------------------------------------------------------------------------- sequence C
# Host endpoints: normal, forward, untracked and pre-DNAT policy; workloads never get the latter.

C0 = world(
    hep("node1-eth0", ("198.51.100.1/32",), labels={"host": "yes"}),
    hep("node2-eth0", ("198.51.100.2/32",), node="node2", labels={"host": "yes"}),
    wep("w1", "10.65.0.1/32", labels={"host": "yes"}),
    gnp("host-normal", "host == 'yes'", order=1),
    gnp("host-fwd", "host == 'yes'", order=2, apply_on_forward=True),
    gnp("host-untracked", "host == 'yes'", order=3, do_not_track=True, apply_on_forward=True),
    gnp(
        "host-prednat",
        "host == 'yes'",
        order=4,
        pre_dnat=True,
        apply_on_forward=True,
        types=("Ingress",),
        ingress=rules({"action": "Deny", "source": {"selector": "bad == 'x'"}}),
    ),
    np_("ns1", "ns-pol", "all()"),
)
C1 = world(
    *C0.endpoints.values(),
    *[p for k, p in C0.policies.items() if k != "gnp/host-fwd"],
    gnp("host-fwd", "host == 'yes'", order=0.5, apply_on_forward=True, types=("Egress",)),
    hep("node1-all", (), iface="*", labels={"host": "yes"}),
)


def check_c0(s: DesiredState) -> None:
    plan = s.endpoints["hep/node1-eth0"]
    assert [t.policies for t in plan.ingress] == [("gnp/host-normal", "gnp/host-fwd")]
    assert [t.policies for t in plan.forward_ingress] == [("gnp/host-fwd",)]
    assert [t.policies for t in plan.forward_egress] == [("gnp/host-fwd",)]
    assert [t.policies for t in plan.untracked_ingress] == [("gnp/host-untracked",)]
    assert [t.policies for t in plan.untracked_egress] == [("gnp/host-untracked",)]
    assert [t.policies for t in plan.pre_dnat_ingress] == [("gnp/host-prednat",)]
    # Namespaced policy never applies to a host endpoint.
    assert "np/ns1/ns-pol" in s.policies  # (it applies to w1)
    assert all("np/ns1/ns-pol" not in t.policies for t in plan.ingress)
    w1 = s.endpoints["wep/ns1/w1"]
    assert [t.policies for t in w1.ingress] == [
        ("gnp/host-normal", "gnp/host-fwd", "np/ns1/ns-pol")
    ]
    assert w1.pre_dnat_ingress == () and w1.untracked_ingress == () and w1.forward_ingress == ()
    assert "hep/node2-eth0" not in s.endpoints


def check_c1(s: DesiredState) -> None:
    plan = s.endpoints["hep/node1-eth0"]
    assert [t.policies for t in plan.forward_ingress] == []
    assert [t.policies for t in plan.forward_egress] == [("gnp/host-fwd",)]
    assert [t.policies for t in plan.egress] == [("gnp/host-fwd", "gnp/host-normal")]
    assert "hep/node1-all" in s.endpoints


SEQ_C: list[tuple[World, Check | None]] = [(C0, check_c0), (C1, check_c1)]


def test_sequence_c_host_endpoints() -> None:
    run_all_variants(SEQ_C)


# --------------------------------------------------------------------------------- sequence D
# Shared IPs (refcounted set members), network sets, nets sets, endpoints that change node.

SHARED_SEL = SetDef.for_selector(parse("shared == 'y'"))
D0 = world(
    wep("a", "10.65.0.1/32", labels={"shared": "y"}),
    wep("b", "10.65.0.1/32", ns="ns2", node="node2", labels={"shared": "y"}),
    gns("n1", ("10.65.0.1/32", "10.200.0.0/24"), {"shared": "y"}),
    gnp(
        "use", "all()", ingress=rules({"action": "Allow", "source": {"selector": "shared == 'y'"}})
    ),
)
D1 = world(
    wep("a", "10.65.0.1/32", labels={"shared": "n"}),
    D0.endpoints["wep/ns2/b"],
    *D0.policies.values(),
)
D2 = world(
    wep("a", "10.65.0.1/32", labels={"shared": "n"}),
    gns("n1", ("10.200.0.0/24",), {"shared": "y"}),
    *D0.policies.values(),
)
D3 = world(
    wep("a", "10.65.0.1/32", node="node9", labels={"shared": "y"}),
    wep("c", "10.65.0.7/32", labels={}),
    gns("n1", ("10.200.0.0/24",), {"shared": "y"}),
    *D0.policies.values(),
)


def check_d0(s: DesiredState) -> None:
    assert members(s, SHARED_SEL) == {"10.65.0.1", "10.200.0.0/24"}


def check_d1(s: DesiredState) -> None:
    assert members(s, SHARED_SEL) == {"10.65.0.1"}  # still held by wep b


def check_d2(s: DesiredState) -> None:
    assert members(s, SHARED_SEL) == {"10.200.0.0/24"}


def check_d3(s: DesiredState) -> None:
    assert set(s.endpoints) == {"wep/ns1/c"}
    assert members(s, SHARED_SEL) == {"10.65.0.1", "10.200.0.0/24"}


SEQ_D: list[tuple[World, Check | None]] = [
    (D0, check_d0),
    (D1, check_d1),
    (D2, check_d2),
    (D3, check_d3),
]


def test_sequence_d_shared_ips_and_network_sets() -> None:
    run_all_variants(SEQ_D)


def test_all_sequences_chained() -> None:
    steps = SEQ_A + SEQ_B + SEQ_C + SEQ_D
    run_all_variants(steps)


# --------------------------------------------------------------------------------- semantics


def test_tier_order_then_name_and_default_last() -> None:
    w = world(
        wep("x", "10.65.0.1/32"),
        Tier("b", 1),
        Tier("a", 1),
        Tier("z", None),
        Tier("neg", -5),
        gnp("default-p", tier="default"),
        gnp("b.p"),
        gnp("b.p", tier="b"),
        gnp("a.p", tier="a"),
        gnp("z.p", tier="z"),
        gnp("neg.p", tier="neg"),
    )
    s = scratch(w)
    assert [t[0] for t in tiers_of(s, "wep/ns1/x")] == ["neg", "a", "b", "default", "z"]
    # Without its own Tier resource, default sorts with order None, by name ("default" < "z").
    w2 = replace(w, tiers={**w.tiers, "default": Tier("default", 0.5)})
    s2 = scratch(w2)
    assert [t[0] for t in tiers_of(s2, "wep/ns1/x")] == ["neg", "default", "a", "b", "z"]


def test_tier_default_action_reaches_the_plan() -> None:
    w = world(wep("x", "10.65.0.1/32"), Tier("a", 1, "Pass"), gnp("a.p", tier="a"), gnp("d"))
    plan = scratch(w).endpoints["wep/ns1/x"]
    assert [(t.name, t.default_action) for t in plan.ingress] == [
        ("a", "Pass"),
        ("default", "Deny"),
    ]
    w2 = replace(w, tiers={**w.tiers, "a": Tier("a", 1)})
    plan2 = scratch(w2).endpoints["wep/ns1/x"]
    assert [t.default_action for t in plan2.ingress] == ["Deny", "Deny"]


def test_policy_order_within_tier() -> None:
    w = world(
        wep("x", "10.65.0.1/32"),
        gnp("c", order=None),
        gnp("b", order=2),
        gnp("a", order=2),
        gnp("d", order=-1.5),
        gnp("e", order=100),
    )
    assert tiers_of(scratch(w), "wep/ns1/x") == [
        ("default", "gnp/d", "gnp/a", "gnp/b", "gnp/e", "gnp/c")
    ]


def test_policy_types_filter_directions() -> None:
    w = world(
        wep("x", "10.65.0.1/32"),
        gnp("in", types=("Ingress",)),
        gnp("out", types=("Egress",)),
    )
    s = scratch(w)
    assert tiers_of(s, "wep/ns1/x", "ingress") == [("default", "gnp/in")]
    assert tiers_of(s, "wep/ns1/x", "egress") == [("default", "gnp/out")]


def test_own_labels_override_profile_labels() -> None:
    w = world(
        prof("p", labels={"role": "db"}),
        wep("x", "10.65.0.1/32", labels={"role": "web"}, profiles=("p",)),
        gnp("db", "role == 'db'"),
        gnp("web", "role == 'web'"),
    )
    assert tiers_of(scratch(w), "wep/ns1/x") == [("default", "gnp/web")]


def test_first_profile_labels_win() -> None:
    w = world(
        prof("p1", labels={"role": "db"}),
        prof("p2", labels={"role": "web", "env": "prod"}),
        wep("x", "10.65.0.1/32", profiles=("p1", "p2")),
        gnp("db", "role == 'db' && env == 'prod'"),
        gnp("web", "role == 'web'"),
    )
    assert tiers_of(scratch(w), "wep/ns1/x") == [("default", "gnp/db")]


def test_missing_profile_is_not_active_but_endpoint_keeps_its_name() -> None:
    s = scratch(world(wep("x", "10.65.0.1/32", profiles=("nope",))))
    assert s.endpoints["wep/ns1/x"].profiles == ("nope",)
    assert s.profiles == {}


def test_remote_endpoint_contributes_members_but_no_plan() -> None:
    w = world(
        wep("local", "10.65.0.1/32"),
        wep("remote", "10.65.9.1/32", node="node2", labels={"r": "1"}),
        gnp("p", ingress=rules({"action": "Allow", "source": {"selector": "r == '1'"}})),
    )
    s = scratch(w)
    assert set(s.endpoints) == {"wep/ns1/local"}
    assert members(s, SetDef.for_selector(parse("r == '1'"))) == {"10.65.9.1"}


def test_inactive_policy_sets_are_not_computed() -> None:
    w = world(
        wep("remote", "10.65.9.1/32", node="node2", labels={"r": "1"}),
        gnp("p", ingress=rules({"action": "Allow", "source": {"selector": "r == '1'"}})),
    )
    s = scratch(w)
    assert s.policies == {} and s.sets == {}


def test_set_shared_between_policies_survives_removal_of_one() -> None:
    r = rules({"action": "Allow", "source": {"selector": "r == '1'"}})
    sd = SetDef.for_selector(parse("r == '1'"))
    calc = Calculator(HOST)
    calc.set_endpoint("wep/ns1/x", wep("x", "10.65.0.1/32", labels={"r": "1"}))
    calc.set_policy("gnp/a", gnp("a", ingress=r))
    calc.set_policy("gnp/b", gnp("b", ingress=r))
    calc.set_policy("gnp/a", None)
    assert members(calc.state(), sd) == {"10.65.0.1"}
    calc.set_policy("gnp/b", None)
    assert calc.state().sets == {}


def test_dirty_reports_set_member_change_from_remote_endpoint() -> None:
    sd = SetDef.for_selector(parse("r == '1'"))
    calc = Calculator(HOST)
    calc.set_endpoint("wep/ns1/x", wep("x", "10.65.0.1/32"))
    calc.set_policy(
        "gnp/a", gnp("a", ingress=rules({"action": "Allow", "source": {"selector": "r == '1'"}}))
    )
    calc.take_dirty()
    calc.set_endpoint("wep/ns1/y", wep("y", "10.65.5.5/32", node="node2", labels={"r": "1"}))
    d = calc.take_dirty()
    assert d.sets == {sd.id} and d.endpoints == set() and d.policies == set()
    assert not calc.take_dirty()
    # An unchanged update marks nothing.
    calc.set_endpoint("wep/ns1/y", wep("y", "10.65.5.5/32", node="node2", labels={"r": "1"}))
    assert not calc.take_dirty()


def test_pool_changes_are_dirty() -> None:
    calc = Calculator(HOST)
    calc.set_pool("p", Pool("p", net("10.65.0.0/16")))
    assert calc.take_dirty().pools
    calc.set_pool("p", Pool("p", net("10.65.0.0/16")))
    assert not calc.take_dirty()
    calc.set_pool("p", None)
    assert calc.take_dirty().pools
    assert calc.state().pools == {}


# --------------------------------------------------------------------------------- hypothesis

_LABEL_VALUES = st.dictionaries(st.sampled_from(["a", "b"]), st.sampled_from(["1", "2"]))
_SELECTORS = ["all()", "all()", "a == '1'", "has(b)", "a == '2' || b == '1'", "!has(a)", "b != '2'"]
_IPS = ["10.0.0.1/32", "10.0.0.2/32", "10.0.0.3/32", "fd00::1/128", "10.9.0.0/24"]
_PORTS = st.lists(
    st.sampled_from([NamedPortSpec("http", 6, 80), NamedPortSpec("http", 6, 81)]),
    max_size=2,
    unique=True,
).map(tuple)


@st.composite
def _rule(draw: st.DrawFn) -> Rule:
    d: dict[str, Any] = {"action": draw(st.sampled_from(["Allow", "Deny", "Pass"]))}
    choice = draw(st.integers(0, 4))
    if choice == 1:
        d["source"] = {"selector": draw(st.sampled_from(_SELECTORS))}
    elif choice == 2:
        d["protocol"] = "TCP"
        d["destination"] = {"ports": ["http"]}
        if draw(st.booleans()):
            d["destination"]["selector"] = draw(st.sampled_from(_SELECTORS))
    elif choice == 3:
        d["source"] = {"notSelector": draw(st.sampled_from(_SELECTORS))}
    elif choice == 4:
        d["destination"] = {"nets": ["10.1.0.0/16", "10.2.0.0/16"]}
    return parse_rule(d)


@st.composite
def _world(draw: st.DrawFn) -> World:
    items: list[object] = []
    for i in range(draw(st.integers(0, 4))):
        ns = draw(st.sampled_from(["ns1", "ns2"]))
        node = HOST if i == 0 else draw(st.sampled_from([HOST, "node2"]))
        items.append(
            wep(
                f"w{i}",
                tuple(draw(st.lists(st.sampled_from(_IPS), min_size=1, max_size=2, unique=True))),
                ns=ns,
                node=node,
                labels=draw(_LABEL_VALUES),
                profiles=tuple(
                    draw(st.lists(st.sampled_from(["p0", "p1"]), max_size=2, unique=True))
                ),
                ports=draw(_PORTS),
            )
        )
    if draw(st.booleans()):
        items.append(hep("h0", ("10.0.0.3/32",), labels=draw(_LABEL_VALUES)))
    for name in ("p0", "p1"):
        if draw(st.booleans()):
            items.append(
                prof(
                    name,
                    labels=draw(_LABEL_VALUES),
                    ingress=tuple(draw(st.lists(_rule(), max_size=1))),
                )
            )
    for name in ("t1", "t2"):
        if draw(st.sampled_from([True, True, False])):
            items.append(Tier(name, draw(st.sampled_from([None, 1.0, 2.0]))))
    for i in range(draw(st.integers(1, 6))):
        tier = draw(st.sampled_from(["default", "t1", "t2"]))
        name = f"p{i}" if tier == "default" else f"{tier}.p{i}"
        kw: dict[str, Any] = {
            "tier": tier,
            "order": draw(st.sampled_from([None, 1.0, 2.0])),
            "types": tuple(
                draw(st.lists(st.sampled_from(["Ingress", "Egress"]), min_size=1, unique=True))
            ),
            "ingress": tuple(draw(st.lists(_rule(), max_size=2))),
            "egress": tuple(draw(st.lists(_rule(), max_size=1))),
        }
        sel = draw(st.sampled_from(_SELECTORS))
        if draw(st.sampled_from([True, False, False])):
            items.append(np_(draw(st.sampled_from(["ns1", "ns2"])), name, sel, **kw))
        else:
            flags = draw(st.sampled_from(["", "pre_dnat", "do_not_track", "apply_on_forward"]))
            if flags:
                kw[flags] = True
            items.append(gnp(name, sel, **kw))
    if draw(st.booleans()):
        items.append(gns("s0", ("10.0.0.2/32", "10.8.0.0/16"), draw(_LABEL_VALUES)))
    if draw(st.booleans()):
        items.append(Pool("pool", net("10.0.0.0/16"), nat_outgoing=draw(st.booleans())))
    return world(*items)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    worlds=st.lists(_world(), min_size=1, max_size=4),
    order=st.permutations(KINDS),
    seed=st.integers(0, 1000),
)
def test_random_sequences_incremental_equals_scratch(
    worlds: list[World], order: list[str], seed: int
) -> None:
    calc = Calculator(HOST)
    rnd = random.Random(seed)
    prev_w, prev_state = EMPTY, calc.state()
    for w in worlds:
        feed(calc, prev_w, w, order=tuple(order), rnd=rnd)
        got = calc.state()
        assert got == scratch(w)
        assert got == naive(w)
        assert_dirty_covers(prev_state, got, calc)
        prev_w, prev_state = w, got
    # Tearing everything down leaves nothing behind.
    feed(calc, prev_w, EMPTY, rnd=rnd)
    check_empty(calc.state())
