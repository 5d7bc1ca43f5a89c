"""Routing kinds: IPPool, BGPConfiguration, BGPPeer, Node.

Role: typed specs with ``ipaddress`` values and validation mirroring Calico's:
* IPPool: ``cidr`` required and strictly masked, not overlapping link-local; ``blockSize``
  defaults to 26 (IPv4) / 122 (IPv6) and must be 20..32 / 116..128 and no smaller than the pool
  prefix (unless the pool is disabled); ``ipipMode``/``vxlanMode`` default to ``Never``, are not
  both enabled, and IPIP is IPv4-only; ``allowedUses`` defaults to ``[Workload, Tunnel]`` and
  ``LoadBalancer`` excludes the others.
* BGPPeer: ``peerIP`` is ``addr``, ``addr:port`` or ``[v6addr]:port``; ``node``/``nodeSelector``
  and ``peerIP``/``peerSelector`` are mutually exclusive; one of ``peerIP``/``peerSelector`` (or
  ``localWorkloadSelector``) is required; an explicit ``peerIP`` needs ``asNumber``;
  ``asNumber`` is refused with ``peerSelector``. ``holdTime`` is a tabby extension (Calico has
  only ``keepaliveTime``/``maxRestartTime``): 0 or 3s..65535s, and greater than keepaliveTime.
* Node: ``bgp.ipv4Address``/``ipv6Address`` carry a prefix length ("198.51.100.2/24"; a bare
  address means /32, /128) and are always rendered with it; ``routeReflectorClusterID`` is an
  IPv4 dotted quad; an empty ``bgp`` object is refused.

Outputs: registered ``KindModel``s; classes re-exported by ``datastore.model``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface

from datastore.kinds import BGP_CONFIGURATION, BGP_PEER, IP_POOL, NODE
from datastore.model_base import KindModel, Spec, register
from datastore.model_endpoints import check_interface_name
from datastore.schema import (
    EMPTY_MAP,
    INVALID,
    ASNumberType,
    BoolType,
    DurationType,
    EnumType,
    Errors,
    FieldType,
    FrozenMap,
    IntType,
    IPAddress,
    IPAddressType,
    IPInterface,
    IPInterfaceType,
    IPNetwork,
    IPNetworkType,
    ListType,
    Schema,
    SelectorType,
    StrType,
    StructType,
    check_dns_subdomain,
    json_type_name,
)
from datastore.schema import field as f
from policy.selector import Selector

__all__ = [
    "BGPConfigurationSpec",
    "BGPPassword",
    "BGPPeerSpec",
    "Community",
    "IPPoolSpec",
    "NodeAddress",
    "NodeBGPSpec",
    "NodeInterface",
    "NodeSpec",
    "NodeStatus",
    "NodeWireguardSpec",
    "OrchRef",
    "PeerAddress",
    "PrefixAdvertisement",
    "SecretKeyRef",
    "ServiceIPBlock",
]

_NAME = StrType(check_dns_subdomain, max_len=253)
_BOOL = BoolType()
_MODES = ("Never", "CrossSubnet", "Always")
_V4_LINK_LOCAL = ipaddress.ip_network("169.254.0.0/16")
_V6_LINK_LOCAL = ipaddress.ip_network("fe80::/10")
_LOG_LEVELS = EnumType("Trace", "Debug", "Info", "Warning", "Error", "Fatal", fold=True)


# --------------------------------------------------------------------------- shared structs


@dataclass(frozen=True, slots=True)
class SecretKeyRef(Spec):
    """A key of a Kubernetes secret in calico-node's namespace."""

    name: str = ""
    key: str = ""
    optional: bool | None = None


SECRET_KEY_REF_SCHEMA = Schema(
    SecretKeyRef,
    [
        f("name", "name", StrType(max_len=253), "", required=True),
        f("key", "key", StrType(max_len=253), "", required=True),
        f("optional", "optional", _BOOL),
    ],
)


@dataclass(frozen=True, slots=True)
class BGPPassword(Spec):
    """Where a BGP session password comes from."""

    secret_key_ref: SecretKeyRef | None = None


