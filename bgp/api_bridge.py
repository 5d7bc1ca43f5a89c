"""The API process ExaBGP runs: a pipe between ExaBGP and the tabby-bgp agent.

Role: ExaBGP starts this program (``process tabby-api { run ... }``), writes JSON events and
command acknowledgements to its stdin and reads commands from its stdout. The bridge connects
to the agent's unix socket and copies lines both ways, so the agent can restart without ExaBGP
noticing a missing reader, and ExaBGP can restart without the agent losing its state.
Invariants: every line ExaBGP writes is read at once (ExaBGP stalls, sessions included, when its
API pipe fills: see FACTS.md); when either side closes, the bridge exits, and ExaBGP (run with
``exabgp_api_terminate=true``) exits too, so the agent's supervisor restarts it cleanly.
Deliberately tiny and dependency-free: it imports nothing of tabby.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time


def _connect(path: str, timeout: float) -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            return sock
        except OSError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: python -m bgp.api_bridge SOCKET", file=sys.stderr)
        return 2
    try:
        sock = _connect(sys.argv[1], 30.0)
    except OSError as exc:
        print(f"tabby-api: cannot reach the agent at {sys.argv[1]}: {exc}", file=sys.stderr)
        return 1

    def exabgp_to_agent() -> None:
        stdin = sys.stdin.buffer
        try:
            for line in iter(stdin.readline, b""):
                sock.sendall(line)
        except OSError:
            pass
        os._exit(0)  # ExaBGP closed our stdin: it is going away

    threading.Thread(target=exabgp_to_agent, daemon=True).start()
    out = sys.stdout.buffer
    reader = sock.makefile("rb")
    try:
        for line in iter(reader.readline, b""):
            out.write(line)
            out.flush()
    except OSError:
        pass
    os._exit(1)  # the agent went away: let ExaBGP exit, the agent will start a new one


if __name__ == "__main__":
    sys.exit(main())
