"""Deterministic names: host-side veth, IPAM handle, WorkloadEndpoint.

Role: every name the plugin creates is a pure function of the invocation, so a DEL (or a retried
ADD) finds what an earlier, possibly interrupted, ADD left behind without any stored state.

- ``host_veth_name(container_id, ifname)``: ``tbw`` + the first 12 hex digits of
  SHA-1(``<container id>.<ifname>``): 15 characters, the Linux maximum (Calico: ``cali`` + 11).
- ``handle_id(network, container_id)``: ``<network name>.<container id>`` (Calico's handle).
- ``wep_name(node, orchestrator, workload, endpoint)``: Calico's convention
  ``<node>-<orchestrator>-<workload>-<endpoint>`` where every ``-`` inside a component is
  doubled, so the split back into components is unambiguous.
Pure module.
"""

from __future__ import annotations

import hashlib

__all__ = ["VETH_PREFIX", "handle_id", "host_veth_name", "wep_name"]

VETH_PREFIX = "tbw"
IFNAMSIZ = 15


def host_veth_name(container_id: str, ifname: str, prefix: str = VETH_PREFIX) -> str:
    digest = hashlib.sha1(f"{container_id}.{ifname}".encode(), usedforsecurity=False)
    return (prefix + digest.hexdigest())[:IFNAMSIZ]


def handle_id(network: str, container_id: str) -> str:
    return f"{network}.{container_id}"


def _escape(component: str) -> str:
    return component.replace("-", "--")


def wep_name(node: str, orchestrator: str, workload: str, endpoint: str) -> str:
    return "-".join(_escape(c) for c in (node, orchestrator, workload, endpoint))
