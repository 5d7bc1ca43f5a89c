"""Benchmark: tabby-bgp's receive path per route, stage by stage, in one thread (no kernel).

Run: ``.venv/bin/python -m bench.bench_bgp_stages [--routes 10000] [--repeat 3]`` (no root
needed: nothing is written to a kernel, the route table has the stateful fake backend). Writes
docs/bench/bgp-stages.md (``--out``); the numbers back the CPU budget in docs/bench/bgp.md.

The input is what ExaBGP 5.0 hands the agent for the feed of ``bench.bench_bgp`` (its UPDATEs:
4096-octet messages of 810 /26 prefixes, one next hop, ORIGIN IGP, LOCAL_PREF 100): one API
line per UPDATE with the message's bytes in hex. Each stage is the agent's own code, in the
order the agent runs it for a table load:

1. ``exabgp_api.parse_line`` + ``exabgp_api.decode_raw`` (``bgp.wire``): line -> bytes ->
   ``UpdateEvent``;
2. ``Rib.announce`` with ``UpdateEvent.path_groups``: the Adj-RIB-In;
3. best path + ``RouteCalculator.route`` + ``RouteTable.set_route`` for each changed prefix
   (the incremental body of ``BgpAgent._reconcile_kernel``);
4. ``RouteTable.begin_apply``: the diff against what the kernel holds (empty here);
5. ``rtnl_routes.encode_op``: the rtnetlink messages (``NetlinkRouteBackend.prepare``);
6. ``RouteTable.finish_apply``: bookkeeping of the (fake) results.

The kernel's own work per route (~3.4 us of system time on the project's machine, see
docs/bench/routes.md) comes on top, as does ExaBGP's reading of the messages.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path as FilePath
from typing import Any

from bench.bench_bgp import feed_prefixes, update_msgs
from bgp import exabgp_api as api
from bgp.kernel_routes import RouteCalculator
from bgp.model import Path, PoolInfo
from bgp.rib import Rib
from kernel import rtnl_routes
from kernel.routes import FakeRouteBackend, OpResult, PlannedApply, Route, RouteTable
from tests.support.bgp import raw_update_line

PEER = IPv4Address("198.51.100.10")
RESULTS = FilePath(__file__).resolve().parent.parent / "docs" / "bench" / "bgp-stages.md"


def update_lines(routes: int) -> list[str]:
    """The API lines ExaBGP writes for the feed of ``bench.bench_bgp``: each UPDATE's bytes."""
    stream = update_msgs(feed_prefixes(routes), PEER)
    out = []
    offset = 0
    while offset < len(stream):
        length = int.from_bytes(stream[offset + 16 : offset + 18], "big")
        body = stream[offset + 19 : offset + length]
        offset += length
        out.append(raw_update_line(body, peer=str(PEER)).decode().rstrip("\n"))
    return out


def one_pass(lines: Sequence[str], routes: int) -> dict[str, float]:
    """Seconds per route for each stage."""
    out: dict[str, float] = {}

    def stage(name: str, fn: Callable[[], Any]) -> Any:
        t = time.perf_counter()
        result = fn()
        out[name] = (time.perf_counter() - t) / routes
        return result

    def decode() -> list[api.UpdateEvent]:
        out = []
        for line in lines:
            raw = api.parse_line(line)
            assert isinstance(raw, api.RawUpdateEvent)
            ev = api.decode_raw(raw)
            assert isinstance(ev, api.UpdateEvent)
            out.append(ev)
        return out

    events = stage("decode", decode)
    rib = Rib()

    def rib_updates() -> None:
        for ev in events:
            for path, prefixes in ev.path_groups(None):
                rib.announce(PEER, path, prefixes)

    stage("rib", rib_updates)
    changed = rib.changes()
    me = IPv4Interface("198.51.100.1/24")
    calc = RouteCalculator(
        my_address=me, pools=[PoolInfo(cidr=IPv4Network("10.64.0.0/10"))], node_addresses=()
    )
    table = RouteTable("bench", 81, 4, backend=FakeRouteBackend())
    learned: dict[Any, Route] = {}

    def reconcile() -> None:
        for prefix in changed:
            paths: tuple[Path, ...] = rib.best(prefix)
            if not isinstance(prefix, IPv4Network):
                continue
            route = calc.route(prefix, paths)
            if route is not None and learned.get(prefix) != route:
                learned[prefix] = route
                table.set_route(route)

    stage("reconcile", reconcile)
    table._resync_due = False  # (the fake kernel is empty: nothing to read back)
    planned: PlannedApply = stage("plan", table.begin_apply)
    ops = planned.ops
    stage("encode", lambda: [rtnl_routes.encode_op(o, i + 1, {}) for i, o in enumerate(ops)])
    results: list[OpResult] = table.backend.apply(ops)
    stage("record", lambda: table.finish_apply(planned, results))
    if len(ops) != routes:
        raise RuntimeError(f"{len(ops)} kernel operations for {routes} routes")
    return out


LABELS = {
    "decode": "API line -> UPDATE bytes -> routes (`parse_line`, `decode_raw`)",
    "rib": "Adj-RIB-In (`Rib.announce`)",
    "reconcile": "best path + kernel route + desired state (`_reconcile_kernel` body)",
    "plan": "diff against the kernel (`RouteTable.begin_apply`)",
    "encode": "rtnetlink encoding (`encode_op`)",
    "record": "result bookkeeping (`RouteTable.finish_apply`)",
}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--routes", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3, help="passes; the best is reported")
    ap.add_argument("--out", type=FilePath, default=RESULTS)
    args = ap.parse_args(argv)
    lines = update_lines(args.routes)
    passes = [one_pass(lines, args.routes) for _ in range(args.repeat)]
    best = {k: min(p[k] for p in passes) for k in passes[0]}
    load = FilePath("/proc/loadavg").read_text().split()[:3]
    text = [
        "# tabby-bgp receive path per route, stage by stage",
        "",
        "`.venv/bin/python -m bench.bench_bgp_stages"
        + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
        + "`",
        f"— {platform.node()} ({os.cpu_count()} CPUs), "
        f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M')} UTC, load average at start {load}. "
        "Method: see the module docstring of `bench/bench_bgp_stages.py`.",
        "",
        f"{args.routes} routes in {len(lines)} UPDATEs, best of {args.repeat} passes, one "
        "thread, no kernel (the kernel's own ~3.4 us per route and ExaBGP's reading come on "
        "top).",
        "",
        "| stage | us per route |",
        "|---|---:|",
        *(f"| {LABELS[k]} | {v * 1e6:.2f} |" for k, v in best.items()),
        f"| **total (Python)** | **{sum(best.values()) * 1e6:.2f}** |",
        "",
    ]
    print("\n".join(text))
    args.out.write_text("\n".join(text))
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
