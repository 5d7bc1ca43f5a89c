"""Route reflection (RFC 4456): which peer gets which reflected route, loop checks, Adj-RIB-Out.

Role: the pure part of ``tabby-bgp``'s route-reflector role. ExaBGP has no best path and no
reflection of its own, so the agent does it: for each prefix it takes the RIB's best path,
``plan_prefix`` says which neighbours get it and with which attributes, and ``AdjRibOut`` turns
"what each neighbour should have" into per-neighbour announce / withdraw commands, remembering
what was sent (so a re-established neighbour gets everything again before End-of-RIB).
``rejects`` is the receive-side loop check every node applies (reflector or not).

Inputs: ``Path`` values (``bgp.rib``), a ``ReflectContext`` (our router id and cluster ID, the
peers with their role, the prefixes we originate ourselves).
Outputs: ``ReflectedRoute`` values per neighbour; ``Announce`` / ``Withdraw`` commands.

Rules (RFC 4456 section 8, as Calico's BIRD configuration applies them):
- Only a node with a cluster ID reflects; only routes learned over iBGP are reflected (eBGP
  routes are not re-advertised by tabby at all); only to iBGP neighbours.
- The best path learned from a *client* goes to every other iBGP neighbour (clients and
  non-clients) except the one it came from; a best path learned from a *non-client* goes to
  clients only.
- A prefix we originate ourselves (our blocks) is never reflected: our own announcement wins.
- Attributes are kept as received (NEXT_HOP, ORIGIN, AS_PATH, LOCAL_PREF, MED); ORIGINATOR_ID is
  set to the source peer's router id when absent (the neighbour address when the router id is
  not known yet); our cluster ID is prepended to CLUSTER_LIST.
- Not sent back to the router that originated it (target router id == ORIGINATOR_ID): it would
  drop it anyway (RFC 4456 leaves this optimisation open).
- Received routes are rejected (treated as withdrawn) when ORIGINATOR_ID is our router id, or
  CLUSTER_LIST holds our cluster ID.

Invariants: ``plan_prefix`` is a function of its arguments; ``AdjRibOut`` only emits a command
when what a neighbour should have differs from what it was sent (``resync`` re-sends all on
purpose); commands for one neighbour keep the order in which they were produced.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

from bgp.model import IPAddress, IPNetwork, Origin, Path

log = logging.getLogger(__name__)

__all__ = [
    "BROADCAST_MIN",
    "AdjRibOut",
    "Announce",
    "AnnounceAll",
    "Command",
    "PeerRole",
    "ReflectContext",
    "ReflectedRoute",
    "Withdraw",
    "WithdrawAll",
    "broadcast_plan",
    "plan_prefix",
    "reflected_route",
    "rejects",
]

DEFAULT_LOCAL_PREF = 100


@dataclass(frozen=True, slots=True)
class PeerRole:
    """A neighbour as reflection sees it. ``router_id`` is from its OPEN (None: not yet known)."""

    ibgp: bool
    client: bool
    router_id: IPv4Address | None = None


@dataclass(frozen=True, slots=True)
class ReflectContext:
    """Everything but the paths that decides reflection. ``cluster_id=None``: not a reflector."""

    router_id: IPv4Address
    cluster_id: IPv4Address | None
    peers: Mapping[IPv4Address, PeerRole]
    own: frozenset[IPv4Network] = frozenset()
    # Derived once from ``peers`` (``plan_prefix`` runs per prefix, and on a reflector with N
    # clients per prefix *and* per session coming up): the iBGP neighbours, the iBGP clients
    # (both as dicts, so ``dict.fromkeys`` copies them with their stored hashes, not one
    # ``IPv4Address.__hash__`` per neighbour), and iBGP neighbours by router id. A context is
    # a snapshot: ``peers`` must not be changed after it was built (the agent builds a new one).
    _ibgp: dict[IPv4Address, None] = field(init=False, repr=False, compare=False)
    _clients: dict[IPv4Address, None] = field(init=False, repr=False, compare=False)
    _by_router_id: dict[IPv4Address, tuple[IPv4Address, ...]] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        ibgp = {a: r for a, r in self.peers.items() if r.ibgp}
        by_rid: dict[IPv4Address, list[IPv4Address]] = {}
        for a, r in ibgp.items():
            if r.router_id is not None:
                by_rid.setdefault(r.router_id, []).append(a)
        object.__setattr__(self, "_ibgp", dict.fromkeys(ibgp))
        object.__setattr__(self, "_clients", {a: None for a, r in ibgp.items() if r.client})
        object.__setattr__(self, "_by_router_id", {k: tuple(v) for k, v in by_rid.items()})

    def key(self) -> tuple[object, ...]:
        """A hashable summary: the agent recomputes every prefix when it changes."""
        return (self.router_id, self.cluster_id, tuple(sorted(self.peers.items())), self.own)


@dataclass(frozen=True, slots=True)
class ReflectedRoute:
    """One route as we send it to a neighbour (the attributes ExaBGP is told to use)."""

    prefix: IPv4Network
    next_hop: IPv4Address
    origin: Origin
    as_path: tuple[int, ...]
    local_pref: int
    med: int | None
    originator_id: IPv4Address
    cluster_list: tuple[IPv4Address, ...]


@dataclass(frozen=True, slots=True)
class Announce:
    neighbor: IPv4Address
    route: ReflectedRoute


@dataclass(frozen=True, slots=True)
class Withdraw:
    neighbor: IPv4Address
    prefix: IPv4Network


@dataclass(frozen=True, slots=True)
class AnnounceAll:
    """One un-targeted announcement: ExaBGP puts it in every neighbour's Adj-RIB-Out."""

    route: ReflectedRoute


