"""Rendering: the desired dataplane model as iptables chains and ipsets (pure, no I/O).

Role: turn ``felix.calc.DesiredState`` into the chains each ``(table, IP version)`` must hold,
the rules to insert at the top of the kernel's built-in chains, and the ipsets with members.
Inputs: the desired state, ``RenderConfig``, and the interface names of host endpoints.
Outputs: ``TableRender`` per (table, version) and ``IpSetRender`` per set.

Chain layout (all ours start with ``tby-``):
  filter  INPUT   -> tby-INPUT:   IP-in-IP only from nodes (when a pool uses it), ctstate,
                                  workload->host (tby-wl-to-host), failsafe, host endpoints
          FORWARD -> tby-FORWARD: ctstate, from-workload and to-workload dispatch, host endpoint
                                  forward policy, then accept workload traffic that passed
          OUTPUT  -> tby-OUTPUT:  ctstate, host->workload (to-workload dispatch), failsafe,
                                  host endpoint egress
  raw     PREROUTING/OUTPUT -> untracked (doNotTrack) host endpoint policy, failsafe first
  mangle  PREROUTING        -> pre-DNAT host endpoint policy, failsafe first
  nat     POSTROUTING       -> natOutgoing masquerade for pools
Endpoint chains: tby-tw-IF (to workload: ingress), tby-fw-IF (from workload: egress),
tby-fh-IF / tby-th-IF (from/to host endpoint: ingress/egress), tby-fhf-/tby-thf- (forward),
tby-fhp- (pre-DNAT), tby-fhu-/tby-thu- (untracked). Policy chains tby-pi-/tby-po-<hash>,
profile chains tby-pri-/tby-pro-<hash>.

Verdict protocol between chains (Calico's): an endpoint chain clears the ACCEPT and PASS mark
bits, then per tier calls each policy chain while PASS is clear; a policy chain sets ACCEPT or
PASS and RETURNs, or DROPs. After each call the endpoint chain RETURNs if ACCEPT is set. A tier
with applicable policies where none set ACCEPT or PASS ends in DROP (normal and forward chains
only: untracked and pre-DNAT chains fall through to the normal policy in filter, as Calico's).
Profiles run after the tiers. Nothing accepted: DROP. Callers ACCEPT packets coming back with
the ACCEPT bit set.

Invariants: output depends only on the inputs; chain names are <= 28 characters; every
interface with the workload prefix that is not a known endpoint is dropped (fail closed); a
workload can only send from its own addresses (anti-spoofing, plus strict rp_filter).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Any, Literal

from felix.calc import DesiredState, EndpointPlan, SetState, TierPlan
from felix.ipsetdefs import SideSets, ipset_name, rule_sets
from felix.model import IPNet, Policy, Pool, Profile
from kernel.iptables import Chain, Rule
from policy.rules import Action, EntityRule, ICMPMatch, PortRange
from policy.rules import Rule as PolicyRule

TableName = Literal["filter", "raw", "mangle", "nat"]
IpVersion = Literal[4, 6]
EndpointToHost = Literal["Drop", "Return", "Accept"]

PREFIX = "tby-"
LOG_PREFIX = "tabby-packet: "
PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "ipv6-icmp", 132: "sctp", 136: "udplite"}
MULTIPORT_MAX = 15
# ICMPv6 that IPv6 needs on every link (RFC 4890 4.4.1): MLD query, report, done, MLDv2 report;
# router solicitation and advertisement, neighbour solicitation and advertisement.
ND_MLD_ICMPV6_TYPES = (130, 131, 132, 133, 134, 135, 136, 143)


@dataclass(frozen=True, slots=True)
class FailsafePort:
    protocol: str  # "tcp" | "udp"
    port: int
    net: IPNet | None = None


CALICO_FAILSAFE_IN = tuple(
    FailsafePort(p, n)
    for p, n in (
        ("tcp", 22),
        ("udp", 68),
        ("tcp", 179),
        ("tcp", 2379),
        ("tcp", 2380),
        ("tcp", 5473),
        ("tcp", 6443),
        ("tcp", 6666),
        ("tcp", 6667),
    )
)
CALICO_FAILSAFE_OUT = tuple(
    FailsafePort(p, n)
    for p, n in (
        ("udp", 53),
        ("udp", 67),
        ("tcp", 179),
        ("tcp", 2379),
        ("tcp", 2380),
        ("tcp", 5473),
        ("tcp", 6443),
        ("tcp", 6666),
        ("tcp", 6667),
    )
)


@dataclass(frozen=True, slots=True)
class RenderConfig:
    iface_prefix: str = "tbw"
    mark_accept: int = 0x10000
    mark_pass: int = 0x20000
    failsafe_in: tuple[FailsafePort, ...] = CALICO_FAILSAFE_IN
    failsafe_out: tuple[FailsafePort, ...] = CALICO_FAILSAFE_OUT
    endpoint_to_host_action: EndpointToHost = "Drop"
    ipv6: bool = True

    @property
    def marks(self) -> int:
        return self.mark_accept | self.mark_pass


@dataclass(frozen=True, slots=True)
class TableRender:
    table: TableName
    ip_version: IpVersion
    chains: tuple[Chain, ...]
    inserts: Mapping[str, tuple[Rule, ...]]  # built-in chain -> our rules at its top


@dataclass(frozen=True, slots=True)
class IpSetRender:
    name: str
    set_type: str
    family: Literal["inet", "inet6"]
    members: frozenset[str]


def short_hash(text: str, length: int = 19) -> str:
    raw = hashlib.sha224(text.encode()).digest()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")[:length]


def policy_chain(key: str, direction: str) -> str:
    return f"{PREFIX}p{'i' if direction == 'ingress' else 'o'}-{short_hash('policy:' + key)}"


def profile_chain(name: str, direction: str) -> str:
    return f"{PREFIX}pr{'i' if direction == 'ingress' else 'o'}-{short_hash('profile:' + name)}"


def endpoint_chain(kind: str, iface: str) -> str:
    """``kind`` is tw, fw, fh, th, fhf, thf, fhp, fhu, thu. ``*`` becomes ``any``."""
    name = "any" if iface == "*" else iface
    chain = f"{PREFIX}{kind}-{name}"
    if len(chain) > 28:
        chain = f"{PREFIX}{kind}-{short_hash(iface, 28 - len(PREFIX) - len(kind) - 1)}"
    return chain


def _hex(v: int) -> str:
    return f"{v:#x}"


# ------------------------------------------------------------------------------ rule matches
def _family(net: IPNet) -> int:
    return 4 if isinstance(net, IPv4Network) else 6


def _port_text(p: PortRange) -> str:
    return str(p.first) if p.first == p.last else f"{p.first}:{p.last}"


def _chunks(ranges: Sequence[PortRange]) -> list[str]:
    """multiport takes at most 15 ports, a range counting as two."""
    out: list[str] = []
    cur: list[str] = []
    used = 0
    for r in ranges:
        cost = 1 if r.first == r.last else 2
        if used + cost > MULTIPORT_MAX:
            out.append(",".join(cur))
            cur, used = [], 0
        cur.append(_port_text(r))
        used += cost
    if cur:
        out.append(",".join(cur))
    return out


def _icmp(match: ICMPMatch, v: int, negate: bool) -> str:
    neg = "! " if negate else ""
    val = str(match.type) if match.code is None else f"{match.type}/{match.code}"
    if v == 4:
        return f"-m icmp {neg}--icmp-type {val}"
    return f"-m icmp6 {neg}--icmpv6-type {val}"


def _side_matches(
    entity: EntityRule, sets: SideSets, v: int, direction: Literal["src", "dst"]
) -> list[str] | None:
    """Alternatives (OR) of match text for one side, or None if it cannot match in family v."""
    flag = "-s" if direction == "src" else "-d"
    base: list[str] = []
    nets = [n for n in entity.nets if _family(n) == v]
    if entity.nets and not nets:
        return None
    if len(entity.nets) == 1:
        base.append(f"{flag} {nets[0]}")
    elif sets.nets is not None:
        base.append(f"-m set --match-set {ipset_name(sets.nets.id, v)} {direction}")
    not_nets = [n for n in entity.not_nets if _family(n) == v]
    if entity.not_nets and not not_nets:
        return None  # like nets: a list with no net of this family never matches here
    if len(entity.not_nets) == 1 and not_nets:
        base.append(f"! {flag} {not_nets[0]}")
    elif sets.not_nets is not None and not_nets:
        base.append(f"-m set ! --match-set {ipset_name(sets.not_nets.id, v)} {direction}")
    if sets.not_selector is not None:
        base.append(f"-m set ! --match-set {ipset_name(sets.not_selector.id, v)} {direction}")
    port_flag = "--sports" if direction == "src" else "--dports"
    numeric_not = [p for p in entity.not_ports if isinstance(p, PortRange)]
    for chunk in _chunks(numeric_not):
        base.append(f"-m multiport ! {port_flag} {chunk}")
    for sd in sets.not_named_ports:
        base.append(f"-m set ! --match-set {ipset_name(sd.id, v)} {direction},{direction}")
    sel = (
        f"-m set --match-set {ipset_name(sets.selector.id, v)} {direction}"
        if sets.selector is not None
        else None
    )
    numeric = [p for p in entity.ports if isinstance(p, PortRange)]
    if not entity.ports:
        return [" ".join([*base, *([sel] if sel else [])])]
    alts: list[str] = []
    for chunk in _chunks(numeric):
        alts.append(" ".join([*base, *([sel] if sel else []), f"-m multiport {port_flag} {chunk}"]))
    for sd in sets.named_ports:
        alts.append(
            " ".join([*base, f"-m set --match-set {ipset_name(sd.id, v)} {direction},{direction}"])
        )
    return alts


def rule_matches(rule: PolicyRule, namespace: str | None, v: int) -> list[str]:
    """The iptables match texts (alternatives) for a policy rule in family v; [] = never."""
    if rule.ip_version is not None and rule.ip_version != v:
        return []
    proto = rule.protocol
    if (proto == 1 and v == 6) or (proto == 58 and v == 4):
        return []
    parts: list[str] = []
    if proto is not None:
        parts.append(f"-p {PROTO_NAMES.get(proto, str(proto))}")
    if rule.not_protocol is not None:
        parts.append(f"! -p {PROTO_NAMES.get(rule.not_protocol, str(rule.not_protocol))}")
    if rule.icmp is not None:
        parts.append(_icmp(rule.icmp, v, False))
    if rule.not_icmp is not None:
        parts.append(_icmp(rule.not_icmp, v, True))
    sets = rule_sets(rule, namespace)
    src = _side_matches(rule.source, sets.source, v, "src")
    dst = _side_matches(rule.destination, sets.destination, v, "dst")
    if src is None or dst is None:
        return []
    head = " ".join(parts)
    return [" ".join(p for p in (head, s, d) if p) for s in src for d in dst]


def policy_rules(
    rules: Sequence[PolicyRule], namespace: str | None, v: int, cfg: RenderConfig, label: str
) -> tuple[Rule, ...]:
    acc, pas = _hex(cfg.mark_accept), _hex(cfg.mark_pass)
    out: list[Rule] = []
    for idx, rule in enumerate(rules):
        comment = f"{label} rule {idx}"
        for match in rule_matches(rule, namespace, v):
            if rule.action is Action.ALLOW:
                out.append(Rule(match, f"-j MARK --set-xmark {acc}/{acc}", comment))
                out.append(Rule(f"-m mark --mark {acc}/{acc}", "-j RETURN"))
            elif rule.action is Action.PASS:
                out.append(Rule(match, f"-j MARK --set-xmark {pas}/{pas}", comment))
                out.append(Rule(f"-m mark --mark {pas}/{pas}", "-j RETURN"))
            elif rule.action is Action.DENY:
                out.append(Rule(match, "-j DROP", comment))
            else:
                out.append(Rule(match, f'-j LOG --log-prefix "{LOG_PREFIX}"', comment))
    return tuple(out)


# ------------------------------------------------------------------------------ endpoint chains
def endpoint_rules(
    tiers: Sequence[TierPlan],
    profiles: Sequence[str],
    direction: str,
    cfg: RenderConfig,
    *,
    end_of_tier_drop: bool = True,
    no_match: str = "-j DROP",
    on_accept: str = "-j RETURN",
) -> list[Rule]:
    acc, pas, both = _hex(cfg.mark_accept), _hex(cfg.mark_pass), _hex(cfg.marks)
    out = [Rule("", f"-j MARK --set-xmark 0x0/{both}")]
    for tier in tiers:
        out.append(Rule("", f"-j MARK --set-xmark 0x0/{pas}", f"tier {tier.name}"))
        for pk in tier.policies:
            out.append(Rule(f"-m mark --mark 0x0/{pas}", f"-j {policy_chain(pk, direction)}"))
            out.append(Rule(f"-m mark --mark {acc}/{acc}", on_accept))
        if end_of_tier_drop and tier.default_action != "Pass":
            out.append(
                Rule(f"-m mark --mark 0x0/{pas}", "-j DROP", f"end of tier {tier.name}: drop")
            )
    for prof in profiles:
        # A Pass in the last tier (or in the previous profile) left PASS set: clear it, or the
        # profile chain's "return if PASS" would end the profile before its first rule.
        out.append(Rule("", f"-j MARK --set-xmark 0x0/{pas}"))
        out.append(Rule("", f"-j {profile_chain(prof, direction)}"))
        out.append(Rule(f"-m mark --mark {acc}/{acc}", on_accept))
    if no_match:
        out.append(Rule("", no_match, "no policy or profile accepted"))
    return out


def _spoof_sources(plan: EndpointPlan, v: int) -> list[str]:
    ep = plan.endpoint
    nets: list[IPNet] = [*(ep.ipv4 if v == 4 else ep.ipv6)]
    nets.extend(n for n in ep.allow_spoofed if _family(n) == v)
    out = [str(n) for n in nets]
    if v == 6:
        out.append("fe80::/10")  # link-local: neighbour discovery
    return out


def _failsafe(ports: Iterable[FailsafePort], v: int, direction: Literal["in", "out"]) -> list[Rule]:
    out: list[Rule] = []
    for fp in ports:
        if fp.net is not None and _family(fp.net) != v:
            continue
        flag = "--dport"
        net = ""
        if fp.net is not None:
            net = f" {'-s' if direction == 'in' else '-d'} {fp.net}"
        out.append(
            Rule(
                f"-p {fp.protocol} -m {fp.protocol} {flag} {fp.port}{net}",
                "-j ACCEPT",
                f"failsafe {direction} {fp.protocol}/{fp.port}",
            )
        )
    return out


# ------------------------------------------------------------------------------ tables
@dataclass
class _Builder:
    """Collects a table's chains; ``cached`` reuses chains rendered from the same input object."""

    cache: dict[Any, Any] = field(default_factory=dict)
    chains: dict[str, Chain] = field(default_factory=dict)
    used: set[Any] = field(default_factory=set)

    def add(self, name: str, rules: Iterable[Rule]) -> str:
        self.chains[name] = Chain(name, tuple(rules))
        return name

    def cached(
        self,
        key: Any,
        source: object,
        make: Callable[[], tuple[Chain, ...]],
        extra: Hashable = None,
    ) -> tuple[Chain, ...]:
        """Chains made from ``source`` (and ``extra``); re-made only when ``source`` is a
        different object or ``extra`` a different value."""
        self.used.add(key)
        hit = self.cache.get(key)
        if hit is not None and hit[0] is source and hit[1] == extra:
            chains: tuple[Chain, ...] = hit[2]
        else:
            chains = make()
            self.cache[key] = (source, extra, chains)
        for chain in chains:
            self.chains[chain.name] = chain
        return chains


