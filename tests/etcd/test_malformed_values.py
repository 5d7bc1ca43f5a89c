"""Malformed values written straight into etcd are skipped with one log line each and never stop
the syncer or the reading of anything else."""

from __future__ import annotations

import json
import logging

import pytest

from datastore.decoder import ResourceDecoder
from datastore.etcd import EtcdConfig, EtcdKVStore
from datastore.keys import resource_key
from datastore.syncer import Syncer

ROOT = "/calico/resources/v3/projectcalico.org/"


def _gnp(name: str, **spec: object) -> bytes:
    return json.dumps(
        {
            "kind": "GlobalNetworkPolicy",
            "apiVersion": "projectcalico.org/v3",
            "metadata": {"name": name},
            "spec": {"selector": "all()", **spec},
        }
    ).encode()


BAD = {
    "not-json": b"{this is not json",
    "wrong-kind": json.dumps(
        {
            "kind": "IPPool",
            "apiVersion": "projectcalico.org/v3",
            "metadata": {"name": "wrong-kind"},
            "spec": {"cidr": "10.0.0.0/16"},
        }
    ).encode(),
    "no-spec": json.dumps(
        {
            "kind": "GlobalNetworkPolicy",
            "apiVersion": "projectcalico.org/v3",
            "metadata": {"name": "no-spec"},
        }
    ).encode(),
    "unknown-field": _gnp("unknown-field", colour="blue"),
    "bad-selector": _gnp("bad-selector", selector="app == "),
    "huge": _gnp(
        "huge", ingress=[{"action": "Allow", "metadata": {"annotations": {"x": "y" * 1_400_000}}}]
    ),
    "binary": b"\xff\xfe\x00\x01" * 100,
}


def test_malformed_values_are_skipped_and_logged_once(
    etcd_endpoint: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = EtcdKVStore(EtcdConfig(endpoints=(etcd_endpoint,)))
    good = [f"good-{i}" for i in range(5)]
    for name in good:
        store.put(resource_key("GlobalNetworkPolicy", name), _gnp(name))
    for name, value in BAD.items():
        store.put(ROOT + "globalnetworkpolicies/" + name, value)
    caplog.set_level(logging.WARNING, logger="datastore.decoder")

    syncer = Syncer(
        lambda: EtcdKVStore(EtcdConfig(endpoints=(etcd_endpoint,))),
        [ROOT + "globalnetworkpolicies/"],
    )
    decoder = ResourceDecoder()
    valid: dict[str, object] = {}
    invalid: set[str] = set()
    syncer.start()
    try:
        in_sync = False
        while not in_sync:
            batch = syncer.next_batch(10)
            for upd in batch.updates:
                ru = decoder.decode(upd)
                assert ru is not None
                if ru.resource is not None:
                    valid[ru.name] = ru.resource
                elif ru.invalid:
                    invalid.add(ru.name)
            in_sync = batch.in_sync
        # A valid write after the bad ones still flows, and a good key turned bad disappears.
        store.put(resource_key("GlobalNetworkPolicy", "late"), _gnp("late"))
        store.put(resource_key("GlobalNetworkPolicy", "good-0"), b"garbage")
        seen_late = False
        for _ in range(50):
            for upd in syncer.next_batch(0.2).updates:
                ru = decoder.decode(upd)
                assert ru is not None
                if ru.resource is not None:
                    valid[ru.name] = ru.resource
                else:
                    valid.pop(ru.name, None)
                    invalid.add(ru.name)
                seen_late = seen_late or ru.name == "late"
            if seen_late and "good-0" not in valid:
                break
        assert syncer.status.value == "in-sync"
    finally:
        syncer.stop()
        store.close()

    assert set(valid) == {*good[1:], "late"}
    assert invalid == {*BAD, "good-0"}
    # One warning per bad key and revision, naming the key.
    warnings = [r.getMessage() for r in caplog.records if "decoder.invalid" in r.getMessage()]
    for name in BAD:
        assert sum(f"globalnetworkpolicies/{name} " in w for w in warnings) == 1, name
    assert any("spec.colour" in w or "colour" in w for w in warnings)
