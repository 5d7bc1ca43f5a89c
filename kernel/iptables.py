"""Desired-state iptables driver: one ``IptablesTable`` per (table, IP version).

Role: felix's managers describe what they want with cheap calls (``set_chains``,
``update_chain``, ``remove_chain``, ``set_insert_rules``); ``apply()`` is the only method that
touches the kernel. It reads the table back (``iptables-save -t TABLE``) when a resync is due,
diffs our objects against the desired state and writes ONE ``iptables-restore --noflush``
transaction holding only the changes.

Inputs: ``Chain``/``Rule`` values (rule text is iptables argument text), an ``IptablesBackend``
(``kernel.iptables_backend``; a stateful fake lives in ``kernel.iptables_fake``), a clock.
Outputs: kernel state; an ``ApplyResult`` per apply; ``next_check_at()`` for the caller's timer.

Ownership: our chains are the ones whose name starts with ``chain_prefix`` (``tby-``); our rules in
built-in chains carry the comment ``tby:<hash>``. Nothing else is ever written or deleted.

Rule hashes: every rule we write carries ``-m comment --comment "tby:<hash>[ <comment>]"``.
The hash is sha224 over (format version, chain name, rule text, occurrence number of that same
text earlier in the chain), base64url, 16 characters. Unlike Calico, whose hash also chains the
previous rule's hash, ours is *position independent*: inserting or changing one rule leaves the
hashes of all other rules unchanged, so they are never rewritten and keep their packet counters.
Order is still checked: read-back compares the sequence of hashes, and the edit script keeps the
longest common subsequence of unchanged rules (unique hashes: a longest increasing subsequence),
deletes the rest (``-D n``, bottom up) and inserts the missing ones at their position
(``-I n`` / ``-A``). Both backends apply ``-D``/``-I`` positions sequentially inside one
transaction (measured).

Invariants:
- ``apply()`` with nothing changed and no resync due issues no write at all (no restore call).
- Unchanged rules are never rewritten (their counters survive).
- A transaction creates new chains first, then edits chains and hook rules, then flushes and
  deletes our chains that are no longer wanted, so a chain is deleted only once nothing of ours
  refers to it.
- Hook rules (``set_insert_rules``) sit at the top of their built-in chain, in order, above any
  foreign rule; foreign rules in built-in chains are kept in place.
- A rejected transaction is retried unit by unit (a unit = one chain's edits), isolating the bad
  one by the line the tool names or by bisection; the others are applied. Failed units stay
  different from the desired state, a read-back is forced before the next apply, and
  ``consecutive_failures`` counts applies with any failure so felix can exit (fail closed)
  once ``failed_persistently`` is true.
- Tampering (another program flushing our chain, deleting a hook rule) is found by a read-back
  ``post_write_check`` seconds after our last write (deferred while new changes keep arriving:
  they are written first, from our view of the table) and every ``refresh_interval`` seconds; the
  driver starts no threads: the caller calls ``apply()`` at ``next_check_at()``.
- Sweeping (deleting our chains that are not desired) happens on every apply: call the first
  ``apply()`` only after the desired state is complete (datastore in sync).
"""

from __future__ import annotations

import base64
import bisect
import functools
import hashlib
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from kernel.iptables_backend import (
    BackendSetting,
    IptablesBackend,
    IptablesConfigError,
    IptablesError,
    IptablesRestoreError,
    IptablesSaveError,
    IpVersion,
    SubprocessIptablesBackend,
    detect_backend,
)
from kernel.proc import ProcError

__all__ = [
    "BUILTIN_CHAINS",
    "COMMENT_MARKER",
    "ApplyResult",
    "BackendSetting",
    "Chain",
    "IptablesBackend",
    "IptablesConfigError",
    "IptablesError",
    "IptablesRestoreError",
    "IptablesSaveError",
    "IptablesTable",
    "Rule",
    "SubprocessIptablesBackend",
    "TableName",
    "detect_backend",
    "parse_save",
    "render_rule",
    "rule_hashes",
]

log = logging.getLogger(__name__)

TableName = Literal["filter", "raw", "mangle", "nat"]

