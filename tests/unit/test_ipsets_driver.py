"""IpsetDriver against the stateful fake: member canonicalisation, deltas, rebuilds, deletions."""

from __future__ import annotations

import pytest

from kernel.ipsets import (
    FakeIpsetBackend,
    IPSet,
    IpsetConfigError,
    IpsetDriver,
    IpsetRestoreError,
    canonical_member,
    parse_ipset_save,
)
from kernel.iptables_fake import FakeIptablesBackend


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(fake: FakeIpsetBackend | None = None) -> tuple[IpsetDriver, FakeIpsetBackend, Clock]:
    fake = fake or FakeIpsetBackend()
    clock = Clock()
    return IpsetDriver(None, "tby", fake, clock=clock), fake, clock


def state(fake: FakeIpsetBackend) -> dict[str, tuple[str, str, int, frozenset[str]]]:
    return {
        n: (s.type, s.family, s.maxelem, frozenset(s.members))
        for n, s in parse_ipset_save(fake.save()).items()
    }


def net(name: str, *members: str, **kw: object) -> IPSet:
    return IPSet(name, "hash:net", members=frozenset(members), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("set_type", "family", "member", "canon"),
    [
        ("hash:ip", "inet", "10.0.0.1", "10.0.0.1"),
        ("hash:net", "inet", "10.0.0.1/32", "10.0.0.1"),
        ("hash:net", "inet", "10.0.0.7/24", "10.0.0.0/24"),
        ("hash:net", "inet6", "fd00:0::1/128", "fd00::1"),
        ("hash:net", "inet6", "fd00::/64", "fd00::/64"),
        ("hash:ip,port", "inet", "10.0.0.1,80", "10.0.0.1,tcp:80"),
        ("hash:ip,port", "inet", "10.0.0.1,udp:53", "10.0.0.1,udp:53"),
        ("hash:net,port", "inet", "10.1.0.0/16,sctp:9", "10.1.0.0/16,sctp:9"),
    ],
)
def test_members_are_canonical_like_ipset_save(
    set_type: str, family: str, member: str, canon: str
) -> None:
    assert canonical_member(set_type, family, member) == canon


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"members": frozenset({"10.0.0.1"}), "family": "inet6"}, "not an IPv6"),
        ({"members": frozenset({"nope"})}, "member 'nope'"),
        ({"members": frozenset({"10.0.0.1", "10.0.0.2"}), "maxelem": 1}, "maxelem"),
        ({"type": "hash:ip,port", "members": frozenset({"10.0.0.1,icmp:3"})}, "protocol"),
        ({"type": "bitmap:port"}, "not supported"),
    ],
)
def test_invalid_sets_are_rejected_naming_the_set(kw: dict[str, object], match: str) -> None:
    with pytest.raises(IpsetConfigError, match=match) as info:
        IPSet("tby4-a", **kw)  # type: ignore[arg-type]
    assert "tby4-a" in str(info.value)


def test_names_must_carry_our_prefix() -> None:
    d, _, _ = make()
    for bad in ("cali40s:x", "tby", "tbytmp-x", "tby" + "x" * 40):
        with pytest.raises(IpsetConfigError):
            d.update_set(IPSet(bad))


def test_converge_from_empty_then_idle() -> None:
    d, fake, _ = make()
    d.set_sets(
        [
            net("tby4-a", "10.0.0.0/24", "10.1.0.1/32"),
            IPSet("tby6-b", "hash:ip", "inet6", frozenset({"fd00::1"})),
            IPSet("tby4-c", "hash:ip,port", members=frozenset({"10.0.0.1,80"})),
        ]
    )
    res = d.apply()
    assert res.ok and res.restores == 1 and res.sets_created == 3 and res.members_added == 4
    assert state(fake) == {
        "tby4-a": ("hash:net", "inet", 1048576, frozenset({"10.0.0.0/24", "10.1.0.1"})),
        "tby6-b": ("hash:ip", "inet6", 1048576, frozenset({"fd00::1"})),
        "tby4-c": ("hash:ip,port", "inet", 1048576, frozenset({"10.0.0.1,tcp:80"})),
    }
    n = len(fake.restores)
    assert d.apply().restores == 0
    d.invalidate()
    res = d.apply()
    assert res.resynced and res.restores == 0  # read-back compares equal: canonical members
    assert d.apply_deletions().restores == 0
    assert len(fake.restores) == n


def test_member_changes_are_written_as_deltas() -> None:
    d, fake, _ = make()
    d.update_set(net("tby4-a", "10.0.0.0/24", "10.1.0.0/24", "10.2.0.0/24"))
    d.apply()
    d.update_set(net("tby4-a", "10.1.0.0/24", "10.2.0.0/24", "10.3.0.0/24"))
    res = d.apply()
    assert (res.members_added, res.members_removed, res.sets_created) == (1, 1, 0)
    assert fake.restores[-1] == "del tby4-a 10.0.0.0/24\nadd tby4-a 10.3.0.0/24\n"
    assert fake.members("tby4-a") == {"10.1.0.0/24", "10.2.0.0/24", "10.3.0.0/24"}


