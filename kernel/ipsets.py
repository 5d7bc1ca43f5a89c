"""Desired-state ipset driver, its kernel seam and a stateful fake.

Role: felix describes the sets it wants (``IPSet`` values, via ``set_sets``/``update_set``/
``remove_set``); ``apply()`` converges the kernel with ONE ``ipset restore -exist`` per call:
missing sets are created, sets whose type/family/maxelem match get member deltas (``add``/``del``),
and sets whose metadata changed are rebuilt. Destroying sets that are no longer wanted is a
separate step, ``apply_deletions()``, which felix calls after the iptables apply that stopped
referencing them.

Inputs: ``IPSet`` values (members as text, canonicalised on construction: ``10.0.0.1/32`` becomes
``10.0.0.1``, ``10.0.0.0/8`` stays, ``10.0.0.1,80`` becomes ``10.0.0.1,tcp:80``, exactly the way
``ipset save`` prints them, so read-back compares equal); an ``IpsetBackend``
(``SubprocessIpsetBackend`` or ``FakeIpsetBackend``); a clock.
Outputs: kernel state; ``IpsetApplyResult`` per call; ``next_check_at()``.

Invariants:
- Only sets whose name starts with ``prefix`` are read, written or destroyed.
- A second ``apply()`` with nothing changed and no resync due runs no command at all.
- ``apply()`` never destroys a set that is not desired; only ``apply_deletions()`` does, and a
  destroy the kernel refuses (the set is still referenced by a rule) is retried on the next call.
- A metadata change keeps the set usable throughout when the kernel allows a swap (same type
  features and family, e.g. a maxelem change): a temporary set is filled, ``swap``ped in, and
  destroyed. The kernel refuses to swap sets of different types (``hash:ip`` vs ``hash:net``,
  measured: "their type does not match") or families; such a change destroys and recreates the
  set, which only works while nothing references it (otherwise the unit fails and is retried).
  Felix should therefore put the type and family into the set name.
- ``ipset restore`` is not transactional and stops at the first bad line (measured: earlier lines
  may or may not have been applied), so every failure forces a read-back; a failed set is
  isolated by the line number the tool reports, the other sets are retried in the same apply
  (all our commands are idempotent under ``-exist``).
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from kernel import proc
from kernel.netns import guard_writes, ns_argv

log = logging.getLogger(__name__)

SetType = Literal["hash:ip", "hash:net", "hash:ip,port", "hash:net,port"]
Family = Literal["inet", "inet6"]
SET_TYPES: tuple[str, ...] = ("hash:ip", "hash:net", "hash:ip,port", "hash:net,port")
# The kernel's per-type feature flags; ``swap`` needs equal features and family.
_FEATURES: dict[str, frozenset[str]] = {
    "hash:ip": frozenset({"ip"}),
    "hash:net": frozenset({"ip", "nomatch"}),
    "hash:ip,port": frozenset({"ip", "port"}),
    "hash:net,port": frozenset({"ip", "port", "nomatch"}),
}
_PROTOCOLS = ("tcp", "udp", "sctp", "udplite")
MAX_SET_NAME = 31
DEFAULT_MAXELEM = 1048576
_LINE_RE = re.compile(r"[Ee]rror in line (\d+)")


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


class IpsetError(RuntimeError):
    """Base class of this package's ipset errors."""


class IpsetConfigError(IpsetError, ValueError):
    """A desired set that can never be written (bad name, member, size)."""


class IpsetSaveError(IpsetError):
    """Reading sets back failed."""


class IpsetRestoreError(IpsetError):
    """``ipset restore`` stopped at a line; lines before it may or may not have been applied."""

    def __init__(self, stderr: str, text: str) -> None:
        self.stderr = stderr.strip()
        match = _LINE_RE.search(self.stderr)
        self.line: int | None = int(match.group(1)) if match else None
        lines = text.splitlines()
        self.line_text: str | None = (
            lines[self.line - 1] if self.line is not None and 0 < self.line <= len(lines) else None
        )
        super().__init__(f"ipset restore failed at line {self.line} ({self.line_text!r}): {stderr}")


# --------------------------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------------------------