def _hep_ifaces(
    state: DesiredState, hep_ifaces: Mapping[str, Sequence[str]]
) -> list[tuple[str, EndpointPlan]]:
    """(interface, plan) for each local host endpoint, wildcard last."""
    out: list[tuple[str, EndpointPlan]] = []
    wildcard: list[tuple[str, EndpointPlan]] = []
    for key, plan in sorted(state.endpoints.items()):
        if plan.endpoint.kind != "host":
            continue
        if plan.endpoint.iface == "*":
            wildcard.append(("*", plan))
            continue
        for iface in hep_ifaces.get(key, ()):
            out.append((iface, plan))
    return sorted(out, key=lambda x: x[0]) + wildcard[:1]


def _existing(profiles: Sequence[str], state: DesiredState) -> tuple[str, ...]:
    """The profiles that exist (have chains); a missing one allows nothing and is skipped, as
    a jump to a missing chain would make iptables-restore reject the endpoint's chains."""
    return tuple(p for p in profiles if p in state.profiles)


def render_filter(
    state: DesiredState,
    v: IpVersion,
    cfg: RenderConfig,
    hep_ifaces: Mapping[str, Sequence[str]],
    cache: dict[Any, Any] | None = None,
) -> TableRender:
    b = _Builder(cache if cache is not None else {})
    acc = _hex(cfg.mark_accept)
    both = _hex(cfg.marks)
    wl = f"{cfg.iface_prefix}+"
    # Policy and profile chains for the active, normal (tracked, post-DNAT) policies.
    for key, pol in sorted(state.policies.items()):
        if pol.pre_dnat or pol.do_not_track:
            continue
        _policy_chains(b, key, pol, v, cfg)
    for name, prof in sorted(state.profiles.items()):
        _profile_chains(b, name, prof, v, cfg)

    workloads = sorted(
        (p for p in state.endpoints.values() if p.endpoint.kind == "workload" and p.endpoint.iface),
        key=lambda p: p.endpoint.iface or "",
    )
    from_wl: list[Rule] = []
    to_wl: list[Rule] = []
    for plan in workloads:
        iface = plan.endpoint.iface or ""
        if not (plan.endpoint.ipv4 if v == 4 else plan.endpoint.ipv6):
            # No address of this family: nothing of this family may pass, so no policy chains
            # are needed (halves what a new IPv4-only workload costs to program).
            note = f"workload has no IPv{v} address"
            from_wl.append(Rule(f"-i {iface}", "-j DROP", note))
            to_wl.append(Rule(f"-o {iface}", "-j DROP", note))
            continue
        profs = _existing(plan.profiles, state)
        tw, fw = endpoint_chain("tw", iface), endpoint_chain("fw", iface)

        def make(
            plan: EndpointPlan = plan, profs: tuple[str, ...] = profs, tw: str = tw, fw: str = fw
        ) -> tuple[Chain, ...]:
            return (
                Chain(tw, tuple(endpoint_rules(plan.ingress, profs, "ingress", cfg))),
                Chain(fw, tuple(endpoint_rules(plan.egress, profs, "egress", cfg))),
            )

        b.cached(("wep", plan.endpoint.key, v), plan, make, extra=profs)
        for src in _spoof_sources(plan, v):
            from_wl.append(Rule(f"-i {iface} -s {src}", f"-g {fw}"))
        from_wl.append(Rule(f"-i {iface}", "-j DROP", "source address is not the workload address"))
        to_wl.append(Rule(f"-o {iface}", f"-g {tw}"))
    from_wl.append(Rule("", "-j DROP", "unknown workload interface"))
    to_wl.append(Rule("", "-j DROP", "unknown workload interface"))
    b.add(f"{PREFIX}from-wl-dispatch", from_wl)
    b.add(f"{PREFIX}to-wl-dispatch", to_wl)

    e2h = {"Drop": "-j DROP", "Accept": "-j ACCEPT", "Return": "-j RETURN"}[
        cfg.endpoint_to_host_action
    ]
    b.add(
        f"{PREFIX}wl-to-host",
        [
            Rule("", f"-j {PREFIX}from-wl-dispatch"),
            Rule("", e2h, f"defaultEndpointToHostAction {cfg.endpoint_to_host_action}"),
        ],
    )

    # Host endpoints.
    heps = _hep_ifaces(state, hep_ifaces)
    from_hep: list[Rule] = []
    to_hep: list[Rule] = []
    from_hep_fwd: list[Rule] = []
    to_hep_fwd: list[Rule] = []
    for iface, plan in heps:
        profs = _existing(plan.profiles, state)
        fh = b.add(endpoint_chain("fh", iface), endpoint_rules(plan.ingress, profs, "ingress", cfg))
        th = b.add(endpoint_chain("th", iface), endpoint_rules(plan.egress, profs, "egress", cfg))
        # Forwarded traffic: only applyOnForward policies; none applying = allowed (Calico).
        fwd_no_match = "-j DROP"
        fhf = b.add(
            endpoint_chain("fhf", iface),
            endpoint_rules(
                plan.forward_ingress,
                (),
                "ingress",
                cfg,
                no_match=fwd_no_match if plan.forward_ingress else "",
                on_accept="-j RETURN",
            ),
        )
        thf = b.add(
            endpoint_chain("thf", iface),
            endpoint_rules(
                plan.forward_egress,
                (),
                "egress",
                cfg,
                no_match=fwd_no_match if plan.forward_egress else "",
                on_accept="-j RETURN",
            ),
        )
        match_in = "" if iface == "*" else f"-i {iface}"
        match_out = "" if iface == "*" else f"-o {iface}"
        from_hep.append(Rule(match_in, f"-g {fh}"))
        to_hep.append(Rule(match_out, f"-g {th}"))
        from_hep_fwd.append(Rule(match_in, f"-g {fhf}"))
        to_hep_fwd.append(Rule(match_out, f"-g {thf}"))
    if heps:
        b.add(f"{PREFIX}from-hep-dispatch", from_hep)
        b.add(f"{PREFIX}to-hep-dispatch", to_hep)
        b.add(f"{PREFIX}from-hep-fwd", from_hep_fwd)
        b.add(f"{PREFIX}to-hep-fwd", to_hep_fwd)
        b.add(f"{PREFIX}failsafe-in", _failsafe(cfg.failsafe_in, v, "in"))
        b.add(f"{PREFIX}failsafe-out", _failsafe(cfg.failsafe_out, v, "out"))

    # Untracked packets are accepted only when our own doNotTrack policy let them through (the
    # raw table marked them): a packet someone else exempted from conntrack still meets policy.
    ct = [
        Rule("-m conntrack --ctstate INVALID", "-j DROP"),
        Rule("-m conntrack --ctstate RELATED,ESTABLISHED", "-j ACCEPT"),
        Rule(f"-m conntrack --ctstate UNTRACKED -m mark --mark {acc}/{acc}", "-j ACCEPT"),
    ]
    # IPv6 cannot work without neighbour discovery and MLD (RFC 4890 4.4.1: must not be
    # dropped), and conntrack does not track them: accepted explicitly, to and from the host.
    nd = (
        [Rule(f"-p ipv6-icmp -m icmp6 --icmpv6-type {t}", "-j ACCEPT") for t in ND_MLD_ICMPV6_TYPES]
        if v == 6
        else []
    )
    clear = Rule("", f"-j MARK --set-xmark 0x0/{both}")
    accepted = Rule(f"-m mark --mark {acc}/{acc}", "-j ACCEPT")
    inp = [*ct, *nd, Rule(f"-i {wl}", f"-g {PREFIX}wl-to-host")]
    if v == 4 and ipip_enabled(state.pools.values()):
        # First, before conntrack: an IP-in-IP packet from a host that is not a node of the
        # cluster is dropped even if it matches an existing (e.g. pre-removal) flow.
        inp.insert(0, ipip_filter_rule())
    if heps:
        inp += [
            clear,
            Rule("", f"-j {PREFIX}failsafe-in"),
            Rule("! -i lo", f"-j {PREFIX}from-hep-dispatch"),
            accepted,
        ]
    b.add(f"{PREFIX}INPUT", inp)

    fwd = [
        *ct,
        clear,
        Rule(f"-i {wl}", f"-j {PREFIX}from-wl-dispatch"),
        Rule(f"-o {wl}", f"-j {PREFIX}to-wl-dispatch"),
    ]
    if heps:
        fwd += [
            Rule(f"! -i {wl}", f"-j {PREFIX}from-hep-fwd"),
            Rule(f"! -o {wl}", f"-j {PREFIX}to-hep-fwd"),
        ]
    fwd += [Rule(f"-i {wl}", "-j ACCEPT"), Rule(f"-o {wl}", "-j ACCEPT")]
    b.add(f"{PREFIX}FORWARD", fwd)

    out = [
        *ct,
        *nd,
        clear,
        Rule(f"-o {wl}", f"-j {PREFIX}to-wl-dispatch"),
        Rule(f"-o {wl}", "-j ACCEPT"),
    ]
    if heps:
        out += [
            Rule("", f"-j {PREFIX}failsafe-out"),
            Rule("! -o lo", f"-j {PREFIX}to-hep-dispatch"),
            accepted,
        ]
    b.add(f"{PREFIX}OUTPUT", out)

    inserts = {
        "INPUT": (Rule("", f"-j {PREFIX}INPUT"),),
        "FORWARD": (Rule("", f"-j {PREFIX}FORWARD"),),
        "OUTPUT": (Rule("", f"-j {PREFIX}OUTPUT"),),
    }
    return TableRender("filter", v, tuple(b.chains.values()), inserts)


