"""FelixConfiguration and ClusterInformation: typed fields, opaque Calico fields, errors."""

from __future__ import annotations

from ipaddress import ip_network

from datastore.codec import resource_from_dict, resource_to_dict
from datastore.model import (
    FELIX_OPAQUE_FIELDS,
    ClusterInformationSpec,
    FelixConfigurationSpec,
    ProtoPort,
)
from tests.unit.test_model_examples import doc, good, problems


def test_felix_typed_fields() -> None:
    r = resource_from_dict(good("FelixConfiguration"))
    spec = r.spec
    assert isinstance(spec, FelixConfigurationSpec)
    assert spec.iptables_refresh_interval == 90.0
    assert spec.route_refresh_interval == 90.0
    assert spec.iptables_lock_probe_interval == 0.05
    assert spec.reporting_interval == 0.0
    assert spec.chain_insert_mode == "Append"
    assert spec.failsafe_inbound_host_ports == (
        ProtoPort("TCP", 22),
        ProtoPort("UDP", 68),
        ProtoPort("TCP", 179, ip_network("198.51.100.0/24")),
    )
    assert spec.failsafe_outbound_host_ports == ()  # explicitly none, not "default"
    assert spec.iptables_mark_mask == 0xFF000000
    assert spec.extra == {
        "featureDetectOverride": "SNATFullyRandom=true",
        "routeTableRanges": ({"min": 1, "max": 250},),
        "bpfLogLevel": "",
    }
    out = resource_to_dict(r)["spec"]
    assert out["iptablesRefreshInterval"] == "1m30s"
    assert out["iptablesLockProbeInterval"] == "50ms"
    assert out["failsafeOutboundHostPorts"] == []
    assert out["routeTableRanges"] == [{"min": 1, "max": 250}]
    node = resource_from_dict(good("FelixConfiguration", 1)).spec
    assert isinstance(node, FelixConfigurationSpec)
    assert node.log_severity_screen == "Debug"  # case-insensitive, canonical case stored
    assert node.failsafe_inbound_host_ports is None


def test_felix_errors() -> None:
    d = doc(
        "FelixConfiguration",
        "default",
        {
            "iptablesRefreshInterval": 90,
            "routeRefreshInterval": "90 seconds",
            "healthPort": 70000,
            "logSeverityScreen": "Chatty",
            "failsafeInboundHostPorts": [{"protocol": "ICMP", "port": 1}, {"port": 0}],
            "natOutgoingAddress": "fd00::1",
            "ipipEnabled": "true",
            "madeUpField": True,
        },
    )
    assert set(problems(d)) == {
        "spec.iptablesRefreshInterval",
        "spec.routeRefreshInterval",
        "spec.healthPort",
        "spec.logSeverityScreen",
        "spec.failsafeInboundHostPorts[0].protocol",
        "spec.failsafeInboundHostPorts[1].port",
        "spec.ipipEnabled",
        "spec.madeUpField",
    }
    # Cross checks run once the field values themselves are fine.
    d = doc("FelixConfiguration", "default", {"natOutgoingAddress": "fd00::1"})
    assert set(problems(d)) == {"spec.natOutgoingAddress"}


def test_every_opaque_felix_field_is_accepted_and_preserved() -> None:
    spec = {name: f"value-{i}" for i, name in enumerate(FELIX_OPAQUE_FIELDS)}
    r = resource_from_dict(doc("FelixConfiguration", "default", spec))
    assert resource_to_dict(r)["spec"] == dict(sorted(spec.items()))


def test_cluster_information() -> None:
    r = resource_from_dict(good("ClusterInformation"))
    assert r.spec == ClusterInformationSpec(
        "6f2a1c8d0b2f4a6d9e3f7c1b5a9d8e2f", "k8s,bgp,kubeadm,kdd", "v3.27.0", True, "Calico"
    )
    got = problems(doc("ClusterInformation", "default", {"datastoreReady": "yes", "x": 1}))
    assert set(got) == {"spec.datastoreReady", "spec.x"}
