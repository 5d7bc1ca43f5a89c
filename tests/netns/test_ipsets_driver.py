"""IpsetDriver on the real kernel, with iptables rules referencing the sets."""

from __future__ import annotations

import pytest

from kernel.ipsets import IPSet, IpsetDriver, parse_ipset_save
from kernel.iptables import Chain, IptablesTable, Rule, SubprocessIptablesBackend
from tests.support.netns import NetnsFactory, ns_exec

pytestmark = pytest.mark.netns


def sets(ns: str) -> dict[str, tuple[str, str, int, set[str]]]:
    return {
        n: (s.type, s.family, s.maxelem, s.members)
        for n, s in parse_ipset_save(ns_exec(ns, ["ipset", "save"])).items()
    }


def net(name: str, *members: str, maxelem: int = 65536) -> IPSet:
    return IPSet(name, "hash:net", "inet", frozenset(members), maxelem)


def test_converge_deltas_and_foreign_sets(netns: NetnsFactory) -> None:
    ns = netns.new("ips")
    ns_exec(ns, ["ipset", "create", "other", "hash:ip"])
    ns_exec(ns, ["ipset", "add", "other", "10.0.0.1"])
    ns_exec(ns, ["ipset", "create", "tby4-stale", "hash:ip"])
    d = IpsetDriver(ns)
    d.set_sets(
        [
            net("tby4-a", "10.0.0.0/24", "10.1.0.1/32"),
            IPSet("tby4-p", "hash:ip,port", members=frozenset({"10.0.0.1,80", "10.0.0.2,udp:53"})),
            IPSet("tby6-a", "hash:net", "inet6", frozenset({"fd00::/64", "fd01::1"})),
        ]
    )
    res = d.apply()
    assert res.ok and res.sets_created == 3 and res.restores == 1
    got = sets(ns)
    assert got["tby4-a"] == ("hash:net", "inet", 65536, {"10.0.0.0/24", "10.1.0.1"})
    assert got["tby4-p"][3] == {"10.0.0.1,tcp:80", "10.0.0.2,udp:53"}
    assert got["tby6-a"][3] == {"fd00::/64", "fd01::1"}
    assert "tby4-stale" in got  # apply() never destroys
    d.invalidate()
    assert d.apply().restores == 0  # read-back of canonical members compares equal
    d.update_set(net("tby4-a", "10.0.0.0/24", "10.2.0.0/16"))
    res = d.apply()
    assert (res.members_added, res.members_removed) == (1, 1)
    assert sets(ns)["tby4-a"][3] == {"10.0.0.0/24", "10.2.0.0/16"}
    res = d.apply_deletions()
    assert res.ok and res.sets_destroyed == 1
    got = sets(ns)
    assert "tby4-stale" not in got and got["other"][3] == {"10.0.0.1"}


def test_metadata_change_of_a_referenced_set(netns: NetnsFactory) -> None:
    ns = netns.new("swap")
    ipt = IptablesTable("filter", 4, SubprocessIptablesBackend("nft", 4, ns), ns)
    d = IpsetDriver(ns)
    d.update_set(net("tby4-a", "127.0.0.0/8", maxelem=16))
    assert d.apply().ok
    ipt.update_chain(Chain("tby-out", (Rule("-m set --match-set tby4-a dst", ""),)))
    ipt.set_insert_rules("OUTPUT", [Rule("", "-j tby-out")])
    assert ipt.apply().ok
    # maxelem change: the kernel allows a swap, so the referenced set is rebuilt in place.
    d.update_set(net("tby4-a", "127.0.0.0/8", "10.5.0.0/16", maxelem=1024))
    res = d.apply()
    assert res.ok and res.sets_rebuilt == 1
    assert sets(ns)["tby4-a"] == ("hash:net", "inet", 1024, {"127.0.0.0/8", "10.5.0.0/16"})
    assert [n for n in sets(ns) if n.startswith("tbytmp-")] == []
    ns_exec(ns, ["ping", "-c", "1", "-W", "1", "127.0.0.1"])  # the rule still matches the set
    save = ns_exec(ns, ["iptables-nft-save", "-c", "-t", "filter"])
    line = next(x for x in save.splitlines() if "--match-set tby4-a" in x)
    assert not line.startswith("[0:")
    # Type change: the kernel refuses to swap hash:net for hash:ip, and a referenced set cannot
    # be destroyed, so the change fails (reported) until nothing references the set.
    d.update_set(IPSet("tby4-a", "hash:ip", members=frozenset({"127.0.0.1"})))
    res = d.apply()
    assert res.failed == ("tby4-a",)
    assert sets(ns)["tby4-a"][0] == "hash:net"
    ipt.update_chain(Chain("tby-out", ()))
    assert ipt.apply().ok
    res = d.apply()
    assert res.ok and res.sets_rebuilt == 1
    assert sets(ns)["tby4-a"] == ("hash:ip", "inet", 1048576, {"127.0.0.1"})


def test_unreferenced_type_change_and_maxelem_swap(netns: NetnsFactory) -> None:
    ns = netns.new("types")
    d = IpsetDriver(ns)
    d.update_set(IPSet("tby4-a", "hash:ip", members=frozenset({"10.0.0.1"})))
    d.apply()
    d.update_set(net("tby4-a", "10.0.0.0/24"))
    res = d.apply()
    assert res.ok and res.sets_rebuilt == 1
    assert sets(ns)["tby4-a"] == ("hash:net", "inet", 65536, {"10.0.0.0/24"})


def test_set_destroyed_only_after_the_rule_is_gone(netns: NetnsFactory) -> None:
    ns = netns.new("del")
    ipt = IptablesTable("filter", 4, SubprocessIptablesBackend("legacy", 4, ns), ns)
    d = IpsetDriver(ns)
    d.set_sets([net("tby4-a", "10.0.0.0/8"), net("tby4-b", "10.9.0.0/16")])
    d.apply()
    ipt.update_chain(Chain("tby-in", (Rule("-m set --match-set tby4-a src", "-j DROP"),)))
    assert ipt.apply().ok
    # Felix's order: sets apply, iptables apply, then deletions. Here the rule is still wanted.
    d.set_sets([net("tby4-b", "10.9.0.0/16")])
    assert d.apply().ok
    res = d.apply_deletions()
    assert res.failed == ("tby4-a",)
    assert "tby4-a" in sets(ns)
    ipt.update_chain(Chain("tby-in", ()))
    assert ipt.apply().ok
    res = d.apply_deletions()
    assert res.ok and res.sets_destroyed == 1
    assert set(sets(ns)) == {"tby4-b"}