def test_stale_and_foreign_sets() -> None:
    fake = FakeIpsetBackend()
    fake.external(
        "create other hash:ip family inet maxelem 10\nadd other 1.2.3.4\n"
        "create tby4-old hash:ip family inet maxelem 10\nadd tby4-old 10.0.0.9\n"
        "create tby4-a hash:net family inet maxelem 1048576\nadd tby4-a 10.9.0.0/16\n"
    )
    d, _, _ = make(fake)
    d.set_sets([net("tby4-a", "10.0.0.0/8")])
    res = d.apply()
    assert res.ok and res.members_added == 1 and res.members_removed == 1
    assert fake.exists("tby4-old")  # apply() never destroys
    assert d.pending_deletions() == ["tby4-old"]
    res = d.apply_deletions()
    assert res.ok and res.sets_destroyed == 1
    assert not fake.exists("tby4-old")
    assert fake.members("other") == {"1.2.3.4"}
    assert fake.members("tby4-a") == {"10.0.0.0/8"}
    assert all("other" not in text for text in fake.restores)


def test_maxelem_change_swaps_a_rebuilt_set_in() -> None:
    d, fake, _ = make()
    d.update_set(net("tby4-a", "10.0.0.0/24", maxelem=10))
    d.apply()
    d.update_set(net("tby4-a", "10.0.0.0/24", "10.0.1.0/24", maxelem=20))
    res = d.apply()
    assert res.ok and res.sets_rebuilt == 1
    assert "swap tbytmp-" in fake.restores[-1]
    assert state(fake) == {
        "tby4-a": ("hash:net", "inet", 20, frozenset({"10.0.0.0/24", "10.0.1.0/24"}))
    }


def test_type_change_recreates_when_unreferenced_and_waits_when_referenced() -> None:
    iptables = FakeIptablesBackend()
    fake = FakeIpsetBackend(references=iptables.set_references)
    d, _, clock = make(fake)
    d.set_sets([IPSet("tby4-a", members=frozenset({"10.0.0.1"})), net("tby4-b", "10.2.0.0/16")])
    d.apply()
    # Unreferenced: destroy + create in the same restore.
    d.update_set(net("tby4-a", "10.0.0.0/24"))
    res = d.apply()
    assert res.ok and res.sets_rebuilt == 1
    assert state(fake)["tby4-a"][0] == "hash:net"
    # Referenced: the kernel can neither swap nor destroy it; the other set is still applied.
    iptables.external("filter", "*filter\n-A INPUT -m set --match-set tby4-a src -j DROP\nCOMMIT\n")
    d.set_sets([IPSet("tby4-a", members=frozenset({"10.0.0.1"})), net("tby4-b", "10.3.0.0/16")])
    res = d.apply()
    assert res.failed == ("tby4-a",) and res.restores == 2 and res.consecutive_failures == 1
    assert fake.members("tby4-b") == {"10.3.0.0/16"}
    assert state(fake)["tby4-a"][0] == "hash:net"
    iptables.external("filter", "*filter\n-F INPUT\nCOMMIT\n")
    clock.now += 1
    res = d.apply()
    assert res.ok and res.resynced and state(fake)["tby4-a"][0] == "hash:ip"
    assert d.consecutive_failures == 0


def test_referenced_set_is_destroyed_only_after_the_rule_is_gone() -> None:
    iptables = FakeIptablesBackend()
    fake = FakeIpsetBackend(references=iptables.set_references)
    d, _, _ = make(fake)
    d.set_sets([net("tby4-a", "10.0.0.0/8"), net("tby4-b"), net("tby4-c")])
    d.apply()
    iptables.external("filter", "*filter\n-A INPUT -m set --match-set tby4-b src -j DROP\nCOMMIT\n")
    d.set_sets([net("tby4-a", "10.0.0.0/8")])
    res = d.apply_deletions()
    assert res.failed == ("tby4-b",) and res.sets_destroyed == 1
    assert fake.exists("tby4-b") and not fake.exists("tby4-c")
    assert d.consecutive_failures == 0  # an in-use set is expected, not a dataplane failure
    iptables.external("filter", "*filter\n-F INPUT\nCOMMIT\n")
    res = d.apply_deletions()
    assert res.ok and res.resynced and res.sets_destroyed == 1
    assert not fake.exists("tby4-b")


def test_stale_temp_set_is_swept_and_rebuild_tolerates_a_leftover() -> None:
    d, fake, _ = make()
    tmp = d.temp_name("tby4-a")
    assert len(tmp) <= 31 and tmp.startswith("tbytmp-")
    fake.external(
        f"create {tmp} hash:net family inet maxelem 20\nadd {tmp} 10.66.0.0/16\n"
        "create tby4-a hash:net family inet maxelem 10\n"
    )
    d.update_set(net("tby4-a", "10.0.0.0/24", maxelem=20))
    assert d.apply().ok
    assert fake.members("tby4-a") == {"10.0.0.0/24"}
    assert not fake.exists(tmp)


def test_tampered_members_are_repaired_at_refresh() -> None:
    d, fake, clock = make()
    d.update_set(net("tby4-a", "10.0.0.0/24"))
    d.apply()
    fake.external("del tby4-a 10.0.0.0/24\nadd tby4-a 10.6.6.0/24\n")
    assert d.apply().restores == 0  # not due yet
    clock.now += d.refresh_interval
    res = d.apply()
    assert res.resynced and res.members_added == 1 and res.members_removed == 1
    assert fake.members("tby4-a") == {"10.0.0.0/24"}


def test_restore_error_names_the_line() -> None:
    err = IpsetRestoreError(
        "ipset v7.17: Error in line 2: The set with the given name does not exist",
        "add a 1.1.1.1\nadd b 1.1.1.1\n",
    )
    assert err.line == 2 and err.line_text == "add b 1.1.1.1"
