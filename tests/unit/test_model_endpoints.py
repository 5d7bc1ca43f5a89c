"""WorkloadEndpoint, HostEndpoint and (Global)NetworkSet: typed values and field-exact errors."""

from __future__ import annotations

from ipaddress import ip_address, ip_network

from datastore.codec import resource_from_dict, resource_to_dict
from datastore.errors import ValidationError
from datastore.model import (
    GlobalNetworkSetSpec,
    HostEndpointSpec,
    WorkloadEndpointPort,
    WorkloadEndpointSpec,
)
from tests.unit.test_model_examples import good, problems


def test_wep_values_are_typed() -> None:
    r = resource_from_dict(good("WorkloadEndpoint", 1))
    spec = r.spec
    assert isinstance(spec, WorkloadEndpointSpec)
    assert spec.ip_networks == (ip_network("10.65.1.7/32"), ip_network("fd00:10:65::7/128"))
    assert spec.ip_nats[0].external_ip == ip_address("203.0.113.7")
    assert spec.ipv4_gateway == ip_address("10.65.1.1")
    assert r.metadata.namespace == "openstack"
    first = resource_from_dict(good("WorkloadEndpoint")).spec
    assert isinstance(first, WorkloadEndpointSpec)
    assert first.ports[0] == WorkloadEndpointPort("connect", 6, 8080, 0, None)
    assert first.ports[1].host_ip == ip_address("198.51.100.2")
    assert first.profiles == ("kns.default", "ksa.default.default")


def test_wep_collects_every_problem_with_its_path() -> None:
    d = good("WorkloadEndpoint")
    spec = d["spec"]
    spec["ipNetworks"] = ["10.65.0.0/24", "10.65.0.999/32"]
    spec["ipv4Gateway"] = "fd00::1"
    spec["mac"] = "not-a-mac"
    spec["ports"][0]["port"] = 0
    spec["ports"][1]["protocol"] = "ICMP"
    spec["profiles"] = ["Upper"]
    spec["bogus"] = 1
    del spec["interfaceName"]
    d["metadata"]["labels"]["bad key!"] = "x"
    got = problems(d)
    assert set(got) == {
        "spec.ipNetworks[0]",
        "spec.ipNetworks[1]",
        "spec.ipv4Gateway",
        "spec.mac",
        "spec.ports[0].port",
        "spec.ports[1].protocol",
        "spec.profiles[0]",
        "spec.bogus",
        "spec.interfaceName",
        "metadata.labels.bad key!",
    }
    assert "multiple addresses" in got["spec.ipNetworks[0]"]
    assert "IPv4" in got["spec.ipv4Gateway"]
    assert got["spec.bogus"] == "unknown field"
    assert got["spec.interfaceName"] == "required field is missing"


def test_wep_error_message_names_resource_and_field() -> None:
    d = good("WorkloadEndpoint")
    d["spec"]["ipNetworks"] = ["nonsense"]
    try:
        resource_from_dict(d)
    except ValidationError as exc:
        assert str(exc.errors[0]) == (
            "WorkloadEndpoint default/node1-k8s-frontend--5gs43-eth0: spec.ipNetworks[0]: "
            "invalid CIDR 'nonsense'"
        )
    else:
        raise AssertionError("expected ValidationError")


def test_wep_cross_field_checks() -> None:
    d = good("WorkloadEndpoint", 1)
    d["spec"]["ipNATs"] = [
        {"internalIP": "10.65.1.7", "externalIP": "203.0.113.7"},
        {"internalIP": "10.65.9.9", "externalIP": "203.0.113.8"},
    ]
    assert set(problems(d)) == {"spec.ipNATs[1].internalIP"}
    d["spec"]["ipNATs"][0]["externalIP"] = "2001:db8::1"
    assert set(problems(d)) == {"spec.ipNATs[0].externalIP"}  # no knock-on report
    d = good("WorkloadEndpoint")
    d["spec"]["ports"][1]["hostPort"] = 0
    assert set(problems(d)) == {"spec.ports[1].name"}


def test_wep_required_node_and_namespace() -> None:
    d = good("WorkloadEndpoint")
    del d["spec"]["node"]
    del d["metadata"]["namespace"]
    assert set(problems(d)) == {"spec.node", "metadata.namespace"}


def test_wep_name_and_namespace_rules() -> None:
    d = good("WorkloadEndpoint")
    d["metadata"]["name"] = "Node1_bad"
    d["metadata"]["namespace"] = "a.b"
    got = problems(d)
    assert set(got) == {"metadata.name", "metadata.namespace"}
    d["metadata"]["name"] = "a" * 254
    d["metadata"]["namespace"] = "ok"
    assert "253" in problems(d)["metadata.name"]


def test_hep_requires_node_and_interface_or_ips() -> None:
    d = good("HostEndpoint")
    del d["spec"]["node"]
    del d["spec"]["interfaceName"]
    del d["spec"]["expectedIPs"]
    assert set(problems(d)) == {"spec.node", "spec.interfaceName"}


def test_hep_values_and_bad_values() -> None:
    r = resource_from_dict(good("HostEndpoint"))
    assert isinstance(r.spec, HostEndpointSpec)
    assert r.spec.expected_ips == (ip_address("198.51.100.2"), ip_address("fd00::2"))
    assert r.namespace is None
    d = good("HostEndpoint")
    d["spec"]["interfaceName"] = "an-interface-name-too-long"
    d["spec"]["expectedIPs"] = ["198.51.100.2", "198.51.100.2/24"]
    d["spec"]["ports"][0]["name"] = "-bad"
    d["metadata"]["namespace"] = "default"
    assert set(problems(d)) == {
        "spec.interfaceName",
        "spec.expectedIPs[1]",
        "spec.ports[0].name",
        "metadata.namespace",
    }


def test_network_sets() -> None:
    r = resource_from_dict(good("GlobalNetworkSet"))
    assert isinstance(r.spec, GlobalNetworkSetSpec)
    assert r.spec.nets == (ip_network("198.51.100.0/28"), ip_network("203.0.113.0/24"))
    d = good("NetworkSet")
    d["spec"]["nets"] = ["198.51.100.0/33", 5]
    d["metadata"]["labels"]["projectcalico.org/namespace"] = "db"
    assert set(problems(d)) == {"spec.nets[0]", "spec.nets[1]"}
    d["spec"]["nets"] = ["198.51.100.1/28"]  # host bits are masked, as felix uses it
    got = problems(d)
    assert set(got) == {"metadata.labels.projectcalico.org/namespace"}
    del d["metadata"]["labels"]["projectcalico.org/namespace"]
    r = resource_from_dict(d)
    assert resource_to_dict(r)["spec"] == {"nets": ["198.51.100.0/28"]}
