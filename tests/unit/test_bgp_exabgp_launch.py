"""bgp.exabgp_launch: ExaBGP's per-neighbour copy is skipped only where it cannot matter."""

from __future__ import annotations

import importlib
import subprocess
import sys
from types import SimpleNamespace
from typing import Any

from bgp.exabgp_launch import share_unchanged_routes


def _change(self_nexthop: bool) -> Any:
    nlri = SimpleNamespace(nexthop=SimpleNamespace(SELF=self_nexthop), afi=1)
    return SimpleNamespace(nlri=nlri, attributes={})


def test_routes_with_a_real_next_hop_are_shared_self_ones_still_copied() -> None:
    assert share_unchanged_routes()
    assert share_unchanged_routes()  # idempotent: not wrapped twice
    neighbor_cls = importlib.import_module("exabgp.bgp.neighbor").Neighbor
    plain = _change(False)
    assert neighbor_cls.remove_self(object(), plain) is plain

    rewritten = SimpleNamespace(pack=lambda: b"\xc6\x33\x64\x01")
    fake_neighbor = SimpleNamespace(ip_self=lambda afi: rewritten)
    selfish = _change(True)
    out = neighbor_cls.remove_self(fake_neighbor, selfish)
    assert out is not selfish  # ExaBGP's own method: a copy, rewritten for this neighbour
    assert out.nlri.nexthop is rewritten and selfish.nlri.nexthop.SELF is True


def test_launcher_runs_exabgp() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "bgp.exabgp_launch", "version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert "5.0." in res.stdout + res.stderr
