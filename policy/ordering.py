"""Calico ordering of tiers and of policies within a tier.

Role
    Decide the order in which tiers are evaluated, and the order of policies inside one tier,
    exactly as Calico does. Pure: no I/O, no datastore knowledge.

Inputs
    Objects that have a name and an optional numeric ``order`` (Calico's ``spec.order``), either
    as ``Ordered`` values or as any objects plus key functions.

Outputs
    Sorted tuples, and ``sort_key`` for callers that sort themselves.

Calico semantics (invariants)
    * Lower ``order`` is evaluated first. ``order`` is a float and may be negative or
      fractional (``-5`` < ``0`` < ``0.5`` < ``100``).
    * An absent order (``None``) sorts after every ordered item, as if it were +infinity. (As in
      Calico's Go sorter, an explicit ``inf``, which JSON cannot carry anyway, still sorts before
      an absent order.)
    * Equal orders (including two absent ones) are broken by name, ascending by code point,
      so the result is a total order that depends only on the (order, name) pairs, never on
      input order.
    * ``NaN`` is not a valid order (Calico's API cannot hold one): ``sort_key`` raises
      ``ValueError`` rather than produce an inconsistent order.

Naming convention (Calico)
    Tiers order policies; the tier that always exists is named ``"default"``
    (``DEFAULT_TIER``). A policy in a non-default tier is named ``<tier>.<name>`` (for example
    tier ``security``, policy ``security.allow-dns``); a policy in the default tier has a plain
    name (older Calico also accepted ``default.<name>``). ``policy_tier_prefix_ok`` checks that
    a policy name carries the prefix its tier requires.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

__all__ = [
    "DEFAULT_TIER",
    "Ordered",
    "order_policies",
    "order_tiers",
    "policy_tier_prefix_ok",
    "sort_items",
    "sort_key",
]

#: The tier every Calico installation has; policies without ``spec.tier`` belong to it.
DEFAULT_TIER = "default"

T = TypeVar("T")

SortKey = tuple[int, float, str]


@dataclass(frozen=True, slots=True)
class Ordered:
    """A name with an optional Calico ``order``; the simplest thing ``order_*`` accept."""

    name: str
    order: float | None = None


def sort_key(order: float | None, name: str) -> SortKey:
    """Sort key giving Calico's order: by ``order`` (``None`` last), then by ``name``.

    Raises ``ValueError`` for a NaN order.
    """
    if order is None:
        return (1, 0.0, name)
    value = float(order)
    if math.isnan(value):
        raise ValueError(f"order of {name!r} is NaN")
    return (0, value, name)


def sort_items(
    items: Iterable[T],
    order: Callable[[T], float | None],
    name: Callable[[T], str],
) -> tuple[T, ...]:
    """``items`` sorted by Calico's (order, name) rule, using the given key functions."""
    return tuple(sorted(items, key=lambda item: sort_key(order(item), name(item))))


def order_tiers(
    tiers: Iterable[T],
    order: Callable[[T], float | None] | None = None,
    name: Callable[[T], str] | None = None,
) -> tuple[T, ...]:
    """Tiers in evaluation order.

    Without key functions the items must be ``Ordered`` (or have ``.order`` and ``.name``).
    """
    return sort_items(tiers, order or _attr_order, name or _attr_name)


def order_policies(
    policies: Iterable[T],
    order: Callable[[T], float | None] | None = None,
    name: Callable[[T], str] | None = None,
) -> tuple[T, ...]:
    """Policies of one tier in evaluation order (same rule as tiers: order, then name).

    Callers order the policies of each tier separately; tiers come first in the overall order.
    """
    return sort_items(policies, order or _attr_order, name or _attr_name)


def _attr_order(item: object) -> float | None:
    value = getattr(item, "order", None)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"order must be a number or None, got {value!r}")
    return float(value)


def _attr_name(item: object) -> str:
    value = getattr(item, "name", None)
    if not isinstance(value, str):
        raise TypeError(f"name must be a string, got {value!r}")
    return value


def policy_tier_prefix_ok(policy_name: str, tier: str) -> bool:
    """Whether ``policy_name`` follows Calico's naming rule for a policy in ``tier``.

    In a non-default tier the name must be ``<tier>.<something>``; in the default tier any
    name is accepted (plain, or the older ``default.<name>`` form).
    """
    if tier == DEFAULT_TIER:
        return bool(policy_name)
    prefix = tier + "."
    return policy_name.startswith(prefix) and len(policy_name) > len(prefix)
