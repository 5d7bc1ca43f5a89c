"""Who this node peers with: node-to-node mesh, global peers, node-specific peers.

Role: the pure peer calculation of ``tabby-bgp``. ``desired_peers`` turns the datastore view
(nodes, effective BGP configuration, BGPPeers, node labels) into the sorted tuple of
``PeerSpec`` sessions that the ExaBGP configuration is rendered from.

Inputs: this node's name; every ``NodeInfo``; the merged ``BGPConfig`` of this node; every
``BGPPeerInfo``; every node's labels (for ``nodeSelector`` / ``peerSelector``).
Outputs: ``tuple[PeerSpec, ...]`` sorted by (address, port); empty when this node has no BGP
IPv4 address.

Rules (Calico's, as its confd templates apply them):
- Mesh (``nodeToNodeMeshEnabled``): every other node with a BGP IPv4 address; remote AS is that
  node's ``asNumber`` or the cluster AS; port is that node's listen port or the cluster's.
  A route reflector (a node with ``routeReflectorClusterID``) is not in the mesh: it has no mesh
  sessions, and no node has a mesh session to it (Calico's confd does the same).
- BGPPeer scope: no ``node`` and no ``nodeSelector`` = every node ("global"); ``node: me`` or a
  ``nodeSelector`` matching my labels = this node ("node").
- BGPPeer target: ``peerIP`` (port from ``peerIP``, default 179; AS from ``asNumber``), or
  ``peerSelector``: every other node whose labels match, at its BGP address and AS.
- Reverse peerings (Calico keeps peerings between nodes symmetric): a node that a BGPPeer
  *targets* (it matches ``peerSelector``, or its address and AS are ``peerIP`` / ``asNumber``)
  peers with every node in that BGPPeer's scope (``node``, ``nodeSelector``, or all nodes), as a
  node-specific peer. A forward peering to the same address wins over a reverse one. This is what
  makes Calico's route-reflector recipe (one BGPPeer ``nodeSelector: all()``, ``peerSelector:
  route-reflector == 'true'``) give the reflectors sessions to every client.
- Local AS: this node's ``asNumber`` or the cluster AS.
- Myself is never a peer (by name, and by address).
- Passive side: for a session between two cluster nodes (mesh, peerSelector, or a peerIP that
  is another node's BGP address) this side is passive iff the peer's address *string* sorts
  after ours (Calico's ``passive on; # Mesh is unidirectional`` rule, a Go string comparison:
  "10.0.0.5" > "10.0.0.10"). The rule is antisymmetric, so for every pair exactly one side is
  passive. Sessions to addresses outside the cluster are always active.
- One session per peer address: when several sources name the same address, a node-specific
  BGPPeer wins over a global one, which wins over the mesh; among equals the BGPPeer whose name
  sorts first wins. (ExaBGP refuses two neighbours with the same address.)
- Route reflection (Calico's rule): when this node has a ``routeReflectorClusterID``, every iBGP
  peer (same AS) whose cluster ID differs from ours, or is unset (any peer that is not a node), is
  a route-reflector client; a reflector with the same cluster ID is an ordinary (non-client) iBGP
  peer. ``PeerSpec.peer_cluster_id`` carries the peer node's cluster ID.
- Hold time: the BGPPeer's ``holdTime``, else ``DEFAULT_HOLD_TIME``; keepalive: the BGPPeer's
  ``keepaliveTime``, else hold/3. Restart time: BGPPeer ``maxRestartTime`` or the mesh's
  ``nodeMeshMaxRestartTime``, else 120 s (clamped to the 12-bit field: 0..4095).
- Next hop self: ``nextHopMode: Self`` forces it, ``Keep`` / ``keepOriginalNextHop`` refuses it,
  otherwise it is used on eBGP sessions only.
- Only IPv4 peers are produced (the agent runs IPv4 unicast); a BGPPeer with an IPv6 ``peerIP``
  is skipped, as is one whose password could not be resolved (fail closed).

Invariant: the output depends only on the inputs' values, never on their order.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from ipaddress import IPv4Address

from bgp.model import (
    DEFAULT_HOLD_TIME,
    DEFAULT_LISTEN_PORT,
    BGPConfig,
    BGPPeerInfo,
    NodeInfo,
    PeerKind,
    PeerSpec,
)

log = logging.getLogger(__name__)

__all__ = ["desired_peers", "is_passive"]

_KIND_RANK: dict[PeerKind, int] = {"node": 0, "global": 1, "mesh": 3}
_REVERSE_RANK = 2  # reverse peerings: after every forward BGPPeer peering, before the mesh
_MAX_RESTART = 4095
_EMPTY_LABELS: Mapping[str, str] = {}


def is_passive(mine: IPv4Address, peer: IPv4Address) -> bool:
    """True when this side waits for ``peer`` to connect (Calico: peer string > my string)."""
    return str(peer) > str(mine)


def _restart(value: float | None, default: float) -> int:
    chosen = default if value is None else value
    return max(0, min(_MAX_RESTART, round(chosen)))


def _timers(peer: BGPPeerInfo | None) -> tuple[int, int]:
    hold = DEFAULT_HOLD_TIME
    if peer is not None and peer.hold_time is not None:
        hold = round(peer.hold_time)
    keepalive = hold // 3
    if peer is not None and peer.keepalive_time is not None:
        keepalive = round(peer.keepalive_time)
    return hold, keepalive


def _next_hop_self(peer: BGPPeerInfo | None, remote_as: int, local_as: int) -> bool:
    if peer is not None:
        if peer.next_hop_mode == "Self":
            return True
        if peer.next_hop_mode == "Keep" or peer.keep_original_next_hop:
            return False
    return remote_as != local_as


def desired_peers(
    me: str,
    nodes: Mapping[str, NodeInfo],
    bgp_config: BGPConfig,
    peers: Sequence[BGPPeerInfo],
    node_labels: Mapping[str, Mapping[str, str]],
) -> tuple[PeerSpec, ...]:
    """The BGP sessions node ``me`` wants, sorted by (address, port). See the module doc."""
    mine = nodes.get(me)
    if mine is None or mine.ipv4_address is None:
        return ()
    my_ip = mine.ipv4_address.ip
    local_as = mine.as_number if mine.as_number is not None else bgp_config.as_number
    my_labels = node_labels.get(me, _EMPTY_LABELS)
    my_cluster = mine.route_reflector_cluster_id
    # other nodes with a BGP address, by address (a duplicate address: first name wins)
    by_address: dict[IPv4Address, NodeInfo] = {}
    for name in sorted(nodes):
        n = nodes[name]
        if name == me or n.ipv4_address is None or n.ipv4_address.ip == my_ip:
            continue
        by_address.setdefault(n.ipv4_address.ip, n)

    candidates: list[tuple[int, str, PeerSpec]] = []

    def rr_client(remote_as: int, peer_cluster: IPv4Address | None) -> bool:
        return my_cluster is not None and remote_as == local_as and peer_cluster != my_cluster

    def node_peer(
        n: NodeInfo,
        kind: PeerKind,
        source: BGPPeerInfo | None,
        label: str,
        rank: int | None = None,
    ) -> None:
        assert n.ipv4_address is not None
        remote_as = n.as_number if n.as_number is not None else bgp_config.as_number
        hold, keepalive = _timers(source)
        if source is None:
            password = bgp_config.node_mesh_password
            restart = _restart(None, bgp_config.node_mesh_max_restart_time)
        else:
            password = source.password
            restart = _restart(source.max_restart_time, bgp_config.node_mesh_max_restart_time)
        spec = PeerSpec(
            address=n.ipv4_address.ip,
            port=n.listen_port or bgp_config.cluster_listen_port,
            remote_as=remote_as,
            local_as=local_as,
            kind=kind,
            passive=is_passive(my_ip, n.ipv4_address.ip),
            hold_time=hold,
            keepalive=keepalive,
            restart_time=restart,
            md5_password=password,
            next_hop_self=_next_hop_self(source, remote_as, local_as),
            route_reflector_client=rr_client(remote_as, n.route_reflector_cluster_id),
            name=label,
            node=n.name,
            peer_cluster_id=n.route_reflector_cluster_id,
        )
        candidates.append((_KIND_RANK[kind] if rank is None else rank, label, spec))

    if (
        bgp_config.node_to_node_mesh_enabled
        and not bgp_config.mesh_password_unresolved
        and my_cluster is None
    ):
        for n in by_address.values():
            if n.route_reflector_cluster_id is None:
                node_peer(n, "mesh", None, f"mesh:{n.name}")

    for p in sorted(peers, key=lambda p: p.name):
        if p.node:
            if p.node != me:
                continue
            kind: PeerKind = "node"
        elif p.node_selector is not None:
            if not p.node_selector.evaluate(my_labels):
                continue
            kind = "node"
        else:
            kind = "global"
        if p.password_unresolved:
            log.debug("bgp.peer_skipped peer=%s reason=password-unresolved", p.name)
            continue
        if p.peer_selector is not None:
            for n in by_address.values():
                if p.peer_selector.evaluate(node_labels.get(n.name, _EMPTY_LABELS)):
                    node_peer(n, kind, p, f"{kind}:{p.name}:{n.name}")
            continue
        ip = p.peer_ip
        if ip is None or p.as_number is None:
            continue  # e.g. localWorkloadSelector peers: not handled by tabby
        if not isinstance(ip, IPv4Address):
            log.info("bgp.peer_skipped peer=%s reason=ipv6 address=%s", p.name, ip)
            continue
        if ip == my_ip:
            continue
        hold, keepalive = _timers(p)
        other = by_address.get(ip)
        spec = PeerSpec(
            address=ip,
            port=p.peer_port or DEFAULT_LISTEN_PORT,
            remote_as=p.as_number,
            local_as=local_as,
            kind=kind,
            passive=other is not None and is_passive(my_ip, ip),
            hold_time=hold,
            keepalive=keepalive,
            restart_time=_restart(p.max_restart_time, bgp_config.node_mesh_max_restart_time),
            md5_password=p.password,
            next_hop_self=_next_hop_self(p, p.as_number, local_as),
            route_reflector_client=rr_client(
                p.as_number, other.route_reflector_cluster_id if other is not None else None
            ),
            name=f"{kind}:{p.name}",
            node=other.name if other is not None else "",
            peer_cluster_id=other.route_reflector_cluster_id if other is not None else None,
        )
        candidates.append((_KIND_RANK[kind], spec.name, spec))

    # Reverse peerings: BGPPeers that target this node make it peer with their scope.
    for p in sorted(peers, key=lambda p: p.name):
        if p.password_unresolved:
            continue
        if p.peer_selector is not None:
            targeted = p.peer_selector.evaluate(my_labels)
        else:
            targeted = p.peer_ip == my_ip and p.as_number == local_as
        if not targeted:
            continue
        for n in by_address.values():
            if p.node:
                in_scope = n.name == p.node
            elif p.node_selector is not None:
                in_scope = p.node_selector.evaluate(node_labels.get(n.name, _EMPTY_LABELS))
            else:
                in_scope = True
            if in_scope:
                node_peer(n, "node", p, f"node:{p.name}:{n.name}:reverse", _REVERSE_RANK)

    chosen: dict[IPv4Address, PeerSpec] = {}
    for _rank, _label, spec in sorted(candidates, key=lambda c: (c[0], c[1])):
        if spec.address in chosen:
            log.debug("bgp.peer_shadowed name=%s by=%s", spec.name, chosen[spec.address].name)
            continue
        chosen[spec.address] = spec
    return tuple(sorted(chosen.values(), key=lambda s: (s.address, s.port)))
