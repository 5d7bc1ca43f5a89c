"""The namespace bridge lets a process inside a test namespace reach etcd on our loopback."""

from __future__ import annotations

import os
import subprocess

from lab.etcd import EtcdServer
from lab.nsbridge import NamespaceBridge
from tests.support.netns import NetnsFactory


def test_etcdctl_inside_namespace_reaches_etcd(
    netns: NetnsFactory, etcd_server: EtcdServer, etcd_endpoint: str
) -> None:
    ns = netns.new("bridge")
    bridge = NamespaceBridge(("127.0.0.1", etcd_server.client_port))
    try:
        bridge.add_listener(ns, "127.0.0.1", 2379)
        env = {**os.environ, "ETCDCTL_API": "3"}
        put = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                ns,
                "etcdctl",
                "--endpoints",
                "127.0.0.1:2379",
                "put",
                "/tabby/bridge",
                "hello",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        assert put.returncode == 0, put.stderr
        # Read it back from our own namespace, directly from etcd.
        got = subprocess.run(
            ["etcdctl", "--endpoints", etcd_endpoint, "get", "/tabby/bridge", "--print-value-only"],
            env=env,
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
        assert got.stdout.strip() == "hello"
        # Without a listener in that namespace, nothing answers there.
        bridge.remove_listener(ns, "127.0.0.1", 2379)
        fail = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                ns,
                "etcdctl",
                "--endpoints",
                "127.0.0.1:2379",
                "--dial-timeout",
                "1s",
                "--command-timeout",
                "2s",
                "get",
                "/tabby/bridge",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        assert fail.returncode != 0
    finally:
        bridge.stop()
