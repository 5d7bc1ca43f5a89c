"""NetworkPolicy, GlobalNetworkPolicy, Profile, Tier: defaults, Calico rules, exact paths."""

from __future__ import annotations

import pytest

from datastore.codec import resource_from_dict, resource_to_dict
from datastore.model import GlobalNetworkPolicySpec, NetworkPolicySpec, ProfileSpec, TierSpec
from policy.selector import parse
from tests.unit.test_model_examples import doc, good, problems


def _gnp(spec: dict[str, object], name: str = "p") -> dict[str, object]:
    return doc("GlobalNetworkPolicy", name, spec)


@pytest.mark.parametrize(
    ("ingress", "egress", "types"),
    [
        (False, False, ("Ingress",)),
        (True, False, ("Ingress",)),
        (False, True, ("Egress",)),
        (True, True, ("Ingress", "Egress")),
    ],
)
def test_types_default_as_calico_derives_them(
    ingress: bool, egress: bool, types: tuple[str, ...]
) -> None:
    spec: dict[str, object] = {}
    if ingress:
        spec["ingress"] = [{"action": "Allow"}]
    if egress:
        spec["egress"] = [{"action": "Deny"}]
    r = resource_from_dict(_gnp(spec))
    assert isinstance(r.spec, GlobalNetworkPolicySpec)
    assert r.spec.types == types
    assert resource_to_dict(r)["spec"]["types"] == list(types)
    assert resource_to_dict(r)["spec"]["tier"] == "default"


def test_policy_values_are_parsed() -> None:
    r = resource_from_dict(good("NetworkPolicy"))
    assert isinstance(r.spec, NetworkPolicySpec)
    assert r.spec.selector == parse("role == 'database'")
    assert len(r.spec.ingress) == 1
    assert r.spec.order is None
    g = resource_from_dict(good("GlobalNetworkPolicy"))
    assert isinstance(g.spec, GlobalNetworkPolicySpec)
    assert g.spec.order == 200.5
    assert resource_to_dict(resource_from_dict(good("NetworkPolicy", 1)))["spec"]["order"] == 100


def test_rule_errors_carry_full_paths() -> None:
    d = _gnp(
        {
            "ingress": [
                {"action": "Allow"},
                {
                    "action": "Allow",
                    "protocol": "TCP",
                    "destination": {"ports": [80, "90:80"]},
                },
            ],
            "egress": [{"action": "Explode"}],
        },
        name="default.deny",
    )
    got = problems(d)
    assert "spec.ingress[1].destination.ports[1]" in got
    assert "spec.egress[0].action" in got


def test_gnp_predant_donottrack_rules() -> None:
    got = problems(_gnp({"preDNAT": True, "doNotTrack": True, "egress": [{"action": "Allow"}]}))
    assert set(got) == {"spec.preDNAT", "spec.egress", "spec.applyOnForward"}
    got = problems(_gnp({"preDNAT": True, "applyOnForward": True, "types": ["Egress"]}))
    assert set(got) == {"spec.types"}
    got = problems(_gnp({"doNotTrack": True}))
    assert set(got) == {"spec.applyOnForward"}


def test_tier_prefix_is_required_outside_default_tier() -> None:
    got = problems(_gnp({"tier": "security"}, name="deny-all"))
    assert set(got) == {"metadata.name"}
    assert "security." in got["metadata.name"]
    assert set(problems(_gnp({"tier": "security"}, name="security."))) == {"metadata.name"}
    r = resource_from_dict(_gnp({"tier": "security"}, name="security.deny-all"))
    assert isinstance(r.spec, GlobalNetworkPolicySpec)
    assert r.spec.tier == "security"
    resource_from_dict(_gnp({}, name="default.anything"))
    resource_from_dict(_gnp({}, name="plain"))


def test_policy_field_errors() -> None:
    d = good("NetworkPolicy")
    d["spec"]["selector"] = "role == "
    d["spec"]["types"] = ["Ingress", "Ingress"]
    d["spec"]["order"] = "first"
    d["spec"]["tier"] = "Bad.Tier"
    d["spec"]["doNotTrack"] = True  # not a NetworkPolicy field
    got = problems(d)
    assert set(got) == {
        "spec.selector",
        "spec.types[1]",
        "spec.order",
        "spec.tier",
        "spec.doNotTrack",
    }
    assert got["spec.doNotTrack"] == "unknown field"
    got = problems(_gnp({"selector": "global()", "types": ["Sideways"]}))
    assert set(got) == {"spec.selector", "spec.types[0]"}


def test_order_must_be_finite() -> None:
    assert set(problems(_gnp({"order": float("nan")}))) == {"spec.order"}
    assert set(problems(_gnp({"order": True}))) == {"spec.order"}


def test_profile() -> None:
    r = resource_from_dict(good("Profile"))
    assert isinstance(r.spec, ProfileSpec)
    assert r.spec.labels_to_apply == {"pcns.projectcalico.org/name": "default"}
    d = good("Profile")
    d["spec"]["labelsToApply"] = {"ok": "bad value!", "k": 3}
    d["spec"]["ingress"] = {"action": "Allow"}
    assert set(problems(d)) == {
        "spec.labelsToApply.ok",
        "spec.labelsToApply.k",
        "spec.ingress",
    }


def test_tier() -> None:
    r = resource_from_dict(good("Tier"))
    assert r.spec == TierSpec(300.0, "Pass")
    assert set(problems(doc("Tier", "has.dot", {"defaultAction": "Allow"}))) == {
        "metadata.name",
        "spec.defaultAction",
    }
    assert set(problems(doc("Tier", "default", {"order": 5}))) == {"spec.order"}
