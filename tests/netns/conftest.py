"""Fixtures for the felix netns tests: one FelixBed per test, always torn down."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lab.etcd import EtcdServer
from tests.support.felix import FelixBed
from tests.support.netns import NetnsFactory


@pytest.fixture
def felix_bed(
    netns: NetnsFactory, etcd_server: EtcdServer, etcd_endpoint: str
) -> Iterator[FelixBed]:
    bed = FelixBed(netns, etcd_server)
    try:
        bed.build()
        yield bed
    finally:
        bed.close()
