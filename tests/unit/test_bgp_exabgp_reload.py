"""bgp.exabgp_proc: a reload ExaBGP never performs is noticed, and ExaBGP is restarted."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from bgp.exabgp_proc import (
    RELOAD_DEADLINE,
    RELOAD_DONE,
    RELOAD_GRACE,
    RELOAD_RETRY,
    STOP_GRACE,
    ExabgpProcess,
)

# A child that survives SIGUSR1 and never reloads anything: ExaBGP stuck on a deferred reload.
STUBBORN = (
    "import signal, time; signal.signal(signal.SIGUSR1, signal.SIG_IGN); "
    "print('ready', flush=True); time.sleep(120)"
)


@pytest.fixture
def proc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ExabgpProcess:
    p = ExabgpProcess(tmp_path)
    p.write_config("process x { run /bin/true; }\n")
    starts: list[float] = []

    def start() -> None:  # the real start() runs ExaBGP: here, the stubborn child
        p.proc = subprocess.Popen([sys.executable, "-c", STUBBORN], stdout=subprocess.PIPE)
        assert p.proc.stdout is not None
        p.proc.stdout.readline()  # its SIGUSR1 handler is in place
        p.started_at = time.monotonic() - RELOAD_GRACE  # past the start-up grace
        p.reload_waiting = None
        starts.append(time.monotonic())

    monkeypatch.setattr(p, "start", start)
    p.start()
    return p


def _stop(p: ExabgpProcess) -> None:
    if p.proc is not None:
        p.proc.kill()
        p.proc.wait()


def test_reload_never_performed_restarts_exabgp(proc: ExabgpProcess) -> None:
    try:
        first = proc.proc
        assert first is not None
        proc.reload()
        now = time.monotonic()
        assert not proc.check(now + 1) and proc.proc is first  # still waiting
        t = now + RELOAD_DEADLINE + 1
        assert not proc.check(t)  # stuck: told to stop (SIGTERM), not waited for
        assert proc.stuck_reloads == 1 and proc.reload_waiting is None
        first.wait(10)
        assert not proc.check(t + 0.1)  # seen dead: restarted after the usual backoff
        assert proc.check(t + 5)
        assert proc.proc is not first and proc.proc is not None and proc.proc.poll() is None
    finally:
        _stop(proc)


def test_reload_seen_in_the_log_is_not_stuck(proc: ExabgpProcess) -> None:
    try:
        first = proc.proc
        proc.log_path.write_bytes(b"old lines\n" + RELOAD_DONE + b" (at start)\n")
        proc.reload()
        now = time.monotonic()
        assert not proc.check(now + 1)
        with open(proc.log_path, "ab") as f:
            f.write(b"configuration | " + RELOAD_DONE + b" 5.0.15\n")
        assert not proc.check(now + 2) and proc.reload_waiting is None
        assert not proc.check(now + RELOAD_DEADLINE + 1)
        assert proc.proc is first and proc.stuck_reloads == 0
    finally:
        _stop(proc)


def test_exabgp_ignoring_sigterm_is_killed(proc: ExabgpProcess) -> None:
    deaf = STUBBORN.replace(
        "signal.signal(signal.SIGUSR1, signal.SIG_IGN);",
        "signal.signal(signal.SIGUSR1, signal.SIG_IGN); "
        "signal.signal(signal.SIGTERM, signal.SIG_IGN);",
    )
    assert proc.proc is not None
    proc.proc.kill()
    proc.proc.wait()
    proc.proc = subprocess.Popen([sys.executable, "-c", deaf], stdout=subprocess.PIPE)
    try:
        assert proc.proc.stdout is not None
        proc.proc.stdout.readline()
        first = proc.proc
        proc.reload()
        t = time.monotonic() + RELOAD_DEADLINE + 1
        proc.check(t)  # SIGTERM: ignored
        time.sleep(0.2)
        assert first.poll() is None
        proc.check(t + STOP_GRACE + 1)  # SIGKILL
        assert first.poll() is not None
    finally:
        _stop(proc)


# A child that counts the SIGUSR1s it gets (one line each) and never reloads: ExaBGP 5.0
# dropping a reload signal that came while a neighbour had updates waiting.
COUNTING = (
    "import os, signal, time\n"
    "signal.signal(signal.SIGUSR1, lambda *_: os.write(1, b'usr1\\n'))\n"
    "print('ready', flush=True)\n"
    "time.sleep(120)\n"
)


def test_a_reload_not_performed_is_signalled_again(tmp_path: Path) -> None:
    p = ExabgpProcess(tmp_path)
    p.write_config("process x { run /bin/true; }\n")
    p.proc = subprocess.Popen([sys.executable, "-c", COUNTING], stdout=subprocess.PIPE)
    try:
        assert p.proc.stdout is not None
        assert p.proc.stdout.readline() == b"ready\n"
        p.started_at = time.monotonic() - RELOAD_GRACE
        p.reload()
        assert p.proc.stdout.readline() == b"usr1\n"
        now = time.monotonic()
        assert not p.check(now + 1)  # too early to ask again
        assert not p.check(now + RELOAD_RETRY + 1)  # asked again
        assert p.proc.stdout.readline() == b"usr1\n"
        assert p.reload_waiting is not None  # still counted from the first signal
        with open(p.log_path, "ab") as f:
            f.write(b"configuration | " + RELOAD_DONE + b" 5.0.15\n")
        assert not p.check(now + 2 * RELOAD_RETRY + 2)
        assert p.reload_waiting is None and p.stuck_reloads == 0
    finally:
        _stop(p)
