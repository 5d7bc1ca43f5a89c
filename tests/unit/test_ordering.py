"""Unit tests for policy.ordering: Calico's (order, name) ordering of tiers and policies."""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policy.ordering import (
    DEFAULT_TIER,
    Ordered,
    order_policies,
    order_tiers,
    policy_tier_prefix_ok,
    sort_items,
    sort_key,
)


def names(items: tuple[Ordered, ...]) -> list[str]:
    return [i.name for i in items]


def test_default_tier_name() -> None:
    assert DEFAULT_TIER == "default"


def test_orders_ascending_none_last() -> None:
    tiers = [
        Ordered("no-order-b"),
        Ordered("hundred", 100),
        Ordered("no-order-a", None),
        Ordered("negative", -5),
        Ordered("half", 0.5),
        Ordered("zero", 0),
    ]
    assert names(order_tiers(tiers)) == [
        "negative",
        "zero",
        "half",
        "hundred",
        "no-order-a",
        "no-order-b",
    ]


def test_ties_broken_by_name() -> None:
    policies = [Ordered("b", 10), Ordered("a", 10), Ordered("c", 1), Ordered("B", 10)]
    # Code-point order: upper case before lower case.
    assert names(order_policies(policies)) == ["c", "B", "a", "b"]


def test_float_precision_and_large_values() -> None:
    items = [
        Ordered("x", 1e9),
        Ordered("y", 1.0000001),
        Ordered("z", 1.0),
        Ordered("w", -1e9),
        Ordered("v", -0.25),
    ]
    assert names(order_policies(items)) == ["w", "v", "z", "y", "x"]


def test_infinity_before_none() -> None:
    items = [
        Ordered("a", None),
        Ordered("b", math.inf),
        Ordered("c", 1e308),
        Ordered("d", -math.inf),
        Ordered("e", math.inf),
    ]
    assert names(order_tiers(items)) == ["d", "c", "b", "e", "a"]


def test_int_and_float_orders_compare_equal() -> None:
    assert sort_key(1, "a") == sort_key(1.0, "a")
    assert names(order_policies([Ordered("b", 1), Ordered("a", 1.0)])) == ["a", "b"]


def test_sort_key_values() -> None:
    assert sort_key(None, "x") > sort_key(1e300, "a")
    assert sort_key(-1, "z") < sort_key(0, "a")
    assert sort_key(None, "a") < sort_key(None, "b")
    assert sort_key(5, "a") < sort_key(5, "b")


def test_nan_rejected() -> None:
    with pytest.raises(ValueError, match="NaN"):
        sort_key(math.nan, "p")
    with pytest.raises(ValueError):
        order_tiers([Ordered("a", 1), Ordered("p", math.nan)])


def test_result_is_independent_of_input_order() -> None:
    items = [Ordered(f"p{i}", random.Random(i).choice([None, -1, 0, 0.5, 3])) for i in range(30)]
    expected = order_policies(items)
    for seed in range(5):
        shuffled = list(items)
        random.Random(seed).shuffle(shuffled)
        assert order_policies(shuffled) == expected
    assert order_policies(reversed(items)) == expected


@dataclass(frozen=True)
class Policy:
    """A stand-in for the datastore's policy type, with differently named fields."""

    full_name: str
    spec_order: float | None


def test_key_functions_on_arbitrary_objects() -> None:
    pols = [Policy("sec.b", None), Policy("sec.a", 2.0), Policy("sec.c", 1.0)]
    ordered = sort_items(pols, lambda p: p.spec_order, lambda p: p.full_name)
    assert [p.full_name for p in ordered] == ["sec.c", "sec.a", "sec.b"]
    same = order_policies(pols, order=lambda p: p.spec_order, name=lambda p: p.full_name)
    assert same == ordered


def test_attribute_access_type_errors() -> None:
    with pytest.raises(TypeError):
        order_tiers([Ordered("a", "1")])  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        order_tiers([Ordered(3, 1)])  # type: ignore[arg-type]


def test_empty() -> None:
    assert order_tiers([]) == ()
    assert order_policies([]) == ()


@pytest.mark.parametrize(
    ("policy", "tier", "ok"),
    [
        ("security.allow-dns", "security", True),
        ("allow-dns", "security", False),
        ("security.", "security", False),
        ("securityx.allow", "security", False),
        ("other.allow", "security", False),
        ("allow-dns", DEFAULT_TIER, True),
        ("default.allow-dns", DEFAULT_TIER, True),
        ("", DEFAULT_TIER, False),
    ],
)
def test_policy_tier_prefix(policy: str, tier: str, ok: bool) -> None:
    assert policy_tier_prefix_ok(policy, tier) is ok


orders = st.one_of(
    st.none(),
    st.integers(-1000, 1000),
    st.floats(allow_nan=False, allow_infinity=True),
)


@given(st.lists(st.tuples(orders, st.text(max_size=4)), max_size=20))
def test_property_sorted_and_none_last(pairs: list[tuple[float | None, str]]) -> None:
    items = [Ordered(name, order) for order, name in pairs]
    result = order_tiers(items)
    assert len(result) == len(items)
    assert sorted(map(repr, result)) == sorted(map(repr, items))
    ordered = [o for o in result if o.order is not None]
    # Every ordered item comes before every unordered (None) item.
    assert result[: len(ordered)] == tuple(ordered)
    for a, b in itertools.pairwise(result):
        if a.order is not None and b.order is not None and a.order != b.order:
            assert a.order < b.order
        if sort_key(a.order, "") == sort_key(b.order, ""):
            assert a.name <= b.name
