"""``tabbyctl trace`` agrees with real packets: every scenario of the felix netns tests.

One felix bed (tests/support/felix.py) holds the workloads of test_felix_rules.py,
test_felix_tiers.py and test_felix_namespaces.py (namespace ``default``: clients ``a``, ``c``,
server ``b`` with named port http=8081, server ``d`` without profile; ``prod``: ``pa``, ``pb``;
``dev``: ``dc``, ``db``) plus the bed's ``outside`` namespace as an address that is no endpoint.
The steps below replay those tests' policy documents in order. For each step, every flow is
  1. traced in-process with ``felix.explain.trace`` over the keys read back from etcd (the same
     data felix renders from), and the verdict must equal the step's expectation (so the table
     documents intent and both allowed and denied flows are covered);
  2. sent as real packets (ping, TCP connect) until they all give the trace's verdict at once.
A few flows also run ``tabbyctl trace`` / ``tabbyctl explain --counters`` as processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctl.explain import load_updates
from datastore.client import ResourceClient
from felix import explain as fx
from tests.netns.test_felix_tiers import tier, tiered
from tests.support.felix import (
    ALLOW,
    ALLOW_ALL,
    DENY,
    FelixBed,
    Workload,
    gnp,
    np_,
    profile,
)
from tests.support.netns import ns_exec

SERVER = "role == 'server'"
OUTSIDE_IP = "198.51.100.2"
TABBYCTL = str(Path(sys.executable).parent / "tabbyctl")


@dataclass(frozen=True)
class Flow:
    src: str  # workload name or "outside"
    dst: str
    proto: str  # "icmp" (a ping) or "tcp"
    port: int | None
    allowed: bool


@dataclass(frozen=True)
class Step:
    name: str
    put: Sequence[Mapping[str, Any]] = ()
    delete: Sequence[tuple[str, str, str | None]] = ()
    flows: Sequence[Flow] = ()
    relabel: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # wl -> changes


def ping(src: str, dst: str, allowed: bool) -> Flow:
    return Flow(src, dst, "icmp", None, allowed)


def tcp(src: str, dst: str, port: int, allowed: bool) -> Flow:
    return Flow(src, dst, "tcp", port, allowed)


def rules(*r: Mapping[str, Any]) -> dict[str, Any]:
    """test_felix_rules.py's policy: ingress rules on the servers."""
    return gnp("rules", SERVER, ingress=list(r))


def src_rule(source: Mapping[str, Any]) -> dict[str, Any]:
    return rules({"action": "Allow", "source": dict(source)})


def egress_a(rule: Mapping[str, Any]) -> dict[str, Any]:
    return gnp("egress-a", "role == 'client'", egress=[dict(rule)])


def ns_np(*r: Mapping[str, Any]) -> dict[str, Any]:
    return np_("deny", "prod", SERVER, ingress=list(r))


TCP_ONLY = profile("tcp-only", [{"action": "Allow", "protocol": "TCP"}], [])
DENY_ALL = profile("deny-all", [DENY], [DENY])
GNP = "GlobalNetworkPolicy"

