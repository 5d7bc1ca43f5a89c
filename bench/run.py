"""Run every benchmark, one after another (``make bench`` / ``python -m bench.run``).

Each benchmark writes its own results file under docs/bench/; see docs/benchmarks.md for what
each measures and the anchors it is compared with. ``--only NAME[,NAME]`` runs a subset.
Benchmarks that need root (network namespaces) are skipped with a message when not root.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

BENCHMARKS = (
    ("selectors", False),
    ("syncer", False),
    ("ipam", False),
    ("iptables", True),
    ("routes", True),
    ("cni", True),
    ("felix", True),
    ("bgp", True),
    ("bgp_stages", False),
    ("rr", True),
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--only", default="", help="comma-separated subset, e.g. felix,bgp")
    args = ap.parse_args()
    only = {n for n in args.only.split(",") if n}
    failed = []
    for name, needs_root in BENCHMARKS:
        if only and name not in only:
            continue
        if needs_root and os.geteuid() != 0:
            print(f"== {name}: skipped (needs root)")
            continue
        print(f"== {name}", flush=True)
        t0 = time.monotonic()
        rc = subprocess.call(
            [sys.executable, "-m", f"bench.bench_{name}"], stdin=subprocess.DEVNULL
        )
        print(f"== {name}: exit {rc} after {time.monotonic() - t0:.0f} s", flush=True)
        if rc != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
