"""Top-of-rack routers for the lab: one FRR router per rack, eBGP to its nodes and the other ToRs.

Role: ``tabby-lab up --subnets K --tor frr`` builds Calico's "AS per compute server" design
(Calico over IP fabrics): every rack k gets a router ``tor<k>`` (namespace ``<prefix>tor<k>``)
that is the rack's gateway (the ``.1`` of its /26, which the shared lab router holds otherwise),
with its own AS ``65000 + k``; every node i has its own AS ``65100 + i``
(``Node.spec.bgp.asNumber``); the node-to-node mesh is off and one BGPPeer per rack
(``rack-r<k>``: ``nodeSelector: rack == 'r<k>'``, ``peerIP`` the ToR, ``asNumber`` its AS)
makes each node peer with its own ToR only. The ToRs are joined by a transit network (the last
/26 of 203.0.113.0/24, bridge ``brt`` in the fabric namespace) and peer eBGP with each other, so
pod routes travel node -> ToR -> ToR -> node, and pod traffic crosses two routers unencapsulated.

  rack k:  nodes --- br<k> --- tor<k> eth0 (198.51.100.x.1/26, AS 65000+k)
                                tor<k> eth1 (203.0.113.193+k/26) --- brt --- other ToRs

Underlay reachability between racks (node addresses) is static on the ToRs (a route per other
rack via that rack's ToR), as an IGP would provide; BGP carries pod routes only, so a ToR's BGP
table holds exactly the blocks the nodes announce. Each ToR sends its nodes a default route
(``default-originate``); the lab's static default on the nodes (via the same ToR) stays, and
tabby-bgp never replaces it (routes of another protocol are never touched).

FRR per ToR: ``zebra`` + ``bgpd`` started like ``tabby-lab peer add --kind frr`` (``lab.peers``),
recorded in ``peers.json`` with ``role: "tor"``: ``peer cli tor0 show bgp summary``,
``exec tor0 -- ...`` and ``down`` work as for peers.
Inputs: the ``Topology``. Outputs: ``PeerPlan``s, bgpd configuration text, datastore resources,
and (``build``) namespaces, links and daemons.
Invariants: everything is inside namespaces this module creates; each ToR is recorded in
``peers.json`` before anything of it exists, so ``tabby-lab down`` always removes it; daemons are
stopped by recorded PID (``lab.peers``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from ipaddress import IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

from kernel.links import add_address, create_veth, set_link_up
from lab import fabric, peers
from lab.peers import PeerPlan
from lab.topology import UNDERLAYS, Topology

log = logging.getLogger(__name__)

TOR_AS_BASE = 65000
NODE_AS_BASE = 65100
TRANSIT = list(UNDERLAYS[1].subnets(new_prefix=26))[-1]  # 203.0.113.192/26
TRANSIT_BRIDGE = "brt"
# BGPPeer timers towards the ToRs (short, so that a lost session shows within seconds)
HOLD_TIME = "30s"
KEEPALIVE_TIME = "10s"
MAX_RESTART_TIME = "60s"


def tor_as(rack: int) -> int:
    return TOR_AS_BASE + rack


def node_as(topo: Topology, node: str) -> int:
    """AS of node ``node<i>``: ``65100 + i``."""
    index = [n.name for n in topo.nodes].index(node) + 1
    return NODE_AS_BASE + index


def transit_address(rack: int) -> IPv4Interface:
    return IPv4Interface(f"{TRANSIT.network_address + 1 + rack}/{TRANSIT.prefixlen}")


def plan_tors(topo: Topology, state: Path) -> list[PeerPlan]:
    """One ``PeerPlan`` (role "tor") per rack; empty unless ``topo.spec.tor``."""
    if not topo.spec.tor:
        return []
    return [
        PeerPlan(
            name=f"tor{sn.index}",
            kind="frr",
            netns=f"{topo.ns_prefix}tor{sn.index}",
            address=sn.router_address,
            gateway="",
            fabric_port=f"t{sn.index}",
            originate="",
            target="",
            as_number=tor_as(sn.index),
            state_dir=str(state / "peers" / f"tor{sn.index}"),
            role="tor",
            transit=str(transit_address(sn.index)),
        )
        for sn in topo.subnets
    ]


def bgpd_config(topo: Topology, tor: PeerPlan, others: list[PeerPlan]) -> str:
    """FRR bgpd configuration of ``tor``: eBGP to its rack's nodes and to the ``others``."""
    rack = int(tor.name.removeprefix("tor"))
    neighbours: list[tuple[str, int, bool]] = [
        (n.address.split("/")[0], node_as(topo, n.name), True)
        for n in topo.nodes
        if n.subnet == rack
    ]
    neighbours += [(o.transit.split("/")[0], o.as_number, False) for o in others]
    lines = [
        "frr defaults traditional",
        f"hostname {tor.name}",
        "!",
        f"router bgp {tor.as_number}",
        f" bgp router-id {tor.ip}",
        " no bgp ebgp-requires-policy",
        " bgp bestpath as-path multipath-relax",
    ]
    for address, asn, _node in neighbours:
        lines += [f" neighbor {address} remote-as {asn}", f" neighbor {address} timers connect 1"]
    lines += [" !", " address-family ipv4 unicast"]
    for address, _asn, node in neighbours:
        lines.append(f"  neighbor {address} activate")
        if node:
            lines.append(f"  neighbor {address} default-originate")
    lines += [" exit-address-family", "!"]
    return "\n".join(lines) + "\n"