def _canon_addr(text: str, net: bool, family: str) -> str:
    version = 4 if family == "inet" else 6
    if net:
        network = ipaddress.ip_network(text, strict=False)
        if network.version != version:
            raise ValueError(f"not an IPv{version} network")
        if network.prefixlen == network.max_prefixlen:
            return str(network.network_address)
        if network.prefixlen == 0:
            raise ValueError("a /0 cannot be stored in a hash:net set")
        return str(network)
    addr = ipaddress.ip_address(text)
    if addr.version != version:
        raise ValueError(f"not an IPv{version} address")
    return str(addr)


_CANON_CACHE: dict[tuple[str, str, str], str] = {}
_CANON_CACHE_MAX = 1 << 20


def canonical_member(set_type: str, family: str, member: str) -> str:
    """``member`` as ``ipset save`` prints it for a set of this type; ValueError if invalid.

    Results are memoised: large sets are rebuilt whenever one member changes, and parsing every
    address again with ``ipaddress`` dominated such an update (the cache is bounded)."""
    key = (set_type, family, member)
    hit = _CANON_CACHE.get(key)
    if hit is not None:
        return hit
    result = _canonical_member(set_type, family, member)
    if len(_CANON_CACHE) >= _CANON_CACHE_MAX:
        _CANON_CACHE.clear()
    _CANON_CACHE[key] = result
    return result


def _canonical_member(set_type: str, family: str, member: str) -> str:
    net = set_type.startswith("hash:net")
    if not set_type.endswith(",port"):
        return _canon_addr(member.strip(), net, family)
    addr, sep, port = member.strip().partition(",")
    if not sep:
        raise ValueError("expected ADDRESS,[PROTO:]PORT")
    proto, colon, number = port.partition(":")
    if not colon:
        proto, number = "tcp", port
    if proto not in _PROTOCOLS:
        raise ValueError(f"protocol {proto!r} is not one of {', '.join(_PROTOCOLS)}")
    if not number.isdigit() or not 0 <= int(number) <= 65535:
        raise ValueError(f"bad port {number!r}")
    return f"{_canon_addr(addr, net, family)},{proto}:{int(number)}"


@dataclass(frozen=True, slots=True)
class IPSet:
    """A desired set. ``members`` are canonicalised (see ``canonical_member``) on construction."""

    name: str
    type: SetType = "hash:ip"
    family: Family = "inet"
    members: frozenset[str] = frozenset()
    maxelem: int = DEFAULT_MAXELEM

    def __post_init__(self) -> None:
        if self.type not in SET_TYPES:
            raise IpsetConfigError(f"ipset {self.name}: type {self.type!r} is not supported")
        if self.family not in ("inet", "inet6"):
            raise IpsetConfigError(f"ipset {self.name}: family {self.family!r} is not supported")
        if not 1 <= self.maxelem <= 2**31:
            raise IpsetConfigError(f"ipset {self.name}: maxelem {self.maxelem} out of range")
        canon: set[str] = set()
        for member in self.members:
            try:
                canon.add(canonical_member(self.type, self.family, member))
            except ValueError as exc:
                raise IpsetConfigError(
                    f"ipset {self.name}: member {member!r} is not valid for "
                    f"{self.type} family {self.family}: {exc}"
                ) from None
        if len(canon) > self.maxelem:
            raise IpsetConfigError(
                f"ipset {self.name}: {len(canon)} members exceed maxelem {self.maxelem}"
            )
        object.__setattr__(self, "members", frozenset(canon))

    @property
    def meta(self) -> tuple[str, str, int]:
        return (self.type, self.family, self.maxelem)

    @classmethod
    def trusted(
        cls,
        name: str,
        type: SetType,
        family: Family,
        members: frozenset[str],
        maxelem: int = DEFAULT_MAXELEM,
    ) -> IPSet:
        """An IPSet whose members the caller guarantees are already canonical (exactly as
        ``ipset save`` prints them): skips re-parsing every member, which dominated updates of
        large sets. Type, family and size are still checked."""
        if type not in SET_TYPES or family not in ("inet", "inet6"):
            raise IpsetConfigError(f"ipset {name}: bad type {type!r} or family {family!r}")
        if len(members) > maxelem:
            raise IpsetConfigError(f"ipset {name}: {len(members)} members exceed {maxelem}")
        obj = object.__new__(cls)
        for attr, value in (
            ("name", name),
            ("type", type),
            ("family", family),
            ("members", members),
            ("maxelem", maxelem),
        ):
            object.__setattr__(obj, attr, value)
        return obj


