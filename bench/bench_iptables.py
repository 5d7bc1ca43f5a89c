"""Benchmark: the iptables and ipset drivers against one raw restore of the same text.

Run as root: ``.venv/bin/python -m bench.bench_iptables`` (writes docs/bench/iptables.md).
Everything happens in a namespace this script creates and deletes (even on failure); the root
namespace is never written. Per backend (nft, legacy): 10,000 rules in 500 chains (20 each) plus a
hook rule; driver full apply (read-back + diff + one restore) vs one raw ``iptables-restore`` of the
identical text (the physical limit); a one-chain update (one rule changed) among them; an idle
apply (must issue 0 writes); a forced read-back (``iptables-save`` + parse). Then ipsets: a
10,000-member ``hash:net`` set, driver apply vs raw ``ipset restore``, and a 100-member delta.
Each figure is the median of several runs, on a table emptied between runs.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from kernel.ipsets import IPSet, IpsetDriver
from kernel.iptables import Chain, IptablesTable, Rule, SubprocessIptablesBackend, parse_save
from kernel.iptables_backend import BackendMode

CHAINS = 500
PER_CHAIN = 20
RUNS = 5
NS = f"tbb{os.getpid()}-ipt"


def sh(*argv: str, input_text: str | None = None) -> str:
    res = subprocess.run(
        ["ip", "netns", "exec", NS, *argv],
        input=input_text,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if res.returncode != 0:
        raise RuntimeError(f"{argv} failed: {res.stderr}")
    return res.stdout


def desired() -> list[Chain]:
    out = []
    for c in range(CHAINS):
        rules = tuple(
            Rule(f"-s 10.{c // 250}.{c % 250}.{r} -p tcp --dport {1000 + r}", "-j ACCEPT")
            for r in range(PER_CHAIN)
        )
        out.append(Chain(f"tby-c{c}", rules))
    return out


def reset(mode: str) -> None:
    sh(f"iptables-{mode}-restore", input_text="*filter\n-F\n-X\nCOMMIT\n")


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_backend(mode: BackendMode) -> dict[str, float]:
    chains = desired()
    hook = [Rule("", "-j tby-c0")]
    full: list[float] = []
    raw: list[float] = []
    update: list[float] = []
    idle: list[float] = []
    readback: list[float] = []
    saveonly: list[float] = []
    text = ""
    for _ in range(RUNS):
        reset(mode)
        t = IptablesTable("filter", 4, SubprocessIptablesBackend(mode, 4, NS), NS)
        t.set_chains(chains)
        t.set_insert_rules("INPUT", hook)
        start = time.perf_counter()
        res = t.apply()
        full.append(time.perf_counter() - start)
        assert res.ok and res.rules_written == CHAINS * PER_CHAIN + 1, res
        # The exact text the driver wrote, for the raw comparison.
        text = sh(f"iptables-{mode}-save", "-t", "filter")
        # One chain update: rule 10 of chain 250 changes.
        c = chains[250]
        new_rules = list(c.rules)
        new_rules[10] = Rule("-s 10.99.0.1 -p udp --dport 53", "-j ACCEPT")
        t.update_chain(Chain(c.name, tuple(new_rules)))
        start = time.perf_counter()
        res = t.apply()
        update.append(time.perf_counter() - start)
        assert res.ok and res.rules_written == 1 and res.rules_deleted == 1, res
        t.update_chain(c)
        t.apply()
        start = time.perf_counter()
        res = t.apply()
        idle.append(time.perf_counter() - start)
        assert res.restores == 0
        t.invalidate()
        start = time.perf_counter()
        res = t.apply()
        readback.append(time.perf_counter() - start)
        assert res.resynced and res.restores == 0
        backend = t.backend
        saveonly.append(timed(lambda: parse_save(backend.save("filter"))))  # noqa: B023
    restore_text = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    for _ in range(RUNS):
        reset(mode)
        raw.append(
            timed(
                lambda: sh(
                    f"iptables-{mode}-restore",
                    "--noflush",
                    "--wait",
                    input_text=restore_text + "\n",
                )
            )
        )
    assert sum(1 for line in text.splitlines() if line.startswith("-A")) == CHAINS * PER_CHAIN + 1
    reset(mode)
    return {
        "full": median_ms(full),
        "raw": median_ms(raw),
        "update": median_ms(update),
        "idle": median_ms(idle),
        "readback": median_ms(readback),
        "save_parse": median_ms(saveonly),
    }


def bench_ipset() -> dict[str, float]:
    members = frozenset(f"10.{i // 250}.{i % 250}.0/24" for i in range(10_000))
    s = IPSet("tby4-big", "hash:net", "inet", members)
    text = "create tby4-big hash:net family inet maxelem 1048576\n" + "".join(
        f"add tby4-big {m}\n" for m in members
    )
    drv: list[float] = []
    raw: list[float] = []
    delta: list[float] = []
    construct: list[float] = []
    for _ in range(RUNS):
        sh("ipset", "destroy")
        construct.append(timed(lambda: IPSet("tby4-big", "hash:net", "inet", members)))
        d = IpsetDriver(NS)
        d.update_set(s)
        start = time.perf_counter()
        res = d.apply()
        drv.append(time.perf_counter() - start)
        assert res.ok and res.members_added == 10_000
        changed = set(list(members)[100:]) | {f"10.200.{i}.0/24" for i in range(100)}
        d.update_set(IPSet("tby4-big", "hash:net", "inet", frozenset(changed)))
        start = time.perf_counter()
        res = d.apply()
        delta.append(time.perf_counter() - start)
        assert res.members_added == 100 and res.members_removed == 100
        sh("ipset", "destroy")
        raw.append(timed(lambda: sh("ipset", "restore", "-exist", input_text=text)))
    sh("ipset", "destroy")
    return {
        "driver": median_ms(drv),
        "raw": median_ms(raw),
        "delta": median_ms(delta),
        "construct": median_ms(construct),
    }


def main() -> int:
    if os.geteuid() != 0:
        print("needs root (creates a network namespace)", file=sys.stderr)
        return 2
    subprocess.run(["ip", "netns", "add", NS], check=True)
    try:
        results = {mode: bench_backend(mode) for mode in ("nft", "legacy")}
        ips = bench_ipset()
    finally:
        subprocess.run(["ip", "netns", "del", NS], check=False)
    lines = [
        "# iptables / ipset driver benchmark",
        "",
        f"`.venv/bin/python -m bench.bench_iptables` (median of {RUNS} runs, own namespace, "
        f"{CHAINS} chains x {PER_CHAIN} rules = {CHAINS * PER_CHAIN} rules + 1 hook rule, filter "
        "table emptied between runs).",
        "",
        "| backend | driver full apply | raw restore (same text) | ratio | one-rule update "
        "| idle apply (0 writes) | forced read-back apply | save+parse |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for mode, r in results.items():
        lines.append(
            f"| {mode} | {r['full']:.1f} ms | {r['raw']:.1f} ms | {r['full'] / r['raw']:.2f}x "
            f"| {r['update']:.1f} ms | {r['idle']:.3f} ms | {r['readback']:.1f} ms "
            f"| {r['save_parse']:.1f} ms |"
        )
    lines += [
        "",
        "ipset, one `hash:net` set of 10,000 members:",
        "",
        "| driver apply (create + adds) | raw `ipset restore` | ratio | 100 add + 100 del delta "
        "| `IPSet(...)` construction (member canonicalisation) |",
        "|---|---|---|---|---|",
        f"| {ips['driver']:.1f} ms | {ips['raw']:.1f} ms | {ips['driver'] / ips['raw']:.2f}x "
        f"| {ips['delta']:.1f} ms | {ips['construct']:.1f} ms |",
        "",
        "Driver full apply = read-back of the (empty) table + diff + render + one restore. "
        "Idle apply = compare desired hashes with the cached view, no process started. "
        "Forced read-back apply = `invalidate()` then `apply()`: one `iptables-save` + parse + "
        "diff, no write. The ipset driver's apply includes its `ipset save` read-back.",
        "",
    ]
    out = Path(__file__).resolve().parent.parent / "docs" / "bench" / "iptables.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
