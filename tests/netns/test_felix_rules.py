"""Felix enforces each policy rule feature on real packets (ping and TCP connects).

One bed per test: client workloads ``a`` (role=client) and ``c`` (role=other) and a server
workload ``b`` (role=server) with TCP listeners. Every workload has an allow-all profile, so a
step's policy on ``b`` decides; every step checks an allowed and a denied flow together.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from tests.support.felix import ALLOW, ALLOW_ALL, FelixBed, Workload, gnp

PORTS = (8080, 8081, 9005)


def _setup(bed: FelixBed, tmp_path: Path) -> tuple[Workload, Workload, Workload]:
    bed.put(ALLOW_ALL)
    a = bed.add_workload("a", "10.65.0.1", {"role": "client"}, profiles=("allow-all",))
    b = bed.add_workload(
        "b",
        "10.65.0.2",
        {"role": "server"},
        profiles=("allow-all",),
        ports=({"name": "http", "port": 8081, "protocol": "TCP"},),
    )
    c = bed.add_workload("c", "10.65.0.3", {"role": "other"}, profiles=("allow-all",))
    bed.serve(b.netns, PORTS)
    bed.start_felix(tmp_path)
    bed.wait_ready()
    return a, b, c


def _ingress(bed: FelixBed, *rules: Mapping[str, object]) -> None:
    bed.put(gnp("rules", "role == 'server'", ingress=list(rules)))


def test_protocol_icmp_and_log(felix_bed: FelixBed, tmp_path: Path) -> None:
    bed = felix_bed
    a, b, _ = _setup(bed, tmp_path)
    ping = bed.can_ping(a.netns, b.ip)
    tcp = bed.can_tcp(a.netns, b.ip, 8080)
    bed.expect({"ping (profile only)": (ping, True), "tcp (profile only)": (tcp, True)})

    _ingress(bed, {"action": "Allow", "protocol": "TCP"})
    bed.expect({"protocol TCP: tcp": (tcp, True), "protocol TCP: ping": (ping, False)})

    _ingress(bed, {"action": "Allow", "notProtocol": "TCP"})
    bed.expect({"notProtocol TCP: ping": (ping, True), "notProtocol TCP: tcp": (tcp, False)})

    _ingress(bed, {"action": "Allow", "protocol": "ICMP", "icmp": {"type": 8}})
    bed.expect({"icmp type 8: ping": (ping, True), "icmp type 8: tcp": (tcp, False)})

    _ingress(bed, {"action": "Allow", "protocol": "ICMP", "icmp": {"type": 8, "code": 1}})
    bed.expect({"icmp 8/1: ping (code 0)": (ping, False)})
    _ingress(bed, {"action": "Allow", "protocol": "ICMP", "icmp": {"type": 8, "code": 0}})
    bed.expect({"icmp 8/0: ping": (ping, True)})

    _ingress(bed, {"action": "Allow", "protocol": "ICMP", "notICMP": {"type": 8}})
    bed.expect({"notICMP type 8: ping": (ping, False)})
    _ingress(bed, {"action": "Allow", "protocol": "ICMP", "notICMP": {"type": 13}})
    bed.expect({"notICMP type 13: ping": (ping, True), "notICMP type 13: tcp": (tcp, False)})

    # Log matches everything and continues: the next rule decides.
    _ingress(bed, {"action": "Log"}, {"action": "Allow", "protocol": "TCP"})
    bed.expect({"log then allow tcp: tcp": (tcp, True), "log then allow tcp: ping": (ping, False)})
    assert "-j LOG" in bed.iptables_save()
    _ingress(bed, {"action": "Log"}, {"action": "Deny", "protocol": "ICMP"}, ALLOW)
    bed.expect({"log, deny icmp: tcp": (tcp, True), "log, deny icmp: ping": (ping, False)})


def test_ports_ranges_not_ports_named_ports(felix_bed: FelixBed, tmp_path: Path) -> None:
    bed = felix_bed
    a, b, _ = _setup(bed, tmp_path)
    p8080, p8081, p9005 = (bed.can_tcp(a.netns, b.ip, p) for p in PORTS)

    _ingress(bed, {"action": "Allow", "protocol": "TCP", "destination": {"ports": [8080]}})
    bed.expect({"ports 8080: 8080": (p8080, True), "ports 8080: 8081": (p8081, False)})

    _ingress(bed, {"action": "Allow", "protocol": "TCP", "destination": {"ports": ["9000:9010"]}})
    bed.expect({"range: 9005": (p9005, True), "range: 8080": (p8080, False)})

    _ingress(bed, {"action": "Allow", "protocol": "TCP", "destination": {"notPorts": [8080]}})
    bed.expect({"notPorts 8080: 8081": (p8081, True), "notPorts 8080: 8080": (p8080, False)})

    # Named port: b declares http = TCP 8081 in its WorkloadEndpoint.
    _ingress(bed, {"action": "Allow", "protocol": "TCP", "destination": {"ports": ["http"]}})
    bed.expect({"named http: 8081": (p8081, True), "named http: 8080": (p8080, False)})

    _ingress(bed, {"action": "Allow", "protocol": "TCP", "destination": {"notPorts": ["http"]}})
    bed.expect({"notPorts http: 8080": (p8080, True), "notPorts http: 8081": (p8081, False)})

    # Source ports: the client's ephemeral port is never 1-1023.
    _ingress(bed, {"action": "Allow", "protocol": "TCP", "source": {"ports": ["1:1023"]}})
    bed.expect({"source ports 1-1023: 8080": (p8080, False)})
    _ingress(bed, {"action": "Allow", "protocol": "TCP", "source": {"ports": ["1024:65535"]}})
    bed.expect({"source ports 1024+: 8080": (p8080, True)})


def test_nets_and_selectors(felix_bed: FelixBed, tmp_path: Path) -> None:
    bed = felix_bed
    a, b, c = _setup(bed, tmp_path)
    a_ok = bed.can_tcp(a.netns, b.ip, 8080)
    c_ok = bed.can_tcp(c.netns, b.ip, 8080)

    def step(source: dict[str, object], a_want: bool, label: str) -> None:
        _ingress(bed, {"action": "Allow", "source": source})
        bed.expect({f"{label}: a": (a_ok, a_want), f"{label}: c": (c_ok, not a_want)})

    step({"nets": ["10.65.0.1/32"]}, True, "nets one")
    step({"nets": ["10.65.0.1/32", "10.99.0.0/16"]}, True, "nets set")
    step({"notNets": ["10.65.0.1/32"]}, False, "notNets one")
    step({"notNets": ["10.65.0.1/32", "10.99.0.0/16"]}, False, "notNets set")
    step({"selector": "role == 'client'"}, True, "selector")
    step({"notSelector": "role == 'client'"}, False, "notSelector")
    # notNets of the other family only: the rule never matches IPv4 (it must not deny all).
    _ingress(bed, {"action": "Deny", "source": {"notNets": ["fd00:1::/64"]}}, ALLOW)
    bed.expect({"v6-only notNets deny: a": (a_ok, True), "v6-only notNets deny: c": (c_ok, True)})
    # A selector's ipset follows label changes of the endpoints it matches.
    _ingress(bed, {"action": "Allow", "source": {"selector": "role == 'client'"}})
    bed.expect({"before relabel: c": (c_ok, False)})
    c.labels = {"role": "client"}
    bed.put_workload(c)
    bed.expect({"after relabel: c": (c_ok, True), "after relabel: a": (a_ok, True)})


def test_source_destination_ingress_egress(felix_bed: FelixBed, tmp_path: Path) -> None:
    bed = felix_bed
    a, b, c = _setup(bed, tmp_path)
    bed.serve(c.netns, (8080,))
    a_b = bed.can_tcp(a.netns, b.ip, 8080)
    a_c = bed.can_tcp(a.netns, c.ip, 8080)
    c_b = bed.can_tcp(c.netns, b.ip, 8080)
    bed.expect({"a->b": (a_b, True), "a->c": (a_c, True), "c->b": (c_b, True)})

    # Egress policy on a, destination match: only a's outgoing traffic is restricted.
    bed.put(
        gnp(
            "egress-a",
            "role == 'client'",
            egress=[{"action": "Allow", "destination": {"nets": [f"{b.ip}/32"]}}],
        )
    )
    bed.expect(
        {"egress a->b": (a_b, True), "egress a->c": (a_c, False), "egress c->b": (c_b, True)}
    )
    # Destination selector instead of nets.
    bed.put(
        gnp(
            "egress-a",
            "role == 'client'",
            egress=[{"action": "Allow", "destination": {"selector": "role == 'other'"}}],
        )
    )
    bed.expect({"egress sel a->c": (a_c, True), "egress sel a->b": (a_b, False)})
    # A source match in an egress rule is about a itself.
    bed.put(
        gnp(
            "egress-a",
            "role == 'client'",
            egress=[{"action": "Allow", "source": {"nets": ["10.65.0.3/32"]}}],
        )
    )
    bed.expect({"egress src=c: a->b": (a_b, False), "egress src=c: a->c": (a_c, False)})
    bed.delete("GlobalNetworkPolicy", "egress-a")
    # Ingress policy on b with a destination match (b's own address): everything to b allowed,
    # while a destination that is not b denies.
    _ingress(bed, {"action": "Allow", "destination": {"nets": [f"{c.ip}/32"]}})
    bed.expect({"ingress dst=c: a->b": (a_b, False), "ingress dst=c: a->c": (a_c, True)})
    _ingress(bed, {"action": "Allow", "destination": {"nets": [f"{b.ip}/32"]}})
    bed.expect({"ingress dst=b: a->b": (a_b, True), "ingress dst=b: c->b": (c_b, True)})
