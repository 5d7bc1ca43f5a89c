"""Configuration kinds: FelixConfiguration, ClusterInformation.

Role: FelixConfiguration has ~150 fields in Calico. The ones tabby's felix uses are typed here
(durations as float seconds, enums canonicalised, ports range-checked, failsafe ports parsed);
every other field name Calico defines (``FELIX_OPAQUE_FIELDS``) is accepted and preserved
verbatim in ``FelixConfigurationSpec.extra`` so a read-modify-write never drops it; any other name
is an "unknown field" error. All typed fields are optional: None/"" means "felix's default".

ClusterInformation is fully typed.

Outputs: registered ``KindModel``s; classes re-exported by ``datastore.model``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from datastore.kinds import CLUSTER_INFORMATION, FELIX_CONFIGURATION
from datastore.model_base import KindModel, Spec, register
from datastore.model_endpoints import check_interface_name
from datastore.schema import (
    EMPTY_MAP,
    BoolType,
    DurationType,
    EnumType,
    Errors,
    FrozenMap,
    IntType,
    IPAddress,
    IPAddressType,
    IPNetwork,
    IPNetworkType,
    ListType,
    Schema,
    StrType,
    StructType,
    check_dns_subdomain,
)
from datastore.schema import field as f

__all__ = [
    "FELIX_OPAQUE_FIELDS",
    "ClusterInformationSpec",
    "FelixConfigurationSpec",
    "ProtoPort",
]

_BOOL = BoolType()
_DURATION = DurationType()
_PORT = IntType(0, 65535)
_LOG = EnumType("Trace", "Debug", "Info", "Warning", "Error", "Fatal", fold=True)
_LOG_OR_NONE = EnumType("Trace", "Debug", "Info", "Warning", "Error", "Fatal", "None", fold=True)


@dataclass(frozen=True, slots=True)
class ProtoPort(Spec):
    """A failsafe port: protocol (TCP, UDP or SCTP), port and optional peer network."""

    protocol: str = "TCP"
    port: int = 0
    net: IPNetwork | None = None


PROTO_PORT_SCHEMA = Schema(
    ProtoPort,
    [
        f("protocol", "protocol", EnumType("TCP", "UDP", "SCTP", fold=True), "TCP", always=True),
        f("port", "port", IntType(1, 65535), 0, required=True),
        f("net", "net", IPNetworkType()),
    ],
)
_PROTO_PORTS = ListType(StructType(PROTO_PORT_SCHEMA))


@dataclass(frozen=True, slots=True)
class FelixConfigurationSpec(Spec):
    """Felix settings (``default`` cluster-wide, ``node.<name>`` per node).

    ``failsafe_*_host_ports``: None means felix's default list; ``()`` means none.
    ``extra`` holds the Calico fields tabby does not interpret, verbatim.
    """

    ipv6_support: bool | None = None
    route_refresh_interval: float | None = None
    interface_refresh_interval: float | None = None
    iptables_refresh_interval: float | None = None
    iptables_post_write_check_interval: float | None = None
    iptables_lock_file_path: str = ""
    iptables_lock_timeout: float | None = None
    iptables_lock_probe_interval: float | None = None
    ipsets_refresh_interval: float | None = None
    iptables_backend: str = ""
    netlink_timeout: float | None = None
    metadata_addr: str = ""
    metadata_port: int | None = None
    interface_prefix: str = ""
    interface_exclude: str = ""
    chain_insert_mode: str = ""
    default_endpoint_to_host_action: str = ""
    iptables_filter_allow_action: str = ""
    iptables_mangle_allow_action: str = ""
    iptables_filter_deny_action: str = ""
    log_prefix: str = ""
    log_file_path: str = ""
    log_severity_file: str = ""
    log_severity_screen: str = ""
    log_severity_sys: str = ""
    ipip_enabled: bool | None = None
    ipip_mtu: int | None = None
    vxlan_enabled: bool | None = None
    vxlan_mtu: int | None = None
    vxlan_port: int | None = None
    vxlan_vni: int | None = None
    allow_vxlan_packets_from_workloads: bool | None = None
    allow_ipip_packets_from_workloads: bool | None = None
    reporting_interval: float | None = None
    reporting_ttl: float | None = None
    endpoint_reporting_delay: float | None = None
    iptables_mark_mask: int | None = None
    health_enabled: bool | None = None
    health_host: str | None = None
    health_port: int | None = None
    prometheus_metrics_enabled: bool | None = None
    prometheus_metrics_host: str = ""
    prometheus_metrics_port: int | None = None
    prometheus_go_metrics_enabled: bool | None = None
    prometheus_process_metrics_enabled: bool | None = None
    failsafe_inbound_host_ports: tuple[ProtoPort, ...] | None = None
    failsafe_outbound_host_ports: tuple[ProtoPort, ...] | None = None
    nat_outgoing_address: IPAddress | None = None
    device_route_source_address: IPAddress | None = None
    device_route_source_address_ipv6: IPAddress | None = None
    device_route_protocol: int | None = None
    remove_external_routes: bool | None = None
    ip_forwarding: str = ""
    external_nodes_list: tuple[IPNetwork, ...] | None = None
    route_source: str = ""
    route_sync_disabled: bool | None = None
    service_loop_prevention: str = ""
    workload_source_spoofing: str = ""
    mtu_iface_pattern: str = ""
    floating_ips: str = ""
    bpf_enabled: bool | None = None
    wireguard_enabled: bool | None = None
    wireguard_interface_name: str = ""
    extra: FrozenMap[str, object] = dataclasses.field(default=EMPTY_MAP)


def _finish_felix(spec: FelixConfigurationSpec, path: str, errs: Errors) -> object:
    for attr, json, version in (
        ("nat_outgoing_address", "natOutgoingAddress", 4),
        ("device_route_source_address", "deviceRouteSourceAddress", 4),
        ("device_route_source_address_ipv6", "deviceRouteSourceAddressIPv6", 6),
    ):
        value = getattr(spec, attr)
        if value is not None and value.version != version:
            errs.add(f"{path}.{json}", f"must be an IPv{version} address")
    return spec


# Every other FelixConfigurationSpec JSON name in Calico's API (v3.2x-v3.30), kept verbatim.
FELIX_OPAQUE_FIELDS: tuple[str, ...] = (
    "useInternalDataplaneDriver",
    "dataplaneDriver",
    "dataplaneWatchdogTimeout",
    "featureDetectOverride",
    "featureGates",
    "maxIpsetSize",
    "xdpRefreshInterval",
    "openstackRegion",
    "logDebugFilenameRegex",
    "logActionRateLimit",
    "logActionRateLimitBurst",
    "logDropActionOverride",
    "vxlanMTUV6",
    "endpointReportingEnabled",
    "endpointStatusPathPrefix",
    "disableConntrackInvalidCheck",
    "healthTimeoutOverrides",
    "prometheusWireGuardMetricsEnabled",
    "kubeNodePortRanges",
    "policySyncPathPrefix",
    "usageReportingEnabled",
    "usageReportingInitialDelay",
    "usageReportingInterval",
    "natPortRange",
    "debugMemoryProfilePath",
    "debugDisableLogDropping",
    "debugSimulateCalcGraphHangAfter",
    "debugSimulateDataplaneHangAfter",
    "debugSimulateDataplaneApplyDelay",
    "debugHost",
    "debugPort",
    "iptablesNATOutgoingInterfaceFilter",
    "sidecarAccelerationEnabled",
    "xdpEnabled",
    "genericXDPEnabled",
    "nftablesMode",
    "nftablesRefreshInterval",
    "nftablesFilterAllowAction",
    "nftablesMangleAllowAction",
    "nftablesFilterDenyAction",
    "nftablesMarkMask",
    "nfNetlinkBufSize",
    "bpfDisableUnprivileged",
    "bpfLogLevel",
    "bpfLogFilters",
    "bpfCTLBLogFilter",
    "bpfDataIfacePattern",
    "bpfL3IfacePattern",
    "bpfConnectTimeLoadBalancingEnabled",
    "bpfConnectTimeLoadBalancing",
    "bpfHostNetworkedNATWithoutCTLB",
    "bpfExternalServiceMode",
    "bpfDSROptoutCIDRs",
    "bpfExtToServiceConnmark",
    "bpfKubeProxyIptablesCleanupEnabled",
    "bpfKubeProxyMinSyncPeriod",
    "bpfKubeProxyEndpointSlicesEnabled",
    "bpfPSNATPorts",
    "bpfMapSizeNATFrontend",
    "bpfMapSizeNATBackend",
    "bpfMapSizeNATAffinity",
    "bpfMapSizeRoute",
    "bpfMapSizeConntrack",
    "bpfMapSizePerCpuConntrack",
    "bpfMapSizeIPSets",
    "bpfMapSizeIfState",
    "bpfHostConntrackBypass",
    "bpfEnforceRPF",
    "bpfPolicyDebugEnabled",
    "bpfForceTrackPacketsFromIfaces",
    "bpfDisableGROForIfaces",
    "bpfExcludeCIDRsFromNAT",
    "bpfRedirectToPeer",
    "bpfProfiling",
    "bpfAttachType",
    "bpfConntrackCleanupMode",
    "bpfConntrackLogLevel",
    "bpfConntrackTimeouts",
    "bpfExportBufferSizeMB",
    "bpfJITHardening",
    "bpfMaglevMaxEndpointsPerService",
    "bpfMaglevMaxServices",
    "cgroupV2Path",
    "routeTableRanges",
    "routeTableRange",
    "wireguardEnabledV6",
    "wireguardThreadingEnabled",
    "wireguardListeningPort",
    "wireguardListeningPortV6",
    "wireguardRoutingRulePriority",
    "wireguardInterfaceNameV6",
    "wireguardMTU",
    "wireguardMTUV6",
    "wireguardHostEncryptionEnabled",
    "wireguardKeepAlive",
    "awsSrcDstCheck",
    "windowsManageFirewallRules",
    "goGCThreshold",
    "goMemoryLimitMB",
    "goMaxProcs",
    "flowLogsFlushInterval",
    "flowLogsCollectorDebugTrace",
    "flowLogsGoldmaneServer",
    "flowLogsLocalReporter",
    "flowLogsPolicyEvaluationMode",
    "programClusterRoutes",
    "requireMTUFile",
    "liveMigrationRouteConvergenceTime",
    "istioAmbientMode",
    "istioDSCPMark",
)

FELIX_SCHEMA = Schema(
    FelixConfigurationSpec,
    [
        f("ipv6_support", "ipv6Support", _BOOL),
        f("route_refresh_interval", "routeRefreshInterval", _DURATION),
        f("interface_refresh_interval", "interfaceRefreshInterval", _DURATION),
        f("iptables_refresh_interval", "iptablesRefreshInterval", _DURATION),
        f("iptables_post_write_check_interval", "iptablesPostWriteCheckInterval", _DURATION),
        f("iptables_lock_file_path", "iptablesLockFilePath", StrType(), ""),
        f("iptables_lock_timeout", "iptablesLockTimeout", _DURATION),
        f("iptables_lock_probe_interval", "iptablesLockProbeInterval", _DURATION),
        f("ipsets_refresh_interval", "ipsetsRefreshInterval", _DURATION),
        f("iptables_backend", "iptablesBackend", EnumType("Legacy", "NFT", "Auto", fold=True), ""),
        f("netlink_timeout", "netlinkTimeout", _DURATION),
        f("metadata_addr", "metadataAddr", StrType(max_len=253), ""),
        f("metadata_port", "metadataPort", _PORT),
        f("interface_prefix", "interfacePrefix", StrType(max_len=256), ""),
        f("interface_exclude", "interfaceExclude", StrType(), ""),
        f("chain_insert_mode", "chainInsertMode", EnumType("Insert", "Append", fold=True), ""),
        f(
            "default_endpoint_to_host_action",
            "defaultEndpointToHostAction",
            EnumType("Drop", "Accept", "Return", fold=True),
            "",
        ),
        f(
            "iptables_filter_allow_action",
            "iptablesFilterAllowAction",
            EnumType("Accept", "Return", fold=True),
            "",
        ),
        f(
            "iptables_mangle_allow_action",
            "iptablesMangleAllowAction",
            EnumType("Accept", "Return", fold=True),
            "",
        ),
        f(
            "iptables_filter_deny_action",
            "iptablesFilterDenyAction",
            EnumType("Drop", "Reject", fold=True),
            "",
        ),
        f("log_prefix", "logPrefix", StrType(max_len=64), ""),
        f("log_file_path", "logFilePath", StrType(), ""),
        f("log_severity_file", "logSeverityFile", _LOG_OR_NONE, ""),
        f("log_severity_screen", "logSeverityScreen", _LOG, ""),
        f("log_severity_sys", "logSeveritySys", _LOG_OR_NONE, ""),
        f("ipip_enabled", "ipipEnabled", _BOOL),
        f("ipip_mtu", "ipipMTU", IntType(0, 65535)),
        f("vxlan_enabled", "vxlanEnabled", _BOOL),
        f("vxlan_mtu", "vxlanMTU", IntType(0, 65535)),
        f("vxlan_port", "vxlanPort", _PORT),
        f("vxlan_vni", "vxlanVNI", IntType(0, (1 << 24) - 1)),
        f("allow_vxlan_packets_from_workloads", "allowVXLANPacketsFromWorkloads", _BOOL),
        f("allow_ipip_packets_from_workloads", "allowIPIPPacketsFromWorkloads", _BOOL),
        f("reporting_interval", "reportingInterval", _DURATION),
        f("reporting_ttl", "reportingTTL", _DURATION),
        f("endpoint_reporting_delay", "endpointReportingDelay", _DURATION),
        f("iptables_mark_mask", "iptablesMarkMask", IntType(0, 0xFFFFFFFF)),
        f("health_enabled", "healthEnabled", _BOOL),
        f("health_host", "healthHost", StrType(max_len=253)),
        f("health_port", "healthPort", _PORT),
        f("prometheus_metrics_enabled", "prometheusMetricsEnabled", _BOOL),
        f("prometheus_metrics_host", "prometheusMetricsHost", StrType(max_len=253), ""),
        f("prometheus_metrics_port", "prometheusMetricsPort", _PORT),
        f("prometheus_go_metrics_enabled", "prometheusGoMetricsEnabled", _BOOL),
        f("prometheus_process_metrics_enabled", "prometheusProcessMetricsEnabled", _BOOL),
        f("failsafe_inbound_host_ports", "failsafeInboundHostPorts", _PROTO_PORTS),
        f("failsafe_outbound_host_ports", "failsafeOutboundHostPorts", _PROTO_PORTS),
        f("nat_outgoing_address", "natOutgoingAddress", IPAddressType()),
        f("device_route_source_address", "deviceRouteSourceAddress", IPAddressType()),
        f("device_route_source_address_ipv6", "deviceRouteSourceAddressIPv6", IPAddressType()),
        f("device_route_protocol", "deviceRouteProtocol", IntType(0, 255)),
        f("remove_external_routes", "removeExternalRoutes", _BOOL),
        f("ip_forwarding", "ipForwarding", EnumType("Enabled", "Disabled"), ""),
        f("external_nodes_list", "externalNodesList", ListType(IPNetworkType(4))),
        f("route_source", "routeSource", EnumType("WorkloadIPs", "CalicoIPAM", fold=True), ""),
        f("route_sync_disabled", "routeSyncDisabled", _BOOL),
        f(
            "service_loop_prevention",
            "serviceLoopPrevention",
            EnumType("Drop", "Reject", "Disabled"),
            "",
        ),
        f(
            "workload_source_spoofing",
            "workloadSourceSpoofing",
            EnumType("Disabled", "Any", fold=True),
            "",
        ),
        f("mtu_iface_pattern", "mtuIfacePattern", StrType(), ""),
        f("floating_ips", "floatingIPs", EnumType("Enabled", "Disabled"), ""),
        f("bpf_enabled", "bpfEnabled", _BOOL),
        f("wireguard_enabled", "wireguardEnabled", _BOOL),
        f("wireguard_interface_name", "wireguardInterfaceName", StrType(check_interface_name), ""),
    ],
    _finish_felix,
    opaque=FELIX_OPAQUE_FIELDS,
)


@dataclass(frozen=True, slots=True)
class ClusterInformationSpec(Spec):
    """Cluster-wide facts (name ``default``), written by calico-node / kube-controllers."""

    cluster_guid: str = ""
    cluster_type: str = ""
    calico_version: str = ""
    datastore_ready: bool | None = None
    variant: str = ""


CLUSTER_INFO_SCHEMA = Schema(
    ClusterInformationSpec,
    [
        f("cluster_guid", "clusterGUID", StrType(max_len=256), ""),
        f("cluster_type", "clusterType", StrType(max_len=1024), ""),
        f("calico_version", "calicoVersion", StrType(max_len=256), ""),
        f("datastore_ready", "datastoreReady", _BOOL),
        f("variant", "variant", StrType(max_len=256), ""),
    ],
)

register(KindModel(FELIX_CONFIGURATION, FELIX_SCHEMA, check_dns_subdomain))
register(KindModel(CLUSTER_INFORMATION, CLUSTER_INFO_SCHEMA, check_dns_subdomain))