BGP_PASSWORD_SCHEMA = Schema(
    BGPPassword,
    [f("secret_key_ref", "secretKeyRef", StructType(SECRET_KEY_REF_SCHEMA), required=True)],
)


# --------------------------------------------------------------------------- IPPool


@dataclass(frozen=True, slots=True)
class IPPoolSpec(Spec):
    """A range workload (and tunnel) addresses are allocated from, in blocks."""

    cidr: IPNetwork | None = None
    vxlan_mode: str = "Never"
    ipip_mode: str = "Never"
    nat_outgoing: bool = False
    disabled: bool = False
    disable_bgp_export: bool = False
    block_size: int = 0
    node_selector: Selector | None = None
    namespace_selector: Selector | None = None
    allowed_uses: tuple[str, ...] = ()
    assignment_mode: str = ""


def _finish_pool(pool: IPPoolSpec, path: str, errs: Errors) -> object:
    cidr = pool.cidr
    if cidr is None:  # required: already reported
        return pool
    v6 = cidr.version == 6
    block = pool.block_size or (122 if v6 else 26)
    low, high = (116, 128) if v6 else (20, 32)
    if not low <= block <= high:
        errs.add(f"{path}.blockSize", f"block size {block} must be within {low}..{high}")
    elif not pool.disabled and cidr.prefixlen > block:
        errs.add(
            f"{path}.cidr",
            f"pool {cidr} is smaller than one block (/{block}); use a shorter prefix or a larger"
            " blockSize",
        )
    if v6 and pool.ipip_mode != "Never":
        errs.add(f"{path}.ipipMode", "IPIP is not supported on an IPv6 pool; use Never")
    if pool.ipip_mode != "Never" and pool.vxlan_mode != "Never":
        errs.add(f"{path}.ipipMode", "ipipMode and vxlanMode cannot both be enabled")
    link_local = _V6_LINK_LOCAL if v6 else _V4_LINK_LOCAL
    if cidr.overlaps(link_local):
        errs.add(f"{path}.cidr", f"pool {cidr} overlaps the link-local range {link_local}")
    uses = pool.allowed_uses or ("Workload", "Tunnel")
    if "LoadBalancer" in uses and len(uses) > 1:
        errs.add(f"{path}.allowedUses", "LoadBalancer cannot be combined with other uses")
    if "LoadBalancer" in uses and (pool.ipip_mode != "Never" or pool.vxlan_mode != "Never"):
        errs.add(f"{path}.ipipMode", "a LoadBalancer pool cannot use IPIP or VXLAN")
    return dataclasses.replace(pool, block_size=block, allowed_uses=uses)


IPPOOL_SCHEMA = Schema(
    IPPoolSpec,
    [
        f("cidr", "cidr", IPNetworkType(strict=True), required=True),
        f("vxlan_mode", "vxlanMode", EnumType(*_MODES), "Never", always=True),
        f("ipip_mode", "ipipMode", EnumType(*_MODES), "Never", always=True),
        f("nat_outgoing", "natOutgoing", _BOOL, False),
        f("disabled", "disabled", _BOOL, False),
        f("disable_bgp_export", "disableBGPExport", _BOOL, False),
        f("block_size", "blockSize", IntType(0, 128), 0),
        f("node_selector", "nodeSelector", SelectorType()),
        f("namespace_selector", "namespaceSelector", SelectorType()),
        f(
            "allowed_uses",
            "allowedUses",
            ListType(EnumType("Workload", "Tunnel", "LoadBalancer"), unique=True),
            (),
        ),
        f("assignment_mode", "assignmentMode", EnumType("Automatic", "Manual"), ""),
    ],
    _finish_pool,
)


# --------------------------------------------------------------------------- BGPConfiguration


@dataclass(frozen=True, slots=True)
class ServiceIPBlock(Spec):
    """One ``{cidr: ...}`` entry of serviceClusterIPs / serviceExternalIPs / LB IPs."""

    cidr: IPNetwork | None = None


SERVICE_IP_BLOCK_SCHEMA = Schema(
    ServiceIPBlock, [f("cidr", "cidr", IPNetworkType(strict=True), required=True)]
)
_SERVICE_BLOCKS = ListType(StructType(SERVICE_IP_BLOCK_SCHEMA))