def resources(topo: Topology, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The lab's resources for ToR mode: mesh off, an AS per node, a BGPPeer per rack."""
    if not topo.spec.tor:
        return docs
    out: list[dict[str, Any]] = []
    for doc in docs:
        spec = doc["spec"]
        if doc["kind"] == "BGPConfiguration" and doc["metadata"]["name"] == "default":
            spec = {**spec, "nodeToNodeMeshEnabled": False}
        elif doc["kind"] == "Node":
            spec = {
                **spec,
                "bgp": {**spec["bgp"], "asNumber": node_as(topo, doc["metadata"]["name"])},
            }
        out.append({**doc, "spec": spec})
    for sn in topo.subnets:
        out.append(
            {
                "apiVersion": "projectcalico.org/v3",
                "kind": "BGPPeer",
                "metadata": {"name": f"rack-r{sn.index}"},
                "spec": {
                    "nodeSelector": f"rack == 'r{sn.index}'",
                    "peerIP": sn.router_address.split("/")[0],
                    "asNumber": tor_as(sn.index),
                    "holdTime": HOLD_TIME,
                    "keepaliveTime": KEEPALIVE_TIME,
                    "maxRestartTime": MAX_RESTART_TIME,
                },
            }
        )
    return out


def _wire(topo: Topology, tor: PeerPlan, all_tors: list[PeerPlan]) -> None:
    rack = int(tor.name.removeprefix("tor"))
    fabric.add_netns(tor.netns)
    fabric.ns_run(tor.netns, ["sysctl", "-qw", "net.ipv4.ip_forward=1"], f"{tor.name} forwarding")
    links = [
        ("eth0", tor.fabric_port, topo.subnets[rack].bridge, tor.address),
        ("eth1", f"x{rack}", TRANSIT_BRIDGE, tor.transit),
    ]
    for ifname, port, bridge, address in links:
        create_veth(tor.netns, ifname, topo.fabric_netns, port)
        fabric.ns_run(
            topo.fabric_netns, ["ip", "link", "set", port, "master", bridge], f"attach {port}"
        )
        set_link_up(topo.fabric_netns, port)
        add_address(tor.netns, ifname, IPv4Interface(address))
        set_link_up(tor.netns, ifname)
    for other in all_tors:
        if other.name == tor.name:
            continue
        cidr = IPv4Network(IPv4Interface(other.address).network)
        fabric.ns_run(
            tor.netns,
            ["ip", "route", "replace", str(cidr), "via", other.transit.split("/")[0]],
            f"{tor.name}: route to rack {other.name}",
        )


def build(topo: Topology, state: Path, progress: Callable[[str], None] = lambda s: None) -> None:
    """Create the transit bridge, every ToR namespace and link, and start FRR in each."""
    tors = plan_tors(topo, state)
    if not tors:
        return
    progress(f"{len(tors)} FRR top-of-rack routers (eBGP, AS {tor_as(0)}..)")
    fabric.ns_run(
        topo.fabric_netns,
        ["ip", "link", "add", TRANSIT_BRIDGE, "type", "bridge"],
        f"bridge {TRANSIT_BRIDGE}",
    )
    set_link_up(topo.fabric_netns, TRANSIT_BRIDGE)
    recorded = peers.load(state)
    for tor in tors:
        Path(tor.state_dir).mkdir(parents=True, exist_ok=True)
    peers.save(state, [*recorded, *tors])  # recorded first: `down` always finds them
    started: list[PeerPlan] = []
    for tor in tors:
        _wire(topo, tor, tors)
        others = [o for o in tors if o.name != tor.name]
        pids = peers.start_frr(tor, bgpd_config(topo, tor, others))
        started.append(tor.with_pids(pids))
        peers.save(state, [*recorded, *started, *tors[len(started) :]])
        log.info("tor.started tor=%s as=%d pids=%s", tor.name, tor.as_number, pids)
