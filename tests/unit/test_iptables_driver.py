"""IptablesTable against the stateful fake kernel: converged state, not call lists."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kernel.iptables import Chain, IptablesSaveError, IptablesTable, Rule, parse_save, rule_hashes
from kernel.iptables_fake import FakeIptablesBackend


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def rules(*ports: int) -> tuple[Rule, ...]:
    return tuple(Rule(f"-p tcp --dport {p}", "-j ACCEPT") for p in ports)


def make(
    fake: FakeIptablesBackend | None = None, table: str = "filter"
) -> tuple[IptablesTable, FakeIptablesBackend, Clock]:
    fake = fake or FakeIptablesBackend()
    clock = Clock()
    t = IptablesTable(table, 4, fake, clock=clock)  # type: ignore[arg-type]
    return t, fake, clock


def kernel(fake: FakeIptablesBackend, table: str = "filter") -> dict[str, list[str | None]]:
    return parse_save(fake.save(table))


def assert_converged(t: IptablesTable, fake: FakeIptablesBackend) -> None:
    k = kernel(fake, t.table)
    for name, chain in t.chains.items():
        assert k[name] == list(rule_hashes(name, chain.rules)), name
    ours = {n for n in k if n.startswith("tby-")}
    assert ours == set(t.chains)


def test_converge_from_empty_and_second_apply_writes_nothing() -> None:
    t, fake, _ = make()
    t.set_chains([Chain("tby-a", rules(80, 443)), Chain("tby-b", (Rule("", "--goto tby-a"),))])
    t.set_insert_rules("INPUT", [Rule("", "-j tby-b")])
    t.set_insert_rules("FORWARD", [Rule("-i tbw+", "-j tby-a"), Rule("-o tbw+", "-j tby-a")])
    res = t.apply()
    assert res.ok and res.resynced and res.restores == 1
    assert (res.chains_created, res.rules_written) == (2, 6)
    assert_converged(t, fake)
    k = kernel(fake)
    assert k["INPUT"] == list(rule_hashes("INPUT", [Rule("", "-j tby-b")]))
    assert len(k["FORWARD"]) == 2
    assert fake.rules("filter", "tby-b") == [
        f'-m comment --comment "tby:{k["tby-b"][0]}" --goto tby-a'
    ]

    n = len(fake.restores)
    again = t.apply()
    assert again.ok and again.restores == 0 and not again.resynced
    assert len(fake.restores) == n  # zero writes


def test_idle_apply_after_forced_resync_still_writes_nothing() -> None:
    t, fake, clock = make()
    t.set_chains([Chain("tby-a", rules(80))])
    t.set_insert_rules("INPUT", [Rule("", "-j tby-a")])
    t.apply()
    n, saves = len(fake.restores), fake.saves
    t.invalidate()
    assert t.apply().resynced
    clock.now += 10_000  # refresh interval passed
    assert t.apply().resynced
    assert len(fake.restores) == n and fake.saves == saves + 2


def test_converge_from_stale_state_sweeps_ours_and_keeps_foreign() -> None:
    fake = FakeIptablesBackend()
    fake.external(
        "filter",
        "\n".join(
            [
                "*filter",
                ":FOREIGN - [0:0]",
                ":tby-old - [0:0]",
                ":tby-old2 - [0:0]",
                ":tby-a - [0:0]",
                "-A FOREIGN -s 10.9.0.0/16 -j DROP",
                "-A tby-old2 -j tby-old",
                "-A tby-old -j RETURN",
                "-A INPUT -s 10.1.0.0/16 -j FOREIGN",
                '-A INPUT -m comment --comment "tby:AAAAAAAAAAAAAAAA" -j tby-old2',
                "-A INPUT -p udp -j ACCEPT",
                '-A tby-a -m comment --comment "tby:BBBBBBBBBBBBBBBB" -j DROP',
                "-A tby-a -s 10.2.0.0/16 -j ACCEPT",
                "-A FORWARD -j FOREIGN",
                '-A OUTPUT -m comment --comment "tby:CCCCCCCCCCCCCCCC" -j tby-a',
                "COMMIT",
            ]
        ),
    )
    t, _, _ = make(fake)
    t.set_chains([Chain("tby-a", rules(80)), Chain("tby-top", (Rule("", "-j tby-a"),))])
    t.set_insert_rules("INPUT", [Rule("", "-j tby-top")])
    res = t.apply()
    assert res.ok, res
    assert res.chains_deleted == 2
    assert_converged(t, fake)
    assert fake.rules("filter", "FOREIGN") == ["-s 10.9.0.0/16 -j DROP"]
    assert fake.rules("filter", "FORWARD") == ["-j FOREIGN"]
    assert fake.rules("filter", "OUTPUT") == []
    inp = fake.rules("filter", "INPUT")
    assert inp[1:] == ["-s 10.1.0.0/16 -j FOREIGN", "-p udp -j ACCEPT"]
    assert "tby:" in inp[0] and inp[0].endswith("-j tby-top")
    assert len(fake.restores) == 1


def test_unchanged_rules_keep_their_counters() -> None:
    t, fake, _ = make()
    t.update_chain(Chain("tby-a", rules(1, 2, 3, 4)))
    t.apply()
    for i in range(4):
        fake.hit("filter", "tby-a", i, packets=10 + i)
    # Change rule 2, insert one at the top, drop rule 4, append one.
    t.update_chain(Chain("tby-a", rules(0, 1, 22, 3, 5)))
    res = t.apply()
    assert res.ok and res.rules_written == 3 and res.rules_deleted == 2
    assert_converged(t, fake)
    assert fake.counters("filter", "tby-a") == [0, 10, 0, 12, 0]


def test_reorder_moves_the_fewest_rules() -> None:
    t, fake, _ = make()
    t.update_chain(Chain("tby-a", rules(1, 2, 3, 4, 5)))
    t.apply()
    for i in range(5):
        fake.hit("filter", "tby-a", i, packets=i + 1)
    t.update_chain(Chain("tby-a", rules(5, 1, 2, 3, 4)))
    res = t.apply()
    assert res.rules_written == 1 and res.rules_deleted == 1
    assert fake.counters("filter", "tby-a") == [0, 1, 2, 3, 4]


def hook_specs(fake: FakeIptablesBackend, chain: str = "INPUT") -> list[str]:
    """Rules of a built-in chain without our comment (ours and foreign look alike then)."""
    return [r.split('"')[-1].strip() for r in fake.rules("filter", chain)]


def test_missing_hook_rule_is_reinserted_and_the_others_kept() -> None:
    t, fake, clock = make()
    t.update_chain(Chain("tby-a", rules(80)))
    t.set_insert_rules("INPUT", [Rule("-i eth0", "-j tby-a"), Rule("-i eth1", "-j tby-a")])
    t.apply()
    fake.external("filter", "*filter\n-D INPUT 1\n-A INPUT -j DROP\nCOMMIT\n")
    fake.hit("filter", "INPUT", 0)  # our second hook rule, now first
    clock.now += 10_000
    res = t.apply()
    assert res.ok and res.rules_deleted == 0 and res.rules_written == 1
    assert hook_specs(fake) == ["-i eth0 -j tby-a", "-i eth1 -j tby-a", "-j DROP"]
    assert fake.counters("filter", "INPUT") == [0, 1, 0]


def test_hook_rules_are_moved_back_above_a_foreign_rule() -> None:
    t, fake, clock = make()
    t.update_chain(Chain("tby-a", rules(80)))
    t.set_insert_rules("INPUT", [Rule("-i eth0", "-j tby-a"), Rule("-i eth1", "-j tby-a")])
    t.apply()
    fake.external("filter", "*filter\n-I INPUT 1 -p icmp -j ACCEPT\nCOMMIT\n")
    clock.now += 10_000
    res = t.apply()
    # Foreign rules are never moved, so ours are deleted and inserted above it.
    assert res.ok and res.rules_deleted == 2 and res.rules_written == 2
    assert hook_specs(fake) == ["-i eth0 -j tby-a", "-i eth1 -j tby-a", "-p icmp -j ACCEPT"]


def test_tampering_is_found_by_the_post_write_check() -> None:
    t, fake, clock = make()
    t.update_chain(Chain("tby-a", rules(80, 81)))
    t.set_insert_rules("INPUT", [Rule("", "-j tby-a")])
    t.apply()
    assert t.next_check_at() == clock.now + 1.0
    fake.external("filter", "*filter\n-F tby-a\n-D INPUT 1\nCOMMIT\n")
    # Before the check is due we trust our view: no read, no write.
    saves = fake.saves
    assert t.apply().restores == 0 and fake.saves == saves
    clock.now += 1.0
    res = t.apply()
    assert res.resynced and res.ok and res.rules_written == 3
    assert_converged(t, fake)
    assert kernel(fake)["INPUT"] == list(rule_hashes("INPUT", [Rule("", "-j tby-a")]))
    # The check after the repair finds nothing; then only the refresh interval remains.
    clock.now += 1.0
    res = t.apply()
    assert res.resynced and res.restores == 0
    assert t.next_check_at() == clock.now + t.refresh_interval


def test_refresh_repairs_foreign_rule_added_to_our_chain() -> None:
    t, fake, clock = make()
    t.update_chain(Chain("tby-a", rules(80)))
    t.apply()
    fake.hit("filter", "tby-a", 0, 5)
    fake.external("filter", "*filter\n-A tby-a -j ACCEPT\nCOMMIT\n")
    clock.now += t.refresh_interval
    res = t.apply()
    assert res.rules_deleted == 1 and res.rules_written == 0
    assert fake.counters("filter", "tby-a") == [5]


def test_remove_chain_after_references_are_gone_in_one_transaction() -> None:
    t, fake, _ = make()
    t.set_chains(
        [
            Chain("tby-a", (Rule("", "-j tby-b"), Rule("", "-j tby-c"))),
            Chain("tby-b", (Rule("", "-j tby-c"),)),
            Chain("tby-c", rules(80)),
        ]
    )
    t.set_insert_rules("INPUT", [Rule("", "-j tby-a")])
    t.apply()
    t.set_chains([Chain("tby-a", rules(22))])
    res = t.apply()
    assert res.ok and res.restores == 1 and res.chains_deleted == 2
    assert_converged(t, fake)
    # The fake refuses -X of a referenced chain, so the order inside the text mattered:
    text = fake.restores[-1]
    assert text.index("-A tby-a") < text.index("-X tby-b") < text.index("COMMIT")


def test_bad_chain_is_isolated_and_others_are_applied() -> None:
    t, fake, clock = make()
    t.set_chains(
        [
            Chain("tby-a", rules(80)),
            Chain("tby-bad", (Rule("-m nosuchmatch", "-j ACCEPT"),)),
            Chain("tby-c", rules(81)),
        ]
    )
    t.set_insert_rules("INPUT", [Rule("", "-j tby-a")])
    res = t.apply()
    assert res.failed == ("chain tby-bad",)
    assert not res.ok and res.consecutive_failures == 1
    k = kernel(fake)
    assert k["tby-a"] == list(rule_hashes("tby-a", rules(80)))
    assert k["tby-c"] == list(rule_hashes("tby-c", rules(81)))
    assert k["tby-bad"] == []  # created, contents still dirty
    assert len(k["INPUT"]) == 1
    assert t.next_check_at() == clock.now + t.retry_interval
    # Retries re-read the kernel and fail again on the bad chain only; felix sees persistence.
    for n in range(2, t.max_consecutive_failures + 1):
        clock.now += 1
        res = t.apply()
        assert res.resynced and res.failed == ("chain tby-bad",) and res.restores == 1
        assert res.consecutive_failures == n
    assert t.failed_persistently
    t.update_chain(Chain("tby-bad", rules(82)))
    res = t.apply()
    assert res.ok and not t.failed_persistently
    assert_converged(t, fake)


def test_bisection_when_the_error_line_is_not_attributable() -> None:
    class CommitLineErrors(FakeIptablesBackend):
        """nft reports some errors at the COMMIT line (measured: jump to a missing chain)."""

        def restore(self, table: str, text: str) -> None:
            try:
                super().restore(table, text)
            except Exception as exc:
                n = len(text.splitlines())
                raise type(exc)(table, f"error\nError occurred at line: {n}", text) from None

    t, fake, _ = make(CommitLineErrors())
    good = [Chain(f"tby-g{i}", rules(i)) for i in range(7)]
    t.set_chains([*good, Chain("tby-bad", (Rule("", "-j tby-missing"),))])
    res = t.apply()
    assert res.failed == ("chain tby-bad",)
    k = kernel(fake)
    for c in good:
        assert k[c.name] == list(rule_hashes(c.name, c.rules))


def test_delete_of_chain_still_referenced_by_a_foreign_rule_fails_alone() -> None:
    t, fake, _ = make()
    t.set_chains([Chain("tby-a", rules(80)), Chain("tby-b", rules(81))])
    t.apply()
    fake.external("filter", "*filter\n-A FORWARD -j tby-a\nCOMMIT\n")
    t.set_chains([Chain("tby-b", rules(81, 82))])
    res = t.apply()
    assert res.failed == ("delete chain tby-a",)
    assert kernel(fake)["tby-b"] == list(rule_hashes("tby-b", rules(81, 82)))
    assert kernel(fake)["tby-a"] == []  # flushed, kept until the reference goes
    fake.external("filter", "*filter\n-D FORWARD 1\nCOMMIT\n")
    res = t.apply()
    assert res.ok and res.chains_deleted == 1
    assert "tby-a" not in kernel(fake)


def test_other_tables_and_prefixes_are_independent() -> None:
    fake = FakeIptablesBackend()
    raw, _, _ = make(fake, "raw")
    raw.update_chain(Chain("tby-raw", (Rule("", "-j CT --notrack"),)))
    raw.set_insert_rules("PREROUTING", [Rule("", "-j tby-raw")])
    assert raw.apply().ok
    other = IptablesTable("raw", 4, fake, chain_prefix="zzz-")
    other.update_chain(Chain("zzz-x", rules(1)))
    assert other.apply().ok
    assert raw.apply().restores == 0
    assert set(kernel(fake, "raw")) == {"PREROUTING", "OUTPUT", "tby-raw", "zzz-x"}
    assert fake.chain_names("filter") == ["INPUT", "FORWARD", "OUTPUT"]


def test_readback_failure_is_reported_and_counted() -> None:
    class Broken(FakeIptablesBackend):
        def save(self, table: str, *, counters: bool = False) -> str:
            raise IptablesSaveError("boom")

    t, _, _ = make(Broken())
    res = t.apply()
    assert res.error and "boom" in res.error and res.consecutive_failures == 1


def lcs_len(a_values: list[int], b_values: list[int]) -> int:
    """Longest common subsequence length (textbook DP, independent of the driver's LIS).

    Identical rules are told apart by occurrence (the 2nd copy of a text is a different rule).
    """

    def tagged(values: list[int]) -> list[tuple[int, int]]:
        return [(v, values[:i].count(v)) for i, v in enumerate(values)]

    a, b = tagged(a_values), tagged(b_values)
    dp = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            dp[i + 1][j + 1] = dp[i][j] + 1 if x == y else max(dp[i][j + 1], dp[i + 1][j])
    return dp[-1][-1]


# Property: from any starting chain content, one apply reaches the desired order, and every rule
# whose text is in both keeps its counter when the edit can keep it (the longest common run).
PORTS = st.lists(st.integers(min_value=1, max_value=12), max_size=10)


@settings(max_examples=150, deadline=None)
@given(before=PORTS, after=PORTS, foreign=st.lists(st.booleans(), max_size=10))
def test_any_edit_converges_in_one_transaction(
    before: list[int], after: list[int], foreign: list[bool]
) -> None:
    t, fake, clock = make()
    t.update_chain(Chain("tby-a", rules(*before)))
    t.set_insert_rules("INPUT", [Rule(f"-s 10.0.0.{p}", "-j tby-a") for p in before[:3]])
    assert t.apply().ok
    for i, f in enumerate(foreign):
        if f:
            fake.external(
                "filter",
                f"*filter\n-I INPUT {min(i + 1, len(fake.rules('filter', 'INPUT')) + 1)} -j DROP\n"
                "COMMIT\n",
            )
    for i in range(len(before)):
        fake.hit("filter", "tby-a", i, packets=1)
    t.update_chain(Chain("tby-a", rules(*after)))
    t.set_insert_rules("INPUT", [Rule(f"-s 10.0.0.{p}", "-j tby-a") for p in after[:3]])
    clock.now += 10_000
    res = t.apply()
    assert res.ok and res.restores <= 1
    assert_converged(t, fake)
    inp = kernel(fake)["INPUT"]
    assert inp[: len(after[:3])] == list(
        rule_hashes("INPUT", [Rule(f"-s 10.0.0.{p}", "-j tby-a") for p in after[:3]])
    )
    assert inp.count(None) == sum(foreign)
    # Kept rules keep their counters: as many as the longest common subsequence allows.
    assert sum(fake.counters("filter", "tby-a")) == lcs_len(before, after)
    assert t.apply().restores == 0
