"""The seam between the iptables driver and the kernel: save/restore a table, pick a backend.

Role: ``IptablesBackend`` is the protocol the driver (``kernel.iptables.IptablesTable``) talks
to: ``save(table)`` returns ``iptables-save -t TABLE`` text, ``restore(table, text)`` feeds one
``iptables-restore --noflush --wait`` transaction. ``SubprocessIptablesBackend`` is the real
implementation (``iptables-{nft,legacy}-save/-restore``, ``ip6tables-...`` for IPv6), and
``detect_backend`` picks legacy or nft the way Calico does: count the rules each one shows and use
the one in use (nft when both are empty), unless configuration forces one.
Outputs/errors: ``IptablesRestoreError`` carries the table, the tool's stderr, and the failing line
number and text when the tool names one; ``IptablesSaveError`` for a failed read.
Invariants: every restore calls ``kernel.netns.guard_writes(netns)`` first and runs via
``kernel.netns.ns_argv``; save never writes; one restore is one table transaction (both backends
commit a table atomically at ``COMMIT``, measured: a failing line leaves the table unchanged).
"""

from __future__ import annotations

import logging
import re
from typing import Literal, Protocol

from kernel import proc
from kernel.netns import guard_writes, ns_argv

log = logging.getLogger(__name__)

BackendMode = Literal["nft", "legacy"]
BackendSetting = Literal["auto", "nft", "legacy"]
IpVersion = Literal[4, 6]

# "Error occurred at line: 5", "iptables-restore: line 2 failed", "line 4: CHAIN_DEL failed".
_LINE_RE = re.compile(r"\bline:? (\d+)")


class IptablesError(RuntimeError):
    """Base class of this package's iptables errors."""


class IptablesConfigError(IptablesError, ValueError):
    """Desired state that can never be written (bad chain name, bad comment, ...)."""


class IptablesSaveError(IptablesError):
    """Reading a table back failed."""


class IptablesRestoreError(IptablesError):
    """A restore transaction was rejected; nothing of it was committed."""

    def __init__(self, table: str, stderr: str, text: str) -> None:
        self.table = table
        self.stderr = stderr.strip()
        match = _LINE_RE.search(self.stderr)
        self.line: int | None = int(match.group(1)) if match else None
        lines = text.splitlines()
        self.line_text: str | None = (
            lines[self.line - 1] if self.line is not None and 0 < self.line <= len(lines) else None
        )
        super().__init__(
            f"iptables restore of table {table!r} failed at line {self.line} "
            f"({self.line_text!r}): {self.stderr}"
        )


class IptablesBackend(Protocol):
    """Reads and writes one IP version's tables."""

    def save(self, table: str, *, counters: bool = False) -> str:
        """``iptables-save -t table`` output (``-c`` adds ``[packets:bytes]`` counters)."""
        ...

    def restore(self, table: str, text: str) -> None:
        """Apply one ``--noflush`` transaction; raise ``IptablesRestoreError`` if rejected."""
        ...


def _tool(mode: BackendMode, ip_version: IpVersion, verb: Literal["save", "restore"]) -> str:
    base = "iptables" if ip_version == 4 else "ip6tables"
    return f"{base}-{mode}-{verb}"


class SubprocessIptablesBackend:
    """The real backend: runs the save/restore tools of one backend mode inside ``netns``."""

    def __init__(
        self,
        mode: BackendMode,
        ip_version: IpVersion = 4,
        netns: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.mode: BackendMode = mode
        self.ip_version: IpVersion = ip_version
        self.netns = netns
        self.timeout = timeout

    def save(self, table: str, *, counters: bool = False) -> str:
        argv = [_tool(self.mode, self.ip_version, "save"), "-t", table]
        if counters:
            argv.append("-c")
        try:
            res = proc.run(ns_argv(self.netns, argv), timeout=self.timeout)
        except proc.ProcError as exc:
            raise IptablesSaveError(f"iptables save of table {table!r}: {exc}") from exc
        if not res.ok:
            raise IptablesSaveError(
                f"iptables save of table {table!r} failed ({res.returncode}): {res.stderr.strip()}"
            )
        return res.stdout

    def restore(self, table: str, text: str) -> None:
        guard_writes(self.netns)
        argv = [_tool(self.mode, self.ip_version, "restore"), "--noflush", "--wait"]
        try:
            res = proc.run(ns_argv(self.netns, argv), input_text=text, timeout=self.timeout)
        except proc.ProcError as exc:
            raise IptablesRestoreError(table, str(exc), text) from exc
        if not res.ok:
            raise IptablesRestoreError(table, res.stderr, text)


def count_rules(save_text: str) -> int:
    """Number of rules (``-A`` lines) in ``iptables-save`` output."""
    return sum(1 for line in save_text.splitlines() if line.startswith("-A "))


def detect_backend(
    netns: str | None = None, setting: BackendSetting = "auto", timeout: float = 10.0
) -> BackendMode:
    """The backend to use: forced by ``setting``, else the one holding more rules (ties: nft).

    Both IP versions are counted, as another program may only use IPv6. A tool that is missing
    or fails counts as zero rules.
    """
    if setting != "auto":
        return setting
    counts: dict[BackendMode, int] = {"nft": 0, "legacy": 0}
    modes: tuple[BackendMode, ...] = ("nft", "legacy")
    versions: tuple[IpVersion, ...] = (4, 6)
    for mode in modes:
        for version in versions:
            argv = ns_argv(netns, [_tool(mode, version, "save")])
            try:
                res = proc.run(argv, timeout=timeout)
            except proc.ProcError:
                continue
            if res.ok:
                counts[mode] += count_rules(res.stdout)
    chosen: BackendMode = "legacy" if counts["legacy"] > counts["nft"] else "nft"
    log.info(
        "iptables.backend_detected netns=%s nft_rules=%d legacy_rules=%d chosen=%s",
        netns,
        counts["nft"],
        counts["legacy"],
        chosen,
    )
    return chosen
