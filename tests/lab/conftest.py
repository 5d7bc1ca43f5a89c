"""Fixtures for the lab suite: labs with unique names that are always torn down.

``make_lab(prefix)`` returns a ``Lab`` with a fresh name (``<prefix><hex>``, at most 8
alphanumerics, so namespaces are ``tl<name>-...``); the test calls ``lab.up(...)``. Whatever
happens, teardown runs ``tabby-lab down`` for every lab the test made, then checks that no
namespace with the lab's prefix and no process naming its state directory is left (a failure
there is reported as a test error). The state directory (logs) is removed after a passing test
and kept, with its path printed, after a failing one.
``background`` starts probes (``ping``, ``ip monitor``) in lab namespaces; each is stopped by its
PID at teardown (before the lab goes down).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest

from tests.lab.labdriver import Background, Lab, processes_mentioning

REQUIRED = ("/usr/sbin/bird", "/usr/sbin/birdc", "/usr/lib/frr/bgpd", "/usr/lib/frr/zebra")


_FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call":
        item.stash[_FAILED] = report.failed
    return report


def _netns_with_prefix(prefix: str) -> list[str]:
    out = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=False, timeout=10
    ).stdout
    return [ln.split()[0] for ln in out.splitlines() if ln.startswith(prefix)]


@pytest.fixture
def make_lab(request: pytest.FixtureRequest) -> Iterator[Callable[[str], Lab]]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    made: list[Lab] = []

    def factory(prefix: str) -> Lab:
        assert prefix.isalpha() and len(prefix) <= 4
        lab = Lab(f"{prefix}{secrets.token_hex(2)}")
        assert not lab.state.exists() and not _netns_with_prefix(f"tl{lab.name}-")
        made.append(lab)
        return lab

    yield factory

    problems = []
    for lab in made:
        if lab.up_done:
            lab.down()
        left_ns = _netns_with_prefix(f"tl{lab.name}-")
        left_procs = processes_mentioning(str(lab.state) + "/")
        if left_ns or left_procs:
            problems.append(f"lab {lab.name} left namespaces {left_ns} processes {left_procs}")
        failed = request.node.stash.get(_FAILED, True)
        if failed or problems:
            print(f"\nlab {lab.name}: state and logs kept in {lab.state}")
        else:
            shutil.rmtree(lab.state, ignore_errors=True)
    assert not problems, "; ".join(problems)


@pytest.fixture
def background(tmp_path: Path) -> Iterator[Background]:
    bg = Background(workdir=tmp_path)
    try:
        yield bg
    finally:
        bg.stop_all()


@pytest.fixture
def routing_daemons() -> None:
    missing = [p for p in REQUIRED if not Path(p).exists()]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)}")
