"""Helpers for the CNI netns tests: run plugins exactly as a container runtime does.

``CniRuntime`` executes a plugin by *file name* found in ``CNI_PATH`` (our wrappers
``tabby-cni`` / ``tabby-ipam`` generated into the test's tmp dir, then Debian's reference plugins
in /usr/lib/cni), under ``ip netns exec NODE`` so the plugin's own namespace is the node
namespace the test created, with the ``CNI_*`` variables set and the network config on stdin.
``run_list`` runs a ``.conflist`` as libcni does: ADD and CHECK in order, DEL in reverse, each
plugin receiving the list's ``name``/``cniVersion`` and the previous ``prevResult``.

``node_bed`` builds a node namespace with an uplink and etcd bridged to 127.0.0.1:2379 inside it,
and creates an IPPool. Every namespace comes from the ``netns`` fixture (always deleted).
This module holds no tests itself.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import ip_interface
from pathlib import Path
from typing import Any

import pytest

from datastore.client import ResourceClient
from datastore.codec import resource_from_dict
from datastore.etcd import EtcdConfig, EtcdKVStore
from kernel.links import add_address, create_veth, set_link_up
from lab.etcd import EtcdServer
from lab.nsbridge import NamespaceBridge
from tests.support.netns import NetnsFactory, ns_exec

REPO = Path(__file__).resolve().parents[2]
REFERENCE_PLUGINS = "/usr/lib/cni"
POOL_CIDR = "10.65.0.0/16"


def write_wrappers(bin_dir: Path) -> Path:
    """``tabby-cni`` and ``tabby-ipam`` scripts that run the modules with this interpreter."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, module in (("tabby-cni", "cni.plugin"), ("tabby-ipam", "cni.ipam_plugin")):
        path = bin_dir / name
        path.write_text(
            "#!/bin/sh\n"
            f'PYTHONPATH="{REPO}${{PYTHONPATH:+:$PYTHONPATH}}"\n'
            "export PYTHONPATH\n"
            f'exec "{sys.executable}" -m {module} "$@"\n'
        )
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    # a runtime resolves "type": "tabby" to the executable named tabby
    tabby = bin_dir / "tabby"
    if not tabby.exists():
        tabby.symlink_to(bin_dir / "tabby-cni")
    return bin_dir


def have_reference_plugins() -> bool:
    return os.path.exists(f"{REFERENCE_PLUGINS}/tuning")


@dataclass
class Invocation:
    rc: int
    out: dict[str, Any] | None
    stderr: str

    def ok(self) -> dict[str, Any]:
        assert self.rc == 0, f"plugin failed rc={self.rc} out={self.out} stderr={self.stderr}"
        return self.out or {}


@dataclass
class CniRuntime:
    node: str
    bin_dir: Path
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def cni_path(self) -> str:
        return f"{self.bin_dir}:{REFERENCE_PLUGINS}"

    def find(self, plugin_type: str) -> str:
        for d in self.cni_path.split(":"):
            p = os.path.join(d, plugin_type)
            if os.access(p, os.X_OK):
                return p
        raise AssertionError(f"plugin {plugin_type} not in {self.cni_path}")

    def exec(
        self,
        conf: dict[str, Any],
        command: str,
        container_id: str,
        netns_path: str,
        ifname: str = "eth0",
        args: str = "",
        timeout: float = 60,
    ) -> Invocation:
        env = {
            **os.environ,
            "TABBY_EXPECT_NETNS": self.node,
            **self.extra_env,
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": container_id,
            "CNI_NETNS": netns_path,
            "CNI_IFNAME": ifname,
            "CNI_ARGS": args,
            "CNI_PATH": self.cni_path,
        }
        res = subprocess.run(
            ["ip", "netns", "exec", self.node, self.find(conf["type"])],
            input=json.dumps(conf).encode(),
            capture_output=True,
            env=env,
            timeout=timeout,
            check=False,
        )
        out = json.loads(res.stdout) if res.stdout.strip() else None
        return Invocation(res.returncode, out, res.stderr.decode(errors="replace"))

    def run_list(
        self,
        conflist: dict[str, Any],
        command: str,
        container_id: str,
        netns_path: str,
        prev: dict[str, Any] | None = None,
        ifname: str = "eth0",
        args: str = "",
    ) -> dict[str, Any] | None:
        """Run a conflist like libcni; returns the final result (ADD) or ``prev``."""
        plugins = list(conflist["plugins"])
        if command == "DEL":
            plugins.reverse()
        result = prev
        for plugin in plugins:
            conf = {**plugin, "name": conflist["name"], "cniVersion": conflist["cniVersion"]}
            if result is not None:
                conf["prevResult"] = result
            inv = self.exec(conf, command, container_id, netns_path, ifname, args)
            out = inv.ok()
            if command == "ADD":
                result = out
        return result


