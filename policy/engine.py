"""Reference policy engine: the verdict Calico reaches for one packet, and what decided it.

Role
    A pure, deliberately simple model of Calico's policy evaluation for one endpoint and one
    direction. It is the oracle that felix's iptables rendering is tested against (real packets
    must get the verdict this module computes) and the engine behind ``tabbyctl trace``.

Inputs
    * ``Packet``: source and destination address (one family), IANA protocol number, ports
      (TCP/UDP/SCTP/UDPLite) or ICMP type and code (ICMP for IPv4, ICMPv6 for IPv6).
    * ``PolicyView`` / ``ProfileView`` / ``TierView``: what the policies, profiles and tiers say,
      independent of the datastore. ``policies`` must be exactly the policies that *apply* to
      the endpoint (the caller has evaluated their ``spec.selector``); the engine filters them
      by direction only.
    * ``PeerResolver``: who owns an address. ``lookup(ip)`` returns every label set that
      contains the IP (a workload endpoint, a host endpoint, one or more network sets ...).
      Both ends are resolved, the endpoint's own address included. ``StaticResolver`` is a
      simple in-memory implementation (and the stateful fake for tests).

Outputs
    ``Verdict``: ``allow`` or ``deny``, a fixed ``reason``, the deciding tier / policy / rule
    index or profile / rule index, and a human-readable ``trace`` of every step.

Semantics (Calico's; this is the documented behaviour)
    Direction
        ``ingress`` evaluates the policies' ``ingress`` rules for packets *to* the endpoint,
        ``egress`` the ``egress`` rules for packets *from* it. Whatever the direction, a rule's
        ``source`` matches the packet's source and ``destination`` its destination.
    Tiers
        A policy takes part in a direction when its ``types`` contains ``"Ingress"`` /
        ``"Egress"`` (Calico's spelling; anything else is an ``EngineError``). Only tiers that
        hold at least one such policy are evaluated, in ``policy.ordering`` order (``order``
        ascending, ``None`` last, ties by name); inside a tier, policies in the same order;
        inside a policy, rules in list order.
    Actions
        The first matching rule decides: ``Allow`` allows and ``Deny`` denies (evaluation
        stops); ``Pass`` skips the rest of the tier (the remaining rules of that policy and the
        remaining policies) and continues with the next tier; ``Log`` is recorded in the trace
        and evaluation continues with the next rule.
    End of tier
        When no rule of an evaluated tier matched with Allow, Deny or Pass, the tier's
        ``default_action`` applies: ``Deny`` ("end of tier drop", the default) or ``Pass``
        (continue with the next tier). A policy whose types include the direction but that has
        no rules for it therefore leads to the end-of-tier action.
    Profiles
        After every evaluated tier passed, or when no policy applies in this direction, the
        profiles are evaluated in the given order with the same rule semantics. ``Allow`` /
        ``Deny`` decide; ``Pass`` ends that profile (as felix's profile chain returns) and
        evaluation continues with the next profile; ``Log`` continues. When no profile allows
        or denies, or there are no profiles, the packet is denied ("no profile allowed").
    Rule match (every field that is present must match)
        * IP family: a rule with ``ipVersion`` matches only packets of that family. For each of
          the four net lists (source/destination ``nets`` / ``notNets``) only nets of the
          packet's family are used; a non-empty list with no net of that family means the rule
          does not match (felix does not render it in that family's chains).
        * ``protocol`` equals / ``notProtocol`` differs from the packet's protocol number.
        * ``icmp`` / ``notICMP``: compared only for ICMP packets (protocol 1 over IPv4, 58 over
          IPv6). ``icmp`` matches when the type is equal and, if a code is given, the code is
          equal; ``notICMP`` when that is not the case. A non-ICMP packet matches neither.
        * ``nets``: the address is in any of them; ``notNets``: in none of them.
        * ``selector`` (after scoping, see below): at least one owner of the address matches.
          ``notSelector``: no owner matches. An unknown address (no owner, or owners without
          labels) never matches a ``selector`` and always satisfies a ``notSelector``.
        * ``ports``: the packet's port is in one of the ranges, or is a named port: some owner
          of the address that matches the side's (scoped) selector (any owner when there is no
          selector) declares a port with that name, the packet's protocol and the packet's port
          (this is felix's named-port IP set). ``notPorts``: none of its entries matches.
          A packet without a port never matches a rule that has ``ports`` or ``notPorts``.
    Selector scoping (``scoped_selectors``; mirrors Calico's v3 -> v1 rule conversion)
        For one rule side, with ``ns`` the policy's namespace (``None`` for global policies and
        profiles):
        * the namespace part is ``namespaceSelector`` with every label key prefixed ``pcns.``
          (namespaces' labels, as endpoints carry them), with ``all()`` meaning "any namespaced
          endpoint" (``has(projectcalico.org/namespace)``) and ``global()`` meaning "not
          namespaced" (``!has(projectcalico.org/namespace)``); without a namespaceSelector in a
          namespaced policy it is ``projectcalico.org/namespace == "<ns>"``;
        * ``serviceAccounts`` becomes ``selector`` with keys prefixed ``pcsa.`` AND
          ``projectcalico.org/serviceaccount in {names}``;
        * the effective selector is the AND of the namespace part, the service-account part and
          the rule's own ``selector``; the namespace part is added only when the side has a
          selector, a notSelector, a namespaceSelector or serviceAccounts (so a bare
          ``notSelector`` in a namespaced policy restricts the side to the policy's namespace,
          and a side with only nets or ports is not restricted at all);
        * ``notSelector`` is used as written: Calico does not scope it (scoping happens through
          the positive selector above).
        ``evaluate(..., effective_selector=hook)`` lets the caller supply its own rewriting.

Invariants
    Pure: no I/O; the result depends only on the arguments. Evaluation is linear in the number
    of rules (each address is resolved once per call, scoped selectors are cached).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Literal, Protocol

from policy.ordering import order_policies, order_tiers
from policy.rules import Action, EntityRule, ICMPMatch, NamedPort, Port, PortRange, Rule
from policy.selector import (
    NAMESPACE_LABEL,
    All,
    And,
    Contains,
    EndsWith,
    Eq,
    Expr,
    Global,
    Has,
    In,
    Ne,
    Not,
    NotIn,
    Or,
    Selector,
    StartsWith,
)

__all__ = [
    "NAMESPACE_LABEL_PREFIX",
    "SERVICE_ACCOUNT_LABEL",
    "SERVICE_ACCOUNT_LABEL_PREFIX",
    "Direction",
    "EngineError",
    "IPAddress",
    "Packet",
    "Peer",
    "PeerInfo",
    "PeerResolver",
    "PolicyView",
    "ProfileView",
    "Reason",
    "SelectorHook",
    "SelectorPair",
    "Side",
    "StaticResolver",
    "TierView",
    "Verdict",
    "evaluate",
    "prefix_label_keys",
    "rule_matches",
    "scoped_selectors",
]

log = logging.getLogger(__name__)

#: Prefix of namespace labels as endpoints carry them (``pcns.<namespace label>``).
NAMESPACE_LABEL_PREFIX = "pcns."
#: Prefix of service-account labels as endpoints carry them (``pcsa.<account label>``).
SERVICE_ACCOUNT_LABEL_PREFIX = "pcsa."
#: Label holding the name of an endpoint's service account.
SERVICE_ACCOUNT_LABEL = "projectcalico.org/serviceaccount"

IPAddress = IPv4Address | IPv6Address
IPNet = IPv4Network | IPv6Network
Direction = Literal["ingress", "egress"]
Side = Literal["source", "destination"]
#: ``(selector, notSelector)`` for one rule side; ``None`` means the field is absent.
SelectorPair = tuple[Selector | None, Selector | None]
#: Why the verdict is what it is. ``"policy rule"`` / ``"profile rule"``: a rule decided (see
#: ``policy`` / ``profile`` and ``rule_index``); ``"end of tier drop"``: a tier's policies
#: neither allowed, denied nor passed the packet (see ``tier``); ``"no profile allowed"``: the
#: profiles (if any) neither allowed nor denied it.
Reason = Literal["policy rule", "end of tier drop", "profile rule", "no profile allowed"]

_PORT_PROTOCOLS = frozenset({6, 17, 132, 136})  # TCP, UDP, SCTP, UDPLite
_REQUIRED_PORT_PROTOCOLS = frozenset({6, 17, 132})
_ICMP_BY_VERSION = {4: 1, 6: 58}
_TYPE_BY_DIRECTION: dict[str, str] = {"ingress": "Ingress", "egress": "Egress"}
_POLICY_TYPES = frozenset(_TYPE_BY_DIRECTION.values())
_SCOPED_CACHE_SIZE = 4096


class EngineError(ValueError):
    """Invalid input to the engine (a malformed packet, view or argument)."""


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True, slots=True)
class Packet:
    """One packet (the first packet of a connection, as policy sees it).

    ``src`` and ``dst`` share one family. TCP, UDP and SCTP packets need both ports (UDPLite
    may carry them); ICMP packets (protocol 1 over IPv4, 58 over IPv6) need type and code.
    Other protocols carry neither. Raises ``EngineError`` otherwise.
    """

    src: IPAddress
    dst: IPAddress
    protocol: int
    src_port: int | None = None
    dst_port: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None

    def __post_init__(self) -> None:
        if self.src.version != self.dst.version:
            raise EngineError(f"packet mixes address families: {self.src} -> {self.dst}")
        if not 0 <= self.protocol <= 255:
            raise EngineError(f"packet protocol {self.protocol} out of range 0..255")
        has_ports = self.src_port is not None or self.dst_port is not None
        if self.protocol in _REQUIRED_PORT_PROTOCOLS and (
            self.src_port is None or self.dst_port is None
        ):
            raise EngineError(f"protocol {self.protocol} packet needs src_port and dst_port")
        if has_ports and self.protocol not in _PORT_PROTOCOLS:
            raise EngineError(f"protocol {self.protocol} packet cannot carry ports")
        for port in (self.src_port, self.dst_port):
            if port is not None and not 0 <= port <= 65535:
                raise EngineError(f"packet port {port} out of range 0..65535")
        is_icmp = self.protocol == _ICMP_BY_VERSION[self.src.version]
        has_icmp = self.icmp_type is not None or self.icmp_code is not None
        if is_icmp and (self.icmp_type is None or self.icmp_code is None):
            raise EngineError("ICMP packet needs icmp_type and icmp_code")
        if has_icmp and not is_icmp:
            raise EngineError(
                f"IPv{self.src.version} protocol {self.protocol} packet cannot carry ICMP fields"
            )
        for value in (self.icmp_type, self.icmp_code):
            if value is not None and not 0 <= value <= 255:
                raise EngineError(f"ICMP type/code {value} out of range 0..255")

    @property
    def version(self) -> int:
        """IP version (4 or 6)."""
        return self.src.version


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """One owner of an address: a workload or host endpoint, or a network set.

    ``labels`` are the labels selectors see (including ``projectcalico.org/namespace``,
    ``pcns.*`` and ``pcsa.*`` ones); ``None`` means nothing is known, which matches no
    selector. ``named_ports`` are ``(name, IANA protocol, port)`` triples the owner declares.
    ``name`` is only for traces (``"workload ns/pod"``, ``"networkset ns/name"``).
    """

    labels: Mapping[str, str] | None = field(default=None, hash=False)
    named_ports: tuple[tuple[str, int, int], ...] = ()
    name: str = ""


#: The brief's name for what is known about the other end; same type as ``PeerInfo``.
Peer = PeerInfo


class PeerResolver(Protocol):
    """Who owns an address (for selector and named-port matches)."""

    def lookup(self, ip: IPAddress) -> tuple[PeerInfo, ...]:
        """Every owner whose addresses or nets contain ``ip`` (empty: unknown address)."""
        ...


class StaticResolver:
    """In-memory ``PeerResolver``: owners keyed by a caller-chosen id, with IPs and/or nets.

    ``put`` adds or replaces an owner, ``remove`` forgets it, ``lookup`` answers from the
    current state (owners sorted by id, so results are deterministic).
    """

    def __init__(self) -> None:
        self._peers: dict[str, PeerInfo] = {}
        self._ips: dict[str, frozenset[IPAddress]] = {}
        self._nets: dict[str, tuple[IPNet, ...]] = {}
        self._by_ip: dict[IPAddress, set[str]] = {}

    def put(
        self,
        key: str,
        peer: PeerInfo,
        *,
        ips: Iterable[IPAddress] = (),
        nets: Iterable[IPNet] = (),
    ) -> None:
        """Add or replace owner ``key``, who owns ``ips`` (exactly) and ``nets`` (any address
        inside)."""
        self.remove(key)
        self._peers[key] = peer
        self._ips[key] = frozenset(ips)
        self._nets[key] = tuple(nets)
        for ip in self._ips[key]:
            self._by_ip.setdefault(ip, set()).add(key)

    def remove(self, key: str) -> None:
        """Forget owner ``key`` (no-op when unknown)."""
        if key not in self._peers:
            return
        for ip in self._ips.pop(key):
            keys = self._by_ip[ip]
            keys.discard(key)
            if not keys:
                del self._by_ip[ip]
        del self._peers[key]
        del self._nets[key]

    def lookup(self, ip: IPAddress) -> tuple[PeerInfo, ...]:
        """Every owner of ``ip``, by exact address or containing net, sorted by key."""
        keys = set(self._by_ip.get(ip, ()))
        for key, nets in self._nets.items():
            if any(net.version == ip.version and ip in net for net in nets):
                keys.add(key)
        return tuple(self._peers[key] for key in sorted(keys))


@dataclass(frozen=True, slots=True)
class PolicyView:
    """A (Global)NetworkPolicy as the engine needs it.

    ``types`` uses Calico's spelling (``"Ingress"``, ``"Egress"``). ``namespace`` is ``None``
    for a GlobalNetworkPolicy. ``name`` is also the tie-breaker for equal orders.
    """

    name: str
    tier: str
    order: float | None
    ingress: tuple[Rule, ...]
    egress: tuple[Rule, ...]
    types: frozenset[str]
    namespace: str | None = None

    def __post_init__(self) -> None:
        unknown = set(self.types) - _POLICY_TYPES
        if unknown:
            raise EngineError(
                f"policy {self.name}: spec.types has {sorted(unknown)}; use 'Ingress'/'Egress'"
            )


@dataclass(frozen=True, slots=True)
class ProfileView:
    """A profile: rules evaluated after the tiers (non-namespaced)."""

    name: str
    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()


@dataclass(frozen=True, slots=True)
class TierView:
    """A tier: its order and what happens when none of its policies decides."""

    name: str
    order: float | None
    default_action: Literal["Deny", "Pass"] = "Deny"

    def __post_init__(self) -> None:
        if self.default_action not in ("Deny", "Pass"):
            raise EngineError(
                f"tier {self.name}: spec.defaultAction must be Deny or Pass, "
                f"got {self.default_action!r}"
            )


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome for one packet.

    ``tier`` / ``policy`` / ``rule_index`` name the deciding policy rule (``tier`` alone for an
    end-of-tier drop); ``profile`` / ``rule_index`` the deciding profile rule. ``trace`` lists
    every step taken, in order.
    """

    action: Literal["allow", "deny"]
    reason: Reason
    tier: str | None
    policy: str | None
    rule_index: int | None
    profile: str | None
    trace: tuple[str, ...]


