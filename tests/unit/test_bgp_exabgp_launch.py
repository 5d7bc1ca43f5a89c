"""bgp.exabgp_launch: ExaBGP's per-neighbour copy is skipped only where it cannot matter."""

from __future__ import annotations

import importlib
import subprocess
import sys
from types import SimpleNamespace
from typing import Any

from bgp.exabgp_launch import prefilter_neighbor_match, share_unchanged_routes


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


def test_neighbor_match_prefilter_gives_the_original_answers() -> None:
    # ExaBGP ships no type information: its module is Any here (patched and restored below)
    limit: Any = importlib.import_module("exabgp.reactor.api.command.limit")
    original = limit.match_neighbor
    was_patched = getattr(original, "_tabby_patched", False)
    assert prefilter_neighbor_match()
    assert prefilter_neighbor_match()  # idempotent
    patched = limit.match_neighbor
    assert getattr(patched, "_tabby_patched", False)
    if was_patched:  # another test patched first: compare against ExaBGP's regex directly
        original = patched.__closure__[0].cell_contents
    names = [
        "neighbor 198.51.100.10 local-ip 198.51.100.1 local-as 64512 peer-as 64512 "
        "router-id 198.51.100.1 family-allowed ipv4-unicast",
        "neighbor 198.51.100.100 local-ip 198.51.100.1 local-as 64512 peer-as 65001 "
        "router-id 198.51.100.1 family-allowed ipv4-unicast",
        "neighbor 203.0.113.5 local-ip 203.0.113.1 local-as 64512 peer-as 64512 "
        "router-id 203.0.113.1 family-allowed ipv4-unicast/ipv6-unicast",
    ]
    descriptions = [
        ["neighbor 198.51.100.10"],
        ["neighbor 198.51.100.1"],  # a prefix of .10 and .100 as text: must not match them
        ["neighbor 198.51.100.100"],
        ["neighbor 203.0.113.5", "peer-as 64512"],
        ["neighbor 203.0.113.5", "peer-as 65001"],
        ["neighbor *"],
        ["neighbor *", "peer-as 1"],
        ["peer-as 65001"],
        ["local-ip 198.51.100.1"],
        ["router-id 203.0.113.1", "family-allowed ipv4-unicast/ipv6-unicast"],
        ["neighbor 198.51.100.10", "neighbor *"],
        ["neighbor 192.168.0.1", "neighbor *"],
        [],
    ]
    answers = []
    for d in descriptions:
        for n in names:
            want = original(d, n)
            assert patched(d, n) is want, (d, n)
            answers.append(want)
    assert True in answers and False in answers  # both outcomes exercised
    # match_neighbors (what ExaBGP's commands call) looks the function up in its module at call
    # time, so the patched one is the one used
    calls: list[str] = []

    def counting(description: Any, name: str) -> bool:
        calls.append(name)
        return bool(patched(description, name))

    limit.match_neighbor = counting
    try:
        matched = limit.match_neighbors(names, [["neighbor 198.51.100.10"], ["peer-as 65001"]])
    finally:
        limit.match_neighbor = patched
    assert matched == names[:2]
    assert len(calls) == 6  # 3 names x 2 descriptions
