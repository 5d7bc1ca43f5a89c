"""Explain and trace: felix's own calculation, read back for people (pure, no I/O).

Role: the shared logic behind ``tabbyctl explain`` and ``tabbyctl trace``. It never computes
policy its own way: the datastore's keys go through ``felix.inputs.InputState`` into a
``felix.calc.Calculator`` for the node concerned, exactly as the running felix does, and
  * ``explain_endpoint`` reads ``calc.plan(key)``: per direction the tiers and policies in
    evaluation order, then the profiles (only the ones that exist, as ``felix.render`` jumps
    only to those), each rule with the packet/byte counters of the iptables rules rendered for
    it when counters are given;
  * ``trace`` builds ``policy.engine`` views from the same plans (policies in plan order,
    scoped selectors as the IP sets use them, a resolver over every endpoint's *effective*
    labels and every network set) and evaluates the egress of the source endpoint on its node
    and the ingress of the destination endpoint on its node; a packet is allowed when every
    step allows it;
  * ``parse_counters`` reads ``iptables-save -c`` text and maps the counters to policy and
    profile rules through felix's chain names (``felix.render.policy_chain`` /
    ``profile_chain``) and rule comments (``policy <name> rule <n>``, ``profile <name> rule
    <n>``).
Inputs: datastore updates (``Update(key, value, revision)``) for ``felix_prefixes()``; the
endpoint / address names the user gave; ``iptables-save -c`` text.
Outputs: frozen values (``EndpointExplanation``, ``TraceResult``) with ``*_to_json`` and
``render_*`` text forms.
Invariants: no I/O; the result depends only on the inputs. Host endpoint traffic to or from
the host itself is traced through the untracked, pre-DNAT and normal stages as felix renders
them (raw, mangle, filter); failsafe ports, ``defaultEndpointToHostAction`` and host endpoints
that forward traffic (``applyOnForward``) are reported as notes, not evaluated.
"""

from __future__ import annotations

import logging
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any, Literal

from datastore.syncer import Update
from felix.calc import Calculator, EndpointPlan, TierPlan
from felix.inputs import InputState
from felix.model import Endpoint, Policy, Profile
from felix.render import policy_chain, profile_chain
from policy.engine import (
    EngineError,
    Packet,
    PeerInfo,
    PolicyView,
    ProfileView,
    StaticResolver,
    TierView,
    Verdict,
    evaluate,
)
from policy.rules import Rule, protocol_number, rule_to_dict

log = logging.getLogger(__name__)

IPAddress = IPv4Address | IPv6Address
Stage = Literal["normal", "untracked", "preDNAT"]
#: Plan fields shown by ``explain``: (label, plan attribute, rule direction, iptables table,
#: profiles follow the tiers, a tier that decides nothing drops, host endpoints only).
_SECTIONS: tuple[tuple[str, str, str, str, bool, bool, bool], ...] = (
    ("ingress", "ingress", "ingress", "filter", True, True, False),
    ("egress", "egress", "egress", "filter", True, True, False),
    ("forward ingress", "forward_ingress", "ingress", "filter", False, True, True),
    ("forward egress", "forward_egress", "egress", "filter", False, True, True),
    ("preDNAT ingress", "pre_dnat_ingress", "ingress", "mangle", False, False, True),
    ("untracked ingress", "untracked_ingress", "ingress", "raw", False, False, True),
    ("untracked egress", "untracked_egress", "egress", "raw", False, False, True),
)
_COMMENT_RE = re.compile(r"^(?:tby:[A-Za-z0-9_-]{16} ?)?(?:policy|profile) (.+) rule (\d+)$")
_COUNTS_RE = re.compile(r"^\[(\d+):(\d+)\]$")
DEFAULT_SPORT = 40000


class ExplainError(ValueError):
    """A name or flow the user gave cannot be resolved (message names what and why)."""


# ----------------------------------------------------------------------------- loading


def load_calculator(updates: Iterable[Update], node: str) -> Calculator:
    """A calculator for ``node`` fed with ``updates`` through ``InputState`` (as felix does)."""
    calc = Calculator(node)
    inputs = InputState(calc)
    for upd in updates:
        inputs.apply_update(upd)
    return calc