@dataclass(frozen=True, slots=True)
class WithdrawAll:
    prefix: IPv4Network


Command = Announce | Withdraw | AnnounceAll | WithdrawAll

# Below this many neighbours to change, per-neighbour commands are sent instead of one
# un-targeted command (which ExaBGP applies to every neighbour).
BROADCAST_MIN = 3


def rejects(path: Path, *, router_id: IPv4Address, cluster_id: IPv4Address | None) -> str:
    """Why a received ``path`` must be ignored (RFC 4456 loop prevention), or "" to accept."""
    if path.originator_id is not None and path.originator_id == router_id:
        return "originator-id"
    if cluster_id is not None and cluster_id in path.cluster_list:
        return "cluster-list"
    return ""


def reflected_route(
    prefix: IPv4Network, path: Path, cluster_id: IPv4Address
) -> ReflectedRoute | None:
    """``path`` with ORIGINATOR_ID set and our cluster ID prepended; None when it cannot be
    expressed as an IPv4 ExaBGP announcement (IPv6 next hop, AS_SET in the path)."""
    if not isinstance(path.next_hop, IPv4Address):
        return None
    asns: list[int] = []
    for seg in path.as_path:
        if seg.is_set:
            return None
        asns.extend(seg.asns)
    originator = path.originator_id
    if originator is None:
        source = path.router_id if path.router_id is not None else path.peer
        if not isinstance(source, IPv4Address):
            return None
        originator = source
    return ReflectedRoute(
        prefix=prefix,
        next_hop=path.next_hop,
        origin=path.origin,
        as_path=tuple(asns),
        local_pref=path.local_pref if path.local_pref is not None else DEFAULT_LOCAL_PREF,
        med=path.med,
        originator_id=originator,
        cluster_list=(cluster_id, *path.cluster_list),
    )


def plan_prefix(
    prefix: IPv4Network, best: Path | None, ctx: ReflectContext
) -> dict[IPv4Address, ReflectedRoute]:
    """What each neighbour should have for ``prefix`` (absent: nothing), see the module doc."""
    if best is None or ctx.cluster_id is None or prefix in ctx.own:
        return {}
    source = best.peer
    if not isinstance(source, IPv4Address):
        return {}
    src = ctx.peers.get(source)
    if src is None or not src.ibgp or best.ebgp:
        return {}
    route = reflected_route(prefix, best, ctx.cluster_id)
    if route is None:
        return {}
    # every iBGP neighbour (source a client) or the clients only (source a non-client), minus
    # the source and the originator; in ``ctx.peers`` order
    out = dict.fromkeys(ctx._ibgp if src.client else ctx._clients, route)
    out.pop(source, None)
    for addr in ctx._by_router_id.get(route.originator_id, ()):
        out.pop(addr, None)
    return out


def broadcast_plan(
    wanted: Mapping[IPv4Address, ReflectedRoute], ctx: ReflectContext
) -> dict[IPv4Address, ReflectedRoute] | None:
    """``wanted`` completed for one un-targeted command, or None when one cannot be used.

    An un-targeted command reaches every neighbour ExaBGP has, and ``ctx.peers`` is a superset
    of those. It is usable when every configured neighbour either should get the route
    (``wanted``), or is the router that originated it (its router id is the route's
    ORIGINATOR_ID): that one discards it on receipt (RFC 4456 section 8), so sending it there
    is harmless; the result then maps those neighbours to the route too. Any other neighbour
    left out (an eBGP peer, a non-client for a non-client's route, an originator whose router
    id is not known yet) rules it out. An empty ``wanted`` gives ``{}``: one un-targeted
    withdrawal is always right.
    """
    if not wanted:
        return {}
    if len(wanted) == len(ctx.peers):
        return dict(wanted)
    route = next(iter(wanted.values()))
    out: dict[IPv4Address, ReflectedRoute] = {}
    for addr, role in ctx.peers.items():
        have = wanted.get(addr)
        if have is not None:
            if have != route:
                return None
            out[addr] = have
        elif role.router_id is not None and role.router_id == route.originator_id:
            out[addr] = route
        else:
            return None
    return out


