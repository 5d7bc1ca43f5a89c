"""Policy kinds: NetworkPolicy, GlobalNetworkPolicy, Profile, Tier.

Role: typed specs with parsed ``Selector``s (``policy.selector``) and ``Rule``s
(``policy.rules``), validated as Calico does:
* ``types`` defaults as Calico derives it: ``[Ingress]`` when there are no egress rules,
  ``[Egress]`` when there are only egress rules, both when there are both; duplicates refused.
* GlobalNetworkPolicy: ``preDNAT`` and ``doNotTrack`` need ``applyOnForward: true``, cannot both
  be set, and a preDNAT policy has no egress rules and no ``Egress`` type.
* A policy in a tier other than ``default`` must be named ``<tier>.<name>``; ``tier`` is always
  present after parsing (``default`` when omitted) and always rendered.
* ``global()`` is refused in a policy's own selectors (Calico allows it only in rule
  namespaceSelectors, which ``policy.rules`` handles).
* Tier names are DNS labels; the default tier's order, when given, must be 1000000.

Outputs: registered ``KindModel``s; classes re-exported by ``datastore.model``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from datastore.kinds import GLOBAL_NETWORK_POLICY, NETWORK_POLICY, PROFILE, TIER
from datastore.model_base import KindModel, Metadata, Spec, register
from datastore.schema import (
    EMPTY_MAP,
    AnyType,
    BoolType,
    EnumType,
    Errors,
    FloatType,
    FrozenMap,
    ListType,
    RulesType,
    Schema,
    SelectorType,
    StrMapType,
    StrType,
    check_dns_label,
    check_dns_subdomain,
)
from datastore.schema import field as f
from policy.ordering import DEFAULT_TIER
from policy.rules import Rule
from policy.selector import Selector

__all__ = [
    "DEFAULT_TIER_ORDER",
    "EGRESS",
    "INGRESS",
    "GlobalNetworkPolicySpec",
    "NetworkPolicySpec",
    "ProfileSpec",
    "TierSpec",
    "default_policy_types",
]

INGRESS = "Ingress"
EGRESS = "Egress"
DEFAULT_TIER_ORDER = 1_000_000.0


def default_policy_types(ingress: tuple[Rule, ...], egress: tuple[Rule, ...]) -> tuple[str, ...]:
    """Calico's default ``types`` for a policy that does not set them."""
    if egress and not ingress:
        return (EGRESS,)
    if egress:
        return (INGRESS, EGRESS)
    return (INGRESS,)


@dataclass(frozen=True, slots=True)
class NetworkPolicySpec(Spec):
    """A namespaced policy: applies to endpoints in its namespace matched by ``selector``.

    ``selector`` None means "all endpoints" (Calico's empty selector); ``order`` None means
    "after every ordered policy".
    """

    tier: str = DEFAULT_TIER
    order: float | None = None
    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()
    selector: Selector | None = None
    types: tuple[str, ...] = ()
    service_account_selector: Selector | None = None
    performance_hints: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class GlobalNetworkPolicySpec(Spec):
    """A cluster-wide policy; can also apply to host endpoints (preDNAT, doNotTrack, forward)."""

    tier: str = DEFAULT_TIER
    order: float | None = None
    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()
    selector: Selector | None = None
    types: tuple[str, ...] = ()
    do_not_track: bool = False
    pre_dnat: bool = False
    apply_on_forward: bool = False
    service_account_selector: Selector | None = None
    namespace_selector: Selector | None = None
    performance_hints: tuple[str, ...] = ()


_TYPES = ListType(EnumType(INGRESS, EGRESS), unique=True, max_items=2)
_HINTS = ListType(EnumType("AssumeNeededOnEveryNode"), unique=True)
_TIER_NAME = StrType(check_dns_label, max_len=63)
_BOOL = BoolType()


def _finish_types(spec: NetworkPolicySpec, path: str, errs: Errors) -> object:
    if spec.types:
        return spec
    return dataclasses.replace(spec, types=default_policy_types(spec.ingress, spec.egress))


