"""CNI result and error JSON shapes, per cniVersion; names (veth, handle, WorkloadEndpoint)."""

from __future__ import annotations

import io
import json
from ipaddress import ip_address, ip_interface, ip_network

import pytest

from cni.config import SUPPORTED_VERSIONS
from cni.errors import INVALID_CONFIG, CNIError
from cni.names import handle_id, host_veth_name, wep_name
from cni.result import Interface, IPConfig, Result, Route, parse_result
from cni.runner import run

RESULT = Result(
    interfaces=(
        Interface("tbw0123456789ab", "ee:ee:ee:ee:ee:ee"),
        Interface("eth0", "02:11:22:33:44:55", "/run/netns/c1"),
    ),
    ips=(
        IPConfig(ip_interface("10.65.0.5/32"), 1),
        IPConfig(ip_interface("fd00:65::5/128"), 1),
    ),
    routes=(
        Route(ip_network("0.0.0.0/0"), ip_address("169.254.1.1")),
        Route(ip_network("::/0"), ip_address("fe80::ecee:eeff:feee:eeee")),
    ),
    dns={"nameservers": ["10.96.0.10"]},
)


def test_result_1_0_0_shape() -> None:
    d = RESULT.to_dict("1.0.0")
    assert d == {
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": "tbw0123456789ab", "mac": "ee:ee:ee:ee:ee:ee"},
            {"name": "eth0", "mac": "02:11:22:33:44:55", "sandbox": "/run/netns/c1"},
        ],
        "ips": [
            {"address": "10.65.0.5/32", "interface": 1},
            {"address": "fd00:65::5/128", "interface": 1},
        ],
        "routes": [
            {"dst": "0.0.0.0/0", "gw": "169.254.1.1"},
            {"dst": "::/0", "gw": "fe80::ecee:eeff:feee:eeee"},
        ],
        "dns": {"nameservers": ["10.96.0.10"]},
    }


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0"])
def test_result_legacy_versions_carry_ip_version(version: str) -> None:
    d = RESULT.to_dict(version)
    assert d["cniVersion"] == version
    assert [ip["version"] for ip in d["ips"]] == ["4", "6"]


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_result_round_trip(version: str) -> None:
    assert parse_result(json.loads(json.dumps(RESULT.to_dict(version)))) == RESULT


def test_parse_result_errors_name_the_field() -> None:
    with pytest.raises(CNIError) as info:
        parse_result({"ips": [{"address": "10.0.0.300/32"}]})
    assert info.value.code == INVALID_CONFIG
    assert "ips[0]" in info.value.msg


def test_error_json() -> None:
    e = CNIError(11, "etcd is unavailable; check etcd_endpoints", "deadline exceeded")
    assert e.to_dict("1.0.0") == {
        "cniVersion": "1.0.0",
        "code": 11,
        "msg": "etcd is unavailable; check etcd_endpoints",
        "details": "deadline exceeded",
    }
    assert "details" not in CNIError(7, "x").to_dict("0.4.0")


def _run(environ: dict[str, str], stdin: bytes) -> tuple[int, dict[str, object]]:
    out = io.StringIO()
    rc = run(lambda *_: {"ok": True}, "test", environ=environ, stdin=stdin, stdout=out)
    return rc, json.loads(out.getvalue())


def test_runner_version() -> None:
    rc, out = _run({"CNI_COMMAND": "VERSION"}, b'{"cniVersion": "0.4.0"}')
    assert rc == 0
    assert out == {"cniVersion": "0.4.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0"]}


def test_runner_errors_are_json_on_stdout() -> None:
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c", "CNI_IFNAME": "eth0"}
    rc, out = _run(env, b'{"cniVersion": "0.4.0", "name": "n"}')
    assert rc == 1
    assert out["code"] == 4
    assert out["cniVersion"] == "0.4.0"
    assert "CNI_NETNS" in str(out["msg"])
    env["CNI_NETNS"] = "/run/netns/x"
    rc, out = _run(env, b'{"cniVersion": "0.4.0", "name": "n", "mtu": -1}')
    assert (rc, out["code"]) == (1, 7)
    assert "mtu" in str(out["msg"])


def test_runner_unexpected_exception_is_code_100() -> None:
    def boom(*_: object) -> None:
        raise RuntimeError("kaput")

    out = io.StringIO()
    env = {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "c", "CNI_IFNAME": "eth0"}
    rc = run(boom, "t", environ=env, stdin=b'{"cniVersion":"1.0.0","name":"n"}', stdout=out)
    d = json.loads(out.getvalue())
    assert rc == 1
    assert d["code"] == 100
    assert "kaput" in d["details"]


# --------------------------------------------------------------------------- names


def test_veth_name_stable_short_prefixed() -> None:
    cid = "f" * 64
    name = host_veth_name(cid, "eth0")
    assert name == host_veth_name(cid, "eth0")
    assert name.startswith("tbw")
    assert len(name) == 15
    assert all(c in "0123456789abcdef" for c in name[3:])
    assert host_veth_name(cid, "eth1") != name
    assert host_veth_name("e" * 64, "eth0") != name


def test_handle_and_wep_names() -> None:
    assert handle_id("k8s-pod-network", "abc") == "k8s-pod-network.abc"
    assert wep_name("node1", "k8s", "web", "eth0") == "node1-k8s-web-eth0"
    # dashes inside components are doubled, so the split is unambiguous
    assert wep_name("node-1", "k8s", "my-pod-0", "eth0") == "node--1-k8s-my--pod--0-eth0"
    assert wep_name("a-b", "cni", "c", "d") != wep_name("a", "cni", "b-c", "d")