#: ``(view, rule, side) -> (selector, notSelector)`` actually used for that rule side.
SelectorHook = Callable[[PolicyView | ProfileView, Rule, Side], SelectorPair]


# --------------------------------------------------------------------------- selector scoping


def prefix_label_keys(expr: Expr, prefix: str) -> Expr:
    """``expr`` with every label key prefixed (``k == "v"`` -> ``<prefix>k == "v"``).

    ``all()`` and ``global()`` have no key and are returned unchanged.
    """
    match expr:
        case Eq(key, value):
            return Eq(prefix + key, value)
        case Ne(key, value):
            return Ne(prefix + key, value)
        case Contains(key, value):
            return Contains(prefix + key, value)
        case StartsWith(key, value):
            return StartsWith(prefix + key, value)
        case EndsWith(key, value):
            return EndsWith(prefix + key, value)
        case In(key, values):
            return In(prefix + key, values)
        case NotIn(key, values):
            return NotIn(prefix + key, values)
        case Has(key):
            return Has(prefix + key)
        case Not(operand):
            return Not(prefix_label_keys(operand, prefix))
        case And(operands):
            return And(tuple(prefix_label_keys(o, prefix) for o in operands))
        case Or(operands):
            return Or(tuple(prefix_label_keys(o, prefix) for o in operands))
    return expr  # All(), Global()