STEPS: tuple[Step, ...] = (
    # ---- test_felix_rules.py: protocol, ICMP, Log
    Step(
        "profiles only",
        flows=(
            ping("a", "b", True),
            tcp("a", "b", 8080, True),
            ping("a", "d", False),  # d: no profile, no policy
            ping("d", "a", False),
        ),
    ),
    Step(
        "protocol TCP",
        put=(rules({"action": "Allow", "protocol": "TCP"}),),
        flows=(tcp("a", "b", 8080, True), ping("a", "b", False)),
    ),
    Step(
        "notProtocol TCP",
        put=(rules({"action": "Allow", "notProtocol": "TCP"}),),
        flows=(ping("a", "b", True), tcp("a", "b", 8080, False)),
    ),
    Step(
        "icmp type 8",
        put=(rules({"action": "Allow", "protocol": "ICMP", "icmp": {"type": 8}}),),
        flows=(ping("a", "b", True), tcp("a", "b", 8080, False)),
    ),
    Step(
        "icmp 8/1",
        put=(rules({"action": "Allow", "protocol": "ICMP", "icmp": {"type": 8, "code": 1}}),),
        flows=(ping("a", "b", False),),
    ),
    Step(
        "notICMP 8",
        put=(rules({"action": "Allow", "protocol": "ICMP", "notICMP": {"type": 8}}),),
        flows=(ping("a", "b", False),),
    ),
    Step(
        "notICMP 13",
        put=(rules({"action": "Allow", "protocol": "ICMP", "notICMP": {"type": 13}}),),
        flows=(ping("a", "b", True), tcp("a", "b", 8080, False)),
    ),
    Step(
        "log then allow tcp",
        put=(rules({"action": "Log"}, {"action": "Allow", "protocol": "TCP"}),),
        flows=(tcp("a", "b", 8080, True), ping("a", "b", False)),
    ),
    Step(
        "log, deny icmp, allow",
        put=(rules({"action": "Log"}, {"action": "Deny", "protocol": "ICMP"}, ALLOW),),
        flows=(tcp("a", "b", 8080, True), ping("a", "b", False)),
    ),
    # ---- ports
    Step(
        "ports 8080",
        put=(rules({"action": "Allow", "protocol": "TCP", "destination": {"ports": [8080]}}),),
        flows=(tcp("a", "b", 8080, True), tcp("a", "b", 8081, False)),
    ),
    Step(
        "port range",
        put=(
            rules({"action": "Allow", "protocol": "TCP", "destination": {"ports": ["9000:9010"]}}),
        ),
        flows=(tcp("a", "b", 9005, True), tcp("a", "b", 8080, False)),
    ),
    Step(
        "notPorts 8080",
        put=(rules({"action": "Allow", "protocol": "TCP", "destination": {"notPorts": [8080]}}),),
        flows=(tcp("a", "b", 8081, True), tcp("a", "b", 8080, False)),
    ),
    Step(
        "named port http",
        put=(rules({"action": "Allow", "protocol": "TCP", "destination": {"ports": ["http"]}}),),
        flows=(tcp("a", "b", 8081, True), tcp("a", "b", 8080, False)),
    ),
    Step(
        "notPorts http",
        put=(rules({"action": "Allow", "protocol": "TCP", "destination": {"notPorts": ["http"]}}),),
        flows=(tcp("a", "b", 8080, True), tcp("a", "b", 8081, False)),
    ),
    Step(
        "source ports 1-1023",
        put=(rules({"action": "Allow", "protocol": "TCP", "source": {"ports": ["1:1023"]}}),),
        flows=(tcp("a", "b", 8080, False),),
    ),
    Step(
        "source ports 1024+",
        put=(rules({"action": "Allow", "protocol": "TCP", "source": {"ports": ["1024:65535"]}}),),
        flows=(tcp("a", "b", 8080, True),),
    ),
    # ---- nets and selectors
    Step(
        "nets one",
        put=(src_rule({"nets": ["10.65.0.1/32"]}),),
        flows=(tcp("a", "b", 8080, True), tcp("c", "b", 8080, False)),
    ),
    Step(
        "nets set",
        put=(src_rule({"nets": ["10.65.0.1/32", "10.99.0.0/16"]}),),
        flows=(tcp("a", "b", 8080, True), tcp("c", "b", 8080, False)),
    ),
    Step(
        "notNets one",
        put=(src_rule({"notNets": ["10.65.0.1/32"]}),),
        flows=(tcp("a", "b", 8080, False), tcp("c", "b", 8080, True)),
    ),
    Step(
        "selector",
        put=(src_rule({"selector": "role == 'client'"}),),
        flows=(tcp("a", "b", 8080, True), tcp("c", "b", 8080, False)),
    ),
    Step(
        "notSelector",
        put=(src_rule({"notSelector": "role == 'client'"}),),
        flows=(tcp("a", "b", 8080, False), tcp("c", "b", 8080, True)),
    ),
    Step(
        "v6-only notNets deny",
        put=(rules({"action": "Deny", "source": {"notNets": ["fd00:1::/64"]}}, ALLOW),),
        flows=(tcp("a", "b", 8080, True), tcp("c", "b", 8080, True)),
    ),
    Step(
        "selector follows relabel",
        put=(src_rule({"selector": "role == 'client'"}),),
        relabel={"c": {"role": "client"}},
        flows=(tcp("c", "b", 8080, True), tcp("a", "b", 8080, True)),
    ),
    Step(
        "outside by nets",
        put=(src_rule({"nets": ["198.51.100.0/24"]}),),
        relabel={"c": {"role": "other"}},
        flows=(tcp("outside", "b", 8080, True), tcp("c", "b", 8080, False)),
    ),
    # ---- source / destination, ingress / egress
    Step(
        "egress a: destination nets b",
        delete=((GNP, "rules", None),),
        put=(egress_a({"action": "Allow", "destination": {"nets": ["10.65.0.2/32"]}}),),
        flows=(
            tcp("a", "b", 8080, True),
            tcp("a", "c", 8080, False),
            tcp("c", "b", 8080, True),
            tcp("a", "outside", 8080, False),
        ),
    ),
    Step(
        "egress a: destination selector",
        put=(egress_a({"action": "Allow", "destination": {"selector": "role == 'other'"}}),),
        flows=(tcp("a", "c", 8080, True), tcp("a", "b", 8080, False)),
    ),
    Step(
        "egress a: source is a itself",
        put=(egress_a({"action": "Allow", "source": {"nets": ["10.65.0.3/32"]}}),),
        flows=(tcp("a", "b", 8080, False), tcp("a", "c", 8080, False)),
    ),
    Step(
        "ingress: destination c",
        delete=((GNP, "egress-a", None),),
        put=(rules({"action": "Allow", "destination": {"nets": ["10.65.0.3/32"]}}),),
        flows=(tcp("a", "b", 8080, False), tcp("a", "c", 8080, True)),
    ),
    Step(
        "ingress: destination b",
        put=(rules({"action": "Allow", "destination": {"nets": ["10.65.0.2/32"]}}),),
        flows=(tcp("a", "b", 8080, True), tcp("c", "b", 8080, True)),
    ),
    # ---- test_felix_tiers.py
    Step(
        "tiers: end of tier drop",
        delete=((GNP, "rules", None),),
        put=(
            tier("t1", 100),
            tier("t2", 200),
            tiered("t1", "deny-ping", 10, {"action": "Deny", "protocol": "ICMP"}),
            tiered("t2", "allow", 10, ALLOW),
        ),
        flows=(ping("a", "b", False), tcp("a", "b", 8080, False), ping("b", "a", True)),
    ),
    Step(
        "tiers: pass after the deny",
        put=(tiered("t1", "pass", 20, {"action": "Pass"}),),
        flows=(tcp("a", "b", 8080, True), ping("a", "b", False)),
    ),
    Step(
        "tiers: pass first",
        put=(tiered("t1", "pass", 5, {"action": "Pass"}),),
        flows=(ping("a", "b", True), tcp("a", "b", 8080, True)),
    ),
    Step(
        "tiers: t2 first",
        put=(tiered("t1", "pass", 20, {"action": "Pass"}), tier("t2", 50)),
        flows=(ping("a", "b", True), tcp("a", "b", 8080, True)),
    ),
    Step(
        "tiers: t2 passes back to t1",
        put=(tiered("t2", "allow", 10, {"action": "Pass"}),),
        flows=(ping("a", "b", False), tcp("a", "b", 8080, True)),
    ),
    Step(
        "tiers: no profile allows ingress",
        put=(profile("allow-all", [], [ALLOW]),),
        flows=(tcp("a", "b", 8080, False),),
    ),
    Step(
        "tiers: profile allows tcp",
        put=(profile("allow-all", [{"action": "Allow", "protocol": "TCP"}], [ALLOW]),),
        flows=(tcp("a", "b", 8080, True), ping("a", "b", False)),
    ),
    # ---- profiles
    Step(
        "profiles: pass to profiles",
        delete=(
            (GNP, "t1.deny-ping", None),
            (GNP, "t1.pass", None),
            (GNP, "t2.allow", None),
            ("Tier", "t1", None),
            ("Tier", "t2", None),
        ),
        put=(ALLOW_ALL, TCP_ONLY, DENY_ALL, gnp("pass", SERVER, ingress=[{"action": "Pass"}])),
        flows=(ping("a", "b", True), tcp("a", "d", 8080, False)),
    ),
    Step(
        "profiles: tcp-only first",
        relabel={"b": {"profiles": ("tcp-only", "deny-all")}},
        flows=(tcp("a", "b", 8080, True), ping("a", "b", False)),
    ),
    Step(
        "profiles: deny-all first",
        relabel={"b": {"profiles": ("deny-all", "tcp-only")}},
        flows=(tcp("a", "b", 8080, False),),
    ),
    Step(
        "profiles: a missing profile",
        relabel={"b": {"profiles": ("not-yet", "allow-all")}, "c": {"profiles": ("not-yet",)}},
        flows=(ping("a", "b", True), ping("a", "c", False)),
    ),
    Step(
        "profiles: policy allow skips profiles",
        put=(gnp("pass", SERVER, ingress=[ALLOW]),),
        relabel={"b": {"profiles": ("deny-all",)}},
        flows=(tcp("a", "b", 8080, True), ping("a", "b", True), ping("b", "a", False)),
    ),
    # ---- test_felix_namespaces.py
    Step(
        "namespaces: np selects its namespace only",
        delete=((GNP, "pass", None),),
        relabel={"b": {"profiles": ("allow-all",)}, "c": {"profiles": ("allow-all",)}},
        put=(ns_np(DENY),),
        flows=(tcp("pa", "pb", 8080, False), tcp("pa", "db", 8080, True)),
    ),
    Step(
        "namespaces: np rule selector scoped",
        put=(ns_np({"action": "Allow", "source": {"selector": "role == 'client'"}}),),
        flows=(tcp("pa", "pb", 8080, True), tcp("dc", "pb", 8080, False)),
    ),
    Step(
        "namespaces: namespaceSelector",
        put=(
            ns_np(
                {
                    "action": "Allow",
                    "source": {"namespaceSelector": "projectcalico.org/name == 'dev'"},
                }
            ),
        ),
        flows=(tcp("dc", "pb", 8080, True), tcp("pa", "pb", 8080, False)),
    ),
    Step(
        "namespaces: gnp with namespaceSelector and selector",
        delete=(("NetworkPolicy", "deny", "prod"),),
        put=(
            gnp(
                "g",
                SERVER,
                ingress=[
                    {
                        "action": "Allow",
                        "source": {
                            "namespaceSelector": "projectcalico.org/name == 'prod'",
                            "selector": "role == 'client'",
                        },
                    }
                ],
            ),
        ),
        flows=(
            tcp("pa", "db", 8080, True),
            tcp("dc", "db", 8080, False),
            tcp("pa", "pb", 8080, True),
            tcp("dc", "pb", 8080, False),
        ),
    ),
)


