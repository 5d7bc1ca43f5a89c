"""The pure calculation at the heart of felix: datastore state in, desired dataplane model out.

Role: keep the cluster-wide state felix cares about (endpoints of every node, policies, profiles,
tiers, network sets, pools) and maintain, incrementally, what this node's dataplane must contain:
- for every *local* endpoint, the ordered tiers and policies that apply per direction (and, for
  host endpoints, the pre-DNAT, untracked and forward variants), plus its profiles;
- the active policies and profiles (those used by some local endpoint);
- the IP sets those policies' rules need, with their members (IPs of every matching endpoint in
  the cluster and nets of matching network sets; ``ip,proto:port`` entries for named ports);
- the IP pools (for natOutgoing and IP-in-IP), and the IPv4 addresses of every node (the only
  sources IP-in-IP is accepted from).
Inputs: ``set_*`` calls with felix.model values (None deletes). Outputs: ``state()`` (the whole
desired model, always consistent) and ``take_dirty()`` (which keys changed since last taken).
Invariants: no I/O; the result depends only on the current inputs, never on their order (the
state-sequence tests check this); cost per endpoint update is O(active selectors + policies),
per policy update O(local endpoints + all endpoints for each newly used selector).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from felix.ipsetdefs import SetDef, rule_sets
from felix.model import (
    Direction,
    Endpoint,
    FrozenLabels,
    IPNet,
    NetworkSet,
    Policy,
    Pool,
    Profile,
    Tier,
    TierAction,
)
from policy._selector_ast import And, Contains, EndsWith, Eq, Expr, Has, In, Or, StartsWith
from policy.ordering import DEFAULT_TIER, sort_key

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TierPlan:
    """One tier's applicable policies for one endpoint and direction, in evaluation order."""

    name: str
    policies: tuple[str, ...]  # policy keys
    default_action: TierAction = "Deny"  # the tier's end: "Deny" (end-of-tier drop) or "Pass"


@dataclass(frozen=True, slots=True)
class EndpointPlan:
    """Everything the dataplane needs to program one local endpoint."""

    endpoint: Endpoint
    ingress: tuple[TierPlan, ...] = ()
    egress: tuple[TierPlan, ...] = ()
    profiles: tuple[str, ...] = ()
    # Host endpoints only:
    forward_ingress: tuple[TierPlan, ...] = ()
    forward_egress: tuple[TierPlan, ...] = ()
    pre_dnat_ingress: tuple[TierPlan, ...] = ()
    untracked_ingress: tuple[TierPlan, ...] = ()
    untracked_egress: tuple[TierPlan, ...] = ()


@dataclass(frozen=True, slots=True)
class SetState:
    definition: SetDef
    members_v4: frozenset[str]
    members_v6: frozenset[str]


@dataclass
class Dirty:
    """Keys whose desired state changed (added, changed or removed) since last taken."""

    endpoints: set[str] = field(default_factory=set)
    policies: set[str] = field(default_factory=set)
    profiles: set[str] = field(default_factory=set)
    sets: set[str] = field(default_factory=set)
    pools: bool = False
    hosts: bool = False  # the set of node addresses changed

    def __bool__(self) -> bool:
        changed = self.endpoints or self.policies or self.profiles or self.sets
        return bool(changed) or self.pools or self.hosts


@dataclass(frozen=True, slots=True)
class DesiredState:
    endpoints: dict[str, EndpointPlan]
    policies: dict[str, Policy]
    profiles: dict[str, Profile]
    sets: dict[str, SetState]
    pools: dict[str, Pool]
    # IPv4 BGP addresses of every node (IP-in-IP is accepted only from them).
    host_addresses: frozenset[IPv4Address] = frozenset()


def _member_text(net: IPNet) -> str:
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return str(net)