def namespace_selector_expr(expr: Expr) -> Expr:
    """A rule's ``namespaceSelector`` as an endpoint selector (keys ``pcns.``-prefixed;
    ``all()``: any namespaced endpoint; ``global()``: any non-namespaced one)."""
    match expr:
        case All():
            return Has(NAMESPACE_LABEL)
        case Global():
            return Not(Has(NAMESPACE_LABEL))
        case Not(operand):
            return Not(namespace_selector_expr(operand))
        case And(operands):
            return And(tuple(namespace_selector_expr(o) for o in operands))
        case Or(operands):
            return Or(tuple(namespace_selector_expr(o) for o in operands))
    return prefix_label_keys(expr, NAMESPACE_LABEL_PREFIX)


def scoped_selectors(rule_side: EntityRule, policy_namespace: str | None) -> SelectorPair:
    """The ``(selector, notSelector)`` that one rule side really matches endpoints with.

    Applies namespace and service-account scoping exactly as described in the module
    docstring (Calico's conversion of v3 rules for felix). ``policy_namespace`` is the policy's
    namespace, ``None`` (or ``""``) for global policies and profiles. Felix must use this same
    function to compute its IP sets, so that the engine and the dataplane cannot disagree.
    """
    return _scoped_cached(rule_side, policy_namespace or None)


