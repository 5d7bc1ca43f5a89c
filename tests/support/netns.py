"""Network namespaces for tests: created by the test, always deleted afterwards.

Every namespace name starts with ``tbt`` and carries the test process's PID, so parallel runs do
not collide and a leftover is easy to attribute. Processes still running inside a namespace when
it is deleted are ours (we created the namespace), and are killed by PID.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
from collections.abc import Sequence

_counter = itertools.count()


def run(cmd: Sequence[str], check: bool = True, timeout: float = 30) -> str:
    res = subprocess.run(
        list(cmd),
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip()}")
    return res.stdout


def ns_exec(ns: str, cmd: Sequence[str], check: bool = True, timeout: float = 30) -> str:
    return run(["ip", "netns", "exec", ns, *cmd], check=check, timeout=timeout)


class NetnsFactory:
    """Makes namespaces for one test and removes all of them in ``cleanup()``."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def new(self, tag: str = "ns") -> str:
        name = f"tbt{os.getpid() % 100000}-{tag}{next(_counter)}"[:60]
        run(["ip", "netns", "add", name])
        self.names.append(name)
        ns_exec(name, ["ip", "link", "set", "lo", "up"])
        return name

    def cleanup(self) -> None:
        for name in reversed(self.names):
            pids = run(["ip", "netns", "pids", name], check=False).split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            run(["ip", "netns", "del", name], check=False)
        self.names.clear()