class Calculator:
    """Incremental, pure: feed it datastore state, read the node's desired dataplane model."""

    def __init__(self, hostname: str) -> None:
        self.hostname = hostname
        # Inputs.
        self._endpoints: dict[str, Endpoint] = {}
        self._policies: dict[str, Policy] = {}
        self._profiles: dict[str, Profile] = {}
        self._tiers: dict[str, Tier] = {}
        self._netsets: dict[str, NetworkSet] = {}
        self._pools: dict[str, Pool] = {}
        self._hosts: dict[str, IPv4Address] = {}  # node name -> its IPv4 BGP address
        # Effective labels (own labels over inherited profile labels) of every endpoint.
        self._eff_labels: dict[str, FrozenLabels] = {}
        self._profile_users: dict[str, set[str]] = defaultdict(set)  # profile -> endpoint keys
        # Local endpoint -> applicable policy keys; policy -> local endpoints using it.
        self._local_policies: dict[str, frozenset[str]] = {}
        self._policy_users: dict[str, set[str]] = defaultdict(set)
        self._active_profiles: dict[str, int] = defaultdict(int)
        self._plans: dict[str, EndpointPlan] = {}
        # Sets: who needs them, their definition and their members.
        self._set_defs: dict[str, SetDef] = {}
        self._set_refs: dict[str, int] = defaultdict(int)
        self._owner_sets: dict[str, tuple[str, ...]] = {}  # "policy:<key>" / "profile:<n>"
        self._set_sources: dict[str, dict[str, tuple[str, ...]]] = {}  # set -> source -> members
        self._set_counts: dict[str, dict[str, int]] = {}  # set -> member -> refcount
        self._set_cache: dict[str, SetState] = {}
        # Label index over every selector source (endpoints and network sets): which sources
        # carry a label value / a label key. Populating a set then evaluates its selector only
        # on the candidates the index allows instead of on every endpoint of the cluster.
        self._by_label: dict[tuple[str, str], set[str]] = defaultdict(set)
        self._by_key: dict[str, set[str]] = defaultdict(set)
        self._indexed: dict[str, FrozenLabels] = {}
        self._dirty = Dirty()

    # ------------------------------------------------------------------ inputs
    def set_endpoint(self, key: str, ep: Endpoint | None) -> None:
        old = self._endpoints.get(key)
        if ep is None:
            if old is None:
                return
            del self._endpoints[key]
        else:
            if old == ep:
                return
            self._endpoints[key] = ep
        if old is not None:
            for prof in old.profiles:
                self._profile_users[prof].discard(key)
        if ep is not None:
            for prof in ep.profiles:
                self._profile_users[prof].add(key)
        self._refresh_endpoint(key)

    def set_policy(self, key: str, pol: Policy | None) -> None:
        old = self._policies.get(key)
        if pol is None:
            if old is None:
                return
            del self._policies[key]
        else:
            if old == pol:
                return
            self._policies[key] = pol
        for ep_key in list(self._plans):
            self._resolve_one(ep_key, key, pol)
        if key in self._policy_users:
            # Still active: its rules (hence its sets) may have changed.
            self._activate_owner(f"policy:{key}", self._policy_rule_sets(pol) if pol else ())
            self._dirty.policies.add(key)

    def set_profile(self, name: str, prof: Profile | None) -> None:
        old = self._profiles.get(name)
        if prof is None:
            if old is None:
                return
            del self._profiles[name]
        else:
            if old == prof:
                return
            self._profiles[name] = prof
        old_labels = old.labels_to_apply if old is not None else {}
        new_labels = prof.labels_to_apply if prof is not None else {}
        if old_labels != new_labels:  # only then can the endpoints' effective labels change
            for ep_key in list(self._profile_users.get(name, ())):
                self._refresh_endpoint(ep_key)
        if self._active_profiles.get(name):
            self._activate_owner(f"profile:{name}", self._profile_rule_sets(prof) if prof else ())
            self._dirty.profiles.add(name)

    def set_tier(self, name: str, tier: Tier | None) -> None:
        if self._tiers.get(name) == tier:
            return
        if tier is None:
            self._tiers.pop(name, None)
        else:
            self._tiers[name] = tier
        for ep_key in list(self._plans):
            self._replan(ep_key)

    def set_network_set(self, key: str, ns: NetworkSet | None) -> None:
        old = self._netsets.get(key)
        if ns is None:
            if old is None:
                return
            del self._netsets[key]
        else:
            if old == ns:
                return
            self._netsets[key] = ns
        self._index(key, ns.labels if ns else None)
        self._refresh_memberships(
            key, ns.labels if ns else None, ns.nets if ns else (), None, is_netset=True
        )

    def set_pool(self, name: str, pool: Pool | None) -> None:
        if self._pools.get(name) == pool:
            return
        if pool is None:
            self._pools.pop(name, None)
        else:
            self._pools[name] = pool
        self._dirty.pools = True

    def set_host(self, name: str, address: IPv4Address | None) -> None:
        """A node's IPv4 BGP address (None: the node is gone or has none)."""
        if self._hosts.get(name) == address:
            return
        if address is None:
            del self._hosts[name]
        else:
            self._hosts[name] = address
        self._dirty.hosts = True

    # ------------------------------------------------------------------ outputs
    def take_dirty(self) -> Dirty:
        dirty, self._dirty = self._dirty, Dirty()
        return dirty

    def state(self) -> DesiredState:
        return DesiredState(
            endpoints=dict(self._plans),
            policies={k: self._policies[k] for k in self._policy_users if k in self._policies},
            profiles={
                k: self._profiles[k]
                for k, n in self._active_profiles.items()
                if n and k in self._profiles
            },
            sets={sid: self.set_state(sid) for sid in self._set_defs},
            pools=dict(self._pools),
            host_addresses=self.host_addresses,
        )

    def set_state(self, set_id: str) -> SetState:
        cached = self._set_cache.get(set_id)
        if cached is not None:
            return cached
        counts = self._set_counts.get(set_id, {})
        # IPv6 members have a ":" in their address part; IPv4 ones only in ",proto:port".
        v6 = frozenset(
            m for m in counts if ":" in m and ("," not in m or ":" in m.partition(",")[0])
        )
        v4 = frozenset(counts.keys() - v6) if v6 else frozenset(counts)
        st = SetState(self._set_defs[set_id], v4, v6)
        self._set_cache[set_id] = st
        return st

    def set_state_or_none(self, set_id: str) -> SetState | None:
        return self.set_state(set_id) if set_id in self._set_defs else None

    def plan(self, ep_key: str) -> EndpointPlan | None:
        return self._plans.get(ep_key)

    @property
    def policies(self) -> dict[str, Policy]:
        return self._policies

    @property
    def profiles(self) -> dict[str, Profile]:
        return self._profiles

    @property
    def pools(self) -> dict[str, Pool]:
        return self._pools

    @property
    def endpoints(self) -> dict[str, Endpoint]:
        """Every endpoint of the cluster (all nodes), by key; read-only for callers."""
        return self._endpoints

    @property
    def tiers(self) -> dict[str, Tier]:
        return self._tiers

    @property
    def network_sets(self) -> dict[str, NetworkSet]:
        return self._netsets

    def effective_labels(self, ep_key: str) -> FrozenLabels | None:
        """The labels selectors see for an endpoint: its own over its profiles' labelsToApply."""
        return self._eff_labels.get(ep_key)

    @property
    def host_addresses(self) -> frozenset[IPv4Address]:
        return frozenset(self._hosts.values())

    def local_endpoint_keys(self) -> Iterable[str]:
        return self._plans.keys()

    # ------------------------------------------------------------------ endpoints
    def _effective(self, ep: Endpoint) -> FrozenLabels:
        if not ep.profiles:
            return ep.labels
        # Calico's label inheritance: own labels first, then each profile in order, so an
        # earlier profile's label wins over a later one's (apply them last to first).
        merged: dict[str, str] = {}
        for prof_name in reversed(ep.profiles):
            prof = self._profiles.get(prof_name)
            if prof is not None:
                merged.update(prof.labels_to_apply)
        if not merged:
            return ep.labels
        merged.update(ep.labels)
        return FrozenLabels(merged)

    def _refresh_endpoint(self, key: str) -> None:
        ep = self._endpoints.get(key)
        labels = self._effective(ep) if ep is not None else None
        if labels is None:
            self._eff_labels.pop(key, None)
        else:
            self._eff_labels[key] = labels
        self._index(key, labels)
        self._refresh_memberships(key, labels, ep.nets if ep is not None else (), ep, False)
        is_local = ep is not None and ep.node == self.hostname
        if is_local:
            self._resolve_local(key)
        elif key in self._plans:
            self._drop_local(key)

    def _drop_local(self, key: str) -> None:
        old = self._local_policies.pop(key, frozenset())
        for pk in old:
            self._policy_unuse(pk, key)
        plan = self._plans.pop(key)
        for prof in plan.profiles:
            self._profile_unuse(prof)
        self._dirty.endpoints.add(key)

    def _policy_applies(self, pol: Policy, ep: Endpoint, labels: FrozenLabels) -> bool:
        if ep.kind == "workload" and (pol.pre_dnat or pol.do_not_track):
            return False  # Calico: pre-DNAT and untracked policies are for host endpoints only
        if pol.namespace is not None and (ep.kind != "workload" or ep.namespace != pol.namespace):
            return False
        return pol.selector.evaluate(labels)

    def _resolve_local(self, key: str) -> None:
        ep = self._endpoints.get(key)
        if ep is None or ep.node != self.hostname:
            return
        labels = self._eff_labels[key]
        new = frozenset(
            pk for pk, pol in self._policies.items() if self._policy_applies(pol, ep, labels)
        )
        old = self._local_policies.get(key, frozenset())
        self._local_policies[key] = new
        for pk in new - old:
            self._policy_use(pk, key)
        for pk in old - new:
            self._policy_unuse(pk, key)
        self._replan(key)

    def _resolve_one(self, ep_key: str, pk: str, pol: Policy | None) -> None:
        """Re-decide whether one policy applies to one local endpoint (O(1) per endpoint)."""
        ep = self._endpoints[ep_key]
        applies = pol is not None and self._policy_applies(pol, ep, self._eff_labels[ep_key])
        current = self._local_policies.get(ep_key, frozenset())
        was = pk in current
        if applies and not was:
            self._local_policies[ep_key] = current | {pk}
            self._policy_use(pk, ep_key)
        elif was and not applies:
            self._local_policies[ep_key] = current - {pk}
            self._policy_unuse(pk, ep_key)
        if applies or was:
            self._replan(ep_key)

    def _tier_order(self, name: str) -> float | None:
        tier = self._tiers.get(name)
        if tier is not None:
            return tier.order
        # The default tier exists implicitly and comes last, as in Calico.
        return None

    def _tier_action(self, name: str) -> TierAction:
        tier = self._tiers.get(name)
        return tier.default_action if tier is not None else "Deny"

    def _tiers_for(
        self, pols: Iterable[Policy], direction: Direction, variant: str
    ) -> tuple[TierPlan, ...]:
        by_tier: dict[str, list[Policy]] = defaultdict(list)
        want = "Ingress" if direction == "ingress" else "Egress"
        for pol in pols:
            if want not in pol.types:
                continue
            if variant == "normal" and (pol.pre_dnat or pol.do_not_track):
                continue
            if variant == "forward" and (
                not pol.apply_on_forward or pol.pre_dnat or pol.do_not_track
            ):
                continue
            if variant == "pre_dnat" and not pol.pre_dnat:
                continue
            if variant == "untracked" and not pol.do_not_track:
                continue
            # A policy whose tier does not exist is not enforced (Calico skips it too).
            if pol.tier != DEFAULT_TIER and pol.tier not in self._tiers:
                continue
            by_tier[pol.tier].append(pol)
        tiers = sorted(by_tier, key=lambda t: sort_key(self._tier_order(t), t))
        return tuple(
            TierPlan(
                t,
                tuple(p.key for p in sorted(by_tier[t], key=lambda p: sort_key(p.order, p.name))),
                self._tier_action(t),
            )
            for t in tiers
        )

    def _replan(self, key: str) -> None:
        ep = self._endpoints.get(key)
        if ep is None or ep.node != self.hostname:
            return
        pols = [self._policies[pk] for pk in self._local_policies.get(key, ())]
        if ep.kind == "workload":
            plan = EndpointPlan(
                endpoint=ep,
                ingress=self._tiers_for(pols, "ingress", "normal"),
                egress=self._tiers_for(pols, "egress", "normal"),
                profiles=ep.profiles,
            )
        else:
            plan = EndpointPlan(
                endpoint=ep,
                ingress=self._tiers_for(pols, "ingress", "normal"),
                egress=self._tiers_for(pols, "egress", "normal"),
                profiles=ep.profiles,
                forward_ingress=self._tiers_for(pols, "ingress", "forward"),
                forward_egress=self._tiers_for(pols, "egress", "forward"),
                pre_dnat_ingress=self._tiers_for(pols, "ingress", "pre_dnat"),
                untracked_ingress=self._tiers_for(pols, "ingress", "untracked"),
                untracked_egress=self._tiers_for(pols, "egress", "untracked"),
            )
        old = self._plans.get(key)
        if old == plan:
            return
        for prof in plan.profiles:
            self._profile_use(prof)
        if old is not None:
            for prof in old.profiles:
                self._profile_unuse(prof)
        self._plans[key] = plan
        self._dirty.endpoints.add(key)

    # ------------------------------------------------------------------ activity
    def _policy_use(self, pk: str, ep_key: str) -> None:
        users = self._policy_users[pk]
        users.add(ep_key)
        if len(users) == 1:
            pol = self._policies[pk]
            self._activate_owner(f"policy:{pk}", self._policy_rule_sets(pol))
            self._dirty.policies.add(pk)

    def _policy_unuse(self, pk: str, ep_key: str) -> None:
        users = self._policy_users.get(pk)
        if users is None:
            return
        users.discard(ep_key)
        if not users:
            del self._policy_users[pk]
            self._activate_owner(f"policy:{pk}", ())
            self._dirty.policies.add(pk)

    def _profile_use(self, name: str) -> None:
        self._active_profiles[name] += 1
        if self._active_profiles[name] == 1:
            prof = self._profiles.get(name)
            self._activate_owner(f"profile:{name}", self._profile_rule_sets(prof) if prof else ())
            self._dirty.profiles.add(name)

    def _profile_unuse(self, name: str) -> None:
        self._active_profiles[name] -= 1
        if self._active_profiles[name] <= 0:
            del self._active_profiles[name]
            self._activate_owner(f"profile:{name}", ())
            self._dirty.profiles.add(name)

    @staticmethod
    def _policy_rule_sets(pol: Policy) -> tuple[SetDef, ...]:
        out: list[SetDef] = []
        for rule in (*pol.ingress, *pol.egress):
            out.extend(rule_sets(rule, pol.namespace).all())
        return tuple(out)

    @staticmethod
    def _profile_rule_sets(prof: Profile) -> tuple[SetDef, ...]:
        out: list[SetDef] = []
        for rule in (*prof.ingress, *prof.egress):
            out.extend(rule_sets(rule, None).all())
        return tuple(out)

    def _activate_owner(self, owner: str, sets: Iterable[SetDef]) -> None:
        new = tuple(dict.fromkeys(s.id for s in sets))
        defs = {s.id: s for s in sets}
        old = self._owner_sets.get(owner, ())
        if new:
            self._owner_sets[owner] = new
        else:
            self._owner_sets.pop(owner, None)
        for sid in new:
            self._set_refs[sid] += 1
            if self._set_refs[sid] == 1:
                self._set_defs[sid] = defs[sid]
                self._populate_set(sid)
        for sid in old:
            self._set_refs[sid] -= 1
            if self._set_refs[sid] <= 0:
                del self._set_refs[sid]
                del self._set_defs[sid]
                self._set_sources.pop(sid, None)
                self._set_counts.pop(sid, None)
                self._set_cache.pop(sid, None)
                self._dirty.sets.add(sid)

    # ------------------------------------------------------------------ set members
    def _members_for(
        self,
        sdef: SetDef,
        labels: FrozenLabels | None,
        nets: tuple[IPNet, ...],
        ep: Endpoint | None,
    ) -> tuple[str, ...]:
        if labels is None or sdef.kind == "nets" or sdef.selector is None:
            return ()
        if not sdef.selector.evaluate(labels):
            return ()
        if sdef.kind == "selector":
            return tuple(_member_text(n) for n in nets)
        # Named port: only endpoints that declare it, as ip,proto:port for each address.
        if ep is None:
            return ()
        proto_name = {6: "tcp", 17: "udp", 132: "sctp"}.get(sdef.protocol or 6, "tcp")
        ports = [
            p.port for p in ep.ports if p.name == sdef.port_name and p.protocol == sdef.protocol
        ]
        return tuple(f"{n.network_address},{proto_name}:{port}" for n in nets for port in ports)

    def _index(self, key: str, labels: FrozenLabels | None) -> None:
        old = self._indexed.get(key)
        if old is labels or old == labels:
            if labels is not None:
                self._indexed[key] = labels
            return
        if old is not None:
            for item in old.items():
                bucket = self._by_label.get(item)
                if bucket is not None:
                    bucket.discard(key)
                    if not bucket:
                        del self._by_label[item]
            for k in old:
                bucket = self._by_key.get(k)
                if bucket is not None:
                    bucket.discard(key)
                    if not bucket:
                        del self._by_key[k]
        if labels is None:
            self._indexed.pop(key, None)
            return
        self._indexed[key] = labels
        for item in labels.items():
            self._by_label[item].add(key)
        for k in labels:
            self._by_key[k].add(key)

    def _candidates(self, expr: Expr) -> set[str] | None:
        """A superset of the sources ``expr`` can match, or None (any source may match)."""
        if isinstance(expr, Eq):
            return self._by_label.get((expr.key, expr.value), set())
        if isinstance(expr, In):
            out: set[str] = set()
            for v in expr.values:
                out |= self._by_label.get((expr.key, v), set())
            return out
        if isinstance(expr, (Has, Contains, StartsWith, EndsWith)):
            return self._by_key.get(expr.key, set())
        if isinstance(expr, And):
            best: set[str] | None = None
            for op in expr.operands:
                cand = self._candidates(op)
                if cand is not None and (best is None or len(cand) < len(best)):
                    best = cand
            return best
        if isinstance(expr, Or):
            union: set[str] = set()
            for op in expr.operands:
                cand = self._candidates(op)
                if cand is None:
                    return None
                union |= cand
            return union
        return None

    def _populate_set(self, sid: str) -> None:
        sdef = self._set_defs[sid]
        sources: dict[str, tuple[str, ...]] = {}
        counts: dict[str, int] = defaultdict(int)
        if sdef.kind == "nets":
            for net in sdef.nets:
                counts[_member_text(net)] += 1
            sources["<static>"] = tuple(counts)
        else:
            assert sdef.selector is not None
            cands = self._candidates(sdef.selector.expr)
            ep_keys: Iterable[str] = self._endpoints if cands is None else cands
            for key in ep_keys:
                ep = self._endpoints.get(key)
                if ep is None:
                    continue
                members = self._members_for(sdef, self._eff_labels.get(key), ep.nets, ep)
                if members:
                    sources[key] = members
            if sdef.kind == "selector":
                ns_keys: Iterable[str] = self._netsets if cands is None else cands
                for key in ns_keys:
                    ns = self._netsets.get(key)
                    if ns is None:
                        continue
                    members = self._members_for(sdef, ns.labels, ns.nets, None)
                    if members:
                        sources[key] = members
            for members in sources.values():
                for m in members:
                    counts[m] += 1
        self._set_sources[sid] = sources
        self._set_counts[sid] = dict(counts)
        self._set_cache.pop(sid, None)
        self._dirty.sets.add(sid)

    def _refresh_memberships(
        self,
        key: str,
        labels: FrozenLabels | None,
        nets: tuple[IPNet, ...],
        ep: Endpoint | None,
        is_netset: bool,
    ) -> None:
        for sid, sdef in self._set_defs.items():
            if sdef.kind == "nets" or (is_netset and sdef.kind != "selector"):
                continue
            members = self._members_for(sdef, labels, nets, ep)
            sources = self._set_sources[sid]
            old = sources.get(key, ())
            if old == members:
                continue
            counts = self._set_counts[sid]
            for m in old:
                counts[m] -= 1
                if counts[m] == 0:
                    del counts[m]
            for m in members:
                counts[m] = counts.get(m, 0) + 1
            if members:
                sources[key] = members
            else:
                sources.pop(key, None)
            if set(old) != set(members):
                self._set_cache.pop(sid, None)
                self._dirty.sets.add(sid)
