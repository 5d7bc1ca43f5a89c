"""Endpoint and network-set kinds: WorkloadEndpoint, HostEndpoint, NetworkSet, GlobalNetworkSet.

Role: typed specs (Calico v3 field names -> snake_case attributes) and their validation, as
``Schema`` data plus a few cross-field checks mirroring Calico's validator:
* WorkloadEndpoint: ``node`` and ``interfaceName`` are required; ``ipNetworks`` are single
  addresses (/32, /128); gateways have the right IP version; each ``ipNATs[].internalIP`` lies in
  ``ipNetworks`` and has the version of its ``externalIP``; a port without a name needs a
  ``hostPort``; port protocols are TCP, UDP or SCTP.
* HostEndpoint: ``node`` is required, and ``interfaceName`` or ``expectedIPs``.
* (Global)NetworkSet: ``nets`` are CIDRs (host bits masked off, as felix uses them); the
  reserved label ``projectcalico.org/namespace`` is refused.

Outputs: registered ``KindModel``s; the spec classes are re-exported by ``datastore.model``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from datastore.kinds import GLOBAL_NETWORK_SET, HOST_ENDPOINT, NETWORK_SET, WORKLOAD_ENDPOINT
from datastore.model_base import KindModel, Metadata, Spec, register
from datastore.schema import (
    INVALID,
    AnyType,
    Errors,
    FieldType,
    IntType,
    IPAddress,
    IPAddressType,
    IPNetwork,
    IPNetworkType,
    ListType,
    Schema,
    StrType,
    StructType,
    cached_check,
    check_dns_subdomain,
    json_type_name,
)
from datastore.schema import field as f
from policy.rules import protocol_name, protocol_number

__all__ = [
    "IPNAT",
    "EndpointPort",
    "GlobalNetworkSetSpec",
    "HostEndpointSpec",
    "NetworkSetSpec",
    "ProtocolType",
    "WorkloadEndpointPort",
    "WorkloadEndpointSpec",
    "check_interface_name",
    "check_port_name",
]

_IFACE_RE = re.compile(r"[a-zA-Z0-9_.-]{1,15}")
_CONTAINER_ID_RE = re.compile(r"[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?")
_MAC_RE = re.compile(r"[0-9a-fA-F]{2}([:-][0-9a-fA-F]{2}){5}")
_PORT_NAME_RE = re.compile(r"[-a-z0-9]+")
_PORT_PROTOCOLS = frozenset({6, 17, 132})
_RESERVED_LABEL = "projectcalico.org/namespace"


@cached_check
def check_interface_name(text: str) -> str | None:
    """Problem with a Linux interface name (1..15 of ``[a-zA-Z0-9_.-]``), or None."""
    if _IFACE_RE.fullmatch(text) is None:
        return f"invalid interface name {text[:40]!r}: 1-15 characters of a-z, A-Z, 0-9, _ . -"
    return None


def _check_hep_interface(text: str) -> str | None:
    return None if text == "*" else check_interface_name(text)


@cached_check
def check_port_name(text: str) -> str | None:
    """Problem with a named port (Kubernetes IANA_SVC_NAME rules), or None."""
    if len(text) > 15:
        return f"port name {text[:40]!r} must be at most 15 characters"
    if (
        _PORT_NAME_RE.fullmatch(text) is None
        or text.startswith("-")
        or text.endswith("-")
        or "--" in text
        or not any(c.isalpha() for c in text)
    ):
        return (
            f"invalid port name {text!r}: lower case alphanumerics and single '-', "
            "with at least one letter"
        )
    return None


def _check_container_id(text: str) -> str | None:
    if _CONTAINER_ID_RE.fullmatch(text) is None:
        return f"invalid container ID {text[:80]!r}"
    return None


def _check_mac(text: str) -> str | None:
    if _MAC_RE.fullmatch(text) is None:
        return f"invalid MAC address {text[:40]!r}"
    return None


class ProtocolType(FieldType):
    """A protocol name ("TCP", any case) or number, stored as the IANA number.

    ``ports_only`` restricts it to protocols with ports (TCP, UDP, SCTP).
    """

    __slots__ = ("ports_only",)

    def __init__(self, *, ports_only: bool = False) -> None:
        self.ports_only = ports_only

    def parse(self, raw: object, path: str, errs: Errors) -> object:
        if type(raw) not in (str, int):
            errs.add(path, f"expected a protocol name or number, got {json_type_name(raw)}")
            return INVALID
        try:
            number = protocol_number(raw)  # type: ignore[arg-type]
        except ValueError as exc:
            errs.add(path, str(exc))
            return INVALID
        if self.ports_only and number not in _PORT_PROTOCOLS:
            errs.add(path, f"protocol {raw!r} has no ports: expected TCP, UDP or SCTP")
            return INVALID
        return number

    def render(self, value: object) -> object:
        assert isinstance(value, int)
        return protocol_name(value)


_NAME = StrType(check_dns_subdomain, max_len=253)


# --------------------------------------------------------------------------- WorkloadEndpoint


@dataclass(frozen=True, slots=True)
class WorkloadEndpointPort(Spec):
    """A named and/or host-mapped port of a workload."""

    name: str = ""
    protocol: int = 6
    port: int = 0
    host_port: int = 0
    host_ip: IPAddress | None = None


def _finish_wep_port(port: WorkloadEndpointPort, path: str, errs: Errors) -> object:
    if not port.name and not port.host_port:
        errs.add(f"{path}.name", "a port without a hostPort must have a name")
    return port


WEP_PORT_SCHEMA = Schema(
    WorkloadEndpointPort,
    [
        f("name", "name", StrType(check_port_name), "", always=True),
        f("protocol", "protocol", ProtocolType(ports_only=True), 6, required=True, always=True),
        f("port", "port", IntType(1, 65535), 0, required=True, always=True),
        f("host_port", "hostPort", IntType(0, 65535), 0, always=True),
        f("host_ip", "hostIP", IPAddressType()),
    ],
    _finish_wep_port,
)


@dataclass(frozen=True, slots=True)
class IPNAT(Spec):
    """A 1:1 NAT of an endpoint address (``internal_ip`` must be one of its ipNetworks)."""

    internal_ip: IPAddress | None = None
    external_ip: IPAddress | None = None
    source: str = ""


def _finish_ipnat(nat: IPNAT, path: str, errs: Errors) -> object:
    if (
        nat.internal_ip is not None
        and nat.external_ip is not None
        and nat.internal_ip.version != nat.external_ip.version
    ):
        errs.add(f"{path}.externalIP", "internalIP and externalIP have different IP versions")
    return nat


IPNAT_SCHEMA = Schema(
    IPNAT,
    [
        f("internal_ip", "internalIP", IPAddressType(), required=True),
        f("external_ip", "externalIP", IPAddressType(), required=True),
        f("source", "source", StrType(max_len=64), ""),
    ],
    _finish_ipnat,
)


@dataclass(frozen=True, slots=True)
class WorkloadEndpointSpec(Spec):
    """A workload's interface on one node: addresses, profiles, named ports."""

    orchestrator: str = ""
    workload: str = ""
    node: str = ""
    container_id: str = ""
    pod: str = ""
    endpoint: str = ""
    service_account_name: str = ""
    ip_networks: tuple[IPNetwork, ...] = ()
    ip_nats: tuple[IPNAT, ...] = ()
    ipv4_gateway: IPAddress | None = None
    ipv6_gateway: IPAddress | None = None
    profiles: tuple[str, ...] = ()
    interface_name: str = ""
    mac: str = ""
    ports: tuple[WorkloadEndpointPort, ...] = ()
    allow_spoofed_source_prefixes: tuple[IPNetwork, ...] = ()
    aws_elastic_ips: object = None
    qos_controls: object = None


