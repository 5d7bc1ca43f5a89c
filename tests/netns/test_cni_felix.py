"""CNI-created workloads on a felix node: real packets flow when policy allows, not when it denies.

The node, its uplink, etcd (bridged into the node) and felix come from ``tests.support.felix``'s
``FelixBed``; the workloads are created by ``tabby-cni`` run as a runtime would, not by the bed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.etcd import EtcdServer
from tests.netns.test_cni_harness import CniRuntime, ip_pool, write_wrappers
from tests.support.felix import ALLOW_ALL, DENY, FelixBed, gnp, wait_for
from tests.support.netns import NetnsFactory

pytestmark = [pytest.mark.netns, pytest.mark.etcd, pytest.mark.slow]


@pytest.fixture
def bed(netns: NetnsFactory, etcd_server: EtcdServer, etcd_endpoint: str) -> Iterator[FelixBed]:
    b = FelixBed(netns, etcd_server)
    b.build()
    try:
        yield b
    finally:
        b.close()


def test_cni_workloads_ping_when_allowed_and_not_when_denied(bed: FelixBed, tmp_path: Path) -> None:
    bed.put(ALLOW_ALL)
    bed.put(ip_pool())
    rt = CniRuntime(bed.node, write_wrappers(tmp_path / "bin"))
    bed.start_felix(tmp_path)
    bed.wait_ready()

    def conf(app: str) -> dict[str, object]:
        return {
            "cniVersion": "1.0.0",
            "name": "net1",
            "type": "tabby",
            "etcd_endpoints": "http://127.0.0.1:2379",
            "nodename": bed.node_name,
            "ipam": {"type": "tabby-ipam"},
            "labels": {"app": app},
            "profiles": ["allow-all"],
        }

    workloads = {}
    for i, app in enumerate(("a", "b")):
        ns = bed.netns.new(f"w{app}")
        cid = f"felixcni{i}"
        out = rt.exec(conf(app), "ADD", cid, f"/run/netns/{ns}", args=f"K8S_POD_NAME=pod-{app}")
        result = out.ok()
        workloads[app] = (ns, result["ips"][0]["address"].split("/")[0], cid)

    (ns_a, ip_a, _), (ns_b, ip_b, cid_b) = workloads["a"], workloads["b"]
    assert wait_for(lambda: bed.ping(ns_a, ip_b), 20), bed.felix_log()
    assert bed.ping(ns_b, ip_a)

    bed.put(gnp("deny-to-b", "app == 'b'", ingress=[DENY]))
    assert wait_for(lambda: not bed.ping(ns_a, ip_b, wait=0.5), 20), bed.felix_log()
    assert bed.ping(ns_b, ip_a)  # b -> a still allowed

    bed.delete("GlobalNetworkPolicy", "deny-to-b")
    assert wait_for(lambda: bed.ping(ns_a, ip_b), 20), bed.felix_log()

    # DEL b: its route and endpoint go away, so a can no longer reach it
    rt.exec(conf("b"), "DEL", cid_b, f"/run/netns/{ns_b}", args="K8S_POD_NAME=pod-b").ok()
    assert wait_for(lambda: not bed.ping(ns_a, ip_b, wait=0.5), 20)
    assert not any(r.get("dst") == ip_b for r in bed.routes())