def _policy_chains(
    b: _Builder, key: str, pol: Policy, v: int, cfg: RenderConfig, *, table: str = "filter"
) -> None:
    def make() -> tuple[Chain, ...]:
        label = (
            f"policy {pol.name}" if pol.namespace is None else f"policy {pol.namespace}/{pol.name}"
        )
        return (
            Chain(
                policy_chain(key, "ingress"),
                policy_rules(pol.ingress, pol.namespace, v, cfg, label),
            ),
            Chain(
                policy_chain(key, "egress"), policy_rules(pol.egress, pol.namespace, v, cfg, label)
            ),
        )

    b.cached(("policy", table, key, v), pol, make)


def _profile_chains(b: _Builder, name: str, prof: Profile, v: int, cfg: RenderConfig) -> None:
    def make() -> tuple[Chain, ...]:
        label = f"profile {name}"
        return (
            Chain(profile_chain(name, "ingress"), policy_rules(prof.ingress, None, v, cfg, label)),
            Chain(profile_chain(name, "egress"), policy_rules(prof.egress, None, v, cfg, label)),
        )

    b.cached(("profile", name, v), prof, make)


def render_raw(
    state: DesiredState,
    v: IpVersion,
    cfg: RenderConfig,
    hep_ifaces: Mapping[str, Sequence[str]],
    cache: dict[Any, Any] | None = None,
) -> TableRender:
    """doNotTrack policy: allowed packets skip conntrack (NOTRACK) and are accepted in filter."""
    b = _Builder({} if cache is None else cache)
    acc = _hex(cfg.mark_accept)
    heps = [
        (i, p)
        for i, p in _hep_ifaces(state, hep_ifaces)
        if p.untracked_ingress or p.untracked_egress
    ]
    inserts: dict[str, tuple[Rule, ...]] = {}
    if heps:
        for key, pol in sorted(state.policies.items()):
            if pol.do_not_track:
                _policy_chains(b, key, pol, v, cfg, table="raw")
        notrack = f"-m mark --mark {acc}/{acc}"
        pre: list[Rule] = [Rule("", f"-j {PREFIX}failsafe-in")]
        outp: list[Rule] = [Rule("", f"-j {PREFIX}failsafe-out")]
        for iface, plan in heps:
            m_in = "" if iface == "*" else f"-i {iface}"
            m_out = "" if iface == "*" else f"-o {iface}"
            if plan.untracked_ingress:
                ch = b.add(
                    endpoint_chain("fhu", iface),
                    endpoint_rules(
                        plan.untracked_ingress,
                        (),
                        "ingress",
                        cfg,
                        end_of_tier_drop=False,
                        no_match="",
                    ),
                )
                pre.append(Rule(m_in, f"-j {ch}"))
            if plan.untracked_egress:
                ch = b.add(
                    endpoint_chain("thu", iface),
                    endpoint_rules(
                        plan.untracked_egress,
                        (),
                        "egress",
                        cfg,
                        end_of_tier_drop=False,
                        no_match="",
                    ),
                )
                outp.append(Rule(m_out, f"-j {ch}"))
        pre += [Rule(notrack, "-j CT --notrack"), Rule(notrack, "-j ACCEPT")]
        outp += [Rule(notrack, "-j CT --notrack"), Rule(notrack, "-j ACCEPT")]
        b.add(f"{PREFIX}failsafe-in", _failsafe(cfg.failsafe_in, v, "in"))
        b.add(f"{PREFIX}failsafe-out", _failsafe(cfg.failsafe_out, v, "out"))
        b.add(f"{PREFIX}PREROUTING", pre)
        b.add(f"{PREFIX}OUTPUT", outp)
        inserts = {
            "PREROUTING": (Rule("", f"-j {PREFIX}PREROUTING"),),
            "OUTPUT": (Rule("", f"-j {PREFIX}OUTPUT"),),
        }
    return TableRender("raw", v, tuple(b.chains.values()), inserts)


