"""Table-driven tests of the selector grammar, semantics, canonical form and errors.

Covers every operator with present/absent labels, precedence, quoting, whitespace, canonical
rendering, unique ids, and the position reported for many malformed inputs.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Iterator, Mapping
from types import MappingProxyType

import pytest

from policy.selector import (
    ALL,
    NAMESPACE_LABEL,
    All,
    And,
    Eq,
    Has,
    In,
    Not,
    Or,
    Selector,
    SelectorError,
    parse,
)

NS = {NAMESPACE_LABEL: "default"}

# (selector, labels, expected)
SEMANTICS: list[tuple[str, dict[str, str], bool]] = [
    # all() / empty
    ("all()", {}, True),
    ("all()", {"a": "b"}, True),
    ("", {}, True),
    ("   \t\n ", {"a": "b"}, True),
    ("all( )", {}, True),
    # ==
    ('a == "b"', {"a": "b"}, True),
    ('a == "b"', {"a": "c"}, False),
    ('a == "b"', {}, False),
    ('a == ""', {}, False),
    ('a == ""', {"a": ""}, True),
    ('a == "B"', {"a": "b"}, False),
    # !=
    ('a != "b"', {"a": "b"}, False),
    ('a != "b"', {"a": "c"}, True),
    ('a != "b"', {}, True),
    ('a != ""', {}, True),
    # in / not in
    ('a in {"x", "y"}', {"a": "y"}, True),
    ('a in {"x", "y"}', {"a": "z"}, False),
    ('a in {"x", "y"}', {}, False),
    ("a in {}", {"a": "x"}, False),
    ("a in {}", {}, False),
    ('a not in {"x", "y"}', {"a": "y"}, False),
    ('a not in {"x", "y"}', {"a": "z"}, True),
    ('a not in {"x", "y"}', {}, True),
    ("a not in {}", {}, True),
    ("a not in {}", {"a": "x"}, True),
    ('a in {""}', {"a": ""}, True),
    ('a in {""}', {}, False),
    # has / !has
    ("has(a)", {"a": ""}, True),
    ("has(a)", {"a": "x"}, True),
    ("has(a)", {"b": "x"}, False),
    ("!has(a)", {"a": "x"}, False),
    ("!has(a)", {}, True),
    ("! has( a )", {}, True),
    # global()
    ("global()", {}, True),
    ("global()", {"a": "b"}, True),
    ("global()", NS, False),
    ("!global()", NS, True),
    # contains / starts with / ends with
    ('a contains "ell"', {"a": "hello"}, True),
    ('a contains "xyz"', {"a": "hello"}, False),
    ('a contains "ell"', {}, False),
    ('a contains ""', {}, False),
    ('a contains ""', {"a": ""}, True),
    ('a starts with "he"', {"a": "hello"}, True),
    ('a starts with "lo"', {"a": "hello"}, False),
    ('a starts with "he"', {}, False),
    ('a starts with ""', {}, False),
    ('a starts with ""', {"a": "x"}, True),
    ('a ends with "lo"', {"a": "hello"}, True),
    ('a ends with "he"', {"a": "hello"}, False),
    ('a ends with "lo"', {}, False),
    ('a ends with ""', {}, False),
    ('a ends with ""', {"a": ""}, True),
    # negation of comparisons is true for an absent label
    ('!(a == "b")', {}, True),
    ('!(a in {"b"})', {}, True),
    ('!(a contains "b")', {}, True),
    ('!a == "b"', {}, True),
    ('!a == "b"', {"a": "b"}, False),
    ("!!has(a)", {"a": "x"}, True),
    # && / || / precedence
    ('a == "1" && b == "2"', {"a": "1", "b": "2"}, True),
    ('a == "1" && b == "2"', {"a": "1"}, False),
    ('a == "1" || b == "2"', {"b": "2"}, True),
    ('a == "1" || b == "2"', {}, False),
    # || is looser than &&: a || (b && c)
    ('a == "1" || b == "2" && c == "3"', {"a": "1"}, True),
    ('(a == "1" || b == "2") && c == "3"', {"a": "1"}, False),
    ('b == "2" && c == "3" || a == "1"', {"a": "1"}, True),
    # ! is tighter than &&: (!has(a)) && has(b)
    ("!has(a) && has(b)", {"b": "x"}, True),
    ("!has(a) && has(b)", {}, False),
    ("!(has(a) && has(b))", {}, True),
    ("!has(a) || has(b)", {"a": "x"}, False),
    ("!(has(a) || has(b))", {"b": "x"}, False),
    # quoting and odd-but-valid keys
    ("a == 'b'", {"a": "b"}, True),
    ("a == 'say \"hi\"'", {"a": 'say "hi"'}, True),
    ('a == "it\'s"', {"a": "it's"}, True),
    ('a == "x && y || !z"', {"a": "x && y || !z"}, True),
    ('a == "  spaced  "', {"a": "  spaced  "}, True),
    ('a == "ünï©ødé"', {"a": "ünï©ødé"}, True),
    ('k8s-app == "kube-dns"', {"k8s-app": "kube-dns"}, True),
    (f'{NAMESPACE_LABEL} == "default"', NS, True),
    ('projectcalico.org/name in {"foo", "bar"}', {"projectcalico.org/name": "bar"}, True),
    ('has == "x"', {"has": "x"}, True),
    ('in in {"x"}', {"in": "x"}, True),
    ('not not in {"x"}', {}, True),
    ('contains contains "x"', {"contains": "axb"}, True),
    ('all == "x"', {"all": "x"}, True),
    # whitespace is optional between tokens
    ('a=="b"&&c!="d"', {"a": "b"}, True),
    ('(a=="b")||(c=="d")', {"c": "d"}, True),
    ('a in{"b","c"}', {"a": "c"}, True),
]


@pytest.mark.parametrize(("text", "labels", "expected"), SEMANTICS)
def test_semantics(text: str, labels: dict[str, str], expected: bool) -> None:
    sel = parse(text)
    assert sel.evaluate(labels) is expected
    assert sel.matcher(labels) is expected
    # The canonical form means the same thing.
    assert parse(str(sel)).evaluate(labels) is expected


class _Labels(Mapping[str, str]):
    """A Mapping that is not a dict (felix may hand over read-only views)."""

    def __init__(self, data: dict[str, str]) -> None:
        self._data = data

    def __getitem__(self, key: str) -> str:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


@pytest.mark.parametrize(("text", "labels", "expected"), SEMANTICS)
def test_semantics_on_non_dict_mappings(text: str, labels: dict[str, str], expected: bool) -> None:
    sel = parse(text)
    assert sel.evaluate(_Labels(labels)) is expected
    assert sel.evaluate(MappingProxyType(labels)) is expected


# (input, canonical)
CANONICAL: list[tuple[str, str]] = [
    ("", "all()"),
    ("  ", "all()"),
    ("all()", "all()"),
    ("all( )", "all()"),
    ("global( )", "global()"),
    ("has( a )", "has(a)"),
    ("!has(a)", "!has(a)"),
    ("! ! has(a)", "!!has(a)"),
    ("a=='b'", 'a == "b"'),
    ("a  !=   'b'", 'a != "b"'),
    ("a == 'x\"y'", "a == 'x\"y'"),
    ('a == "it\'s"', 'a == "it\'s"'),
    ('a in {"c","a","b","a"}', 'a in {"a", "b", "c"}'),
    ("a in { }", "a in {}"),
    ("a not   in {'z', \"y\"}", 'a not in {"y", "z"}'),
    ('a in {\'q"\', "p"}', 'a in {"p", \'q"\'}'),
    ("a contains'x'", 'a contains "x"'),
    ("a starts   with 'x'", 'a starts with "x"'),
    ("a ends\twith 'x'", 'a ends with "x"'),
    # flattening and redundant parentheses
    ("((has(a)))", "has(a)"),
    ("(has(a) && has(b)) && has(c)", "has(a) && has(b) && has(c)"),
    ("has(a) && (has(b) && has(c))", "has(a) && has(b) && has(c)"),
    ("(has(a) || has(b)) || (has(c) || has(d))", "has(a) || has(b) || has(c) || has(d)"),
    ("(has(a) && has(b)) || has(c)", "has(a) && has(b) || has(c)"),
    ("has(a) && (has(b) || has(c))", "has(a) && (has(b) || has(c))"),
    ("!(has(a) && has(b))", "!(has(a) && has(b))"),
    ("!(has(a))", "!has(a)"),
    ("!a == 'b'", '!(a == "b")'),
    ("!(a == 'b')", '!(a == "b")'),
    ("!(!(has(a)))", "!!has(a)"),
    ("!global()", "!global()"),
    ("!all()", "!all()"),
    # order of && / || operands is kept (it is the evaluation order)
    ("has(b) && has(a)", "has(b) && has(a)"),
]


@pytest.mark.parametrize(("text", "canonical"), CANONICAL)
def test_canonical_form(text: str, canonical: str) -> None:
    sel = parse(text)
    assert str(sel) == canonical
    again = parse(canonical)
    assert again == sel
    assert str(again) == canonical
    assert again.unique_id() == sel.unique_id()
    assert hash(again) == hash(sel)


# (input, position, fragment of the problem description)
ERRORS: list[tuple[str, int, str]] = [
    ('a == "b', 5, "unterminated string"),
    ("a == 'b", 5, "unterminated string"),
    ('a in {"b}', 6, "unterminated string"),
    ("a ==", 4, "expected a quoted string after '=='"),
    ("a !=", 4, "expected a quoted string after '!='"),
    ("a == b", 5, "expected a quoted string"),
    ("a == == 'b'", 5, "expected a quoted string"),
    ("a = 'b'", 2, "expected '=='"),
    ("a & b", 2, "expected '&&'"),
    ("has(a) | has(b)", 7, "expected '||'"),
    ("a", 1, "expected an operator"),
    ("a 'b'", 2, "expected an operator"),
    ("a b", 2, "expected an operator"),
    ("has(", 4, "expected a label name after 'has('"),
    ("has()", 4, "expected a label name after 'has('"),
    ("has(a", 5, "expected ')' to close 'has('"),
    ("has(a b)", 6, "expected ')' to close 'has('"),
    ("has a", 4, "expected an operator"),
    ("all(x)", 4, "takes no arguments"),
    ("global(", 7, "takes no arguments"),
    ("foo(a)", 0, "unknown function 'foo'"),
    ('a in {"a",}', 10, "expected a quoted string after ','"),
    ('a in {"a" "b"}', 10, "expected ',' or '}'"),
    ('a in {"a"', 9, "expected ',' or '}'"),
    ("a in {,}", 6, "expected a quoted string in set"),
    ('a in "b"', 5, "expected '{' after 'in'"),
    ('a in ("b")', 5, "expected '{' after 'in'"),
    ('a not {"b"}', 6, "expected 'in' after 'not'"),
    ('a notin {"b"}', 2, "expected an operator"),
    ('a starts "b"', 9, "expected 'with' after 'starts'"),
    ('a ends "b"', 7, "expected 'with' after 'ends'"),
    ("a starts with", 13, "expected a quoted string after 'starts with'"),
    ("a contains", 10, "expected a quoted string after 'contains'"),
    ('a == "b" c', 9, "unexpected 'c' after a complete expression"),
    ('a == "b" "c"', 9, "unexpected string 'c' after a complete expression"),
    ('a == "b" has(c)', 9, "after a complete expression"),
    ('a == "b")', 8, "unbalanced ')'"),
    ('(a == "b"', 9, "expected ')' to close '(' at position 0"),
    ('((a == "b")', 11, "expected ')' to close '(' at position 0"),
    ("()", 1, "expected a label name"),
    ("!", 1, "expected a label name"),
    ("&& has(a)", 0, "expected a label name"),
    ("has(a) &&", 9, "expected a label name"),
    ("has(a) || || has(b)", 10, "expected a label name"),
    ("has(a) !has(b)", 7, "after a complete expression"),
    ("a == \"x\"'y'", 8, "after a complete expression"),
    # a value cannot hold both quote kinds: the first closing quote ends it
    ('a == "it\'s "q""', 12, "after a complete expression"),
    ("a == 'x'\"y'\"", 8, "after a complete expression"),
    ("a ~ 'b'", 2, "unexpected character '~'"),
    ("a:b == 'c'", 1, "unexpected character ':'"),
    ("ä == 'c'", 0, "unexpected character 'ä'"),
    ("a == 'b' ;", 9, "unexpected character ';'"),
    ("{}", 0, "expected a label name"),
    ("!" * 65 + "has(a)", 64, "nested more than 64 levels"),
    ("(" * 65 + "has(a)" + ")" * 65, 64, "nested more than 64 levels"),
]


@pytest.mark.parametrize(("text", "position", "problem"), ERRORS)
def test_errors_name_position(text: str, position: int, problem: str) -> None:
    with pytest.raises(SelectorError) as info:
        parse(text)
    err = info.value
    assert isinstance(err, ValueError)
    assert problem in err.problem
    assert err.position == position
    assert err.text == text
    message = str(err)
    assert f"at position {position}" in message
    assert problem in message
    # The excerpt shows the text just before and at the position.
    assert repr(text[max(0, position - 24) : position]).strip("'\"")[-5:] in message


def test_error_excerpt_is_truncated_for_long_selectors() -> None:
    text = 'app == "' + "x" * 200 + '" && && has(b)'
    with pytest.raises(SelectorError) as info:
        parse(text)
    message = str(info.value)
    assert "at position 213" in message
    assert len(message) < 200
    assert "..." in message


def test_nesting_at_the_limit_parses_and_compiles() -> None:
    # 64 levels is allowed, and the deepest shapes still compile and evaluate.
    depth = 64
    text = "has(a)"
    for i in range(depth // 3):  # each round adds "!", "(" and "(": 3 levels
        text = f"!(has(k{i}) || ({text} && has(z)))"
    sel = parse(text)
    assert isinstance(sel.evaluate({"a": "1"}), bool)
    assert parse("!" * depth + "has(a)").evaluate({}) is False  # even number of "!"
    assert parse("!" * (depth - 1) + "has(a)").evaluate({}) is True
    assert parse("(" * depth + "has(a)" + ")" * depth).evaluate({"a": ""}) is True


def test_non_string_input_is_a_selector_error() -> None:
    with pytest.raises(SelectorError, match="must be a string"):
        parse(None)  # type: ignore[arg-type]


def test_unique_id_format_and_stability() -> None:
    sel = parse('a == "b"')
    uid = sel.unique_id()
    assert re.fullmatch(r"s:[A-Za-z0-9_-]{20,43}", uid)
    # Pinned: other processes (and other releases) derive ipset names from it.
    assert uid == "s:Xcjmz7a7-3CqHLeVCnPxZGx_I_raKz1GeHzPpw"
    assert parse("a=='b'").unique_id() == uid
    assert parse('a == "c"').unique_id() != uid
    assert ALL.unique_id() == parse("").unique_id()
    # Lone surrogates (possible from JSON "\ud800" escapes) must not crash the hash.
    assert re.fullmatch(r"s:[A-Za-z0-9_-]{20,43}", parse('a == "\ud800"').unique_id())


def test_equality_and_hashing_follow_the_canonical_form() -> None:
    a = parse("(has(x) && has(y)) && has(z)")
    b = parse("has(x) && (has(y) && has(z))")
    c = parse("has(y) && has(x) && has(z)")
    assert a == b
    assert hash(a) == hash(b)
    assert a != c
    assert len({a, b, c}) == 2
    text: object = "has(x) && has(y) && has(z)"
    assert a != text


def test_selector_is_frozen() -> None:
    sel = parse("has(a)")
    with pytest.raises(AttributeError):
        sel.canonical = "all()"  # type: ignore[misc]


def test_pickle_round_trip() -> None:
    sel = parse('a in {"x", "y"} && !has(b)')
    sel.evaluate({})  # compiled matcher must not break pickling
    again = pickle.loads(pickle.dumps(sel))
    assert again == sel
    assert again.evaluate({"a": "x"}) is True


def test_repr() -> None:
    assert repr(parse("a=='b'")) == "Selector('a == \"b\"')"


def test_all_constant() -> None:
    assert ALL == parse("all()") == parse("")
    assert isinstance(ALL.expr, All)
    assert ALL.evaluate({}) is True
    assert ALL.referenced_labels() == frozenset()


@pytest.mark.parametrize(
    ("text", "keys"),
    [
        ("all()", set()),
        ('a == "1" && (b != "2" || !has(c))', {"a", "b", "c"}),
        ('a in {"x"} || a not in {"y"} || d contains "z"', {"a", "d"}),
        ('e starts with "p" && f ends with "q"', {"e", "f"}),
        ("global()", {NAMESPACE_LABEL}),
    ],
)
def test_referenced_labels(text: str, keys: set[str]) -> None:
    assert parse(text).referenced_labels() == frozenset(keys)


def test_from_expr_normalises() -> None:
    built = Selector.from_expr(
        And((And((Has("a"), Has("b"))), Or((Eq("c", "1"),)), In("d", ("z", "y", "z"))))
    )
    assert str(built) == 'has(a) && has(b) && c == "1" && d in {"y", "z"}'
    assert built == parse(str(built))
    assert built.expr == parse(str(built)).expr


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        (Eq("a", 'it\'s "x"'), "both kinds of quote"),
        (In("a", ("ok", "'\"")), "both kinds of quote"),
        (Eq("a b", "x"), "invalid label key"),
        (Has(""), "invalid label key"),
        (Eq("a:b", "x"), "invalid label key"),
        (And(()), "at least one operand"),
        (Or(()), "at least one operand"),
    ],
)
def test_from_expr_rejects_invalid_trees(expr: And, problem: str) -> None:
    with pytest.raises(SelectorError, match=problem) as info:
        Selector.from_expr(expr)
    assert info.value.position is None


def test_from_expr_rejects_excessive_depth() -> None:
    expr: Not | Has = Has("a")
    for _ in range(200):
        expr = Not(expr)
    with pytest.raises(SelectorError, match="deeper than"):
        Selector.from_expr(expr)


def test_values_are_data_not_code() -> None:
    # Values never reach the generated source; hostile-looking text is just a string.
    hostile = "'); import os; os.system('false'); ('"
    sel = Selector.from_expr(Eq("a", hostile.replace("'", "")))
    assert sel.evaluate({"a": hostile.replace("'", "")}) is True
    sel2 = parse('a == "__import__(\'os\')" || b in {"\\n", "}"}')
    assert sel2.evaluate({"b": "}"}) is True
    assert sel2.evaluate({"a": "__import__('os')"}) is True
    assert sel2.evaluate({"b": "\\n"}) is True


def test_equivalent_spellings_share_one_compiled_matcher() -> None:
    a = parse("has(q1) && has(q2)")
    b = parse("(has(q1)) && (has(q2))")
    assert a.matcher is b.matcher