class Cluster:
    """The datastore snapshot, with one ``Calculator`` per node asked for (built lazily)."""

    def __init__(self, updates: Iterable[Update]) -> None:
        self._updates = tuple(updates)
        self._calcs: dict[str, Calculator] = {}

    def calc(self, node: str) -> Calculator:
        calc = self._calcs.get(node)
        if calc is None:
            calc = self._calcs[node] = load_calculator(self._updates, node)
        return calc

    @property
    def any_calc(self) -> Calculator:
        """A calculator for cluster-wide facts (endpoints, labels, sets): the same on any node."""
        if self._calcs:
            return next(iter(self._calcs.values()))
        return self.calc("")


# ----------------------------------------------------------------------------- endpoints


def _pod_part(name: str) -> str | None:
    """``<pod>`` of a Calico-style WEP name ``<node>-<orch>-<pod>-<endpoint>`` (``-`` doubled
    inside each part), or None."""
    parts = re.split(r"(?<!-)-(?!-)", name)
    if len(parts) < 4:
        return None
    return "-".join(parts[2:-1]).replace("--", "-")


def find_workload(
    calc: Calculator, name: str, namespace: str | None, node: str | None = None
) -> Endpoint:
    """The WorkloadEndpoint ``namespace/name``: by its full name, else by its pod name (the
    third part of ``<node>-k8s-<pod>-<iface>``) when exactly one endpoint has it."""
    ns = namespace or "default"
    exact = calc.endpoints.get(f"wep/{ns}/{name}")
    if exact is not None and (node is None or exact.node == node):
        return exact
    found = [
        ep
        for ep in calc.endpoints.values()
        if ep.kind == "workload"
        and ep.namespace == ns
        and (node is None or ep.node == node)
        and _pod_part(ep.name) == name
    ]
    where = f" on node {node}" if node else ""
    if not found:
        raise ExplainError(f"WorkloadEndpoint {ns}/{name}{where}: not found")
    if len(found) > 1:
        names = ", ".join(sorted(ep.name for ep in found))
        raise ExplainError(f"WorkloadEndpoint {ns}/{name}{where}: ambiguous pod name ({names})")
    return found[0]


def find_host_endpoint(calc: Calculator, name: str, node: str | None = None) -> Endpoint:
    ep = calc.endpoints.get(f"hep/{name}")
    if ep is None or (node is not None and ep.node != node):
        where = f" on node {node}" if node else ""
        raise ExplainError(f"HostEndpoint {name}{where}: not found")
    return ep


def endpoint_by_address(calc: Calculator, ip: IPAddress) -> Endpoint | None:
    """The endpoint owning ``ip`` (workload endpoints first, then host endpoints)."""
    owners = sorted(
        (ep for ep in calc.endpoints.values() if any(ip in net for net in ep.nets)),
        key=lambda ep: (ep.kind != "workload", ep.key),
    )
    return owners[0] if owners else None


def endpoint_label(ep: Endpoint) -> str:
    if ep.kind == "workload":
        return f"WorkloadEndpoint {ep.namespace}/{ep.name}"
    return f"HostEndpoint {ep.name}"


# ----------------------------------------------------------------------------- counters


@dataclass(frozen=True, slots=True)
class Counter:
    packets: int
    bytes: int

    def __add__(self, other: Counter) -> Counter:
        return Counter(self.packets + other.packets, self.bytes + other.bytes)


@dataclass(frozen=True, slots=True)
class CounterTable:
    """Counters of felix's policy/profile rules: (table, chain, rule index) -> the sum over
    every iptables rule rendered for that policy rule; ``chains``: every (table, chain) seen."""

    rules: Mapping[tuple[str, str, int], Counter] = field(hash=False)
    chains: frozenset[tuple[str, str]]

    def get(self, table: str, chain: str, index: int) -> Counter | None:
        """The rule's counters; zero when its chain exists without it (a rule rendered to
        nothing in this IP version); None when the chain is not in the kernel at all."""
        if (table, chain) not in self.chains:
            return None
        return self.rules.get((table, chain, index), Counter(0, 0))


