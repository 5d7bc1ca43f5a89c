"""tabby-bgp's derived state follows its inputs: the parsed Nodes after a Node change, the
reflection context after a role change (router id, spec, peers added or removed), and the
kernel routes kept from before a restart, which go at convergence unless learned again."""

from __future__ import annotations

import asyncio
import dataclasses
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

from bgp import exabgp_api as api
from bgp.agent import KERNEL_BATCH, BgpAgent, PeerStatus
from bgp.model import Path as RibPath
from bgp.model import PeerSpec
from datastore.codec import encode, resource_from_dict
from datastore.keys import resource_key
from datastore.syncer import Update
from kernel.routes import FakeRouteBackend, Route
from tests.support.bgp import fake_agent, peer_spec

ME = "198.51.100.1"
PEER = IPv4Address("198.51.100.2")
API = "projectcalico.org/v3"


def _agent(tmp_path: Path) -> BgpAgent:
    return fake_agent(tmp_path)


def _put(agent: BgpAgent, doc: dict[str, Any], rev: int) -> None:
    res = resource_from_dict(doc)
    key = resource_key(res.kind, res.metadata.name, res.metadata.namespace)
    agent._on_update(Update(key, encode(res), rev))


def _node(name: str, ip: str, cluster_id: str | None = None) -> dict[str, Any]:
    bgp: dict[str, Any] = {"ipv4Address": f"{ip}/24"}
    if cluster_id:
        bgp["routeReflectorClusterID"] = cluster_id
    return {"apiVersion": API, "kind": "Node", "metadata": {"name": name}, "spec": {"bgp": bgp}}


def _spec(client: bool = True) -> PeerSpec:
    return peer_spec(PEER, kind="global", name="p", route_reflector_client=client)


def test_node_changes_reach_address_and_cluster_id(tmp_path: Path) -> None:
    agent = _agent(tmp_path)
    _put(agent, _node("node1", ME), 1)
    assert agent.my_address() == IPv4Interface(f"{ME}/24")
    assert agent._cluster_id() is None
    _put(agent, _node("node1", "198.51.100.9", cluster_id="224.0.0.1"), 2)
    assert agent.my_address() == IPv4Interface("198.51.100.9/24")
    assert agent._cluster_id() == IPv4Address("224.0.0.1")
    agent._on_update(Update(resource_key("Node", "node1", None), None, 3))
    assert agent.my_address() is None


def test_reflection_context_follows_roles(tmp_path: Path) -> None:
    agent = _agent(tmp_path)
    _put(agent, _node("node1", ME, cluster_id="224.0.0.1"), 1)
    ctx = agent._reflect_context()
    assert ctx is not None and ctx.peers == {}
    assert agent._reflect_context() is ctx  # nothing changed: the same snapshot

    # a peer appears (as _reconcile_exabgp adds it), then its OPEN tells its router id
    agent.peers[PEER] = PeerStatus(_spec(client=True))
    agent._roles_changed += 1
    ctx = agent._reflect_context()
    assert ctx is not None and ctx.peers[PEER].client and ctx.peers[PEER].router_id is None
    session = api.Session(peer=PEER, local=IPv4Address(ME), peer_as=64512, local_as=64512)
    rid = IPv4Address("203.0.113.7")
    agent._on_event(api.OpenEvent(session, "receive", rid, 64512, 90, None))
    after_open = agent._reflect_context()
    assert after_open is not ctx and after_open is not None
    assert after_open.peers[PEER].router_id == rid
    # our announcements are part of the context too
    agent.announced = {IPv4Network("10.65.0.0/26")}
    with_own = agent._reflect_context()
    assert with_own is not None and with_own.own == frozenset(agent.announced)


def test_kept_routes_go_at_convergence_unless_learned_again(tmp_path: Path) -> None:
    agent = _agent(tmp_path)
    _put(agent, _node("node1", ME), 1)
    block = IPv4Network("10.65.0.0/26")
    agent.my_blocks = {block}
    gw = IPv4Address("198.51.100.2")
    relearned = Route(dst=IPv4Network("10.66.0.0/26"), gateway=gw)
    gone = Route(dst=IPv4Network("10.67.0.0/26"), gateway=gw)
    blackhole = Route(dst=block, type="blackhole")
    agent._keep = {r.dst: r for r in (relearned, gone, blackhole)}
    agent.peers[PEER] = PeerStatus(_spec(client=False), state="established")

    agent._reconcile_kernel()  # not converged: everything kept stays wanted
    wanted = agent.routes.desired_routes()
    assert {relearned.dst, gone.dst, block} <= set(wanted)

    path = RibPath(next_hop=gw, peer=PEER)
    agent.rib.update(PEER, IPv4Network("10.66.0.0/26"), path)
    agent.rib.update(PEER, IPv4Network("10.68.0.0/26"), path)
    agent._reconcile_kernel()
    assert IPv4Network("10.68.0.0/26") in agent.routes.desired_routes()

    agent.peers[PEER] = dataclasses.replace(agent.peers[PEER], eor_received=True)
    agent._reconcile_kernel()  # converged now (every peer sent End-of-RIB)
    wanted = agent.routes.desired_routes()
    assert gone.dst not in wanted  # kept, not learned again: removed
    assert wanted[relearned.dst].gateway == gw  # learned again: stays
    assert wanted[block].type == "blackhole"  # our block's blackhole stays
    assert IPv4Network("10.68.0.0/26") in wanted
    assert agent._keep == {}


def test_a_table_load_is_computed_and_written_in_batches(tmp_path: Path) -> None:
    """More changed prefixes than KERNEL_BATCH: each pass computes one batch and queues its
    writes to the writer thread (batches under way are recorded as they finish); every route
    ends in the kernel, the last change of each destination included."""
    agent = _agent(tmp_path)
    _put(agent, _node("node1", ME), 1)
    agent.peers[PEER] = PeerStatus(_spec(client=False), state="established")
    gw = IPv4Address("198.51.100.2")
    moved = IPv4Address("198.51.100.3")
    path = RibPath(next_hop=gw, peer=PEER)
    total = 2 * KERNEL_BATCH + 10
    prefixes = [IPv4Network((0x0A400000 + 64 * i, 26)) for i in range(total)]
    agent.rib.update_many(PEER, ((p, path) for p in prefixes))
    backend = agent.routes.backend
    assert isinstance(backend, FakeRouteBackend)
    written: list[int] = []

    async def passes() -> None:
        agent._reconcile_kernel()  # first pass: every input is new, all computed at once
        await agent._apply_routes()
        for p in prefixes[: KERNEL_BATCH + 5]:  # then a second wave of changes
            agent.rib.update(PEER, p, dataclasses.replace(path, next_hop=moved))
        while True:
            agent._work.clear()
            more = agent._reconcile_kernel()
            await agent._apply_routes()
            written.append(len(backend.table(81)))
            if not more and not agent._writing and not agent._work.is_set():
                break
            await asyncio.sleep(0.001)  # as the control loop waits for work: writes complete

    asyncio.run(passes())
    assert len(written) >= 3  # the second wave took more than one pass
    assert not agent._writing and agent._changed == set()
    assert set(backend.table(81)) == set(prefixes)
    assert backend.table(81) == agent.routes.desired_routes()
    moved_now = {p for p, r in backend.table(81).items() if r.gateway == moved}
    assert moved_now == set(prefixes[: KERNEL_BATCH + 5])
