"""IptablesTable on the real kernel (nft and legacy backends), in namespaces of the test's own."""

from __future__ import annotations

import re

import pytest

from kernel.iptables import (
    Chain,
    IptablesTable,
    Rule,
    SubprocessIptablesBackend,
    detect_backend,
    parse_save,
    rule_hashes,
)
from kernel.iptables_backend import BackendMode
from tests.support.netns import NetnsFactory, ns_exec

pytestmark = pytest.mark.netns

BACKENDS = pytest.mark.parametrize("mode", ["nft", "legacy"])


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingBackend(SubprocessIptablesBackend):
    """The real backend, remembering how many restores it ran (to prove idle applies write 0)."""

    def __init__(self, mode: BackendMode, ip_version: int, netns: str) -> None:
        super().__init__(mode, 4 if ip_version == 4 else 6, netns)
        self.restore_calls = 0

    def restore(self, table: str, text: str) -> None:
        self.restore_calls += 1
        super().restore(table, text)


def ipt(ns: str, mode: str, *args: str, v6: bool = False) -> str:
    return ns_exec(ns, [f"{'ip6tables' if v6 else 'iptables'}-{mode}", "-w", *args])


def save(ns: str, mode: str, table: str = "filter", counters: bool = False) -> str:
    return ns_exec(ns, [f"iptables-{mode}-save", "-t", table, *(["-c"] if counters else [])])


def table(
    ns: str, mode: str, tbl: str = "filter", v: int = 4
) -> tuple[IptablesTable, CountingBackend, Clock]:
    backend = CountingBackend(mode, v, ns)  # type: ignore[arg-type]
    clock = Clock()
    return IptablesTable(tbl, v, backend, ns, clock=clock), backend, clock  # type: ignore[arg-type]


@BACKENDS
def test_converge_fresh_namespace_and_idle(netns: NetnsFactory, mode: str) -> None:
    ns = netns.new("ipt")
    t, backend, _ = table(ns, mode)
    chains = [
        Chain(
            "tby-fw-a",
            (Rule("-p tcp --dport 80", "-j ACCEPT"), Rule("-p udp", "-j DROP", "no udp")),
        ),
        Chain("tby-from", (Rule("-i tbw+", "--goto tby-fw-a"), Rule("", "-j DROP"))),
    ]
    t.set_chains(chains)
    t.set_insert_rules("FORWARD", [Rule("-i tbw+", "-j tby-from")])
    t.set_insert_rules("INPUT", [Rule("-i tbw+", "-j tby-from")])
    res = t.apply()
    assert res.ok and res.restores == 1 and res.chains_created == 2
    k = parse_save(save(ns, mode))
    for c in chains:
        assert k[c.name] == list(rule_hashes(c.name, c.rules))
    assert k["FORWARD"] == list(rule_hashes("FORWARD", [Rule("-i tbw+", "-j tby-from")]))
    assert t.apply().restores == 0
    t.invalidate()
    res = t.apply()
    assert res.resynced and res.restores == 0
    assert backend.restore_calls == 1


@BACKENDS
def test_counters_of_unchanged_rules_survive_an_update(netns: NetnsFactory, mode: str) -> None:
    ns = netns.new("cnt")
    t, _, _ = table(ns, mode)
    a = Rule("-p icmp --icmp-type echo-request", "", "count pings")
    b = Rule("-p udp --dport 9", "-j DROP")
    c = Rule("-p icmp", "-j RETURN")
    t.update_chain(Chain("tby-out", (a, b, c)))
    t.set_insert_rules("OUTPUT", [Rule("-o lo", "-j tby-out")])
    assert t.apply().ok
    ns_exec(ns, ["ping", "-c", "3", "-i", "0.2", "-W", "1", "127.0.0.1"])

    def counters() -> dict[str, int]:
        out: dict[str, int] = {}
        for line in save(ns, mode, counters=True).splitlines():
            m = re.match(r"\[(\d+):\d+\] -A (\S+) .*tby:([\w-]{16})", line)
            if m:
                out[m.group(3)] = int(m.group(1))
        return out

    before = counters()
    ha, _, hc = rule_hashes("tby-out", [a, b, c])
    assert before[ha] >= 3 and before[hc] >= 6  # echo requests and replies
    b2 = Rule("-p udp --dport 10", "-j DROP")
    t.update_chain(Chain("tby-out", (Rule("-p tcp", "-j RETURN"), a, b2, c)))
    res = t.apply()
    assert res.ok and res.rules_written == 2 and res.rules_deleted == 1
    after = counters()
    assert after[ha] == before[ha] and after[hc] == before[hc]
    assert after[rule_hashes("tby-out", [b2])[0]] == 0