@dataclass(frozen=True, slots=True)
class IpsetApplyResult:
    """What one ``apply()`` / ``apply_deletions()`` did."""

    resynced: bool = False
    restores: int = 0
    sets_created: int = 0
    sets_rebuilt: int = 0
    sets_destroyed: int = 0
    members_added: int = 0
    members_removed: int = 0
    failed: tuple[str, ...] = ()
    error: str | None = None
    seconds: float = 0.0
    consecutive_failures: int = 0

    @property
    def ok(self) -> bool:
        return not self.failed and self.error is None


@dataclass(slots=True)
class _KernelSet:
    type: str
    family: str
    maxelem: int
    members: set[str] = field(default_factory=set)

    @property
    def meta(self) -> tuple[str, str, int]:
        return (self.type, self.family, self.maxelem)


def _parse_create(parts: list[str]) -> _KernelSet:
    """``create NAME TYPE [option value]...`` -> an empty set with that metadata."""
    opts = dict(zip(parts[3::2], parts[4::2], strict=False))
    return _KernelSet(parts[2], opts.get("family", "inet"), int(opts.get("maxelem", "65536")))


def parse_ipset_save(text: str, prefix: str | None = None) -> dict[str, _KernelSet]:
    """``ipset save`` text -> sets (only names starting with ``prefix`` when given)."""
    sets: dict[str, _KernelSet] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 3 or (prefix is not None and not parts[1].startswith(prefix)):
            continue
        if parts[0] == "create":
            sets[parts[1]] = _parse_create(parts)
        elif parts[0] == "add" and parts[1] in sets:
            sets[parts[1]].members.add(parts[2])
    return sets


# --------------------------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------------------------


class IpsetBackend(Protocol):
    def save(self) -> str:
        """``ipset save`` output (all sets)."""
        ...

    def restore(self, text: str) -> None:
        """``ipset restore -exist``; raise ``IpsetRestoreError`` naming the failing line."""
        ...


class SubprocessIpsetBackend:
    """Runs the ``ipset`` tool inside ``netns``."""

    def __init__(self, netns: str | None = None, timeout: float = 30.0) -> None:
        self.netns = netns
        self.timeout = timeout

    def save(self) -> str:
        try:
            res = proc.run(ns_argv(self.netns, ["ipset", "save"]), timeout=self.timeout)
        except proc.ProcError as exc:
            raise IpsetSaveError(f"ipset save: {exc}") from exc
        if not res.ok:
            raise IpsetSaveError(f"ipset save failed ({res.returncode}): {res.stderr.strip()}")
        return res.stdout

    def restore(self, text: str) -> None:
        guard_writes(self.netns)
        argv = ns_argv(self.netns, ["ipset", "restore", "-exist"])
        try:
            res = proc.run(argv, input_text=text, timeout=self.timeout)
        except proc.ProcError as exc:
            raise IpsetRestoreError(str(exc), text) from exc
        if not res.ok:
            raise IpsetRestoreError(res.stderr, text)


class _FakeRejectError(Exception):
    pass