def render_mangle(
    state: DesiredState,
    v: IpVersion,
    cfg: RenderConfig,
    hep_ifaces: Mapping[str, Sequence[str]],
    cache: dict[Any, Any] | None = None,
) -> TableRender:
    """preDNAT policy on host endpoints: Deny drops before DNAT; Allow goes on to normal policy."""
    b = _Builder({} if cache is None else cache)
    heps = [(i, p) for i, p in _hep_ifaces(state, hep_ifaces) if p.pre_dnat_ingress]
    inserts: dict[str, tuple[Rule, ...]] = {}
    if heps:
        for key, pol in sorted(state.policies.items()):
            if pol.pre_dnat:
                _policy_chains(b, key, pol, v, cfg, table="mangle")
        pre: list[Rule] = [
            Rule("-m conntrack --ctstate RELATED,ESTABLISHED", "-j ACCEPT"),
            Rule("", f"-j {PREFIX}failsafe-in"),
        ]
        for iface, plan in heps:
            m_in = "" if iface == "*" else f"-i {iface}"
            ch = b.add(
                endpoint_chain("fhp", iface),
                endpoint_rules(
                    plan.pre_dnat_ingress,
                    (),
                    "ingress",
                    cfg,
                    end_of_tier_drop=False,
                    no_match="",
                    on_accept="-j ACCEPT",
                ),
            )
            pre.append(Rule(m_in, f"-g {ch}"))
        b.add(f"{PREFIX}failsafe-in", _failsafe(cfg.failsafe_in, v, "in"))
        b.add(f"{PREFIX}PREROUTING", pre)
        inserts = {"PREROUTING": (Rule("", f"-j {PREFIX}PREROUTING"),)}
    return TableRender("mangle", v, tuple(b.chains.values()), inserts)