def container_links(netns_name: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = json.loads(ns_exec(netns_name, ["ip", "-j", "addr"]))
    return out


def link(netns_name: str, ifname: str) -> dict[str, Any] | None:
    for item in container_links(netns_name):
        if item["ifname"] == ifname:
            return item
    return None


def routes(netns_name: str, family: str = "-4") -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = json.loads(ns_exec(netns_name, ["ip", "-j", family, "route"]))
    return out


def sysctl(netns_name: str, path: str) -> str:
    return ns_exec(netns_name, ["cat", f"/proc/sys/{path}"]).strip()


@dataclass
class NodeBed:
    netns: NetnsFactory
    node: str
    runtime: CniRuntime
    store: EtcdKVStore
    bridge: NamespaceBridge | None

    def conf(self, **extra: Any) -> dict[str, Any]:
        base: dict[str, Any] = {
            "cniVersion": "1.0.0",
            "name": "net1",
            "type": "tabby",
            "etcd_endpoints": "http://127.0.0.1:2379",
            "nodename": "node1",
            "mtu": 1440,
            "log_level": "debug",
            "ipam": {"type": "tabby-ipam", "ipv4_pools": [POOL_CIDR]},
        }
        base.update(extra)
        return base

    def container(self, tag: str = "c") -> tuple[str, str]:
        name = self.netns.new(tag)
        return name, f"/run/netns/{name}"

    def weps(self) -> dict[str, Any]:
        client = ResourceClient(self.store)
        return {r.name: r for r in client.list("WorkloadEndpoint", all_namespaces=True)}


def put_resource(store: EtcdKVStore, doc: dict[str, Any]) -> None:
    ResourceClient(store).apply(resource_from_dict(doc))


def ip_pool(name: str = "pool1", cidr: str = POOL_CIDR, block_size: int = 26) -> dict[str, Any]:
    return {
        "apiVersion": "projectcalico.org/v3",
        "kind": "IPPool",
        "metadata": {"name": name},
        "spec": {"cidr": cidr, "blockSize": block_size, "natOutgoing": False},
    }


def build_node(netns: NetnsFactory, etcd: EtcdServer, bin_dir: Path) -> NodeBed:
    """A node namespace (uplink to an 'outside' namespace), etcd at 127.0.0.1:2379 inside it."""
    node = netns.new("node")
    outside = netns.new("out")
    create_veth(node, "eth0", outside, "eth0")
    add_address(node, "eth0", ip_interface("198.51.100.1/24"))
    add_address(outside, "eth0", ip_interface("198.51.100.2/24"))
    set_link_up(node, "eth0")
    set_link_up(outside, "eth0")
    ns_exec(node, ["ip", "route", "add", "default", "via", "198.51.100.2"])
    bridge = NamespaceBridge(("127.0.0.1", etcd.client_port))
    bridge.add_listener(node, "127.0.0.1", 2379)
    store = EtcdKVStore(EtcdConfig(endpoints=(etcd.endpoint,)))
    put_resource(store, ip_pool())
    runtime = CniRuntime(node, write_wrappers(bin_dir))
    return NodeBed(netns, node, runtime, store, bridge)


@pytest.fixture
def node_bed(
    netns: NetnsFactory, etcd_server: EtcdServer, etcd_endpoint: str, tmp_path: Path
) -> Iterator[NodeBed]:
    bed = build_node(netns, etcd_server, tmp_path / "bin")
    try:
        yield bed
    finally:
        if bed.bridge is not None:
            bed.bridge.stop()
        bed.store.close()
        shutil.rmtree(tmp_path / "bin", ignore_errors=True)
