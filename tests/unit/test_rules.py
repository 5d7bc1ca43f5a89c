"""Unit tests for policy.rules: parsing, validation (field paths), rendering, round trips."""

from __future__ import annotations

import json
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policy.rules import (
    Action,
    EntityRule,
    ICMPMatch,
    NamedPort,
    PortRange,
    Rule,
    RuleError,
    ServiceAccountMatch,
    parse_rule,
    parse_rules,
    protocol_name,
    protocol_number,
    rule_to_dict,
    validate_rule,
    validate_rules,
)
from policy.selector import parse as parse_selector

SEL_A = "role == 'db'"
SEL_B = "has(app) && tier in {'a', 'b'}"


def sel(text: str) -> Any:
    return parse_selector(text)


# --------------------------------------------------------------------------- protocols


@pytest.mark.parametrize(
    ("given_", "number"),
    [
        ("TCP", 6),
        ("tcp", 6),
        ("Tcp", 6),
        ("UDP", 17),
        ("ICMP", 1),
        ("icmpv6", 58),
        ("ICMPv6", 58),
        ("SCTP", 132),
        ("udplite", 136),
        ("UDPLite", 136),
        (1, 1),
        (47, 47),
        (255, 255),
        ("47", 47),
    ],
)
def test_protocol_number(given_: str | int, number: int) -> None:
    assert protocol_number(given_) == number


@pytest.mark.parametrize("bad", [0, 256, -1, "0", "256", "tcpx", "", "gre", True, 6.0])
def test_protocol_number_rejects(bad: Any) -> None:
    with pytest.raises(ValueError):
        protocol_number(bad)


@pytest.mark.parametrize(
    ("number", "name"),
    [(6, "TCP"), (17, "UDP"), (1, "ICMP"), (58, "ICMPv6"), (132, "SCTP"), (136, "UDPLite")],
)
def test_protocol_name(number: int, name: str) -> None:
    assert protocol_name(number) == name
    assert protocol_number(name) == number


def test_protocol_name_unnamed_is_number() -> None:
    assert protocol_name(47) == 47
    assert protocol_name(4) == 4


# --------------------------------------------------------------------------- good rules

