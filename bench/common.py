"""Small helpers the benchmarks share: running commands (optionally inside a namespace) and
waiting for a condition."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Any


def run(
    argv: Sequence[str], *, input_text: str | None = None, check: bool = True, timeout: float = 300
) -> str:
    """Run a command, return its stdout; raise with its stderr when ``check`` and it fails."""
    res = subprocess.run(
        list(argv),
        input=input_text,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        stdin=None if input_text is not None else subprocess.DEVNULL,
    )
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:8])} failed ({res.returncode}): {res.stderr[:500]}")
    return res.stdout


def nsrun(ns: str, argv: Sequence[str], **kw: Any) -> str:
    return run(["ip", "netns", "exec", ns, *argv], **kw)


def wait_for(pred: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return pred()