@functools.lru_cache(maxsize=_SCOPED_CACHE_SIZE)
def _scoped_cached(side: EntityRule, namespace: str | None) -> SelectorPair:
    parts: list[Expr] = []
    accounts = side.service_accounts
    if accounts is not None:
        if accounts.selector is not None:
            parts.append(prefix_label_keys(accounts.selector.expr, SERVICE_ACCOUNT_LABEL_PREFIX))
        if accounts.names:
            parts.append(In(SERVICE_ACCOUNT_LABEL, tuple(accounts.names)))
    if side.selector is not None:
        parts.append(side.selector.expr)

    ns_part: Expr | None = None
    if side.namespace_selector is not None:
        ns_part = namespace_selector_expr(side.namespace_selector.expr)
    elif namespace is not None:
        ns_part = Eq(NAMESPACE_LABEL, namespace)
    if ns_part is not None and (
        parts or side.not_selector is not None or side.namespace_selector is not None
    ):
        parts.insert(0, ns_part)

    if not parts:
        return None, side.not_selector
    if len(parts) == 1 and side.selector is not None and parts[0] is side.selector.expr:
        return side.selector, side.not_selector
    combined = parts[0] if len(parts) == 1 else And(tuple(parts))
    return Selector.from_expr(combined), side.not_selector