class AdjRibOut:
    """What was sent to each neighbour, and the commands that bring it to what it should have.

    A neighbour's entry survives its session going down (ExaBGP keeps its Adj-RIB-Out and
    re-sends it when the session comes back); ``forget`` drops it when the neighbour is removed
    from ExaBGP's configuration, ``clear`` when ExaBGP itself restarted.
    """

    __slots__ = ("_sent",)

    def __init__(self) -> None:
        self._sent: dict[IPv4Address, dict[IPv4Network, ReflectedRoute]] = {}

    def sent(self, neighbor: IPv4Address) -> dict[IPv4Network, ReflectedRoute]:
        """A copy of what ``neighbor`` was sent."""
        return dict(self._sent.get(neighbor, {}))

    def count(self, neighbor: IPAddress, originator: IPv4Address | None = None) -> int:
        """Routes sent to ``neighbor``; with ``originator`` (its router id), not counting the
        copies of its own routes that an un-targeted command gave it (it ignores them)."""
        sent = self._sent.get(neighbor, {}) if isinstance(neighbor, IPv4Address) else {}
        if originator is None:
            return len(sent)
        return sum(1 for r in sent.values() if r.originator_id != originator)

    def prefixes(self) -> set[IPv4Network]:
        """Every prefix some neighbour was sent."""
        return {p for routes in self._sent.values() for p in routes}

    def sync_prefix(
        self,
        prefix: IPv4Network,
        wanted: Mapping[IPv4Address, ReflectedRoute],
        neighbors: Iterable[IPv4Address],
        *,
        everyone: Mapping[IPv4Address, ReflectedRoute] | None = None,
        reached: Iterable[IPv4Address] = (),
    ) -> list[Command]:
        """Commands for ``prefix`` on ``neighbors`` (those with an established session): announce
        where the wanted route differs from what was sent, withdraw where nothing is wanted.

        ``everyone`` (from ``broadcast_plan``) allows one un-targeted command instead, used when
        at least ``BROADCAST_MIN`` neighbours need a change; it is then recorded as sent to
        ``reached`` (the neighbours known to be in ExaBGP's running configuration, established
        or not: ExaBGP keeps the route for them) as well as to ``neighbors``."""
        targets = sorted(neighbors)
        if everyone is not None:
            covered = set(targets).union(reached)
            differ = [n for n in covered if everyone.get(n) != self._sent.get(n, {}).get(prefix)]
            if len(differ) >= BROADCAST_MIN:
                route = next(iter(everyone.values()), None)
                for n in covered:
                    if route is None:
                        self._drop(n, prefix)
                    else:
                        self._sent.setdefault(n, {})[prefix] = route
                return [WithdrawAll(prefix) if route is None else AnnounceAll(route)]
        out: list[Command] = []
        for n in targets:
            have = self._sent.get(n, {}).get(prefix)
            want = wanted.get(n)
            if want == have:
                continue
            if (
                want is None
                and everyone is not None
                and have is not None
                and everyone.get(n) == have
            ):
                continue  # the originator holds a copy from a broadcast: it ignores it, keep it
            if want is None:
                self._drop(n, prefix)
                out.append(Withdraw(n, prefix))
            else:
                self._sent.setdefault(n, {})[prefix] = want
                out.append(Announce(n, want))
        return out

    def _drop(self, neighbor: IPv4Address, prefix: IPv4Network) -> None:
        sent = self._sent.get(neighbor)
        if sent is not None and sent.pop(prefix, None) is not None and not sent:
            del self._sent[neighbor]

    def sync_neighbor(
        self,
        neighbor: IPv4Address,
        wanted: Mapping[IPv4Network, ReflectedRoute],
        keep: Set[IPNetwork] = frozenset(),
    ) -> list[Command]:
        """Only the differences between what ``neighbor`` was sent and ``wanted`` (a session
        came back, and ExaBGP re-sends what it kept for it by itself). Prefixes in ``keep``
        are left as they are (a later ``sync_prefix`` takes care of them)."""
        return self._sync(neighbor, wanted, keep, everything=False)

    def resync(
        self,
        neighbor: IPv4Address,
        wanted: Mapping[IPv4Network, ReflectedRoute],
        keep: Set[IPNetwork] = frozenset(),
    ) -> list[Command]:
        """Everything ``neighbor`` should have, sent again (a session just came up), plus
        withdrawals of what it was sent earlier and should no longer have; ``keep`` as in
        ``sync_neighbor``."""
        return self._sync(neighbor, wanted, keep, everything=True)

    def _sync(
        self,
        neighbor: IPv4Address,
        wanted: Mapping[IPv4Network, ReflectedRoute],
        keep: Set[IPNetwork],
        *,
        everything: bool,
    ) -> list[Command]:
        old = self._sent.get(neighbor, {})
        out: list[Command] = [
            Withdraw(neighbor, p) for p in sorted(old) if p not in wanted and p not in keep
        ]
        out += [
            Announce(neighbor, r)
            for p, r in sorted(wanted.items())
            if everything or old.get(p) != r
        ]
        new = {p: r for p, r in old.items() if p in keep}
        new.update(wanted)
        if new:
            self._sent[neighbor] = new
        else:
            self._sent.pop(neighbor, None)
        return out

    def forget(self, neighbor: IPv4Address) -> None:
        self._sent.pop(neighbor, None)

    def neighbors(self) -> set[IPv4Address]:
        return set(self._sent)

    def clear(self) -> None:
        self._sent.clear()