def _build(bed: FelixBed, tmp_path: Path) -> dict[str, Workload]:
    bed.put(ALLOW_ALL)
    p = ("allow-all",)
    http = ({"name": "http", "port": 8081, "protocol": "TCP"},)
    wls = [
        bed.add_workload("a", "10.65.0.1", {"role": "client"}, profiles=p),
        bed.add_workload("b", "10.65.0.2", {"role": "server"}, profiles=p, ports=http),
        bed.add_workload("c", "10.65.0.3", {"role": "other"}, profiles=p),
        bed.add_workload("d", "10.65.0.4", {"role": "server"}, profiles=()),
        bed.add_workload("pa", "10.65.0.11", {"role": "client"}, namespace="prod", profiles=p),
        bed.add_workload("pb", "10.65.0.12", {"role": "server"}, namespace="prod", profiles=p),
        bed.add_workload("dc", "10.65.0.13", {"role": "client"}, namespace="dev", profiles=p),
        bed.add_workload("db", "10.65.0.14", {"role": "server"}, namespace="dev", profiles=p),
    ]
    bed.serve(wls[1].netns, (8080, 8081, 9005))
    for wl in (wls[0], wls[2], wls[3], wls[5], wls[7]):
        bed.serve(wl.netns, (8080,))
    bed.serve(bed.outside, (8080,))
    bed.start_felix(tmp_path)
    bed.wait_ready()
    return {wl.name: wl for wl in wls}


