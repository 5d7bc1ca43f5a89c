"""From datastore updates to calculation inputs: decode, validate, convert, feed.

Role: felix's syncer hands over ``Update(key, value | None, revision)``; this module decodes each
with the datastore codec, converts the resource into felix's model (``felix.model``) and calls
the matching ``Calculator.set_*``. FelixConfiguration resources are kept for ``felix.config``.
Nodes contribute only their IPv4 BGP address (``Calculator.set_host``: the IP-in-IP filter).
Inputs: syncer updates. Outputs: calls on the calculator; ``felix_configs``.
Invariants: an invalid value (bad JSON, failed validation, wrong key) is treated as *absent*:
the previous valid version of that key is removed from the calculation and one warning naming the
key and every field problem is logged (once per key and revision). Bad data never raises out of
``apply_update`` and never affects other keys.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Network, ip_network

from datastore import kinds
from datastore.codec import decode
from datastore.errors import ValidationError
from datastore.keys import RESOURCES_ROOT, kind_prefix
from datastore.model import (
    FelixConfigurationSpec,
    GlobalNetworkPolicySpec,
    GlobalNetworkSetSpec,
    HostEndpointSpec,
    IPPoolSpec,
    NetworkPolicySpec,
    NetworkSetSpec,
    NodeSpec,
    ProfileSpec,
    Resource,
    TierSpec,
    WorkloadEndpointSpec,
)
from datastore.syncer import Update
from felix.calc import Calculator
from felix.model import (
    NAMESPACE_LABEL,
    NAMESPACE_LABEL_PREFIX,
    NAMESPACE_NAME_LABEL,
    ORCHESTRATOR_LABEL,
    SERVICE_ACCOUNT_LABEL,
    Endpoint,
    FrozenLabels,
    NamedPortSpec,
    NetworkSet,
    Policy,
    Pool,
    Profile,
    Tier,
    TierAction,
)
from policy._selector_ast import And, Eq
from policy.engine import namespace_selector_expr
from policy.selector import ALL, Selector

log = logging.getLogger(__name__)

FELIX_KINDS = (
    kinds.WORKLOAD_ENDPOINT,
    kinds.HOST_ENDPOINT,
    kinds.NETWORK_POLICY,
    kinds.GLOBAL_NETWORK_POLICY,
    kinds.PROFILE,
    kinds.TIER,
    kinds.NETWORK_SET,
    kinds.GLOBAL_NETWORK_SET,
    kinds.IP_POOL,
    kinds.FELIX_CONFIGURATION,
    kinds.NODE,
)


def felix_prefixes() -> list[str]:
    """The etcd prefixes felix watches (one per kind; they never overlap)."""
    return [kind_prefix(k.kind) for k in FELIX_KINDS]


def _net(addr: IPv4Address | object) -> IPv4Network | IPv6Network:
    return ip_network(str(addr))


def workload_endpoint(res: Resource) -> Endpoint:
    spec = res.spec
    assert isinstance(spec, WorkloadEndpointSpec)
    ns = res.metadata.namespace or "default"
    labels: dict[str, str] = dict(res.metadata.labels)
    labels[NAMESPACE_LABEL] = ns
    labels[NAMESPACE_LABEL_PREFIX + NAMESPACE_NAME_LABEL] = ns
    if spec.orchestrator:
        labels[ORCHESTRATOR_LABEL] = spec.orchestrator
    if spec.service_account_name:
        labels[SERVICE_ACCOUNT_LABEL] = spec.service_account_name
    v4 = tuple(n for n in spec.ip_networks if isinstance(n, IPv4Network))
    v6 = tuple(n for n in spec.ip_networks if isinstance(n, IPv6Network))
    return Endpoint(
        key=f"wep/{ns}/{res.metadata.name}",
        kind="workload",
        node=spec.node,
        name=res.metadata.name,
        namespace=ns,
        iface=spec.interface_name or None,
        ipv4=v4,
        ipv6=v6,
        labels=FrozenLabels(labels),
        profiles=tuple(spec.profiles),
        ports=tuple(NamedPortSpec(p.name, p.protocol, p.port) for p in spec.ports if p.name),
        allow_spoofed=tuple(spec.allow_spoofed_source_prefixes),
        mac=spec.mac or None,
    )


def host_endpoint(res: Resource) -> Endpoint:
    spec = res.spec
    assert isinstance(spec, HostEndpointSpec)
    nets = [_net(a) for a in spec.expected_ips]
    return Endpoint(
        key=f"hep/{res.metadata.name}",
        kind="host",
        node=spec.node,
        name=res.metadata.name,
        namespace=None,
        iface=spec.interface_name or None,
        ipv4=tuple(n for n in nets if isinstance(n, IPv4Network)),
        ipv6=tuple(n for n in nets if isinstance(n, IPv6Network)),
        labels=FrozenLabels(res.metadata.labels),
        profiles=tuple(spec.profiles),
        ports=tuple(NamedPortSpec(p.name, p.protocol, p.port) for p in spec.ports if p.name),
    )


def network_policy(res: Resource) -> Policy:
    spec = res.spec
    assert isinstance(spec, NetworkPolicySpec)
    ns = res.metadata.namespace or "default"
    own = spec.selector or ALL
    selector = Selector.from_expr(And((own.expr, Eq(NAMESPACE_LABEL, ns))))
    return Policy(
        key=f"np/{ns}/{res.metadata.name}",
        name=res.metadata.name,
        namespace=ns,
        tier=spec.tier,
        order=spec.order,
        selector=selector,
        types=frozenset(spec.types),
        ingress=spec.ingress,
        egress=spec.egress,
    )


def global_network_policy(res: Resource) -> Policy:
    spec = res.spec
    assert isinstance(spec, GlobalNetworkPolicySpec)
    selector = spec.selector or ALL
    if spec.namespace_selector is not None:
        selector = Selector.from_expr(
            And((namespace_selector_expr(spec.namespace_selector.expr), selector.expr))
        )
    return Policy(
        key=f"gnp/{res.metadata.name}",
        name=res.metadata.name,
        namespace=None,
        tier=spec.tier,
        order=spec.order,
        selector=selector,
        types=frozenset(spec.types),
        ingress=spec.ingress,
        egress=spec.egress,
        do_not_track=spec.do_not_track,
        pre_dnat=spec.pre_dnat,
        apply_on_forward=spec.apply_on_forward,
    )


def profile(res: Resource) -> Profile:
    spec = res.spec
    assert isinstance(spec, ProfileSpec)
    return Profile(
        name=res.metadata.name,
        ingress=spec.ingress,
        egress=spec.egress,
        labels_to_apply=FrozenLabels(spec.labels_to_apply),
    )


def network_set(res: Resource) -> NetworkSet:
    spec = res.spec
    labels = dict(res.metadata.labels)
    if isinstance(spec, NetworkSetSpec):
        ns = res.metadata.namespace or "default"
        labels[NAMESPACE_LABEL] = ns
        labels[NAMESPACE_LABEL_PREFIX + NAMESPACE_NAME_LABEL] = ns
        return NetworkSet(
            f"ns/{ns}/{res.metadata.name}", ns, FrozenLabels(labels), tuple(spec.nets)
        )
    assert isinstance(spec, GlobalNetworkSetSpec)
    return NetworkSet(f"gns/{res.metadata.name}", None, FrozenLabels(labels), tuple(spec.nets))


def pool(res: Resource) -> Pool | None:
    spec = res.spec
    assert isinstance(spec, IPPoolSpec)
    if spec.cidr is None:
        return None
    return Pool(res.metadata.name, spec.cidr, spec.nat_outgoing, spec.disabled, spec.ipip_mode)


def node_address(res: Resource) -> IPv4Address | None:
    """A Node's IPv4 BGP address (``spec.bgp.ipv4Address`` without its prefix length)."""
    spec = res.spec
    assert isinstance(spec, NodeSpec)
    if spec.bgp is None or spec.bgp.ipv4_address is None:
        return None
    return spec.bgp.ipv4_address.ip


