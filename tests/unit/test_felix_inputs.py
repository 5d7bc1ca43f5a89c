"""felix.inputs: real Calico JSON documents through InputState into the calculator."""

from __future__ import annotations

import json
import logging
from ipaddress import ip_network
from typing import Any

import pytest

from datastore.keys import RESOURCES_ROOT, resource_key
from datastore.syncer import Update
from felix.calc import Calculator
from felix.inputs import InputState, felix_prefixes
from felix.ipsetdefs import SetDef
from felix.model import NAMESPACE_LABEL
from policy.selector import parse

HOST = "node1"
V3 = "projectcalico.org/v3"


def doc(kind: str, name: str, spec: dict[str, Any], ns: str | None = None, **meta: Any) -> bytes:
    md: dict[str, Any] = {"name": name, **meta}
    if ns is not None:
        md["namespace"] = ns
    return json.dumps({"apiVersion": V3, "kind": kind, "metadata": md, "spec": spec}).encode()


def key(kind: str, name: str, ns: str | None = None) -> str:
    return resource_key(kind, name, ns)


WEP_NAME = "node1-k8s-frontend--abc-eth0"
WEP = doc(
    "WorkloadEndpoint",
    WEP_NAME,
    {
        "orchestrator": "k8s",
        "node": HOST,
        "containerID": "1234",
        "pod": "frontend-abc",
        "endpoint": "eth0",
        "serviceAccountName": "web",
        "ipNetworks": ["10.65.0.5/32", "fd00::5/128"],
        "profiles": ["kns.prod", "ksa.prod.web"],
        "interfaceName": "tbw1234",
        "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
    },
    ns="prod",
    labels={"app": "frontend", "projectcalico.org/namespace": "prod"},
)
REMOTE_WEP = doc(
    "WorkloadEndpoint",
    "node2-k8s-db-eth0",
    {
        "orchestrator": "k8s",
        "node": "node2",
        "pod": "db",
        "endpoint": "eth0",
        "ipNetworks": ["10.65.1.7/32"],
        "interfaceName": "tbw9",
    },
    ns="prod",
    labels={"app": "db"},
)
NS_PROFILE = doc(
    "Profile",
    "kns.prod",
    {
        "ingress": [{"action": "Allow"}],
        "egress": [{"action": "Allow"}],
        "labelsToApply": {"pcns.projectcalico.org/name": "prod", "pcns.team": "blue"},
    },
)
NP = doc(
    "NetworkPolicy",
    "allow-db",
    {
        "tier": "default",
        "order": 100,
        "selector": "app == 'frontend'",
        "types": ["Egress"],
        "egress": [
            {
                "action": "Allow",
                "protocol": "TCP",
                "destination": {"selector": "app == 'db'", "ports": [5432]},
            }
        ],
    },
    ns="prod",
)
GNP = doc(
    "GlobalNetworkPolicy",
    "security.block",
    {
        "tier": "security",
        "order": 1,
        "selector": "all()",
        "namespaceSelector": "team == 'blue'",
        "types": ["Ingress"],
        "ingress": [{"action": "Deny", "source": {"nets": ["192.168.0.0/16"]}}],
    },
)
TIER = doc("Tier", "security", {"order": 10})
POOL = doc("IPPool", "pool1", {"cidr": "10.65.0.0/16", "natOutgoing": True, "ipipMode": "Never"})
GNS = doc("GlobalNetworkSet", "corp", {"nets": ["10.200.0.0/16"]}, labels={"app": "db"})


def everything() -> list[Update]:
    return [
        Update(key("WorkloadEndpoint", WEP_NAME, "prod"), WEP, 10),
        Update(key("WorkloadEndpoint", "node2-k8s-db-eth0", "prod"), REMOTE_WEP, 11),
        Update(key("Profile", "kns.prod"), NS_PROFILE, 12),
        Update(key("NetworkPolicy", "allow-db", "prod"), NP, 13),
        Update(key("GlobalNetworkPolicy", "security.block"), GNP, 14),
        Update(key("Tier", "security"), TIER, 15),
        Update(key("IPPool", "pool1"), POOL, 16),
        Update(key("GlobalNetworkSet", "corp"), GNS, 17),
    ]