BUILTIN_CHAINS: dict[str, tuple[str, ...]] = {
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "raw": ("PREROUTING", "OUTPUT"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
}

COMMENT_MARKER = "tby:"
HASH_LEN = 16
_HASH_VERSION = "tby-rule-v1"
_HASH_RE = re.compile(r"--comment [\"']?tby:([A-Za-z0-9_-]{16})")
MAX_CHAIN_NAME = 28  # XT_EXTENSION_MAXNAMELEN - 1
MAX_USER_COMMENT = 200  # the comment match holds 255 bytes; keep room for the hash


# --------------------------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule as iptables argument text: ``match`` then ``action`` (``-j X`` / ``--goto X``)."""

    match: str = ""
    action: str = ""
    comment: str | None = None

    def __post_init__(self) -> None:
        for name in ("match", "action"):
            if "\n" in getattr(self, name):
                raise IptablesConfigError(f"rule.{name}: contains a newline")
        if self.comment is not None:
            bad = set(self.comment) & {'"', "\\", "\n", "'"}
            if bad:
                raise IptablesConfigError(f"rule.comment: characters {sorted(bad)} not allowed")
            if len(self.comment.encode()) > MAX_USER_COMMENT:
                raise IptablesConfigError(f"rule.comment: longer than {MAX_USER_COMMENT} bytes")

    def body(self) -> str:
        """The rule text without the hash comment (what the hash covers)."""
        return " ".join(p for p in (self.match.strip(), self.action.strip()) if p)


@dataclass(frozen=True, slots=True)
class Chain:
    """A chain of ours: its name starts with the table's chain prefix."""

    name: str
    rules: tuple[Rule, ...] = ()


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What one ``apply()`` did."""

    table: str
    ip_version: int
    resynced: bool = False
    restores: int = 0
    chains_created: int = 0
    chains_updated: int = 0
    chains_deleted: int = 0
    rules_written: int = 0
    rules_deleted: int = 0
    failed: tuple[str, ...] = ()
    error: str | None = None
    seconds: float = 0.0
    consecutive_failures: int = 0

    @property
    def ok(self) -> bool:
        return not self.failed and self.error is None


# --------------------------------------------------------------------------------------------
# Pure helpers: hashing, rendering, parsing, diffing
# --------------------------------------------------------------------------------------------


def rule_hashes(chain: str, rules: Sequence[Rule]) -> tuple[str, ...]:
    """Position-independent, stable hashes of ``rules`` in ``chain`` (unique within the chain)."""
    seen: Counter[Rule] = Counter()
    out: list[str] = []
    for rule in rules:
        nth = seen[rule]
        seen[rule] += 1
        out.append(_rule_hash(chain, rule, nth))
    return tuple(out)


@functools.lru_cache(maxsize=1 << 17)
def _rule_hash(chain: str, rule: Rule, nth: int) -> str:
    # Memoised: big chains (the dispatch chains) are rehashed whenever one rule changes.
    text = f"{rule.body()}\x00{rule.comment or ''}"
    digest = hashlib.sha224(f"{_HASH_VERSION}\x00{chain}\x00{text}\x00{nth}".encode()).digest()
    return base64.urlsafe_b64encode(digest)[:HASH_LEN].decode()


def render_rule(head: str, rule_hash: str, rule: Rule) -> str:
    """One restore line: ``head`` (``-A chain`` / ``-I chain n``) + our comment + the rule."""
    comment = COMMENT_MARKER + rule_hash
    if rule.comment:
        comment += " " + rule.comment
    body = rule.body()
    return f'{head} -m comment --comment "{comment}"' + (f" {body}" if body else "")


def parse_save(text: str) -> dict[str, list[str | None]]:
    """``iptables-save`` text of one table -> chain name -> per rule our hash (None: foreign)."""
    chains: dict[str, list[str | None]] = {}
    for raw in text.splitlines():
        line = raw.partition("] ")[2] if raw.startswith("[") else raw  # "-c" counters prefix
        if line.startswith("-A "):
            name = line[3:].split(" ", 1)[0]
            h: str | None = None
            if COMMENT_MARKER in line:
                m = _HASH_RE.search(line)
                h = m.group(1) if m else None
            chains.setdefault(name, []).append(h)
        elif line.startswith(":"):
            chains.setdefault(line[1:].split(" ", 1)[0], [])
    return chains


def _kept_lis(current: Sequence[str | None], desired: Sequence[str]) -> tuple[set[int], set[int]]:
    """Indices (current, desired) of rules to keep: a longest order-preserving common run."""
    where = {h: i for i, h in enumerate(desired)}
    pairs: list[tuple[int, int]] = []
    used: set[str] = set()
    for ci, h in enumerate(current):
        if h is not None and h in where and h not in used:
            used.add(h)
            pairs.append((ci, where[h]))
    # Longest increasing subsequence of desired indices (patience sorting, O(n log n)).
    tails: list[int] = []
    tail_at: list[int] = []
    parent = [-1] * len(pairs)
    for k, (_, di) in enumerate(pairs):
        pos = bisect.bisect_left(tails, di)
        if pos == len(tails):
            tails.append(di)
            tail_at.append(k)
        else:
            tails[pos] = di
            tail_at[pos] = k
        parent[k] = tail_at[pos - 1] if pos > 0 else -1
    keep_c: set[int] = set()
    keep_d: set[int] = set()
    k = tail_at[-1] if tail_at else -1
    while k >= 0:
        keep_c.add(pairs[k][0])
        keep_d.add(pairs[k][1])
        k = parent[k]
    return keep_c, keep_d


@dataclass(slots=True)
class _Unit:
    """One independently applicable piece of a transaction and its effect on our cache."""

    key: str
    lines: list[str]
    after: dict[str, list[str | None] | None] = field(default_factory=dict)
    created: int = 0
    updated: int = 0
    deleted: int = 0
    written: int = 0
    removed: int = 0


def _edit_chain(
    name: str, current: Sequence[str | None], hashes: Sequence[str], rules: Sequence[Rule]
) -> tuple[list[str], int, int]:
    """Lines turning ``current`` into ``hashes``, keeping unchanged rules; + written, deleted."""
    keep_c, keep_d = _kept_lis(current, hashes)
    lines: list[str] = []
    deleted = 0
    if not keep_c and current:
        lines.append(f"-F {name}")
        deleted = len(current)
    else:
        for ci in range(len(current) - 1, -1, -1):
            if ci not in keep_c:
                lines.append(f"-D {name} {ci + 1}")
                deleted += 1
    length = len(keep_c)
    written = 0
    for di, (h, rule) in enumerate(zip(hashes, rules, strict=True)):
        if di in keep_d:
            continue
        head = f"-A {name}" if di >= length else f"-I {name} {di + 1}"
        lines.append(render_rule(head, h, rule))
        length += 1
        written += 1
    return lines, written, deleted


def _edit_hook(
    name: str, current: Sequence[str | None], hashes: Sequence[str], rules: Sequence[Rule]
) -> tuple[list[str], list[str | None], int, int]:
    """Lines putting our hook rules at the top of built-in ``name``; foreign rules stay."""
    run = 0
    while run < len(current) and current[run] is not None:
        run += 1
    keep_c, keep_d = _kept_lis(current[:run], hashes)
    deletes = [ci for ci, h in enumerate(current) if h is not None and ci not in keep_c]
    lines = [f"-D {name} {ci + 1}" for ci in reversed(deletes)]
    length = len(current) - len(deletes)
    written = 0
    for di, (h, rule) in enumerate(zip(hashes, rules, strict=True)):
        if di in keep_d:
            continue
        head = f"-A {name}" if di >= length else f"-I {name} {di + 1}"
        lines.append(render_rule(head, h, rule))
        length += 1
        written += 1
    after: list[str | None] = [*hashes, *(h for h in current if h is None)]
    return lines, after, written, len(deletes)


# --------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------


class IptablesTable:
    """Desired state of our chains and hook rules in one table; ``apply()`` converges the kernel."""

    def __init__(
        self,
        table: TableName,
        ip_version: IpVersion = 4,
        backend: IptablesBackend | BackendSetting = "auto",
        netns: str | None = None,
        chain_prefix: str = "tby-",
        *,
        refresh_interval: float = 90.0,
        post_write_check: float = 1.0,
        retry_interval: float = 1.0,
        max_consecutive_failures: int = 5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if table not in BUILTIN_CHAINS:
            raise IptablesConfigError(f"unknown iptables table {table!r}")
        if not chain_prefix:
            raise IptablesConfigError("chain_prefix must not be empty")
        self.table: TableName = table
        self.ip_version: IpVersion = ip_version
        self.netns = netns
        self.chain_prefix = chain_prefix
        if isinstance(backend, str):
            mode = detect_backend(netns, backend)
            self.backend: IptablesBackend = SubprocessIptablesBackend(mode, ip_version, netns)
        else:
            self.backend = backend
        self.refresh_interval = refresh_interval
        self.post_write_check = post_write_check
        self.retry_interval = retry_interval
        self.max_consecutive_failures = max_consecutive_failures
        self._clock = clock
        self._chains: dict[str, Chain] = {}
        self._chain_hashes: dict[str, tuple[str, ...]] = {}
        self._inserts: dict[str, tuple[Rule, ...]] = {}
        self._insert_hashes: dict[str, tuple[str, ...]] = {}
        # What we believe the kernel holds: our chains and the built-in chains (hash or None).
        self._kernel: dict[str, list[str | None]] | None = None
        self._next_refresh = 0.0
        self._recheck_at: float | None = None
        self._retry_at: float | None = None
        self.consecutive_failures = 0
        self._write_gen = 0  # bumped before every restore: stale background read-backs

    # -- desired state (no I/O) ------------------------------------------------------------
    def _check_chain_name(self, name: str) -> None:
        if not name.startswith(self.chain_prefix) or name == self.chain_prefix:
            raise IptablesConfigError(
                f"iptables chain {self.table}/{name}: name must start with {self.chain_prefix!r}"
            )
        if len(name) > MAX_CHAIN_NAME or any(c.isspace() for c in name):
            raise IptablesConfigError(
                f"iptables chain {self.table}/{name}: at most {MAX_CHAIN_NAME} characters, "
                "no whitespace"
            )

    def update_chain(self, chain: Chain) -> None:
        """Add or replace one of our chains."""
        current = self._chains.get(chain.name)
        if current is chain:
            return  # the same object: nothing to check or hash again
        self._check_chain_name(chain.name)
        if current == chain:
            return
        self._chains[chain.name] = chain
        self._chain_hashes[chain.name] = rule_hashes(chain.name, chain.rules)

    def remove_chain(self, name: str) -> None:
        """Stop wanting a chain; it is deleted by the next apply (after references are gone)."""
        self._chains.pop(name, None)
        self._chain_hashes.pop(name, None)

    def set_chains(self, chains: Iterable[Chain]) -> None:
        """Replace the whole set of desired chains."""
        wanted = {c.name: c for c in chains}
        for name in list(self._chains):
            if name not in wanted:
                self.remove_chain(name)
        for chain in wanted.values():
            self.update_chain(chain)

    def set_insert_rules(self, kernel_chain: str, rules: Iterable[Rule]) -> None:
        """Our rules at the top of built-in ``kernel_chain``, in this order (empty: none)."""
        if kernel_chain not in BUILTIN_CHAINS[self.table]:
            raise IptablesConfigError(
                f"iptables table {self.table}: {kernel_chain!r} is not a built-in chain "
                f"(one of {', '.join(BUILTIN_CHAINS[self.table])})"
            )
        rules = tuple(rules)
        if rules:
            self._inserts[kernel_chain] = rules
            self._insert_hashes[kernel_chain] = rule_hashes(kernel_chain, rules)
        else:
            self._inserts.pop(kernel_chain, None)
            self._insert_hashes.pop(kernel_chain, None)

    @property
    def chains(self) -> dict[str, Chain]:
        return dict(self._chains)

    # -- scheduling ------------------------------------------------------------------------
    def invalidate(self) -> None:
        """Force a read-back at the next apply."""
        self._kernel = None

    def next_check_at(self) -> float:
        """Clock time at which ``apply()`` should run even if nothing changes."""
        times = [self._next_refresh]
        if self._recheck_at is not None:
            times.append(self._recheck_at)
        if self._retry_at is not None:
            times.append(self._retry_at)
        return min(times)

    @property
    def failed_persistently(self) -> bool:
        return self.consecutive_failures >= self.max_consecutive_failures

    # -- kernel ----------------------------------------------------------------------------
    def has_work(self, allow_refresh: bool = True) -> bool:
        """Whether ``apply()`` could do anything now (a write, a read-back or a retry): lets a
        caller skip idle tables cheaply."""
        if self._kernel is None or self._retry_at is not None:
            return True
        if allow_refresh and self.check_due():
            return True
        return bool(self._plan(self._kernel))

    def check_due(self, now: float | None = None) -> bool:
        """True when a read-back (post-write check, refresh, or unknown state) is due."""
        now = self._clock() if now is None else now
        return (
            self._kernel is None
            or now >= self._next_refresh
            or (self._recheck_at is not None and now >= self._recheck_at)
        )

    def fetch_readback(self) -> tuple[int, str]:
        """``iptables-save`` of this table, tagged with the write generation it was taken at.

        Safe to call from another thread (it only runs the save tool): the caller passes the
        result to ``apply(readback=...)``, which uses it only if we wrote nothing since."""
        gen = self._write_gen
        return gen, self.backend.save(self.table)

    def apply(
        self, *, allow_refresh: bool = True, readback: tuple[int, str] | None = None
    ) -> ApplyResult:
        """Converge the kernel to the desired state; the only method that touches the kernel.

        ``allow_refresh=False`` skips a due post-write check or periodic refresh (the caller
        does it later, when idle); a read-back still happens when our view of the kernel is
        unknown. ``readback`` is a ``fetch_readback()`` result taken in the background: used
        instead of reading the table again, unless we wrote since it was taken (then ignored).
        """
        start = time.perf_counter()
        now = self._clock()
        resynced = False
        recheck_due = self._recheck_at is not None and now >= self._recheck_at
        refresh_due = now >= self._next_refresh
        if not allow_refresh:
            recheck_due = refresh_due = False
        units: list[_Unit] | None = None
        if recheck_due and self._kernel is not None and not refresh_due:
            units = self._plan(self._kernel)
            if units:
                # Changes are waiting: write them first (latency matters more than the check);
                # the write schedules a new post-write check, which then reads the table back.
                recheck_due = False
        fresh = readback is not None and readback[0] == self._write_gen
        if self._kernel is None or refresh_due or recheck_due or fresh:
            units = None
            if fresh:
                assert readback is not None
                text = readback[1]
            else:
                try:
                    text = self.backend.save(self.table)
                except (IptablesError, ProcError) as exc:
                    return self._finish_failure(start, now, str(exc))
            self._kernel = self._owned(parse_save(text))
            self._next_refresh = now + self.refresh_interval
            self._recheck_at = None
            resynced = True
        if units is None:
            units = self._plan(self._kernel)
        if not units:
            self.consecutive_failures = 0
            self._retry_at = None
            seconds = time.perf_counter() - start
            log.debug("iptables.apply table=%s v=%d writes=0", self.table, self.ip_version)
            return ApplyResult(self.table, self.ip_version, resynced, seconds=seconds)
        applied, failed, restores = self._execute(units)
        for unit in applied:
            for name, after in unit.after.items():
                if after is None:
                    self._kernel.pop(name, None)
                else:
                    self._kernel[name] = after
        self._recheck_at = now + self.post_write_check
        result = ApplyResult(
            self.table,
            self.ip_version,
            resynced,
            restores=restores,
            chains_created=sum(u.created for u in applied),
            chains_updated=sum(u.updated for u in applied),
            chains_deleted=sum(u.deleted for u in applied),
            rules_written=sum(u.written for u in applied),
            rules_deleted=sum(u.removed for u in applied),
            failed=tuple(u.key for u, _ in failed),
        )
        if failed:
            for unit, err in failed:
                log.error(
                    "iptables.unit_failed table=%s v=%d unit=%r line=%r error=%s",
                    self.table,
                    self.ip_version,
                    unit.key,
                    err.line_text,
                    err.stderr.replace("\n", " | "),
                )
            self._kernel = None  # read back before retrying: the kernel may differ from our view
            self.consecutive_failures += 1
            self._retry_at = now + self.retry_interval
        else:
            self.consecutive_failures = 0
            self._retry_at = None
        seconds = time.perf_counter() - start
        result = _replace_tail(result, seconds, self.consecutive_failures)
        log.info(
            "iptables.apply table=%s v=%d resync=%s restores=%d created=%d updated=%d "
            "deleted=%d rules_written=%d rules_deleted=%d failed=%d ms=%.1f",
            self.table,
            self.ip_version,
            resynced,
            restores,
            result.chains_created,
            result.chains_updated,
            result.chains_deleted,
            result.rules_written,
            result.rules_deleted,
            len(failed),
            seconds * 1000,
        )
        return result

    def _finish_failure(self, start: float, now: float, error: str) -> ApplyResult:
        self.consecutive_failures += 1
        self._kernel = None
        self._retry_at = now + self.retry_interval
        log.error(
            "iptables.readback_failed table=%s v=%d error=%s", self.table, self.ip_version, error
        )
        return ApplyResult(
            self.table,
            self.ip_version,
            error=error,
            seconds=time.perf_counter() - start,
            consecutive_failures=self.consecutive_failures,
        )

    def _owned(self, chains: dict[str, list[str | None]]) -> dict[str, list[str | None]]:
        builtins = BUILTIN_CHAINS[self.table]
        return {
            name: hashes
            for name, hashes in chains.items()
            if name.startswith(self.chain_prefix) or name in builtins
        }

    def _plan(self, kernel: dict[str, list[str | None]]) -> list[_Unit]:
        units: list[_Unit] = []
        new = sorted(n for n in self._chains if n not in kernel)
        if new:
            units.append(
                _Unit(
                    "create chains",
                    [f":{n} - [0:0]" for n in new],
                    after={n: [] for n in new},
                    created=len(new),
                )
            )
        for name in sorted(self._chains):
            hashes = self._chain_hashes[name]
            current = kernel.get(name, [])
            if name in kernel and tuple(current) == hashes:
                continue
            lines, written, removed = _edit_chain(name, current, hashes, self._chains[name].rules)
            units.append(
                _Unit(
                    f"chain {name}",
                    lines,
                    after={name: list(hashes)},
                    updated=int(name in kernel),
                    written=written,
                    removed=removed,
                )
            )
        for name in BUILTIN_CHAINS[self.table]:
            hashes = self._insert_hashes.get(name, ())
            current = kernel.get(name, [])
            ours = [h for h in current if h is not None]
            if tuple(current[: len(hashes)]) == hashes and len(ours) == len(hashes):
                continue
            rules = self._inserts.get(name, ())
            lines, after, written, removed = _edit_hook(name, current, hashes, rules)
            units.append(
                _Unit(f"hook {name}", lines, after={name: after}, written=written, removed=removed)
            )
        stale = sorted(
            n for n in kernel if n.startswith(self.chain_prefix) and n not in self._chains
        )
        if stale:
            units.append(
                _Unit(
                    "flush stale chains",
                    [f"-F {n}" for n in stale if kernel[n]],
                    after={n: [] for n in stale},
                    removed=sum(len(kernel[n]) for n in stale),
                )
            )
            units.extend(
                _Unit(f"delete chain {n}", [f"-X {n}"], after={n: None}, deleted=1) for n in stale
            )
        return [u for u in units if u.lines or u.after]

    def _render(self, units: Sequence[_Unit]) -> tuple[str, list[int]]:
        """Transaction text and, per text line (0-based), the index of its unit (-1: framing)."""
        lines = [f"*{self.table}"]
        owner = [-1]
        for i, unit in enumerate(units):
            lines.extend(unit.lines)
            owner.extend([i] * len(unit.lines))
        lines.append("COMMIT")
        owner.append(-1)
        return "\n".join(lines) + "\n", owner

    def _execute(
        self, units: list[_Unit]
    ) -> tuple[list[_Unit], list[tuple[_Unit, IptablesRestoreError]], int]:
        applied: list[_Unit] = []
        failed: list[tuple[_Unit, IptablesRestoreError]] = []
        restores = 0

        def attempt(group: list[_Unit]) -> None:
            nonlocal restores
            if not group:
                return
            text, owner = self._render(group)
            if not any(owner_i >= 0 for owner_i in owner):  # units without lines: cache only
                applied.extend(group)
                return
            restores += 1
            try:
                self._write_gen += 1
                self.backend.restore(self.table, text)
            except IptablesRestoreError as err:
                if len(group) == 1:
                    failed.append((group[0], err))
                    return
                culprit = owner[err.line - 1] if err.line and 0 < err.line <= len(owner) else -1
                if culprit >= 0:
                    attempt(group[:culprit])
                    attempt([group[culprit]])
                    attempt(group[culprit + 1 :])
                else:
                    mid = len(group) // 2
                    attempt(group[:mid])
                    attempt(group[mid:])
                return
            applied.extend(group)

        attempt(units)
        return applied, failed, restores


def _replace_tail(result: ApplyResult, seconds: float, failures: int) -> ApplyResult:
    return ApplyResult(
        result.table,
        result.ip_version,
        result.resynced,
        result.restores,
        result.chains_created,
        result.chains_updated,
        result.chains_deleted,
        result.rules_written,
        result.rules_deleted,
        result.failed,
        result.error,
        seconds,
        failures,
    )
