"""The resource kinds tabby models, with the names calicoctl accepts for them.

Role: map any user-supplied kind name (singular, plural, short alias, any case) to one
``KindInfo``; give the etcd key layer the lowercase plural Calico's etcdv3 backend uses.

Inputs: kind names typed by users or found in documents/keys. Outputs: ``KindInfo`` values.
Invariants: ``KindInfo.kind`` is the CamelCase kind used in documents ("GlobalNetworkPolicy");
``plural_lower`` is the etcd key component ("globalnetworkpolicies"), exactly as Calico's
``libcalico-go/lib/backend/model/resource.go`` registers it; aliases are the lists calicoctl's
resource manager registers (plus the lowercase kind and a few tabby extras noted below); no
alias maps to two kinds.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from datastore.errors import UnknownKindError

__all__ = [
    "ALL_KINDS",
    "BGP_CONFIGURATION",
    "BGP_PEER",
    "CLUSTER_INFORMATION",
    "FELIX_CONFIGURATION",
    "GLOBAL_NETWORK_POLICY",
    "GLOBAL_NETWORK_SET",
    "HOST_ENDPOINT",
    "IP_POOL",
    "NETWORK_POLICY",
    "NETWORK_SET",
    "NODE",
    "PROFILE",
    "TIER",
    "WORKLOAD_ENDPOINT",
    "KindInfo",
    "kind_by_plural",
    "lookup_kind",
]


@dataclass(frozen=True, slots=True)
class KindInfo:
    """Static facts about one kind."""

    kind: str
    plural_lower: str
    namespaced: bool
    aliases: tuple[str, ...]


def _k(kind: str, plural: str, namespaced: bool, *aliases: str) -> KindInfo:
    names = [kind.lower(), plural]
    names.extend(a for a in aliases if a not in names)
    return KindInfo(kind, plural, namespaced, tuple(names))


# Aliases: calicoctl's resourcemgr registrations (calicoctl/calicoctl/resourcemgr/*.go).
# tabby extras (not accepted by calicoctl): "netset", "gnetset", "gns".
WORKLOAD_ENDPOINT = _k("WorkloadEndpoint", "workloadendpoints", True, "wep", "weps")
HOST_ENDPOINT = _k("HostEndpoint", "hostendpoints", False, "hep", "heps")
NETWORK_POLICY = _k(
    "NetworkPolicy",
    "networkpolicies",
    True,
    "policy",
    "policies",
    "np",
    "pol",
    "pols",
    "netpol",
    "netpols",
)
GLOBAL_NETWORK_POLICY = _k("GlobalNetworkPolicy", "globalnetworkpolicies", False, "gnp", "gnps")
PROFILE = _k("Profile", "profiles", False, "pro", "pros")
TIER = _k("Tier", "tiers", False)
NETWORK_SET = _k("NetworkSet", "networksets", True, "netsets", "netset")
GLOBAL_NETWORK_SET = _k(
    "GlobalNetworkSet", "globalnetworksets", False, "gnetsets", "gnetset", "gns"
)
IP_POOL = _k("IPPool", "ippools", False, "ipp", "ipps", "pool", "pools")
BGP_CONFIGURATION = _k("BGPConfiguration", "bgpconfigurations", False, "bgpconfig", "bgpconfigs")
BGP_PEER = _k("BGPPeer", "bgppeers", False, "bgpp", "bgpps", "bp", "bps")
NODE = _k("Node", "nodes", False, "no", "nos")
FELIX_CONFIGURATION = _k(
    "FelixConfiguration", "felixconfigurations", False, "felixconfig", "felixconfigs"
)
CLUSTER_INFORMATION = _k(
    "ClusterInformation", "clusterinformations", False, "clusterinfo", "clusterinfos"
)

ALL_KINDS: tuple[KindInfo, ...] = (
    WORKLOAD_ENDPOINT,
    HOST_ENDPOINT,
    NETWORK_POLICY,
    GLOBAL_NETWORK_POLICY,
    PROFILE,
    TIER,
    NETWORK_SET,
    GLOBAL_NETWORK_SET,
    IP_POOL,
    BGP_CONFIGURATION,
    BGP_PEER,
    NODE,
    FELIX_CONFIGURATION,
    CLUSTER_INFORMATION,
)


def _build_index() -> dict[str, KindInfo]:
    index: dict[str, KindInfo] = {}
    for info in ALL_KINDS:
        for alias in info.aliases:
            if alias in index:  # pragma: no cover - guarded by a unit test
                raise AssertionError(f"alias {alias!r} registered twice")
            index[alias] = info
    return index


_BY_ALIAS = _build_index()
_BY_PLURAL = {info.plural_lower: info for info in ALL_KINDS}
_BY_KIND = {info.kind: info for info in ALL_KINDS}


def lookup_kind(name: str) -> KindInfo:
    """Resolve a kind name as calicoctl would: singular, plural or short alias, any case.

    Raises ``UnknownKindError`` naming the input, a close match when there is one, and the
    accepted kinds.
    """
    if isinstance(name, str):
        hit = _BY_KIND.get(name) or _BY_ALIAS.get(name.strip().lower())
        if hit is not None:
            return hit
    text = name if isinstance(name, str) else repr(name)
    close = difflib.get_close_matches(str(text).lower(), list(_BY_ALIAS), n=1, cutoff=0.75)
    hint = f" (did you mean {_BY_ALIAS[close[0]].kind}?)" if close else ""
    kinds = ", ".join(sorted(i.kind for i in ALL_KINDS))
    raise UnknownKindError(
        f"unknown resource kind {text!r}{hint}; known kinds: {kinds}"
        " (plural and short names such as gnp, wep, hep, ippool, bgppeer also work)"
    )


def kind_by_plural(plural: str) -> KindInfo | None:
    """The kind whose etcd key component is exactly ``plural`` (lowercase), or None."""
    return _BY_PLURAL.get(plural)