_STD_COMMUNITY = re.compile(r"([0-9]+):([0-9]+)")
_LARGE_COMMUNITY = re.compile(r"([0-9]+):([0-9]+):([0-9]+)")


def _check_community_value(text: str) -> str | None:
    m = _STD_COMMUNITY.fullmatch(text)
    if m and all(int(g) <= 0xFFFF for g in m.groups()):
        return None
    m = _LARGE_COMMUNITY.fullmatch(text)
    if m and all(int(g) <= 0xFFFFFFFF for g in m.groups()):
        return None
    return f"invalid community {text[:40]!r}: expected 'aa:nn' (16-bit) or 'aa:nn:mm' (32-bit)"


def _check_community_ref(text: str) -> str | None:
    if ":" in text:
        return _check_community_value(text)
    return check_dns_subdomain(text)


@dataclass(frozen=True, slots=True)
class Community(Spec):
    """A named BGP community value."""

    name: str = ""
    value: str = ""


COMMUNITY_SCHEMA = Schema(
    Community,
    [
        f("name", "name", _NAME, "", required=True),
        f("value", "value", StrType(_check_community_value), "", required=True),
    ],
)


@dataclass(frozen=True, slots=True)
class PrefixAdvertisement(Spec):
    """Communities to attach when advertising ``cidr``."""

    cidr: IPNetwork | None = None
    communities: tuple[str, ...] = ()


PREFIX_ADVERTISEMENT_SCHEMA = Schema(
    PrefixAdvertisement,
    [
        f("cidr", "cidr", IPNetworkType(strict=True), required=True),
        f("communities", "communities", ListType(StrType(_check_community_ref)), ()),
    ],
)


@dataclass(frozen=True, slots=True)
class BGPConfigurationSpec(Spec):
    """Cluster-wide (name ``default``) or per-node (``node.<name>``) BGP settings.

    Unset values mean Calico's defaults: mesh enabled, AS 64512, port 179, log level Info.
    """

    log_severity_screen: str = ""
    node_to_node_mesh_enabled: bool | None = None
    as_number: int | None = None
    service_load_balancer_ips: tuple[ServiceIPBlock, ...] = ()
    service_external_ips: tuple[ServiceIPBlock, ...] = ()
    service_cluster_ips: tuple[ServiceIPBlock, ...] = ()
    communities: tuple[Community, ...] = ()
    prefix_advertisements: tuple[PrefixAdvertisement, ...] = ()
    listen_port: int | None = None
    node_mesh_password: BGPPassword | None = None
    node_mesh_max_restart_time: float | None = None
    extra: FrozenMap[str, object] = dataclasses.field(default=EMPTY_MAP)


BGPCONFIG_SCHEMA = Schema(
    BGPConfigurationSpec,
    [
        f("log_severity_screen", "logSeverityScreen", _LOG_LEVELS, ""),
        f("node_to_node_mesh_enabled", "nodeToNodeMeshEnabled", _BOOL),
        f("as_number", "asNumber", ASNumberType()),
        f("service_load_balancer_ips", "serviceLoadBalancerIPs", _SERVICE_BLOCKS, ()),
        f("service_external_ips", "serviceExternalIPs", _SERVICE_BLOCKS, ()),
        f("service_cluster_ips", "serviceClusterIPs", _SERVICE_BLOCKS, ()),
        f("communities", "communities", ListType(StructType(COMMUNITY_SCHEMA)), ()),
        f(
            "prefix_advertisements",
            "prefixAdvertisements",
            ListType(StructType(PREFIX_ADVERTISEMENT_SCHEMA)),
            (),
        ),
        f("listen_port", "listenPort", IntType(1, 65535)),
        f("node_mesh_password", "nodeMeshPassword", StructType(BGP_PASSWORD_SCHEMA)),
        f("node_mesh_max_restart_time", "nodeMeshMaxRestartTime", DurationType()),
    ],
    opaque=(
        "bindMode",
        "ignoredInterfaces",
        "localWorkloadPeeringIPV4",
        "localWorkloadPeeringIPV6",
        "programClusterRoutes",
    ),
)