MASQ_SET = "masq-pools"
ALL_POOLS_SET = "all-pools"
ALL_HOSTS_SET = "all-hosts"  # tby4-all-hosts: every node's IPv4 BGP address (IP-in-IP sources)
IPIP_PROTOCOL = 4  # "ipencap" in /etc/protocols; the number needs no protocols database


def ipip_enabled(pools: Iterable[Pool]) -> bool:
    """True when some IPv4 pool (enabled or not: its routes may still be in use) has
    ``ipipMode`` other than ``Never``: then IP-in-IP is accepted, and only from nodes."""
    return any(p.ipip_mode != "Never" and _family(p.cidr) == 4 for p in pools)


def ipip_filter_rule() -> Rule:
    """tby-INPUT's first rule while IP-in-IP is on: drop it unless it comes from a node."""
    return Rule(
        f"-p {IPIP_PROTOCOL} -m set ! --match-set {static_set_name(ALL_HOSTS_SET, 4)} src",
        "-j DROP",
        "IP-in-IP from a host that is not a node",
    )


def static_set_name(name: str, v: int) -> str:
    return f"tby{v}-{name}"


def render_nat(state: DesiredState, v: IpVersion) -> TableRender:
    b = _Builder()
    masq = [p for p in state.pools.values() if p.nat_outgoing and _family(p.cidr) == v]
    inserts: dict[str, tuple[Rule, ...]] = {}
    if masq:
        b.add(
            f"{PREFIX}nat-outgoing",
            [
                Rule(
                    f"-m set --match-set {static_set_name(MASQ_SET, v)} src "
                    f"-m set ! --match-set {static_set_name(ALL_POOLS_SET, v)} dst",
                    "-j MASQUERADE --random-fully",
                    "natOutgoing",
                ),
            ],
        )
        b.add(f"{PREFIX}POSTROUTING", [Rule("", f"-j {PREFIX}nat-outgoing")])
        inserts = {"POSTROUTING": (Rule("", f"-j {PREFIX}POSTROUTING"),)}
    return TableRender("nat", v, tuple(b.chains.values()), inserts)