def parse_counters(save_texts: Iterable[str]) -> CounterTable:
    """Counters of felix's policy and profile rules from ``iptables-save -c`` outputs.

    Every ``[packets:bytes] -A <chain> ... --comment "tby:<hash> policy|profile <name> rule
    <n>"`` line counts for rule ``n`` of that chain; several lines for one rule (one per
    match alternative, and per IP version when IPv4 and IPv6 texts are both given) are summed.
    Lines without such a comment (the RETURN after an Allow, tier bookkeeping) are ignored.
    """
    out: dict[tuple[str, str, int], Counter] = {}
    chains: set[tuple[str, str]] = set()
    for text in save_texts:
        table = ""
        for line in text.splitlines():
            if line.startswith("*"):
                table = line[1:].strip()
                continue
            if line.startswith(":"):
                chains.add((table, line[1:].split(" ", 1)[0]))
                continue
            if not line.startswith("[") or " -A " not in line:
                continue
            try:
                words = shlex.split(line)
            except ValueError:
                continue
            counts = _COUNTS_RE.match(words[0])
            if counts is None or len(words) < 3 or words[1] != "-A":
                continue
            chain = words[2]
            chains.add((table, chain))
            comment = next(
                (words[i + 1] for i, w in enumerate(words[:-1]) if w == "--comment"), None
            )
            if comment is None:
                continue
            m = _COMMENT_RE.match(comment)
            if m is None:
                continue
            key = (table, chain, int(m.group(2)))
            value = Counter(int(counts.group(1)), int(counts.group(2)))
            out[key] = out[key] + value if key in out else value
    return CounterTable(out, frozenset(chains))


# ----------------------------------------------------------------------------- explain


@dataclass(frozen=True, slots=True)
class RuleLine:
    index: int
    action: str
    rule: Mapping[str, Any] = field(hash=False)  # canonical Calico v3 JSON
    counter: Counter | None = None


@dataclass(frozen=True, slots=True)
class PolicyLine:
    key: str  # "gnp/<name>" / "np/<ns>/<name>"
    name: str  # as in rule comments: "<name>" or "<ns>/<name>"
    order: float | None
    chain: str
    rules: tuple[RuleLine, ...]


@dataclass(frozen=True, slots=True)
class TierLine:
    name: str
    order: float | None
    policies: tuple[PolicyLine, ...]
    default_action: str = "Deny"


@dataclass(frozen=True, slots=True)
class ProfileLine:
    name: str
    exists: bool
    chain: str
    rules: tuple[RuleLine, ...]


@dataclass(frozen=True, slots=True)
class Section:
    """One direction (or host endpoint stage) of an endpoint, in evaluation order."""

    name: str  # "ingress", "egress", "forward ingress", "preDNAT ingress", ...
    table: str
    tiers: tuple[TierLine, ...]
    profiles: tuple[ProfileLine, ...]
    uses_profiles: bool
    decisive: bool  # a tier that decides nothing drops; nothing accepted drops


@dataclass(frozen=True, slots=True)
class EndpointExplanation:
    endpoint: Endpoint
    node: str
    labels: Mapping[str, str] = field(hash=False)
    sections: tuple[Section, ...]
    counters: bool


def policy_display_name(pol: Policy) -> str:
    """The policy's name as felix's rule comments carry it."""
    return pol.name if pol.namespace is None else f"{pol.namespace}/{pol.name}"


def _rule_lines(
    rules: Sequence[Rule], table: str, chain: str, counters: CounterTable | None
) -> tuple[RuleLine, ...]:
    out = []
    for i, rule in enumerate(rules):
        counter = None if counters is None else counters.get(table, chain, i)
        out.append(RuleLine(i, rule.action.value, rule_to_dict(rule), counter))
    return tuple(out)


def _tier_order(calc: Calculator, name: str) -> float | None:
    tier = calc.tiers.get(name)
    return tier.order if tier is not None else None


