"""CNI network config and environment parsing: defaults, Calico keys, and validation errors."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cni.config import parse_cni_args, parse_env, parse_netconf, resolve_nodename
from cni.errors import BAD_ENV, DECODE, INCOMPATIBLE_VERSION, INVALID_CONFIG, CNIError


def conf(**extra: Any) -> bytes:
    base: dict[str, Any] = {
        "cniVersion": "1.0.0",
        "name": "k8s-pod-network",
        "type": "tabby",
        "ipam": {"type": "tabby-ipam"},
    }
    base.update(extra)
    return json.dumps({k: v for k, v in base.items() if v is not None}).encode()


def err(data: bytes) -> CNIError:
    with pytest.raises(CNIError) as info:
        parse_netconf(data)
    return info.value


def test_defaults() -> None:
    c = parse_netconf(conf())
    assert c.cni_version == "1.0.0"
    assert c.name == "k8s-pod-network"
    assert c.mtu == 1500
    assert c.etcd_endpoints == ()
    assert c.ipam is not None
    assert c.ipam.type == "tabby-ipam"
    assert c.ipam.assign_ipv4 is True
    assert c.ipam.assign_ipv6 is False
    assert c.log_level == "warning"
    assert c.profiles is None
    assert c.prev_result is None


def test_calico_keys() -> None:
    c = parse_netconf(
        conf(
            etcd_endpoints="http://127.0.0.1:2379, http://10.0.0.2:2379",
            etcd_key_file="/k",
            etcd_cert_file="/c",
            etcd_ca_cert_file="/ca",
            nodename="node-1",
            mtu=1440,
            log_level="DEBUG",
            log_file_path="/var/log/tabby/cni.log",
            ipam={
                "type": "tabby-ipam",
                "assign_ipv4": "true",
                "assign_ipv6": "true",
                "ipv4_pools": ["10.65.0.0/16", "default-ipv4-ippool"],
                "ipv6_pools": ["fd00:65::/48"],
            },
            policy={"type": "k8s"},
            kubernetes={"kubeconfig": "/etc/kube"},
            labels={"app": "web"},
            args={"cni": {"labels": [{"key": "tier", "value": "front"}]}},
            profiles=["p1"],
        )
    )
    assert c.etcd_endpoints == ("http://127.0.0.1:2379", "http://10.0.0.2:2379")
    assert (c.etcd_key_file, c.etcd_cert_file, c.etcd_ca_cert_file) == ("/k", "/c", "/ca")
    assert c.nodename == "node-1"
    assert c.mtu == 1440
    assert c.log_level == "debug"
    assert c.ipam is not None
    assert c.ipam.assign_ipv6 is True
    assert c.ipam.ipv4_pools == ("10.65.0.0/16", "default-ipv4-ippool")
    assert c.ipam.ipv6_pools == ("fd00:65::/48",)
    assert dict(c.labels) == {"app": "web", "tier": "front"}
    assert c.profiles == ("p1",)


@pytest.mark.parametrize(
    ("data", "code", "needle"),
    [
        (b"not json", DECODE, "not valid JSON"),
        (b"[1]", DECODE, "JSON object"),
        (conf(cniVersion=None), INVALID_CONFIG, "cniVersion"),
        (conf(cniVersion="0.2.0"), INCOMPATIBLE_VERSION, "0.2.0"),
        (conf(name=None), INVALID_CONFIG, "name"),
        (conf(mtu=10), INVALID_CONFIG, "mtu"),
        (conf(mtu="big"), INVALID_CONFIG, "mtu"),
        (conf(ipam={"ipv4_pools": []}), INVALID_CONFIG, "ipam.type"),
        (conf(ipam={"type": "tabby-ipam", "assign_ipv4": "yes"}), INVALID_CONFIG, "assign_ipv4"),
        (
            conf(ipam={"type": "tabby-ipam", "assign_ipv4": "false"}),
            INVALID_CONFIG,
            "nothing to assign",
        ),
        (
            conf(ipam={"type": "tabby-ipam", "ipv4_pools": ["fd00::/64"]}),
            INVALID_CONFIG,
            "ipam.ipv4_pools[0]",
        ),
        (
            conf(ipam={"type": "tabby-ipam", "ipv4_pools": ["10.0.0.300/24"]}),
            INVALID_CONFIG,
            "ipam.ipv4_pools[0]",
        ),
        (conf(etcd_endpoints=5), INVALID_CONFIG, "etcd_endpoints"),
        (conf(log_level="loud"), INVALID_CONFIG, "log_level"),
        (conf(labels={"a": 1}), INVALID_CONFIG, "labels"),
        (conf(args={"cni": {"labels": [{"key": "a"}]}}), INVALID_CONFIG, "args.cni.labels[0]"),
        (conf(datastore_type="kubernetes"), INVALID_CONFIG, "datastore_type"),
        (conf(prevResult=[]), INVALID_CONFIG, "prevResult"),
    ],
)
def test_errors_name_the_key(data: bytes, code: int, needle: str) -> None:
    e = err(data)
    assert e.code == code
    assert needle in e.msg


def test_nodename_file(tmp_path: Any) -> None:
    f = tmp_path / "nodename"
    f.write_text("node-from-file\n")
    assert resolve_nodename(parse_netconf(conf(nodename_file=str(f)))) == "node-from-file"
    assert resolve_nodename(parse_netconf(conf(nodename="n1", nodename_file=str(f)))) == "n1"
    missing = parse_netconf(
        conf(nodename_file=str(tmp_path / "nope"), nodename_file_optional="false")
    )
    with pytest.raises(CNIError) as info:
        resolve_nodename(missing)
    assert info.value.code == INVALID_CONFIG
    assert "nodename_file" in info.value.msg


def test_cni_args() -> None:
    args = parse_cni_args("IgnoreUnknown=1;K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=web-0;")
    assert args == {"IgnoreUnknown": "1", "K8S_POD_NAMESPACE": "ns1", "K8S_POD_NAME": "web-0"}
    with pytest.raises(CNIError) as info:
        parse_cni_args("garbage")
    assert info.value.code == BAD_ENV


def env(**extra: str) -> dict[str, str]:
    base = {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "abc123",
        "CNI_NETNS": "/run/netns/c1",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": "/opt/cni/bin:/usr/lib/cni",
        "CNI_ARGS": "K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=web-0",
    }
    base.update(extra)
    return {k: v for k, v in base.items() if v}


def test_env() -> None:
    e = parse_env(env())
    assert (e.command, e.container_id, e.netns, e.ifname) == (
        "ADD",
        "abc123",
        "/run/netns/c1",
        "eth0",
    )
    assert e.path == ("/opt/cni/bin", "/usr/lib/cni")
    assert (e.pod_namespace, e.pod_name) == ("ns1", "web-0")
    # DEL may come without a namespace (it may be gone already)
    assert parse_env(env(CNI_COMMAND="DEL", CNI_NETNS="")).netns == ""
    assert parse_env({"CNI_COMMAND": "VERSION"}).command == "VERSION"


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"CNI_COMMAND": "BOOM"}, "CNI_COMMAND"),
        ({"CNI_NETNS": ""}, "CNI_NETNS"),
        ({"CNI_CONTAINERID": ""}, "CNI_CONTAINERID"),
        ({"CNI_CONTAINERID": "-bad"}, "CNI_CONTAINERID"),
        ({"CNI_IFNAME": "a-very-long-interface"}, "CNI_IFNAME"),
        ({"CNI_IFNAME": "a/b"}, "CNI_IFNAME"),
        ({"CNI_NETNS": "relative/path"}, "absolute"),
    ],
)
def test_env_errors(overrides: dict[str, str], needle: str) -> None:
    environ = env()
    environ.update(overrides)
    environ = {k: v for k, v in environ.items() if v}
    with pytest.raises(CNIError) as info:
        parse_env(environ)
    assert info.value.code == BAD_ENV
    assert needle in info.value.msg
