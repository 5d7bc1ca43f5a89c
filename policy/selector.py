"""Calico v3 label selectors: parse, canonicalise, identify and evaluate.

Role: the selector language used by policies (``spec.selector``, rule ``selector`` /
``notSelector`` / ``namespaceSelector``) and by ipset membership in felix.
Inputs: selector text (``parse``) or a tree of node types (``Selector.from_expr``); label maps
(``Mapping[str, str]``) to evaluate against.
Outputs: immutable ``Selector`` values:
- ``str(sel)``: canonical text (normalised spacing and quoting, sets sorted and de-duplicated,
  ``&&``/``||`` chains flattened, parentheses only where precedence needs them);
- ``sel.unique_id()``: ``"s:"`` + unpadded urlsafe base64 of SHA-224 of the canonical text
  (38 characters after the prefix), stable across processes and releases of this module as
  long as the canonical form is;
- ``sel.evaluate(labels)`` / ``sel.matcher(labels)``: the match result, computed by a Python
  function generated from the tree and compiled once, on first use;
- ``sel.referenced_labels()``: label keys the result depends on (``global()`` contributes
  ``projectcalico.org/namespace``).
Errors: ``SelectorError`` (a ``ValueError``) with ``.problem``, ``.text`` and ``.position``
(0-based character offset); its message names the position and shows an excerpt.
Semantics (Calico's): ``==``, ``in``, ``contains``, ``starts with``, ``ends with`` and
``has()`` are false when the label is absent; ``!=`` and ``not in`` are true when it is absent;
``global()`` is true when ``projectcalico.org/namespace`` is absent; ``all()`` and the empty
(or whitespace-only) selector are always true. ``!`` binds tighter than ``&&``, which binds
tighter than ``||``. Strings are single- or double-quoted, without escapes.
Invariants: ``parse(str(s)) == s``; ``str(parse(str(s))) == str(s)``; selectors are equal
(and hash equal) iff their canonical texts are equal, iff their ``unique_id()`` are equal
(up to SHA-224 collisions). Pure: no I/O, no logging on the hot path.
"""

from __future__ import annotations

import base64
import functools
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from policy._selector_ast import (
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
    SelectorError,
    StartsWith,
    normalise,
    referenced_labels,
    render,
)
from policy._selector_codegen import Matcher, compile_matcher
from policy._selector_parser import parse_tree

__all__ = [
    "ALL",
    "NAMESPACE_LABEL",
    "All",
    "And",
    "Contains",
    "EndsWith",
    "Eq",
    "Expr",
    "Global",
    "Has",
    "In",
    "Matcher",
    "Ne",
    "Not",
    "NotIn",
    "Or",
    "Selector",
    "SelectorError",
    "StartsWith",
    "parse",
]

_PARSE_CACHE_SIZE = 8192
_MATCHER_CACHE_SIZE = 8192
# Matchers shared between selectors with the same canonical form (different spellings).
_matchers: dict[str, Matcher] = {}


@dataclass(frozen=True, slots=True, repr=False)
class Selector:
    """A parsed, normalised selector. Build with ``parse()`` or ``Selector.from_expr()``.

    Equality and hashing use the canonical text only.
    """

    canonical: str
    expr: Expr = field(compare=False)
    _matcher: Matcher | None = field(default=None, compare=False)

    @classmethod
    def from_expr(cls, expr: Expr) -> Selector:
        """Validate and normalise a hand-built tree (raises ``SelectorError``)."""
        normal = normalise(expr)
        return cls(render(normal), normal)

    @property
    def matcher(self) -> Matcher:
        """The compiled ``labels -> bool`` function (compiled on first access, then cached).

        Hot loops should fetch it once and call it directly; it skips a method call.
        """
        matcher = self._matcher
        if matcher is None:
            matcher = _matchers.get(self.canonical)
            if matcher is None:
                matcher = compile_matcher(self.expr)
                if len(_matchers) >= _MATCHER_CACHE_SIZE:
                    _matchers.clear()
                _matchers[self.canonical] = matcher
            object.__setattr__(self, "_matcher", matcher)
        return matcher

    def evaluate(self, labels: Mapping[str, str]) -> bool:
        """True when the selector matches the label set."""
        matcher = self._matcher
        if matcher is None:
            matcher = self.matcher
        return matcher(labels)

    def unique_id(self) -> str:
        """``"s:"`` + urlsafe base64 (no padding) of SHA-224 of the canonical text."""
        digest = hashlib.sha224(self.canonical.encode("utf-8", "surrogatepass")).digest()
        return "s:" + base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")

    def referenced_labels(self) -> frozenset[str]:
        """Label keys whose presence or value can change the result."""
        return referenced_labels(self.expr)

    def __str__(self) -> str:
        return self.canonical

    def __repr__(self) -> str:
        return f"Selector({self.canonical!r})"

    def __reduce__(self) -> tuple[object, tuple[str]]:
        # The compiled matcher cannot be pickled; re-parse the canonical text instead.
        return (parse, (self.canonical,))


def parse(text: str) -> Selector:
    """Parse selector text (empty or whitespace-only means ``all()``).

    Raises ``SelectorError`` naming the problem, its position and an excerpt. Results are
    cached by text (selectors are immutable, so sharing them is safe).
    """
    if not isinstance(text, str):
        raise SelectorError(f"a selector must be a string, not {type(text).__name__}")
    return _parse_cached(text)


@functools.lru_cache(maxsize=_PARSE_CACHE_SIZE)
def _parse_cached(text: str) -> Selector:
    return Selector.from_expr(parse_tree(text))


ALL = parse("all()")