def _end(bed: FelixBed, wls: Mapping[str, Workload], name: str, by_ip: bool) -> str:
    """How the flow's end is named to trace: the pod name, or its address (alternately)."""
    if name == "outside":
        return OUTSIDE_IP
    wl = wls[name]
    return wl.ip if by_ip else f"{wl.namespace}/{wl.name}"


def _check(bed: FelixBed, wls: Mapping[str, Workload], f: Flow) -> Callable[[], bool]:
    src_ns = bed.outside if f.src == "outside" else wls[f.src].netns
    dst_ip = OUTSIDE_IP if f.dst == "outside" else wls[f.dst].ip
    if f.proto == "icmp":
        return bed.can_ping(src_ns, dst_ip)
    assert f.port is not None
    return bed.can_tcp(src_ns, dst_ip, f.port)


def _tabbyctl(
    bed: FelixBed, *args: str, netns: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}
    # Inside the node namespace etcd is reachable on 127.0.0.1:2379 through the bed's bridge.
    env["ETCD_ENDPOINTS"] = "http://127.0.0.1:2379" if netns else f"http://{bed.etcd.endpoint}"
    argv = [TABBYCTL, *args]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60, check=False)


def test_trace_agrees_with_real_packets(felix_bed: FelixBed, tmp_path: Path) -> None:
    bed = felix_bed
    wls = _build(bed, tmp_path)
    client = ResourceClient(bed.store)
    compared = 0
    allowed = denied = 0
    by_ip = False
    for step in STEPS:
        for kind, name, ns in step.delete:
            bed.delete(kind, name, ns)
        for wl_name, changes in step.relabel.items():
            wl = wls[wl_name]
            if "role" in changes:
                wl.labels = {"role": str(changes["role"])}
            if "profiles" in changes:
                wl.profiles = tuple(changes["profiles"])
            bed.put_workload(wl)
        for d in step.put:
            bed.put(d)
        cluster = fx.Cluster(load_updates(client))
        checks: dict[str, tuple[Callable[[], bool], bool]] = {}
        for f in step.flows:
            by_ip = not by_ip
            spec = fx.FlowSpec(
                _end(bed, wls, f.src, by_ip), _end(bed, wls, f.dst, by_ip), f.proto, f.port
            )
            result = fx.trace(cluster, spec)
            label = f"{step.name}: {f.src}->{f.dst} {f.proto} {f.port or ''}".rstrip()
            verdict = result.action == "allow"
            assert verdict == f.allowed, (
                f"{label}: trace says {result.action}, the step expects "
                f"{'allow' if f.allowed else 'deny'}\n{fx.render_trace(result)}"
            )
            checks[label] = (_check(bed, wls, f), verdict)
            compared += 1
            allowed += verdict
            denied += not verdict
        bed.expect(checks)
    print(
        f"trace agreed with real packets on {compared} flows ({allowed} allowed, {denied} denied)"
    )
    assert compared >= 25 and allowed >= 10 and denied >= 10

    # The command line: same verdict, exit status 0 (allowed) / 1 (denied), JSON output.
    ok = _tabbyctl(
        bed, "trace", "--from", "prod/pa", "--to", "dev/db", "--proto", "tcp", "--port", "8080"
    )
    assert ok.returncode == 0 and "verdict: ALLOW" in ok.stdout, ok.stderr + ok.stdout
    no = _tabbyctl(
        bed, "trace", "--from", "10.65.0.13", "--to", "10.65.0.12", "--proto", "tcp",
        "--port", "8080", "-o", "json",
    )  # fmt: skip
    assert no.returncode == 1, no.stderr
    data = json.loads(no.stdout)
    last = data["steps"][data["decidedBy"]]
    assert (data["action"], last["direction"], last["reason"]) == (
        "deny",
        "ingress",
        "end of tier drop",
    )
    bed.expect({"cli deny: dc->pb": (bed.can_tcp(wls["dc"].netns, wls["pb"].ip, 8080), False)})