def explain_endpoint(
    calc: Calculator, ep_key: str, counters: CounterTable | None = None
) -> EndpointExplanation:
    """What felix on ``calc.hostname`` programs for endpoint ``ep_key``, per direction."""
    plan = calc.plan(ep_key)
    if plan is None:
        ep = calc.endpoints.get(ep_key)
        what = endpoint_label(ep) if ep is not None else ep_key
        raise ExplainError(f"{what}: not an endpoint of node {calc.hostname!r}")
    ep = plan.endpoint
    sections = []
    for label, attr, direction, table, with_profiles, decisive, host_only in _SECTIONS:
        if host_only and ep.kind != "host":
            continue
        tier_plans: tuple[TierPlan, ...] = getattr(plan, attr)
        tiers = []
        for tp in tier_plans:
            lines = []
            for pk in tp.policies:
                pol = calc.policies[pk]
                chain = policy_chain(pk, direction)
                rules = pol.ingress if direction == "ingress" else pol.egress
                lines.append(
                    PolicyLine(
                        pk,
                        policy_display_name(pol),
                        pol.order,
                        chain,
                        _rule_lines(rules, table, chain, counters),
                    )
                )
            tiers.append(
                TierLine(tp.name, _tier_order(calc, tp.name), tuple(lines), tp.default_action)
            )
        profiles = []
        if with_profiles:
            for name in plan.profiles:
                prof = calc.profiles.get(name)
                chain = profile_chain(name, direction)
                rules = (
                    ()
                    if prof is None
                    else (prof.ingress if direction == "ingress" else prof.egress)
                )
                profiles.append(
                    ProfileLine(
                        name, prof is not None, chain, _rule_lines(rules, "filter", chain, counters)
                    )
                )
        sections.append(
            Section(label, table, tuple(tiers), tuple(profiles), with_profiles, decisive)
        )
    labels = calc.effective_labels(ep_key) or ep.labels
    return EndpointExplanation(
        ep, calc.hostname, dict(labels), tuple(sections), counters is not None
    )


def _counter_json(c: Counter | None) -> dict[str, int] | None:
    return None if c is None else {"packets": c.packets, "bytes": c.bytes}


def _rules_json(rules: Sequence[RuleLine], with_counters: bool) -> list[dict[str, Any]]:
    out = []
    for r in rules:
        item: dict[str, Any] = {"index": r.index, "rule": dict(r.rule)}
        if with_counters:
            item["counters"] = _counter_json(r.counter)
        out.append(item)
    return out


def explanation_to_json(exp: EndpointExplanation) -> dict[str, Any]:
    ep = exp.endpoint
    sections: dict[str, Any] = {}
    for s in exp.sections:
        body: dict[str, Any] = {
            "table": s.table,
            "tiers": [
                {
                    "name": t.name,
                    "order": t.order,
                    "policies": [
                        {
                            "key": p.key,
                            "name": p.name,
                            "order": p.order,
                            "chain": p.chain,
                            "rules": _rules_json(p.rules, exp.counters),
                        }
                        for p in t.policies
                    ],
                }
                for t in s.tiers
            ],
        }
        if s.uses_profiles:
            body["profiles"] = [
                {
                    "name": p.name,
                    "exists": p.exists,
                    "chain": p.chain,
                    "rules": _rules_json(p.rules, exp.counters),
                }
                for p in s.profiles
            ]
        sections[s.name] = body
    return {
        "endpoint": {
            "kind": "WorkloadEndpoint" if ep.kind == "workload" else "HostEndpoint",
            "name": ep.name,
            "namespace": ep.namespace,
            "node": ep.node,
            "interface": ep.iface,
            "addresses": [str(n) for n in ep.nets],
            "labels": dict(sorted(exp.labels.items())),
            "profiles": list(ep.profiles),
        },
        "node": exp.node,
        "directions": sections,
    }


def _rule_text(rule: Mapping[str, Any]) -> str:
    """``Allow protocol=TCP destination.ports=[8080]``: the rule's fields on one line."""
    parts = [str(rule.get("action"))]

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, list):
            parts.append(f"{prefix}=[{', '.join(str(v) for v in value)}]")
        else:
            parts.append(f"{prefix}={value}")

    walk("", {k: v for k, v in rule.items() if k not in ("action", "metadata")})
    return " ".join(parts)


def _order_text(order: float | None) -> str:
    if order is None:
        return "no order"
    return f"order {int(order) if float(order).is_integer() else order}"


def _counter_text(c: Counter | None, with_counters: bool) -> str:
    if not with_counters:
        return ""
    return "[no chain in iptables] " if c is None else f"[{c.packets} pkts, {c.bytes} bytes] "


def _rule_line(r: RuleLine, with_counters: bool) -> str:
    return f"{r.index}: {_counter_text(r.counter, with_counters)}{_rule_text(r.rule)}"


