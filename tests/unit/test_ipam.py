"""IPAM against the in-memory etcd model: allocation, claiming, borrowing, release, recovery.

Every test asserts on the stored records (Calico's keys and JSON) or on returned addresses.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Network, ip_address
from typing import Any

import pytest

from datastore.codec import encode, resource_from_dict
from datastore.fake import FakeEtcd, FakeKVStore
from datastore.ipam import (
    IPAM,
    AddressInUseError,
    AffinityError,
    ConcurrencyError,
    IPAMConfig,
    IPAMError,
    NoMatchingPoolError,
    PoolExhaustedError,
)
from datastore.keys import resource_key
from datastore.kv import Compare, Op

IPAM_ROOT = "/calico/ipam/v2/"


def put_pool(store: FakeEtcd, name: str, cidr: str, **spec: Any) -> None:
    doc = {
        "kind": "IPPool",
        "apiVersion": "projectcalico.org/v3",
        "metadata": {"name": name},
        "spec": {"cidr": cidr, **spec},
    }
    store.put(resource_key("IPPool", name), encode(resource_from_dict(doc)))


def put_node(store: FakeEtcd, name: str, labels: dict[str, str]) -> None:
    doc = {
        "kind": "Node",
        "apiVersion": "projectcalico.org/v3",
        "metadata": {"name": name, "labels": labels},
        "spec": {},
    }
    store.put(resource_key("Node", name), encode(resource_from_dict(doc)))


def stored(store: FakeEtcd, key: str) -> Any:
    kv = store.get(IPAM_ROOT + key)
    return None if kv is None else json.loads(kv.value)


def ipam_keys(store: FakeEtcd) -> list[str]:
    return sorted(k[len(IPAM_ROOT) :] for k in store.snapshot(IPAM_ROOT))


@pytest.fixture
def etcd() -> FakeEtcd:
    e = FakeEtcd()
    put_pool(e, "default-ipv4", "10.65.0.0/24")  # four /26 blocks
    return e


@pytest.fixture
def ipam(etcd: FakeEtcd) -> IPAM:
    return IPAM(etcd)


def assert_consistent(ipam: IPAM) -> None:
    assert ipam.consistency_problems() == []


# ------------------------------------------------------------------------ allocation, claiming


def test_first_allocation_claims_block_and_writes_calico_records(
    etcd: FakeEtcd, ipam: IPAM
) -> None:
    v4, v6 = ipam.auto_assign("k8s-pod-network.c1", "node-a", attrs={"pod": "p1"})
    assert v6 == []
    (ip,) = v4
    block = IPv4Network(f"{ip}/26", strict=False)
    key = str(block).replace("/", "-")
    assert stored(etcd, f"host/node-a/ipv4/block/{key}") == {"state": "confirmed", "deleted": False}
    b = stored(etcd, f"assignment/ipv4/block/{key}")
    assert b["cidr"] == str(block)
    assert b["affinity"] == "host:node-a"
    assert b["strictAffinity"] is False
    assert b["deleted"] is False
    ordinal = int(ip) - int(block.network_address)
    assert b["allocations"][ordinal] == 0
    assert sum(a is not None for a in b["allocations"]) == 1
    assert ordinal not in b["unallocated"] and len(b["unallocated"]) == 63
    assert b["attributes"] == [{"handle_id": "k8s-pod-network.c1", "secondary": {"pod": "p1"}}]
    assert str(ordinal) in b["sequenceNumberForAllocation"]
    assert stored(etcd, "handle/k8s-pod-network.c1") == {
        "block": {str(block): 1},
        "deleted": False,
    }


def test_network_and_broadcast_addresses_are_usable(etcd: FakeEtcd) -> None:
    put_pool(etcd, "tiny", "10.70.0.0/30", blockSize=30)
    ipam = IPAM(etcd)
    v4, _ = ipam.auto_assign("h", "n", num_v4=4, pools_v4=["tiny"])
    assert sorted(v4) == [IPv4Address(f"10.70.0.{i}") for i in range(4)]


def test_next_allocations_come_from_the_affine_block(ipam: IPAM) -> None:
    ips = [ipam.auto_assign(f"h{i}", "node-a")[0][0] for i in range(10)]
    assert len(set(ips)) == 10
    assert len({IPv4Network(f"{ip}/26", strict=False) for ip in ips}) == 1
    assert ipam.affinities() == {"node-a": [IPv4Network(f"{ips[0]}/26", strict=False)]}
    assert_consistent(ipam)


def test_each_node_claims_its_own_block(ipam: IPAM) -> None:
    a = ipam.auto_assign("ha", "node-a")[0][0]
    b = ipam.auto_assign("hb", "node-b")[0][0]
    c = ipam.auto_assign("hc", "node-c")[0][0]
    blocks = {IPv4Network(f"{ip}/26", strict=False) for ip in (a, b, c)}
    assert len(blocks) == 3
    aff = ipam.affinities()
    assert set(aff) == {"node-a", "node-b", "node-c"}
    assert all(len(v) == 1 for v in aff.values())
    assert {bi.affinity_node for bi in ipam.blocks()} == {"node-a", "node-b", "node-c"}


def test_full_block_makes_the_node_claim_another(ipam: IPAM) -> None:
    v4, _ = ipam.auto_assign("big", "node-a", num_v4=70)
    assert len(set(v4)) == 70
    assert len(ipam.affinities()["node-a"]) == 2
    assert sorted(b.allocated for b in ipam.blocks()) == [6, 64]
    assert_consistent(ipam)


def test_block_size_comes_from_the_pool(etcd: FakeEtcd) -> None:
    put_pool(etcd, "small-blocks", "10.66.0.0/24", blockSize=28)
    ipam = IPAM(etcd)
    v4, _ = ipam.auto_assign("h", "node-a", num_v4=17, pools_v4=["small-blocks"])
    assert len(v4) == 17
    cidrs = ipam.affinities()["node-a"]
    assert [c.prefixlen for c in cidrs] == [28, 28]
    assert {b.size for b in ipam.blocks()} == {16}


def test_default_block_size_is_26_for_v4_and_122_for_v6(etcd: FakeEtcd) -> None:
    put_pool(etcd, "v6", "fd00:10::/112")
    ipam = IPAM(etcd)
    ipam.auto_assign("h", "node-a", num_v4=1, num_v6=1)
    assert sorted(c.prefixlen for c in ipam.affinities()["node-a"]) == [26, 122]


# ------------------------------------------------------------------------ pools


def test_node_selector_uses_node_labels(etcd: FakeEtcd) -> None:
    etcd.delete(resource_key("IPPool", "default-ipv4"))
    put_pool(etcd, "rack-a", "10.10.0.0/24", nodeSelector="rack == 'a'")
    put_pool(etcd, "rack-b", "10.20.0.0/24", nodeSelector="rack == 'b'")
    put_node(etcd, "n-a", {"rack": "a"})
    put_node(etcd, "n-b", {"rack": "b"})
    ipam = IPAM(etcd)
    assert ipam.auto_assign("h1", "n-a")[0][0] in IPv4Network("10.10.0.0/24")
    assert ipam.auto_assign("h2", "n-b")[0][0] in IPv4Network("10.20.0.0/24")
    # A node without a Node resource has no labels: no pool selects it.
    with pytest.raises(NoMatchingPoolError):
        ipam.auto_assign("h3", "unknown-node")
    # Even when asked by name, the selector still applies (as Calico).
    with pytest.raises(NoMatchingPoolError):
        ipam.auto_assign("h4", "n-a", pools_v4=["rack-b"])
    assert ipam.ips_by_handle("h3") == [] and ipam.ips_by_handle("h4") == []


def test_disabled_pool_gives_nothing_new_but_keeps_allocations(etcd: FakeEtcd) -> None:
    ipam = IPAM(etcd)
    old = ipam.auto_assign("old", "node-a")[0][0]
    put_pool(etcd, "default-ipv4", "10.65.0.0/24", disabled=True)
    with pytest.raises(NoMatchingPoolError):
        ipam.auto_assign("new", "node-a")
    put_pool(etcd, "second", "10.80.0.0/24")
    new = ipam.auto_assign("new", "node-a")[0][0]
    assert new in IPv4Network("10.80.0.0/24")
    assert ipam.ips_by_handle("old") == [old]  # still allocated in the disabled pool
    with pytest.raises(NoMatchingPoolError):
        ipam.assign_ip(IPv4Address("10.65.0.200"), "x", "node-a")
    usage = {u.name: u for u in ipam.pool_usage()}
    assert usage["default-ipv4"].disabled and usage["default-ipv4"].in_use == 1
    assert usage["second"].in_use == 1 and usage["second"].total == 256


def test_pool_restriction_by_name_and_cidr(etcd: FakeEtcd) -> None:
    put_pool(etcd, "other", "10.90.0.0/24")
    put_pool(etcd, "v6-pool", "fd00:1::/120")
    ipam = IPAM(etcd)
    assert ipam.auto_assign("a", "n", pools_v4=["other"])[0][0] in IPv4Network("10.90.0.0/24")
    assert ipam.auto_assign("b", "n", pools_v4=["10.65.0.0/24"])[0][0] in IPv4Network(
        "10.65.0.0/24"
    )
    v4, v6 = ipam.auto_assign("c", "n", num_v4=0, num_v6=1, pools_v6=["fd00:1::/120"])
    assert v4 == [] and v6[0] in IPv6Network("fd00:1::/120")
    with pytest.raises(NoMatchingPoolError):
        ipam.auto_assign("d", "n", pools_v4=["no-such-pool"])
    with pytest.raises(NoMatchingPoolError):
        ipam.auto_assign("e", "n", pools_v4=["fd00:1::/120"])  # a v6 pool for v4


def test_no_pool_for_the_version(ipam: IPAM, etcd: FakeEtcd) -> None:
    with pytest.raises(NoMatchingPoolError):
        ipam.auto_assign("h", "n", num_v4=1, num_v6=1)
    # All-or-nothing: the IPv4 address taken first was given back.
    assert ipam.ips_by_handle("h") == []
    assert stored(etcd, "handle/h") is None
    assert all(b.allocated == 0 for b in ipam.blocks())


# ------------------------------------------------------------------------ borrowing


def test_borrows_only_when_no_block_can_be_claimed(etcd: FakeEtcd) -> None:
    put_pool(etcd, "default-ipv4", "10.65.0.0/25")  # two /26 blocks
    ipam = IPAM(etcd)
    a = ipam.auto_assign("a", "node-a")[0][0]
    b = ipam.auto_assign("b", "node-b")[0][0]
    block_a = IPv4Network(f"{a}/26", strict=False)
    assert b not in block_a  # node-b claimed the free block instead of borrowing
    c = ipam.auto_assign("c", "node-c")[0][0]  # pool exhausted: borrow
    owner = ipam.who_owns(c)
    assert owner is not None and owner.handle_id == "c"
    assert "node-c" not in ipam.affinities()
    assert {bi.affinity_node for bi in ipam.blocks()} == {"node-a", "node-b"}
    assert_consistent(ipam)


def test_strict_affinity_forbids_borrowing(etcd: FakeEtcd) -> None:
    put_pool(etcd, "default-ipv4", "10.65.0.0/26")  # one block
    ipam = IPAM(etcd)
    ipam.set_config(IPAMConfig(strict_affinity=True))
    a = ipam.auto_assign("a", "node-a")[0][0]
    with pytest.raises(PoolExhaustedError):
        ipam.auto_assign("b", "node-b")
    assert ipam.ips_by_handle("b") == []
    with pytest.raises(AffinityError):
        ipam.assign_ip(a + 1, "b", "node-b")
    # New blocks of a strict cluster record it.
    assert stored(etcd, "assignment/ipv4/block/10.65.0.0-26")["strictAffinity"] is True


def test_no_auto_allocation_means_borrowing(etcd: FakeEtcd) -> None:
    ipam = IPAM(etcd)
    ipam.auto_assign("a", "node-a")
    ipam.set_config(IPAMConfig(auto_allocate_blocks=False))
    ipam.auto_assign("b", "node-b")
    assert set(ipam.affinities()) == {"node-a"}
    assert len(ipam.blocks()) == 1 and ipam.blocks()[0].allocated == 2


def test_max_blocks_per_host(etcd: FakeEtcd) -> None:
    ipam = IPAM(etcd)
    ipam.set_config(IPAMConfig(max_blocks_per_host=1, strict_affinity=True))
    assert len(ipam.auto_assign("a", "node-a", num_v4=64)[0]) == 64
    with pytest.raises(PoolExhaustedError):
        ipam.auto_assign("b", "node-a")
    assert len(ipam.affinities()["node-a"]) == 1


def test_pool_exhausted(etcd: FakeEtcd) -> None:
    put_pool(etcd, "default-ipv4", "10.65.0.0/26")
    ipam = IPAM(etcd)
    ipam.auto_assign("a", "node-a", num_v4=60)
    with pytest.raises(PoolExhaustedError):
        ipam.auto_assign("b", "node-b", num_v4=5)
    assert ipam.ips_by_handle("b") == []  # the 4 it could get were given back
    assert ipam.blocks()[0].allocated == 60
    assert_consistent(ipam)


# ------------------------------------------------------------------------ config


def test_config_roundtrip_with_calico_field_names(etcd: FakeEtcd, ipam: IPAM) -> None:
    assert ipam.get_config() == IPAMConfig()
    cfg = IPAMConfig(strict_affinity=True, auto_allocate_blocks=True, max_blocks_per_host=3)
    ipam.set_config(cfg)
    assert ipam.get_config() == cfg
    assert stored(etcd, "config") == {
        "strict_affinity": True,
        "auto_allocate_blocks": True,
        "maxBlocksPerHost": 3,
    }
    ipam.set_config(IPAMConfig(auto_allocate_blocks=False))
    assert stored(etcd, "config") == {}
    assert ipam.get_config() == IPAMConfig(auto_allocate_blocks=False)


# ------------------------------------------------------------------------ assign_ip


def test_assign_specific_ip(etcd: FakeEtcd, ipam: IPAM) -> None:
    ip = IPv4Address("10.65.0.77")
    ipam.assign_ip(ip, "h1", "node-a", {"pod": "x"})
    got = ipam.who_owns(ip)
    assert got is not None and got.handle_id == "h1" and got.attrs == {"pod": "x"}
    assert got.block == IPv4Network("10.65.0.64/26")
    assert stored(etcd, "host/node-a/ipv4/block/10.65.0.64-26")["state"] == "confirmed"
    with pytest.raises(AddressInUseError):
        ipam.assign_ip(ip, "h2", "node-a")
    with pytest.raises(NoMatchingPoolError):
        ipam.assign_ip(IPv4Address("10.99.0.1"), "h3", "node-a")
    # auto_assign on node-a now uses the same block and never hands out .77 again.
    v4, _ = ipam.auto_assign("h4", "node-a", num_v4=63)
    assert ip not in v4 and len(set(v4)) == 63
    assert_consistent(ipam)


# ------------------------------------------------------------------------ release


def test_release_by_handle_and_reuse(etcd: FakeEtcd) -> None:
    put_pool(etcd, "default-ipv4", "10.65.0.0/28", blockSize=28)
    ipam = IPAM(etcd)
    first, _ = ipam.auto_assign("h1", "n", num_v4=2)
    rest, _ = ipam.auto_assign("h2", "n", num_v4=14)
    assert sorted(first + rest) == [IPv4Address(f"10.65.0.{i}") for i in range(16)]
    assert sorted(ipam.release_by_handle("h1")) == sorted(first)
    assert stored(etcd, "handle/h1") is None
    assert ipam.release_by_handle("h1") == []  # idempotent
    again, _ = ipam.auto_assign("h3", "n", num_v4=2)
    assert sorted(again) == sorted(first)  # the only free addresses
    assert_consistent(ipam)


def test_released_address_is_reused_last(ipam: IPAM) -> None:
    ips, _ = ipam.auto_assign("a", "n", num_v4=3)
    assert ipam.release_ips([ips[0]]) == [ips[0]]
    nxt = ipam.auto_assign("b", "n")[0][0]
    assert nxt not in ips  # freed ordinals go to the back of the free list (as Calico)


def test_release_by_address_updates_handle_counts(etcd: FakeEtcd, ipam: IPAM) -> None:
    ips, _ = ipam.auto_assign("h", "n", num_v4=3)
    never = IPv4Address("10.65.0.250")
    outside = IPv4Address("192.168.1.1")
    assert ipam.release_ips([ips[0], never, outside]) == [ips[0]]
    block = str(IPv4Network(f"{ips[0]}/26", strict=False))
    assert stored(etcd, "handle/h") == {"block": {block: 2}, "deleted": False}
    assert ipam.release_ips([ips[0]]) == []  # already free
    assert sorted(ipam.release_ips(ips[1:])) == sorted(ips[1:])
    assert stored(etcd, "handle/h") is None
    b = stored(etcd, "assignment/ipv4/block/" + block.replace("/", "-"))
    assert b["attributes"] == [] and all(a is None for a in b["allocations"])
    assert_consistent(ipam)


def test_attributes_are_renumbered_when_released(ipam: IPAM) -> None:
    a = ipam.auto_assign("a", "n", attrs={"pod": "a"})[0][0]
    b = ipam.auto_assign("b", "n", attrs={"pod": "b"})[0][0]
    ipam.release_ips([a])
    owner = ipam.who_owns(b)
    assert owner is not None and owner.handle_id == "b" and owner.attrs == {"pod": "b"}
    assert ipam.who_owns(a) is None


def test_release_empty_blocks(etcd: FakeEtcd, ipam: IPAM) -> None:
    ips, _ = ipam.auto_assign("h", "n", num_v4=70)  # two blocks
    ipam.auto_assign("other", "m")
    in_second = [ip for ip in ips if ip not in IPv4Network(f"{ips[0]}/26", strict=False)]
    ipam.release_ips(in_second)
    released = ipam.release_empty_blocks("n")
    assert released == [IPv4Network(f"{in_second[0]}/26", strict=False)]
    key = str(released[0]).replace("/", "-")
    assert stored(etcd, f"assignment/ipv4/block/{key}") is None
    assert stored(etcd, f"host/n/ipv4/block/{key}") is None
    assert len(ipam.affinities()["n"]) == 1  # the non-empty one stays
    assert ipam.release_empty_blocks("n") == []
    assert_consistent(ipam)


def test_release_node_affinities(etcd: FakeEtcd, ipam: IPAM) -> None:
    ips, _ = ipam.auto_assign("h", "n", num_v4=65)
    ipam.release_ips([ips[-1]])  # second block is now empty
    ipam.release_node_affinities("n")
    assert "n" not in ipam.affinities()
    assert [k for k in ipam_keys(etcd) if k.startswith("host/")] == []
    (info,) = ipam.blocks()
    assert info.affinity_node is None and info.allocated == 64
    assert sorted(ipam.ips_by_handle("h")) == sorted(ips[:-1])
    # The unaffine block is borrowable again by anyone (strict affinity off).
    assert_consistent(ipam)


# ------------------------------------------------------------------------ IPv6


def test_ipv6(etcd: FakeEtcd) -> None:
    put_pool(etcd, "v6", "fd00:10::/120")
    ipam = IPAM(etcd)
    v4, v6 = ipam.auto_assign("h", "node-a", num_v4=1, num_v6=3)
    assert len(v4) == 1 and len(set(v6)) == 3
    block = IPv6Network(f"{v6[0]}/122", strict=False)
    assert all(ip in block for ip in v6)
    key = f"assignment/ipv6/block/{str(block).replace('/', '-')}"
    assert ":" in key
    assert stored(etcd, key)["cidr"] == str(block)
    assert stored(etcd, f"host/node-a/ipv6/block/{str(block).replace('/', '-')}") is not None
    assert sorted(ipam.release_by_handle("h"), key=str) == sorted([*v4, *v6], key=str)
    assert_consistent(ipam)


# ------------------------------------------------------------------------ crash recovery


class CrashingStore(FakeKVStore):
    """A client that dies (raises) instead of performing the Nth create of a block key."""

    def __init__(self, etcd: FakeEtcd, *, crash_on_block_create: bool) -> None:
        super().__init__(etcd)
        self.crash = crash_on_block_create

    def create(self, key: str, value: bytes) -> int:
        if self.crash and "/assignment/" in key:
            raise KeyboardInterrupt("simulated crash before the block was created")
        return super().create(key, value)


def test_crash_between_pending_affinity_and_block_is_recovered(etcd: FakeEtcd) -> None:
    with pytest.raises(KeyboardInterrupt):
        IPAM(CrashingStore(etcd, crash_on_block_create=True)).auto_assign("h1", "node-a")
    host_keys = [k for k in ipam_keys(etcd) if k.startswith("host/node-a/")]
    assert len(host_keys) == 1
    assert stored(etcd, host_keys[0]) == {"state": "pending", "deleted": False}
    assert not [k for k in ipam_keys(etcd) if k.startswith("assignment/")]

    ipam = IPAM(etcd)
    ip = ipam.auto_assign("h2", "node-a")[0][0]
    assert stored(etcd, host_keys[0]) == {"state": "confirmed", "deleted": False}
    cidr = host_keys[0].rsplit("/", 1)[1].replace("-", "/")
    assert ip in IPv4Network(cidr)
    assert stored(etcd, f"assignment/ipv4/block/{cidr.replace('/', '-')}")["affinity"] == (
        "host:node-a"
    )
    assert_consistent(ipam)


def test_stale_pending_affinity_for_a_block_taken_by_another_node(etcd: FakeEtcd) -> None:
    put_pool(etcd, "default-ipv4", "10.65.0.0/26")  # one block
    with pytest.raises(KeyboardInterrupt):
        IPAM(CrashingStore(etcd, crash_on_block_create=True)).auto_assign("h1", "node-a")
    ipam = IPAM(etcd)
    ipam.auto_assign("h2", "node-b")  # node-b creates the block meanwhile
    ipam.auto_assign("h3", "node-a")  # sees its stale affinity, deletes it, borrows
    assert set(ipam.affinities()) == {"node-b"}
    assert [k for k in ipam_keys(etcd) if k.startswith("host/node-a")] == []
    assert_consistent(ipam)


# ------------------------------------------------------------------------ CAS conflicts


class RacingStore(FakeKVStore):
    """Before each of the first ``races`` transactions, lets ``interfere`` write first."""

    def __init__(self, etcd: FakeEtcd, interfere: Callable[[int], None], races: int) -> None:
        super().__init__(etcd)
        self.interfere = interfere
        self.races = races
        self.txns = 0
        self.failed = 0

    def txn(self, compares: Sequence[Compare], success: Sequence[Op]) -> bool:
        self.txns += 1
        if self.txns <= self.races:
            self.interfere(self.txns)
        ok = super().txn(compares, success)
        self.failed += not ok
        return ok


def test_cas_conflicts_are_retried_without_duplicates(etcd: FakeEtcd) -> None:
    other = IPAM(etcd)
    other.auto_assign("warmup", "node-a")  # the block exists; both writers use it
    racing_ips: list[IPv4Address] = []

    def interfere(i: int) -> None:
        racing_ips.extend(other.auto_assign(f"other-{i}", "node-a")[0])

    store = RacingStore(etcd, interfere, races=5)
    mine, _ = IPAM(store).auto_assign("mine", "node-a", num_v4=3)
    assert store.failed >= 5  # really raced
    everyone = [other.ips_by_handle("warmup")[0], *racing_ips, *mine]
    assert len(everyone) == len(set(everyone)) == 9
    assert sorted(IPAM(etcd).ips_by_handle("mine")) == sorted(mine)
    assert_consistent(other)


def test_gives_up_after_max_retries(etcd: FakeEtcd) -> None:
    other = IPAM(etcd)
    other.auto_assign("warmup", "node-a")
    store = RacingStore(etcd, lambda i: other.auto_assign(f"o{i}", "node-a") and None, races=50)
    with pytest.raises(ConcurrencyError):
        IPAM(store, max_retries=3).auto_assign("mine", "node-a")
    assert IPAM(etcd).ips_by_handle("mine") == []


def test_release_racing_with_allocation(etcd: FakeEtcd) -> None:
    ipam = IPAM(etcd)
    ips, _ = ipam.auto_assign("h", "n", num_v4=5)
    store = RacingStore(etcd, lambda i: ipam.auto_assign(f"x{i}", "n") and None, races=3)
    assert sorted(IPAM(store).release_by_handle("h")) == sorted(ips)
    assert_consistent(ipam)
    assert len(ipam.blocks()[0].allocations) == 3


def test_empty_block_release_loses_to_concurrent_allocation(etcd: FakeEtcd) -> None:
    ipam = IPAM(etcd)
    ip = ipam.auto_assign("h", "n")[0][0]
    ipam.release_ips([ip])
    store = RacingStore(etcd, lambda i: ipam.auto_assign("late", "n") and None, races=1)
    assert IPAM(store).release_empty_blocks("n") == []  # the block is in use again
    assert len(ipam.ips_by_handle("late")) == 1
    assert_consistent(ipam)


# ------------------------------------------------------------------------ robustness


def test_corrupt_block_is_never_allocated_from(etcd: FakeEtcd) -> None:
    put_pool(etcd, "default-ipv4", "10.65.0.0/25")
    etcd.put(IPAM_ROOT + "assignment/ipv4/block/10.65.0.0-26", b'{"cidr": "10.65.0.0/26"}')
    etcd.put(IPAM_ROOT + "assignment/ipv4/block/10.65.0.64-26", b"not json")
    ipam = IPAM(etcd)
    with pytest.raises(PoolExhaustedError):
        ipam.auto_assign("h", "n")
    assert len(ipam.consistency_problems()) == 2


def test_invalid_arguments(ipam: IPAM) -> None:
    with pytest.raises(IPAMError):
        ipam.auto_assign("a/b", "n")
    with pytest.raises(IPAMError):
        ipam.auto_assign("h", "")
    with pytest.raises(IPAMError):
        ipam.auto_assign("h", "n", num_v4=-1)


def test_read_side(ipam: IPAM) -> None:
    ips, _ = ipam.auto_assign("h", "n", num_v4=2, attrs={"namespace": "ns", "pod": "p"})
    (info,) = ipam.blocks()
    assert info.allocated == 2 and info.size == 64 and info.affinity_node == "n"
    assert [a.ip for a in info.allocations] == sorted(ips)
    assert all(a.attrs == {"namespace": "ns", "pod": "p"} for a in info.allocations)
    assert ipam.affinities("n") == {"n": [info.cidr]} and ipam.affinities("m") == {}
    (usage,) = ipam.pool_usage()
    assert (usage.name, usage.total, usage.in_use, usage.blocks) == ("default-ipv4", 256, 2, 1)
    assert ipam.who_owns(ip_address("10.65.1.1")) is None
