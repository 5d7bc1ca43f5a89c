"""A tiny subprocess runner for kernel drivers: argv in, captured text out, always with a timeout.

Role: the one place kernel code starts processes (``iptables-*-save/-restore``, ``ipset``).
Inputs: an argv list (already wrapped by ``kernel.netns.ns_argv`` when a namespace is wanted),
optional stdin text, a timeout in seconds.
Outputs: a ``ProcResult`` (return code, stdout, stderr, wall time). A non-zero exit is *not* an
exception here: callers decide what a failure means for them.
Invariants: never uses a shell; stdin is ``/dev/null`` unless input is given (a child can never
block on our terminal); a process that exceeds its timeout is killed and ``ProcTimeoutError``
raised; a missing executable raises ``ProcNotFoundError``. Both derive from ``ProcError``.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass


class ProcError(RuntimeError):
    """A process could not be run to completion (not found, or timed out)."""


class ProcNotFoundError(ProcError):
    """The executable does not exist."""


class ProcTimeoutError(ProcError):
    """The process ran past its timeout and was killed."""


@dataclass(frozen=True, slots=True)
class ProcResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def run(argv: Sequence[str], *, input_text: str | None = None, timeout: float = 30.0) -> ProcResult:
    """Run ``argv`` to completion and capture its output as text."""
    args = tuple(argv)
    start = time.perf_counter()
    try:
        res = subprocess.run(
            args,
            input=input_text,
            stdin=subprocess.DEVNULL if input_text is None else None,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise ProcNotFoundError(f"command not found: {args[0]}") from exc
    except subprocess.TimeoutExpired as exc:
        raise ProcTimeoutError(f"command timed out after {timeout:.1f}s: {' '.join(args)}") from exc
    return ProcResult(args, res.returncode, res.stdout, res.stderr, time.perf_counter() - start)
