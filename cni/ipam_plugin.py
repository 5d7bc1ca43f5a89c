"""``tabby-ipam``: the CNI IPAM plugin (IPAM type ``tabby-ipam``), usable on its own.

Role: hand out workload addresses from tabby's IPAM (``datastore.ipam``) to any CNI network
plugin (bridge, ptp, ... or ``tabby-cni`` when it delegates by exec).
Inputs: ``CNI_*`` environment and the *network* config on stdin (etcd keys at the top level, as
Calico's calico-ipam reads them; the ``ipam`` section gives pools and ``assign_ipv4/6``).
Outputs: ADD prints an IPAM result (``ips``: /32 and /128 addresses, no interface index, as
calico-ipam); DEL releases by handle (idempotent, prints nothing); CHECK verifies the handle
holds addresses; VERSION lists the supported versions.

Invariants: the handle is ``<network name>.<container id>``, the same as ``tabby-cni`` uses in
process, so both can be mixed and a retried ADD reuses its addresses.
"""

from __future__ import annotations

import gc
import logging
import sys
from collections.abc import Mapping
from typing import Any

from cni import ipamops
from cni.config import CniEnv, IpamConf, NetConf, resolve_nodename
from cni.errors import CHECK_FAILED, INCOMPATIBLE_VERSION, INVALID_CONFIG, CNIError
from cni.names import handle_id
from cni.result import IPConfig, Result
from cni.runner import run

__all__ = ["handle", "main"]

log = logging.getLogger(__name__)


def _ipam(conf: NetConf) -> IpamConf:
    ipam = conf.ipam or IpamConf("tabby-ipam")
    if ipam.type != "tabby-ipam":
        raise CNIError(
            INVALID_CONFIG,
            f"network config: ipam.type is {ipam.type!r}; tabby-ipam only serves 'tabby-ipam'",
        )
    return ipam


def handle(
    conf: NetConf, env: CniEnv, stdin: bytes, environ: Mapping[str, str]
) -> dict[str, Any] | None:
    del stdin, environ
    ipam = _ipam(conf)
    handle_name = handle_id(conf.name, env.container_id)
    store = ipamops.open_store(conf)
    try:
        if env.command == "ADD":
            node = resolve_nodename(conf)
            attrs = {"node": node, "namespace": env.pod_namespace or "default"}
            if env.pod_name:
                attrs["pod"] = env.pod_name
            else:
                attrs["container"] = env.container_id
            addresses = ipamops.assign(store, handle_name, node, ipam, attrs)
            return Result(ips=tuple(IPConfig(a) for a in addresses), dns=conf.dns).to_dict(
                conf.cni_version
            )
        if env.command == "DEL":
            ipamops.release(store, handle_name)
            return None
        if env.command == "CHECK":
            if conf.cni_version in ("0.3.0", "0.3.1"):
                raise CNIError(INCOMPATIBLE_VERSION, "CHECK needs cniVersion 0.4.0 or later")
            if not ipamops.owned(store, handle_name):
                raise CNIError(CHECK_FAILED, f"no addresses are allocated to handle {handle_name}")
        return None
    finally:
        store.close()


def main() -> int:
    # A short-lived process: the cyclic GC only costs time here (importing the resource model
    # creates many classes).
    gc.disable()
    return run(handle, "tabby-ipam")


if __name__ == "__main__":
    sys.exit(main())