def _finish_gnp(spec: GlobalNetworkPolicySpec, path: str, errs: Errors) -> object:
    if spec.do_not_track and spec.pre_dnat:
        errs.add(f"{path}.preDNAT", "preDNAT and doNotTrack cannot both be true")
    if spec.pre_dnat and spec.egress:
        errs.add(f"{path}.egress", "a preDNAT policy cannot have egress rules")
    if spec.pre_dnat and EGRESS in spec.types:
        errs.add(f"{path}.types", "a preDNAT policy cannot have the Egress type")
    if (spec.do_not_track or spec.pre_dnat) and not spec.apply_on_forward:
        errs.add(
            f"{path}.applyOnForward", "applyOnForward must be true when preDNAT or doNotTrack is"
        )
    if spec.types:
        return spec
    return dataclasses.replace(spec, types=default_policy_types(spec.ingress, spec.egress))


def _check_tiered_name(meta: Metadata, spec: NetworkPolicySpec, errs: Errors) -> None:
    tier = spec.tier
    if tier != DEFAULT_TIER:
        prefix = tier + "."
        if not meta.name.startswith(prefix) or len(meta.name) == len(prefix):
            errs.add(
                "metadata.name",
                f"a policy in tier {tier!r} must be named '{prefix}<name>' (got {meta.name!r})",
            )


NP_SCHEMA = Schema(
    NetworkPolicySpec,
    [
        f("tier", "tier", _TIER_NAME, DEFAULT_TIER, always=True),
        f("order", "order", FloatType()),
        f("ingress", "ingress", RulesType(), ()),
        f("egress", "egress", RulesType(), ()),
        f("selector", "selector", SelectorType()),
        f("types", "types", _TYPES, (), always=True),
        f("service_account_selector", "serviceAccountSelector", SelectorType()),
        f("performance_hints", "performanceHints", _HINTS, ()),
    ],
    _finish_types,
)

GNP_SCHEMA = Schema(
    GlobalNetworkPolicySpec,
    [
        f("tier", "tier", _TIER_NAME, DEFAULT_TIER, always=True),
        f("order", "order", FloatType()),
        f("ingress", "ingress", RulesType(), ()),
        f("egress", "egress", RulesType(), ()),
        f("selector", "selector", SelectorType()),
        f("types", "types", _TYPES, (), always=True),
        f("do_not_track", "doNotTrack", _BOOL, False),
        f("pre_dnat", "preDNAT", _BOOL, False),
        f("apply_on_forward", "applyOnForward", _BOOL, False),
        f("service_account_selector", "serviceAccountSelector", SelectorType()),
        f("namespace_selector", "namespaceSelector", SelectorType()),
        f("performance_hints", "performanceHints", _HINTS, ()),
    ],
    _finish_gnp,
)


# --------------------------------------------------------------------------- Profile, Tier


@dataclass(frozen=True, slots=True)
class ProfileSpec(Spec):
    """Rules applied after policies to endpoints listing this profile; labels they inherit."""

    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()
    labels_to_apply: FrozenMap[str, str] = dataclasses.field(default=EMPTY_MAP)


PROFILE_SCHEMA = Schema(
    ProfileSpec,
    [
        f("ingress", "ingress", RulesType(), ()),
        f("egress", "egress", RulesType(), ()),
        f("labels_to_apply", "labelsToApply", StrMapType(), EMPTY_MAP),
    ],
)


@dataclass(frozen=True, slots=True)
class TierSpec(Spec):
    """A tier of policies: lower ``order`` first (None: last); ``default_action`` at its end."""

    order: float | None = None
    default_action: str = ""


def _check_tier(meta: Metadata, spec: TierSpec, errs: Errors) -> None:
    if meta.name == DEFAULT_TIER and spec.order is not None and spec.order != DEFAULT_TIER_ORDER:
        errs.add("spec.order", f"the default tier's order must be {int(DEFAULT_TIER_ORDER)}")


TIER_SCHEMA = Schema(
    TierSpec,
    [
        f("order", "order", FloatType()),
        f("default_action", "defaultAction", EnumType("Deny", "Pass"), ""),
    ],
)

register(KindModel(NETWORK_POLICY, NP_SCHEMA, check_dns_subdomain, _check_tiered_name, AnyType()))
register(
    KindModel(GLOBAL_NETWORK_POLICY, GNP_SCHEMA, check_dns_subdomain, _check_tiered_name, AnyType())
)
register(KindModel(PROFILE, PROFILE_SCHEMA, check_dns_subdomain))
register(KindModel(TIER, TIER_SCHEMA, check_dns_label, _check_tier))