def render_ipsets(state: DesiredState, cfg: RenderConfig) -> list[IpSetRender]:
    out: list[IpSetRender] = []
    versions: tuple[int, ...] = (4, 6) if cfg.ipv6 else (4,)
    for sid, st in sorted(state.sets.items()):
        out.extend(set_renders(sid, st, versions))
    out.extend(render_ipsets_static(state.pools.values(), cfg, state.host_addresses))
    return out


def render_ipsets_static(
    all_pools: Iterable[Pool],
    cfg: RenderConfig,
    host_addresses: Iterable[IPv4Address] = (),
) -> list[IpSetRender]:
    """The sets natOutgoing needs (pools to masquerade, and all pools) and, while IP-in-IP is
    on, ``tby4-all-hosts`` (every node's IPv4 address, the allowed IP-in-IP sources)."""
    out: list[IpSetRender] = []
    all_pools = list(all_pools)
    if ipip_enabled(all_pools):
        hosts = frozenset(str(a) for a in host_addresses)
        out.append(IpSetRender(static_set_name(ALL_HOSTS_SET, 4), "hash:net", "inet", hosts))
    for v in (4, 6) if cfg.ipv6 else (4,):
        fam: Literal["inet", "inet6"] = "inet" if v == 4 else "inet6"
        pools = [p for p in all_pools if _family(p.cidr) == v]
        masq = frozenset(str(p.cidr) for p in pools if p.nat_outgoing)
        if masq:
            out.append(IpSetRender(static_set_name(MASQ_SET, v), "hash:net", fam, masq))
            out.append(
                IpSetRender(
                    static_set_name(ALL_POOLS_SET, v),
                    "hash:net",
                    fam,
                    frozenset(str(p.cidr) for p in pools),
                )
            )
    return out