# --------------------------------------------------------------------------- BGPPeer


@dataclass(frozen=True, slots=True)
class PeerAddress(Spec):
    """A peer's IP and optional TCP port (``peerIP: "198.51.100.9:1179"``)."""

    ip: IPAddress
    port: int | None = None

    def __str__(self) -> str:
        if self.port is None:
            return str(self.ip)
        if self.ip.version == 6:
            return f"[{self.ip}]:{self.port}"
        return f"{self.ip}:{self.port}"


class PeerAddressType(FieldType):
    """``addr``, ``v4addr:port`` or ``[v6addr]:port``."""

    __slots__ = ()

    def parse(self, raw: object, path: str, errs: Errors) -> object:
        if type(raw) is not str:
            errs.add(path, f"expected an IP address string, got {json_type_name(raw)}")
            return INVALID
        if not raw:
            return None  # Go's omitempty: "" is unset
        host, port_text = raw, ""
        if raw.startswith("["):
            host, sep, rest = raw[1:].partition("]")
            if not sep or not rest.startswith(":"):
                errs.add(path, f"invalid peer address {raw[:80]!r}: expected '[v6addr]:port'")
                return INVALID
            port_text = rest[1:]
        elif raw.count(":") == 1:
            host, _, port_text = raw.partition(":")
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            errs.add(path, f"invalid peer IP address {raw[:80]!r}")
            return INVALID
        if raw.startswith("[") and ip.version != 6:
            errs.add(path, f"invalid peer address {raw[:80]!r}: brackets are for IPv6 only")
            return INVALID
        port: int | None = None
        if port_text or host != raw:
            if not (port_text.isascii() and port_text.isdigit()) or not (
                1 <= int(port_text) <= 65535
            ):
                errs.add(path, f"invalid port in peer address {raw[:80]!r}: expected 1..65535")
                return INVALID
            port = int(port_text)
        return PeerAddress(ip, port)

    def render(self, value: object) -> object:
        return str(value)


@dataclass(frozen=True, slots=True)
class BGPPeerSpec(Spec):
    """An explicit BGP peering (for one node, selected nodes, or all nodes).

    ``hold_time`` (JSON ``holdTime``) is a tabby extension; Calico has no such field.
    """

    node: str = ""
    node_selector: Selector | None = None
    peer_ip: PeerAddress | None = None
    as_number: int | None = None
    peer_selector: Selector | None = None
    keep_original_next_hop: bool = False
    password: BGPPassword | None = None
    source_address: str = ""
    max_restart_time: float | None = None
    num_allowed_local_as_numbers: int | None = None
    ttl_security: int | None = None
    reachable_by: IPAddress | None = None
    filters: tuple[str, ...] = ()
    next_hop_mode: str = ""
    local_workload_selector: Selector | None = None
    keepalive_time: float | None = None
    hold_time: float | None = None


def _finish_peer(peer: BGPPeerSpec, path: str, errs: Errors) -> object:
    if peer.node and peer.node_selector is not None:
        errs.add(f"{path}.node", "node and nodeSelector cannot both be set")
    if peer.peer_ip is not None and peer.peer_selector is not None:
        errs.add(f"{path}.peerIP", "peerIP and peerSelector cannot both be set")
    if peer.as_number is not None and peer.peer_selector is not None:
        errs.add(f"{path}.asNumber", "asNumber must be empty when peerSelector is set")
    if peer.peer_ip is None and peer.peer_selector is None and peer.local_workload_selector is None:
        errs.add(f"{path}.peerIP", "one of peerIP or peerSelector must be set")
    if peer.peer_ip is not None and peer.as_number is None:
        errs.add(f"{path}.asNumber", "required when peerIP is set")
    if (
        peer.reachable_by is not None
        and peer.peer_ip is not None
        and peer.reachable_by.version != peer.peer_ip.ip.version
    ):
        errs.add(f"{path}.reachableBy", "reachableBy and peerIP have different IP versions")
    if peer.keep_original_next_hop and peer.next_hop_mode:
        errs.add(f"{path}.keepOriginalNextHop", "cannot be set together with nextHopMode")
    hold = peer.hold_time
    if hold is not None and hold != 0 and not 3 <= hold <= 65535:
        errs.add(f"{path}.holdTime", "hold time must be 0 or between 3s and 65535s")
    keepalive = peer.keepalive_time
    if hold and keepalive is not None and keepalive >= hold:
        errs.add(f"{path}.keepaliveTime", "keepaliveTime must be less than holdTime")
    return peer