def _default_hook(view: PolicyView | ProfileView, rule: Rule, side: Side) -> SelectorPair:
    namespace = view.namespace if isinstance(view, PolicyView) else None
    return scoped_selectors(rule.source if side == "source" else rule.destination, namespace)


# --------------------------------------------------------------------------- rule matching


def _labels_match(selector: Selector, owners: tuple[PeerInfo, ...]) -> bool:
    return any(o.labels is not None and selector.evaluate(o.labels) for o in owners)


def _family_nets(nets: tuple[IPNet, ...], version: int) -> tuple[IPNet, ...] | None:
    """The nets of ``version``; ``None`` when the list is non-empty but has none of them."""
    same = tuple(n for n in nets if n.version == version)
    if nets and not same:
        return None
    return same


def _port_matches(
    port: Port,
    packet_port: int,
    protocol: int,
    owners: tuple[PeerInfo, ...],
    selector: Selector | None,
) -> bool:
    if isinstance(port, PortRange):
        return port.first <= packet_port <= port.last
    assert isinstance(port, NamedPort)
    for owner in owners:
        if owner.labels is None:
            continue
        if selector is not None and not selector.evaluate(owner.labels):
            continue
        if (port.name, protocol, packet_port) in owner.named_ports:
            return True
    return False


@dataclass(frozen=True, slots=True)
class _End:
    """One end of the packet: its address, port (if any) and the address's owners."""

    ip: IPAddress
    port: int | None
    owners: tuple[PeerInfo, ...]


