"""Supervision of the ExaBGP child: configuration file, start, reload, stop.

Role: own one ExaBGP process for the agent. The configuration is written atomically into the
agent's state directory; a changed peer set is applied with a reload (SIGUSR1: ExaBGP keeps the
sessions whose configuration did not change); a dead ExaBGP is restarted with backoff. ExaBGP
5.0 drops a SIGUSR1 that arrives while a neighbour has updates waiting to be sent (it re-arms
its signal before that check, measured in a lab: a neighbour that is down keeps the updates
announced since, until its next failed connection attempt resets them), so a reload not
performed ``RELOAD_RETRY`` after the signal (no "performing reload" in its log since) is
signalled again; one still not performed ``RELOAD_DEADLINE`` after the first signal is treated
as stuck: ExaBGP is restarted, so that it runs the current configuration (peers keep our
routes through graceful restart).
Invariants: the only ExaBGP process ever signalled is the one this object started (by PID), or
one recorded in our own PID file whose command line names our configuration file (a leftover of
a previous agent run); ExaBGP's log goes to a file in the state directory.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import signal
import subprocess
import sys
import time
from pathlib import Path

from bgp.exabgp_config import render_env

log = logging.getLogger(__name__)
RELOAD_GRACE = 5.0  # seconds after a start before SIGUSR1 is safe
RELOAD_DEADLINE = 60.0  # seconds for ExaBGP to perform a reload it was signalled for
RELOAD_RETRY = 5.0  # seconds between signals while a reload has not been performed
RELOAD_DONE = b"performing reload of exabgp"  # ExaBGP's log line when it reloads
STOP_GRACE = 10.0  # seconds between SIGTERM and SIGKILL for an ExaBGP being replaced


def _current_user() -> str:
    """The name of the user this agent runs as (ExaBGP keeps it: see ``start``)."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return "root" if os.getuid() == 0 else "nobody"


def exabgp_argv(config: Path) -> list[str]:
    """ExaBGP with this interpreter, through ``bgp.exabgp_launch`` (it removes a per-neighbour
    deep copy from ExaBGP's announcement path, see there)."""
    return [sys.executable, "-m", "bgp.exabgp_launch", str(config)]