class FakeIpsetBackend:
    """In-memory sets applying the restore text it is given, line by line, like ``ipset``.

    Enforces what the kernel enforces: known types/families, members valid for the type,
    ``maxelem`` ("Hash is full"), ``create`` of an existing set with other parameters,
    operations on missing sets, ``swap`` only between sets of equal features and family, and
    ``destroy`` of a set still referenced (``references(name) > 0``, e.g. wired to
    ``FakeIptablesBackend.set_references``). ``-exist`` semantics are always on. Lines before a
    failing one stay applied. ``restores`` records every text received.
    """

    def __init__(self, references: Callable[[str], int] | None = None) -> None:
        self.sets: dict[str, _KernelSet] = {}
        self.references = references
        self.restores: list[str] = []
        self.saves = 0

    def save(self) -> str:
        self.saves += 1
        out: list[str] = []
        for name, s in self.sets.items():
            out.append(
                f"create {name} {s.type} family {s.family} hashsize 1024 maxelem {s.maxelem} "
                "bucketsize 12 initval 0x00000000"
            )
            out.extend(f"add {name} {m}" for m in sorted(s.members))
        return "".join(line + "\n" for line in out)

    def restore(self, text: str) -> None:
        self.restores.append(text)
        self.external(text)

    def exists(self, name: str) -> bool:
        return name in self.sets

    def members(self, name: str) -> set[str]:
        return set(self.sets[name].members)

    def external(self, text: str) -> None:
        """Apply restore text as another program would (not recorded)."""
        for lineno, line in enumerate(text.splitlines(), start=1):
            parts = line.split()
            if not parts or parts[0].startswith("#"):
                continue
            try:
                self._command(parts)
            except (_FakeRejectError, ValueError, IndexError) as exc:
                raise IpsetRestoreError(
                    f"ipset v7.17: Error in line {lineno}: {exc}", text
                ) from None

    def _get(self, name: str) -> _KernelSet:
        if name not in self.sets:
            raise _FakeRejectError("The set with the given name does not exist")
        return self.sets[name]

    def _command(self, parts: list[str]) -> None:
        op, name = parts[0], parts[1]
        if op == "create":
            opts = dict(zip(parts[3::2], parts[4::2], strict=False))
            new = _KernelSet(
                parts[2], opts.get("family", "inet"), int(opts.get("maxelem", "65536"))
            )
            if new.type not in SET_TYPES or new.family not in ("inet", "inet6"):
                raise _FakeRejectError(f"unsupported set type/family {new.type} {new.family}")
            old = self.sets.get(name)
            if old is not None and old.meta != new.meta:
                raise _FakeRejectError(
                    "Set cannot be created: set with the same name already exists"
                )
            if old is None:
                self.sets[name] = new
        elif op == "add":
            s = self._get(name)
            member = canonical_member(s.type, s.family, parts[2])
            if member not in s.members:
                if len(s.members) >= s.maxelem:
                    raise _FakeRejectError("Hash is full, cannot add more elements")
                s.members.add(member)
        elif op == "del":
            s = self._get(name)
            s.members.discard(canonical_member(s.type, s.family, parts[2]))
        elif op == "flush":
            self._get(name).members.clear()
        elif op == "swap":
            a, b = self._get(name), self._get(parts[2])
            if _FEATURES[a.type] != _FEATURES[b.type] or a.family != b.family:
                raise _FakeRejectError("The sets cannot be swapped: their type does not match")
            self.sets[name], self.sets[parts[2]] = b, a
        elif op == "destroy":
            if name not in self.sets:
                return  # -exist
            if self.references is not None and self.references(name) > 0:
                raise _FakeRejectError(
                    "Set cannot be destroyed: it is in use by a kernel component"
                )
            del self.sets[name]
        else:
            raise _FakeRejectError(f"unsupported command {op}")


# --------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Unit:
    name: str
    lines: list[str]
    after: _KernelSet | None  # None: the set is gone
    created: int = 0
    rebuilt: int = 0
    destroyed: int = 0
    added: int = 0
    removed: int = 0


def _create_line(name: str, s: IPSet) -> str:
    return f"create {name} {s.type} family {s.family} maxelem {s.maxelem}"