BGPPEER_SCHEMA = Schema(
    BGPPeerSpec,
    [
        f("node", "node", _NAME, ""),
        f("node_selector", "nodeSelector", SelectorType()),
        f("peer_ip", "peerIP", PeerAddressType()),
        f("as_number", "asNumber", ASNumberType()),
        f("peer_selector", "peerSelector", SelectorType()),
        f("keep_original_next_hop", "keepOriginalNextHop", _BOOL, False),
        f("password", "password", StructType(BGP_PASSWORD_SCHEMA)),
        f("source_address", "sourceAddress", EnumType("UseNodeIP", "None"), ""),
        f("max_restart_time", "maxRestartTime", DurationType()),
        f("num_allowed_local_as_numbers", "numAllowedLocalASNumbers", IntType(0, 10)),
        f("ttl_security", "ttlSecurity", IntType(0, 255)),
        f("reachable_by", "reachableBy", IPAddressType()),
        f("filters", "filters", ListType(_NAME), ()),
        f("next_hop_mode", "nextHopMode", EnumType("Auto", "Self", "Keep"), ""),
        f("local_workload_selector", "localWorkloadSelector", SelectorType()),
        f("keepalive_time", "keepaliveTime", DurationType()),
        f("hold_time", "holdTime", DurationType()),
    ],
    _finish_peer,
)


# --------------------------------------------------------------------------- Node


@dataclass(frozen=True, slots=True)
class NodeBGPSpec(Spec):
    """A node's BGP identity: addresses with prefix length, AS, route-reflector cluster."""

    as_number: int | None = None
    ipv4_address: IPv4Interface | None = None
    ipv6_address: IPv6Interface | None = None
    ipv4_ipip_tunnel_addr: IPv4Address | None = None
    route_reflector_cluster_id: IPv4Address | None = None


def _finish_node_bgp(bgp: NodeBGPSpec, path: str, errs: Errors) -> object:
    if bgp == NodeBGPSpec():
        errs.add(path, "bgp must not be empty (omit it instead)")
    return bgp


NODE_BGP_SCHEMA = Schema(
    NodeBGPSpec,
    [
        f("as_number", "asNumber", ASNumberType()),
        f("ipv4_address", "ipv4Address", IPInterfaceType(4)),
        f("ipv6_address", "ipv6Address", IPInterfaceType(6)),
        f("ipv4_ipip_tunnel_addr", "ipv4IPIPTunnelAddr", IPAddressType(4)),
        f("route_reflector_cluster_id", "routeReflectorClusterID", IPAddressType(4)),
    ],
    _finish_node_bgp,
)


@dataclass(frozen=True, slots=True)
class OrchRef(Spec):
    """The node's name in an orchestrator (e.g. Kubernetes)."""

    node_name: str = ""
    orchestrator: str = ""


ORCH_REF_SCHEMA = Schema(
    OrchRef,
    [
        f("node_name", "nodeName", StrType(max_len=253), ""),
        f("orchestrator", "orchestrator", StrType(max_len=253), "", required=True),
    ],
)


@dataclass(frozen=True, slots=True)
class NodeWireguardSpec(Spec):
    """Addresses of the node's WireGuard interfaces."""

    interface_ipv4_address: IPv4Address | None = None
    interface_ipv6_address: IPv6Address | None = None


NODE_WIREGUARD_SCHEMA = Schema(
    NodeWireguardSpec,
    [
        f("interface_ipv4_address", "interfaceIPv4Address", IPAddressType(4)),
        f("interface_ipv6_address", "interfaceIPv6Address", IPAddressType(6)),
    ],
)