GOOD: list[tuple[str, dict[str, Any], Rule]] = [
    ("minimal", {"action": "Allow"}, Rule(Action.ALLOW)),
    ("deny", {"action": "Deny"}, Rule(Action.DENY)),
    ("log", {"action": "Log"}, Rule(Action.LOG)),
    ("pass", {"action": "Pass"}, Rule(Action.PASS)),
    ("ipv4", {"action": "Allow", "ipVersion": 4}, Rule(Action.ALLOW, ip_version=4)),
    ("ipv6", {"action": "Allow", "ipVersion": 6}, Rule(Action.ALLOW, ip_version=6)),
    ("protocol lower", {"action": "Allow", "protocol": "udp"}, Rule(Action.ALLOW, protocol=17)),
    ("protocol number", {"action": "Allow", "protocol": 47}, Rule(Action.ALLOW, protocol=47)),
    ("protocol tcp num", {"action": "Allow", "protocol": 6}, Rule(Action.ALLOW, protocol=6)),
    (
        "notProtocol",
        {"action": "Deny", "notProtocol": "UDPLite"},
        Rule(Action.DENY, not_protocol=136),
    ),
    (
        "icmp type+code",
        {"action": "Allow", "protocol": "ICMP", "icmp": {"type": 8, "code": 0}},
        Rule(Action.ALLOW, protocol=1, icmp=ICMPMatch(8, 0)),
    ),
    (
        "icmp type only, v4",
        {"action": "Allow", "ipVersion": 4, "protocol": "ICMP", "icmp": {"type": 254}},
        Rule(Action.ALLOW, ip_version=4, protocol=1, icmp=ICMPMatch(254, None)),
    ),
    (
        "icmpv6 notICMP",
        {
            "action": "Allow",
            "ipVersion": 6,
            "protocol": "ICMPv6",
            "notICMP": {"type": 128, "code": 255},
        },
        Rule(Action.ALLOW, ip_version=6, protocol=58, not_icmp=ICMPMatch(128, 255)),
    ),
    (
        "icmp by number",
        {"action": "Allow", "protocol": 1, "icmp": {"type": 0}},
        Rule(Action.ALLOW, protocol=1, icmp=ICMPMatch(0, None)),
    ),
    (
        "ports all forms",
        {
            "action": "Allow",
            "protocol": "TCP",
            "destination": {"ports": [80, "443", "1000:2000", "http", 65535, "1:1"]},
        },
        Rule(
            Action.ALLOW,
            protocol=6,
            destination=EntityRule(
                ports=(
                    PortRange(80, 80),
                    PortRange(443, 443),
                    PortRange(1000, 2000),
                    NamedPort("http"),
                    PortRange(65535, 65535),
                    PortRange(1, 1),
                )
            ),
        ),
    ),
    (
        "notPorts source udp",
        {"action": "Deny", "protocol": "UDP", "source": {"notPorts": ["53", "dns-tcp"]}},
        Rule(
            Action.DENY,
            protocol=17,
            source=EntityRule(not_ports=(PortRange(53, 53), NamedPort("dns-tcp"))),
        ),
    ),
    (
        "ports with sctp number",
        {"action": "Allow", "protocol": 132, "destination": {"ports": [9]}},
        Rule(Action.ALLOW, protocol=132, destination=EntityRule(ports=(PortRange(9, 9),))),
    ),
    (
        "nets v4, bare address, host bits",
        {
            "action": "Allow",
            "source": {"nets": ["10.0.0.0/8", "10.1.2.3", "192.168.1.77/24"]},
            "destination": {"notNets": ["0.0.0.0/0"]},
        },
        Rule(
            Action.ALLOW,
            source=EntityRule(
                nets=(
                    IPv4Network("10.0.0.0/8"),
                    IPv4Network("10.1.2.3/32"),
                    IPv4Network("192.168.1.0/24"),
                )
            ),
            destination=EntityRule(not_nets=(IPv4Network("0.0.0.0/0"),)),
        ),
    ),
    (
        "nets v6 with ipVersion",
        {
            "action": "Allow",
            "ipVersion": 6,
            "source": {"notNets": ["fd00::1"]},
            "destination": {"nets": ["fd00:10::/64"]},
        },
        Rule(
            Action.ALLOW,
            ip_version=6,
            source=EntityRule(not_nets=(IPv6Network("fd00::1/128"),)),
            destination=EntityRule(nets=(IPv6Network("fd00:10::/64"),)),
        ),
    ),
    (
        "selectors",
        {
            "action": "Allow",
            "source": {"selector": SEL_A, "notSelector": SEL_B, "namespaceSelector": "all()"},
        },
        Rule(
            Action.ALLOW,
            source=EntityRule(
                selector=sel(SEL_A), not_selector=sel(SEL_B), namespace_selector=sel("all()")
            ),
        ),
    ),
    (
        "service accounts sorted and deduplicated",
        {
            "action": "Allow",
            "destination": {"serviceAccounts": {"names": ["b", "a", "b"], "selector": SEL_A}},
        },
        Rule(
            Action.ALLOW,
            destination=EntityRule(service_accounts=ServiceAccountMatch(("a", "b"), sel(SEL_A))),
        ),
    ),
    (
        "service accounts names only",
        {"action": "Allow", "source": {"serviceAccounts": {"names": ["sa"]}}},
        Rule(Action.ALLOW, source=EntityRule(service_accounts=ServiceAccountMatch(("sa",)))),
    ),
    (
        "annotations sorted",
        {
            "action": "Allow",
            "metadata": {"annotations": {"z": "1", "example.com/from": "frontend", "a_b.c": ""}},
        },
        Rule(
            Action.ALLOW,
            annotations=(("a_b.c", ""), ("example.com/from", "frontend"), ("z", "1")),
        ),
    ),
    (
        "empty values are absent",
        {
            "action": "Allow",
            "ipVersion": None,
            "protocol": "",
            "notProtocol": None,
            "icmp": None,
            "notICMP": {},
            "source": {
                "nets": [],
                "notNets": None,
                "selector": "",
                "notSelector": None,
                "namespaceSelector": "",
                "ports": [],
                "notPorts": None,
                "serviceAccounts": {"names": [], "selector": ""},
                "services": None,
            },
            "destination": {},
            "http": None,
            "metadata": {"annotations": {}},
        },
        Rule(Action.ALLOW),
    ),
    (
        "notProtocol ICMP with ipVersion 4",
        {"action": "Deny", "ipVersion": 4, "notProtocol": "icmp"},
        Rule(Action.DENY, ip_version=4, not_protocol=1),
    ),
]


