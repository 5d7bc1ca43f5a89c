"""Benchmark: IPAM allocations per second against a real etcd (Calico layout, CAS writes).

Run: ``.venv/bin/python -m bench.bench_ipam [--seq 500 --threads 8 --per-thread 100
--node-procs 3 --node-threads 4 --per-node-thread 50]``.
It starts its own etcd (``lab.etcd.EtcdServer`` in a temp dir, stopped by PID in ``finally``),
creates one IPPool ``10.0.0.0/16`` (/26 blocks) and measures, on a wiped IPAM keyspace each time:
1. ``sequential``: one client, one node, ``auto_assign`` one IPv4 address per call;
2. ``threads``: N threads on one node, each with its own etcd client (all contend for the same
   affine block, then for claiming the next one);
3. ``3 nodes``: three worker PROCESSES (one per node, so no shared GIL), each with T threads;
4. ``release``: ``release_by_handle`` of the sequential run's handles, one client.
Every run checks the result: no address handed out twice, and ``IPAM.consistency_problems()``
is empty (handle counts match the blocks, affinities match block owners). Failed CAS
transactions (lost races, each followed by a re-read and retry) are counted per run.
Results go to docs/bench/ipam.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from datastore.codec import encode, resource_from_dict
from datastore.etcd import EtcdConfig, EtcdKVStore
from datastore.ipam import IPAM
from datastore.keys import resource_key
from datastore.kv import Compare, Op
from lab.etcd import EtcdServer

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "bench" / "ipam.md"
POOL_CIDR = "10.0.0.0/16"


class CountingStore(EtcdKVStore):
    """The real client, counting transactions and the ones that lost a race."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(EtcdConfig(endpoints=(endpoint,), timeout=10.0))
        self.txns = 0
        self.failed = 0

    def txn(self, compares: Sequence[Compare], success: Sequence[Op]) -> bool:
        ok = super().txn(compares, success)
        self.txns += 1
        self.failed += not ok
        return ok


def setup_keyspace(endpoint: str) -> None:
    subprocess.run(
        ["etcdctl", "--endpoints", endpoint, "del", "/calico/", "--prefix"],
        env={**os.environ, "ETCDCTL_API": "3"},
        check=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,
    )
    store = EtcdKVStore(EtcdConfig(endpoints=(endpoint,)))
    doc = {
        "kind": "IPPool",
        "apiVersion": "projectcalico.org/v3",
        "metadata": {"name": "bench-pool"},
        "spec": {"cidr": POOL_CIDR, "blockSize": 26},
    }
    store.put(resource_key("IPPool", "bench-pool"), encode(resource_from_dict(doc)))
    store.close()


def allocate(endpoint: str, node: str, prefix: str, count: int) -> dict[str, object]:
    """One worker: ``count`` sequential auto_assign calls; addresses, latencies, conflicts."""
    store = CountingStore(endpoint)
    ipam = IPAM(store)
    ips: list[str] = []
    lat: list[float] = []
    try:
        for i in range(count):
            t0 = time.perf_counter()
            v4, _ = ipam.auto_assign(f"{prefix}-{i}", node, attrs={"node": node})
            lat.append(time.perf_counter() - t0)
            ips.extend(str(ip) for ip in v4)
    finally:
        store.close()
    return {"ips": ips, "lat": lat, "txns": store.txns, "failed": store.failed}


def threaded(endpoint: str, node: str, prefix: str, threads: int, per: int) -> dict[str, object]:
    results: list[dict[str, object]] = [{} for _ in range(threads)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads)

    def run(i: int) -> None:
        try:
            barrier.wait()
            results[i] = allocate(endpoint, node, f"{prefix}-t{i}", per)
        except BaseException as exc:
            errors.append(exc)

    ts = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise errors[0]
    return merge(results)


