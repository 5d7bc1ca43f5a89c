"""IP address management with per-node address blocks in etcd, Calico's layout and semantics.

Role: the library behind the CNI IPAM plugin and ``tabbyctl ipam``. Inputs: a ``KVStore``; IP
pools (``IPPool`` resources, read with the codec), node labels (``Node`` resources) and the IPAM
config at ``/calico/ipam/v2/config``. Outputs: addresses (``ipaddress`` types) and the records of
``datastore.ipam_block`` (blocks, affinities, handles) written at Calico's keys.

Allocation (``auto_assign``, per IP version), as Calico's ``autoAssign``:
1. from blocks affine to the node (in pools it may use: enabled, ``nodeSelector`` matching the
   node's labels, and within ``pools_v4``/``pools_v6`` when given);
2. when they are full: claim a new block (``blockSize`` of the pool) from such a pool -- write the
   affinity ``pending``, create the block with a CAS create (``affinity: host:<node>``), then
   confirm the affinity. A crash in between leaves a ``pending`` affinity that the node's next
   allocation completes (block missing: create it; block ours: confirm; block someone else's:
   delete the stale affinity);
3. only when no block can be claimed (pools exhausted, ``autoAllocateBlocks`` off or
   ``maxBlocksPerHost`` reached) and strict affinity is off: borrow a free address from another
   node's (or an unaffine) block.

Invariants:
* An address is handed out at most once: every block change is ONE etcd transaction guarded by
  the block's ``mod_revision`` (creation: "must not exist"), so of two writers that read the
  same block version only one succeeds; the loser re-reads and retries (bounded by
  ``max_retries`` with jittered back-off, then ``ConcurrencyError``).
* Handle counts always match the blocks: the handle record is updated (or deleted when its count
  reaches 0) in the same transaction as the block, guarded by its own ``mod_revision``.
  (Calico writes the handle and the block in two steps; tabby does it atomically.)
* Releasing an empty block deletes the block and the node's affinity in one transaction guarded
  by both revisions, so an allocation racing with it either lands first (the release is then
  refused) or fails its CAS and retries elsewhere.
* Disabled pools, and pools whose selector does not match the node, get no new allocations;
  what is already allocated there stays until released.
* A block that fails validation (``IPAMRecordError``) is never allocated from or rewritten; it is
  logged and skipped (and reported by ``consistency_problems``).
* ``auto_assign`` is all-or-nothing: when it raises, the addresses it took in this call are
  released again (best effort; the handle still finds them if that release fails).
* Datastore failures (``UnavailableError`` etc.) propagate unchanged: the outcome of the write
  that raised is unknown, and the caller cleans up by handle, as with Calico.
Thread safety: an ``IPAM`` keeps no state besides its store; it is as thread-safe as the store.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import cast

from datastore.codec import decode
from datastore.errors import ValidationError
from datastore.ipam_block import (
    AFFINITY_CONFIRMED,
    AFFINITY_PENDING,
    CONFIG_KEY,
    HANDLE_PREFIX,
    Block,
    Handle,
    IPAMRecordError,
    affinity_json,
    affinity_key,
    affinity_prefix,
    block_key,
    block_prefix,
    cidr_text,
    config_from_json,
    config_to_json,
    handle_key,
    parse_affinity_key,
    parse_affinity_state,
    parse_block_key,
)
from datastore.keys import kind_prefix, resource_key
from datastore.kinds import IP_POOL, NODE
from datastore.kv import (
    MAX_TXN_OPS,
    AlreadyExistsError,
    Compare,
    ConflictError,
    DeleteOp,
    KVStore,
    Op,
    PutOp,
)
from datastore.model import IPPoolSpec
from policy.selector import Selector

__all__ = [
    "IPAM",
    "AddressInUseError",
    "Allocation",
    "BlockInfo",
    "ConcurrencyError",
    "IPAMConfig",
    "IPAMError",
    "NoMatchingPoolError",
    "PoolExhaustedError",
    "PoolUsage",
]

log = logging.getLogger(__name__)

IPAddr = IPv4Address | IPv6Address
IPNet = IPv4Network | IPv6Network

# Handles per release transaction: block + handles must fit in MAX_TXN_OPS compares/ops.
_MAX_HANDLES_PER_TXN = MAX_TXN_OPS - 8
_BACKOFF_CAP_S = 0.05


# --------------------------------------------------------------------------- errors


class IPAMError(Exception):
    """Base of every IPAM failure (datastore failures are ``DatastoreError`` instead)."""


class PoolExhaustedError(IPAMError):
    """Not enough free addresses in the pools this node may use."""


class NoMatchingPoolError(IPAMError):
    """No enabled pool applies (none for the IP version, selector mismatch, unknown pool)."""


class AddressInUseError(IPAMError):
    """``assign_ip`` asked for an address that is already allocated."""


class ConcurrencyError(IPAMError):
    """Gave up after ``max_retries`` compare-and-swap conflicts."""


class AffinityError(IPAMError):
    """Strict affinity forbids using a block that is affine to another node."""


class CorruptRecordError(IPAMError):
    """A stored IPAM record is malformed; the message names the key and field."""


# --------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class IPAMConfig:
    strict_affinity: bool = False
    auto_allocate_blocks: bool = True
    max_blocks_per_host: int = 0


@dataclass(frozen=True, slots=True)
class Allocation:
    ip: IPv4Address | IPv6Address
    block: IPv4Network | IPv6Network
    handle_id: str | None
    attrs: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class BlockInfo:
    cidr: IPv4Network | IPv6Network
    affinity_node: str | None
    allocated: int
    size: int
    allocations: tuple[Allocation, ...]


@dataclass(frozen=True, slots=True)
class PoolUsage:
    name: str
    cidr: IPv4Network | IPv6Network
    disabled: bool
    total: int
    in_use: int
    blocks: int


@dataclass(frozen=True, slots=True)
class _Pool:
    name: str
    cidr: IPNet
    block_size: int
    disabled: bool
    node_selector: Selector | None

    def block_for(self, ip: IPAddr) -> IPNet:
        return ipaddress.ip_network((int(ip), self.block_size), strict=False)

    def contains_block(self, cidr: IPNet) -> bool:
        return cidr.version == self.cidr.version and cidr.subnet_of(self.cidr)  # type: ignore[arg-type]


@dataclass(slots=True)
class _Read:
    """A block as read: the decoded block (None if absent) and its mod revision (0 if absent)."""

    cidr: IPNet
    block: Block | None
    revision: int


class _ConflictError(Exception):
    """A CAS write lost a race; re-read and retry."""


@dataclass(slots=True)
class _Retry:
    """Bounded retries with jittered, growing back-off."""

    limit: int
    what: str
    count: int = 0

    def conflict(self) -> None:
        self.count += 1
        if self.count > self.limit:
            raise ConcurrencyError(
                f"{self.what}: gave up after {self.limit} concurrent-update conflicts"
            )
        time.sleep(random.uniform(0, min(_BACKOFF_CAP_S, 0.0005 * (2 ** min(self.count, 7)))))


@dataclass(slots=True)
class _AssignCtx:
    node: str
    version: int
    pools: list[_Pool]
    config: IPAMConfig
    handle_id: str
    attrs: Mapping[str, str]
    got: list[IPAddr] = field(default_factory=list)


def _node_hash(node: str) -> int:
    return int.from_bytes(hashlib.sha256(node.encode()).digest()[:8], "big")


def _check_name(what: str, value: str) -> str:
    if not isinstance(value, str) or not value or "/" in value:
        raise IPAMError(f"{what} must be a non-empty string without '/', got {value!r}")
    return value


# --------------------------------------------------------------------------- the client


class IPAM:
    """Calico-compatible IPAM over a ``KVStore`` (see the module docstring)."""

    def __init__(self, store: KVStore, *, max_retries: int = 100) -> None:
        self._store = store
        self._max_retries = max_retries

    # ================================================================ config

    def get_config(self) -> IPAMConfig:
        kv = self._store.get(CONFIG_KEY)
        if kv is None:
            return IPAMConfig()
        try:
            strict, auto, max_blocks = config_from_json(kv.value)
        except IPAMRecordError as exc:
            raise CorruptRecordError(str(exc)) from None
        return IPAMConfig(strict, auto, max_blocks)

    def set_config(self, cfg: IPAMConfig) -> None:
        if cfg.max_blocks_per_host < 0:
            raise IPAMError("max_blocks_per_host must be >= 0")
        self._store.put(
            CONFIG_KEY,
            config_to_json(cfg.strict_affinity, cfg.auto_allocate_blocks, cfg.max_blocks_per_host),
        )
        log.info("ipam.set_config %s", cfg)

    # ================================================================ reads of inputs

    def _pools(self) -> list[_Pool]:
        kvs, _ = self._store.list(kind_prefix(IP_POOL))
        pools: list[_Pool] = []
        for kv in kvs:
            try:
                res = decode(kv.key, kv.value, kv.mod_revision)
            except ValidationError as exc:
                log.warning("ipam.bad_pool key=%s error=%s", kv.key, exc)
                continue
            spec = res.spec
            if not isinstance(spec, IPPoolSpec) or spec.cidr is None:
                continue
            block_size = spec.block_size or (122 if spec.cidr.version == 6 else 26)
            if block_size < spec.cidr.prefixlen:
                if not spec.disabled:
                    log.warning("ipam.bad_pool key=%s error=block smaller than pool", kv.key)
                continue
            pools.append(
                _Pool(res.metadata.name, spec.cidr, block_size, spec.disabled, spec.node_selector)
            )
        return pools

    def _node_labels(self, node: str) -> Mapping[str, str]:
        kv = self._store.get(resource_key(NODE, node))
        if kv is None:
            return {}
        try:
            return decode(kv.key, kv.value, kv.mod_revision).metadata.labels
        except ValidationError as exc:
            log.warning("ipam.bad_node node=%s error=%s", node, exc)
            return {}

    def _eligible_pools(
        self, all_pools: list[_Pool], version: int, node: str, requested: Sequence[str]
    ) -> list[_Pool]:
        """Pools of ``version`` this node may get new addresses from (Calico's determinePools)."""
        enabled = [p for p in all_pools if p.cidr.version == version and not p.disabled]
        if requested:
            chosen: list[_Pool] = []
            for want in requested:
                match = self._find_requested(enabled, want)
                if match is None:
                    raise NoMatchingPoolError(
                        f"IPPool {want!r} (ipv{version}) does not exist or is disabled"
                    )
                if match not in chosen:
                    chosen.append(match)
            enabled = chosen
        labels = self._node_labels(node)
        matching = [
            p for p in enabled if p.node_selector is None or p.node_selector.evaluate(labels)
        ]
        if not matching:
            raise NoMatchingPoolError(
                f"no enabled IPv{version} IPPool matches node {node!r}"
                + (f" among {list(requested)}" if requested else "")
            )
        return matching

    @staticmethod
    def _find_requested(pools: list[_Pool], want: str) -> _Pool | None:
        try:
            net: IPNet | None = ipaddress.ip_network(want, strict=False)
        except ValueError:
            net = None
        for p in pools:
            if p.name == want or (net is not None and p.cidr == net):
                return p
        return None

    # ================================================================ block I/O

    def _read_block(self, cidr: IPNet) -> _Read:
        key = block_key(cidr)
        kv = self._store.get(key)
        if kv is None:
            return _Read(cidr, None, 0)
        try:
            return _Read(cidr, Block.from_json(kv.value, key), kv.mod_revision)
        except IPAMRecordError as exc:
            raise CorruptRecordError(str(exc)) from None

    def _write_block(
        self,
        read: _Read,
        handle_deltas: Mapping[str, int],
        *,
        extra_compares: Sequence[Compare] = (),
        extra_ops: Sequence[Op] = (),
    ) -> None:
        """One transaction: the block (CAS on its revision) plus every touched handle."""
        assert read.block is not None
        compares = [Compare(block_key(read.cidr), read.revision), *extra_compares]
        read.block.bump()
        ops: list[Op] = [PutOp(block_key(read.cidr), read.block.to_json()), *extra_ops]
        for handle_id, delta in handle_deltas.items():
            hkey = handle_key(handle_id)
            kv = self._store.get(hkey)
            if kv is None:
                handle = Handle()
            else:
                try:
                    handle = Handle.from_json(kv.value, hkey)
                except IPAMRecordError as exc:
                    log.warning("ipam.bad_handle key=%s error=%s (rewritten)", hkey, exc)
                    handle = Handle()
            compares.append(Compare(hkey, kv.mod_revision if kv else 0))
            handle.add(read.cidr, delta)
            ops.append(PutOp(hkey, handle.to_json()) if handle.total else DeleteOp(hkey))
        if not self._store.txn(compares, ops):
            raise _ConflictError(block_key(read.cidr))

    # ================================================================ claiming blocks

    def _claim(self, node: str, cidr: IPNet, strict: bool) -> bool:
        """Make ``cidr`` this node's block: pending affinity -> CAS-create block -> confirm.

        True if the block is now ours (created, or found already ours); False if another node
        owns it (our pending affinity is removed again). Raises ``_ConflictError`` on a lost race.
        """
        akey = affinity_key(node, cidr)
        # AlreadyExists: ours already (pending from an earlier attempt or crash, or confirmed).
        with contextlib.suppress(AlreadyExistsError):
            self._store.create(akey, affinity_json(AFFINITY_PENDING))
        try:
            self._store.create(block_key(cidr), Block.new(cidr, node, strict).to_json())
            log.info("ipam.claim node=%s block=%s", node, cidr)
        except AlreadyExistsError:
            read = self._read_block(cidr)
            if read.block is None:
                raise _ConflictError(block_key(cidr)) from None  # deleted meanwhile: start again
            if read.block.host != node:
                self._delete_affinity_if_unchanged(akey)
                log.info("ipam.claim_lost node=%s block=%s owner=%s", node, cidr, read.block.host)
                return False
        self._confirm(akey)
        return True

    def _confirm(self, akey: str) -> None:
        kv = self._store.get(akey)
        if kv is None:
            raise _ConflictError(akey)  # released meanwhile
        if parse_affinity_state(kv.value, akey) == AFFINITY_CONFIRMED:
            return
        try:
            self._store.update(akey, affinity_json(AFFINITY_CONFIRMED), kv.mod_revision)
        except ConflictError:
            raise _ConflictError(akey) from None

    def _delete_affinity_if_unchanged(self, akey: str) -> None:
        kv = self._store.get(akey)
        if kv is None:
            return
        try:
            self._store.delete(akey, kv.mod_revision)
        except ConflictError:
            raise _ConflictError(akey) from None

    # ================================================================ auto_assign

    def auto_assign(
        self,
        handle_id: str,
        node: str,
        *,
        num_v4: int = 1,
        num_v6: int = 0,
        pools_v4: Sequence[str] = (),
        pools_v6: Sequence[str] = (),
        attrs: Mapping[str, str] | None = None,
    ) -> tuple[list[IPv4Address], list[IPv6Address]]:
        """Allocate ``num_v4`` + ``num_v6`` addresses for ``handle_id`` on ``node``.

        Raises ``NoMatchingPoolError`` / ``PoolExhaustedError`` (nothing is kept allocated then).
        """
        _check_name("handle id", handle_id)
        _check_name("node", node)
        if num_v4 < 0 or num_v6 < 0:
            raise IPAMError("num_v4 and num_v6 must be >= 0")
        secondary = dict(attrs or {})
        started = time.monotonic()
        all_pools = self._pools() if (num_v4 or num_v6) else []
        config = self.get_config() if (num_v4 or num_v6) else IPAMConfig()
        done: list[IPAddr] = []
        try:
            result: list[list[IPAddr]] = []
            for version, num, requested in ((4, num_v4, pools_v4), (6, num_v6, pools_v6)):
                if num == 0:
                    result.append([])
                    continue
                pools = self._eligible_pools(all_pools, version, node, requested)
                ctx = _AssignCtx(node, version, pools, config, handle_id, secondary)
                try:
                    self._assign_version(ctx, num)
                finally:
                    done.extend(ctx.got)
                result.append(ctx.got)
        except BaseException:
            if done:
                self._rollback(done)
            raise
        log.info(
            "ipam.auto_assign handle=%s node=%s v4=%d v6=%d ms=%.1f",
            handle_id,
            node,
            len(result[0]),
            len(result[1]),
            (time.monotonic() - started) * 1000,
        )
        return (
            [cast(IPv4Address, ip) for ip in result[0]],
            [cast(IPv6Address, ip) for ip in result[1]],
        )

    def _rollback(self, ips: list[IPAddr]) -> None:
        try:
            self.release_ips(ips)
        except Exception:
            log.exception("ipam.rollback_failed ips=%s", [str(i) for i in ips])

    def _assign_version(self, ctx: _AssignCtx, num: int) -> None:
        retry = _Retry(self._max_retries, f"auto_assign handle={ctx.handle_id} node={ctx.node}")
        while len(ctx.got) < num:
            try:
                if self._step(ctx, num - len(ctx.got)):
                    continue
            except _ConflictError:
                retry.conflict()
                continue
            raise PoolExhaustedError(
                f"no free IPv{ctx.version} address for node {ctx.node!r} in IPPool(s) "
                f"{', '.join(p.name for p in ctx.pools)}: {len(ctx.got)} of {num} allocated"
            )

    def _step(self, ctx: _AssignCtx, want: int) -> bool:
        """One unit of progress (an allocation or a block claim); False when nothing is left."""
        affine = self._affine_blocks(ctx)
        for read in affine:
            if read.block is not None and read.block.free:
                self._allocate_from(ctx, read, want)
                return True
        cfg = ctx.config
        if cfg.auto_allocate_blocks and (
            cfg.max_blocks_per_host <= 0 or len(affine) < cfg.max_blocks_per_host
        ):
            cidr = self._find_free_block(ctx)
            if cidr is not None:
                # Another allocator on this node may have claimed a block since we listed our
                # affinities (their claim shows as an affinity of ours): use it rather than
                # claiming a second block.
                if self._affinity_count(ctx) != len(affine):
                    raise _ConflictError(f"affinities of {ctx.node} changed")
                if not self._claim(ctx.node, cidr, cfg.strict_affinity):
                    raise _ConflictError(block_key(cidr))  # another node won it: look again
                return True
        if not cfg.strict_affinity:
            borrowed = self._find_borrowable(ctx)
            if borrowed is not None:
                log.info(
                    "ipam.borrow node=%s block=%s owner=%s",
                    ctx.node,
                    borrowed.cidr,
                    borrowed.block and borrowed.block.host,
                )
                self._allocate_from(ctx, borrowed, want)
                return True
        return False

    def _affine_blocks(self, ctx: _AssignCtx) -> list[_Read]:
        """This node's blocks in the eligible pools, repairing half-done claims on the way.

        Raises ``_ConflictError`` after a repair (the caller re-reads)."""
        kvs, _ = self._store.list(affinity_prefix(ctx.node, ctx.version))
        out: list[_Read] = []
        for kv in kvs:
            parsed = parse_affinity_key(kv.key)
            if parsed is None:
                continue
            cidr = parsed[1]
            if not any(p.contains_block(cidr) for p in ctx.pools):
                continue
            try:
                state = parse_affinity_state(kv.value, kv.key)
                read = self._read_block(cidr)
            except (IPAMRecordError, CorruptRecordError) as exc:
                log.warning("ipam.skip_block key=%s error=%s", kv.key, exc)
                continue
            if read.block is None:
                # A claim that stopped after the pending affinity (crash): finish it.
                log.info("ipam.recover_claim node=%s block=%s state=%s", ctx.node, cidr, state)
                self._claim(ctx.node, cidr, ctx.config.strict_affinity)
                raise _ConflictError(kv.key)
            if read.block.host != ctx.node:
                log.info(
                    "ipam.stale_affinity node=%s block=%s owner=%s", ctx.node, cidr, read.block.host
                )
                with contextlib.suppress(ConflictError):
                    self._store.delete(kv.key, kv.mod_revision)
                raise _ConflictError(kv.key)
            if state != AFFINITY_CONFIRMED:
                self._confirm(kv.key)
            out.append(read)
        return out

    def _affinity_count(self, ctx: _AssignCtx) -> int:
        """How many affinities (pending or confirmed) the node has in the eligible pools."""
        kvs, _ = self._store.list(affinity_prefix(ctx.node, ctx.version))
        count = 0
        for kv in kvs:
            parsed = parse_affinity_key(kv.key)
            if parsed is not None and any(p.contains_block(parsed[1]) for p in ctx.pools):
                count += 1
        return count

    def _allocate_from(self, ctx: _AssignCtx, read: _Read, want: int) -> None:
        assert read.block is not None
        ordinals = read.block.auto_assign(want, ctx.handle_id, ctx.attrs)
        if not ordinals:
            raise _ConflictError(block_key(read.cidr))
        self._write_block(read, {ctx.handle_id: len(ordinals)})
        ctx.got.extend(read.block.ip(o) for o in ordinals)

    def _list_blocks(self, version: int | None = None) -> tuple[list[_Read], list[str]]:
        """Every block (decoded) and the keys of blocks that failed validation."""
        kvs, _ = self._store.list(block_prefix(version))
        reads: list[_Read] = []
        bad: list[str] = []
        for kv in kvs:
            cidr = parse_block_key(kv.key)
            if cidr is None:
                continue
            try:
                block = Block.from_json(kv.value, kv.key)
            except IPAMRecordError as exc:
                log.warning("ipam.bad_block key=%s error=%s", kv.key, exc)
                bad.append(kv.key)
                # A corrupt block still occupies its range: never claim over it.
                reads.append(_Read(cidr, None, kv.mod_revision))
                continue
            if block.cidr != cidr:
                log.warning("ipam.bad_block key=%s error=cidr %s differs", kv.key, block.cidr)
                bad.append(kv.key)
                reads.append(_Read(cidr, None, kv.mod_revision))
                continue
            reads.append(_Read(cidr, block, kv.mod_revision))
        return reads, bad

    def _find_free_block(self, ctx: _AssignCtx) -> IPNet | None:
        """A block-sized range of an eligible pool with no block yet (node-seeded order)."""
        existing, _ = self._list_blocks(ctx.version)
        taken = {r.cidr for r in existing}
        for pool in ctx.pools:
            same = sum(
                1 for c in taken if c.prefixlen == pool.block_size and pool.contains_block(c)
            )
            n = 1 << (pool.block_size - pool.cidr.prefixlen)
            if same >= n:
                continue
            odd = [c for c in taken if c.prefixlen != pool.block_size and c.overlaps(pool.cidr)]
            step = 1 << (pool.cidr.max_prefixlen - pool.block_size)
            base = int(pool.cidr.network_address)
            start = _node_hash(ctx.node) % n
            for i in range(n):
                idx = (start + i) % n
                cand = ipaddress.ip_network((base + idx * step, pool.block_size))
                if cand in taken or any(cand.overlaps(c) for c in odd):
                    continue
                return cand
        return None

    def _find_borrowable(self, ctx: _AssignCtx) -> _Read | None:
        existing, _ = self._list_blocks(ctx.version)
        cands = [
            r
            for r in existing
            if r.block is not None
            and r.block.host != ctx.node
            and r.block.free
            and any(p.contains_block(r.cidr) for p in ctx.pools)
        ]
        if not cands:
            return None
        return cands[_node_hash(ctx.node) % len(cands)]

    # ================================================================ assign_ip

    def _pool_for_ip(self, pools: Iterable[_Pool], ip: IPAddr) -> _Pool | None:
        for p in pools:
            if ip.version == p.cidr.version and ip in p.cidr:
                return p
        return None

    def assign_ip(
        self,
        ip: IPv4Address | IPv6Address,
        handle_id: str,
        node: str,
        attrs: Mapping[str, str] | None = None,
    ) -> None:
        """Allocate exactly ``ip`` (claiming its block for ``node`` if it has none yet)."""
        _check_name("handle id", handle_id)
        _check_name("node", node)
        pool = self._pool_for_ip([p for p in self._pools() if not p.disabled], ip)
        if pool is None:
            raise NoMatchingPoolError(f"{ip} is not in any enabled IPPool")
        config = self.get_config()
        cidr = pool.block_for(ip)
        retry = _Retry(self._max_retries, f"assign_ip ip={ip} handle={handle_id}")
        while True:
            try:
                read = self._read_block(cidr)
                if read.block is None:
                    self._claim(node, cidr, config.strict_affinity)
                    continue
                block = read.block
                if config.strict_affinity and block.host != node:
                    raise AffinityError(
                        f"{ip}: block {cidr} is affine to {block.host!r}, not {node!r} "
                        "(strict affinity)"
                    )
                ordinal = block.ordinal(ip)
                assert ordinal is not None
                if not block.assign(ordinal, handle_id, dict(attrs or {})):
                    owner = block.attribute_of(ordinal)
                    raise AddressInUseError(
                        f"{ip} is already allocated (handle {owner and owner.handle_id!r})"
                    )
                self._write_block(read, {handle_id: 1})
                log.info("ipam.assign_ip ip=%s handle=%s node=%s", ip, handle_id, node)
                return
            except _ConflictError:
                retry.conflict()

    # ================================================================ release

    def _block_locator(self) -> Callable[[IPAddr], IPNet | None]:
        """ip -> CIDR of the block that holds it: from the pool containing it (any pool, also a
        disabled one), else by scanning the stored blocks (listed once, lazily)."""
        pools = self._pools()
        stored: dict[int, list[IPNet]] = {}

        def locate(ip: IPAddr) -> IPNet | None:
            pool = self._pool_for_ip(pools, ip)
            if pool is not None:
                return pool.block_for(ip)
            if ip.version not in stored:
                stored[ip.version] = [r.cidr for r in self._list_blocks(ip.version)[0]]
            for c in stored[ip.version]:
                if ip in c:
                    return c
            return None

        return locate

    def release_ips(
        self, ips: Iterable[IPv4Address | IPv6Address]
    ) -> list[IPv4Address | IPv6Address]:
        """Free the given addresses; returns those that were allocated (and are now free)."""
        wanted = list(dict.fromkeys(ips))
        if not wanted:
            return []
        locate = self._block_locator()
        by_block: dict[IPNet, list[IPAddr]] = {}
        for ip in wanted:
            cidr = locate(ip)
            if cidr is not None:
                by_block.setdefault(cidr, []).append(ip)
        freed: list[IPAddr] = []
        for cidr, block_ips in by_block.items():
            freed.extend(self._release_in_block(cidr, block_ips))
        log.info("ipam.release_ips asked=%d freed=%d", len(wanted), len(freed))
        order = {ip: i for i, ip in enumerate(wanted)}
        return sorted(freed, key=lambda ip: order[ip])

    def _release_in_block(self, cidr: IPNet, ips: list[IPAddr]) -> list[IPAddr]:
        freed: list[IPAddr] = []
        pending = list(ips)
        retry = _Retry(self._max_retries, f"release_ips block={cidr}")
        while pending:
            try:
                read = self._read_block(cidr)
                block = read.block
                if block is None:
                    return freed
                # Take a chunk whose distinct handles fit in one transaction.
                chunk: list[int] = []
                handles: set[str | None] = set()
                taken = 0
                for ip in pending:
                    o = block.ordinal(ip)
                    taken += 1
                    if o is None:
                        continue
                    attr = block.attribute_of(o)
                    if attr is None:
                        continue
                    if attr.handle_id not in handles and len(handles) >= _MAX_HANDLES_PER_TXN:
                        taken -= 1
                        break
                    handles.add(attr.handle_id)
                    chunk.append(o)
                if chunk:
                    counts = block.release(chunk)
                    self._write_block(read, {h: -n for h, n in counts.items() if h is not None})
                    freed.extend(block.ip(o) for o in chunk)
                del pending[:taken]
            except _ConflictError:
                retry.conflict()
        return freed

    def release_by_handle(self, handle_id: str) -> list[IPv4Address | IPv6Address]:
        """Free every address of ``handle_id``; unknown handle -> ``[]`` (idempotent)."""
        _check_name("handle id", handle_id)
        hkey = handle_key(handle_id)
        freed: list[IPAddr] = []
        retry = _Retry(self._max_retries, f"release_by_handle handle={handle_id}")
        while True:
            try:
                kv = self._store.get(hkey)
                if kv is None:
                    break
                try:
                    handle = Handle.from_json(kv.value, hkey)
                except IPAMRecordError as exc:
                    raise CorruptRecordError(str(exc)) from None
                if not handle.block:
                    if not self._store.txn([Compare(hkey, kv.mod_revision)], [DeleteOp(hkey)]):
                        raise _ConflictError(hkey)
                    break
                cidr_text_ = next(iter(handle.block))
                try:
                    cidr = ipaddress.ip_network(cidr_text_, strict=True)
                except ValueError:
                    raise CorruptRecordError(
                        f"handle {hkey}: field block: {cidr_text_!r} is not a CIDR"
                    ) from None
                read = self._read_block(cidr)
                block = read.block
                ordinals = block.ordinals_for_handle(handle_id) if block is not None else []
                handle.block.pop(cidr_text_)
                hop: Op = PutOp(hkey, handle.to_json()) if handle.block else DeleteOp(hkey)
                if block is None or not ordinals:
                    # The handle counted addresses the block does not hold: fix the handle only.
                    ok = self._store.txn(
                        [Compare(hkey, kv.mod_revision), Compare(block_key(cidr), read.revision)],
                        [hop],
                    )
                    if not ok:
                        raise _ConflictError(hkey)
                    continue
                block.release(ordinals)
                self._write_block(
                    read, {}, extra_compares=[Compare(hkey, kv.mod_revision)], extra_ops=[hop]
                )
                freed.extend(block.ip(o) for o in ordinals)
            except _ConflictError:
                retry.conflict()
        log.info("ipam.release_by_handle handle=%s freed=%d", handle_id, len(freed))
        return freed

    def ips_by_handle(self, handle_id: str) -> list[IPv4Address | IPv6Address]:
        _check_name("handle id", handle_id)
        hkey = handle_key(handle_id)
        kv = self._store.get(hkey)
        if kv is None:
            return []
        try:
            handle = Handle.from_json(kv.value, hkey)
        except IPAMRecordError as exc:
            raise CorruptRecordError(str(exc)) from None
        out: list[IPAddr] = []
        for text in handle.block:
            try:
                read = self._read_block(ipaddress.ip_network(text, strict=True))
            except ValueError:
                continue
            if read.block is not None:
                out.extend(read.block.ip(o) for o in read.block.ordinals_for_handle(handle_id))
        return sorted(out, key=lambda ip: (ip.version, int(ip)))

    # ================================================================ affinities

    def _release_affinities(self, node: str, *, keep_nonempty: bool) -> list[IPNet]:
        """Drop the node's affinities: empty blocks are deleted with their affinity (one txn);
        non-empty ones are kept (``keep_nonempty``) or made unaffine (affinity -> null)."""
        _check_name("node", node)
        released: list[IPNet] = []
        retry = _Retry(self._max_retries, f"release affinities node={node}")
        done: set[str] = set()
        while True:
            try:
                kvs, _ = self._store.list(affinity_prefix(node))
                progress = False
                for kv in kvs:
                    parsed = parse_affinity_key(kv.key)
                    if parsed is None or kv.key in done:
                        continue
                    cidr = parsed[1]
                    try:
                        read = self._read_block(cidr)
                    except CorruptRecordError as exc:
                        log.warning("ipam.skip_block key=%s error=%s", kv.key, exc)
                        done.add(kv.key)
                        continue
                    akey_cmp = Compare(kv.key, kv.mod_revision)
                    block = read.block
                    if block is None or block.host != node:
                        # Stale (or half-claimed) affinity: nothing to keep.
                        if not self._store.txn(
                            [akey_cmp, Compare(block_key(cidr), read.revision)],
                            [DeleteOp(kv.key)],
                        ):
                            raise _ConflictError(kv.key)
                        progress = True
                        continue
                    if block.is_empty():
                        ok = self._store.txn(
                            [akey_cmp, Compare(block_key(cidr), read.revision)],
                            [DeleteOp(kv.key), DeleteOp(block_key(cidr))],
                        )
                        if not ok:
                            raise _ConflictError(kv.key)
                        log.info("ipam.release_block node=%s block=%s", node, cidr)
                        released.append(cidr)
                        progress = True
                    elif keep_nonempty:
                        done.add(kv.key)
                    else:
                        block.affinity = None
                        self._write_block(
                            read, {}, extra_compares=[akey_cmp], extra_ops=[DeleteOp(kv.key)]
                        )
                        log.info("ipam.unaffine_block node=%s block=%s", node, cidr)
                        progress = True
                if not progress:
                    break
            except _ConflictError:
                retry.conflict()
        return sorted(released, key=lambda c: (c.version, int(c.network_address)))

    def release_empty_blocks(self, node: str) -> list[IPv4Network | IPv6Network]:
        """Delete the node's empty blocks and their affinities; returns the deleted CIDRs."""
        return self._release_affinities(node, keep_nonempty=True)

    def release_node_affinities(self, node: str) -> None:
        """For node removal: delete its empty blocks, make the others unaffine (as Calico)."""
        self._release_affinities(node, keep_nonempty=False)

    def affinities(self, node: str | None = None) -> dict[str, list[IPv4Network | IPv6Network]]:
        """Confirmed affinities per node (pending ones are claims in flight, not shown)."""
        kvs, _ = self._store.list(affinity_prefix(node))
        out: dict[str, list[IPNet]] = {}
        for kv in kvs:
            parsed = parse_affinity_key(kv.key)
            if parsed is None:
                continue
            try:
                state = parse_affinity_state(kv.value, kv.key)
            except IPAMRecordError as exc:
                log.warning("ipam.bad_affinity key=%s error=%s", kv.key, exc)
                continue
            if state == AFFINITY_CONFIRMED:
                out.setdefault(parsed[0], []).append(parsed[1])
        for cidrs in out.values():
            cidrs.sort(key=lambda c: (c.version, int(c.network_address)))
        return out

    # ================================================================ read side

    @staticmethod
    def _allocations(block: Block) -> Iterator[Allocation]:
        for o in block.allocated_ordinals():
            attr = block.attribute_of(o)
            assert attr is not None
            yield Allocation(block.ip(o), block.cidr, attr.handle_id, dict(attr.secondary))

    def blocks(self) -> list[BlockInfo]:
        reads, _ = self._list_blocks()
        out = [
            BlockInfo(
                r.cidr,
                r.block.host,
                r.block.allocated,
                r.block.size,
                tuple(self._allocations(r.block)),
            )
            for r in reads
            if r.block is not None
        ]
        return sorted(out, key=lambda b: (b.cidr.version, int(b.cidr.network_address)))

    def who_owns(self, ip: IPv4Address | IPv6Address) -> Allocation | None:
        cidr = self._block_locator()(ip)
        if cidr is None:
            return None
        block = self._read_block(cidr).block
        if block is None:
            return None
        o = block.ordinal(ip)
        attr = None if o is None else block.attribute_of(o)
        if attr is None:
            return None
        return Allocation(ip, cidr, attr.handle_id, dict(attr.secondary))

    def pool_usage(self) -> list[PoolUsage]:
        pools = self._pools()
        reads, _ = self._list_blocks()
        out: list[PoolUsage] = []
        for p in sorted(pools, key=lambda p: p.name):
            inside = [r for r in reads if p.contains_block(r.cidr)]
            in_use = sum(r.block.allocated for r in inside if r.block is not None)
            out.append(
                PoolUsage(p.name, p.cidr, p.disabled, p.cidr.num_addresses, in_use, len(inside))
            )
        return out

    def consistency_problems(self) -> list[str]:
        """Cross-checks for ``tabbyctl ipam check``: blocks vs handles vs affinities."""
        problems: list[str] = []
        reads, bad = self._list_blocks()
        problems.extend(f"block {k}: malformed" for k in bad)
        counted: dict[str, dict[str, int]] = {}
        for r in reads:
            if r.block is None:
                continue
            for a in self._allocations(r.block):
                if a.handle_id is None:
                    continue
                per = counted.setdefault(a.handle_id, {})
                per[cidr_text(r.cidr)] = per.get(cidr_text(r.cidr), 0) + 1
        kvs, _ = self._store.list(HANDLE_PREFIX)
        stored: dict[str, dict[str, int]] = {}
        for kv in kvs:
            hid = kv.key[len(HANDLE_PREFIX) :]
            try:
                stored[hid] = {
                    k: v for k, v in Handle.from_json(kv.value, kv.key).block.items() if v
                }
            except IPAMRecordError as exc:
                problems.append(str(exc))
        for hid in sorted(set(counted) | set(stored)):
            if counted.get(hid, {}) != stored.get(hid, {}):
                problems.append(
                    f"handle {hid}: stored counts {stored.get(hid, {})} != blocks "
                    f"{counted.get(hid, {})}"
                )
        by_cidr = {r.cidr: r.block for r in reads}
        affinities = self.affinities()
        for node, cidrs in affinities.items():
            for c in cidrs:
                b = by_cidr.get(c)
                if b is None or b.host != node:
                    problems.append(f"affinity {affinity_key(node, c)}: block missing or not ours")
        for c, b in by_cidr.items():
            if b is not None and b.host is not None and c not in affinities.get(b.host, []):
                problems.append(f"block {block_key(c)}: affine to {b.host} without affinity")
        return problems