@pytest.mark.parametrize(("data", "expected"), [g[1:] for g in GOOD], ids=[g[0] for g in GOOD])
def test_parse_good(data: dict[str, Any], expected: Rule) -> None:
    assert validate_rule(data) == []
    rule = parse_rule(data)
    assert rule == expected
    # Round trip through canonical JSON (and real JSON text) gives the same rule.
    rendered = rule_to_dict(rule)
    assert parse_rule(json.loads(json.dumps(rendered))) == rule
    assert rule_to_dict(parse_rule(rendered)) == rendered
    hash(rule)


def test_rule_to_dict_canonical_shape() -> None:
    data = {
        "action": "Allow",
        "ipVersion": 4,
        "protocol": "tcp",
        "notProtocol": 47,
        "source": {
            "nets": ["10.1.2.3"],
            "notNets": ["10.9.0.0/16"],
            "selector": SEL_A,
            "notSelector": SEL_B,
            "namespaceSelector": "all()",
            "ports": ["80", "8000:8080", "web"],
            "notPorts": [22],
            "serviceAccounts": {"names": ["y", "x"], "selector": SEL_A},
        },
        "destination": {"ports": [443]},
        "metadata": {"annotations": {"k": "v"}},
    }
    assert rule_to_dict(parse_rule(data)) == {
        "action": "Allow",
        "ipVersion": 4,
        "protocol": "TCP",
        "notProtocol": 47,
        "source": {
            "nets": ["10.1.2.3/32"],
            "notNets": ["10.9.0.0/16"],
            "selector": str(sel(SEL_A)),
            "notSelector": str(sel(SEL_B)),
            "namespaceSelector": str(sel("all()")),
            "ports": [80, "8000:8080", "web"],
            "notPorts": [22],
            "serviceAccounts": {"names": ["x", "y"], "selector": str(sel(SEL_A))},
        },
        "destination": {"ports": [443]},
        "metadata": {"annotations": {"k": "v"}},
    }


def test_rule_to_dict_icmp_and_minimal() -> None:
    assert rule_to_dict(Rule(Action.PASS)) == {"action": "Pass"}
    rule = Rule(
        Action.DENY,
        protocol=58,
        icmp=ICMPMatch(1, None),
        not_icmp=ICMPMatch(2, 3),
    )
    assert rule_to_dict(rule) == {
        "action": "Deny",
        "protocol": "ICMPv6",
        "icmp": {"type": 1},
        "notICMP": {"type": 2, "code": 3},
    }


# --------------------------------------------------------------------------- bad rules

TCP = {"action": "Allow", "protocol": "TCP"}

