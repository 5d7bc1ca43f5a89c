"""Benchmark: syncer start to IN_SYNC with every update consumed, on a realistic keyspace.

Run: ``.venv/bin/python -m bench.bench_syncer [--weps 100000 --policies 2000 --repeat 3]``.
It starts its own etcd (``lab.etcd.EtcdServer``, temp dir, stopped by PID even on failure),
loads WorkloadEndpoint-shaped JSON (~1 KB each) under
``/calico/resources/v3/projectcalico.org/workloadendpoints/<ns>/<name>`` and
GlobalNetworkPolicy JSON under ``.../globalnetworkpolicies/<name>`` with 128-op transactions
from a few threads, then measures in a FRESH child process per run (so the loader's memory does
not pollute the peak): wall time from ``Syncer.start()`` to the consumer holding the complete
snapshot, and peak RSS (``ru_maxrss``) of that process, in two modes: ``bytes`` (the syncer
alone, updates dropped after counting) and ``decoded`` (what an agent does: every update decoded
and validated by ``datastore.decoder.ResourceDecoder`` and the typed resources kept in memory).
Results go to docs/bench/syncer.md. Targets (decoded): <= 10 s and <= 1 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from datastore.decoder import ResourceDecoder
from datastore.etcd import EtcdConfig, EtcdKVStore
from datastore.kv import MAX_TXN_OPS, PutOp
from datastore.syncer import Syncer, SyncStatus, Update
from lab.etcd import EtcdServer

WEP_PREFIX = "/calico/resources/v3/projectcalico.org/workloadendpoints/"
GNP_PREFIX = "/calico/resources/v3/projectcalico.org/globalnetworkpolicies/"
PREFIXES = (WEP_PREFIX, GNP_PREFIX)
RESULTS = Path(__file__).resolve().parent.parent / "docs" / "bench" / "syncer.md"


def wep(i: int) -> tuple[str, bytes]:
    """A WorkloadEndpoint as Calico stores it (v3 JSON), about 1 KB."""
    ns = f"tenant-{i % 200:03d}"
    node = f"node-{i % 1000:04d}"
    pod = f"frontend-{i:06d}-7c9f8d6b5d-x{i % 97:02d}q"
    name = f"{node}-k8s-{pod}-eth0"
    ip = f"10.{(i >> 16) & 0xFF}.{(i >> 8) & 0xFF}.{i & 0xFF}"
    doc = {
        "kind": "WorkloadEndpoint",
        "apiVersion": "projectcalico.org/v3",
        "metadata": {
            "name": name,
            "namespace": ns,
            "uid": f"{i:08x}-3c1e-4b9a-9d2f-{i * 7919 % 10**12:012d}",
            "resourceVersion": str(1000 + i),
            "creationTimestamp": "2024-05-01T12:00:00Z",
            "labels": {
                "app": "frontend",
                "tier": ("web", "api", "db")[i % 3],
                "pod-template-hash": "7c9f8d6b5d",
                "version": f"v{i % 5}",
                "projectcalico.org/namespace": ns,
                "projectcalico.org/orchestrator": "k8s",
                "projectcalico.org/serviceaccount": "default",
            },
        },
        "spec": {
            "orchestrator": "k8s",
            "node": node,
            "containerID": f"{i:064x}",
            "pod": pod,
            "endpoint": "eth0",
            "serviceAccountName": "default",
            "ipNetworks": [f"{ip}/32"],
            "ipNATs": [],
            "profiles": [f"kns.{ns}", f"ksa.{ns}.default"],
            "interfaceName": f"cali{i:011x}",
            "mac": f"ee:ee:{(i >> 24) & 0xFF:02x}:{(i >> 16) & 0xFF:02x}:"
            f"{(i >> 8) & 0xFF:02x}:{i & 0xFF:02x}",
            "ports": [
                {"name": "http", "protocol": "TCP", "port": 8080, "hostPort": 0, "hostIP": ""},
                {"name": "metrics", "protocol": "TCP", "port": 9090, "hostPort": 0, "hostIP": ""},
            ],
            "allowSpoofedSourcePrefixes": [],
        },
    }
    return f"{WEP_PREFIX}{ns}/{name}", json.dumps(doc, separators=(",", ":")).encode()


def gnp(i: int) -> tuple[str, bytes]:
    """A GlobalNetworkPolicy with a few rules."""
    name = f"default.allow-tenant-{i:05d}"
    doc = {
        "kind": "GlobalNetworkPolicy",
        "apiVersion": "projectcalico.org/v3",
        "metadata": {
            "name": name,
            "uid": f"gnp-{i:08x}",
            "creationTimestamp": "2024-05-01T12:00:00Z",
        },
        "spec": {
            "tier": "default",
            "order": 100 + i,
            "selector": f"projectcalico.org/namespace == 'tenant-{i % 200:03d}' && tier == 'web'",
            "types": ["Ingress", "Egress"],
            "ingress": [
                {
                    "action": "Allow",
                    "protocol": "TCP",
                    "source": {"selector": f"app == 'frontend' && version in {{'v{i % 5}'}}"},
                    "destination": {"ports": [8080, "9000:9100"]},
                },
                {"action": "Deny", "source": {"nets": ["198.51.100.0/24"]}},
            ],
            "egress": [
                {"action": "Allow", "protocol": "UDP", "destination": {"ports": [53]}},
                {"action": "Allow", "destination": {"selector": "tier == 'db'"}},
            ],
        },
    }
    return f"{GNP_PREFIX}{name}", json.dumps(doc, separators=(",", ":")).encode()


def _chunks(make: Callable[[int], tuple[str, bytes]], n: int) -> Iterator[list[PutOp]]:
    for start in range(0, n, MAX_TXN_OPS):
        yield [PutOp(*make(i)) for i in range(start, min(n, start + MAX_TXN_OPS))]


def load(endpoint: str, weps: int, policies: int, threads: int = 4) -> tuple[float, int]:
    """Write the keyspace; returns (seconds, bytes of values)."""
    local = threading.local()
    stores: list[EtcdKVStore] = []
    lock = threading.Lock()
    total = 0

    def write(ops: list[PutOp]) -> None:
        nonlocal total
        store = getattr(local, "store", None)
        if store is None:
            store = local.store = EtcdKVStore(EtcdConfig(endpoints=(endpoint,), timeout=30.0))
            with lock:
                stores.append(store)
        assert store.txn([], ops)
        with lock:
            total += sum(len(op.value) for op in ops)

    t0 = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        for chunks in (_chunks(wep, weps), _chunks(gnp, policies)):
            for f in [pool.submit(write, ops) for ops in chunks]:
                f.result()
    for s in stores:
        s.close()
    return time.monotonic() - t0, total


def _rss_now() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def measure(
    endpoint: str, expected: int, decode: Callable[[Update], object] | None = None
) -> dict[str, float | int]:
    """One run: syncer start -> every update consumed and in sync. ``decode`` (HOOK for the
    lead: the codec's decoding) is applied to each update and counted in the wall time."""
    rss_before = _rss_now()
    in_sync_at: list[float] = []

    def on_status(status: SyncStatus) -> None:
        if status is SyncStatus.IN_SYNC:
            in_sync_at.append(time.monotonic())

    syncer = Syncer(
        lambda: EtcdKVStore(EtcdConfig(endpoints=(endpoint,), timeout=30.0)),
        PREFIXES,
        on_status=on_status,
    )
    consumed = 0
    batches = 0
    t0 = time.monotonic()
    syncer.start()
    try:
        while True:
            batch = syncer.next_batch(30.0)
            batches += 1
            consumed += len(batch.updates)
            if decode is not None:
                for u in batch.updates:
                    decode(u)
            if batch.in_sync:
                break
        wall = time.monotonic() - t0
    finally:
        syncer.stop()
    if consumed != expected:
        raise SystemExit(f"consumed {consumed} updates, expected {expected}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "wall_s": wall,
        "in_sync_status_s": (in_sync_at[0] - t0) if in_sync_at else float("nan"),
        "updates": consumed,
        "batches": batches,
        "peak_rss_bytes": peak,
        "rss_before_bytes": rss_before,
    }


def decoded_consumer() -> Callable[[Update], object]:
    """Decode and validate every update and keep the resources, as an agent would."""
    decoder = ResourceDecoder()
    held: dict[str, object] = {}

    def consume(u: Update) -> object:
        ru = decoder.decode(u)
        if ru is None or ru.resource is None:
            held.pop(u.key, None)
        else:
            held[u.key] = ru.resource
        return ru

    return consume


def _child(endpoint: str, expected: int, mode: str) -> dict[str, float | int]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.bench_syncer", "--measure", endpoint, str(expected), mode],
        check=True,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    result: dict[str, float | int] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _mib(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--weps", type=int, default=100_000)
    ap.add_argument("--policies", type=int, default=2_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-write", action="store_true", help="do not write docs/bench/syncer.md")
    ap.add_argument(
        "--measure", nargs=3, metavar=("ENDPOINT", "EXPECTED", "MODE"), help=argparse.SUPPRESS
    )
    args = ap.parse_args(argv)
    if args.measure:
        decode = decoded_consumer() if args.measure[2] == "decoded" else None
        print(json.dumps(measure(args.measure[0], int(args.measure[1]), decode)))
        return 0

    expected = args.weps + args.policies
    with tempfile.TemporaryDirectory(prefix="tabby-bench-syncer-") as tmp:
        server = EtcdServer(Path(tmp))
        server.start()
        try:
            load_s, value_bytes = load(server.endpoint, args.weps, args.policies)
            print(
                f"loaded {expected} keys ({_mib(value_bytes)} of values, "
                f"avg WEP {len(wep(1)[1])} B) in {load_s:.1f} s"
            )
            runs = []
            for r in range(args.repeat * 2):
                mode = "bytes" if r % 2 == 0 else "decoded"
                res = _child(server.endpoint, expected, mode)
                res["mode"] = mode  # type: ignore[assignment]
                runs.append(res)
                print(
                    f"run {r + 1} ({mode}): wall {res['wall_s']:.2f} s (IN_SYNC status at "
                    f"{res['in_sync_status_s']:.2f} s), peak RSS {_mib(res['peak_rss_bytes'])} "
                    f"(before syncer {_mib(res['rss_before_bytes'])}), batches {res['batches']}"
                )
        finally:
            server.stop()  # by PID, even on failure
    summary = {}
    for mode in ("bytes", "decoded"):
        sel = [r for r in runs if r["mode"] == mode]  # type: ignore[comparison-overlap]
        wall = statistics.median(float(r["wall_s"]) for r in sel)
        rss = statistics.median(float(r["peak_rss_bytes"]) for r in sel)
        summary[mode] = (wall, rss)
        print(f"median ({mode}): wall {wall:.2f} s, peak RSS {_mib(rss)}")
    if not args.no_write:
        _write_results(args, runs, load_s, value_bytes, summary)
    return 0


def _write_results(
    args: argparse.Namespace,
    runs: list[dict[str, float | int]],
    load_s: float,
    value_bytes: int,
    summary: dict[str, tuple[float, float]],
) -> None:
    etcd_version = subprocess.run(
        ["etcd", "--version"], capture_output=True, text=True, check=False
    ).stdout.splitlines()[:1]
    rows = "\n".join(
        f"| {i + 1} | {r['mode']} | {r['wall_s']:.2f} | {r['in_sync_status_s']:.2f} | "
        f"{_mib(r['peak_rss_bytes'])} | {_mib(r['rss_before_bytes'])} | {r['batches']} |"
        for i, r in enumerate(runs)
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        f"""# Syncer start-of-day benchmark

Command: `.venv/bin/python -m bench.bench_syncer --weps {args.weps} --policies {args.policies} \
--repeat {args.repeat}`

Keyspace: {args.weps} WorkloadEndpoint JSON values (~{len(wep(1)[1])} B each) and {args.policies}
GlobalNetworkPolicy JSON values ({_mib(value_bytes)} of values), loaded in {load_s:.1f} s with
128-op transactions. Machine: {os.cpu_count()} CPUs, Python {platform.python_version()},
{" ".join(etcd_version)}, etcd on loopback in the same machine.

Measured in a fresh child process per run: wall time from `Syncer.start()` until the consumer
has taken every update and a batch reported `in_sync`; peak RSS is `ru_maxrss` of that process
(Python + grpc + syncer + consumer). Mode `bytes`: the consumer drops updates after counting
them. Mode `decoded`: every value is decoded and validated by `ResourceDecoder` (the codec
agents use) and the typed resources are kept in a dict, as an agent holds its state.
Targets for the decoded mode: <= 10 s and <= 1 GB.

| run | mode | wall (s) | IN_SYNC status (s) | peak RSS | RSS before start | batches |
|---|---|---|---|---|---|---|
{rows}

Median, bytes: **{summary["bytes"][0]:.2f} s**, **{_mib(summary["bytes"][1])}** peak RSS.
Median, decoded and held: **{summary["decoded"][0]:.2f} s**, **{_mib(summary["decoded"][1])}**
peak RSS.
"""
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    raise SystemExit(main())
