"""The real ExaBGP logs the line ``bgp.exabgp_proc`` watches for when it performs a reload."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bgp.exabgp_proc import RELOAD_GRACE, ExabgpProcess

pytestmark = pytest.mark.netns


def test_exabgp_logs_what_the_check_looks_for(tmp_path: Path) -> None:
    """ExaBGP with no neighbour (it opens no socket, touches no network) and one API process:
    a SIGUSR1 reload is seen as performed, not as stuck."""
    p = ExabgpProcess(tmp_path)
    p.write_config("process tabby-api {\n    run /bin/cat;\n    encoder json;\n}\n")
    p.start()
    try:
        time.sleep(RELOAD_GRACE + 0.5)
        assert p.running, p.log_path.read_text()[-2000:]
        p.reload()
        deadline = time.monotonic() + 20
        while p.reload_waiting is not None and time.monotonic() < deadline:
            p.check(time.monotonic())
            time.sleep(0.2)
        assert p.reload_waiting is None, p.log_path.read_text()[-2000:]
        assert p.stuck_reloads == 0
    finally:
        p.stop()