BAD: list[tuple[str, object, str, str]] = [
    # (id, data, field path, message fragment)
    ("not an object", ["action", "Allow"], "", "rule must be an object"),
    ("missing action", {}, "action", "action is required"),
    ("lower-case action", {"action": "allow"}, "action", "invalid action 'allow'"),
    ("unknown action", {"action": "Reject"}, "action", "invalid action"),
    ("unknown key", {"action": "Allow", "port": 80}, "port", "unknown field 'port'"),
    ("ipVersion 5", {"action": "Allow", "ipVersion": 5}, "ipVersion", "4 or 6"),
    ("ipVersion string", {"action": "Allow", "ipVersion": "4"}, "ipVersion", "4 or 6"),
    ("ipVersion bool", {"action": "Allow", "ipVersion": True}, "ipVersion", "4 or 6"),
    ("protocol 0", {"action": "Allow", "protocol": 0}, "protocol", "1..255"),
    ("protocol 256", {"action": "Allow", "protocol": 256}, "protocol", "1..255"),
    ("protocol name", {"action": "Allow", "protocol": "GRE"}, "protocol", "invalid protocol"),
    ("protocol list", {"action": "Allow", "protocol": ["TCP"]}, "protocol", "name or a number"),
    ("notProtocol bad", {"action": "Allow", "notProtocol": "xyz"}, "notProtocol", "invalid"),
    (
        "icmp without protocol",
        {"action": "Allow", "icmp": {"type": 8}},
        "icmp",
        "must set protocol to ICMP",
    ),
    (
        "notICMP with TCP",
        {**TCP, "notICMP": {"type": 8}},
        "notICMP",
        "must set protocol to ICMP",
    ),
    (
        "icmp code without type",
        {"action": "Allow", "protocol": "ICMP", "icmp": {"code": 1}},
        "icmp.code",
        "without an ICMP type",
    ),
    (
        "icmp type 255",
        {"action": "Allow", "protocol": "ICMP", "icmp": {"type": 255}},
        "icmp.type",
        "0..254",
    ),
    (
        "icmp code 256",
        {"action": "Allow", "protocol": "ICMP", "icmp": {"type": 3, "code": 256}},
        "icmp.code",
        "0..255",
    ),
    (
        "icmp type string",
        {"action": "Allow", "protocol": "ICMP", "icmp": {"type": "8"}},
        "icmp.type",
        "0..254",
    ),
    (
        "icmp unknown key",
        {"action": "Allow", "protocol": "ICMP", "icmp": {"type": 8, "kode": 0}},
        "icmp.kode",
        "unknown field",
    ),
    ("icmp not object", {"action": "Allow", "protocol": "ICMP", "icmp": 8}, "icmp", "object"),
    (
        "ICMP with ipVersion 6",
        {"action": "Allow", "ipVersion": 6, "protocol": "ICMP"},
        "ipVersion",
        "must be 4",
    ),
    (
        "ICMPv6 with ipVersion 4",
        {"action": "Allow", "ipVersion": 4, "protocol": "ICMPv6"},
        "ipVersion",
        "must be 6",
    ),
    (
        "notProtocol ICMPv6 with ipVersion 4",
        {"action": "Allow", "ipVersion": 4, "notProtocol": "ICMPv6"},
        "ipVersion",
        "must be 6",
    ),
    (
        "ports without protocol",
        {"action": "Allow", "destination": {"ports": [80]}},
        "destination.ports",
        "TCP, UDP or SCTP",
    ),
    (
        "notPorts with ICMP",
        {"action": "Allow", "protocol": "ICMP", "source": {"notPorts": [80]}},
        "source.notPorts",
        "TCP, UDP or SCTP",
    ),
    (
        "ports with notProtocol only",
        {"action": "Allow", "notProtocol": "TCP", "source": {"ports": [80]}},
        "source.ports",
        "TCP, UDP or SCTP",
    ),
    ("port 0", {**TCP, "destination": {"ports": [80, 0]}}, "destination.ports[1]", "1..65535"),
    ("port 65536", {**TCP, "destination": {"ports": [65536]}}, "destination.ports[0]", "1..65535"),
    ("port '0'", {**TCP, "destination": {"ports": ["0"]}}, "destination.ports[0]", "1..65535"),
    (
        "range reversed",
        {**TCP, "destination": {"ports": ["2000:1000"]}},
        "destination.ports[0]",
        "min is greater than max",
    ),
    (
        "range three parts",
        {**TCP, "destination": {"ports": ["1:2:3"]}},
        "destination.ports[0]",
        "'min:max'",
    ),
    (
        "range not numeric",
        {**TCP, "destination": {"ports": ["a:b"]}},
        "destination.ports[0]",
        "'min:max'",
    ),
    (
        "range above max",
        {**TCP, "destination": {"ports": ["1:70000"]}},
        "destination.ports[0]",
        "1..65535",
    ),
    (
        "range from 0",
        {**TCP, "destination": {"ports": ["0:10"]}},
        "destination.ports[0]",
        "1..65535",
    ),
    ("port float", {**TCP, "source": {"ports": [80.0]}}, "source.ports[0]", "number or a string"),
    ("port bool", {**TCP, "source": {"ports": [True]}}, "source.ports[0]", "number or a string"),
    (
        "port name upper",
        {**TCP, "destination": {"notPorts": ["HTTP"]}},
        "destination.notPorts[0]",
        "lower-case",
    ),
    (
        "port name too long",
        {**TCP, "destination": {"ports": ["abcdefghijklmnop"]}},
        "destination.ports[0]",
        "15 characters",
    ),
    (
        "port name hyphen edge",
        {**TCP, "destination": {"ports": ["-http"]}},
        "destination.ports[0]",
        "begin or end",
    ),
    (
        "port name double hyphen",
        {**TCP, "destination": {"ports": ["a--b"]}},
        "destination.ports[0]",
        "consecutive",
    ),
    (
        "port name no letter",
        {**TCP, "destination": {"ports": ["80-90"]}},
        "destination.ports[0]",
        "at least one letter",
    ),
    (
        "port name underscore",
        {**TCP, "destination": {"ports": ["my_port"]}},
        "destination.ports[0]",
        "lower-case",
    ),
    ("ports not list", {**TCP, "destination": {"ports": 80}}, "destination.ports", "list"),
    ("bad net", {"action": "Allow", "source": {"nets": ["10.0.0.0/33"]}}, "source.nets[0]", "CIDR"),
    (
        "netmask notation",
        {"action": "Allow", "source": {"nets": ["10.0.0.0/255.0.0.0"]}},
        "source.nets[0]",
        "invalid CIDR",
    ),
    (
        "ipv6 zone",
        {"action": "Allow", "source": {"notNets": ["fe80::1%eth0"]}},
        "source.notNets[0]",
        "invalid CIDR",
    ),
    (
        "net with spaces",
        {"action": "Allow", "destination": {"nets": [" 10.0.0.0/8"]}},
        "destination.nets[0]",
        "invalid CIDR",
    ),
    (
        "bad notNet type",
        {"action": "Allow", "destination": {"notNets": [10]}},
        "destination.notNets[0]",
        "CIDR string",
    ),
    (
        "v6 net with ipVersion 4",
        {"action": "Allow", "ipVersion": 4, "destination": {"notNets": ["10.0.0.0/8", "fd00::/8"]}},
        "destination.notNets[1]",
        "does not match ipVersion 4",
    ),
    (
        "v4 net with ipVersion 6",
        {"action": "Allow", "ipVersion": 6, "source": {"nets": ["10.0.0.1"]}},
        "source.nets[0]",
        "does not match ipVersion 6",
    ),
    (
        "mixed families across sides",
        {"action": "Allow", "source": {"nets": ["10.0.0.0/8"]}, "destination": {"nets": ["::/0"]}},
        "destination.nets[0]",
        "both IPv4 and IPv6",
    ),
    (
        "bad selector",
        {"action": "Allow", "source": {"selector": "role == "}},
        "source.selector",
        "invalid selector",
    ),
    (
        "bad notSelector",
        {"action": "Allow", "destination": {"notSelector": "a == 'b' &&"}},
        "destination.notSelector",
        "invalid selector",
    ),
    (
        "bad namespaceSelector",
        {"action": "Allow", "source": {"namespaceSelector": "((("}},
        "source.namespaceSelector",
        "invalid selector",
    ),
    (
        "selector not string",
        {"action": "Allow", "source": {"selector": 5}},
        "source.selector",
        "must be a string",
    ),
    (
        "unknown entity key",
        {"action": "Allow", "destination": {"net": ["10.0.0.0/8"]}},
        "destination.net",
        "unknown field 'net'",
    ),
    ("entity not object", {"action": "Allow", "source": "x"}, "source", "object"),
    (
        "services rejected",
        {"action": "Allow", "destination": {"services": {"name": "svc", "namespace": "ns"}}},
        "destination.services",
        "not supported",
    ),
    (
        "http rejected",
        {"action": "Allow", "http": {"methods": ["GET"]}},
        "http",
        "not supported",
    ),
    (
        "serviceAccounts unknown key",
        {"action": "Allow", "source": {"serviceAccounts": {"name": ["a"]}}},
        "source.serviceAccounts.name",
        "unknown field",
    ),
    (
        "serviceAccounts bad name",
        {"action": "Allow", "source": {"serviceAccounts": {"names": ["a", ""]}}},
        "source.serviceAccounts.names[1]",
        "non-empty string",
    ),
    (
        "serviceAccounts bad selector",
        {"action": "Allow", "source": {"serviceAccounts": {"selector": "x =="}}},
        "source.serviceAccounts.selector",
        "invalid selector",
    ),
    (
        "metadata unknown key",
        {"action": "Allow", "metadata": {"labels": {"a": "b"}}},
        "metadata.labels",
        "unknown field",
    ),
    (
        "annotation value not string",
        {"action": "Allow", "metadata": {"annotations": {"a": 1}}},
        "metadata.annotations.a",
        "must be a string",
    ),
    (
        "annotation key invalid",
        {"action": "Allow", "metadata": {"annotations": {"bad key": "v"}}},
        "metadata.annotations.bad key",
        "invalid annotation key",
    ),
    (
        "annotation key bad prefix",
        {"action": "Allow", "metadata": {"annotations": {"-x-/k": "v"}}},
        "metadata.annotations.-x-/k",
        "DNS subdomain",
    ),
    (
        "annotations too large",
        {"action": "Allow", "metadata": {"annotations": {"k": "x" * (256 * 1024)}}},
        "metadata.annotations",
        "limit",
    ),
]


