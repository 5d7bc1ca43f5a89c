"""A private etcd server process, for the lab and the test suite.

Role: start an ``etcd`` binary on free loopback ports with its own data directory, wait until it
answers, and stop it again (by the PID we started, never by pattern).
Inputs: a data directory; optionally fixed ports. Outputs: the client endpoint ``127.0.0.1:PORT``.
Invariants: only 127.0.0.1 is used; the process is always ours; ``stop()`` is idempotent and
``restart()`` keeps the data directory and the ports, so clients can reconnect to the same place.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


class EtcdError(RuntimeError):
    """The etcd server could not be started or did not become healthy."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def find_etcd_binary() -> str:
    """The etcd server binary: $TABBY_ETCD_BIN, else ``etcd`` on PATH."""
    explicit = os.environ.get("TABBY_ETCD_BIN")
    if explicit:
        return explicit
    found = shutil.which("etcd")
    if not found:
        raise EtcdError("etcd binary not found: install Debian's etcd-server or set TABBY_ETCD_BIN")
    return found


@dataclass
class EtcdServer:
    """One etcd member listening on loopback."""

    data_dir: Path
    client_port: int = field(default_factory=free_port)
    peer_port: int = field(default_factory=free_port)
    name: str = "tabby-etcd"
    log_path: Path | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout: float = 20.0) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        peer = f"http://127.0.0.1:{self.peer_port}"
        cmd = [
            find_etcd_binary(),
            "--name",
            self.name,
            "--data-dir",
            str(self.data_dir / "data"),
            "--listen-client-urls",
            self.url,
            "--advertise-client-urls",
            self.url,
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
            "--initial-cluster",
            f"{self.name}={peer}",
            "--initial-cluster-state",
            "new",
            "--max-request-bytes",
            str(8 * 1024 * 1024),
            "--quota-backend-bytes",
            str(4 * 1024 * 1024 * 1024),
            "--log-level",
            "warn",
        ]
        log_path = self.log_path or (self.data_dir / "etcd.log")
        env = dict(os.environ)
        # Debian's etcd 3.4 refuses to start on some architectures without this; harmless here.
        env.setdefault("ETCD_UNSUPPORTED_ARCH", "")
        with open(log_path, "ab") as out:
            self._proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        log.info("etcd.start pid=%s endpoint=%s", self._proc.pid, self.endpoint)
        self.wait_healthy(timeout)

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise EtcdError(f"etcd exited with {self._proc.returncode}; see {self.data_dir}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as resp:
                    body = resp.read().decode()
                    if '"true"' in body:
                        return
                    last = body
            except (urllib.error.URLError, OSError) as exc:
                last = str(exc)
            time.sleep(0.05)
        raise EtcdError(f"etcd at {self.endpoint} not healthy after {timeout}s: {last}")

    def stop(self, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
        log.info("etcd.stop pid=%s", proc.pid)

    def kill(self) -> None:
        """Stop abruptly (SIGKILL), as a crash would."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def restart(self, timeout: float = 20.0) -> None:
        self.stop()
        self.start(timeout)

    def __enter__(self) -> EtcdServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
