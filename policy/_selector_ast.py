"""Selector syntax tree: node types, validation/normalisation, and the canonical rendering.

Role: the shared data model behind ``policy.selector`` (the public module re-exports the node
types; import them from there).
Inputs: a tree of nodes, either built by the parser or by hand (tests, callers).
Outputs: ``normalise(expr)`` returns an equivalent, validated tree in normal form;
``render(expr)`` returns the canonical text of a normal-form tree.
Invariants (normal form):
- label keys match ``[A-Za-z0-9_./-]+``; a value never contains both ``"`` and ``'``;
- ``In``/``NotIn`` values are sorted and de-duplicated;
- ``And``/``Or`` have at least two operands and never directly contain their own kind
  (chains are flattened: ``(a && b) && c`` == ``a && (b && c)`` == ``a && b && c``);
- tree depth is at most ``MAX_TREE_DEPTH`` (the parser separately limits parentheses and ``!``
  to ``MAX_NESTING`` levels, which keeps parsed trees well inside that bound).
- ``parse(render(e)) == e`` for every normal-form ``e`` (checked by property tests).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TypeAlias

# The label that marks a namespaced resource; ``global()`` matches when it is absent.
NAMESPACE_LABEL = "projectcalico.org/namespace"

# Deeper selectors are rejected: no real selector needs them, and the limits bound recursion
# here, in the parser and in the generated Python source (CPython allows 200 nested brackets).
MAX_NESTING = 64
MAX_TREE_DEPTH = 150

LABEL_KEY_RE = re.compile(r"[A-Za-z0-9_./-]+")

_EXCERPT = 24


class SelectorError(ValueError):
    """A selector is malformed.

    ``position`` is the 0-based character offset of the problem in ``text`` (``None`` when the
    selector was built as a tree rather than parsed); ``problem`` is the bare description.
    """

    def __init__(self, problem: str, text: str | None = None, position: int | None = None) -> None:
        self.problem = problem
        self.text = text
        self.position = position
        super().__init__(_format_error(problem, text, position))


def _format_error(problem: str, text: str | None, position: int | None) -> str:
    if text is None or position is None:
        return problem
    before = text[max(0, position - _EXCERPT) : position]
    after = text[position : position + _EXCERPT]
    if position - _EXCERPT > 0:
        before = "..." + before
    if position + _EXCERPT < len(text):
        after = after + "..."
    shown_after = repr(after) if after else "(end)"
    return f"{problem} at position {position}: {before!r} >>> {shown_after}"


@dataclass(frozen=True, slots=True)
class Eq:
    """``key == "value"``: the label is present and equal (false when absent)."""

    key: str
    value: str


@dataclass(frozen=True, slots=True)
class Ne:
    """``key != "value"``: the label is absent or different."""

    key: str
    value: str


@dataclass(frozen=True, slots=True)
class In:
    """``key in {"a", "b"}``: the label is present and one of the values (false when absent)."""

    key: str
    values: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class NotIn:
    """``key not in {"a", "b"}``: the label is absent or none of the values."""

    key: str
    values: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Has:
    """``has(key)``: the label is present (any value)."""

    key: str


@dataclass(frozen=True, slots=True)
class All:
    """``all()``: always true."""


@dataclass(frozen=True, slots=True)
class Global:
    """``global()``: the resource is not namespaced (``projectcalico.org/namespace`` absent)."""


@dataclass(frozen=True, slots=True)
class Contains:
    """``key contains "x"``: the label is present and contains the substring."""

    key: str
    value: str


@dataclass(frozen=True, slots=True)
class StartsWith:
    """``key starts with "x"``: the label is present and has the prefix."""

    key: str
    value: str


@dataclass(frozen=True, slots=True)
class EndsWith:
    """``key ends with "x"``: the label is present and has the suffix."""

    key: str
    value: str


@dataclass(frozen=True, slots=True)
class Not:
    """``!x``."""

    operand: Expr


@dataclass(frozen=True, slots=True)
class And:
    """``a && b && ...`` (two or more operands in normal form)."""

    operands: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class Or:
    """``a || b || ...`` (two or more operands in normal form)."""

    operands: tuple[Expr, ...]


Expr: TypeAlias = (
    Eq | Ne | In | NotIn | Has | All | Global | Contains | StartsWith | EndsWith | Not | And | Or
)

_VALUE_OPS: dict[type[Eq | Ne | Contains | StartsWith | EndsWith], str] = {
    Eq: "==",
    Ne: "!=",
    Contains: "contains",
    StartsWith: "starts with",
    EndsWith: "ends with",
}


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not LABEL_KEY_RE.fullmatch(key):
        raise SelectorError(f"invalid label key {key!r}: use letters, digits and _ . / -")


def _check_value(value: str) -> None:
    if not isinstance(value, str):
        raise SelectorError(f"label value {value!r} is not a string")
    if '"' in value and "'" in value:
        raise SelectorError(f"label value {value!r} contains both kinds of quote")


def normalise(expr: Expr, depth: int = 0) -> Expr:
    """Validate ``expr`` and return its normal form (see module invariants).

    Raises ``SelectorError`` (without a position) for invalid keys/values, empty ``And``/``Or``,
    unknown node types or excessive depth.
    """
    if depth > MAX_TREE_DEPTH:
        raise SelectorError(f"selector tree deeper than {MAX_TREE_DEPTH} levels")
    match expr:
        case Eq(key, value) | Ne(key, value):
            _check_key(key)
            _check_value(value)
            return expr
        case Contains(key, value) | StartsWith(key, value) | EndsWith(key, value):
            _check_key(key)
            _check_value(value)
            return expr
        case In(key, values) | NotIn(key, values):
            _check_key(key)
            for value in values:
                _check_value(value)
            canonical = tuple(sorted(set(values)))
            if canonical == values:
                return expr
            return In(key, canonical) if isinstance(expr, In) else NotIn(key, canonical)
        case Has(key):
            _check_key(key)
            return expr
        case All() | Global():
            return expr
        case Not(operand):
            inner = normalise(operand, depth + 1)
            return expr if inner is operand else Not(inner)
        case And(operands) | Or(operands):
            kind = type(expr)
            flat: list[Expr] = []
            for operand in operands:
                inner = normalise(operand, depth + 1)
                if type(inner) is kind:
                    assert isinstance(inner, And | Or)
                    flat.extend(inner.operands)
                else:
                    flat.append(inner)
            if not flat:
                raise SelectorError(f"{kind.__name__} needs at least one operand")
            if len(flat) == 1:
                return flat[0]
            return kind(tuple(flat))
    raise SelectorError(f"not a selector node: {expr!r}")


def depth_of(expr: Expr) -> int:
    """Nesting depth of a tree (a leaf is 0)."""
    match expr:
        case Not(operand):
            return 1 + depth_of(operand)
        case And(operands) | Or(operands):
            return 1 + max(depth_of(o) for o in operands)
    return 0


def quote(value: str) -> str:
    """Quote a value: double quotes unless it contains one (then single quotes)."""
    if '"' in value:
        return "'" + value + "'"
    return '"' + value + '"'


def render(expr: Expr) -> str:
    """Canonical text of a normal-form tree (parentheses only where precedence needs them)."""
    match expr:
        case Eq(key, value) | Ne(key, value):
            return f"{key} {_VALUE_OPS[type(expr)]} {quote(value)}"
        case Contains(key, value) | StartsWith(key, value) | EndsWith(key, value):
            return f"{key} {_VALUE_OPS[type(expr)]} {quote(value)}"
        case In(key, values):
            return f"{key} in {{{', '.join(quote(v) for v in values)}}}"
        case NotIn(key, values):
            return f"{key} not in {{{', '.join(quote(v) for v in values)}}}"
        case Has(key):
            return f"has({key})"
        case All():
            return "all()"
        case Global():
            return "global()"
        case Not(operand):
            if isinstance(operand, Has | All | Global | Not):
                return "!" + render(operand)
            return "!(" + render(operand) + ")"
        case And(operands):
            return " && ".join(
                "(" + render(o) + ")" if isinstance(o, Or) else render(o) for o in operands
            )
        case Or(operands):
            return " || ".join(render(o) for o in operands)
    raise SelectorError(f"not a selector node: {expr!r}")


def referenced_labels(expr: Expr) -> frozenset[str]:
    """Label keys whose presence or value can change the result (``global()`` adds the
    namespace label)."""
    keys: set[str] = set()
    stack: list[Expr] = [expr]
    while stack:
        node = stack.pop()
        match node:
            case Not(operand):
                stack.append(operand)
            case And(operands) | Or(operands):
                stack.extend(operands)
            case Global():
                keys.add(NAMESPACE_LABEL)
            case All():
                pass
            case _:
                keys.add(node.key)
    return frozenset(keys)