@pytest.mark.parametrize(
    ("data", "field", "fragment"), [b[1:] for b in BAD], ids=[b[0] for b in BAD]
)
def test_parse_bad(data: object, field: str, fragment: str) -> None:
    with pytest.raises(RuleError) as info:
        parse_rule(data)
    err = info.value
    assert [e.field for e in err.errors] == [field], [repr(e) for e in err.errors]
    assert err.field == field
    assert fragment in err.message
    assert isinstance(err, ValueError)
    # The same problem, prefixed, through the list entry points.
    errors = validate_rules([{"action": "Allow"}, data], "spec.ingress")
    assert [e.field for e in errors] == [f"spec.ingress[1]{'.' if field else ''}{field}"]
    assert [e.field for e in validate_rule(data, "r")] == [f"r{'.' if field else ''}{field}"]


# --------------------------------------------------------------------------- reporting


def test_all_errors_reported_with_paths() -> None:
    data = [
        {"action": "Allow"},
        {
            "action": "allow",
            "protocol": "ICMP",
            "ipVersion": 6,
            "icmp": {"code": 3},
            "destination": {"ports": [0, "5:4", "ok-name"]},
            "bogus": 1,
        },
        "not a rule",
        {"action": "Deny", "source": {"nets": ["10.0.0.0/8", "fd00::/8"]}},
    ]
    expected = {
        ("ingress[1].bogus", "unknown field 'bogus'"),
        ("ingress[1].action", "invalid action 'allow': expected Allow, Deny, Log or Pass"),
        ("ingress[1].icmp.code", "ICMP code specified without an ICMP type"),
        ("ingress[1].destination.ports[0]", "port 0 out of range: expected 1..65535"),
        ("ingress[1].destination.ports[1]", "invalid port range '5:4': min is greater than max"),
        (
            "ingress[1].destination.ports",
            "rules that specify ports must set protocol to TCP, UDP or SCTP",
        ),
        ("ingress[1].ipVersion", "must be 4 (or unset) with protocol ICMP"),
        ("ingress[2]", "rule must be an object, got string"),
        ("ingress[3].source.nets[1]", "rule contains both IPv4 and IPv6 nets"),
    }
    found = validate_rules(data, "ingress")
    assert {(e.field, e.message) for e in found} == expected
    assert len(found) == len(expected)
    with pytest.raises(RuleError) as info:
        parse_rules(data, "ingress")
    assert {(e.field, e.message) for e in info.value.errors} == expected
    assert (info.value.field, info.value.message) == (found[0].field, found[0].message)
    assert str(info.value).endswith(f"(and {len(expected) - 1} more problems)")


