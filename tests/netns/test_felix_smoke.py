"""First end-to-end check of felix: real etcd, felix in a node namespace, real packets."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.etcd import EtcdServer
from tests.support.felix import FelixBed, wait_for
from tests.support.netns import NetnsFactory

ALLOW_ALL_PROFILE = {
    "apiVersion": "projectcalico.org/v3",
    "kind": "Profile",
    "metadata": {"name": "allow-all"},
    "spec": {"ingress": [{"action": "Allow"}], "egress": [{"action": "Allow"}]},
}


@pytest.fixture
def bed(netns: NetnsFactory, etcd_server: EtcdServer, etcd_endpoint: str) -> Iterator[FelixBed]:
    b = FelixBed(netns, etcd_server)
    b.build()
    try:
        yield b
    finally:
        b.close()


def test_workloads_reach_each_other_and_policy_denies(bed: FelixBed, tmp_path: Path) -> None:
    bed.put(ALLOW_ALL_PROFILE)
    w1 = bed.add_workload("w1", "10.65.0.1", {"app": "a"}, profiles=("allow-all",))
    w2 = bed.add_workload("w2", "10.65.0.2", {"app": "b"}, profiles=("allow-all",))
    bed.start_felix(tmp_path)
    bed.wait_ready()
    assert wait_for(lambda: bed.ping(w1.netns, w2.ip)), bed.felix_log()
    assert bed.ping(w2.netns, w1.ip)
    bed.put(
        {
            "apiVersion": "projectcalico.org/v3",
            "kind": "GlobalNetworkPolicy",
            "metadata": {"name": "deny-to-b"},
            "spec": {
                "selector": "app == 'b'",
                "ingress": [{"action": "Deny"}],
                "types": ["Ingress"],
            },
        }
    )
    assert wait_for(lambda: not bed.ping(w1.netns, w2.ip, wait=0.5)), bed.felix_log()
    assert bed.ping(w2.netns, w1.ip)