def test_explain_counters_count_real_packets(felix_bed: FelixBed, tmp_path: Path) -> None:
    """``explain --counters`` run inside the node namespace shows the packets a rule matched."""
    bed = felix_bed
    wls = _build(bed, tmp_path)
    bed.put(rules({"action": "Deny", "protocol": "UDP"}, {"action": "Allow", "protocol": "ICMP"}))
    a, b = wls["a"], wls["b"]
    bed.expect({"ping allowed by rule 1": (bed.can_ping(a.netns, b.ip), True)})

    def counters() -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
        res = _tabbyctl(bed, "explain", "endpoint", "b", "--counters", "-o", "json", netns=bed.node)
        assert res.returncode == 0, res.stderr
        data = json.loads(res.stdout)
        pol = data["directions"]["ingress"]["tiers"][0]["policies"][0]
        assert pol["name"] == "rules"
        deny_udp, allow_icmp = pol["rules"]
        prof = data["directions"]["egress"]["profiles"][0]
        assert prof["name"] == "allow-all"
        return deny_udp["counters"], allow_icmp["counters"], prof["rules"][0]["counters"]

    _, allow_before, prof_before = counters()
    for _ in range(3):
        # Only a flow's first packet meets the policy rules; forget the previous flow first
        # (ping may reuse an ICMP id, which conntrack would take for the same flow).
        ns_exec(bed.node, ["conntrack", "-F"], check=False)
        ns_exec(a.netns, ["ping", "-c", "2", "-i", "0.2", "-q", b.ip])
    deny_udp, allow_icmp, prof = counters()
    assert allow_icmp["packets"] - allow_before["packets"] >= 3
    assert deny_udp == {"packets": 0, "bytes": 0}
    assert prof["packets"] - prof_before["packets"] >= 3
    text = _tabbyctl(bed, "explain", "endpoint", "b", "--counters", netns=bed.node)
    assert text.returncode == 0 and "pkts" in text.stdout, text.stderr
    (tmp_path / "iptables-save-c.txt").write_text(ns_exec(bed.node, ["iptables-save", "-c"]))
    print(text.stdout)