def render_explanation(exp: EndpointExplanation) -> str:
    ep = exp.endpoint
    lines = [
        f"{endpoint_label(ep)} on node {ep.node} (interface {ep.iface or '-'}; "
        f"{', '.join(str(n) for n in ep.nets) or 'no addresses'})",
        "labels: " + (", ".join(f"{k}={v}" for k, v in sorted(exp.labels.items())) or "none"),
        "profiles: " + (", ".join(ep.profiles) or "none"),
    ]
    if exp.counters:
        lines.append(
            "counters: packets that started a connection (later packets of a connection skip"
            " policy); a policy's or profile's chain is shared by every endpoint of this node"
            " that uses it, so its counters are the sum over them"
        )
    for s in exp.sections:
        lines.append("")
        lines.append(f"{s.name} ({s.table} table):")
        if not s.tiers:
            lines.append("  no policy applies")
        for n, tier in enumerate(s.tiers, 1):
            lines.append(f"  {n}. tier {tier.name} ({_order_text(tier.order)})")
            for pol in tier.policies:
                lines.append(f"     policy {pol.name} ({_order_text(pol.order)}) chain {pol.chain}")
                if not pol.rules:
                    lines.append("       no rules")
                for r in pol.rules:
                    lines.append(f"       {_rule_line(r, exp.counters)}")
            if not s.decisive:
                end = "continue with the next tier"
            elif tier.default_action == "Pass":
                end = "continue with the next tier (defaultAction: Pass)"
            else:
                end = "drop"
            lines.append(f"     end of tier {tier.name}: {end}")
        if s.uses_profiles:
            if not s.profiles:
                lines.append("  profiles: none")
            for prof in s.profiles:
                if not prof.exists:
                    lines.append(f"  profile {prof.name}: does not exist (skipped)")
                    continue
                lines.append(f"  profile {prof.name} chain {prof.chain}")
                if not prof.rules:
                    lines.append("     no rules")
                for r in prof.rules:
                    lines.append(f"     {_rule_line(r, exp.counters)}")
            lines.append("  nothing accepted: drop")
        elif s.tiers:
            end = "drop" if s.decisive else "on to the next stage"
            lines.append(f"  nothing accepted: {end}")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- trace


@dataclass(frozen=True, slots=True)
class FlowEnd:
    """One end of a traced flow: what the user named, the address used, its endpoint if any."""

    given: str
    ip: IPAddress
    endpoint: Endpoint | None


@dataclass(frozen=True, slots=True)
class Step:
    """One evaluation on the packet's path: an endpoint, a direction and a felix stage."""

    direction: Literal["ingress", "egress"]
    stage: Stage
    endpoint: Endpoint
    node: str
    verdict: Verdict
    decided: bool  # False: an untracked / preDNAT stage that let the packet go on
    policy_key: str | None  # the deciding policy's key ("gnp/x", "np/ns/x")


@dataclass(frozen=True, slots=True)
class TraceResult:
    packet: Packet
    source: FlowEnd
    destination: FlowEnd
    steps: tuple[Step, ...]
    action: Literal["allow", "deny"]
    decided_by: int | None  # index into steps; None when no step took place
    notes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class FlowSpec:
    """What to trace, as the user gives it (``tabbyctl trace`` options)."""

    source: str
    destination: str
    protocol: str
    port: int | None = None
    sport: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    namespace: str | None = None  # default namespace of ``[ns/]name`` ends


def _peer_name(ep: Endpoint) -> str:
    return f"workload {ep.namespace}/{ep.name}" if ep.kind == "workload" else f"host {ep.name}"


def build_resolver(calc: Calculator) -> StaticResolver:
    """Who owns each address, as felix's IP sets see it: every endpoint of the cluster with its
    effective labels and named ports, and every network set with its labels and nets."""
    resolver = StaticResolver()
    for key, ep in calc.endpoints.items():
        labels = calc.effective_labels(key)
        if labels is None:
            continue
        ports = tuple((p.name, p.protocol, p.port) for p in ep.ports)
        host_nets = [n for n in ep.nets if n.prefixlen == n.max_prefixlen]
        wide = [n for n in ep.nets if n.prefixlen != n.max_prefixlen]
        resolver.put(
            key,
            PeerInfo(labels, ports, _peer_name(ep)),
            ips=[n.network_address for n in host_nets],
            nets=wide,
        )
    for key, ns in calc.network_sets.items():
        what = (
            f"networkset {ns.namespace}/{key.rsplit('/', 1)[-1]}"
            if ns.namespace
            else (f"globalnetworkset {key.rsplit('/', 1)[-1]}")
        )
        resolver.put(key, PeerInfo(ns.labels, (), what), nets=ns.nets)
    return resolver


