"""Felix's own view of the datastore: the few facts the calculation needs, as frozen values.

Role: decouple the pure calculation (``felix.calc``) from the datastore's resource classes.
``felix.inputs`` converts decoded Calico resources into these values; tests build them directly.
Inputs: nothing (value types only). Outputs: value types.
Invariants: everything is immutable and hashable; addresses are ``ipaddress`` types; labels are
already the *effective* labels used for selector matching (see ``felix.inputs``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network
from typing import Literal

from policy.rules import Rule
from policy.selector import Selector

IPNet = IPv4Network | IPv6Network
EndpointKind = Literal["workload", "host"]
Direction = Literal["ingress", "egress"]

NAMESPACE_LABEL = "projectcalico.org/namespace"
ORCHESTRATOR_LABEL = "projectcalico.org/orchestrator"
SERVICE_ACCOUNT_LABEL = "projectcalico.org/serviceaccount"
NAMESPACE_NAME_LABEL = "projectcalico.org/name"
# Namespace labels are copied onto endpoints with this prefix; namespaceSelector is rewritten to
# match them (Calico's convention, so Calico manifests behave the same).
NAMESPACE_LABEL_PREFIX = "pcns."
SERVICE_ACCOUNT_LABEL_PREFIX = "pcsa."


class FrozenLabels(dict[str, str]):
    """An immutable, hashable label mapping (a dict, so compiled selectors read it at C speed)."""

    __slots__ = ("_h",)

    def __init__(self, items: Mapping[str, str] | None = None) -> None:
        super().__init__(items or {})
        self._h: int | None = None

    def __hash__(self) -> int:  # type: ignore[override]
        if self._h is None:
            self._h = hash(frozenset(self.items()))
        return self._h

    def _immutable(self, *args: object, **kwargs: object) -> None:
        raise TypeError("FrozenLabels is immutable")

    __setitem__ = _immutable
    __delitem__ = _immutable
    update = _immutable
    pop = _immutable  # type: ignore[assignment]
    popitem = _immutable  # type: ignore[assignment]
    clear = _immutable
    setdefault = _immutable  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"FrozenLabels({dict(self)!r})"


@dataclass(frozen=True, slots=True)
class NamedPortSpec:
    """A named port an endpoint declares (WEP/HEP ``spec.ports``)."""

    name: str
    protocol: int
    port: int


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A workload or host endpoint anywhere in the cluster (local ones get programmed)."""

    key: str  # "wep/<namespace>/<name>" or "hep/<name>"
    kind: EndpointKind
    node: str
    name: str
    namespace: str | None
    iface: str | None  # WEP interfaceName; HEP interfaceName, "*" for all host interfaces
    ipv4: tuple[IPv4Network, ...] = ()
    ipv6: tuple[IPv6Network, ...] = ()
    labels: FrozenLabels = field(default_factory=FrozenLabels)  # own labels (+ derived ones)
    profiles: tuple[str, ...] = ()
    ports: tuple[NamedPortSpec, ...] = ()
    allow_spoofed: tuple[IPNet, ...] = ()
    mac: str | None = None

    @property
    def nets(self) -> tuple[IPNet, ...]:
        return (*self.ipv4, *self.ipv6)


@dataclass(frozen=True, slots=True)
class Policy:
    """A NetworkPolicy or GlobalNetworkPolicy, with its namespace scoping already applied."""

    key: str  # "gnp/<name>" or "np/<namespace>/<name>"
    name: str
    namespace: str | None
    tier: str
    order: float | None
    selector: Selector  # effective: includes namespace scoping for NetworkPolicy
    types: frozenset[str]  # "Ingress" / "Egress", as Calico spells them
    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()
    do_not_track: bool = False
    pre_dnat: bool = False
    apply_on_forward: bool = False


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()
    labels_to_apply: FrozenLabels = field(default_factory=FrozenLabels)


TierAction = Literal["Deny", "Pass"]


@dataclass(frozen=True, slots=True)
class Tier:
    """``default_action``: what happens at the end of the tier to traffic that no policy of the
    tier allowed, denied or passed: ``Deny`` (Calico's default) or ``Pass`` (to the next tier)."""

    name: str
    order: float | None
    default_action: TierAction = "Deny"


@dataclass(frozen=True, slots=True)
class NetworkSet:
    """A NetworkSet (namespaced) or GlobalNetworkSet: labelled nets that selectors can match."""

    key: str  # "gns/<name>" or "ns/<namespace>/<name>"
    namespace: str | None
    labels: FrozenLabels
    nets: tuple[IPNet, ...]


@dataclass(frozen=True, slots=True)
class Pool:
    name: str
    cidr: IPNet
    nat_outgoing: bool = False
    disabled: bool = False
    ipip_mode: str = "Never"
