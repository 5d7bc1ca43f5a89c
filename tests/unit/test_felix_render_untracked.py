"""felix's conntrack rules: untracked packets are accepted only with felix's own accept mark
(doNotTrack policy), and IPv6 neighbour discovery / MLD are accepted explicitly, IPv6 only."""

from __future__ import annotations

from felix.render import ND_MLD_ICMPV6_TYPES, PREFIX, RenderConfig, render_filter
from tests.unit.test_felix_render import chains_of, state_of, texts

CFG = RenderConfig()


def test_untracked_accept_needs_our_mark() -> None:
    acc = f"{CFG.mark_accept:#x}"
    for v in (4, 6):
        f = chains_of(render_filter(state_of(), v, CFG, {}))
        for chain in ("INPUT", "FORWARD", "OUTPUT"):
            body = texts(f[f"{PREFIX}{chain}"])
            untracked = [r for r in body if "UNTRACKED" in r]
            assert untracked == [
                f"-m conntrack --ctstate UNTRACKED -m mark --mark {acc}/{acc} -j ACCEPT"
            ], (v, chain, body)


def test_neighbour_discovery_accepted_for_ipv6_only() -> None:
    want = [f"-p ipv6-icmp -m icmp6 --icmpv6-type {t} -j ACCEPT" for t in ND_MLD_ICMPV6_TYPES]
    assert {133, 134, 135, 136} <= set(ND_MLD_ICMPV6_TYPES)
    f6 = chains_of(render_filter(state_of(), 6, CFG, {}))
    f4 = chains_of(render_filter(state_of(), 4, CFG, {}))
    for chain in ("INPUT", "OUTPUT"):
        body6 = texts(f6[f"{PREFIX}{chain}"])
        assert [r for r in body6 if "icmpv6-type" in r] == want
        # before anything that could drop or dispatch to policy
        assert body6.index(want[0]) < min(
            i for i, r in enumerate(body6) if "-g " in r or "-j tby-" in r or "MARK" in r
        )
        assert not [r for r in texts(f4[f"{PREFIX}{chain}"]) if "icmp6" in r]
    assert not [r for r in texts(f6[f"{PREFIX}FORWARD"]) if "icmpv6-type" in r]
