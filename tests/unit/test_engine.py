"""Unit tests for policy.engine: Calico's verdict for one packet, and what decided it.

Most cases are tables: a rule (or a set of policies) and a packet, with the exact verdict and
the deciding tier / policy / rule expected. The rules are parsed from Calico JSON with
``policy.rules.parse_rule`` so that the cases read like real policies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network, ip_address
from typing import Any

import pytest

from policy.engine import (
    Direction,
    EngineError,
    Packet,
    PeerInfo,
    PolicyView,
    ProfileView,
    StaticResolver,
    TierView,
    Verdict,
    evaluate,
    rule_matches,
    scoped_selectors,
)
from policy.rules import Action, EntityRule, ICMPMatch, Rule, ServiceAccountMatch, parse_rule
from policy.selector import parse

TCP, UDP, ICMP, ICMPV6, GRE = 6, 17, 1, 58, 47

# Addresses (pod ranges 10.x only, as the conventions ask).
WEB = "10.0.1.1"  # the local endpoint: ns a, app=web, named ports http/TCP/8080 and dns/UDP/53
CLIENT_A = "10.0.1.2"  # ns a, app=client
CLIENT_B = "10.0.2.2"  # ns b, app=client, named port http/TCP/9090
DB_B = "10.9.5.5"  # ns b, app=db, named port http/TCP/7070; also in network set corp
CORP_ONLY = "10.9.7.7"  # only inside network set corp (non-namespaced)
UNKNOWN = "10.200.0.9"  # nobody owns it
WEB6 = "fd00::1"
CLIENT6 = "fd00::2"
UNKNOWN6 = "fd00:ffff::9"


def ns_labels(ns: str, team: str, **labels: str) -> dict[str, str]:
    """Endpoint labels as felix sees them: own labels, namespace marker, pcns.* labels."""
    return {
        **labels,
        "projectcalico.org/namespace": ns,
        "pcns.projectcalico.org/name": ns,
        "pcns.team": team,
    }


def make_resolver() -> StaticResolver:
    r = StaticResolver()
    web_labels = ns_labels(
        "a",
        "blue",
        app="web",
        **{"projectcalico.org/serviceaccount": "web-sa", "pcsa.role": "frontend"},
    )
    r.put(
        "a/web",
        PeerInfo(web_labels, (("http", TCP, 8080), ("dns", UDP, 53)), "workload a/web"),
        ips=[ip_address(WEB), ip_address(WEB6)],
    )
    r.put(
        "a/client",
        PeerInfo(ns_labels("a", "blue", app="client"), (), "workload a/client"),
        ips=[ip_address(CLIENT_A), ip_address(CLIENT6)],
    )
    r.put(
        "b/client",
        PeerInfo(ns_labels("b", "red", app="client"), (("http", TCP, 9090),), "workload b/client"),
        ips=[ip_address(CLIENT_B)],
    )
    r.put(
        "b/db",
        PeerInfo(ns_labels("b", "red", app="db"), (("http", TCP, 7070),), "workload b/db"),
        ips=[ip_address(DB_B)],
    )
    r.put(
        "corp",
        PeerInfo({"kind": "corp"}, (), "globalnetworkset corp"),
        nets=[IPv4Network("10.9.0.0/16"), IPv6Network("fd00:c::/64")],
    )
    return r


RESOLVER = make_resolver()
DEFAULT = TierView("default", None)
TIERS = {
    "default": DEFAULT,
    "security": TierView("security", 100),
    "platform": TierView("platform", 50),
}


def tcp(src: str, dst: str, dport: int = 80, sport: int = 40000) -> Packet:
    return Packet(ip_address(src), ip_address(dst), TCP, sport, dport)


def udp(src: str, dst: str, dport: int = 53, sport: int = 40000) -> Packet:
    return Packet(ip_address(src), ip_address(dst), UDP, sport, dport)


def icmp(src: str, dst: str, type_: int = 8, code: int = 0) -> Packet:
    proto = ICMP if ip_address(src).version == 4 else ICMPV6
    return Packet(ip_address(src), ip_address(dst), proto, icmp_type=type_, icmp_code=code)


def rule(data: dict[str, Any]) -> Rule:
    return parse_rule({"action": "Allow", **data})


def policy(
    name: str,
    *,
    ingress: list[dict[str, Any]] | None = None,
    egress: list[dict[str, Any]] | None = None,
    tier: str = "default",
    order: float | None = None,
    types: tuple[str, ...] = ("Ingress", "Egress"),
    namespace: str | None = None,
) -> PolicyView:
    return PolicyView(
        name=name,
        tier=tier,
        order=order,
        ingress=tuple(parse_rule(r) for r in ingress or []),
        egress=tuple(parse_rule(r) for r in egress or []),
        types=frozenset(types),
        namespace=namespace,
    )


def profile(
    name: str,
    ingress: list[dict[str, Any]] | None = None,
    egress: list[dict[str, Any]] | None = None,
) -> ProfileView:
    return ProfileView(
        name,
        tuple(parse_rule(r) for r in ingress or []),
        tuple(parse_rule(r) for r in egress or []),
    )


def decided(v: Verdict) -> tuple[str, str, str | None, str | None, int | None, str | None]:
    """The observable outcome of a verdict, without the trace."""
    return (v.action, v.reason, v.tier, v.policy, v.rule_index, v.profile)


ALLOW_P0 = ("allow", "policy rule", "default", "p", 0, None)
EOT_DEFAULT = ("deny", "end of tier drop", "default", None, None, None)


# --------------------------------------------------------------------------- rule fields


@dataclass(frozen=True)
class MatchCase:
    id: str
    rule: dict[str, Any]
    packet: Packet
    matches: bool
    direction: Direction = "ingress"
    namespace: str | None = None


MATCH_CASES = [
    MatchCase("empty rule matches everything", {}, tcp(CLIENT_A, WEB), True),
    # ipVersion
    MatchCase("ipVersion 4 on v4", {"ipVersion": 4}, tcp(CLIENT_A, WEB), True),
    MatchCase("ipVersion 6 on v4", {"ipVersion": 6}, tcp(CLIENT_A, WEB), False),
    MatchCase("ipVersion 6 on v6", {"ipVersion": 6}, tcp(CLIENT6, WEB6), True),
    # protocol / notProtocol
    MatchCase("protocol TCP", {"protocol": "TCP"}, tcp(CLIENT_A, WEB), True),
    MatchCase("protocol UDP vs TCP", {"protocol": "UDP"}, tcp(CLIENT_A, WEB), False),
    MatchCase(
        "protocol number",
        {"protocol": 47},
        Packet(ip_address(CLIENT_A), ip_address(WEB), GRE),
        True,
    ),
    MatchCase("notProtocol TCP vs TCP", {"notProtocol": "TCP"}, tcp(CLIENT_A, WEB), False),
    MatchCase("notProtocol UDP vs TCP", {"notProtocol": "UDP"}, tcp(CLIENT_A, WEB), True),
    # icmp / notICMP
    MatchCase("icmp type", {"protocol": "ICMP", "icmp": {"type": 8}}, icmp(CLIENT_A, WEB), True),
    MatchCase(
        "icmp type+code",
        {"protocol": "ICMP", "icmp": {"type": 8, "code": 0}},
        icmp(CLIENT_A, WEB),
        True,
    ),
    MatchCase(
        "icmp code differs",
        {"protocol": "ICMP", "icmp": {"type": 8, "code": 1}},
        icmp(CLIENT_A, WEB),
        False,
    ),
    MatchCase(
        "icmp type differs", {"protocol": "ICMP", "icmp": {"type": 0}}, icmp(CLIENT_A, WEB), False
    ),
    MatchCase(
        "notICMP same type",
        {"protocol": "ICMP", "notICMP": {"type": 8}},
        icmp(CLIENT_A, WEB),
        False,
    ),
    MatchCase(
        "notICMP other type",
        {"protocol": "ICMP", "notICMP": {"type": 0}},
        icmp(CLIENT_A, WEB),
        True,
    ),
    MatchCase(
        "notICMP other code",
        {"protocol": "ICMP", "notICMP": {"type": 8, "code": 3}},
        icmp(CLIENT_A, WEB),
        True,
    ),
    MatchCase(
        "icmpv6 type", {"protocol": "ICMPv6", "icmp": {"type": 128}}, icmp(CLIENT6, WEB6, 128), True
    ),
    MatchCase("ICMP rule vs ICMPv6 packet", {"protocol": "ICMP"}, icmp(CLIENT6, WEB6, 128), False),
    # nets / notNets
    MatchCase(
        "source nets contain", {"source": {"nets": ["10.0.1.0/24"]}}, tcp(CLIENT_A, WEB), True
    ),
    MatchCase("source nets miss", {"source": {"nets": ["10.0.2.0/24"]}}, tcp(CLIENT_A, WEB), False),
    MatchCase(
        "source nets any of",
        {"source": {"nets": ["10.0.2.0/24", "10.0.1.2/32"]}},
        tcp(CLIENT_A, WEB),
        True,
    ),
    MatchCase(
        "source notNets contain",
        {"source": {"notNets": ["10.0.0.0/16"]}},
        tcp(CLIENT_A, WEB),
        False,
    ),
    MatchCase(
        "source notNets miss", {"source": {"notNets": ["10.0.2.0/24"]}}, tcp(CLIENT_A, WEB), True
    ),
    MatchCase(
        "destination nets contain", {"destination": {"nets": [WEB]}}, tcp(CLIENT_A, WEB), True
    ),
    MatchCase(
        "destination nets miss", {"destination": {"nets": [CLIENT_A]}}, tcp(CLIENT_A, WEB), False
    ),
    # selector / notSelector
    MatchCase(
        "source selector", {"source": {"selector": "app == 'client'"}}, tcp(CLIENT_A, WEB), True
    ),
    MatchCase(
        "source selector miss", {"source": {"selector": "app == 'db'"}}, tcp(CLIENT_A, WEB), False
    ),
    MatchCase(
        "destination selector",
        {"destination": {"selector": "app == 'web'"}},
        tcp(CLIENT_A, WEB),
        True,
    ),
    MatchCase(
        "destination selector is the packet destination",
        {"destination": {"selector": "app == 'client'"}},
        tcp(CLIENT_A, WEB),
        False,
    ),
    MatchCase(
        "source notSelector hit",
        {"source": {"notSelector": "app == 'client'"}},
        tcp(CLIENT_A, WEB),
        False,
    ),
    MatchCase(
        "source notSelector miss",
        {"source": {"notSelector": "app == 'db'"}},
        tcp(CLIENT_A, WEB),
        True,
    ),
    MatchCase(
        "unknown source vs selector", {"source": {"selector": "all()"}}, tcp(UNKNOWN, WEB), False
    ),
    MatchCase(
        "unknown source vs notSelector",
        {"source": {"notSelector": "all()"}},
        tcp(UNKNOWN, WEB),
        True,
    ),
    MatchCase(
        "unknown source vs negative selector",
        {"source": {"selector": "app != 'db'"}},
        tcp(UNKNOWN, WEB),
        False,
    ),
    # several owners of one IP (workload + network set): any of them
    MatchCase(
        "two owners: netset labels",
        {"source": {"selector": "kind == 'corp'"}},
        tcp(DB_B, WEB),
        True,
    ),
    MatchCase(
        "two owners: workload labels", {"source": {"selector": "app == 'db'"}}, tcp(DB_B, WEB), True
    ),
    MatchCase(
        "two owners: notSelector on one",
        {"source": {"notSelector": "kind == 'corp'"}},
        tcp(DB_B, WEB),
        False,
    ),
    MatchCase(
        "netset by CIDR", {"source": {"selector": "kind == 'corp'"}}, tcp(CORP_ONLY, WEB), True
    ),
    # ports / notPorts
    MatchCase(
        "dst port",
        {"protocol": "TCP", "destination": {"ports": [80]}},
        tcp(CLIENT_A, WEB, 80),
        True,
    ),
    MatchCase(
        "dst port miss",
        {"protocol": "TCP", "destination": {"ports": [443]}},
        tcp(CLIENT_A, WEB, 80),
        False,
    ),
    MatchCase(
        "dst port range",
        {"protocol": "TCP", "destination": {"ports": ["8000:9000"]}},
        tcp(CLIENT_A, WEB, 9000),
        True,
    ),
    MatchCase(
        "dst ports any of",
        {"protocol": "TCP", "destination": {"ports": [22, "1000:2000"]}},
        tcp(CLIENT_A, WEB, 1500),
        True,
    ),
    MatchCase(
        "dst notPorts hit",
        {"protocol": "TCP", "destination": {"notPorts": [80]}},
        tcp(CLIENT_A, WEB, 80),
        False,
    ),
    MatchCase(
        "dst notPorts miss",
        {"protocol": "TCP", "destination": {"notPorts": [443]}},
        tcp(CLIENT_A, WEB, 80),
        True,
    ),
    MatchCase(
        "src port",
        {"protocol": "UDP", "source": {"ports": [53]}},
        udp(CLIENT_A, WEB, dport=5000, sport=53),
        True,
    ),
    MatchCase(
        "src port is not dst port",
        {"protocol": "UDP", "source": {"ports": [53]}},
        udp(CLIENT_A, WEB, dport=53, sport=5000),
        False,
    ),
    # named ports: declared by the owner of the address, with the packet's protocol
    MatchCase(
        "named port",
        {"protocol": "TCP", "destination": {"ports": ["http"]}},
        tcp(CLIENT_A, WEB, 8080),
        True,
    ),
    MatchCase(
        "named port: another endpoint's number",
        {"protocol": "TCP", "destination": {"ports": ["http"]}},
        tcp(CLIENT_A, WEB, 9090),
        False,
    ),
    MatchCase(
        "named port: wrong protocol",
        {"protocol": "UDP", "destination": {"ports": ["http"]}},
        udp(CLIENT_A, WEB, 8080),
        False,
    ),
    MatchCase(
        "named port UDP",
        {"protocol": "UDP", "destination": {"ports": ["dns"]}},
        udp(CLIENT_A, WEB, 53),
        True,
    ),
    MatchCase(
        "named port of unknown address",
        {"protocol": "TCP", "destination": {"ports": ["http"]}},
        tcp(CLIENT_A, UNKNOWN, 8080),
        False,
    ),
    MatchCase(
        "named port needs the selector's owner",
        {"protocol": "TCP", "destination": {"selector": "app == 'db'", "ports": ["http"]}},
        tcp(CLIENT_A, WEB, 8080),
        False,
    ),
    MatchCase(
        "named port from the owner that matches the selector",
        {"protocol": "TCP", "destination": {"selector": "app == 'db'", "ports": ["http"]}},
        tcp(WEB, DB_B, 7070),
        True,
        "egress",
    ),
    MatchCase(
        "named port not from an owner the selector does not match",
        {"protocol": "TCP", "destination": {"selector": "kind == 'corp'", "ports": ["http"]}},
        tcp(WEB, DB_B, 7070),
        False,
        "egress",
    ),
    MatchCase(
        "named notPorts hit",
        {"protocol": "TCP", "destination": {"notPorts": ["http"]}},
        tcp(CLIENT_A, WEB, 8080),
        False,
    ),
    MatchCase(
        "named notPorts miss",
        {"protocol": "TCP", "destination": {"notPorts": ["http"]}},
        tcp(CLIENT_A, WEB, 8081),
        True,
    ),
    MatchCase(
        "named source port",
        {"protocol": "TCP", "source": {"ports": ["http"]}},
        tcp(CLIENT_B, WEB, dport=80, sport=9090),
        True,
    ),
    # egress: source is the local endpoint, destination the remote one
    MatchCase(
        "egress source = local",
        {"source": {"selector": "app == 'web'"}},
        tcp(WEB, CLIENT_A),
        True,
        "egress",
    ),
    MatchCase(
        "egress destination = remote",
        {"destination": {"selector": "app == 'client'"}},
        tcp(WEB, CLIENT_A),
        True,
        "egress",
    ),
    MatchCase(
        "egress source is not the remote",
        {"source": {"selector": "app == 'client'"}},
        tcp(WEB, CLIENT_A),
        False,
        "egress",
    ),
    MatchCase(
        "egress named port of remote",
        {"protocol": "TCP", "destination": {"ports": ["http"]}},
        tcp(WEB, CLIENT_B, 9090),
        True,
        "egress",
    ),
    # IPv6
    MatchCase("v6 nets", {"source": {"nets": ["fd00::/64"]}}, tcp(CLIENT6, WEB6), True),
    MatchCase("v6 selector", {"source": {"selector": "app == 'client'"}}, tcp(CLIENT6, WEB6), True),
    MatchCase(
        "v6 unknown vs selector", {"source": {"selector": "all()"}}, tcp(UNKNOWN6, WEB6), False
    ),
    MatchCase(
        "v4 nets vs v6 packet", {"source": {"nets": ["10.0.0.0/8"]}}, tcp(CLIENT6, WEB6), False
    ),
    MatchCase(
        "v4 notNets never match a v6 packet",
        {"source": {"notNets": ["10.0.0.0/8"]}},
        tcp(CLIENT6, WEB6),
        False,
    ),
    MatchCase(
        "v6 notNets hit", {"destination": {"notNets": ["fd00::1/128"]}}, tcp(CLIENT6, WEB6), False
    ),
    MatchCase(
        "v6 named port",
        {"protocol": "TCP", "destination": {"ports": ["http"]}},
        tcp(CLIENT6, WEB6, 8080),
        True,
    ),
    # namespace scoping (namespaced policy in namespace a)
    MatchCase(
        "ns: selector, same namespace",
        {"source": {"selector": "app == 'client'"}},
        tcp(CLIENT_A, WEB),
        True,
        namespace="a",
    ),
    MatchCase(
        "ns: selector, other namespace",
        {"source": {"selector": "app == 'client'"}},
        tcp(CLIENT_B, WEB),
        False,
        namespace="a",
    ),
    MatchCase(
        "global policy: selector, other namespace",
        {"source": {"selector": "app == 'client'"}},
        tcp(CLIENT_B, WEB),
        True,
    ),
    MatchCase(
        "ns: namespaceSelector pcns labels",
        {"source": {"namespaceSelector": "team == 'red'"}},
        tcp(CLIENT_B, WEB),
        True,
        namespace="a",
    ),
    MatchCase(
        "ns: namespaceSelector excludes own namespace",
        {"source": {"namespaceSelector": "team == 'red'"}},
        tcp(CLIENT_A, WEB),
        False,
        namespace="a",
    ),
    MatchCase(
        "ns: namespaceSelector and selector",
        {"source": {"namespaceSelector": "team == 'red'", "selector": "app == 'db'"}},
        tcp(CLIENT_B, WEB),
        False,
        namespace="a",
    ),
    MatchCase(
        "namespaceSelector by name label",
        {"source": {"namespaceSelector": "projectcalico.org/name == 'b'"}},
        tcp(DB_B, WEB),
        True,
    ),
    MatchCase(
        "namespaceSelector is not matched against the endpoint's own labels",
        {"source": {"namespaceSelector": "app == 'client'"}},
        tcp(CLIENT_B, WEB),
        False,
    ),
    MatchCase(
        "namespaceSelector all(): namespaced endpoint",
        {"source": {"namespaceSelector": "all()"}},
        tcp(CLIENT_B, WEB),
        True,
        namespace="a",
    ),
    MatchCase(
        "namespaceSelector all(): not a global network set",
        {"source": {"namespaceSelector": "all()"}},
        tcp(CORP_ONLY, WEB),
        False,
    ),
    MatchCase(
        "namespaceSelector global(): global network set",
        {"source": {"namespaceSelector": "global()"}},
        tcp(CORP_ONLY, WEB),
        True,
        namespace="a",
    ),
    MatchCase(
        "namespaceSelector global(): not a workload",
        {"source": {"namespaceSelector": "global()"}},
        tcp(CLIENT_A, WEB),
        False,
    ),
    MatchCase(
        "ns: notSelector alone scopes to the namespace",
        {"source": {"notSelector": "app == 'db'"}},
        tcp(CLIENT_B, WEB),
        False,
        namespace="a",
    ),
    MatchCase(
        "ns: notSelector alone, same namespace",
        {"source": {"notSelector": "app == 'db'"}},
        tcp(CLIENT_A, WEB),
        True,
        namespace="a",
    ),
    MatchCase(
        "ns: nets alone are not scoped",
        {"source": {"nets": ["10.0.2.0/24"]}},
        tcp(CLIENT_B, WEB),
        True,
        namespace="a",
    ),
    MatchCase(
        "ns: unknown address never in the namespace",
        {"source": {"notSelector": "app == 'db'"}},
        tcp(UNKNOWN, WEB),
        False,
        namespace="a",
    ),
    MatchCase(
        "ns: destination selector scoped too (egress)",
        {"destination": {"selector": "app == 'client'"}},
        tcp(WEB, CLIENT_B),
        False,
        "egress",
        "a",
    ),
    # service accounts
    MatchCase(
        "serviceAccounts names",
        {"source": {"serviceAccounts": {"names": ["web-sa"]}}},
        tcp(WEB, CLIENT_A),
        True,
        "egress",
    ),
    MatchCase(
        "serviceAccounts names miss",
        {"source": {"serviceAccounts": {"names": ["other"]}}},
        tcp(WEB, CLIENT_A),
        False,
        "egress",
    ),
    MatchCase(
        "serviceAccounts selector pcsa",
        {"source": {"serviceAccounts": {"selector": "role == 'frontend'"}}},
        tcp(WEB, CLIENT_A),
        True,
        "egress",
    ),
    MatchCase(
        "serviceAccounts: scoped to the namespace",
        {"destination": {"serviceAccounts": {"names": ["web-sa"]}}},
        tcp(CLIENT_B, WEB),
        False,
        namespace="b",
    ),
]


@pytest.mark.parametrize("case", MATCH_CASES, ids=[c.id for c in MATCH_CASES])
def test_rule_fields(case: MatchCase) -> None:
    rules = [{"action": "Allow", **case.rule}]
    if case.direction == "ingress":
        p = policy("p", namespace=case.namespace, ingress=rules)
    else:
        p = policy("p", namespace=case.namespace, egress=rules)
    v = evaluate(case.direction, case.packet, [p], TIERS, [], RESOLVER)
    assert decided(v) == (ALLOW_P0 if case.matches else EOT_DEFAULT)
    assert rule_matches(rule(case.rule), case.packet, RESOLVER, case.namespace) is case.matches


# --------------------------------------------------------------------------- tiers and profiles


@dataclass(frozen=True)
class FlowCase:
    id: str
    policies: list[PolicyView]
    expected: tuple[str, str, str | None, str | None, int | None, str | None]
    profiles: list[ProfileView] | None = None
    tiers: dict[str, TierView] | None = None
    direction: Direction = "ingress"
    packet: Packet = field(default_factory=lambda: tcp(CLIENT_A, WEB))


ALLOW = {"action": "Allow"}
DENY = {"action": "Deny"}
PASS = {"action": "Pass"}
LOG = {"action": "Log"}
NO_MATCH = {"action": "Allow", "source": {"nets": ["10.99.0.0/16"]}}
ALLOW_ALL_PROFILE = profile("kns.a", [ALLOW], [ALLOW])

FLOW_CASES = [
    FlowCase(
        "lower tier order first",
        [
            policy("allow-all", ingress=[ALLOW]),
            policy("security.deny", tier="security", ingress=[DENY]),
        ],
        ("deny", "policy rule", "security", "security.deny", 0, None),
    ),
    FlowCase(
        "tier order decides, not input order",
        [
            policy("security.allow", tier="security", ingress=[ALLOW]),
            policy("platform.deny", tier="platform", ingress=[NO_MATCH, DENY]),
        ],
        ("deny", "policy rule", "platform", "platform.deny", 1, None),
    ),
    FlowCase(
        "equal tier orders: by name",
        [policy("z.allow", tier="z", ingress=[ALLOW]), policy("y.deny", tier="y", ingress=[DENY])],
        ("deny", "policy rule", "y", "y.deny", 0, None),
        tiers={"y": TierView("y", 5), "z": TierView("z", 5)},
    ),
    FlowCase(
        "policy order within a tier",
        [policy("b", order=1, ingress=[DENY]), policy("a", order=2, ingress=[ALLOW])],
        ("deny", "policy rule", "default", "b", 0, None),
    ),
    FlowCase(
        "equal policy orders: by name",
        [policy("b", order=1, ingress=[DENY]), policy("a", order=1, ingress=[ALLOW])],
        ("allow", "policy rule", "default", "a", 0, None),
    ),
    FlowCase(
        "policy without order goes last",
        [policy("a", ingress=[DENY]), policy("b", order=1000, ingress=[ALLOW])],
        ("allow", "policy rule", "default", "b", 0, None),
    ),
    FlowCase(
        "rule order within a policy",
        [policy("p", ingress=[NO_MATCH, DENY, ALLOW])],
        ("deny", "policy rule", "default", "p", 1, None),
    ),
    FlowCase(
        "Pass goes to the next tier",
        [
            policy("security.pass", tier="security", ingress=[PASS]),
            policy("allow", ingress=[ALLOW]),
        ],
        ("allow", "policy rule", "default", "allow", 0, None),
    ),
    FlowCase(
        "Pass skips the rest of the tier",
        [
            policy("security.a", tier="security", order=1, ingress=[PASS, DENY]),
            policy("security.b", tier="security", order=2, ingress=[DENY]),
            policy("allow", ingress=[ALLOW]),
        ],
        ("allow", "policy rule", "default", "allow", 0, None),
    ),
    FlowCase(
        "end of tier drop",
        [
            policy("security.nothing", tier="security", ingress=[NO_MATCH]),
            policy("allow", ingress=[ALLOW]),
        ],
        ("deny", "end of tier drop", "security", None, None, None),
    ),
    FlowCase(
        "tier default action Pass",
        [
            policy("security.nothing", tier="security", ingress=[NO_MATCH]),
            policy("allow", ingress=[ALLOW]),
        ],
        ("allow", "policy rule", "default", "allow", 0, None),
        tiers={**TIERS, "security": TierView("security", 100, "Pass")},
    ),
    FlowCase(
        "policy with Ingress type and no ingress rules drops",
        [
            policy("security.empty", tier="security", egress=[ALLOW]),
            policy("allow", ingress=[ALLOW]),
        ],
        ("deny", "end of tier drop", "security", None, None, None),
    ),
    FlowCase(
        "egress-only tier is skipped for ingress",
        [
            policy("security.egress", tier="security", types=("Egress",), ingress=[DENY]),
            policy("allow", ingress=[ALLOW]),
        ],
        ("allow", "policy rule", "default", "allow", 0, None),
    ),
    FlowCase(
        "ingress-only policy is skipped for egress",
        [
            policy("deny-in", types=("Ingress",), ingress=[DENY], egress=[DENY]),
            policy("allow-out", types=("Egress",), egress=[ALLOW]),
        ],
        ("allow", "policy rule", "default", "allow-out", 0, None),
        direction="egress",
        packet=tcp(WEB, CLIENT_A),
    ),
    FlowCase(
        "egress uses egress rules",
        [policy("p", ingress=[ALLOW], egress=[NO_MATCH, DENY])],
        ("deny", "policy rule", "default", "p", 1, None),
        direction="egress",
        packet=tcp(WEB, CLIENT_A),
    ),
    FlowCase(
        "Log continues",
        [policy("p", ingress=[LOG, ALLOW])],
        ("allow", "policy rule", "default", "p", 1, None),
    ),
    FlowCase(
        "Log alone does not decide",
        [policy("p", ingress=[LOG])],
        ("deny", "end of tier drop", "default", None, None, None),
    ),
    FlowCase(
        "no policies: profile allows",
        [],
        ("allow", "profile rule", None, None, 0, "kns.a"),
        profiles=[ALLOW_ALL_PROFILE],
    ),
    FlowCase(
        "no policy for this direction: profiles",
        [policy("egress-only", types=("Egress",), egress=[DENY])],
        ("allow", "profile rule", None, None, 0, "kns.a"),
        profiles=[ALLOW_ALL_PROFILE],
    ),
    FlowCase(
        "no policies, no profiles", [], ("deny", "no profile allowed", None, None, None, None)
    ),
    FlowCase(
        "all tiers passed: profiles",
        [policy("security.pass", tier="security", ingress=[PASS]), policy("pass", ingress=[PASS])],
        ("allow", "profile rule", None, None, 0, "kns.a"),
        profiles=[ALLOW_ALL_PROFILE],
    ),
    FlowCase(
        "all tiers passed, no profiles",
        [policy("pass", ingress=[PASS])],
        ("deny", "no profile allowed", None, None, None, None),
    ),
    FlowCase(
        "profile deny",
        [],
        ("deny", "profile rule", None, None, 1, "first"),
        profiles=[profile("first", [NO_MATCH, DENY]), ALLOW_ALL_PROFILE],
    ),
    FlowCase(
        "profiles in order; no match goes on",
        [],
        ("allow", "profile rule", None, None, 0, "kns.a"),
        profiles=[profile("first", [NO_MATCH]), ALLOW_ALL_PROFILE],
    ),
    FlowCase(
        "profile Pass ends that profile",
        [],
        ("deny", "profile rule", None, None, 0, "second"),
        profiles=[profile("first", [PASS, ALLOW]), profile("second", [DENY])],
    ),
    FlowCase(
        "profile with no match: deny",
        [],
        ("deny", "no profile allowed", None, None, None, None),
        profiles=[profile("first", [NO_MATCH, LOG])],
    ),
    FlowCase(
        "profiles are not used after a policy allow",
        [policy("p", ingress=[ALLOW])],
        ALLOW_P0,
        profiles=[profile("deny", [DENY])],
    ),
    FlowCase(
        "profiles are not used after end of tier drop",
        [policy("p", ingress=[NO_MATCH])],
        EOT_DEFAULT,
        profiles=[ALLOW_ALL_PROFILE],
    ),
    FlowCase(
        "IPv6 through tiers",
        [
            policy(
                "security.v4", tier="security", ingress=[{"action": "Deny", "ipVersion": 4}, PASS]
            ),
            policy("p", ingress=[{"action": "Allow", "source": {"nets": ["fd00::/64"]}}]),
        ],
        ALLOW_P0,
        packet=tcp(CLIENT6, WEB6),
    ),
]


@pytest.mark.parametrize("case", FLOW_CASES, ids=[c.id for c in FLOW_CASES])
def test_tiers_policies_profiles(case: FlowCase) -> None:
    v = evaluate(
        case.direction,
        case.packet,
        case.policies,
        case.tiers or TIERS,
        case.profiles or [],
        RESOLVER,
    )
    assert decided(v) == case.expected


def test_trace_lists_every_step() -> None:
    policies = [
        policy("security.p1", tier="security", ingress=[LOG, PASS]),
        policy("p", ingress=[NO_MATCH]),
    ]
    tiers = {**TIERS, "default": TierView("default", None, "Pass")}
    v = evaluate("ingress", tcp(CLIENT_A, WEB), policies, tiers, [ALLOW_ALL_PROFILE], RESOLVER)
    assert v.trace == (
        f"ingress {CLIENT_A} -> {WEB} protocol 6",
        f"source {CLIENT_A}: workload a/client",
        f"destination {WEB}: workload a/web",
        "tier security: policy security.p1 rule 0 matched: Log",
        "tier security: policy security.p1 rule 1 matched: Pass",
        "tier security: passed to the next tier",
        "tier default: policy p: no rule matched",
        "tier default: end of tier, default action Pass",
        "profile kns.a rule 0 matched: Allow",
    )
    assert decided(v) == ("allow", "profile rule", None, None, 0, "kns.a")


def test_trace_names_unknown_and_multiple_owners() -> None:
    v = evaluate("ingress", tcp(DB_B, UNKNOWN), [], TIERS, [], RESOLVER)
    assert v.trace[1:3] == (
        f"source {DB_B}: workload b/db, globalnetworkset corp",
        f"destination {UNKNOWN}: unknown address",
    )
    assert v.trace[-2:] == ("no policy applies to ingress", "profiles: none")


# --------------------------------------------------------------------------- selector scoping


@pytest.mark.parametrize(
    ("side", "namespace", "selector", "not_selector"),
    [
        (EntityRule(selector=parse("app == 'x'")), None, "app == 'x'", None),
        (
            EntityRule(selector=parse("app == 'x'")),
            "a",
            "projectcalico.org/namespace == 'a' && app == 'x'",
            None,
        ),
        (
            EntityRule(
                selector=parse("app == 'x'"), namespace_selector=parse("team in {'r', 'b'}")
            ),
            "a",
            "pcns.team in {'b', 'r'} && app == 'x'",
            None,
        ),
        (
            EntityRule(namespace_selector=parse("!has(team) || team == 'r'")),
            None,
            "!has(pcns.team) || pcns.team == 'r'",
            None,
        ),
        (
            EntityRule(namespace_selector=parse("all()")),
            None,
            "has(projectcalico.org/namespace)",
            None,
        ),
        (
            EntityRule(namespace_selector=parse("global()")),
            "a",
            "!has(projectcalico.org/namespace)",
            None,
        ),
        (
            EntityRule(not_selector=parse("app == 'x'")),
            "a",
            "projectcalico.org/namespace == 'a'",
            "app == 'x'",
        ),
        (EntityRule(not_selector=parse("app == 'x'")), None, None, "app == 'x'"),
        (EntityRule(nets=(IPv4Network("10.0.0.0/8"),)), "a", None, None),
        (EntityRule(), "a", None, None),
        (
            EntityRule(
                selector=parse("app == 'x'"),
                service_accounts=ServiceAccountMatch(("s1", "s2"), parse("role == 'r'")),
            ),
            "a",
            "projectcalico.org/namespace == 'a' && pcsa.role == 'r'"
            " && projectcalico.org/serviceaccount in {'s1', 's2'} && app == 'x'",
            None,
        ),
        (EntityRule(selector=parse("app == 'x'")), "", "app == 'x'", None),
    ],
)
def test_scoped_selectors(
    side: EntityRule, namespace: str | None, selector: str | None, not_selector: str | None
) -> None:
    got = scoped_selectors(side, namespace)
    assert got == (
        None if selector is None else parse(selector),
        None if not_selector is None else parse(not_selector),
    )


def test_effective_selector_hook_replaces_scoping() -> None:
    # The rule says app == client, the hook says app == db: the hook wins.
    p = policy("p", ingress=[{"action": "Allow", "source": {"selector": "app == 'client'"}}])

    def hook(view: PolicyView | ProfileView, r: Rule, side: str) -> Any:
        return (parse("app == 'db'"), None) if side == "source" else (None, None)

    client = evaluate(
        "ingress", tcp(CLIENT_A, WEB), [p], TIERS, [], RESOLVER, effective_selector=hook
    )
    db = evaluate("ingress", tcp(DB_B, WEB), [p], TIERS, [], RESOLVER, effective_selector=hook)
    assert decided(client) == EOT_DEFAULT
    assert decided(db) == ALLOW_P0


# --------------------------------------------------------------------------- inputs


def test_static_resolver_put_replace_remove() -> None:
    r = StaticResolver()
    ip = ip_address("10.1.0.1")
    r.put("x", PeerInfo({"a": "1"}, name="x"), ips=[ip])
    r.put("n", PeerInfo({"b": "2"}, name="n"), nets=[IPv4Network("10.1.0.0/24")])
    assert [p.name for p in r.lookup(ip)] == ["n", "x"]
    r.put("x", PeerInfo({"a": "2"}, name="x2"), ips=[ip_address("10.1.0.2")])
    assert [p.name for p in r.lookup(ip)] == ["n"]
    r.remove("n")
    r.remove("missing")
    assert r.lookup(ip) == ()
    assert r.lookup(ip_address("fd00::1")) == ()


def test_missing_tier_is_an_error() -> None:
    p = policy("nowhere.p", tier="nowhere", types=("Ingress",), ingress=[ALLOW])
    with pytest.raises(EngineError, match=r"nowhere\.p.*'nowhere'"):
        evaluate("ingress", tcp(CLIENT_A, WEB), [p], TIERS, [], RESOLVER)
    # A policy that does not take part in the direction does not need its tier.
    v = evaluate("egress", tcp(WEB, CLIENT_A), [p], TIERS, [], RESOLVER)
    assert decided(v) == ("deny", "no profile allowed", None, None, None, None)


def test_icmp_fields_never_match_non_icmp_packets() -> None:
    # Unvalidated rules (built directly) with ICMP fields but no protocol: iptables' icmp
    # match cannot apply to a TCP packet, so neither icmp nor notICMP matches it.
    for r in (Rule(Action.ALLOW, icmp=ICMPMatch(8)), Rule(Action.ALLOW, not_icmp=ICMPMatch(8))):
        assert rule_matches(r, tcp(CLIENT_A, WEB), RESOLVER) is False
    assert rule_matches(Rule(Action.ALLOW, not_icmp=ICMPMatch(0)), icmp(CLIENT_A, WEB), RESOLVER)


def test_bad_direction_and_types() -> None:
    with pytest.raises(EngineError, match="direction"):
        evaluate("Ingress", tcp(CLIENT_A, WEB), [], TIERS, [], RESOLVER)  # type: ignore[arg-type]
    with pytest.raises(EngineError, match="Ingress"):
        policy("p", types=("ingress",))
    with pytest.raises(EngineError, match="defaultAction"):
        TierView("t", 1, "Allow")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        (
            {"src": "10.0.0.1", "dst": "fd00::1", "protocol": TCP, "src_port": 1, "dst_port": 2},
            "families",
        ),
        ({"src": "10.0.0.1", "dst": "10.0.0.2", "protocol": TCP, "dst_port": 2}, "src_port"),
        (
            {"src": "10.0.0.1", "dst": "10.0.0.2", "protocol": GRE, "dst_port": 2},
            "cannot carry ports",
        ),
        (
            {
                "src": "10.0.0.1",
                "dst": "10.0.0.2",
                "protocol": TCP,
                "src_port": 1,
                "dst_port": 70000,
            },
            "range",
        ),
        ({"src": "10.0.0.1", "dst": "10.0.0.2", "protocol": ICMP, "icmp_type": 8}, "icmp_code"),
        (
            {"src": "fd00::1", "dst": "fd00::2", "protocol": ICMP, "icmp_type": 8, "icmp_code": 0},
            "ICMP fields",
        ),
        ({"src": "10.0.0.1", "dst": "10.0.0.2", "protocol": 256}, "protocol"),
    ],
)
def test_packet_validation(kwargs: dict[str, Any], problem: str) -> None:
    kwargs = {**kwargs, "src": ip_address(kwargs["src"]), "dst": ip_address(kwargs["dst"])}
    with pytest.raises(EngineError, match=problem):
        Packet(**kwargs)