@dataclass
class InputState:
    """Applies syncer updates to a calculator; remembers what each key contributed."""

    calc: Calculator
    felix_configs: dict[str, FelixConfigurationSpec] = field(default_factory=dict)
    invalid: dict[str, int] = field(default_factory=dict)  # key -> revision logged
    config_changed: bool = False

    def apply_update(self, upd: Update) -> None:
        key = upd.key
        rel = key[len(RESOURCES_ROOT) :] if key.startswith(RESOURCES_ROOT) else key
        plural = rel.split("/", 1)[0]
        res: Resource | None = None
        if upd.value is not None:
            try:
                res = decode(key, upd.value, upd.revision)
            except ValidationError as exc:
                if self.invalid.get(key) != upd.revision:
                    self.invalid[key] = upd.revision
                    log.warning(
                        "inputs.invalid key=%s revision=%d problems=%s",
                        key,
                        upd.revision,
                        "; ".join(str(e) for e in exc.errors) or str(exc),
                    )
                res = None
            else:
                self.invalid.pop(key, None)
        try:
            self._dispatch(plural, rel, res)
        except Exception:  # never let one resource break the agent
            log.exception("inputs.convert_failed key=%s", key)
            self._dispatch(plural, rel, None)

    def _dispatch(self, plural: str, rel: str, res: Resource | None) -> None:
        c = self.calc
        parts = rel.split("/")
        if plural == kinds.WORKLOAD_ENDPOINT.plural_lower:
            c.set_endpoint(f"wep/{parts[1]}/{parts[-1]}", workload_endpoint(res) if res else None)
        elif plural == kinds.HOST_ENDPOINT.plural_lower:
            c.set_endpoint(f"hep/{parts[-1]}", host_endpoint(res) if res else None)
        elif plural == kinds.NETWORK_POLICY.plural_lower:
            c.set_policy(f"np/{parts[1]}/{parts[-1]}", network_policy(res) if res else None)
        elif plural == kinds.GLOBAL_NETWORK_POLICY.plural_lower:
            c.set_policy(f"gnp/{parts[-1]}", global_network_policy(res) if res else None)
        elif plural == kinds.PROFILE.plural_lower:
            c.set_profile(parts[-1], profile(res) if res else None)
        elif plural == kinds.TIER.plural_lower:
            spec = res.spec if res is not None and isinstance(res.spec, TierSpec) else None
            order = spec.order if spec is not None else None
            action: TierAction = (
                "Pass" if spec is not None and spec.default_action == "Pass" else "Deny"
            )
            c.set_tier(parts[-1], Tier(parts[-1], order, action) if res else None)
        elif plural == kinds.NETWORK_SET.plural_lower:
            c.set_network_set(f"ns/{parts[1]}/{parts[-1]}", network_set(res) if res else None)
        elif plural == kinds.GLOBAL_NETWORK_SET.plural_lower:
            c.set_network_set(f"gns/{parts[-1]}", network_set(res) if res else None)
        elif plural == kinds.IP_POOL.plural_lower:
            c.set_pool(parts[-1], pool(res) if res else None)
        elif plural == kinds.NODE.plural_lower:
            c.set_host(parts[-1], node_address(res) if res else None)
        elif plural == kinds.FELIX_CONFIGURATION.plural_lower:
            name = parts[-1]
            old = self.felix_configs.get(name)
            if res is None:
                self.felix_configs.pop(name, None)
            else:
                assert isinstance(res.spec, FelixConfigurationSpec)
                self.felix_configs[name] = res.spec
            if old != self.felix_configs.get(name):
                self.config_changed = True
