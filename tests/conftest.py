"""Shared fixtures: a real etcd server, and network namespaces that are always cleaned up."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from kernel.netns import REQUIRE_ENV
from lab.etcd import EtcdServer
from tests.support.netns import NetnsFactory

# Property tests run on busy 2-core CI machines: no per-example deadline (a slow example is not
# a wrong one), and no "too slow" health check; the example counts stay as each test sets them.
settings.register_profile(
    "tabby", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.load_profile("tabby")

# Kernel drivers refuse to write to the root network namespace for the whole test run.
# The value is the root namespace's inode, so agents started under `ip netns exec` (which may not
# see PID 1's namespace) can still tell whether they are in it.
os.environ[REQUIRE_ENV] = str(os.stat("/proc/self/ns/net").st_ino)


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """One etcd for the session; tests that use it get a wiped keyspace via ``etcd_endpoint``."""
    server = EtcdServer(tmp_path_factory.mktemp("etcd"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def wipe_etcd(endpoint: str) -> None:
    subprocess.run(
        ["etcdctl", "--endpoints", endpoint, "del", "", "--from-key"],
        env={**os.environ, "ETCDCTL_API": "3"},
        check=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def etcd_endpoint(etcd_server: EtcdServer) -> str:
    """``127.0.0.1:PORT`` of the shared etcd, emptied for this test."""
    etcd_server.start()  # a previous test may have stopped it
    wipe_etcd(etcd_server.endpoint)
    return etcd_server.endpoint


@pytest.fixture
def private_etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    """An etcd of this test's own, for tests that stop, restart or compact it."""
    server = EtcdServer(tmp_path / "etcd")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def netns() -> Iterator[NetnsFactory]:
    """Factory for network namespaces; all are deleted after the test, pass or fail."""
    _require_root()
    factory = NetnsFactory()
    try:
        yield factory
    finally:
        factory.cleanup()
