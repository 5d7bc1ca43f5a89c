"""Tiers, policy order, Pass, end-of-tier drop, tier defaultAction and profiles, on real packets.

Workload ``a`` (client) pings and connects to ``b`` (server, TCP 8080). Policies select ``b``'s
ingress; ``a``'s egress is allowed by its profile.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.support.felix import ALLOW, ALLOW_ALL, API, DENY, FelixBed, gnp, profile

SERVER = "role == 'server'"


def tier(name: str, order: float, default_action: str = "") -> dict[str, Any]:
    spec: dict[str, Any] = {"order": order}
    if default_action:
        spec["defaultAction"] = default_action
    return {"apiVersion": API, "kind": "Tier", "metadata": {"name": name}, "spec": spec}


def tiered(tier_name: str, name: str, order: float, *rules: dict[str, Any]) -> dict[str, Any]:
    return gnp(f"{tier_name}.{name}", SERVER, tier=tier_name, order=order, ingress=list(rules))


def test_tier_order_policy_order_pass_and_end_of_tier_drop(
    felix_bed: FelixBed, tmp_path: Path
) -> None:
    bed = felix_bed
    bed.put(ALLOW_ALL)
    a = bed.add_workload("a", "10.65.0.1", {"role": "client"}, profiles=("allow-all",))
    b = bed.add_workload("b", "10.65.0.2", {"role": "server"}, profiles=("allow-all",))
    bed.serve(b.netns, (8080,))
    bed.put(tier("t1", 100))
    bed.put(tier("t2", 200))
    bed.start_felix(tmp_path)
    bed.wait_ready()
    ping = bed.can_ping(a.netns, b.ip)
    tcp = bed.can_tcp(a.netns, b.ip, 8080)
    bed.expect({"no policy: ping": (ping, True), "no policy: tcp": (tcp, True)})

    deny_icmp = {"action": "Deny", "protocol": "ICMP"}
    bed.put(tiered("t1", "deny-ping", 10, deny_icmp))
    bed.put(tiered("t2", "allow", 10, ALLOW))
    # t1 denies ICMP; TCP matches nothing in t1 -> end-of-tier drop (t2 and profile never seen).
    bed.expect({"end of tier: ping": (ping, False), "end of tier: tcp": (tcp, False)})

    bed.put(tiered("t1", "pass", 20, {"action": "Pass"}))
    # Pass (after the ICMP deny) sends TCP on to t2, which allows it.
    bed.expect({"pass: tcp": (tcp, True), "pass: ping": (ping, False)})

    bed.put(tiered("t1", "pass", 5, {"action": "Pass"}))
    # Policy order inside the tier: the Pass now comes before the deny.
    bed.expect({"pass first: ping": (ping, True), "pass first: tcp": (tcp, True)})

    bed.put(tiered("t1", "pass", 20, {"action": "Pass"}))
    bed.expect({"pass second again: ping": (ping, False)})
    bed.put(tier("t2", 50))
    # Tier order: t2 (allow all) is now evaluated before t1.
    bed.expect({"t2 first: ping": (ping, True), "t2 first: tcp": (tcp, True)})
    bed.put(tiered("t2", "allow", 10, {"action": "Pass"}))
    # t2 passes everything to t1 again, where ICMP is denied and TCP passed on to profiles.
    bed.expect({"t2 pass: ping": (ping, False), "t2 pass: tcp": (tcp, True)})

    # Tier defaultAction Pass: what t1 does not decide (TCP, once its Pass policy is gone)
    # goes on to the profiles instead of the end-of-tier drop; its explicit Deny still holds.
    bed.put(tiered("t2", "allow", 10, ALLOW))
    bed.put(tier("t2", 200))
    bed.delete("GlobalNetworkPolicy", "t1.pass")
    bed.expect({"t1 deny-all: tcp": (tcp, False), "t1 deny-all: ping": (ping, False)})
    bed.put(tier("t1", 100, "Pass"))
    bed.expect({"t1 Pass: tcp (to t2)": (tcp, True), "t1 Pass: ping (denied)": (ping, False)})
    bed.put(tier("t1", 100, "Deny"))
    bed.expect({"t1 Deny again: tcp": (tcp, False)})
    bed.put(tier("t1", 100))  # back to the state before this block
    bed.put(tiered("t1", "pass", 20, {"action": "Pass"}))
    bed.put(tiered("t2", "allow", 10, {"action": "Pass"}))
    bed.put(tier("t2", 50))

    # Profiles come after the tiers: without an allowing profile, passed traffic is dropped.
    bed.put(profile("allow-all", [], [ALLOW]))
    bed.expect({"no profile allow: tcp": (tcp, False)})
    bed.put(profile("allow-all", [{"action": "Allow", "protocol": "TCP"}], [ALLOW]))
    bed.expect({"profile tcp: tcp": (tcp, True), "profile tcp: ping": (ping, False)})


def test_profiles_and_nothing_accepted(felix_bed: FelixBed, tmp_path: Path) -> None:
    bed = felix_bed
    bed.put(ALLOW_ALL)
    bed.put(profile("deny-all", [DENY], [DENY]))
    bed.put(profile("tcp-only", [{"action": "Allow", "protocol": "TCP"}], []))
    a = bed.add_workload("a", "10.65.0.1", {"role": "client"}, profiles=("allow-all",))
    b = bed.add_workload("b", "10.65.0.2", {"role": "server"}, profiles=("allow-all",))
    d = bed.add_workload("d", "10.65.0.4", {"role": "server"}, profiles=())
    bed.serve(b.netns, (8080,))
    bed.serve(d.netns, (8080,))
    bed.start_felix(tmp_path)
    bed.wait_ready()
    ping_b = bed.can_ping(a.netns, b.ip)
    tcp_b = bed.can_tcp(a.netns, b.ip, 8080)
    # d: no profile and no policy -> nothing accepts -> dropped (both ways).
    bed.expect(
        {
            "a->b": (ping_b, True),
            "a->d (no profile)": (bed.can_ping(a.netns, d.ip), False),
            "d->a (no profile)": (bed.can_ping(d.netns, a.ip), False),
        }
    )
    # A policy that only Passes in the last tier leads to the profiles.
    bed.put(gnp("pass", SERVER, ingress=[{"action": "Pass"}]))
    bed.expect(
        {
            "pass->profile: b": (ping_b, True),
            "pass->no profile: d": (bed.can_tcp(a.netns, d.ip, 8080), False),
        }
    )
    # Profiles in order: the first that decides wins.
    b.profiles = ("tcp-only", "deny-all")
    bed.put_workload(b)
    bed.expect({"tcp-only first: tcp": (tcp_b, True), "tcp-only first: ping": (ping_b, False)})
    b.profiles = ("deny-all", "tcp-only")
    bed.put_workload(b)
    bed.expect({"deny-all first: tcp": (tcp_b, False)})
    # A policy that allows: profiles are not consulted.
    bed.put(gnp("pass", SERVER, ingress=[ALLOW]))
    bed.expect({"policy allow: tcp": (tcp_b, True), "policy allow: ping": (ping_b, True)})