def _finish_wep(spec: WorkloadEndpointSpec, path: str, errs: Errors) -> object:
    for i, nat in enumerate(spec.ip_nats):
        ip = nat.internal_ip
        if ip is not None and not any(ip in net for net in spec.ip_networks):
            errs.add(f"{path}.ipNATs[{i}].internalIP", f"{ip} is not one of the ipNetworks")
    return spec


WEP_SCHEMA = Schema(
    WorkloadEndpointSpec,
    [
        f("orchestrator", "orchestrator", _NAME, ""),
        f("workload", "workload", _NAME, ""),
        f("node", "node", _NAME, "", required=True),
        f("container_id", "containerID", StrType(_check_container_id, max_len=256), ""),
        f("pod", "pod", _NAME, ""),
        f("endpoint", "endpoint", _NAME, ""),
        f("service_account_name", "serviceAccountName", _NAME, ""),
        f("ip_networks", "ipNetworks", ListType(IPNetworkType(host_only=True)), ()),
        f("ip_nats", "ipNATs", ListType(StructType(IPNAT_SCHEMA)), ()),
        f("ipv4_gateway", "ipv4Gateway", IPAddressType(4)),
        f("ipv6_gateway", "ipv6Gateway", IPAddressType(6)),
        f("profiles", "profiles", ListType(_NAME), ()),
        f("interface_name", "interfaceName", StrType(check_interface_name), "", required=True),
        f("mac", "mac", StrType(_check_mac), ""),
        f("ports", "ports", ListType(StructType(WEP_PORT_SCHEMA)), ()),
        f(
            "allow_spoofed_source_prefixes",
            "allowSpoofedSourcePrefixes",
            ListType(IPNetworkType()),
            (),
        ),
        f("aws_elastic_ips", "awsElasticIPs", AnyType()),
        f("qos_controls", "qosControls", AnyType()),
    ],
    _finish_wep,
)


