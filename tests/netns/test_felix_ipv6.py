"""Felix and IPv6: real IPv6 packets (ping and TCP) between dual-stack workloads.

Workloads ``a`` (role=client), ``b`` (role=server) and ``c`` (role=other) each have an IPv4 /32
and an IPv6 /128 in their WorkloadEndpoint, wired as tabby's CNI plugin does it (IPv6 default
route via the host end's link-local address fe80::ecee:eeff:feee:eeee). felix alone programs the
node side: the /128 routes, the IPv6 sysctls and the ip6tables rules. ``b`` and ``c`` listen on
TCP 8080 and 8081 on IPv4 and IPv6. Every step checks allowed and denied flows together, in both
IP families, so each check can fail either way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tests.support.felix import ALLOW, ALLOW_ALL, FelixBed, Workload, gnp, profile, wait_for
from tests.support.netns import ns_exec

A4, B4, C4 = "10.65.0.1", "10.65.0.2", "10.65.0.3"
A6, B6, C6 = "fd00:65::1", "fd00:65::2", "fd00:65::3"
PORTS = (8080, 8081)
Check = tuple[Callable[[], bool], bool]


def _setup(bed: FelixBed, tmp_path: Path) -> tuple[Workload, Workload, Workload]:
    bed.put(ALLOW_ALL)
    a = bed.add_workload("a", A4, {"role": "client"}, profiles=("allow-all",), ip6=A6)
    b = bed.add_workload("b", B4, {"role": "server"}, profiles=("allow-all",), ip6=B6)
    c = bed.add_workload("c", C4, {"role": "other"}, profiles=("allow-all",), ip6=C6)
    bed.serve(b.netns, PORTS, ipv6=True)
    bed.serve(c.netns, PORTS, ipv6=True)
    bed.start_felix(tmp_path)
    bed.wait_ready()
    return a, b, c


def _flows(bed: FelixBed, src: Workload, dst: Workload, tag: str) -> dict[str, Callable[[], bool]]:
    """Ping and TCP 8080/8081 from ``src`` to ``dst``, over IPv4 and IPv6."""
    assert dst.ip6 is not None
    out: dict[str, Callable[[], bool]] = {}
    for fam, ip in (("4", dst.ip), ("6", dst.ip6)):
        out[f"{tag} ping{fam}"] = bed.can_ping(src.netns, ip)
        for port in PORTS:
            out[f"{tag} tcp{fam}:{port}"] = bed.can_tcp(src.netns, ip, port)
    return out


def _want(flows: Mapping[str, Callable[[], bool]], label: str, **wanted: bool) -> dict[str, Check]:
    """``wanted`` keys: ``ping4``, ``tcp6_8080``, ...; every flow named must be listed."""
    out: dict[str, Check] = {}
    for name, fn in flows.items():
        tag, kind = name.split(" ")
        key = kind.replace(":", "_")
        out[f"{label}: {tag} {kind}"] = (fn, wanted[key])
    return out


def _all(flows: Mapping[str, Callable[[], bool]], label: str, want: bool) -> dict[str, Check]:
    return {f"{label}: {name}": (fn, want) for name, fn in flows.items()}


def _family(
    flows: Mapping[str, Callable[[], bool]], label: str, *, v4: bool, v6: bool
) -> dict[str, Check]:
    """Every IPv4 flow should give ``v4``, every IPv6 flow ``v6``."""
    return {
        f"{label}: {name}": (fn, v6 if ("ping6" in name or "tcp6" in name) else v4)
        for name, fn in flows.items()
    }


def _felix_routes6(bed: FelixBed) -> dict[str, dict[str, Any]]:
    return {r["dst"]: r for r in bed.routes6() if str(r.get("protocol")) == "80"}


def _sysctl(bed: FelixBed, path: str) -> str:
    return ns_exec(bed.node, ["cat", f"/proc/sys/{path}"]).strip()


def test_ipv6_between_workloads_follows_the_profile(felix_bed: FelixBed, tmp_path: Path) -> None:
    bed = felix_bed
    a, b, c = _setup(bed, tmp_path)
    flows = {**_flows(bed, a, b, "a->b"), **_flows(bed, b, c, "b->c")}
    # The host end's link-local address (the workloads' IPv6 gateway) passes DAD first: allow
    # a little more time for the first convergence.
    bed.expect(_all(flows, "allow-all", True), timeout=20)
    # Real IPv6 end to end: the server sees the client's own IPv6 address (no NAT, no IPv4).
    assert bed.connect(a.netns, B6, 8080) == A6
    assert bed.connect(a.netns, B4, 8080) == A4

    # What felix programmed for IPv6 on the node side.
    routes = _felix_routes6(bed)
    for wl in (a, b, c):
        r = routes.get(f"{wl.ip6}")
        assert r is not None and r["dev"] == wl.iface, bed.routes6()
        for key, want in (("proxy_ndp", "1"), ("forwarding", "1"), ("accept_ra", "0")):
            assert _sysctl(bed, f"net/ipv6/conf/{wl.iface}/{key}") == want, (wl.iface, key)
    assert _sysctl(bed, "net/ipv6/conf/all/forwarding") == "1"
    assert f"-A tby-tw-{b.iface}" in bed.ip6tables_save()

    # The same profile, now allowing IPv4 only: IPv6 between the same workloads stops, IPv4 not.
    v4_only = [{"action": "Allow", "ipVersion": 4}]
    bed.put(profile("allow-all", v4_only, v4_only))
    bed.expect(_family(flows, "v4-only profile", v4=True, v6=False))
    # And IPv6 only: the other way round.
    v6_only = [{"action": "Allow", "ipVersion": 6}]
    bed.put(profile("allow-all", v6_only, v6_only))
    bed.expect(_family(flows, "v6-only profile", v4=False, v6=True))
    bed.put(ALLOW_ALL)
    bed.expect(_all(flows, "allow-all again", True))


def test_ipv6_policy_is_enforced_per_family(felix_bed: FelixBed, tmp_path: Path) -> None:
    bed = felix_bed
    a, b, c = _setup(bed, tmp_path)
    ab, cb, ac = _flows(bed, a, b, "a->b"), _flows(bed, c, b, "c->b"), _flows(bed, a, c, "a->c")
    bed.expect({**_all(ab, "profile only", True), **_all(cb, "profile only", True)}, timeout=20)

    def ingress(*rules: Mapping[str, object]) -> None:
        bed.put(gnp("server-in", "role == 'server'", ingress=list(rules)))

    # Only TCP 8080 over IPv6, only TCP 8081 over IPv4: each family follows its own rule.
    ingress(
        {"action": "Allow", "ipVersion": 6, "protocol": "TCP", "destination": {"ports": [8080]}},
        {"action": "Allow", "ipVersion": 4, "protocol": "TCP", "destination": {"ports": [8081]}},
    )
    bed.expect(
        _want(
            ab,
            "v6 tcp 8080, v4 tcp 8081",
            ping4=False,
            tcp4_8080=False,
            tcp4_8081=True,
            ping6=False,
            tcp6_8080=True,
            tcp6_8081=False,
        )
    )

    # Default deny: a policy applies to b, and nothing in it allows IPv6.
    ingress({"action": "Allow", "ipVersion": 4})
    bed.expect(_family(ab, "v4 allowed only", v4=True, v6=False))

    # A Deny of ICMPv6 only: IPv6 TCP and all of IPv4 still pass.
    ingress({"action": "Deny", "protocol": "ICMPv6"}, ALLOW)
    bed.expect(
        _want(
            ab,
            "deny icmpv6",
            ping4=True,
            tcp4_8080=True,
            tcp4_8081=True,
            ping6=False,
            tcp6_8080=True,
            tcp6_8081=True,
        )
    )

    # IPv6 source nets: one address (a), then several (an ipset); c is refused over IPv6 only.
    for nets in ([f"{A6}/128"], [f"{A6}/128", "fd00:99::/64"]):
        ingress(
            {"action": "Allow", "ipVersion": 6, "source": {"nets": nets}},
            {"action": "Allow", "ipVersion": 4},
        )
        label = f"v6 nets {nets}"
        bed.expect({**_all(ab, label, True), **_family(cb, label, v4=True, v6=False)})

    # A selector (an ipset per family, its members the endpoints' addresses of that family).
    ingress({"action": "Allow", "source": {"selector": "role == 'client'"}})
    bed.expect({**_all(ab, "selector", True), **_all(cb, "selector", False)})
    c.labels = {"role": "client"}
    bed.put_workload(c)
    bed.expect({**_all(ab, "c relabelled", True), **_all(cb, "c relabelled", True)})

    # Egress policy on a only: IPv6 to b denied; IPv4 to b and IPv6 to c still allowed.
    bed.delete("GlobalNetworkPolicy", "server-in")
    c.labels = {"role": "other"}
    bed.put_workload(c)
    bed.put(
        gnp(
            "client-out",
            "role == 'client'",
            egress=[
                {"action": "Deny", "ipVersion": 6, "destination": {"nets": [f"{B6}/128"]}},
                ALLOW,
            ],
        )
    )
    label = "egress deny v6 to b"
    bed.expect(
        {
            **_family(ab, label, v4=True, v6=False),
            **_all(ac, label, True),
            **_all(cb, label, True),
        }
    )


def test_deleting_the_endpoint_removes_its_ipv6_route(felix_bed: FelixBed, tmp_path: Path) -> None:
    bed = felix_bed
    a, b, _ = _setup(bed, tmp_path)
    ping6, tcp6 = bed.can_ping(a.netns, B6), bed.can_tcp(a.netns, B6, 8080)
    ping4 = bed.can_ping(a.netns, B4)
    bed.expect({"ping6": (ping6, True), "tcp6": (tcp6, True), "ping4": (ping4, True)}, timeout=20)
    assert {A6, B6, C6} <= set(_felix_routes6(bed)), bed.routes6()

    # The endpoint goes (its interface stays, as when the WorkloadEndpoint is deleted first):
    # its IPv4 and IPv6 routes go, and its interface is fail-closed in both families.
    bed.delete_workload(b)
    assert wait_for(lambda: B6 not in _felix_routes6(bed), 10), bed.routes6()
    assert all(r.get("dst") != B6 for r in bed.routes6()), bed.routes6()
    assert {A6, C6} <= set(_felix_routes6(bed)), bed.routes6()
    assert wait_for(lambda: all(r.get("dst") != B4 for r in bed.routes()), 10), bed.routes()
    assert f"tby-tw-{b.iface}" not in bed.ip6tables_save()
    bed.expect({"deleted: ping6": (ping6, False), "deleted: tcp6": (tcp6, False)})

    # Back again: route and traffic return.
    bed.put_workload(b)
    assert wait_for(lambda: B6 in _felix_routes6(bed), 10), bed.routes6()
    bed.expect({"re-added: ping6": (ping6, True), "re-added: tcp6": (tcp6, True)})

    # The endpoint loses only its IPv6 address: its IPv6 route goes and IPv6 is dropped (the
    # address is still configured inside the workload), IPv4 goes on working.
    b.ip6 = None
    bed.put_workload(b)
    assert wait_for(lambda: B6 not in _felix_routes6(bed), 10), bed.routes6()
    bed.expect(
        {
            "v4 only: ping6": (ping6, False),
            "v4 only: tcp6": (tcp6, False),
            "v4 only: ping4": (ping4, True),
        }
    )
    assert B4 in {r["dst"] for r in bed.routes()}
