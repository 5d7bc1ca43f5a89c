"""Realistic Calico v3 documents for every kind (shared by the model and codec tests).

``GOOD`` maps each kind to manifests shaped like Calico's documentation examples and like what
calico-node / the CNI plugin write to etcd. The tests here check that each one parses, round
trips through ``resource_to_dict`` and survives ``encode``/``decode``.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from datastore.codec import decode, encode, resource_from_dict, resource_to_dict
from datastore.errors import ValidationError
from datastore.kinds import ALL_KINDS
from datastore.model import SPEC_TYPES

V3 = "projectcalico.org/v3"


def doc(
    kind: str, name: str, spec: dict[str, Any], namespace: str | None = None, **meta: Any
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    metadata.update(meta)
    return {"kind": kind, "apiVersion": V3, "metadata": metadata, "spec": spec}


GOOD: dict[str, list[dict[str, Any]]] = {
    "WorkloadEndpoint": [
        doc(
            "WorkloadEndpoint",
            "node1-k8s-frontend--5gs43-eth0",
            {
                "orchestrator": "k8s",
                "node": "node1",
                "containerID": "1337495556942031415926535",
                "pod": "frontend-5gs43",
                "endpoint": "eth0",
                "serviceAccountName": "default",
                "ipNetworks": ["10.65.0.2/32"],
                "profiles": ["kns.default", "ksa.default.default"],
                "interfaceName": "cali0ef24ba",
                "mac": "ca:fe:1d:52:bb:e9",
                "ports": [
                    {
                        "name": "connect",
                        "port": 8080,
                        "protocol": "TCP",
                        "hostPort": 0,
                        "hostIP": "",
                    },
                    {
                        "name": "",
                        "port": 53,
                        "protocol": "UDP",
                        "hostPort": 5353,
                        "hostIP": "198.51.100.2",
                    },
                ],
            },
            "default",
            labels={
                "app": "frontend",
                "projectcalico.org/namespace": "default",
                "projectcalico.org/orchestrator": "k8s",
            },
            uid="7a3d5e1c-2b1f-4f6e-9c1e-2d7c1a3b4c5d",
            creationTimestamp="2024-03-01T10:00:00Z",
        ),
        doc(
            "WorkloadEndpoint",
            "node2-openstack-vm1-tap1234",
            {
                "orchestrator": "openstack",
                "workload": "vm1",
                "node": "node2",
                "endpoint": "tap1234",
                "ipNetworks": ["10.65.1.7", "fd00:10:65::7/128"],
                "ipNATs": [{"internalIP": "10.65.1.7", "externalIP": "203.0.113.7"}],
                "ipv4Gateway": "10.65.1.1",
                "ipv6Gateway": "fd00:10:65::1",
                "interfaceName": "tap1234",
                "allowSpoofedSourcePrefixes": ["10.99.0.0/16"],
            },
            "openstack",
        ),
    ],
    "HostEndpoint": [
        doc(
            "HostEndpoint",
            "node1-eth0",
            {
                "node": "node1",
                "interfaceName": "eth0",
                "expectedIPs": ["198.51.100.2", "fd00::2"],
                "profiles": ["profile1"],
                "ports": [{"name": "some-port", "port": 1234, "protocol": "TCP"}],
            },
            labels={"role": "webserver", "environment": "production"},
        ),
        doc("HostEndpoint", "node2-all", {"node": "node2", "interfaceName": "*"}),
    ],
    "NetworkPolicy": [
        doc(
            "NetworkPolicy",
            "allow-tcp-6379",
            {
                "selector": "role == 'database'",
                "types": ["Ingress", "Egress"],
                "ingress": [
                    {
                        "action": "Allow",
                        "protocol": "TCP",
                        "source": {"selector": "role == 'frontend'"},
                        "destination": {"ports": [6379]},
                    }
                ],
                "egress": [{"action": "Allow"}],
            },
            "production",
        ),
        doc(
            "NetworkPolicy",
            "security.deny-egress",
            {"tier": "security", "order": 100, "egress": [{"action": "Deny"}]},
            "production",
        ),
    ],
    "GlobalNetworkPolicy": [
        doc(
            "GlobalNetworkPolicy",
            "default.allow-dns",
            {
                "order": 200.5,
                "selector": "all()",
                "types": ["Egress"],
                "egress": [
                    {
                        "action": "Allow",
                        "protocol": "UDP",
                        "destination": {"ports": [53], "nets": ["10.96.0.10/32"]},
                    }
                ],
            },
        ),
        doc(
            "GlobalNetworkPolicy",
            "allow-ping",
            {
                "selector": "has(role)",
                "namespaceSelector": "environment == 'dev'",
                "serviceAccountSelector": "role == 'ci'",
                "ingress": [
                    {"action": "Allow", "protocol": "ICMP", "icmp": {"type": 8, "code": 0}}
                ],
            },
        ),
        doc(
            "GlobalNetworkPolicy",
            "platform.host-ssh",
            {
                "tier": "platform",
                "order": 10,
                "selector": "has(host-endpoint)",
                "preDNAT": True,
                "applyOnForward": True,
                "ingress": [
                    {"action": "Allow", "protocol": "TCP", "destination": {"ports": ["22"]}}
                ],
            },
        ),
        doc(
            "GlobalNetworkPolicy",
            "untracked",
            {
                "selector": "role == 'lb'",
                "doNotTrack": True,
                "applyOnForward": True,
                "ingress": [{"action": "Deny", "source": {"notNets": ["10.0.0.0/8"]}}],
                "egress": [{"action": "Allow"}],
            },
        ),
    ],
    "Profile": [
        doc(
            "Profile",
            "kns.default",
            {
                "ingress": [{"action": "Allow"}],
                "egress": [{"action": "Allow"}],
                "labelsToApply": {"pcns.projectcalico.org/name": "default"},
            },
        ),
        doc("Profile", "empty", {}),
    ],
    "Tier": [
        doc("Tier", "security", {"order": 300, "defaultAction": "Pass"}),
        doc("Tier", "default", {"order": 1000000}),
    ],
    "NetworkSet": [
        doc(
            "NetworkSet",
            "external-database",
            {"nets": ["198.51.100.0/28", "203.0.113.0/24", "2001:db8::/64"]},
            "db",
            labels={"role": "db"},
        )
    ],
    "GlobalNetworkSet": [
        doc(
            "GlobalNetworkSet",
            "a-name-for-the-set",
            {"nets": ["198.51.100.0/28", "203.0.113.0/24"]},
            labels={"role": "external-database"},
        )
    ],
    "IPPool": [
        doc(
            "IPPool",
            "default-ipv4-ippool",
            {
                "cidr": "10.65.0.0/16",
                "ipipMode": "CrossSubnet",
                "vxlanMode": "Never",
                "natOutgoing": True,
                "blockSize": 26,
                "nodeSelector": "all()",
                "allowedUses": ["Workload", "Tunnel"],
            },
        ),
        doc("IPPool", "v6", {"cidr": "fd00:10:65::/48"}),
        doc(
            "IPPool",
            "lb",
            {
                "cidr": "10.200.0.0/24",
                "allowedUses": ["LoadBalancer"],
                "disableBGPExport": True,
                "assignmentMode": "Manual",
            },
        ),
    ],
    "BGPConfiguration": [
        doc(
            "BGPConfiguration",
            "default",
            {
                "logSeverityScreen": "Info",
                "nodeToNodeMeshEnabled": False,
                "asNumber": 63400,
                "listenPort": 178,
                "serviceClusterIPs": [{"cidr": "10.96.0.0/12"}],
                "serviceExternalIPs": [{"cidr": "104.244.42.129/32"}, {"cidr": "172.217.3.0/24"}],
                "serviceLoadBalancerIPs": [{"cidr": "203.0.113.0/24"}],
                "communities": [{"name": "bgp-large-community", "value": "63400:300:100"}],
                "prefixAdvertisements": [
                    {"cidr": "172.218.4.0/26", "communities": ["bgp-large-community", "63400:120"]}
                ],
                "nodeMeshMaxRestartTime": "120s",
                "nodeMeshPassword": {"secretKeyRef": {"name": "bgp-secrets", "key": "mesh"}},
                "bindMode": "NodeIP",
            },
        ),
        doc("BGPConfiguration", "node.node1", {"asNumber": "64512"}),
    ],
    "BGPPeer": [
        doc(
            "BGPPeer",
            "some.name",
            {
                "node": "rack1-host1",
                "peerIP": "192.168.1.1",
                "asNumber": 63400,
                "password": {"secretKeyRef": {"name": "bgp-secrets", "key": "rr-password"}},
                "maxRestartTime": "2m",
                "keepaliveTime": "20s",
                "holdTime": "1m30s",
                "sourceAddress": "UseNodeIP",
            },
        ),
        doc(
            "BGPPeer",
            "peer-with-route-reflectors",
            {"nodeSelector": "all()", "peerSelector": "route-reflector == 'true'"},
        ),
        doc(
            "BGPPeer",
            "v6-port",
            {"peerIP": "[fd00::9]:1179", "asNumber": "1.10", "keepOriginalNextHop": True},
        ),
    ],
    "Node": [
        {
            **doc(
                "Node",
                "node-hostname",
                {
                    "bgp": {
                        "asNumber": 64512,
                        "ipv4Address": "198.51.100.2/24",
                        "ipv6Address": "2001:db8:85a3::8a2e:370:7334/120",
                        "ipv4IPIPTunnelAddr": "10.65.0.1",
                        "routeReflectorClusterID": "224.0.0.1",
                    },
                    "ipv4VXLANTunnelAddr": "10.65.0.2",
                    "vxlanTunnelMACAddr": "66:cc:57:5c:d5:1f",
                    "orchRefs": [{"nodeName": "node-hostname", "orchestrator": "k8s"}],
                    "addresses": [
                        {"address": "198.51.100.2/24", "type": "CalicoNodeIP"},
                        {"address": "198.51.100.2", "type": "InternalIP"},
                    ],
                },
                labels={"kubernetes.io/hostname": "node-hostname", "route-reflector": "true"},
            ),
            "status": {"podCIDRs": ["10.65.0.0/24"]},
        },
        doc("Node", "bare", {}),
    ],
    "FelixConfiguration": [
        doc(
            "FelixConfiguration",
            "default",
            {
                "ipv6Support": False,
                "ipipMTU": 1400,
                "chainInsertMode": "Append",
                "logSeverityScreen": "Info",
                "iptablesRefreshInterval": "90s",
                "routeRefreshInterval": "1m30s",
                "reportingInterval": "0s",
                "iptablesLockProbeInterval": "50ms",
                "defaultEndpointToHostAction": "Return",
                "failsafeInboundHostPorts": [
                    {"protocol": "TCP", "port": 22},
                    {"protocol": "UDP", "port": 68},
                    {"protocol": "TCP", "port": 179, "net": "198.51.100.0/24"},
                ],
                "failsafeOutboundHostPorts": [],
                "interfacePrefix": "tbw",
                "ipipEnabled": True,
                "iptablesBackend": "Auto",
                "healthEnabled": True,
                "healthPort": 9099,
                "healthHost": "localhost",
                "prometheusMetricsEnabled": True,
                "prometheusMetricsPort": 9091,
                "iptablesMarkMask": 4278190080,
                "bpfLogLevel": "",
                "bpfEnabled": False,
                "floatingIPs": "Disabled",
                "vxlanVNI": 4096,
                "featureDetectOverride": "SNATFullyRandom=true",
                "routeTableRanges": [{"min": 1, "max": 250}],
            },
        ),
        doc("FelixConfiguration", "node.node1", {"logSeverityScreen": "debug"}),
    ],
    "ClusterInformation": [
        doc(
            "ClusterInformation",
            "default",
            {
                "clusterGUID": "6f2a1c8d0b2f4a6d9e3f7c1b5a9d8e2f",
                "clusterType": "k8s,bgp,kubeadm,kdd",
                "calicoVersion": "v3.27.0",
                "datastoreReady": True,
                "variant": "Calico",
            },
        )
    ],
}

ALL_GOOD = [(kind, i, d) for kind, docs in GOOD.items() for i, d in enumerate(docs)]
IDS = [f"{kind}-{i}" for kind, i, _ in ALL_GOOD]


def test_every_kind_has_examples() -> None:
    assert set(GOOD) == {k.kind for k in ALL_KINDS} == set(SPEC_TYPES)


@pytest.mark.parametrize(("kind", "index", "document"), ALL_GOOD, ids=IDS)
def test_good_document_parses_and_round_trips(
    kind: str, index: int, document: dict[str, Any]
) -> None:
    original = copy.deepcopy(document)
    r = resource_from_dict(document)
    assert document == original  # input not mutated
    assert r.kind == kind
    assert isinstance(r.spec, SPEC_TYPES[kind])
    assert r.metadata.name == document["metadata"]["name"]
    rendered = resource_to_dict(r)
    assert list(rendered) == [
        "kind",
        "apiVersion",
        "metadata",
        "spec",
        *(["status"] if "status" in document else []),
    ]
    assert resource_from_dict(rendered) == r
    assert resource_to_dict(resource_from_dict(rendered)) == rendered  # canonical
    assert hash(r) == hash(resource_from_dict(rendered))


@pytest.mark.parametrize(("kind", "index", "document"), ALL_GOOD, ids=IDS)
def test_good_document_survives_storage(kind: str, index: int, document: dict[str, Any]) -> None:
    r = resource_from_dict(document)
    value = encode(r)
    assert b"resourceVersion" not in value
    back = decode(r.key, value, 77)
    assert back.metadata.resource_version == "77"
    assert back == r.__class__(r.kind, back.metadata, r.spec, r.status)
    assert back.metadata == r.metadata.__class__(
        **{**{s: getattr(r.metadata, s) for s in r.metadata.__slots__}, "resource_version": "77"}
    )


def good(kind: str, index: int = 0) -> dict[str, Any]:
    """A deep copy of one good example, to be broken by a test."""
    return copy.deepcopy(GOOD[kind][index])


def problems(document: object) -> dict[str, str]:
    """field path -> message of every problem ``resource_from_dict`` reports (must fail)."""
    with pytest.raises(ValidationError) as info:
        resource_from_dict(document)
    return {e.field: e.message for e in info.value.errors}
