"""Conntrack cleanup: delete the connection-tracking entries to and from given IPs.

Role: when a workload IP goes away (or changes owner) felix deletes its conntrack entries so that
established flows do not keep using stale NAT/accept decisions. Input: a namespace and IPs;
output: how many entries were deleted and any errors.

All IPs go to one shell process (``sh -c`` run via ``ns_argv``), which runs
``conntrack -D [-f ipv6] -s IP`` and ``-D -d IP`` for each and reports every exit code: one
process spawn per batch, not per IP. ``conntrack`` exits 1 when nothing matched; that is success.

Invariants: calls ``guard_writes`` before deleting; one failing IP does not stop the others.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass

from kernel.netns import guard_writes
from kernel.nl import run_cmd

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_MARK = "@@tabby-rc"
_DELETED = re.compile(r"(\d+) flow entries have been deleted")


@dataclass(frozen=True, slots=True)
class ConntrackResult:
    deleted: int = 0
    errors: tuple[str, ...] = ()
    duration: float = 0.0


def delete_entries(netns: str | None, ips: Iterable[IPAddress]) -> ConntrackResult:
    """Delete every conntrack entry whose original source or destination is one of ``ips``."""
    start = time.perf_counter()
    commands: list[tuple[str, str]] = []
    for ip in sorted(set(ips), key=lambda a: (a.version, int(a))):
        fam = " -f ipv6" if ip.version == 6 else ""
        for direction in ("-s", "-d"):
            commands.append((f"{direction} {ip}", f"conntrack -D{fam} {direction} {ip}"))
    if not commands:
        return ConntrackResult()
    guard_writes(netns)
    script = "".join(f'{cmd} 2>&1 >/dev/null; echo "{_MARK}=$?"\n' for _, cmd in commands)
    res = run_cmd(netns, ["sh", "-c", script])
    deleted = 0
    errors: list[str] = []
    chunks = res.stdout.split(f"{_MARK}=")
    # chunk i holds the output of command i; chunk i+1 starts with command i's exit code
    for i, (what, _) in enumerate(commands):
        if i + 1 >= len(chunks):
            errors.append(f"conntrack {what}: no result ({res.stderr.strip()})")
            continue
        output = chunks[i].split("\n", 1)[1] if i else chunks[i]
        code_text = chunks[i + 1].split("\n", 1)[0].strip()
        m = _DELETED.search(output)
        count = int(m.group(1)) if m else 0
        deleted += count
        if code_text == "0" or (code_text == "1" and m is not None and count == 0):
            continue
        errors.append(f"conntrack {what}: exit {code_text}: {output.strip()}")
    for err in errors:
        log.warning("conntrack.delete_failed netns=%s %s", netns, err)
    duration = time.perf_counter() - start
    log.info(
        "conntrack.delete netns=%s ips=%d deleted=%d errors=%d ms=%.1f",
        netns,
        len(commands) // 2,
        deleted,
        len(errors),
        duration * 1000,
    )
    return ConntrackResult(deleted, tuple(errors), duration)