def test_parse_rules_good_and_empty() -> None:
    assert parse_rules(None, "egress") == ()
    assert parse_rules([], "egress") == ()
    rules = parse_rules([{"action": "Deny"}, {"action": "Allow", "protocol": "TCP"}], "egress")
    assert rules == (Rule(Action.DENY), Rule(Action.ALLOW, protocol=6))


def test_parse_rules_not_a_list() -> None:
    with pytest.raises(RuleError) as info:
        parse_rules({"action": "Allow"}, "spec.ingress")
    assert info.value.field == "spec.ingress"
    assert "must be a list" in info.value.message


def test_parse_rule_field_prefix() -> None:
    with pytest.raises(RuleError) as info:
        parse_rule({"action": "Allow", "destination": {"ports": [1]}}, "spec.egress[4]")
    assert info.value.field == "spec.egress[4].destination.ports"


def test_rule_error_str_and_prefixed() -> None:
    err = RuleError("destination.ports[1]", "bad port")
    assert str(err) == "destination.ports[1]: bad port"
    assert err.errors == (err,)
    assert str(RuleError("", "rule must be an object")) == "rule must be an object"
    multi = RuleError("a", "x", [RuleError("a", "x"), RuleError("b[0]", "y")])
    assert str(multi) == "a: x (and 1 more problem)"
    moved = multi.prefixed("spec.ingress[3]")
    assert [(e.field, e.message) for e in moved.errors] == [
        ("spec.ingress[3].a", "x"),
        ("spec.ingress[3].b[0]", "y"),
    ]
    assert moved.field == "spec.ingress[3].a"
    assert RuleError("", "m").prefixed("p").field == "p"


