"""Compile a normal-form selector tree into one fast Python function.

Role: code generation behind ``Selector.matcher`` / ``Selector.evaluate``.
Inputs: a normal-form tree (``policy._selector_ast.normalise``).
Outputs: ``compile_matcher(expr)`` returns ``f(labels: Mapping[str, str]) -> bool``.
How: the tree becomes a single Python boolean expression, wrapped in a factory function and
compiled once with ``compile()``. Label keys, values and value sets are never written into
the source: they are passed to the factory as arguments (``c0``, ``c1``, ...) and reach the
matcher as closure cells, so no escaping is involved and no selector text can inject code.
Invariants: the generated function agrees with the Calico semantics documented on the node
types (property-tested against an independent tree-walking evaluator); it only reads
``labels`` through ``in`` and ``.get``, so any ``Mapping`` works. Operands are evaluated left
to right with short-circuiting, as written.
Measured alternatives (bench/bench_selectors.py): nested closures per node and a tree-walking
interpreter are several times slower for compound selectors.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

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
    StartsWith,
)

Matcher = Callable[[Mapping[str, str]], bool]


def _always_true(labels: Mapping[str, str]) -> bool:
    return True


class _Emitter:
    """Turns a tree into a Python expression over ``labels`` and ``g`` (= ``labels.get``)."""

    __slots__ = ("consts", "getter", "names", "uses_get")

    def __init__(self, getter: str) -> None:
        self.getter = getter
        self.consts: list[object] = []
        self.names: dict[tuple[type, object], str] = {}
        self.uses_get = 0

    def const(self, value: object) -> str:
        """A closure-variable name bound to ``value`` (one per distinct value)."""
        slot = (type(value), value)
        name = self.names.get(slot)
        if name is None:
            name = f"c{len(self.consts)}"
            self.names[slot] = name
            self.consts.append(value)
        return name

    def get(self, key: str) -> str:
        self.uses_get += 1
        return f"{self.getter}({self.const(key)})"

    def get_or_empty(self, key: str) -> str:
        self.uses_get += 1
        return f"{self.getter}({self.const(key)}, '')"

    def emit(self, expr: Expr) -> str:
        """Python source for ``expr``; the result is parenthesised only when it is an
        ``and``/``or`` expression whose parent needs it (see ``_wrap``)."""
        match expr:
            case Eq(key, value):
                return f"{self.get(key)} == {self.const(value)}"
            case Ne(key, value):
                return f"{self.get(key)} != {self.const(value)}"
            case In(key, values):
                if not values:
                    return "False"
                return f"{self.get(key)} in {self.const(frozenset(values))}"
            case NotIn(key, values):
                if not values:
                    return "True"
                return f"{self.get(key)} not in {self.const(frozenset(values))}"
            case Has(key):
                return f"{self.const(key)} in labels"
            case All():
                return "True"
            case Global():
                return f"{self.const(NAMESPACE_LABEL)} not in labels"
            case Contains(key, value) | StartsWith(key, value) | EndsWith(key, value):
                # An absent label reads as "", which matches only the empty pattern; an empty
                # pattern therefore reduces to "the label is present".
                if value == "":
                    return f"{self.const(key)} in labels"
                subject = self.get_or_empty(key)
                pattern = self.const(value)
                if isinstance(expr, Contains):
                    return f"{pattern} in {subject}"
                method = "startswith" if isinstance(expr, StartsWith) else "endswith"
                return f"{subject}.{method}({pattern})"
            case Not(operand):
                inner = self.emit(operand)
                if isinstance(operand, And | Or):
                    inner = f"({inner})"
                return f"not {inner}"
            case And(operands):
                # Python's "or" binds looser than "and": parenthesise Or operands.
                return " and ".join(
                    f"({self.emit(o)})" if isinstance(o, Or) else self.emit(o) for o in operands
                )
            case Or(operands):
                return " or ".join(self.emit(o) for o in operands)
        raise TypeError(f"not a selector node: {expr!r}")


def generate_source(expr: Expr) -> tuple[str, list[object]]:
    """Source of a factory ``_make(c0, c1, ...)`` returning the matcher, and its arguments."""
    emitter = _Emitter("g")
    body = emitter.emit(expr)
    prologue = "        g = labels.get\n"
    if emitter.uses_get <= 1:
        # One lookup: binding the bound method first would cost more than it saves.
        emitter = _Emitter("labels.get")
        body = emitter.emit(expr)
        prologue = ""
    params = ", ".join(f"c{i}" for i in range(len(emitter.consts)))
    source = (
        f"def _make({params}):\n"
        f"    def _match(labels):\n"
        f"{prologue}"
        f"        return {body}\n"
        f"    return _match\n"
    )
    return source, emitter.consts


def compile_matcher(expr: Expr) -> Matcher:
    """Compile ``expr`` (normal form) into a matcher function."""
    if isinstance(expr, All):
        return _always_true
    source, consts = generate_source(expr)
    namespace: dict[str, object] = {}
    exec(compile(source, "<selector>", "exec"), {"__builtins__": {}}, namespace)
    factory = namespace["_make"]
    assert callable(factory)
    matcher = factory(*consts)
    assert callable(matcher)
    return matcher  # type: ignore[no-any-return]