def _side_matches(side: EntityRule, end: _End, protocol: int, selectors: SelectorPair) -> bool:
    selector, not_selector = selectors
    nets = _family_nets(side.nets, end.ip.version)
    not_nets = _family_nets(side.not_nets, end.ip.version)
    if nets is None or not_nets is None:
        return False
    if nets and not any(end.ip in n for n in nets):
        return False
    if any(end.ip in n for n in not_nets):
        return False
    if selector is not None and not _labels_match(selector, end.owners):
        return False
    if not_selector is not None and _labels_match(not_selector, end.owners):
        return False
    if side.ports or side.not_ports:
        port = end.port
        if port is None:
            return False
        if side.ports and not any(
            _port_matches(p, port, protocol, end.owners, selector) for p in side.ports
        ):
            return False
        if any(_port_matches(p, port, protocol, end.owners, selector) for p in side.not_ports):
            return False
    return True


def _icmp_matches(match: ICMPMatch, packet: Packet) -> bool:
    return packet.icmp_type == match.type and (match.code is None or packet.icmp_code == match.code)


def _rule_matches(
    rule: Rule,
    packet: Packet,
    ends: tuple[_End, _End],
    selectors: tuple[SelectorPair, SelectorPair],
) -> bool:
    """Whether ``rule`` matches; ``ends`` and ``selectors`` are (source, destination)."""
    if rule.ip_version is not None and rule.ip_version != packet.version:
        return False
    if rule.protocol is not None and rule.protocol != packet.protocol:
        return False
    if rule.not_protocol is not None and rule.not_protocol == packet.protocol:
        return False
    if rule.icmp is not None or rule.not_icmp is not None:
        if packet.protocol != _ICMP_BY_VERSION[packet.version]:
            return False
        if rule.icmp is not None and not _icmp_matches(rule.icmp, packet):
            return False
        if rule.not_icmp is not None and _icmp_matches(rule.not_icmp, packet):
            return False
    return _side_matches(rule.source, ends[0], packet.protocol, selectors[0]) and _side_matches(
        rule.destination, ends[1], packet.protocol, selectors[1]
    )


def _ends(packet: Packet, resolver: PeerResolver) -> tuple[_End, _End]:
    return (
        _End(packet.src, packet.src_port, resolver.lookup(packet.src)),
        _End(packet.dst, packet.dst_port, resolver.lookup(packet.dst)),
    )


def rule_matches(
    rule: Rule,
    packet: Packet,
    resolver: PeerResolver,
    policy_namespace: str | None = None,
) -> bool:
    """Whether one rule matches ``packet`` (its action is not considered).

    Selectors are scoped with ``scoped_selectors(side, policy_namespace)``.
    """
    selectors = (
        scoped_selectors(rule.source, policy_namespace),
        scoped_selectors(rule.destination, policy_namespace),
    )
    return _rule_matches(rule, packet, _ends(packet, resolver), selectors)


# --------------------------------------------------------------------------- evaluation


@dataclass(frozen=True, slots=True)
class _Context:
    packet: Packet
    direction: Direction
    ends: tuple[_End, _End]
    hook: SelectorHook


def _first_decision(
    ctx: _Context, view: PolicyView | ProfileView, where: str, trace: list[str]
) -> tuple[Action, int] | None:
    """The first matching Allow/Deny/Pass rule of ``view`` for the direction (Log matches are
    traced and skipped); ``None`` when there is none."""
    rules = view.ingress if ctx.direction == "ingress" else view.egress
    for index, rule in enumerate(rules):
        selectors = (ctx.hook(view, rule, "source"), ctx.hook(view, rule, "destination"))
        if not _rule_matches(rule, ctx.packet, ctx.ends, selectors):
            continue
        trace.append(f"{where} rule {index} matched: {rule.action.value}")
        if rule.action is not Action.LOG:
            return rule.action, index
    return None


def _describe(label: str, end: _End) -> str:
    if not end.owners:
        return f"{label} {end.ip}: unknown address"
    return f"{label} {end.ip}: " + ", ".join(o.name or "(unnamed)" for o in end.owners)