def merge(parts: Sequence[dict[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {"ips": [], "lat": [], "txns": 0, "failed": 0}
    for p in parts:
        out["ips"] += p["ips"]  # type: ignore[operator]
        out["lat"] += p["lat"]  # type: ignore[operator]
        out["txns"] += p["txns"]  # type: ignore[operator]
        out["failed"] += p["failed"]  # type: ignore[operator]
    return out


def verify(endpoint: str, result: dict[str, object], expected: int) -> None:
    ips = result["ips"]
    assert isinstance(ips, list)
    if len(ips) != expected or len(set(ips)) != expected:
        raise SystemExit(f"FAILED: {len(ips)} addresses, {len(set(ips))} distinct, want {expected}")
    store = EtcdKVStore(EtcdConfig(endpoints=(endpoint,)))
    try:
        problems = IPAM(store).consistency_problems()
    finally:
        store.close()
    if problems:
        raise SystemExit(f"FAILED: inconsistent IPAM records: {problems[:5]}")


def row(name: str, workers: str, result: dict[str, object], wall: float) -> dict[str, object]:
    raw = result["lat"]
    assert isinstance(raw, list)
    lat: list[float] = sorted(float(x) for x in raw)
    n = len(lat)
    return {
        "name": name,
        "workers": workers,
        "n": n,
        "wall": wall,
        "rate": n / wall,
        "p50": statistics.median(lat) * 1000,
        "p99": lat[min(n - 1, int(n * 0.99))] * 1000,
        "txns": result["txns"],
        "failed": result["failed"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--seq", type=int, default=500)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--per-thread", type=int, default=100)
    ap.add_argument("--node-procs", type=int, default=3)
    ap.add_argument("--node-threads", type=int, default=4)
    ap.add_argument("--per-node-thread", type=int, default=50)
    ap.add_argument("--no-write", action="store_true", help="do not rewrite docs/bench/ipam.md")
    ap.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:  # child process: ENDPOINT NODE PREFIX THREADS PER
        endpoint, node, prefix, nthreads, per = args.worker
        barrier_file = Path(prefix + ".go")
        while not barrier_file.exists():  # start all node processes together
            time.sleep(0.001)
        t0 = time.perf_counter()
        res = threaded(endpoint, node, Path(prefix).name, int(nthreads), int(per))
        res["wall"] = time.perf_counter() - t0
        print(json.dumps(res))
        return 0

    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="tabby-bench-ipam-") as tmp:
        server = EtcdServer(Path(tmp) / "etcd")
        server.start()
        try:
            ep = server.endpoint
            version = subprocess.run(
                ["etcd", "--version"], capture_output=True, text=True, check=False
            ).stdout.splitlines()[0]

            setup_keyspace(ep)
            t0 = time.perf_counter()
            res = allocate(ep, "node-seq", "seq", args.seq)
            rows.append(row("sequential, 1 node", "1 client", res, time.perf_counter() - t0))
            verify(ep, res, args.seq)

            store = CountingStore(ep)
            ipam = IPAM(store)
            lat: list[float] = []
            t0 = time.perf_counter()
            for i in range(args.seq):
                t1 = time.perf_counter()
                ipam.release_by_handle(f"seq-{i}")
                lat.append(time.perf_counter() - t1)
            rel = {"ips": [], "lat": lat, "txns": store.txns, "failed": store.failed}
            rows.append(row("release_by_handle", "1 client", rel, time.perf_counter() - t0))
            store.close()

            setup_keyspace(ep)
            t0 = time.perf_counter()
            res = threaded(ep, "node-thr", "thr", args.threads, args.per_thread)
            wall = time.perf_counter() - t0
            rows.append(row("threads, 1 node", f"{args.threads} threads", res, wall))
            verify(ep, res, args.threads * args.per_thread)

            setup_keyspace(ep)
            go = Path(tmp) / "w"
            procs = [
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "bench.bench_ipam",
                        "--worker",
                        ep,
                        f"node-{n}",
                        f"{go}{n}",
                        str(args.node_threads),
                        str(args.per_node_thread),
                    ],
                    stdout=subprocess.PIPE,
                    text=True,
                )
                for n in range(args.node_procs)
            ]
            try:
                time.sleep(2.0)  # let the interpreters import everything
                t0 = time.perf_counter()
                for n in range(args.node_procs):
                    Path(f"{go}{n}.go").touch()
                outs = [json.loads(p.communicate(timeout=600)[0]) for p in procs]
                wall = time.perf_counter() - t0
            finally:
                for p in procs:  # by PID: only the workers we started
                    if p.poll() is None:
                        p.kill()
                        p.wait()
            res = merge(outs)
            total = args.node_procs * args.node_threads * args.per_node_thread
            workers = f"{args.node_procs} procs x {args.node_threads} threads"
            rows.append(row(f"{args.node_procs} nodes contending", workers, res, wall))
            verify(ep, res, total)
            store2 = EtcdKVStore(EtcdConfig(endpoints=(ep,)))
            aff = IPAM(store2).affinities()
            store2.close()
            blocks_per_node = {k: len(v) for k, v in sorted(aff.items())}
        finally:
            server.stop()  # by PID, even on failure

    report = render(rows, version, blocks_per_node, args)
    print(report)
    if not args.no_write:
        RESULTS.write_text(report)
    return 0


def render(
    rows: list[dict[str, object]], version: str, blocks: dict[str, int], args: argparse.Namespace
) -> str:
    cmd = (
        f".venv/bin/python -m bench.bench_ipam --seq {args.seq} --threads {args.threads} "
        f"--per-thread {args.per_thread} --node-procs {args.node_procs} "
        f"--node-threads {args.node_threads} --per-node-thread {args.per_node_thread}"
    )
    lines = [
        "# IPAM allocation benchmark",
        "",
        f"Command: `{cmd}`",
        "",
        f"Machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, {version}, etcd on",
        "loopback in the same machine (single member, default fsync). Pool "
        f"`{POOL_CIDR}`, /26 blocks;",
        "each `auto_assign` takes one IPv4 address for a new handle. Every run verified: no",
        "duplicate address and `IPAM.consistency_problems() == []` (handle counts = blocks).",
        "`lost CAS` = transactions that lost a race (re-read + retry with jitter).",
        "",
        "| scenario | workers | allocations | wall (s) | allocs/s | p50 (ms) | p99 (ms) "
        "| txns | lost CAS |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['workers']} | {r['n']} | {r['wall']:.2f} | {r['rate']:.0f} "
            f"| {r['p50']:.1f} | {r['p99']:.1f} | {r['txns']} | {r['failed']} |"
        )
    lines += [
        "",
        f"Blocks claimed per node in the contended run: {blocks}.",
        "",
        "Reading: a sequential allocation costs ~7 etcd round trips (pools, node, config,",
        "affinity list, block get, handle get, one transaction). Concurrent clients on one node",
        "serialise on their shared affine block (one CAS winner per block revision), so threads",
        "mostly add lost races rather than throughput; separate nodes own separate blocks and",
        "contend only while claiming.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