@BACKENDS
def test_flushed_chain_and_deleted_hook_are_repaired_by_the_check(
    netns: NetnsFactory, mode: str
) -> None:
    ns = netns.new("tamper")
    t, backend, clock = table(ns, mode)
    t.update_chain(Chain("tby-x", (Rule("-p tcp --dport 22", "-j ACCEPT"), Rule("", "-j RETURN"))))
    t.set_insert_rules("INPUT", [Rule("", "-j tby-x")])
    t.apply()
    ipt(ns, mode, "-I", "INPUT", "1", "-s", "10.7.0.0/16", "-j", "DROP")  # foreign, above ours
    ipt(ns, mode, "-A", "INPUT", "-s", "10.8.0.0/16", "-j", "DROP")  # foreign, below ours
    ipt(ns, mode, "-F", "tby-x")  # "another program" flushes our chain
    assert t.apply().restores == 0  # the check is not due yet
    clock.now += t.post_write_check
    res = t.apply()
    assert res.resynced and res.ok and res.rules_written == 3
    text = save(ns, mode)
    k = parse_save(text)
    assert k["tby-x"] == list(rule_hashes("tby-x", t.chains["tby-x"].rules))
    inp = [line for line in text.splitlines() if line.startswith("-A INPUT")]
    assert "tby:" in inp[0] and inp[1:] == [
        "-A INPUT -s 10.7.0.0/16 -j DROP",
        "-A INPUT -s 10.8.0.0/16 -j DROP",
    ]
    # Now delete our hook rule; the refresh finds it.
    ipt(ns, mode, "-D", "INPUT", "1")
    clock.now += t.refresh_interval
    res = t.apply()
    assert res.ok and res.rules_written == 1 and res.rules_deleted == 0
    inp = [line for line in save(ns, mode).splitlines() if line.startswith("-A INPUT")]
    assert "tby:" in inp[0] and len(inp) == 3
    assert backend.restore_calls == 3


@BACKENDS
def test_stale_chains_swept_foreign_chains_untouched(netns: NetnsFactory, mode: str) -> None:
    ns = netns.new("sweep")
    ipt(ns, mode, "-N", "KUBE-FOO")
    ipt(ns, mode, "-A", "KUBE-FOO", "-j", "RETURN")
    ipt(ns, mode, "-N", "tby-stale")
    ipt(ns, mode, "-N", "tby-stale2")
    ipt(ns, mode, "-A", "tby-stale2", "-j", "tby-stale")
    ipt(
        ns,
        mode,
        "-A",
        "FORWARD",
        "-m",
        "comment",
        "--comment",
        "tby:AAAAAAAAAAAAAAAA",
        "-j",
        "tby-stale2",
    )
    ipt(ns, mode, "-A", "FORWARD", "-j", "KUBE-FOO")
    t, _, _ = table(ns, mode)
    t.update_chain(Chain("tby-new", (Rule("", "-j KUBE-FOO"),)))
    res = t.apply()
    assert res.ok and res.chains_deleted == 2 and res.restores == 1
    k = parse_save(save(ns, mode))
    assert "tby-stale" not in k and "tby-stale2" not in k
    assert k["FORWARD"] == [None] and k["KUBE-FOO"] == [None]


@BACKENDS
def test_bad_rule_isolated_on_the_real_kernel(netns: NetnsFactory, mode: str) -> None:
    ns = netns.new("bad")
    t, _, _ = table(ns, mode)
    t.set_chains(
        [
            Chain("tby-a", (Rule("", "-j ACCEPT"),)),
            Chain("tby-b", (Rule("-m set --match-set tby-no-such-set src", "-j DROP"),)),
            Chain("tby-c", (Rule("", "-j tby-no-such-chain"),)),
            Chain("tby-d", (Rule("", "-j RETURN"),)),
        ]
    )
    res = t.apply()
    assert set(res.failed) == {"chain tby-b", "chain tby-c"}
    k = parse_save(save(ns, mode))
    assert k["tby-a"] == list(rule_hashes("tby-a", (Rule("", "-j ACCEPT"),)))
    assert k["tby-d"] == list(rule_hashes("tby-d", (Rule("", "-j RETURN"),)))


def test_ipv6_table(netns: NetnsFactory) -> None:
    ns = netns.new("v6")
    t, _, _ = table(ns, "nft", "filter", 6)
    t.update_chain(Chain("tby-v6", (Rule("-p ipv6-icmp", "-j ACCEPT"),)))
    t.set_insert_rules("INPUT", [Rule("", "-j tby-v6")])
    assert t.apply().ok
    text = ns_exec(ns, ["ip6tables-nft-save", "-t", "filter"])
    assert parse_save(text)["tby-v6"] == list(rule_hashes("tby-v6", t.chains["tby-v6"].rules))
    assert t.apply().restores == 0


def test_backend_detection(netns: NetnsFactory) -> None:
    ns = netns.new("detect")
    assert detect_backend(ns) == "nft"  # both empty
    ipt(ns, "legacy", "-A", "INPUT", "-s", "10.1.0.0/16", "-j", "DROP")
    assert detect_backend(ns) == "legacy"
    assert detect_backend(ns, "nft") == "nft"
    t = IptablesTable("filter", 4, "auto", ns)
    assert isinstance(t.backend, SubprocessIptablesBackend) and t.backend.mode == "legacy"
