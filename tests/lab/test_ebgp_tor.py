"""eBGP to top-of-rack routers: ``tabby-lab up --subnets 2 --tor frr`` (see lab/tor.py).

Two racks of two nodes; each rack's gateway is an FRR router (AS 65000 + rack), each node has its
own AS (65100 + i, ``Node.spec.bgp.asNumber``), the node-to-node mesh is off and one BGPPeer per
rack (``nodeSelector: rack == 'r<k>'``) points the rack's nodes at their ToR; ipipMode Never.
Proves:
- sessions: each node peers with its own ToR only, eBGP, with the BGPPeer's hold time,
  keepalive and graceful-restart time as FRR sees them;
- export: the ToRs' BGP tables hold exactly the nodes' blocks (10.65.x/26): no node address,
  no host route, no default;
- import: nodes install the other rack's blocks via their ToR and the default route the ToR
  originates, but only where no other protocol's default is present: tabby never replaces a
  route it does not own (the lab's static default stays; removed, ours goes in; replaced by an
  administrator again, ours is not put back);
- data path: pods in different racks reach each other through both routers (TTL), and the
  transit link carries plain ICMP between pod addresses (no encapsulation);
- TCP-MD5: with a BGPPeer ``password.secretKeyRef`` resolved from the lab's secrets directory
  the session comes up against FRR with the same password, and stays down with none or a wrong
  one (and when the secret is missing the peer is left out).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from functools import partial
from ipaddress import IPv4Network
from typing import Any

import pytest

from tests.lab.labdriver import Background, Lab, wait_for

pytestmark = [pytest.mark.lab, pytest.mark.slow]

POOL = IPv4Network("10.65.0.0/16")


def _bgp_prefixes(lab: Lab, tor: str) -> dict[str, list[dict[str, Any]]]:
    routes: dict[str, list[dict[str, Any]]] = lab.frr_json(tor, "show bgp ipv4 unicast").get(
        "routes", {}
    )
    return routes


def _best_next_hops(lab: Lab, tor: str) -> dict[str, str]:
    out = {}
    for prefix, paths in _bgp_prefixes(lab, tor).items():
        for p in paths:
            if p.get("bestpath"):
                out[prefix] = p["nexthops"][0]["ip"]
    return out


def _best_next_hops_are(lab: Lab, tor: str, want: dict[str, str]) -> bool:
    return _best_next_hops(lab, tor) == want


def _defaults(lab: Lab, node: str) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads(
        lab.exec(node, "ip", "-j", "route", "show", "default").stdout
    )
    return data


def _ping_ttl(lab: Lab, src: str, dst_ip: str) -> int:
    res = lab.exec(src, "ping", "-c", "2", "-i", "0.2", "-W", "1", dst_ip, check=False)
    assert res.returncode == 0, f"{src} -> {dst_ip}:\n{res.stdout}"
    ttls = {int(w.split("=")[1]) for w in res.stdout.split() if w.startswith("ttl=")}
    assert len(ttls) == 1, res.stdout
    return ttls.pop()


def test_ebgp_to_tor_routers(
    make_lab: Callable[[str], Lab], routing_daemons: None, background: Background
) -> None:
    lab = make_lab("tor")
    lab.up(4, 1, "--subnets", "2", "--tor", "frr")
    topo = lab.topology
    rack = {n.name: n.subnet for n in topo.nodes}
    tor_ip = {k: sn.router_address.split("/")[0] for k, sn in enumerate(topo.subnets)}
    tor_transit = {k: lab.peer(f"tor{k}")["transit"].split("/")[0] for k in tor_ip}

    # -- sessions: one per node, to its own ToR, eBGP with the BGPPeer's timers
    cfg = json.loads(lab.tabbyctl("get", "bgpconfiguration", "default", "-o", "json"))
    assert cfg["spec"]["nodeToNodeMeshEnabled"] is False
    took = lab.wait_mesh(lab.nodes, expected_peers=1, timeout=60)
    print(f"\nevery node established with its ToR after {took:.1f}s")
    for i, n in enumerate(lab.nodes, start=1):
        (peer,) = lab.peers_of(n).values()
        k = rack[n]
        assert (peer["peer"], peer["asn"], peer["type"]) == (tor_ip[k], 65000 + k, "node")
        info = lab.frr_json(f"tor{k}", f"show bgp neighbors {lab.node_ip(n)}")[lab.node_ip(n)]
        assert info["bgpState"] == "Established" and info["remoteAs"] == 65100 + i
        assert info["nbrExternalLink"] is True
        assert info["bgpTimerHoldTimeMsecs"] == 30_000  # BGPPeer holdTime 30s (FRR's: 180)
        assert info["bgpTimerKeepAliveIntervalMsecs"] == 10_000
        assert info["gracefulRestartInfo"]["timers"]["receivedRestartTimer"] == 60

    # -- export: each ToR holds exactly the four blocks; own rack's from the nodes themselves
    blocks = {lab.block_of(n): n for n in lab.nodes}
    for k in tor_ip:
        want = {
            b: lab.node_ip(n) if rack[n] == k else tor_transit[1 - k] for b, n in blocks.items()
        }
        wait_for(partial(_best_next_hops_are, lab, f"tor{k}", want), 30, f"tor{k}'s table")
        prefixes = set(_bgp_prefixes(lab, f"tor{k}"))
        assert prefixes == set(blocks), prefixes  # no default, no 198.51.100.x, no /32
        assert all(IPv4Network(p).subnet_of(POOL) and p.endswith("/26") for p in prefixes)

    # -- import: other rack's blocks via our ToR, own rack's directly; FRR's default not over
    #    the lab's static one
    for n in lab.nodes:
        k = rack[n]
        want = {
            b: (lab.node_ip(o) if rack[o] == k else tor_ip[k]) for b, o in blocks.items() if o != n
        }

        def learned(n: str = n, want: dict[str, str] = want) -> bool:
            got = lab.bgp_routes(n)
            return all(got.get(b) == gw for b, gw in want.items())

        wait_for(learned, 30, f"{n} to install the other blocks")
        (default,) = _defaults(lab, n)
        assert str(default.get("protocol")) != "81" and default["gateway"] == tor_ip[k]

    # -- data path: across racks through both ToRs (TTL), plain ICMP on the transit link
    ips = lab.workload_ips()
    wl = {n: lab.workload_of(n) for n in lab.nodes}
    assert _ping_ttl(lab, wl["node1"], ips[wl["node2"]]) == 62  # same rack: node2, node1
    assert _ping_ttl(lab, wl["node1"], ips[wl["node3"]]) == 60  # + tor1 and tor0
    cap = background.start(
        lab.peer("tor0")["netns"],
        ["tcpdump", "-l", "-n", "-i", "eth1", "-c", "4", "icmp or ip proto 4"],
        "tcpdump-tor0",
    )
    wait_for(
        lambda: "listening on" in (background.workdir / "tcpdump-tor0.out").read_text(),
        10,
        "tcpdump to listen",
    )
    _ping_ttl(lab, wl["node1"], ips[wl["node3"]])
    dump = background.stop(cap)
    src, dst = ips[wl["node1"]], ips[wl["node3"]]
    icmp = [ln for ln in dump.splitlines() if "ICMP echo" in ln]
    assert any(f"{src} > {dst}: ICMP echo request" in ln for ln in icmp), dump
    assert any(f"{dst} > {src}: ICMP echo reply" in ln for ln in icmp), dump
    assert "IPIP" not in dump and "ip-proto-4" not in dump, dump

    # -- the ToR's default: installed only once the static default is gone, then used
    lab.exec("node1", "ip", "route", "del", "default")

    def bgp_default() -> bool:
        return [(str(d.get("protocol")), d.get("gateway")) for d in _defaults(lab, "node1")] == [
            ("81", tor_ip[0])
        ]

    _, took = wait_for(bgp_default, 20, "node1 to install the ToR's default (proto 81)")
    print(f"BGP default installed {took:.1f}s after the static one was removed")
    assert _ping_ttl(lab, "node1", lab.node_ip("node3")) == 62  # only via the default
    assert not [d for d in _defaults(lab, "node2") if str(d.get("protocol")) == "81"]
    # an administrator takes the default back: tabby does not fight over it
    lab.exec("node1", "ip", "route", "replace", "default", "via", tor_ip[0], "proto", "static")
    time.sleep(7)  # longer than the agent's re-check of conflicting destinations (5 s)
    assert [str(d.get("protocol")) for d in _defaults(lab, "node1")] == ["static"]

    assert lab.check().exit_code == 0


def _tor_state(lab: Lab, node_ip: str) -> str:
    info = lab.frr_json("tor0", f"show bgp neighbors {node_ip}").get(node_ip, {})
    return str(info.get("bgpState", "absent"))


def _established(lab: Lab, node: str) -> bool:
    peers = list(lab.peers_of(node).values())
    return len(peers) == 1 and peers[0]["state"] == "established"


def _stays_down(lab: Lab, node: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert not _established(lab, node), f"{node} established with a wrong/no MD5 key"
        assert _tor_state(lab, lab.node_ip(node)) != "Established"
        time.sleep(0.5)


def test_md5_password_against_frr(make_lab: Callable[[str], Lab], routing_daemons: None) -> None:
    lab = make_lab("md")
    lab.up(1, 0, "--tor", "frr")
    node, ip = "node1", lab.node_ip("node1")
    lab.wait_mesh([node], expected_peers=1, timeout=60)

    # FRR requires the key, tabby has none: the session goes and does not come back
    lab.vtysh("tor0", "configure terminal", "router bgp 65000", f"neighbor {ip} password s3cret-1")
    wait_for(lambda: not _established(lab, node), 30, "the session to drop")
    _stays_down(lab, node, 6)

    # the BGPPeer gets a password from a secret: the session comes up, signed
    lab.secret_set("tor-r0", "password", "s3cret-1")
    peer = json.loads(lab.tabbyctl("get", "bgppeer", "rack-r0", "-o", "json"))
    peer["spec"]["password"] = {"secretKeyRef": {"name": "tor-r0", "key": "password"}}
    for k in ("uid", "resourceVersion", "creationTimestamp"):
        peer["metadata"].pop(k, None)
    lab.tabbyctl("apply", "-f", "-", input_text=json.dumps(peer))
    _, took = wait_for(lambda: _established(lab, node), 60, "the MD5 session")
    assert _tor_state(lab, ip) == "Established"
    print(f"\nMD5 session up {took:.1f}s after the BGPPeer got its password")

    # a wrong key (the secret rotated on one side only): no session
    lab.secret_set("tor-r0", "password", "wrong-key")
    wait_for(lambda: not _established(lab, node), 30, "the session to drop")
    _stays_down(lab, node, 8)

    # the right key again: back up
    lab.secret_set("tor-r0", "password", "s3cret-1\n")  # one trailing newline is not part of it
    wait_for(lambda: _established(lab, node), 60, "the MD5 session to come back")

    # the secret is gone: the peer is left out (fail closed), never peered without a key
    lab.secret_del("tor-r0", "password")
    wait_for(lambda: lab.peers_of(node) == {}, 30, "the peer to be left out")
    assert _tor_state(lab, ip) != "Established"