def fresh() -> InputState:
    return InputState(Calculator(HOST))


def test_real_documents_reach_the_calculator() -> None:
    inp = fresh()
    for u in everything():
        inp.apply_update(u)
    st = inp.calc.state()
    wep_key = f"wep/prod/{WEP_NAME}"
    assert set(st.endpoints) == {wep_key}
    plan = st.endpoints[wep_key]
    ep = plan.endpoint
    assert ep.iface == "tbw1234"
    assert ep.ipv4 == (ip_network("10.65.0.5/32"),) and ep.ipv6 == (ip_network("fd00::5/128"),)
    assert ep.labels[NAMESPACE_LABEL] == "prod"
    assert ep.labels["projectcalico.org/serviceaccount"] == "web"
    assert ep.labels["projectcalico.org/orchestrator"] == "k8s"
    assert [(p.name, p.protocol, p.port) for p in ep.ports] == [("http", 6, 8080)]
    assert plan.profiles == ("kns.prod", "ksa.prod.web")
    # The GNP's namespaceSelector matches through the profile's labelsToApply (pcns.team).
    assert [(t.name, t.policies) for t in plan.ingress] == [("security", ("gnp/security.block",))]
    assert [(t.name, t.policies) for t in plan.egress] == [("default", ("np/prod/allow-db",))]
    # The NetworkPolicy's destination selector is scoped to its namespace: the remote db pod
    # is in, the (non-namespaced) network set labelled app=db is not.
    sd = SetDef.for_selector(parse(f"{NAMESPACE_LABEL} == 'prod' && app == 'db'"))
    assert st.sets[sd.id].members_v4 == {"10.65.1.7"}
    assert st.pools["pool1"].nat_outgoing is True
    assert set(st.profiles) == {"kns.prod"}


def test_deletes_remove_everything() -> None:
    inp = fresh()
    ups = everything()
    for u in ups:
        inp.apply_update(u)
    for u in ups:
        inp.apply_update(Update(u.key, None, 100))
    st = inp.calc.state()
    assert st.endpoints == {} and st.policies == {} and st.sets == {} and st.pools == {}


def test_wep_without_namespace_label_still_gets_namespaced_policy() -> None:
    inp = fresh()
    wep = json.loads(WEP)
    wep["metadata"]["labels"] = {"app": "frontend"}
    inp.apply_update(Update(key("WorkloadEndpoint", WEP_NAME, "prod"), json.dumps(wep).encode(), 1))
    inp.apply_update(Update(key("NetworkPolicy", "allow-db", "prod"), NP, 2))
    plan = inp.calc.state().endpoints[f"wep/prod/{WEP_NAME}"]
    assert [t.policies for t in plan.egress] == [("np/prod/allow-db",)]


