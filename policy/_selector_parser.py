"""Tokenizer and recursive-descent parser for the Calico v3 selector language.

Role: turn selector text into a syntax tree (``policy._selector_ast`` nodes); used only by
``policy.selector.parse``.
Inputs: selector text.
Outputs: a tree (not yet normalised: ``In`` values keep their written order); or
``SelectorError`` naming the problem, its 0-based character position and an excerpt.
Grammar (``!`` binds tighter than ``&&``, which binds tighter than ``||``)::

    selector := ws* | or
    or       := and ("||" and)*
    and      := unary ("&&" unary)*
    unary    := "!" unary | "(" or ")" | "has" "(" KEY ")" | "all" "(" ")" | "global" "(" ")"
              | KEY ("==" | "!=" | "contains" | "starts" "with" | "ends" "with") STRING
              | KEY ("in" | "not" "in") "{" [STRING ("," STRING)*] "}"
    KEY      := [A-Za-z0-9_./-]+
    STRING   := '"' [^"]* '"' | "'" [^']* "'"     (no escapes, as in Calico)

Words (``has``, ``in``, ``not``, ...) are keywords only where the grammar expects them, so
``has == "x"`` compares a label called ``has``.
Invariants: never recurses deeper than ``MAX_NESTING`` levels of ``(`` / ``!``.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from policy._selector_ast import (
    MAX_NESTING,
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
    SelectorError,
    StartsWith,
)

# Token kinds.
_KEY = "key"
_STR = "string"
_OP = "op"
_END = "end"

_TOKEN_RE = re.compile(
    r"""
    (?P<key>[A-Za-z0-9_./-]+)
    | "(?P<dq>[^"]*)"
    | '(?P<sq>[^']*)'
    | (?P<op>==|!=|&&|\|\||[!(){},])
    """,
    re.VERBOSE,
)
_SPACE_RE = re.compile(r"[ \t\r\n\f\v]*")

_VALUE_OPS: dict[str, type[Eq | Ne | Contains | StartsWith | EndsWith]] = {
    "==": Eq,
    "!=": Ne,
    "contains": Contains,
    "starts": StartsWith,
    "ends": EndsWith,
}


class _Token(NamedTuple):
    kind: str
    text: str  # key name, string contents (unquoted) or operator
    pos: int


def _describe(tok: _Token) -> str:
    if tok.kind == _END:
        return "end of selector"
    if tok.kind == _STR:
        return f"string {tok.text!r}"
    return repr(tok.text)


def tokenize(text: str) -> list[_Token]:
    """Split ``text`` into tokens, ending with an ``end`` token."""
    tokens: list[_Token] = []
    n = len(text)
    match_token = _TOKEN_RE.match
    match_space = _SPACE_RE.match
    space = match_space(text, 0)
    pos = space.end() if space else 0
    while pos < n:
        m = match_token(text, pos)
        if m is None:
            ch = text[pos]
            if ch in "\"'":
                raise SelectorError(f"unterminated string (no closing {ch})", text, pos)
            if ch in "&|=":
                raise SelectorError(f"expected '{ch}{ch}'", text, pos)
            raise SelectorError(f"unexpected character {ch!r}", text, pos)
        kind = m.lastgroup
        if kind == "key":
            tokens.append(_Token(_KEY, m.group(kind), pos))
        elif kind in ("dq", "sq"):
            tokens.append(_Token(_STR, m.group(kind), pos))
        else:
            tokens.append(_Token(_OP, m.group("op"), pos))
        pos = m.end()
        space = match_space(text, pos)
        if space:
            pos = space.end()
    tokens.append(_Token(_END, "", n))
    return tokens


class _Parser:
    __slots__ = ("i", "text", "tokens")

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.i = 0

    def fail(self, problem: str, tok: _Token) -> SelectorError:
        return SelectorError(problem, self.text, tok.pos)

    def peek(self) -> _Token:
        return self.tokens[self.i]

    def take(self) -> _Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def is_op(self, op: str) -> bool:
        tok = self.tokens[self.i]
        return tok.kind == _OP and tok.text == op

    def expect_op(self, op: str, context: str) -> _Token:
        tok = self.take()
        if tok.kind != _OP or tok.text != op:
            raise self.fail(f"expected '{op}' {context}, found {_describe(tok)}", tok)
        return tok

    def expect_string(self, context: str) -> str:
        tok = self.take()
        if tok.kind != _STR:
            raise self.fail(f"expected a quoted string {context}, found {_describe(tok)}", tok)
        return tok.text

    def parse(self) -> Expr:
        if self.peek().kind == _END:
            return All()
        expr = self.parse_or(0)
        tok = self.peek()
        if tok.kind != _END:
            if tok.kind == _OP and tok.text == ")":
                raise self.fail("unbalanced ')'", tok)
            raise self.fail(
                f"unexpected {_describe(tok)} after a complete expression "
                "(expected '&&', '||' or end of selector)",
                tok,
            )
        return expr

    def parse_or(self, nesting: int) -> Expr:
        operands = [self.parse_and(nesting)]
        while self.is_op("||"):
            self.i += 1
            operands.append(self.parse_and(nesting))
        return operands[0] if len(operands) == 1 else Or(tuple(operands))

    def parse_and(self, nesting: int) -> Expr:
        operands = [self.parse_unary(nesting)]
        while self.is_op("&&"):
            self.i += 1
            operands.append(self.parse_unary(nesting))
        return operands[0] if len(operands) == 1 else And(tuple(operands))

    def parse_unary(self, nesting: int) -> Expr:
        tok = self.take()
        if tok.kind == _OP and tok.text in ("!", "("):
            if nesting >= MAX_NESTING:
                raise self.fail(f"selector nested more than {MAX_NESTING} levels deep", tok)
            if tok.text == "!":
                return Not(self.parse_unary(nesting + 1))
            inner = self.parse_or(nesting + 1)
            closing = self.peek()
            if not (closing.kind == _OP and closing.text == ")"):
                raise self.fail(
                    f"expected ')' to close '(' at position {tok.pos}, found {_describe(closing)}",
                    closing,
                )
            self.i += 1
            return inner
        if tok.kind != _KEY:
            raise self.fail(
                f"expected a label name, '!', '(' or a function, found {_describe(tok)}", tok
            )
        if self.is_op("("):
            return self.parse_function(tok)
        return self.parse_comparison(tok)

    def parse_function(self, name: _Token) -> Expr:
        self.i += 1  # the "("
        if name.text == "has":
            key = self.take()
            if key.kind != _KEY:
                raise self.fail(f"expected a label name after 'has(', found {_describe(key)}", key)
            self.expect_op(")", "to close 'has('")
            return Has(key.text)
        if name.text in ("all", "global"):
            self.expect_op(")", f"after '{name.text}(' (it takes no arguments)")
            return All() if name.text == "all" else Global()
        raise self.fail(f"unknown function {name.text!r} (expected has(), all() or global())", name)

    def parse_comparison(self, key: _Token) -> Expr:
        op = self.take()
        word = op.text if op.kind in (_OP, _KEY) else ""
        if word in ("starts", "ends"):
            with_ = self.take()
            if with_.kind != _KEY or with_.text != "with":
                raise self.fail(f"expected 'with' after '{word}', found {_describe(with_)}", with_)
            cls = _VALUE_OPS[word]
            return cls(key.text, self.expect_string(f"after '{word} with'"))
        if word in _VALUE_OPS:
            cls = _VALUE_OPS[word]
            return cls(key.text, self.expect_string(f"after '{word}'"))
        if op.kind == _KEY and word == "in":
            return In(key.text, self.parse_set("in"))
        if op.kind == _KEY and word == "not":
            in_ = self.take()
            if in_.kind != _KEY or in_.text != "in":
                raise self.fail(f"expected 'in' after 'not', found {_describe(in_)}", in_)
            return NotIn(key.text, self.parse_set("not in"))
        raise self.fail(
            f"expected an operator (==, !=, in, not in, contains, starts with, ends with) "
            f"after label {key.text!r}, found {_describe(op)}",
            op,
        )

    def parse_set(self, op: str) -> tuple[str, ...]:
        self.expect_op("{", f"after '{op}'")
        values: list[str] = []
        if self.is_op("}"):
            self.i += 1
            return ()
        values.append(self.expect_string("in set"))
        while True:
            tok = self.take()
            if tok.kind == _OP and tok.text == "}":
                return tuple(values)
            if tok.kind != _OP or tok.text != ",":
                raise self.fail(f"expected ',' or '}}' in set, found {_describe(tok)}", tok)
            values.append(self.expect_string("after ',' in set"))


def parse_tree(text: str) -> Expr:
    """Parse ``text`` into a (not yet normalised) tree; raise ``SelectorError`` if malformed."""
    return _Parser(text).parse()
