"""Property tests for selectors: canonical round trip, evaluation vs a reference, unique ids.

The reference evaluator below interprets the *un-normalised* tree directly and is written
independently of the compiled matcher (different formulations of each operator), so a bug in
normalisation, rendering, parsing or code generation shows up as a disagreement.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from policy.selector import (
    NAMESPACE_LABEL,
    All,
    And,
    Contains,
    EndsWith,
    Eq,
    Expr,
    Global,
    Has,
    In,
    Ne,
    Not,
    NotIn,
    Or,
    Selector,
    StartsWith,
    parse,
)

KEYS = ["a", "b", "k8s-app", "x.y/z", NAMESPACE_LABEL, "has", "in", "not", "all", "0", "-", "_"]
VALUE_POOL = ["", "a", "b", "ab", "ba", "A", "x y", 'q"', "it's", "&&", "}", "ü", "a,b"]

keys = st.sampled_from(KEYS)
values = st.one_of(
    st.sampled_from(VALUE_POOL),
    st.text(alphabet="ab \"'{},|&!()", max_size=5).filter(lambda v: not ('"' in v and "'" in v)),
)
value_sets = st.lists(values, max_size=4).map(tuple)

leaves: st.SearchStrategy[Expr] = st.one_of(
    st.builds(Eq, keys, values),
    st.builds(Ne, keys, values),
    st.builds(In, keys, value_sets),
    st.builds(NotIn, keys, value_sets),
    st.builds(Has, keys),
    st.just(All()),
    st.just(Global()),
    st.builds(Contains, keys, values),
    st.builds(StartsWith, keys, values),
    st.builds(EndsWith, keys, values),
)


def _extend(children: st.SearchStrategy[Expr]) -> st.SearchStrategy[Expr]:
    operands = st.lists(children, min_size=1, max_size=4).map(tuple)
    return st.one_of(st.builds(Not, children), st.builds(And, operands), st.builds(Or, operands))


exprs: st.SearchStrategy[Expr] = st.recursive(leaves, _extend, max_leaves=12)

label_sets = st.dictionaries(keys, st.sampled_from(VALUE_POOL), max_size=6)


def reference(expr: Expr, labels: dict[str, str]) -> bool:
    """Naive interpreter of the Calico semantics, straight from the documentation."""
    present = getattr(expr, "key", None) in labels
    match expr:
        case Eq(key, value):
            return present and labels[key] == value
        case Ne(key, value):
            return not (present and labels[key] == value)
        case In(key, vals):
            return present and any(labels[key] == v for v in vals)
        case NotIn(key, vals):
            return not (present and any(labels[key] == v for v in vals))
        case Has():
            return present
        case All():
            return True
        case Global():
            return all(k != NAMESPACE_LABEL for k in labels)
        case Contains(key, value):
            return present and labels[key].find(value) >= 0
        case StartsWith(key, value):
            return present and labels[key][: len(value)] == value
        case EndsWith(key, value):
            return present and (value == "" or labels[key][-len(value) :] == value)
        case Not(operand):
            return not reference(operand, labels)
        case And(operands):
            return all(reference(o, labels) for o in operands)
        case Or(operands):
            return any(reference(o, labels) for o in operands)
    raise AssertionError(expr)


def noisy_text(expr: Expr, data: st.DataObject) -> str:
    """Render a tree as valid but non-canonical text: random spacing, quote kinds, redundant
    parentheses and unsorted, duplicated set members."""
    draw = data.draw

    def sp() -> str:
        return draw(st.sampled_from(["", " ", "  ", "\t", "\n"]))

    def gap() -> str:  # where at least one space is required between words
        return draw(st.sampled_from([" ", "  ", "\t", "\n "]))

    def q(value: str) -> str:
        if '"' in value:
            return "'" + value + "'"
        if "'" in value:
            return '"' + value + '"'
        mark = draw(st.sampled_from(["'", '"']))
        return mark + value + mark

    def strs(vals: tuple[str, ...]) -> str:
        shown = list(vals) + draw(st.lists(st.sampled_from(vals), max_size=2)) if vals else []
        shown = draw(st.permutations(shown))
        return "{" + sp() + ("," + sp()).join(q(v) + sp() for v in shown) + "}"

    def atom(e: Expr) -> str:
        text = go(e)
        if isinstance(e, And | Or) or draw(st.booleans()):
            return "(" + sp() + text + sp() + ")"
        return text

    def go(e: Expr) -> str:
        match e:
            case Eq(key, value):
                return key + sp() + "==" + sp() + q(value)
            case Ne(key, value):
                return key + sp() + "!=" + sp() + q(value)
            case Contains(key, value):
                return key + gap() + "contains" + sp() + q(value)
            case StartsWith(key, value):
                return key + gap() + "starts" + gap() + "with" + sp() + q(value)
            case EndsWith(key, value):
                return key + gap() + "ends" + gap() + "with" + sp() + q(value)
            case In(key, vals):
                return key + gap() + "in" + sp() + strs(vals)
            case NotIn(key, vals):
                return key + gap() + "not" + gap() + "in" + sp() + strs(vals)
            case Has(key):
                return "has" + sp() + "(" + sp() + key + sp() + ")"
            case All():
                return "all" + sp() + "(" + sp() + ")"
            case Global():
                return "global" + sp() + "(" + sp() + ")"
            case Not(operand):
                return "!" + sp() + atom(operand)
            case And(operands):
                return ("&&").join(
                    sp() + (atom(o) if isinstance(o, Or) or len(operands) == 1 else go(o)) + sp()
                    for o in operands
                )
            case Or(operands):
                return ("||").join(
                    sp() + (atom(o) if len(operands) == 1 else go(o)) + sp() for o in operands
                )
        raise AssertionError(e)

    return sp() + go(expr) + sp()


@settings(max_examples=300)
@given(exprs)
def test_canonical_form_round_trips(expr: Expr) -> None:
    sel = Selector.from_expr(expr)
    text = str(sel)
    again = parse(text)
    assert again == sel
    assert again.expr == sel.expr
    assert str(again) == text
    assert Selector.from_expr(sel.expr) == sel  # normalising is idempotent


@settings(max_examples=300)
@given(exprs, st.data())
def test_noisy_spellings_parse_to_the_same_selector(expr: Expr, data: st.DataObject) -> None:
    text = noisy_text(expr, data)
    sel = parse(text)
    assert sel == Selector.from_expr(expr), text
    assert sel.expr == Selector.from_expr(expr).expr


@settings(max_examples=300)
@given(exprs, st.lists(label_sets, min_size=1, max_size=12), st.data())
def test_evaluation_agrees_with_reference(
    expr: Expr, labels_list: list[dict[str, str]], data: st.DataObject
) -> None:
    compiled = Selector.from_expr(expr)
    reparsed = parse(noisy_text(expr, data))
    for labels in labels_list:
        expected = reference(expr, labels)
        assert compiled.evaluate(labels) is expected, (str(compiled), labels)
        assert reparsed.evaluate(labels) is expected, (str(reparsed), labels)


small_exprs: st.SearchStrategy[Expr] = st.recursive(
    st.one_of(
        st.builds(Eq, st.sampled_from(["a", "b"]), st.sampled_from(["1", "2"])),
        st.builds(Has, st.sampled_from(["a", "b"])),
        st.builds(In, st.sampled_from(["a"]), st.lists(st.sampled_from(["1", "2"])).map(tuple)),
    ),
    lambda c: st.one_of(
        st.builds(Not, c), st.builds(And, st.lists(c, min_size=1, max_size=3).map(tuple))
    ),
    max_leaves=3,
)


@settings(max_examples=400)
@given(small_exprs, small_exprs)
def test_unique_id_equal_iff_canonical_equal(e1: Expr, e2: Expr) -> None:
    s1, s2 = Selector.from_expr(e1), Selector.from_expr(e2)
    same = str(s1) == str(s2)
    assert (s1.unique_id() == s2.unique_id()) is same
    assert (s1 == s2) is same
    if same:
        assert hash(s1) == hash(s2)


@settings(max_examples=200)
@given(exprs, st.data())
def test_unique_id_is_shared_by_spellings_and_well_formed(expr: Expr, data: st.DataObject) -> None:
    sel = Selector.from_expr(expr)
    uid = sel.unique_id()
    assert uid.startswith("s:")
    assert 20 <= len(uid) - 2 <= 43
    assert set(uid[2:]) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
    assert parse(noisy_text(expr, data)).unique_id() == uid