@pytest.mark.parametrize(
    "bad",
    [
        b"{not json",
        doc("NetworkPolicy", "allow-db", {"selector": "app ==", "types": ["Egress"]}, ns="prod"),
        doc("NetworkPolicy", "other-name", {"selector": "all()"}, ns="prod"),  # wrong key
    ],
    ids=["bad-json", "bad-selector", "name-mismatch"],
)
def test_invalid_value_removes_previous_version_and_logs_once_per_revision(
    bad: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    inp = fresh()
    inp.apply_update(Update(key("WorkloadEndpoint", WEP_NAME, "prod"), WEP, 1))
    k = key("NetworkPolicy", "allow-db", "prod")
    inp.apply_update(Update(k, NP, 2))
    assert "np/prod/allow-db" in inp.calc.state().policies
    with caplog.at_level(logging.WARNING, logger="felix.inputs"):
        inp.apply_update(Update(k, bad, 3))
        inp.apply_update(Update(k, bad, 3))  # the same revision again: not logged again
    assert "np/prod/allow-db" not in inp.calc.state().policies
    assert inp.calc.state().endpoints[f"wep/prod/{WEP_NAME}"].egress == ()
    warnings = [r.getMessage() for r in caplog.records if "inputs.invalid" in r.getMessage()]
    assert len(warnings) == 1
    assert k in warnings[0] and "revision=3" in warnings[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="felix.inputs"):
        inp.apply_update(Update(k, bad, 4))  # a new bad revision is logged
    assert len([r for r in caplog.records if "inputs.invalid" in r.getMessage()]) == 1
    # A good value restores it and clears the memory of the bad one.
    inp.apply_update(Update(k, NP, 5))
    assert "np/prod/allow-db" in inp.calc.state().policies
    assert k not in inp.invalid


def test_invalid_value_does_not_affect_other_keys() -> None:
    inp = fresh()
    for u in everything():
        inp.apply_update(u)
    before = inp.calc.state()
    inp.apply_update(Update(key("GlobalNetworkSet", "other"), b"[]", 50))
    assert inp.calc.state() == before


def test_unknown_kind_prefix_ignored() -> None:
    inp = fresh()
    for u in everything():
        inp.apply_update(u)
    before = inp.calc.state()
    inp.apply_update(Update(RESOURCES_ROOT + "somethingelses/x", b"{}", 60))
    inp.apply_update(Update("/calico/ipam/v2/whatever", b"{}", 61))
    assert inp.calc.state() == before


def test_felix_configuration_changes_are_tracked() -> None:
    inp = fresh()
    k = key("FelixConfiguration", "default")
    inp.apply_update(Update(k, doc("FelixConfiguration", "default", {"healthPort": 9100}), 1))
    assert inp.config_changed
    assert inp.felix_configs["default"].health_port == 9100
    inp.config_changed = False
    inp.apply_update(Update(k, doc("FelixConfiguration", "default", {"healthPort": 9100}), 2))
    assert not inp.config_changed  # same content, new revision
    inp.apply_update(Update(k, None, 3))
    assert inp.config_changed and "default" not in inp.felix_configs


def test_host_endpoint_and_prednat_policy() -> None:
    inp = fresh()
    inp.apply_update(
        Update(
            key("HostEndpoint", "node1-eth0"),
            doc(
                "HostEndpoint",
                "node1-eth0",
                {"node": HOST, "interfaceName": "eth0", "expectedIPs": ["198.51.100.1"]},
                labels={"role": "node"},
            ),
            1,
        )
    )
    inp.apply_update(
        Update(
            key("GlobalNetworkPolicy", "pd"),
            doc(
                "GlobalNetworkPolicy",
                "pd",
                {
                    "selector": "role == 'node'",
                    "preDNAT": True,
                    "applyOnForward": True,
                    "types": ["Ingress"],
                    "ingress": [{"action": "Deny", "source": {"nets": ["203.0.113.0/24"]}}],
                },
            ),
            2,
        )
    )
    plan = inp.calc.state().endpoints["hep/node1-eth0"]
    assert plan.endpoint.ipv4 == (ip_network("198.51.100.1/32"),)
    assert [t.policies for t in plan.pre_dnat_ingress] == [("gnp/pd",)]
    assert plan.ingress == ()


def test_prefixes_cover_the_felix_kinds() -> None:
    prefixes = felix_prefixes()
    assert RESOURCES_ROOT + "workloadendpoints/" in prefixes
    assert RESOURCES_ROOT + "felixconfigurations/" in prefixes
    assert RESOURCES_ROOT + "nodes/" in prefixes  # node addresses: the IP-in-IP filter
    assert len(prefixes) == len(set(prefixes)) == 11