@dataclass(frozen=True, slots=True)
class NodeAddress(Spec):
    """An address the node can be reached at (bare, or with a prefix length)."""

    address: IPInterface | None = None
    type: str = ""


NODE_ADDRESS_SCHEMA = Schema(
    NodeAddress,
    [
        f("address", "address", IPInterfaceType(bare_if_host=True), required=True),
        f("type", "type", EnumType("CalicoNodeIP", "InternalIP", "ExternalIP"), ""),
    ],
)


@dataclass(frozen=True, slots=True)
class NodeInterface(Spec):
    """An interface of the node and its addresses (as reported by calico-node)."""

    name: str = ""
    addresses: tuple[str, ...] = ()


NODE_INTERFACE_SCHEMA = Schema(
    NodeInterface,
    [
        f("name", "name", StrType(check_interface_name), ""),
        f("addresses", "addresses", ListType(StrType(max_len=64)), ()),
    ],
)

_MAC_RE = re.compile(r"[0-9a-fA-F]{2}([:-][0-9a-fA-F]{2}){5}")


def _check_mac(text: str) -> str | None:
    return None if _MAC_RE.fullmatch(text) else f"invalid MAC address {text[:40]!r}"


@dataclass(frozen=True, slots=True)
class NodeSpec(Spec):
    """A Calico node: BGP identity, tunnel addresses, reachable addresses."""

    bgp: NodeBGPSpec | None = None
    ipv4_vxlan_tunnel_addr: IPv4Address | None = None
    vxlan_tunnel_mac_addr: str = ""
    ipv6_vxlan_tunnel_addr: IPv6Address | None = None
    vxlan_tunnel_mac_addr_v6: str = ""
    orch_refs: tuple[OrchRef, ...] = ()
    wireguard: NodeWireguardSpec | None = None
    addresses: tuple[NodeAddress, ...] = ()
    interfaces: tuple[NodeInterface, ...] = ()


NODE_SCHEMA = Schema(
    NodeSpec,
    [
        f("bgp", "bgp", StructType(NODE_BGP_SCHEMA)),
        f("ipv4_vxlan_tunnel_addr", "ipv4VXLANTunnelAddr", IPAddressType(4)),
        f("vxlan_tunnel_mac_addr", "vxlanTunnelMACAddr", StrType(_check_mac), ""),
        f("ipv6_vxlan_tunnel_addr", "ipv6VXLANTunnelAddr", IPAddressType(6)),
        f("vxlan_tunnel_mac_addr_v6", "vxlanTunnelMACAddrV6", StrType(_check_mac), ""),
        f("orch_refs", "orchRefs", ListType(StructType(ORCH_REF_SCHEMA)), ()),
        f("wireguard", "wireguard", StructType(NODE_WIREGUARD_SCHEMA)),
        f("addresses", "addresses", ListType(StructType(NODE_ADDRESS_SCHEMA)), ()),
        f("interfaces", "interfaces", ListType(StructType(NODE_INTERFACE_SCHEMA)), ()),
    ],
)


@dataclass(frozen=True, slots=True)
class NodeStatus(Spec):
    """What calico-node reports about itself."""

    wireguard_public_key: str = ""
    wireguard_public_key_v6: str = ""
    pod_cidrs: tuple[IPNetwork, ...] = ()


NODE_STATUS_SCHEMA = Schema(
    NodeStatus,
    [
        f("wireguard_public_key", "wireguardPublicKey", StrType(max_len=64), ""),
        f("wireguard_public_key_v6", "wireguardPublicKeyV6", StrType(max_len=64), ""),
        f("pod_cidrs", "podCIDRs", ListType(IPNetworkType()), ()),
    ],
)

register(KindModel(IP_POOL, IPPOOL_SCHEMA, check_dns_subdomain))
register(KindModel(BGP_CONFIGURATION, BGPCONFIG_SCHEMA, check_dns_subdomain))
register(KindModel(BGP_PEER, BGPPEER_SCHEMA, check_dns_subdomain))
register(KindModel(NODE, NODE_SCHEMA, check_dns_subdomain, None, NODE_STATUS_SCHEMA))
