"""Adj-RIB-In per peer, graceful-restart stale routes, and best-path (+ECMP) selection.

Role: pure state of ``tabby-bgp``'s received routes. ``Rib.update(peer, prefix, path | None)``
records (or removes) the route one neighbour sent for one prefix; ``peer_down`` drops a peer's
routes or, with graceful restart, marks them stale until that peer's End-of-RIB (``eor``) or a
deadline (``expire_stale``); ``best(prefix)`` selects; ``changes()`` drains the prefixes whose
candidate set changed since the last call.

Inputs: ``Path`` values (from ``bgp.exabgp_api.UpdateEvent.path_groups``), peer addresses, times
(``now`` is passed in: the RIB never reads a clock).
Outputs: ``best(prefix) -> tuple[Path, ...]`` (best first; several when ECMP is enabled),
dirty prefixes.

Best path, as a sequence of eliminations over the *set* of candidates (RFC 4271 9.1.2.2):
1. highest LOCAL_PREF (absent = 100);
2. shortest AS_PATH (an AS_SET counts 1);
3. lowest ORIGIN (IGP < EGP < INCOMPLETE);
4. lowest MED (absent = 0), compared only between paths from the same neighbouring AS (the
   first AS of the path; paths with an empty path form one internal group), unless
   ``always_compare_med``;
5. eBGP over iBGP;
6. shortest CLUSTER_LIST (RFC 4456; placed before the identifier as most implementations do,
   RFC 4456 itself puts it after);
7. lowest ORIGINATOR_ID, or the peer's router id when absent (RFC 4456); unknown = highest;
8. lowest peer address.
The ECMP set is what survives steps 1-6: equal on every criterion before the router id.

Invariants:
- ``best`` is a function of the candidate *set*: every step eliminates against the whole set and
  the final tie-break is a total order, so the order in which updates arrived never matters
  (MED's partial comparability cannot make it order dependent, unlike pairwise comparison).
- A peer has at most one path per prefix (a new one replaces the old, stale or not).
- Stale paths take part in selection like fresh ones (forwarding continues across a restart);
  a path re-announced after the restart is fresh again. A peer going down again before its
  End-of-RIB keeps the earlier deadline: flapping never extends how long stale routes live.
- ``changes()`` reports each prefix whose candidates changed at least once since the previous
  call (possibly with the same best path: consumers diff their own output). A second consumer
  (route reflection) registers with ``watch(name)`` and drains its own set with
  ``changes(name)``; consumers never steal each other's changes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Set
from ipaddress import IPv4Address

from bgp.model import IPAddress, IPNetwork, Path

__all__ = ["DEFAULT_LOCAL_PREF", "Rib", "select"]

DEFAULT_LOCAL_PREF = 100
_UNKNOWN_ID = 1 << 32


def _identifier(p: Path) -> int:
    rid: IPv4Address | None = p.originator_id if p.originator_id is not None else p.router_id
    return int(rid) if rid is not None else _UNKNOWN_ID


def _peer_key(p: Path) -> tuple[int, int]:
    return (p.peer.version, int(p.peer))


def _keep_min(paths: list[Path], key: Callable[[Path], int]) -> list[Path]:
    values = [key(p) for p in paths]
    low = min(values)
    return [p for p, v in zip(paths, values, strict=True) if v == low]


def select(
    candidates: Iterable[Path], *, ecmp: bool = False, always_compare_med: bool = False
) -> tuple[Path, ...]:
    """Best path(s) among ``candidates`` (see the module doc); empty for no candidates."""
    paths = list(candidates)
    if len(paths) <= 1:
        return tuple(paths)  # nothing to eliminate (the common case: one peer per prefix)
    paths = _keep_min(
        paths, lambda p: -(p.local_pref if p.local_pref is not None else DEFAULT_LOCAL_PREF)
    )
    paths = _keep_min(paths, lambda p: p.as_path_length)
    paths = _keep_min(paths, lambda p: int(p.origin))
    if always_compare_med:
        paths = _keep_min(paths, lambda p: p.med or 0)
    else:
        group_min: dict[int | None, int] = {}
        for p in paths:
            g = p.neighbour_as
            group_min[g] = min(group_min.get(g, p.med or 0), p.med or 0)
        paths = [p for p in paths if (p.med or 0) == group_min[p.neighbour_as]]
    paths = _keep_min(paths, lambda p: 0 if p.ebgp else 1)
    paths = _keep_min(paths, lambda p: len(p.cluster_list))
    paths.sort(key=lambda p: (_identifier(p), _peer_key(p)))
    return tuple(paths) if ecmp else (paths[0],)


class Rib:
    """Adj-RIB-In of every peer plus best-path selection (see the module doc)."""

    __slots__ = (
        "_adj",
        "_by_prefix",
        "_dirty",
        "_stale",
        "_watchers",
        "always_compare_med",
        "ecmp",
    )

    def __init__(self, *, ecmp: bool = True, always_compare_med: bool = False) -> None:
        self.ecmp = ecmp
        self.always_compare_med = always_compare_med
        self._adj: dict[IPAddress, dict[IPNetwork, Path]] = {}
        self._by_prefix: dict[IPNetwork, dict[IPAddress, Path]] = {}
        self._stale: dict[IPAddress, dict[IPNetwork, float]] = {}
        self._dirty: set[IPNetwork] = set()
        self._watchers: dict[str, set[IPNetwork]] = {}

    def _mark(self, prefix: IPNetwork) -> None:
        self._dirty.add(prefix)
        for dirty in self._watchers.values():
            dirty.add(prefix)

    def watch(self, name: str) -> None:
        """Register a further consumer of ``changes(name)`` (idempotent)."""
        self._watchers.setdefault(name, set())

    # ----------------------------------------------------------------------------- updates

    def update(self, peer: IPAddress, prefix: IPNetwork, path: Path | None) -> None:
        """Record ``path`` as ``peer``'s route to ``prefix`` (None: withdraw it)."""
        if path is not None and path.peer != peer:
            raise ValueError(f"path from {path.peer} recorded for peer {peer}")
        stale = self._stale.get(peer)
        if stale is not None:
            stale.pop(prefix, None)
            if not stale:
                del self._stale[peer]
        adj = self._adj.get(peer)
        old = adj.get(prefix) if adj is not None else None
        if path is None:
            if old is None:
                return
            assert adj is not None
            del adj[prefix]
            if not adj:
                del self._adj[peer]
            cands = self._by_prefix[prefix]
            del cands[peer]
            if not cands:
                del self._by_prefix[prefix]
            self._mark(prefix)
            return
        if old == path:
            return  # unchanged (if it was stale, it is fresh again now)
        self._adj.setdefault(peer, {})[prefix] = path
        self._by_prefix.setdefault(prefix, {})[peer] = path
        self._mark(prefix)

    def update_many(self, peer: IPAddress, items: Iterable[tuple[IPNetwork, Path | None]]) -> None:
        """``update(peer, prefix, path)`` for each item, with the per-peer lookups done once
        (an UPDATE carries hundreds of prefixes)."""
        stale = self._stale.get(peer)
        adj = self._adj.get(peer)
        by_prefix = self._by_prefix
        dirty = self._dirty
        watchers = list(self._watchers.values())
        for prefix, path in items:
            if stale is not None and prefix in stale:
                self.update(peer, prefix, path)  # rare: the general case handles the marks
                stale = self._stale.get(peer)
                adj = self._adj.get(peer)
                continue
            old = adj.get(prefix) if adj is not None else None
            if path is None:
                if old is None:
                    continue
                self.update(peer, prefix, None)
                adj = self._adj.get(peer)
                continue
            if path.peer != peer:
                raise ValueError(f"path from {path.peer} recorded for peer {peer}")
            if old is path or old == path:
                continue
            if adj is None:
                adj = self._adj[peer] = {}
            adj[prefix] = path
            cands = by_prefix.get(prefix)
            if cands is None:
                by_prefix[prefix] = {peer: path}
            else:
                cands[peer] = path
            dirty.add(prefix)
            for w in watchers:
                w.add(prefix)

    def announce(self, peer: IPAddress, path: Path, prefixes: Iterable[IPNetwork]) -> None:
        """``update(peer, prefix, path)`` for each of ``prefixes``: the prefixes of one UPDATE
        share one path, so it is checked once and the loop does only the dictionary work."""
        if path.peer != peer:
            raise ValueError(f"path from {path.peer} recorded for peer {peer}")
        if self._stale.get(peer):  # rare (a restarting peer): the general case clears marks
            self.update_many(peer, ((p, path) for p in prefixes))
            return
        adj = self._adj.get(peer)
        if adj is None:
            adj = {}
        by_prefix = self._by_prefix
        known = adj.get
        candidates = by_prefix.get
        mark = self._dirty.add
        watchers = [w.add for w in self._watchers.values()]
        only = {peer: path}  # copied for a new prefix: a copy does not hash the address again
        for prefix in prefixes:
            old = known(prefix)
            if old is not None and (old is path or old == path):
                continue
            adj[prefix] = path
            cands = candidates(prefix)
            if cands is None:
                by_prefix[prefix] = only.copy()
            else:
                cands[peer] = path
            mark(prefix)
            for watcher in watchers:
                watcher(prefix)
        if adj:
            self._adj[peer] = adj

    def peer_down(
        self,
        peer: IPAddress,
        *,
        stale: bool = False,
        now: float = 0.0,
        restart_time: float = 0.0,
    ) -> None:
        """The session to ``peer`` went down: drop its routes, or with ``stale=True`` keep them
        as stale until ``eor(peer)`` or ``now + restart_time`` (``expire_stale``)."""
        adj = self._adj.get(peer)
        if not adj:
            return
        if not stale:
            for prefix in list(adj):
                self.update(peer, prefix, None)
            self._stale.pop(peer, None)
            return
        deadline = now + restart_time
        marks = self._stale.setdefault(peer, {})
        for prefix in adj:
            marks.setdefault(prefix, deadline)  # an earlier deadline is never extended

    def eor(self, peer: IPAddress) -> None:
        """End-of-RIB from ``peer``: its routes still stale were not re-announced; drop them."""
        marks = self._stale.pop(peer, None)
        if not marks:
            return
        for prefix in list(marks):
            self._drop(peer, prefix)

    def expire_stale(self, now: float) -> None:
        """Drop stale routes whose restart deadline has passed."""
        for peer in list(self._stale):
            marks = self._stale[peer]
            for prefix in [p for p, deadline in marks.items() if deadline <= now]:
                del marks[prefix]
                self._drop(peer, prefix)
            if not marks:
                del self._stale[peer]

    def _drop(self, peer: IPAddress, prefix: IPNetwork) -> None:
        adj = self._adj.get(peer)
        if adj is None or prefix not in adj:
            return
        del adj[prefix]
        if not adj:
            del self._adj[peer]
        cands = self._by_prefix[prefix]
        del cands[peer]
        if not cands:
            del self._by_prefix[prefix]
        self._mark(prefix)

    # ----------------------------------------------------------------------------- reads

    def best(self, prefix: IPNetwork) -> tuple[Path, ...]:
        """Best path(s) for ``prefix`` (empty when nothing is known)."""
        cands = self._by_prefix.get(prefix)
        if not cands:
            return ()
        if len(cands) == 1:
            return tuple(cands.values())
        return select(cands.values(), ecmp=self.ecmp, always_compare_med=self.always_compare_med)

    def changes(self, name: str | None = None) -> frozenset[IPNetwork]:
        """Prefixes whose candidates changed since the previous call (drains the set);
        ``name``: the set of a consumer registered with ``watch``."""
        dirty_set = self._dirty if name is None else self._watchers[name]
        dirty = frozenset(dirty_set)
        dirty_set.clear()
        return dirty

    def pending(self, name: str) -> Set[IPNetwork]:
        """The changes consumer ``name`` has not taken yet (a read-only view, not drained)."""
        return self._watchers[name]

    def prefixes(self) -> Iterator[IPNetwork]:
        """Every prefix with at least one candidate."""
        return iter(tuple(self._by_prefix))

    def count(self, peer: IPAddress) -> int:
        """How many prefixes ``peer`` announced (without copying them)."""
        return len(self._adj.get(peer, ()))

    def paths(self, peer: IPAddress) -> dict[IPNetwork, Path]:
        """A copy of ``peer``'s Adj-RIB-In."""
        return dict(self._adj.get(peer, {}))

    def candidates(self, prefix: IPNetwork) -> tuple[Path, ...]:
        """Every path to ``prefix``, ordered by peer address."""
        cands = self._by_prefix.get(prefix, {})
        return tuple(cands[p] for p in sorted(cands, key=lambda a: (a.version, int(a))))

    def is_stale(self, peer: IPAddress, prefix: IPNetwork) -> bool:
        return prefix in self._stale.get(peer, {})

    def stale_deadline(self) -> float | None:
        """The earliest pending stale deadline (for the agent's timer), or None."""
        deadlines = [d for marks in self._stale.values() for d in marks.values()]
        return min(deadlines) if deadlines else None