class IpsetDriver:
    """Desired sets with our prefix; ``apply()``/``apply_deletions()`` converge the kernel."""

    def __init__(
        self,
        netns: str | None = None,
        prefix: str = "tby",
        backend: IpsetBackend | None = None,
        *,
        refresh_interval: float = 90.0,
        retry_interval: float = 1.0,
        max_consecutive_failures: int = 5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not prefix:
            raise IpsetConfigError("ipset prefix must not be empty")
        self.netns = netns
        self.prefix = prefix
        self.temp_prefix = f"{prefix}tmp-"
        self.backend: IpsetBackend = backend or SubprocessIpsetBackend(netns)
        self.refresh_interval = refresh_interval
        self.retry_interval = retry_interval
        self.max_consecutive_failures = max_consecutive_failures
        self._clock = clock
        self._desired: dict[str, IPSet] = {}
        self._kernel: dict[str, _KernelSet] | None = None
        self._next_refresh = 0.0
        self._dirty: set[str] = set()  # desired sets changed since the last apply
        self._retry_at: float | None = None
        self.consecutive_failures = 0

    # -- desired state (no I/O) ------------------------------------------------------------
    def update_set(self, ipset: IPSet) -> None:
        name = ipset.name
        if not name.startswith(self.prefix) or name == self.prefix:
            raise IpsetConfigError(f"ipset {name}: name must start with {self.prefix!r}")
        if name.startswith(self.temp_prefix):
            raise IpsetConfigError(f"ipset {name}: {self.temp_prefix!r} is reserved for temp sets")
        if len(name) > MAX_SET_NAME or any(c.isspace() for c in name):
            raise IpsetConfigError(f"ipset {name}: at most {MAX_SET_NAME} characters, no spaces")
        current = self._desired.get(name)
        if current is ipset or current == ipset:
            return
        self._desired[name] = ipset
        self._dirty.add(name)

    def remove_set(self, name: str) -> None:
        """Stop wanting a set; ``apply_deletions()`` destroys it."""
        self._desired.pop(name, None)
        self._dirty.discard(name)

    def set_sets(self, sets: Iterable[IPSet]) -> None:
        wanted = {s.name: s for s in sets}
        for name in list(self._desired):
            if name not in wanted:
                self.remove_set(name)
        for s in wanted.values():
            self.update_set(s)

    @property
    def sets(self) -> dict[str, IPSet]:
        return dict(self._desired)

    def temp_name(self, name: str) -> str:
        """The temporary set used to rebuild ``name`` (ours by prefix, <= 31 characters)."""
        return self.temp_prefix + hashlib.sha1(name.encode()).hexdigest()[: MAX_SET_NAME - 7]

    # -- scheduling ------------------------------------------------------------------------
    def invalidate(self) -> None:
        self._kernel = None

    def next_check_at(self) -> float:
        return min(self._next_refresh, self._retry_at if self._retry_at is not None else 1e300)

    @property
    def failed_persistently(self) -> bool:
        return self.consecutive_failures >= self.max_consecutive_failures

    def pending_deletions(self) -> list[str]:
        """Our sets in the kernel (as last read) that are not desired."""
        if self._kernel is None:
            return []
        return sorted(n for n in self._kernel if n not in self._desired)

    # -- kernel ----------------------------------------------------------------------------
    def _resync_if_due(self, now: float, allow_refresh: bool = True) -> bool:
        if self._kernel is not None and (now < self._next_refresh or not allow_refresh):
            return False
        self._kernel = parse_ipset_save(self.backend.save(), self.prefix)
        self._next_refresh = now + self.refresh_interval
        return True

    def _plan(
        self, kernel: dict[str, _KernelSet], names: Iterable[str] | None = None
    ) -> list[_Unit]:
        """Units for ``names`` (default: every desired set)."""
        units: list[_Unit] = []
        for name in sorted(self._desired if names is None else names):
            want = self._desired.get(name)
            if want is None:
                continue
            have = kernel.get(name)
            if have is not None and have.meta == want.meta and have.members == want.members:
                continue
            after = _KernelSet(want.type, want.family, want.maxelem, set(want.members))
            if have is None:
                lines = [_create_line(name, want)] + [f"add {name} {m}" for m in want.members]
                units.append(_Unit(name, lines, after, created=1, added=len(want.members)))
            elif have.meta == want.meta:
                if have.members == want.members:
                    continue
                adds = want.members - have.members
                dels = have.members - want.members
                lines = [f"del {name} {m}" for m in dels] + [f"add {name} {m}" for m in adds]
                units.append(_Unit(name, lines, after, added=len(adds), removed=len(dels)))
            elif _FEATURES.get(have.type) == _FEATURES[want.type] and have.family == want.family:
                tmp = self.temp_name(name)
                lines = [f"destroy {tmp}", _create_line(tmp, want)]
                lines += [f"add {tmp} {m}" for m in want.members]
                lines += [f"swap {tmp} {name}", f"destroy {tmp}"]
                units.append(_Unit(name, lines, after, rebuilt=1, added=len(want.members)))
            else:
                lines = [f"destroy {name}", _create_line(name, want)]
                lines += [f"add {name} {m}" for m in want.members]
                units.append(_Unit(name, lines, after, rebuilt=1, added=len(want.members)))
        return units

    def _execute(
        self, units: Sequence[_Unit]
    ) -> tuple[list[_Unit], list[tuple[_Unit, IpsetRestoreError]], int]:
        """Run units in one restore; on failure isolate the culprit and retry the others."""
        applied: list[_Unit] = []
        failed: list[tuple[_Unit, IpsetRestoreError]] = []
        restores = 0
        queue = list(units)
        while queue:
            owner: list[int] = []
            lines: list[str] = []
            for i, unit in enumerate(queue):
                lines.extend(unit.lines)
                owner.extend([i] * len(unit.lines))
            restores += 1
            try:
                self.backend.restore("".join(line + "\n" for line in lines))
            except IpsetRestoreError as err:
                bad = owner[err.line - 1] if err.line and 0 < err.line <= len(owner) else None
                if bad is None:  # cannot attribute it: everything in this batch failed
                    failed.extend((u, err) for u in queue)
                    break
                failed.append((queue[bad], err))
                queue = queue[:bad] + queue[bad + 1 :]  # all idempotent under -exist
                continue
            applied.extend(queue)
            break
        return applied, failed, restores

    def apply(self, *, allow_refresh: bool = True) -> IpsetApplyResult:
        """Create sets and update members/metadata. Never destroys an undesired set.

        ``allow_refresh=False`` postpones a due periodic read-back (not a needed one)."""
        return self._run(deletions=False, allow_refresh=allow_refresh)

    def apply_deletions(self, *, allow_refresh: bool = True) -> IpsetApplyResult:
        """Destroy our sets that are not desired; a set still referenced stays for next time."""
        return self._run(deletions=True, allow_refresh=allow_refresh)

    def _run(self, deletions: bool, allow_refresh: bool = True) -> IpsetApplyResult:
        start = time.perf_counter()
        now = self._clock()
        try:
            resynced = self._resync_if_due(now, allow_refresh)
        except (IpsetError, proc.ProcError) as exc:
            self._kernel = None
            self.consecutive_failures += 1
            self._retry_at = now + self.retry_interval
            log.error("ipset.readback_failed error=%s", exc)
            return IpsetApplyResult(
                error=str(exc),
                seconds=time.perf_counter() - start,
                consecutive_failures=self.consecutive_failures,
            )
        kernel = self._kernel
        assert kernel is not None
        if deletions:
            units = [
                _Unit(n, [f"destroy {n}"], None, destroyed=1)
                for n in sorted(kernel)
                if n not in self._desired
            ]
        else:
            # After a read-back every set is compared; otherwise only those changed since.
            units = self._plan(kernel, None if resynced else self._dirty)
            self._dirty.clear()
        if not units:
            if not deletions:
                self.consecutive_failures = 0
                self._retry_at = None
            return IpsetApplyResult(resynced, seconds=time.perf_counter() - start)
        applied, failed, restores = self._execute(units)
        for unit in applied:
            if unit.after is None:
                kernel.pop(unit.name, None)
            else:
                kernel[unit.name] = unit.after
        if failed:
            self._kernel = None  # restore is not atomic: read back before the next attempt
            self._retry_at = now + self.retry_interval
            for unit, err in failed:
                log.log(
                    logging.WARNING if deletions else logging.ERROR,
                    "ipset.unit_failed set=%s op=%s line=%r error=%s",
                    unit.name,
                    "destroy" if deletions else "update",
                    err.line_text,
                    err.stderr.replace("\n", " | "),
                )
            if not deletions:  # a set still referenced is expected, not a dataplane failure
                self.consecutive_failures += 1
        elif not deletions:
            self.consecutive_failures = 0
            self._retry_at = None
        seconds = time.perf_counter() - start
        result = IpsetApplyResult(
            resynced,
            restores,
            sets_created=sum(u.created for u in applied),
            sets_rebuilt=sum(u.rebuilt for u in applied),
            sets_destroyed=sum(u.destroyed for u in applied),
            members_added=sum(u.added for u in applied),
            members_removed=sum(u.removed for u in applied),
            failed=tuple(u.name for u, _ in failed),
            seconds=seconds,
            consecutive_failures=self.consecutive_failures,
        )
        log.info(
            "ipset.%s resync=%s restores=%d created=%d rebuilt=%d destroyed=%d added=%d "
            "removed=%d failed=%d ms=%.1f",
            "apply_deletions" if deletions else "apply",
            resynced,
            restores,
            result.sets_created,
            result.sets_rebuilt,
            result.sets_destroyed,
            result.members_added,
            result.members_removed,
            len(failed),
            seconds * 1000,
        )
        return result
