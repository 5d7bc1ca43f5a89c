"""Which network namespace kernel writes go to, and the guard that keeps tests out of the root one.

Role: every kernel driver takes ``netns: str | None``. ``None`` means "the namespace this process
is in" (production: the agent runs inside its node, e.g. under ``ip netns exec``); a name means a
namespace under /run/netns (tests and the lab drive drivers from outside).
Invariant: when ``TABBY_REQUIRE_NETNS`` is set in the environment (the test suite sets it to the
inode number of the machine's root network namespace), a driver that would write to the
*current* namespace refuses if that is the root namespace. When ``TABBY_EXPECT_NETNS=NAME`` is
set (the lab and tests set it for agents they start under ``ip netns exec NAME``), it refuses
unless the current namespace is exactly /run/netns/NAME. Call ``guard_writes(netns)`` before any
kernel write.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

REQUIRE_ENV = "TABBY_REQUIRE_NETNS"
EXPECT_ENV = "TABBY_EXPECT_NETNS"


class NamespaceGuardError(RuntimeError):
    """A kernel write would have gone to the root network namespace while a test forbids it."""


def netns_inode(path: str = "/proc/self/ns/net") -> int:
    return os.stat(path).st_ino


def in_root_netns() -> bool:
    """True when this process shares the root network namespace.

    The root namespace is PID 1's, or, when ``TABBY_REQUIRE_NETNS`` holds an inode number (set by
    a test run in the root namespace), that one: PID 1 is not always visible (``ip netns exec``
    children may not stat /proc/1/ns/net).
    """
    recorded = os.environ.get(REQUIRE_ENV, "")
    if recorded.isdigit():
        return netns_inode() == int(recorded)
    try:
        return netns_inode() == netns_inode("/proc/1/ns/net")
    except PermissionError:  # cannot see PID 1's namespace: assume the worst
        return True


def guard_writes(netns: str | None) -> None:
    """Raise NamespaceGuardError if a write to ``netns`` is forbidden right now."""
    if netns is not None:
        if not os.path.exists(f"/run/netns/{netns}"):
            raise NamespaceGuardError(f"network namespace {netns!r} does not exist")
        return
    expected = os.environ.get(EXPECT_ENV)
    if expected:
        try:
            want = netns_inode(f"/run/netns/{expected}")
        except OSError as exc:
            raise NamespaceGuardError(f"{EXPECT_ENV}={expected}: {exc}") from None
        if netns_inode() != want:
            raise NamespaceGuardError(
                f"refusing a kernel write: this process is not in network namespace {expected!r}"
            )
        return
    if os.environ.get(REQUIRE_ENV) and in_root_netns():
        raise NamespaceGuardError(
            f"refusing a kernel write in the root network namespace ({REQUIRE_ENV} is set)"
        )


def ns_argv(netns: str | None, argv: Sequence[str]) -> list[str]:
    """``argv`` to run inside ``netns`` (unchanged for the current namespace)."""
    if netns is None:
        return list(argv)
    return ["ip", "netns", "exec", netns, *argv]
