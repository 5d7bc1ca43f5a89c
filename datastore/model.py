"""The typed Calico v3 resource model: one import for every kind's classes.

Role: re-export ``Metadata``, ``Resource``, the spec/status/nested dataclasses of all 14 kinds
and the kind registry, importing every ``model_*`` module so that all kinds are registered.

Layout:
* ``model_base``: ``Metadata``, ``Resource``, ``Spec``, ``KindModel`` registry.
* ``model_endpoints``: WorkloadEndpoint, HostEndpoint, NetworkSet, GlobalNetworkSet.
* ``model_policy``: NetworkPolicy, GlobalNetworkPolicy, Profile, Tier.
* ``model_network``: IPPool, BGPConfiguration, BGPPeer, Node.
* ``model_config``: FelixConfiguration, ClusterInformation.
* ``schema``: the declarative field machinery they are all written in.

Invariants: every value is a frozen, hashable dataclass; past this layer addresses are
``ipaddress`` objects, selectors are ``policy.selector.Selector`` and rules ``policy.rules.Rule``.
Build resources with ``datastore.codec.resource_from_dict`` (which validates); constructing the
dataclasses directly bypasses validation.
"""

from __future__ import annotations

from datastore.model_base import (
    API_VERSION,
    KindModel,
    Metadata,
    Resource,
    Spec,
    kind_model,
    register,
    registered_kinds,
)
from datastore.model_config import (
    FELIX_OPAQUE_FIELDS,
    ClusterInformationSpec,
    FelixConfigurationSpec,
    ProtoPort,
)
from datastore.model_endpoints import (
    IPNAT,
    EndpointPort,
    GlobalNetworkSetSpec,
    HostEndpointSpec,
    NetworkSetSpec,
    WorkloadEndpointPort,
    WorkloadEndpointSpec,
)
from datastore.model_network import (
    BGPConfigurationSpec,
    BGPPassword,
    BGPPeerSpec,
    Community,
    IPPoolSpec,
    NodeAddress,
    NodeBGPSpec,
    NodeInterface,
    NodeSpec,
    NodeStatus,
    NodeWireguardSpec,
    OrchRef,
    PeerAddress,
    PrefixAdvertisement,
    SecretKeyRef,
    ServiceIPBlock,
)
from datastore.model_policy import (
    DEFAULT_TIER_ORDER,
    EGRESS,
    INGRESS,
    GlobalNetworkPolicySpec,
    NetworkPolicySpec,
    ProfileSpec,
    TierSpec,
    default_policy_types,
)
from datastore.schema import FrozenMap

__all__ = [
    "API_VERSION",
    "DEFAULT_TIER_ORDER",
    "EGRESS",
    "FELIX_OPAQUE_FIELDS",
    "INGRESS",
    "IPNAT",
    "SPEC_TYPES",
    "BGPConfigurationSpec",
    "BGPPassword",
    "BGPPeerSpec",
    "ClusterInformationSpec",
    "Community",
    "EndpointPort",
    "FelixConfigurationSpec",
    "FrozenMap",
    "GlobalNetworkPolicySpec",
    "GlobalNetworkSetSpec",
    "HostEndpointSpec",
    "IPPoolSpec",
    "KindModel",
    "Metadata",
    "NetworkPolicySpec",
    "NetworkSetSpec",
    "NodeAddress",
    "NodeBGPSpec",
    "NodeInterface",
    "NodeSpec",
    "NodeStatus",
    "NodeWireguardSpec",
    "OrchRef",
    "PeerAddress",
    "PrefixAdvertisement",
    "ProfileSpec",
    "ProtoPort",
    "Resource",
    "SecretKeyRef",
    "ServiceIPBlock",
    "Spec",
    "TierSpec",
    "WorkloadEndpointPort",
    "WorkloadEndpointSpec",
    "default_policy_types",
    "kind_model",
    "register",
    "registered_kinds",
]

# CamelCase kind -> its spec dataclass (e.g. for isinstance checks in consumers).
SPEC_TYPES: dict[str, type[Spec]] = {}
for _kind in registered_kinds():
    _model = kind_model(_kind)
    assert _model is not None
    SPEC_TYPES[_kind] = _model.spec.cls