# --------------------------------------------------------------------------- HostEndpoint


@dataclass(frozen=True, slots=True)
class EndpointPort(Spec):
    """A named port of a host endpoint."""

    name: str = ""
    protocol: int = 6
    port: int = 0


ENDPOINT_PORT_SCHEMA = Schema(
    EndpointPort,
    [
        f("name", "name", StrType(check_port_name), "", required=True),
        f("protocol", "protocol", ProtocolType(ports_only=True), 6, required=True, always=True),
        f("port", "port", IntType(1, 65535), 0, required=True),
    ],
)


@dataclass(frozen=True, slots=True)
class HostEndpointSpec(Spec):
    """A host interface (or all of them, "*") that policy applies to."""

    node: str = ""
    interface_name: str = ""
    expected_ips: tuple[IPAddress, ...] = ()
    profiles: tuple[str, ...] = ()
    ports: tuple[EndpointPort, ...] = ()


def _finish_hep(spec: HostEndpointSpec, path: str, errs: Errors) -> object:
    if not spec.interface_name and not spec.expected_ips:
        errs.add(f"{path}.interfaceName", "either interfaceName or expectedIPs must be set")
    return spec


HEP_SCHEMA = Schema(
    HostEndpointSpec,
    [
        f("node", "node", _NAME, "", required=True),
        f("interface_name", "interfaceName", StrType(_check_hep_interface), ""),
        f("expected_ips", "expectedIPs", ListType(IPAddressType(), unique=True), ()),
        f("profiles", "profiles", ListType(_NAME), ()),
        f("ports", "ports", ListType(StructType(ENDPOINT_PORT_SCHEMA)), ()),
    ],
    _finish_hep,
)


# --------------------------------------------------------------------------- network sets


@dataclass(frozen=True, slots=True)
class NetworkSetSpec(Spec):
    """Arbitrary networks that policy selectors can match by the set's labels (namespaced)."""

    nets: tuple[IPNetwork, ...] = ()


@dataclass(frozen=True, slots=True)
class GlobalNetworkSetSpec(Spec):
    """Arbitrary networks that policy selectors can match by the set's labels."""

    nets: tuple[IPNetwork, ...] = ()


_NETS = ListType(IPNetworkType())


def _check_netset_labels(meta: Metadata, _spec: object, errs: Errors) -> None:
    if _RESERVED_LABEL in meta.labels:
        errs.add(f"metadata.labels.{_RESERVED_LABEL}", "reserved label: cannot be set here")


register(
    KindModel(
        WORKLOAD_ENDPOINT,
        WEP_SCHEMA,
        check_dns_subdomain,
    )
)
register(KindModel(HOST_ENDPOINT, HEP_SCHEMA, check_dns_subdomain))
register(
    KindModel(
        NETWORK_SET,
        Schema(NetworkSetSpec, [f("nets", "nets", _NETS, ())]),
        check_dns_subdomain,
        _check_netset_labels,
    )
)
register(
    KindModel(
        GLOBAL_NETWORK_SET,
        Schema(GlobalNetworkSetSpec, [f("nets", "nets", _NETS, ())]),
        check_dns_subdomain,
        _check_netset_labels,
    )
)