def set_renders(sid: str, st: SetState, versions: Sequence[int]) -> list[IpSetRender]:
    out = []
    for v in versions:
        fam: Literal["inet", "inet6"] = "inet" if v == 4 else "inet6"
        members = st.members_v4 if v == 4 else st.members_v6
        out.append(IpSetRender(ipset_name(sid, v), st.definition.ipset_type, fam, members))
    return out


def render_tables(
    state: DesiredState,
    cfg: RenderConfig,
    hep_ifaces: Mapping[str, Sequence[str]],
    cache: dict[Any, Any] | None = None,
) -> list[TableRender]:
    """Every table for every IP version; ``cache`` (kept by the caller) makes re-renders cheap."""
    if cache is None:
        cache = {}
    versions: tuple[IpVersion, ...] = (4, 6) if cfg.ipv6 else (4,)
    out: list[TableRender] = []
    for v in versions:
        out.append(render_filter(state, v, cfg, hep_ifaces, cache))
        out.append(render_raw(state, v, cfg, hep_ifaces, cache))
        out.append(render_mangle(state, v, cfg, hep_ifaces, cache))
        out.append(render_nat(state, v))
    # Forget cache entries of policies and endpoints that are gone.
    live: set[tuple[Any, ...]] = {
        ("policy", t, k, v)
        for k in state.policies
        for t in ("filter", "raw", "mangle")
        for v in versions
    }
    live |= {("profile", k, v) for k in state.profiles for v in versions}
    live |= {("wep", k, v) for k in state.endpoints for v in versions}
    for key in [k for k in cache if k not in live]:
        del cache[key]
    return out
