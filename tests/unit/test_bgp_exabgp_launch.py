"""bgp.exabgp_launch: ExaBGP's per-neighbour copy is skipped only where it cannot matter."""

from __future__ import annotations

import importlib
import subprocess
import sys
from types import SimpleNamespace
from typing import Any

from bgp.exabgp_launch import prefilter_neighbor_match, share_unchanged_routes
from tests.support.bgp import update_body


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


_SKIP_CHECK = """
import importlib, sys
from bgp.exabgp_launch import skip_update_decoding
msg = importlib.import_module("exabgp.bgp.message")
Direction = importlib.import_module("exabgp.bgp.message.direction").Direction
Update = importlib.import_module("exabgp.bgp.message.update").Update
Processes = importlib.import_module("exabgp.reactor.api.processes").Processes
body = bytes.fromhex(sys.argv[1])
assert skip_update_decoding() and skip_update_decoding()  # idempotent
got = msg.Message.unpack(Update.ID, body, Direction.IN, None)
again = msg.Message.unpack(Update.ID, body, Direction.IN, None)
assert isinstance(got, Update) and got is again and got.nlris == [] and len(got.attributes) == 0
keepalive = msg.Message.unpack(msg.KeepAlive.ID, b"", Direction.IN, None)
assert isinstance(keepalive, msg.KeepAlive), keepalive
calls = []
fake = type("P", (), {"_dispatch": {Update.ID: lambda *a: calls.append(a)}, "silence": False})()
assert Processes.message(fake, Update.ID, None, "receive", got, None, b"", b"") is None
Processes.message(fake, Update.ID, None, "receive", "other", None, b"", b"")
assert len(calls) == 1 and calls[0][3] == "other", calls
print("ok")
"""


def test_received_updates_are_not_decoded_by_exabgp() -> None:
    """In a fresh interpreter (the patch is process-wide): a received UPDATE comes back as one
    shared empty placeholder that the API encoder skips; other messages decode as before."""
    body = update_body(["10.64.0.0/26", "10.64.0.64/26"])
    res = subprocess.run(
        [sys.executable, "-c", _SKIP_CHECK, body.hex()],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_fast_hexstring_gives_exabgps_text() -> None:
    """Checked in a fresh interpreter (the patch is process-wide) against ExaBGP's own."""
    script = (
        "import importlib, random\n"
        "from bgp.exabgp_launch import fast_hexstring\n"
        "util = importlib.import_module('exabgp.util')\n"
        "json_mod = importlib.import_module('exabgp.reactor.api.response.json')\n"
        "assert json_mod.hexstring is util.hexstring\n"
        "assert fast_hexstring() and fast_hexstring()\n"
        "assert json_mod.hexstring is not util.hexstring\n"
        "rng = random.Random(7)\n"
        "for n in [0, 1, 2, 19, 4096, *range(3, 64)]:\n"
        "    b = bytes(rng.randrange(256) for _ in range(n))\n"
        "    for v in (b, bytearray(b), memoryview(b)):\n"
        "        assert json_mod.hexstring(v) == util.hexstring(v), (n, type(v))\n"
        "print('ok')\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr
