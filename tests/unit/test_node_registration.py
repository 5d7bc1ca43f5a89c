"""Node registration (``datastore.registration``) against the stateful in-memory etcd.

Assertions are on what the store holds (the raw JSON under the Node's key), so a test fails if
a field is lost, the prefix length is dropped, or a refused registration wrote anything.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from ipaddress import IPv4Interface
from typing import Any

import pytest
from click.testing import CliRunner

from ctl.main import cli
from datastore.client import ResourceClient
from datastore.codec import encode, resource_from_dict
from datastore.etcd import EtcdConfig
from datastore.fake import FakeEtcd
from datastore.keys import resource_key
from datastore.kinds import NODE
from datastore.registration import (
    AddressInUseError,
    Registration,
    RegistrationError,
    parse_labels,
    register_node,
    start_up_registration,
)
from datastore.schema import FrozenMap

NODE1_KEY = "/calico/resources/v3/projectcalico.org/nodes/node1"


@pytest.fixture
def etcd() -> FakeEtcd:
    return FakeEtcd()


@pytest.fixture
def client(etcd: FakeEtcd) -> ResourceClient:
    return ResourceClient(etcd.connect())


def stored(etcd: FakeEtcd, key: str = NODE1_KEY) -> dict[str, Any]:
    kv = etcd.get(key)
    assert kv is not None, f"{key} not stored"
    doc: dict[str, Any] = json.loads(kv.value)
    return doc


def put_node(
    etcd: FakeEtcd, name: str, spec: dict[str, Any], labels: dict[str, str], uid: str = ""
) -> None:
    meta: dict[str, Any] = {"name": name, "labels": labels}
    if uid:
        meta["uid"] = uid
    res = resource_from_dict(
        {
            "apiVersion": "projectcalico.org/v3",
            "kind": "Node",
            "metadata": meta,
            "spec": spec,
        }
    )
    etcd.put(resource_key(NODE, name), encode(res))


def reg(address: str, **kw: Any) -> Registration:
    return Registration(name=kw.pop("name", "node1"), address=IPv4Interface(address), **kw)


def test_creates_a_node_with_prefix_length(etcd: FakeEtcd, client: ResourceClient) -> None:
    result = register_node(
        client, reg("198.51.100.11/24", as_number=64512, labels=FrozenMap({"rack": "r1"}))
    )
    assert result.action == "created"
    doc = stored(etcd)
    assert doc["spec"]["bgp"] == {"ipv4Address": "198.51.100.11/24", "asNumber": 64512}
    assert doc["spec"]["addresses"] == [{"address": "198.51.100.11/24", "type": "CalicoNodeIP"}]
    assert doc["metadata"]["labels"] == {"rack": "r1"}
    assert doc["metadata"]["uid"]


def test_host_route_prefix_is_kept_too(etcd: FakeEtcd, client: ResourceClient) -> None:
    register_node(client, reg("203.0.113.9/32"))
    doc = stored(etcd)
    # the Node schema writes a /32 in its canonical form; decoding gives the /32 back
    assert client.get(NODE, "node1").spec.bgp.ipv4_address == IPv4Interface(  # type: ignore[attr-defined]
        "203.0.113.9/32"
    )
    assert doc["spec"]["bgp"]["ipv4Address"] in ("203.0.113.9/32", "203.0.113.9")


def test_update_keeps_other_fields(etcd: FakeEtcd, client: ResourceClient) -> None:
    put_node(
        etcd,
        "node1",
        {
            "bgp": {
                "ipv4Address": "198.51.100.11/24",
                "asNumber": 65001,
                "ipv4IPIPTunnelAddr": "10.65.3.1",
                "routeReflectorClusterID": "244.0.0.1",
            },
            "addresses": [
                {"address": "198.51.100.11/24", "type": "CalicoNodeIP"},
                {"address": "203.0.113.50", "type": "ExternalIP"},
            ],
            "orchRefs": [{"orchestrator": "k8s", "nodeName": "node1.example"}],
        },
        {"rack": "r1", "route-reflector": "true"},
        uid="0b5a1c9e-2f43-4d8e-9a57-3c1d2e4f5a6b",
    )
    before = stored(etcd)
    result = register_node(client, reg("198.51.100.12/23", labels=FrozenMap({"zone": "a"})))
    assert result.action == "updated"
    doc = stored(etcd)
    assert doc["spec"]["bgp"] == {
        "ipv4Address": "198.51.100.12/23",
        "asNumber": 65001,
        "ipv4IPIPTunnelAddr": "10.65.3.1",
        "routeReflectorClusterID": "244.0.0.1",
    }
    assert doc["spec"]["addresses"] == [
        {"address": "198.51.100.12/23", "type": "CalicoNodeIP"},
        {"address": "203.0.113.50", "type": "ExternalIP"},
    ]
    assert doc["spec"]["orchRefs"] == before["spec"]["orchRefs"]
    assert doc["metadata"]["labels"] == {"rack": "r1", "route-reflector": "true", "zone": "a"}
    assert doc["metadata"]["uid"] == "0b5a1c9e-2f43-4d8e-9a57-3c1d2e4f5a6b"


def test_same_registration_twice_writes_nothing(etcd: FakeEtcd, client: ResourceClient) -> None:
    register_node(client, reg("198.51.100.11/24"))
    revision = etcd.revision
    result = register_node(client, reg("198.51.100.11/24"))
    assert result.action == "unchanged"
    assert etcd.revision == revision


@pytest.mark.parametrize(
    "other_spec",
    [
        {"bgp": {"ipv4Address": "198.51.100.11/24"}},
        {"addresses": [{"address": "198.51.100.11", "type": "InternalIP"}]},
    ],
)
def test_refuses_an_address_another_node_has(
    etcd: FakeEtcd, client: ResourceClient, other_spec: dict[str, Any]
) -> None:
    put_node(etcd, "node7", other_spec, {})
    revision = etcd.revision
    with pytest.raises(AddressInUseError, match=r"198\.51\.100\.11 is already used by Node node7"):
        register_node(client, reg("198.51.100.11/25"))
    assert etcd.get(NODE1_KEY) is None
    assert etcd.revision == revision


def test_refusal_leaves_an_existing_node_unchanged(etcd: FakeEtcd, client: ResourceClient) -> None:
    register_node(client, reg("198.51.100.11/24"))
    register_node(client, reg("198.51.100.12/24", name="node2"))
    before = stored(etcd)
    with pytest.raises(AddressInUseError, match="Node node2"):
        register_node(client, reg("198.51.100.12/24"))
    assert stored(etcd) == before


def test_a_node_may_keep_its_own_address(etcd: FakeEtcd, client: ResourceClient) -> None:
    register_node(client, reg("198.51.100.11/24"))
    assert register_node(client, reg("198.51.100.11/26")).action == "updated"
    assert stored(etcd)["spec"]["bgp"]["ipv4Address"] == "198.51.100.11/26"


class RacingStore:
    """A real FakeKVStore client; before the first write, another writer changes the Node."""

    def __init__(self, etcd: FakeEtcd, race: Callable[[], None]) -> None:
        self._inner = etcd.connect()
        self._race: Callable[[], None] | None = race

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name in ("create", "update") and self._race is not None:
            race, self._race = self._race, None

            def wrapped(*args: Any, **kwargs: Any) -> Any:
                race()
                return attr(*args, **kwargs)

            return wrapped
        return attr


def test_concurrent_update_is_not_overwritten(etcd: FakeEtcd) -> None:
    put_node(etcd, "node1", {"bgp": {"ipv4Address": "198.51.100.11/24"}}, {"a": "1"})

    def other_writer() -> None:
        put_node(
            etcd,
            "node1",
            {"bgp": {"ipv4Address": "198.51.100.11/24", "ipv4IPIPTunnelAddr": "10.65.1.1"}},
            {"a": "1", "b": "2"},
        )

    client = ResourceClient(RacingStore(etcd, other_writer))
    result = register_node(client, reg("198.51.100.13/24"))
    assert result.action == "updated"
    doc = stored(etcd)
    assert doc["spec"]["bgp"]["ipv4IPIPTunnelAddr"] == "10.65.1.1"
    assert doc["spec"]["bgp"]["ipv4Address"] == "198.51.100.13/24"
    assert doc["metadata"]["labels"] == {"a": "1", "b": "2"}


def test_concurrent_create_becomes_an_update(etcd: FakeEtcd) -> None:
    def other_writer() -> None:
        put_node(etcd, "node1", {"bgp": {"asNumber": 65009}}, {"x": "y"})

    client = ResourceClient(RacingStore(etcd, other_writer))
    result = register_node(client, reg("198.51.100.11/24"))
    assert result.action == "updated"
    doc = stored(etcd)
    assert doc["spec"]["bgp"] == {"ipv4Address": "198.51.100.11/24", "asNumber": 65009}
    assert doc["metadata"]["labels"] == {"x": "y"}


def test_parse_labels() -> None:
    assert parse_labels("rack=r1, zone = a ,") == {"rack": "r1", "zone": "a"}
    assert parse_labels(None) == {}
    with pytest.raises(RegistrationError, match="expected key=value"):
        parse_labels("rack")


def test_tabbyctl_node_register_reports_bad_method_without_touching_etcd() -> None:
    res = CliRunner().invoke(
        cli,
        [
            "node",
            "register",
            "--name",
            "n1",
            "--ip-autodetection-method",
            "first-fund",
            "--etcd-endpoints",
            "http://127.0.0.1:1",
        ],
    )
    assert res.exit_code == 1
    assert "error: unknown IP autodetection method 'first-fund'" in res.output


# --- the agents' start-up hook (TABBY_REGISTER_NODE) -------------------------------------------

ETCD = EtcdConfig(endpoints=("http://127.0.0.1:1",))


def test_start_up_registration_off_by_default(etcd: FakeEtcd) -> None:
    revision = etcd.revision
    env = {"IP": "198.51.100.11/24"}
    assert start_up_registration("node1", ETCD, env, store_factory=etcd.connect) is None
    assert etcd.revision == revision


def test_start_up_registration_from_calico_variables(etcd: FakeEtcd) -> None:
    env = {
        "TABBY_REGISTER_NODE": "true",
        "IP": "198.51.100.11/24",
        "AS": "64513",
        "TABBY_NODE_LABELS": "route-reflector=true",
    }
    assert start_up_registration("node1", ETCD, env, store_factory=etcd.connect) is None
    doc = stored(etcd)
    assert doc["spec"]["bgp"] == {"ipv4Address": "198.51.100.11/24", "asNumber": 64513}
    assert doc["metadata"]["labels"] == {"route-reflector": "true"}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"IP": "198.51.100.7/24"}, "already used by Node node7"),
        ({"IP": "198.51.100.11/24", "AS": "six"}, "AS: expected an AS number"),
        ({"IP_AUTODETECTION_METHOD": "nope"}, "unknown IP autodetection method"),
        ({"IP": "198.51.100.11/24", "TABBY_NODE_LABELS": "bad"}, "expected key=value"),
    ],
)
def test_start_up_registration_errors(etcd: FakeEtcd, env: dict[str, str], message: str) -> None:
    put_node(etcd, "node7", {"bgp": {"ipv4Address": "198.51.100.7/24"}}, {})
    error = start_up_registration(
        "node1", ETCD, {"TABBY_REGISTER_NODE": "true", **env}, store_factory=etcd.connect
    )
    assert error is not None and message in error
    assert etcd.get(NODE1_KEY) is None


def test_start_up_registration_waits_for_etcd_then_gives_up(etcd: FakeEtcd) -> None:
    etcd.set_available(False)
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 2:
            etcd.set_available(True)  # etcd comes up during the wait

    env = {"TABBY_REGISTER_NODE": "true", "IP": "198.51.100.11/24"}
    assert (
        start_up_registration("node1", ETCD, env, wait=30, sleep=sleep, store_factory=etcd.connect)
        is None
    )
    assert sleeps == [1.0, 2.0]
    assert stored(etcd)["spec"]["bgp"]["ipv4Address"] == "198.51.100.11/24"

    etcd.set_available(False)
    error = start_up_registration(
        "node2",
        ETCD,
        {**env, "IP": "198.51.100.12/24"},
        wait=5,
        sleep=lambda s: None,
        store_factory=etcd.connect,
    )
    assert error is not None and "etcd unavailable" in error