def test_rules_are_hashable_and_comparable() -> None:
    a = parse_rule({"action": "Allow", "protocol": "tcp", "destination": {"ports": [80]}})
    b = parse_rule({"action": "Allow", "protocol": 6, "destination": {"ports": ["80"]}})
    c = parse_rule({"action": "Allow", "protocol": 6, "destination": {"ports": ["81"]}})
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b, c}) == 2


# --------------------------------------------------------------------------- property tests

SELECTORS = ["all()", SEL_A, SEL_B, "!has(x)", "env != 'prod' || global()"]
PORT_NAMES = (
    st.lists(st.text("abcxyz0189", min_size=1, max_size=5), min_size=1, max_size=3)
    .map("-".join)
    .filter(lambda s: len(s) <= 15 and any(c.isalpha() for c in s))
)


def _port_json() -> st.SearchStrategy[int | str]:
    single = st.integers(1, 65535)
    ranged = st.tuples(single, single).map(lambda t: f"{min(t)}:{max(t)}")
    return st.one_of(single, single.map(str), ranged, PORT_NAMES)


def _nets(version: int) -> st.SearchStrategy[list[str]]:
    if version == 4:
        net = st.tuples(st.ip_addresses(v=4), st.integers(0, 32)).map(
            lambda t: str(ip_network(f"{t[0]}/{t[1]}", strict=False))
        )
    else:
        net = st.tuples(st.ip_addresses(v=6), st.integers(0, 128)).map(
            lambda t: str(ip_network(f"{t[0]}/{t[1]}", strict=False))
        )
    return st.lists(net, max_size=3)


@st.composite
def rule_dicts(draw: st.DrawFn) -> dict[str, Any]:
    version = draw(st.sampled_from([4, 6]))
    explicit_version = draw(st.booleans())
    protocol = draw(
        st.sampled_from([None, "TCP", "udp", "SCTP", 6, "UDPLite", 47, "ICMP", "ICMPv6"])
    )
    if protocol == "ICMP":
        version = 4
    if protocol == "ICMPv6":
        version = 6
    out: dict[str, Any] = {"action": draw(st.sampled_from(["Allow", "Deny", "Log", "Pass"]))}
    if explicit_version:
        out["ipVersion"] = version
    if protocol is not None:
        out["protocol"] = protocol
    if draw(st.booleans()):
        out["notProtocol"] = draw(st.sampled_from(["TCP", 17, 200]))
    if protocol in ("ICMP", "ICMPv6"):
        for key in ("icmp", "notICMP"):
            if draw(st.booleans()):
                icmp: dict[str, int] = {"type": draw(st.integers(0, 254))}
                if draw(st.booleans()):
                    icmp["code"] = draw(st.integers(0, 255))
                out[key] = icmp
    for side in ("source", "destination"):
        entity: dict[str, Any] = {}
        entity["nets"] = draw(_nets(version))
        entity["notNets"] = draw(_nets(version))
        for key in ("selector", "notSelector", "namespaceSelector"):
            if draw(st.booleans()):
                entity[key] = draw(st.sampled_from(SELECTORS))
        if protocol in ("TCP", "udp", "SCTP", 6):
            entity["ports"] = draw(st.lists(_port_json(), max_size=4))
            entity["notPorts"] = draw(st.lists(_port_json(), max_size=4))
        if draw(st.booleans()):
            entity["serviceAccounts"] = {
                "names": draw(st.lists(st.sampled_from(["a", "b", "web"]), max_size=3)),
                "selector": draw(st.sampled_from(["", *SELECTORS])),
            }
        out[side] = entity
    if draw(st.booleans()):
        out["metadata"] = {
            "annotations": draw(
                st.dictionaries(st.sampled_from(["a", "x.io/b", "c-d"]), st.text(max_size=5))
            )
        }
    return out


@settings(max_examples=300, deadline=None)
@given(rule_dicts())
def test_round_trip_property(data: dict[str, Any]) -> None:
    rule = parse_rule(data)
    rendered = rule_to_dict(rule)
    assert parse_rule(json.loads(json.dumps(rendered))) == rule
    assert rule_to_dict(parse_rule(rendered)) == rendered