def evaluate(
    direction: Direction,
    packet: Packet,
    policies: Sequence[PolicyView],
    tiers: Mapping[str, TierView],
    profiles: Sequence[ProfileView],
    resolver: PeerResolver,
    *,
    effective_selector: SelectorHook | None = None,
) -> Verdict:
    """Calico's verdict for ``packet`` at one endpoint, in ``direction``.

    ``policies`` are the policies that apply to the endpoint (any direction); ``tiers`` maps
    tier names to tiers and must contain the tier of every policy that takes part in this
    direction (``EngineError`` otherwise); ``profiles`` are the endpoint's profiles in order.
    ``effective_selector`` replaces ``scoped_selectors`` for computing each rule side's
    (selector, notSelector). See the module docstring for the exact semantics.
    """
    if direction not in _TYPE_BY_DIRECTION:
        raise EngineError(f"direction must be 'ingress' or 'egress', got {direction!r}")
    policy_type = _TYPE_BY_DIRECTION[direction]
    ctx = _Context(
        packet=packet,
        direction=direction,
        ends=_ends(packet, resolver),
        hook=effective_selector or _default_hook,
    )
    trace = [
        f"{direction} {packet.src} -> {packet.dst} protocol {packet.protocol}",
        _describe("source", ctx.ends[0]),
        _describe("destination", ctx.ends[1]),
    ]

    by_tier: dict[str, list[PolicyView]] = {}
    for policy in policies:
        if policy_type not in policy.types:
            continue
        if policy.tier not in tiers:
            raise EngineError(f"policy {policy.name}: tier {policy.tier!r} is not known")
        by_tier.setdefault(policy.tier, []).append(policy)

    for tier in order_tiers(tiers[name] for name in by_tier):
        decided = _evaluate_tier(ctx, tier, order_policies(by_tier[tier.name]), trace)
        if decided is not None:
            return _finish(ctx, decided)
    if not by_tier:
        trace.append(f"no policy applies to {direction}")
    return _finish(ctx, _evaluate_profiles(ctx, profiles, trace))


def _evaluate_tier(
    ctx: _Context, tier: TierView, policies: Sequence[PolicyView], trace: list[str]
) -> Verdict | None:
    """The verdict decided inside ``tier``, or ``None`` when the packet passes to the next."""
    for policy in policies:
        where = f"tier {tier.name}: policy {policy.name}"
        decision = _first_decision(ctx, policy, where, trace)
        if decision is None:
            trace.append(f"{where}: no rule matched")
            continue
        action, index = decision
        if action is Action.PASS:
            trace.append(f"tier {tier.name}: passed to the next tier")
            return None
        return Verdict(
            action="allow" if action is Action.ALLOW else "deny",
            reason="policy rule",
            tier=tier.name,
            policy=policy.name,
            rule_index=index,
            profile=None,
            trace=tuple(trace),
        )
    if tier.default_action == "Pass":
        trace.append(f"tier {tier.name}: end of tier, default action Pass")
        return None
    trace.append(f"tier {tier.name}: end of tier, default action Deny")
    return Verdict(
        action="deny",
        reason="end of tier drop",
        tier=tier.name,
        policy=None,
        rule_index=None,
        profile=None,
        trace=tuple(trace),
    )


def _evaluate_profiles(ctx: _Context, profiles: Sequence[ProfileView], trace: list[str]) -> Verdict:
    for profile in profiles:
        where = f"profile {profile.name}"
        decision = _first_decision(ctx, profile, where, trace)
        if decision is None:
            trace.append(f"{where}: no rule matched")
            continue
        action, index = decision
        if action is Action.PASS:
            trace.append(f"{where}: Pass ends this profile")
            continue
        return Verdict(
            action="allow" if action is Action.ALLOW else "deny",
            reason="profile rule",
            tier=None,
            policy=None,
            rule_index=index,
            profile=profile.name,
            trace=tuple(trace),
        )
    trace.append("profiles: none allowed the packet" if profiles else "profiles: none")
    return Verdict(
        action="deny",
        reason="no profile allowed",
        tier=None,
        policy=None,
        rule_index=None,
        profile=None,
        trace=tuple(trace),
    )


def _finish(ctx: _Context, verdict: Verdict) -> Verdict:
    log.debug(
        "engine.verdict direction=%s src=%s dst=%s action=%s reason=%s policy=%s rule=%s",
        ctx.direction,
        ctx.packet.src,
        ctx.packet.dst,
        verdict.action,
        verdict.reason,
        verdict.policy or verdict.profile,
        verdict.rule_index,
    )
    return verdict
