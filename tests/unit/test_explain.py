"""``felix.explain``: plans as felix computes them, traces through the reference engine, and
rule counters from ``iptables-save -c`` (pure: datastore documents in, values out)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest

from datastore.codec import encode, resource_from_dict
from datastore.keys import resource_key
from datastore.syncer import Update
from felix import explain as fx
from felix.render import policy_chain, profile_chain

API = "projectcalico.org/v3"
ALLOW = {"action": "Allow"}
DENY = {"action": "Deny"}
PASS = {"action": "Pass"}


def doc(kind: str, name: str, spec: Mapping[str, Any], **meta: Any) -> dict[str, Any]:
    return {"apiVersion": API, "kind": kind, "metadata": {"name": name, **meta}, "spec": spec}


def wep(
    pod: str,
    ip: str,
    labels: Mapping[str, str],
    *,
    ns: str = "default",
    node: str = "node1",
    profiles: Sequence[str] = ("allow-all",),
    ports: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "orchestrator": "k8s",
        "node": node,
        "pod": pod,
        "endpoint": "eth0",
        "interfaceName": f"tbw{pod}",
        "ipNetworks": [ip],
        "profiles": list(profiles),
    }
    if ports:
        spec["ports"] = list(ports)
    return doc("WorkloadEndpoint", f"{node}-k8s-{pod}-eth0", spec, namespace=ns, labels=labels)


def gnp(name: str, selector: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"selector": selector, **spec}
    if "types" not in body:
        body["types"] = [t for t, k in (("Ingress", "ingress"), ("Egress", "egress")) if k in body]
    return doc("GlobalNetworkPolicy", name, body)


def np_(name: str, ns: str, selector: str, **spec: Any) -> dict[str, Any]:
    d = gnp(name, selector, **spec)
    d["kind"] = "NetworkPolicy"
    d["metadata"]["namespace"] = ns
    return d


def tier(name: str, order: float) -> dict[str, Any]:
    return doc("Tier", name, {"order": order})


def profile(name: str, ingress: list[Any], egress: list[Any]) -> dict[str, Any]:
    return doc("Profile", name, {"ingress": ingress, "egress": egress})


ALLOW_ALL = profile("allow-all", [ALLOW], [ALLOW])


def updates(*docs: Mapping[str, Any]) -> list[Update]:
    out = []
    for i, d in enumerate(docs, 1):
        res = resource_from_dict(dict(d))
        key = resource_key(res.kind, res.metadata.name, res.metadata.namespace)
        out.append(Update(key, encode(res), i))
    return out


def cluster(*docs: Mapping[str, Any]) -> fx.Cluster:
    return fx.Cluster(updates(*docs))


BASE = (
    ALLOW_ALL,
    wep("a", "10.65.0.1/32", {"role": "client"}),
    wep(
        "b",
        "10.65.0.2/32",
        {"role": "server"},
        ports=[{"name": "http", "port": 8081, "protocol": "TCP"}],
    ),
    wep("c", "10.65.0.3/32", {"role": "other"}),
)


def flow(c: fx.Cluster, src: str, dst: str, proto: str = "tcp", **kw: Any) -> fx.TraceResult:
    if proto in ("tcp", "udp") and "port" not in kw:
        kw["port"] = 8080
    return fx.trace(c, fx.FlowSpec(src, dst, proto, **kw))


# ------------------------------------------------------------------------------------ explain


def test_explain_orders_tiers_policies_and_profiles_as_felix() -> None:
    c = cluster(
        *BASE,
        profile("p2", [DENY], []),
        tier("t1", 100),
        tier("t0", 5),
        gnp("t1.b", "role == 'server'", tier="t1", order=20, ingress=[ALLOW]),
        gnp("t1.a", "role == 'server'", tier="t1", order=20, ingress=[PASS]),
        gnp("t0.first", "all()", tier="t0", order=1, ingress=[{"action": "Log"}], egress=[ALLOW]),
        gnp("last", "role == 'server'", ingress=[DENY]),
        np_(
            "local",
            "default",
            "role == 'server'",
            order=1,
            ingress=[{"action": "Allow", "protocol": "TCP"}],
        ),
        np_("elsewhere", "prod", "all()", ingress=[DENY]),  # other namespace: not applied
        gnp("orphan.x", "all()", tier="orphan", ingress=[DENY]),  # tier missing: skipped
        wep("b", "10.65.0.2/32", {"role": "server"}, profiles=("missing", "allow-all", "p2")),
    )
    calc = c.calc("node1")
    exp = fx.explain_endpoint(calc, "wep/default/node1-k8s-b-eth0")
    sections = {s.name: s for s in exp.sections}
    assert list(sections) == ["ingress", "egress"]  # no host endpoint stages for a workload
    ingress = sections["ingress"]
    assert [t.name for t in ingress.tiers] == ["t0", "t1", "default"]
    assert [[p.name for p in t.policies] for t in ingress.tiers] == [
        ["t0.first"],
        ["t1.a", "t1.b"],  # equal orders: by name
        ["default/local", "last"],  # order 1 before no order
    ]
    assert [p.name for p in sections["egress"].tiers[0].policies] == ["t0.first"]
    assert [(p.name, p.exists) for p in ingress.profiles] == [
        ("missing", False),
        ("allow-all", True),
        ("p2", True),
    ]
    pol = ingress.tiers[2].policies[0]
    assert pol.key == "np/default/local"
    assert pol.chain == policy_chain("np/default/local", "ingress")
    assert pol.rules[0].rule == {"action": "Allow", "protocol": "TCP"}
    assert ingress.profiles[1].chain == profile_chain("allow-all", "ingress")

    text = fx.render_explanation(exp)
    assert "WorkloadEndpoint default/node1-k8s-b-eth0 on node node1" in text
    assert "1. tier t0 (order 5)" in text and "3. tier default (no order)" in text
    assert "0: Allow protocol=TCP" in text
    assert "profile missing: does not exist (skipped)" in text
    assert "pkts" not in text and "no chain" not in text  # no counters asked

    data = fx.explanation_to_json(exp)
    json.dumps(data)  # serialisable
    assert data["endpoint"]["labels"]["projectcalico.org/namespace"] == "default"
    assert [t["name"] for t in data["directions"]["ingress"]["tiers"]] == ["t0", "t1", "default"]
    assert "counters" not in data["directions"]["ingress"]["tiers"][0]["policies"][0]["rules"][0]


def test_explain_needs_the_endpoints_own_node() -> None:
    c = cluster(*BASE, wep("r", "10.65.1.1/32", {}, node="node2"))
    with pytest.raises(fx.ExplainError, match="not an endpoint of node 'node1'"):
        fx.explain_endpoint(c.calc("node1"), "wep/default/node2-k8s-r-eth0")
    assert fx.explain_endpoint(c.calc("node2"), "wep/default/node2-k8s-r-eth0").node == "node2"


def test_find_workload_by_full_or_pod_name() -> None:
    c = cluster(*BASE, wep("my-pod", "10.65.0.9/32", {}, node="n-1"))
    calc = c.any_calc
    assert fx.find_workload(calc, "node1-k8s-a-eth0", None).key == "wep/default/node1-k8s-a-eth0"
    assert fx.find_workload(calc, "a", "default").name == "node1-k8s-a-eth0"
    with pytest.raises(fx.ExplainError, match="WorkloadEndpoint prod/a: not found"):
        fx.find_workload(calc, "a", "prod")
    with pytest.raises(fx.ExplainError, match="on node node9"):
        fx.find_workload(calc, "a", None, "node9")


def test_host_endpoint_sections() -> None:
    hep = doc(
        "HostEndpoint",
        "h1",
        {"node": "node1", "interfaceName": "eth0", "expectedIPs": ["198.51.100.1"]},
        labels={"host": "yes"},
    )
    c = cluster(
        hep,
        gnp("pre", "host == 'yes'", preDNAT=True, applyOnForward=True, ingress=[DENY]),
        gnp("fwd", "host == 'yes'", applyOnForward=True, ingress=[ALLOW]),
        gnp("untr", "host == 'yes'", doNotTrack=True, applyOnForward=True, egress=[ALLOW]),
    )
    exp = fx.explain_endpoint(c.calc("node1"), "hep/h1")
    got = {s.name: [p.name for t in s.tiers for p in t.policies] for s in exp.sections}
    assert got == {
        "ingress": ["fwd"],
        "egress": [],
        "forward ingress": ["fwd"],
        "forward egress": [],
        "preDNAT ingress": ["pre"],
        "untracked ingress": [],
        "untracked egress": ["untr"],
    }
    tables = {s.name: s.table for s in exp.sections}
    assert tables["preDNAT ingress"] == "mangle" and tables["untracked egress"] == "raw"


# ------------------------------------------------------------------------------------ trace


def test_no_policy_profiles_decide() -> None:
    c = cluster(*BASE)
    r = flow(c, "a", "b")
    assert r.action == "allow"
    assert [(s.direction, s.verdict.reason, s.verdict.profile) for s in r.steps] == [
        ("egress", "profile rule", "allow-all"),
        ("ingress", "profile rule", "allow-all"),
    ]
    assert r.decided_by == 1
    assert r.packet.src == ip_address("10.65.0.1") and r.packet.dst_port == 8080
    assert r.packet.src_port == fx.DEFAULT_SPORT


def test_rule_features_decide() -> None:
    pol = gnp(
        "rules",
        "role == 'server'",
        ingress=[
            {"action": "Deny", "protocol": "ICMP", "icmp": {"type": 8, "code": 1}},
            {"action": "Allow", "protocol": "TCP", "destination": {"ports": ["http"]}},
            {"action": "Allow", "protocol": "UDP", "source": {"selector": "role == 'client'"}},
        ],
    )
    c = cluster(*BASE, pol)
    assert flow(c, "a", "b", port=8081).action == "allow"  # named port http
    r = flow(c, "a", "b", port=8080)
    assert (r.action, r.steps[-1].verdict.reason, r.steps[-1].verdict.tier) == (
        "deny",
        "end of tier drop",
        "default",
    )
    assert flow(c, "a", "b", "udp", port=53).action == "allow"
    assert flow(c, "c", "b", "udp", port=53).action == "deny"
    r = flow(c, "a", "b", "icmp", icmp_type=8, icmp_code=1)
    s = r.steps[r.decided_by or 0]
    assert (r.action, s.direction, s.policy_key, s.verdict.rule_index) == (
        "deny",
        "ingress",
        "gnp/rules",
        0,
    )
    assert r.packet.icmp_type == 8
    assert flow(c, "a", "b", "icmp").action == "deny"  # echo request 8/0: end of tier


def test_tiers_pass_and_order_exactly_as_planned() -> None:
    c = cluster(
        *BASE,
        tier("t1", 100),
        tier("t2", 200),
        gnp(
            "t1.deny-ping",
            "role == 'server'",
            tier="t1",
            order=10,
            ingress=[{"action": "Deny", "protocol": "ICMP"}],
        ),
        gnp("t1.pass", "role == 'server'", tier="t1", order=20, ingress=[PASS]),
        gnp("t2.allow", "role == 'server'", tier="t2", order=10, ingress=[ALLOW]),
    )
    r = flow(c, "a", "b")
    s = r.steps[-1]
    assert (r.action, s.verdict.tier, s.verdict.policy, s.policy_key) == (
        "allow",
        "t2",
        "t2.allow",
        "gnp/t2.allow",
    )
    assert "tier t1: passed to the next tier" in s.verdict.trace
    r = flow(c, "a", "b", "icmp")
    assert (r.action, r.steps[-1].verdict.policy) == ("deny", "t1.deny-ping")


def test_egress_deny_stops_the_packet() -> None:
    c = cluster(
        *BASE,
        gnp(
            "eg",
            "role == 'client'",
            egress=[{"action": "Deny", "destination": {"selector": "role == 'server'"}}, ALLOW],
        ),
    )
    r = flow(c, "a", "b")
    assert r.action == "deny"
    assert [s.direction for s in r.steps] == ["egress"]
    assert r.steps[0].verdict.policy == "eg"
    assert any(
        "ingress of WorkloadEndpoint default/node1-k8s-b-eth0 not evaluated" in n for n in r.notes
    )
    assert flow(c, "a", "c").action == "allow"
    assert "verdict: DENY" in fx.render_trace(r)
    data = fx.trace_to_json(r)
    assert data["action"] == "deny" and data["steps"][0]["policyKey"] == "gnp/eg"
    json.dumps(data)


def test_namespaces_and_namespace_selectors() -> None:
    c = cluster(
        ALLOW_ALL,
        wep("pa", "10.65.0.1/32", {"role": "client"}, ns="prod"),
        wep("pb", "10.65.0.2/32", {"role": "server"}, ns="prod"),
        wep("dc", "10.65.0.3/32", {"role": "client"}, ns="dev"),
        np_(
            "only-prod",
            "prod",
            "role == 'server'",
            ingress=[{"action": "Allow", "source": {"selector": "role == 'client'"}}],
        ),
    )
    assert flow(c, "prod/pa", "prod/pb").action == "allow"
    r = flow(c, "dev/dc", "prod/pb")
    assert (r.action, r.steps[-1].verdict.reason) == ("deny", "end of tier drop")
    c2 = cluster(
        ALLOW_ALL,
        wep("pb", "10.65.0.2/32", {"role": "server"}, ns="prod"),
        wep("dc", "10.65.0.3/32", {"role": "client"}, ns="dev"),
        np_(
            "ns",
            "prod",
            "role == 'server'",
            ingress=[
                {
                    "action": "Allow",
                    "source": {"namespaceSelector": "projectcalico.org/name == 'dev'"},
                }
            ],
        ),
    )
    assert flow(c2, "dev/dc", "prod/pb").action == "allow"
    assert flow(c2, "10.65.0.3", "10.65.0.2").action == "allow"  # addresses of endpoints


def test_addresses_outside_the_cluster_and_network_sets() -> None:
    netset = doc("GlobalNetworkSet", "ext", {"nets": ["203.0.113.0/24"]}, labels={"zone": "ext"})
    c = cluster(
        *BASE,
        netset,
        gnp(
            "from-ext",
            "role == 'server'",
            ingress=[{"action": "Allow", "source": {"selector": "zone == 'ext'"}}],
        ),
    )
    r = flow(c, "203.0.113.7", "b")
    assert r.action == "allow" and [s.direction for s in r.steps] == ["ingress"]
    assert "source 203.0.113.7: globalnetworkset ext" in r.steps[0].verdict.trace
    assert flow(c, "198.51.100.7", "b").action == "deny"
    r = flow(c, "198.51.100.7", "203.0.113.7")
    assert r.action == "allow" and not r.steps and r.decided_by is None
    assert "felix does not police this flow" in r.notes[0]


def test_profile_labels_are_effective_labels() -> None:
    c = cluster(
        doc(
            "Profile",
            "labelled",
            {"ingress": [ALLOW], "egress": [ALLOW], "labelsToApply": {"team": "x"}},
        ),
        wep("a", "10.65.0.1/32", {}, profiles=("labelled",)),
        wep("b", "10.65.0.2/32", {"role": "server"}, profiles=("labelled",)),
        gnp(
            "team",
            "role == 'server'",
            ingress=[{"action": "Allow", "source": {"selector": "team == 'x'"}}],
        ),
    )
    r = flow(c, "a", "b")
    assert (r.action, r.steps[-1].verdict.policy) == ("allow", "team")


def test_endpoints_on_two_nodes() -> None:
    c = cluster(
        *BASE,
        wep("r", "10.65.1.1/32", {"role": "server"}, node="node2"),
        gnp("srv", "role == 'server'", ingress=[{"action": "Allow", "protocol": "TCP"}]),
    )
    r = flow(c, "a", "r")
    assert r.action == "allow"
    assert [(s.direction, s.node) for s in r.steps] == [("egress", "node1"), ("ingress", "node2")]
    assert flow(c, "a", "r", "udp", port=53).action == "deny"


def test_host_endpoint_stages() -> None:
    hep = doc(
        "HostEndpoint",
        "h1",
        {"node": "node1", "interfaceName": "eth0", "expectedIPs": ["198.51.100.1"]},
        labels={"host": "yes"},
    )
    c = cluster(
        hep,
        gnp(
            "untr",
            "host == 'yes'",
            doNotTrack=True,
            applyOnForward=True,
            ingress=[{"action": "Allow", "protocol": "UDP"}],
        ),
        gnp(
            "pre",
            "host == 'yes'",
            preDNAT=True,
            applyOnForward=True,
            ingress=[
                {"action": "Deny", "source": {"nets": ["203.0.113.0/24"]}},
                {"action": "Allow", "protocol": "ICMP"},
            ],
        ),
        gnp("normal", "host == 'yes'", ingress=[{"action": "Allow", "protocol": "TCP"}]),
    )
    r = flow(c, "198.51.100.2", "hep:h1", "udp", port=53)
    assert r.action == "allow" and [s.stage for s in r.steps] == ["untracked"]
    r = flow(c, "203.0.113.5", "hep:h1")
    assert (r.action, r.steps[-1].stage, r.steps[-1].verdict.policy) == ("deny", "preDNAT", "pre")
    r = flow(c, "198.51.100.2", "hep:h1", "icmp")  # preDNAT allow goes on; normal drops
    assert [(s.stage, s.decided) for s in r.steps] == [
        ("untracked", False),
        ("preDNAT", False),
        ("normal", True),
    ]
    assert r.action == "deny"
    assert flow(c, "198.51.100.2", "198.51.100.1").action == "allow"  # the HEP's address
    assert any("failsafe" in n for n in r.notes)


@pytest.mark.parametrize(
    ("src", "dst", "proto", "kw", "message"),
    [
        ("nobody", "b", "tcp", {"port": 1}, "WorkloadEndpoint default/nobody: not found"),
        ("a", "b", "tcp", {}, "--port is required"),
        ("a", "b", "icmp", {"port": 80}, "--port/--sport only go with"),
        ("a", "b", "tcp", {"port": 80, "icmp_type": 8}, "--icmp-type/--icmp-code only go with"),
        ("a", "b", "bogus", {}, "--proto: invalid protocol"),
        ("a", "fd00::1", "tcp", {"port": 1}, "no common IP version"),
        ("hep:none", "b", "tcp", {"port": 1}, "HostEndpoint none: not found"),
    ],
)
def test_trace_errors_name_the_problem(
    src: str, dst: str, proto: str, kw: dict[str, Any], message: str
) -> None:
    with pytest.raises(fx.ExplainError, match=message.replace("-", r"\-")):
        fx.trace(cluster(*BASE), fx.FlowSpec(src, dst, proto, **kw))


def test_ipv6_icmp_means_icmpv6() -> None:
    c = cluster(ALLOW_ALL, wep("a", "fd00::1/128", {}), wep("b", "fd00::2/128", {}))
    r = flow(c, "a", "b", "icmp")
    assert (r.packet.protocol, r.packet.icmp_type, r.action) == (58, 128, "allow")


# ------------------------------------------------------------------------------------ counters

# Captured with `iptables-save -c` in the felix bed's node namespace by
# tests/netns/test_trace_agrees.py (policy "rules" on the servers: Deny UDP, Allow ICMP; four
# pings from a to b; every workload has the allow-all profile).
CAPTURED = Path(__file__).resolve().parents[1] / "data" / "felix" / "iptables-save-c.txt"


def _line(counts: str, chain: str, comment: str, rest: str) -> str:
    return f'{counts} -A {chain} -m comment --comment "{comment}" {rest}'


SYNTHETIC = "\n".join(
    [
        "*filter",
        ":tby-pi-X - [0:0]",
        ":tby-po-EMPTY - [0:0]",
        _line("[2:120]", "tby-pi-X", "tby:CCCCCCCCCCCCCCCC policy p rule 0", "--dport 1 -j DROP"),
        _line("[5:300]", "tby-pi-X", "tby:DDDDDDDDDDDDDDDD policy p rule 0", "--dport 2 -j DROP"),
        _line("[7:700]", "tby-pi-X", "tby:EEEEEEEEEEEEEEEE", "-j RETURN"),
        _line("[1:10]", "tby-pi-X", "tby:FFFFFFFFFFFFFFFF tier default", "-j DROP"),
        "COMMIT",
        "*raw",
        _line("[9:900]", "tby-pi-X", "tby:GGGGGGGGGGGGGGGG policy p rule 0", "-j ACCEPT"),
        "COMMIT",
    ]
)


def test_parse_captured_counters() -> None:
    table = fx.parse_counters([CAPTURED.read_text()])
    chain = policy_chain("gnp/rules", "ingress")
    assert table.get("filter", chain, 0) == fx.Counter(0, 0)  # Deny UDP
    assert table.get("filter", chain, 1) == fx.Counter(4, 336)  # Allow ICMP
    assert table.get("filter", profile_chain("allow-all", "egress"), 0) == fx.Counter(4, 336)
    assert table.get("filter", profile_chain("allow-all", "ingress"), 0) == fx.Counter(0, 0)
    assert table.get("raw", chain, 0) is None  # no such chain in that table
    assert table.get("filter", policy_chain("gnp/other", "ingress"), 0) is None


def test_parse_counters_sums_alternatives_and_versions() -> None:
    table = fx.parse_counters([SYNTHETIC, SYNTHETIC.replace("[2:120]", "[1:100]")])
    assert table.get("filter", "tby-pi-X", 0) == fx.Counter(2 + 5 + 1 + 5, 120 + 300 + 100 + 300)
    assert table.get("filter", "tby-pi-X", 1) == fx.Counter(0, 0)  # RETURN/tier rules ignored
    assert table.get("raw", "tby-pi-X", 0) == fx.Counter(18, 1800)
    assert table.get("filter", "tby-po-EMPTY", 0) == fx.Counter(0, 0)  # declared, empty


def test_explain_shows_counters_next_to_rules() -> None:
    c = cluster(
        *BASE,
        gnp("rules", "role == 'server'", ingress=[{"action": "Deny", "protocol": "UDP"}, ALLOW]),
    )
    exp = fx.explain_endpoint(
        c.calc("node1"), "wep/default/node1-k8s-b-eth0", fx.parse_counters([CAPTURED.read_text()])
    )
    ingress, egress = exp.sections
    rules = ingress.tiers[0].policies[0].rules
    assert [r.counter for r in rules] == [fx.Counter(0, 0), fx.Counter(4, 336)]
    assert egress.profiles[0].rules[0].counter == fx.Counter(4, 336)
    out = fx.render_explanation(exp)
    assert "1: [4 pkts, 336 bytes] Allow" in out
    data = fx.explanation_to_json(exp)
    first = data["directions"]["ingress"]["tiers"][0]["policies"][0]["rules"][1]
    assert first["counters"] == {"packets": 4, "bytes": 336}
    # A policy whose chain is not in the kernel: no counters rather than zeros.
    c2 = cluster(*BASE, gnp("new", "role == 'server'", ingress=[ALLOW]))
    exp2 = fx.explain_endpoint(
        c2.calc("node1"), "wep/default/node1-k8s-b-eth0", fx.parse_counters([SYNTHETIC])
    )
    assert exp2.sections[0].tiers[0].policies[0].rules[0].counter is None
    assert "0: [no chain in iptables] Allow" in fx.render_explanation(exp2)