def _resolve_end(
    calc: Calculator, text: str, namespace: str | None
) -> tuple[str, IPAddress | None, Endpoint | None]:
    text = text.strip()
    if text.startswith("hep:"):
        return text, None, find_host_endpoint(calc, text[4:])
    try:
        ip = ip_address(text)
    except ValueError:
        pass
    else:
        return text, ip, endpoint_by_address(calc, ip)
    ns, _, name = text.rpartition("/")
    if not name:
        raise ExplainError(f"{text!r}: expected [NAMESPACE/]NAME, hep:NAME or an IP address")
    return text, None, find_workload(calc, name, ns or namespace)


def _address(ep: Endpoint, version: int) -> IPAddress | None:
    for net in ep.nets:
        if net.version == version:
            return net.network_address
    return None


def _packet(spec: FlowSpec, src: IPAddress, dst: IPAddress) -> Packet:
    text = spec.protocol.strip()
    try:
        proto = protocol_number(text)
    except ValueError as exc:
        raise ExplainError(f"--proto: {exc}") from None
    if src.version == 6 and proto == 1:
        proto = 58  # "icmp" towards an IPv6 address means ICMPv6
    if src.version == 4 and proto == 58:
        raise ExplainError("--proto: ICMPv6 needs IPv6 addresses")
    is_icmp = proto in (1, 58)
    sport: int | None = None
    dport: int | None = None
    if proto in (6, 17, 132):
        if spec.port is None:
            raise ExplainError(f"--port is required for protocol {text}")
        sport = spec.sport if spec.sport is not None else DEFAULT_SPORT
        dport = spec.port
    elif spec.port is not None or spec.sport is not None:
        raise ExplainError(f"--port/--sport only go with TCP, UDP or SCTP, not {text}")
    if not is_icmp and (spec.icmp_type is not None or spec.icmp_code is not None):
        raise ExplainError(f"--icmp-type/--icmp-code only go with ICMP, not {text}")
    itype = icode = None
    if is_icmp:
        itype = spec.icmp_type if spec.icmp_type is not None else (8 if proto == 1 else 128)
        icode = spec.icmp_code if spec.icmp_code is not None else 0
    try:
        return Packet(src, dst, proto, sport, dport, itype, icode)
    except EngineError as exc:
        raise ExplainError(str(exc)) from None


def _engine_inputs(
    calc: Calculator,
    plan: EndpointPlan,
    tier_plans: Sequence[TierPlan],
    with_profiles: bool,
    decisive: bool,
) -> tuple[list[PolicyView], dict[str, TierView], list[ProfileView], dict[str, str]]:
    """Engine views in exactly the plan's order (orders are the plan positions)."""
    views: list[PolicyView] = []
    tiers: dict[str, TierView] = {}
    keys: dict[str, str] = {}
    for t_index, tp in enumerate(tier_plans):
        action: Literal["Deny", "Pass"] = (
            "Deny" if decisive and tp.default_action != "Pass" else "Pass"
        )
        tiers[tp.name] = TierView(tp.name, float(t_index), action)
        for p_index, pk in enumerate(tp.policies):
            pol = calc.policies[pk]
            name = policy_display_name(pol)
            keys[name] = pk
            views.append(
                PolicyView(
                    name,
                    pol.tier,
                    float(p_index),
                    pol.ingress,
                    pol.egress,
                    pol.types,
                    pol.namespace,
                )
            )
    profiles: list[ProfileView] = []
    if with_profiles:
        for name in plan.profiles:
            prof: Profile | None = calc.profiles.get(name)
            if prof is not None:  # felix skips profiles that do not exist
                profiles.append(ProfileView(name, prof.ingress, prof.egress))
    return views, tiers, profiles, keys


def _stages(ep: Endpoint, direction: Literal["ingress", "egress"]) -> tuple[tuple[Stage, str], ...]:
    """felix's stages for traffic to/from an endpoint, in packet order (plan attributes)."""
    if ep.kind == "workload":
        return (("normal", direction),)
    if direction == "ingress":
        return (
            ("untracked", "untracked_ingress"),
            ("preDNAT", "pre_dnat_ingress"),
            ("normal", "ingress"),
        )
    return (("untracked", "untracked_egress"), ("normal", "egress"))


