"""Health and datastore outages: readiness follows in-sync; with etcd gone the dataplane stays
as it is (traffic flows), and felix catches up after etcd returns. Uses an etcd of its own."""

from __future__ import annotations

import time
from pathlib import Path

from lab.etcd import EtcdServer
from tests.support.felix import ALLOW_ALL, DENY, FelixBed, gnp, wait_for
from tests.support.netns import NetnsFactory


def test_health_and_etcd_outage(
    netns: NetnsFactory, private_etcd: EtcdServer, tmp_path: Path
) -> None:
    bed = FelixBed(netns, private_etcd)
    try:
        bed.build()
        bed.put(ALLOW_ALL)
        a = bed.add_workload("a", "10.65.0.1", {"role": "client"}, profiles=("allow-all",))
        b = bed.add_workload("b", "10.65.0.2", {"role": "server"}, profiles=("allow-all",))
        ping = bed.can_ping(a.netns, b.ip)

        # etcd unreachable at start: alive but not ready, and nothing programmed.
        private_etcd.stop()
        bed.start_felix(tmp_path)
        assert wait_for(lambda: bed.health("/liveness") == 200, 10), bed.felix_log()
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            assert bed.health("/readiness") == 503, bed.felix_log()
            time.sleep(0.2)
        assert "tby-" not in bed.iptables_save()
        assert not ping()

        private_etcd.start()
        bed.wait_ready()
        bed.expect({"after in-sync: a->b": (ping, True)})
        assert bed.health("/liveness") == 200

        # etcd goes away: the dataplane stays as it is.
        before = bed.iptables_save()
        private_etcd.stop()
        time.sleep(3.0)
        bed.expect({"etcd down: a->b": (ping, True)})
        assert bed.felix is not None and bed.felix.poll() is None, bed.felix_log()
        assert bed.iptables_save().count("-A tby-") == before.count("-A tby-")
        assert bed.health("/liveness") == 200

        # etcd is back: a change made now is enforced.
        private_etcd.start()
        bed.put(gnp("deny", "role == 'server'", ingress=[DENY]))
        bed.expect({"after reconnect: deny enforced": (ping, False)}, timeout=30)
        bed.delete("GlobalNetworkPolicy", "deny")
        bed.expect({"after reconnect: deny removed": (ping, True)}, timeout=15)
        assert bed.health("/readiness") == 200
    finally:
        bed.close()
