"""Small helpers the benchmarks share: running commands (optionally inside a namespace) and
waiting for a condition."""

from __future__ import annotations

import io
import pstats
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
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


def profile_summary(prof: Path, top: int = 35) -> str:
    """The top ``top`` functions of a cProfile dump, by own time, then by cumulative time."""
    buf = io.StringIO()
    st = pstats.Stats(str(prof), stream=buf)
    st.sort_stats("tottime").print_stats(top)
    st.sort_stats("cumulative").print_stats(top)
    return buf.getvalue()


def write_results(
    text: str,
    out: Path,
    prof: Path | None,
    profile_out: Path,
    profile_title: str,
    tmp: Path,
    keep_tmp: bool,
    top: int = 35,
) -> None:
    """End of a benchmark: the report to ``out``, or with ``prof`` (a profiling run) the report
    and the profile summary to ``profile_out`` instead; the scratch directory removed or kept."""
    if prof is not None:
        if wait_for(prof.exists, 10):
            summary = profile_summary(prof, top)
            print(summary)
            profile_out.write_text(f"# {profile_title}\n\n{text}\n{summary}")
            print(f"profile written to {profile_out}")
    else:
        out.write_text(text)
        print(f"written to {out}")
    if not keep_tmp:
        subprocess.run(["rm", "-rf", str(tmp)], check=False)
    else:
        print(f"kept {tmp}")