def _endpoint_steps(
    cluster: Cluster,
    ep: Endpoint,
    direction: Literal["ingress", "egress"],
    packet: Packet,
    resolver: StaticResolver,
) -> list[Step]:
    calc = cluster.calc(ep.node)
    plan = calc.plan(ep.key)
    assert plan is not None  # the endpoint is local to its own node's calculator
    steps: list[Step] = []
    for stage, attr in _stages(ep, direction):
        tier_plans: tuple[TierPlan, ...] = getattr(plan, attr)
        normal = stage == "normal"
        if not normal and not tier_plans:
            continue  # felix renders no chain for this stage
        views, tiers, profiles, keys = _engine_inputs(calc, plan, tier_plans, normal, normal)
        verdict = evaluate(direction, packet, views, tiers, profiles, resolver)
        decided = normal or verdict.reason == "policy rule"
        if stage == "preDNAT" and verdict.action == "allow":
            decided = False  # a pre-DNAT Allow goes on to the normal policy (felix, Calico)
        key = keys.get(verdict.policy) if verdict.policy else None
        steps.append(Step(direction, stage, ep, ep.node, verdict, decided, key))
        if decided:
            break
    return steps


def trace(cluster: Cluster, spec: FlowSpec) -> TraceResult:
    """The verdict felix's rules give the first packet of ``spec``'s flow.

    Ends are ``[ns/]name`` (a WorkloadEndpoint, by full or pod name), ``hep:NAME`` or an IP
    address (its endpoint, if some endpoint owns it). The source endpoint's egress is evaluated
    on its node, then the destination endpoint's ingress on its node; the packet is allowed
    when no step denies it. Raises ``ExplainError`` for names or options that do not resolve.
    """
    calc = cluster.any_calc
    src_text, src_ip, src_ep = _resolve_end(calc, spec.source, spec.namespace)
    dst_text, dst_ip, dst_ep = _resolve_end(calc, spec.destination, spec.namespace)
    version = _choose_version(src_ip, src_ep, dst_ip, dst_ep, spec)
    src_addr = src_ip or (_address(src_ep, version) if src_ep else None)
    dst_addr = dst_ip or (_address(dst_ep, version) if dst_ep else None)
    assert src_addr is not None and dst_addr is not None
    packet = _packet(spec, src_addr, dst_addr)
    resolver = build_resolver(calc)
    notes: list[str] = []
    steps: list[Step] = []
    denied = False
    path: tuple[tuple[Endpoint | None, Literal["ingress", "egress"]], ...] = (
        (src_ep, "egress"),
        (dst_ep, "ingress"),
    )
    for ep, direction in path:
        if ep is None:
            continue
        if denied:
            notes.append(
                f"{direction} of {endpoint_label(ep)} not evaluated: the packet was dropped"
            )
            continue
        steps.extend(_endpoint_steps(cluster, ep, direction, packet, resolver))
        denied = any(s.decided and s.verdict.action == "deny" for s in steps)
    decided_by: int | None = None
    for i, s in enumerate(steps):
        if s.decided:
            decided_by = i
            if s.verdict.action == "deny":
                break
    action: Literal["allow", "deny"] = "deny" if denied else "allow"
    if not steps:
        notes.append(
            "no endpoint of the cluster at either end: felix does not police this flow"
            " (host endpoints with applyOnForward policy on the path are not traced)"
        )
    if dst_ep is None and src_ep is not None and dst_addr in calc.host_addresses:
        notes.append(
            "the destination is a node address: traffic from a workload to its own node then"
            " meets defaultEndpointToHostAction (not evaluated here)"
        )
    for ep in (src_ep, dst_ep):
        if ep is not None and ep.kind == "host":
            notes.append(
                f"{endpoint_label(ep)}: failsafe ports are accepted before any policy"
                " (not evaluated here)"
            )
    return TraceResult(
        packet,
        FlowEnd(src_text, src_addr, src_ep),
        FlowEnd(dst_text, dst_addr, dst_ep),
        tuple(steps),
        action,
        decided_by,
        tuple(notes),
    )