class ExabgpProcess:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.config_path = state_dir / "exabgp.conf"
        self.pid_path = state_dir / "exabgp.pid"
        self.log_path = state_dir / "exabgp.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.config_text = ""
        self.restarts = 0
        self.backoff = 0.5
        self.next_start = 0.0
        self.started_at = 0.0
        self.reload_pending = False
        self.started_config = ""  # the configuration the running ExaBGP started with
        # first SIGUSR1 not yet performed: (monotonic time sent, log size at that moment)
        self.reload_waiting: tuple[float, int] | None = None
        self._last_reload_signal = 0.0
        self.stuck_reloads = 0
        self.terminating_since: float | None = None  # SIGTERM sent after a stuck reload

    def write_config(self, text: str) -> bool:
        """Write the configuration atomically; True when it changed."""
        if text == self.config_text and self.config_path.exists():
            return False
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.config_path)
        self.config_text = text
        return True

    def kill_leftover(self) -> None:
        """Stop an ExaBGP that a previous run of this agent left behind (by its PID file)."""
        try:
            pid = int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return
        if str(self.config_path).encode() not in cmdline:
            return
        log.info("exabgp.kill_leftover pid=%d", pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        for _ in range(50):
            if not Path(f"/proc/{pid}").exists():
                break
            time.sleep(0.1)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            **{k: v for k, v in os.environ.items() if k.startswith(("TABBY_", "PYTHON"))},
            **render_env(log_destination="stdout"),
            # ExaBGP always drops to ``exabgp.daemon.user`` (default ``nobody``) once it has
            # bound its sockets; ``daemon_drop=false`` only delays that until the API process
            # has started. A later reload (SIGUSR1) then re-checks the ``run`` program as that
            # user: ``nobody`` cannot reach a virtualenv under /root, the reload fails, and the
            # failed reload leaves ExaBGP without its API process table, so the next session
            # loss crashes it (KeyError 'tabby-api') and every session of the node flaps.
            # Staying the agent's own user keeps reloads (and API respawns) working.
            "exabgp_daemon_user": _current_user(),
        }
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                exabgp_argv(self.config_path),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self.state_dir,
                start_new_session=True,
            )
        self.pid_path.write_text(str(self.proc.pid))
        self.started_at = time.monotonic()
        self.reload_pending = False  # a fresh ExaBGP reads the current file
        self.reload_waiting = None
        self.terminating_since = None
        self.started_config = self.config_text
        log.info("exabgp.start pid=%d config=%s", self.proc.pid, self.config_path)

    def reload(self) -> None:
        """Ask ExaBGP to re-read its configuration (SIGUSR1). Within the first seconds after a
        start ExaBGP has not installed its signal handlers yet (SIGUSR1 would kill it), so the
        reload is deferred until ``RELOAD_GRACE`` has passed (``check`` sends it)."""
        if not self.running:
            return
        if time.monotonic() - self.started_at < RELOAD_GRACE:
            self.reload_pending = True
            return
        assert self.proc is not None
        log.info("exabgp.reload pid=%d", self.proc.pid)
        self.reload_pending = False
        if self.reload_waiting is None:
            self.reload_waiting = (time.monotonic(), self._log_size())
        self._last_reload_signal = time.monotonic()
        self.proc.send_signal(signal.SIGUSR1)

    def _log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def _reload_performed(self, offset: int) -> bool:
        """ExaBGP logged a reload after ``offset`` (its log is ours: a file in the state dir)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return RELOAD_DONE in f.read()
        except OSError:
            return False

    def _check_reload(self, now: float) -> None:
        if self.reload_waiting is None or not self.running:
            return
        sent, offset = self.reload_waiting
        if self._reload_performed(offset):
            self.reload_waiting = None
            return
        assert self.proc is not None
        if now - sent < RELOAD_DEADLINE:
            if now - self._last_reload_signal >= RELOAD_RETRY:
                log.info("exabgp.reload_again pid=%d waited_s=%.0f", self.proc.pid, now - sent)
                self._last_reload_signal = now
                self.proc.send_signal(signal.SIGUSR1)
            return
        self.stuck_reloads += 1
        log.warning(
            "exabgp.reload_stuck pid=%d waited_s=%.0f action=restart", self.proc.pid, now - sent
        )
        # Not waited for here (the agent's loop must keep running): once it has exited,
        # ``check`` restarts it like any ExaBGP that died; SIGKILL if SIGTERM is not enough.
        self.proc.send_signal(signal.SIGTERM)
        self.terminating_since = now
        self.reload_waiting = None

    def check(self, now: float) -> bool:
        """Restart a dead ExaBGP when its backoff has passed; True when (re)started now."""
        if (
            self.terminating_since is not None
            and self.proc is not None
            and self.proc.poll() is None
            and now - self.terminating_since > STOP_GRACE
        ):
            log.warning("exabgp.kill pid=%d (SIGTERM not enough)", self.proc.pid)
            self.proc.kill()
            self.proc.wait(5)
        if self.proc is not None and self.proc.poll() is not None:
            log.warning("exabgp.exited code=%s restarts=%d", self.proc.returncode, self.restarts)
            self.proc = None
            self.next_start = now + self.backoff
            self.backoff = min(self.backoff * 2, 10.0)
        if self.proc is None and now >= self.next_start and self.config_path.exists():
            self.restarts += 1
            self.start()
            return True
        if self.running and now - self.next_start > 30:
            self.backoff = 0.5
        if self.reload_pending and self.running and now - self.started_at >= RELOAD_GRACE:
            self.reload()
        self._check_reload(now)
        return False

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.pid_path.unlink(missing_ok=True)