def _choose_version(
    src_ip: IPAddress | None,
    src_ep: Endpoint | None,
    dst_ip: IPAddress | None,
    dst_ep: Endpoint | None,
    spec: FlowSpec,
) -> int:
    if src_ip is not None and dst_ip is not None and src_ip.version != dst_ip.version:
        raise ExplainError(f"{spec.source} and {spec.destination} are of different IP versions")
    version = next((ip.version for ip in (src_ip, dst_ip) if ip is not None), 0)
    candidates = (version,) if version else (4, 6)
    for v in candidates:
        if all(
            ip is not None or (ep is not None and _address(ep, v) is not None)
            for ip, ep in ((src_ip, src_ep), (dst_ip, dst_ep))
        ):
            return v
    raise ExplainError(
        f"no common IP version: {spec.source} and {spec.destination} need addresses of one family"
    )


def _step_title(s: Step) -> str:
    stage = "" if s.stage == "normal" else f" ({s.stage})"
    return f"{s.direction}{stage} of {endpoint_label(s.endpoint)} on node {s.node}"


def _decision_text(s: Step) -> str:
    v = s.verdict
    if not s.decided:
        if v.reason == "policy rule":
            return f"allowed by policy {v.policy} rule {v.rule_index} (tier {v.tier}): goes on"
        return "no policy decided: goes on"
    if v.reason == "policy rule":
        return f"{v.action} by policy {v.policy} rule {v.rule_index} (tier {v.tier})"
    if v.reason == "end of tier drop":
        return f"deny: end of tier {v.tier} (no policy of the tier allowed or passed it)"
    if v.reason == "profile rule":
        return f"{v.action} by profile {v.profile} rule {v.rule_index}"
    return "deny: no policy or profile accepted it"


def render_trace(result: TraceResult) -> str:
    p = result.packet
    ports = ""
    if p.dst_port is not None:
        ports = f" {p.src_port} -> {p.dst_port}"
    elif p.icmp_type is not None:
        ports = f" type {p.icmp_type} code {p.icmp_code}"

    def end(e: FlowEnd) -> str:
        owner = endpoint_label(e.endpoint) if e.endpoint else "no endpoint"
        return f"{e.ip} ({owner})"

    lines = [
        f"flow: {end(result.source)} -> {end(result.destination)} protocol {p.protocol}{ports}",
        f"verdict: {result.action.upper()}",
    ]
    if result.decided_by is not None:
        s = result.steps[result.decided_by]
        lines.append(f"decided by: {_step_title(s)}: {_decision_text(s)}")
    for i, s in enumerate(result.steps, 1):
        lines.append("")
        lines.append(f"step {i}: {_step_title(s)}: {_decision_text(s)}")
        lines.extend(f"  {t}" for t in s.verdict.trace)
    if result.notes:
        lines.append("")
        lines.extend(f"note: {n}" for n in result.notes)
    return "\n".join(lines) + "\n"


def _end_json(e: FlowEnd) -> dict[str, Any]:
    out: dict[str, Any] = {"given": e.given, "address": str(e.ip), "endpoint": None}
    if e.endpoint is not None:
        out["endpoint"] = {
            "kind": "WorkloadEndpoint" if e.endpoint.kind == "workload" else "HostEndpoint",
            "name": e.endpoint.name,
            "namespace": e.endpoint.namespace,
            "node": e.endpoint.node,
        }
    return out


def trace_to_json(result: TraceResult) -> dict[str, Any]:
    p = result.packet
    steps = []
    for s in result.steps:
        v = s.verdict
        steps.append(
            {
                "direction": s.direction,
                "stage": s.stage,
                "endpoint": _end_json(FlowEnd("", p.src, s.endpoint))["endpoint"],
                "node": s.node,
                "action": v.action,
                "decided": s.decided,
                "reason": v.reason,
                "tier": v.tier,
                "policy": v.policy,
                "policyKey": s.policy_key,
                "profile": v.profile,
                "ruleIndex": v.rule_index,
                "trace": list(v.trace),
            }
        )
    return {
        "action": result.action,
        "decidedBy": result.decided_by,
        "packet": {
            "source": str(p.src),
            "destination": str(p.dst),
            "protocol": p.protocol,
            "sourcePort": p.src_port,
            "destinationPort": p.dst_port,
            "icmpType": p.icmp_type,
            "icmpCode": p.icmp_code,
        },
        "source": _end_json(result.source),
        "destination": _end_json(result.destination),
        "steps": steps,
        "notes": list(result.notes),
    }
