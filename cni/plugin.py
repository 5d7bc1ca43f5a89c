"""``tabby-cni``: the CNI network plugin (type ``tabby``), CNI spec 1.0.0 (and 0.3.0-0.4.0).

Role: plumb one workload interface and record it, the way Calico's CNI plugin does; felix then
programs routes and policy from the WorkloadEndpoint.
Inputs: ``CNI_*`` environment, network config on stdin (``cni.config``). Outputs: a CNI result
(ADD), nothing (DEL, CHECK), or a CNI error object, on stdout; log lines to ``log_file_path``.

ADD creates only things a later DEL (or a retried ADD) finds by deterministic name, so a plugin
killed at any point leaves nothing that cannot be cleaned up:
- the veth pair, host end ``tbw<sha1(container id.ifname)[:12]>`` (a leftover host end of the
  same name, from an earlier attempt, is deleted first, taking its peer with it), made in a
  background thread (``ip`` runs on another CPU) while
- IPAM allocates under handle ``<network>.<container id>`` (a retried ADD reuses the addresses);
- then the container end gets its addresses and routes (background) while the WorkloadEndpoint
  ``<node>-<orchestrator>-<pod|container id>-<ifname>`` (``-`` doubled) is written.
If any step fails, ADD undoes what it did (veth, WEP, addresses) before reporting the error.
DEL: delete the host end (if present), the WEP (only if its ``containerID`` is ours, so a DEL
for an old sandbox never removes the WEP of its replacement), then release by handle; every
missing piece is fine, so DEL is idempotent. CHECK: the container interface has its addresses
and routes, the host end exists, the WEP and the allocation match.
"""

from __future__ import annotations

import dataclasses
import gc
import ipaddress
import logging
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from cni import ipamops
from cni.config import CniEnv, IpamConf, NetConf, resolve_nodename
from cni.errors import CHECK_FAILED, INCOMPATIBLE_VERSION, INVALID_CONFIG, CNIError
from cni.names import handle_id, host_veth_name, wep_name
from cni.netlink import (
    GATEWAY_V4,
    GATEWAY_V6,
    HOST_MAC,
    Dataplane,
    KernelDataplane,
    VethSpec,
    random_mac,
)
from cni.result import Interface, IPConfig, Result, Route, parse_result
from cni.runner import run

if TYPE_CHECKING:
    from datastore.kv import KVStore

__all__ = ["TABBY_IPAM", "TabbyPlugin", "main", "wep_document"]

log = logging.getLogger(__name__)

TABBY_IPAM = "tabby-ipam"
API_VERSION = "projectcalico.org/v3"
LABEL_NAMESPACE = "projectcalico.org/namespace"
LABEL_ORCHESTRATOR = "projectcalico.org/orchestrator"
DEFAULT_NAMESPACE = "default"
WEP_KIND = "WorkloadEndpoint"

T = TypeVar("T")
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
StoreFactory = Callable[[NetConf], "KVStore"]


@dataclass(frozen=True, slots=True)
class Identity:
    """Every name one invocation works with, derived from config and environment only."""

    node: str
    orchestrator: str
    namespace: str
    pod: str
    workload: str
    handle: str
    host_ifname: str
    wep: str


def identity(conf: NetConf, env: CniEnv, node: str) -> Identity:
    k8s = bool(env.pod_name)
    orchestrator = "k8s" if k8s else "cni"
    namespace = env.pod_namespace or DEFAULT_NAMESPACE
    workload = env.pod_name if k8s else env.container_id
    return Identity(
        node=node,
        orchestrator=orchestrator,
        namespace=namespace,
        pod=env.pod_name,
        workload=workload,
        handle=handle_id(conf.name, env.container_id),
        host_ifname=host_veth_name(env.container_id, env.ifname),
        wep=wep_name(node, orchestrator, workload, env.ifname),
    )


def wep_document(
    conf: NetConf,
    env: CniEnv,
    ident: Identity,
    addresses: list[IPInterface],
    container_mac: str,
) -> dict[str, Any]:
    """The WorkloadEndpoint as Calico's CNI plugin writes it (v3 JSON shape)."""
    labels = dict(conf.labels)
    labels[LABEL_NAMESPACE] = ident.namespace
    labels[LABEL_ORCHESTRATOR] = ident.orchestrator
    profiles = list(conf.profiles) if conf.profiles is not None else [f"kns.{ident.namespace}"]
    spec: dict[str, Any] = {
        "orchestrator": ident.orchestrator,
        "node": ident.node,
        "containerID": env.container_id,
        "endpoint": env.ifname,
        "interfaceName": ident.host_ifname,
        "ipNetworks": [f"{a.ip}/{a.ip.max_prefixlen}" for a in addresses],
        "mac": container_mac,
        "profiles": profiles,
    }
    if ident.pod:
        spec["pod"] = ident.pod
    else:
        spec["workload"] = ident.workload
    return {
        "apiVersion": API_VERSION,
        "kind": WEP_KIND,
        "metadata": {"name": ident.wep, "namespace": ident.namespace, "labels": labels},
        "spec": spec,
    }


class Background(Generic[T]):
    """Run ``fn(*args)`` in a thread now; ``result()`` joins and returns or re-raises."""

    def __init__(self, fn: Callable[..., T], *args: Any) -> None:
        self._value: list[T] = []
        self._error: list[BaseException] = []

        def target() -> None:
            try:
                self._value.append(fn(*args))
            except BaseException as exc:
                self._error.append(exc)

        self._thread = threading.Thread(target=target, daemon=True)
        self._thread.start()

    def join(self) -> None:
        self._thread.join()

    def result(self) -> T:
        self._thread.join()
        if self._error:
            raise self._error[0]
        return self._value[0]


def _ipam_attrs(ident: Identity) -> dict[str, str]:
    attrs = {"node": ident.node, "namespace": ident.namespace}
    if ident.pod:
        attrs["pod"] = ident.pod
    else:
        attrs["container"] = ident.workload
    return attrs


class TabbyPlugin:
    """One invocation of the network plugin (see module docstring)."""

    def __init__(
        self,
        conf: NetConf,
        env: CniEnv,
        *,
        stdin: bytes = b"",
        environ: Mapping[str, str] | None = None,
        store_factory: StoreFactory = ipamops.open_store,
        dataplane: Dataplane | None = None,
        node: str | None = None,
    ) -> None:
        if conf.ipam is None:
            raise CNIError(
                INVALID_CONFIG,
                'network config: ipam: missing; add e.g. "ipam": {"type": "tabby-ipam"}',
            )
        self.conf = conf
        self.ipam: IpamConf = conf.ipam
        self.env = env
        self.stdin = stdin
        self.environ = dict(environ or {})
        self.dataplane: Dataplane = dataplane if dataplane is not None else KernelDataplane()
        self.ident = identity(conf, env, node if node is not None else resolve_nodename(conf))
        self._store_factory = store_factory
        self._store: KVStore | None = None

    # -------------------------------------------------------------- helpers
    @property
    def store(self) -> KVStore:
        if self._store is None:
            self._store = self._store_factory(self.conf)
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def _client(self) -> Any:
        from datastore.client import ResourceClient  # noqa: PLC0415

        return ResourceClient(self.store)

    def _allocate(self) -> list[IPInterface]:
        if self.ipam.type == TABBY_IPAM:
            return ipamops.assign(
                self.store, self.ident.handle, self.ident.node, self.ipam, _ipam_attrs(self.ident)
            )
        out = ipamops.delegate(self.ipam.type, "ADD", self.stdin, self.environ, self.env.path)
        result = parse_result(out or {})
        if not result.ips:
            raise CNIError(INVALID_CONFIG, f"IPAM plugin {self.ipam.type} returned no addresses")
        return [
            ipaddress.ip_interface(f"{c.address.ip}/{c.address.max_prefixlen}") for c in result.ips
        ]

    def _release(self) -> None:
        if self.ipam.type == TABBY_IPAM:
            ipamops.release(self.store, self.ident.handle)
        else:
            ipamops.delegate(self.ipam.type, "DEL", self.stdin, self.environ, self.env.path)

    def _write_wep(self, addresses: list[IPInterface], mac: str) -> None:
        from datastore.client import ResourceExists  # noqa: PLC0415
        from datastore.codec import resource_from_dict  # noqa: PLC0415

        doc = wep_document(self.conf, self.env, self.ident, addresses, mac)
        with ipamops.datastore_errors(f"writing WorkloadEndpoint {self.ident.wep}"):
            resource = resource_from_dict(doc)
            client = self._client()
            try:  # one round trip in the common case (a new endpoint)
                client.create(resource)
            except ResourceExists:  # a retried ADD, or a new sandbox of the same pod
                client.apply(resource)

    def _delete_wep(self) -> bool:
        from datastore.client import ResourceConflict, ResourceNotFound  # noqa: PLC0415

        name, ns = self.ident.wep, self.ident.namespace
        with ipamops.datastore_errors(f"deleting WorkloadEndpoint {ns}/{name}"):
            client = self._client()
            try:
                current = client.get(WEP_KIND, name, ns)
            except ResourceNotFound:
                return False
            owner = current.spec.container_id
            if owner and owner != self.env.container_id:
                log.info(
                    "cni.del.wep_kept name=%s/%s owner=%s container=%s",
                    ns,
                    name,
                    owner,
                    self.env.container_id,
                )
                return False
            try:
                client.delete(
                    WEP_KIND, name, ns, resource_version=current.metadata.resource_version
                )
            except (ResourceNotFound, ResourceConflict):
                return False
            return True

    # -------------------------------------------------------------- commands
    def _make_pair(self, spec: VethSpec) -> None:
        if self.dataplane.host_link_exists(spec.host_ifname):
            log.info("cni.add.stale_veth name=%s: deleting", spec.host_ifname)
            self.dataplane.delete_host(spec.host_ifname)
        self.dataplane.create_pair(spec)

    def add(self) -> Result:
        env, ident = self.env, self.ident
        prev = parse_result(self.conf.prev_result) if self.conf.prev_result else Result()
        self.dataplane.check_netns(env.netns)
        pair = VethSpec(
            host_ifname=ident.host_ifname,
            container_ifname=env.ifname,
            netns_path=env.netns,
            container_mac=random_mac(),
            mtu=self.conf.mtu,
            ipv4=self.ipam.assign_ipv4,
            ipv6=self.ipam.assign_ipv6,
        )
        # With tabby's IPAM the address families are known up front, so the veth pair is made
        # by `ip` on another CPU while this process imports the datastore and allocates.
        early = Background(self._make_pair, pair) if self.ipam.type == TABBY_IPAM else None
        try:
            addresses = self._allocate()
        except BaseException:
            if early is not None:
                early.join()
                self._rollback(wep_written=False, release=False)
            raise
        spec = dataclasses.replace(
            pair,
            addresses=tuple(addresses),
            ipv4=any(a.version == 4 for a in addresses),
            ipv6=any(a.version == 6 for a in addresses),
        )
        wep_written = False
        try:
            if early is not None:
                early.result()
            else:
                self._make_pair(spec)
            configure = Background(self.dataplane.configure_container, spec)
            try:
                self._write_wep(addresses, spec.container_mac)
                wep_written = True
            finally:
                configure.result()
        except BaseException as exc:
            log.warning("cni.add.rollback container=%s error=%s", env.container_id, exc)
            self._rollback(wep_written)
            raise
        log.info(
            "cni.add.done container=%s wep=%s/%s host=%s ips=%s",
            env.container_id,
            ident.namespace,
            ident.wep,
            ident.host_ifname,
            ",".join(str(a) for a in addresses),
        )
        return self._result(prev, addresses, spec.container_mac)

    def _rollback(self, wep_written: bool, release: bool = True) -> None:
        steps: list[tuple[str, Callable[[], object]]] = [
            ("veth", lambda: self.dataplane.delete_host(self.ident.host_ifname)),
        ]
        if wep_written:
            steps.append(("wep", self._delete_wep))
        if release:
            steps.append(("ipam", self._release))
        for what, step in steps:
            try:
                step()
            except Exception as exc:  # keep undoing; DEL will finish the job
                log.warning("cni.add.rollback_failed step=%s error=%s", what, exc)

    def _result(self, prev: Result, addresses: list[IPInterface], mac: str) -> Result:
        base = len(prev.interfaces)
        interfaces = (
            *prev.interfaces,
            Interface(self.ident.host_ifname, HOST_MAC),
            Interface(self.env.ifname, mac, self.env.netns),
        )
        ips = tuple(IPConfig(a, interface=base + 1) for a in addresses)
        routes: list[Route] = []
        if any(a.version == 4 for a in addresses):
            routes.append(Route(ipaddress.ip_network("0.0.0.0/0"), GATEWAY_V4))
        if any(a.version == 6 for a in addresses):
            routes.append(Route(ipaddress.ip_network("::/0"), GATEWAY_V6))
        dns = self.conf.dns or prev.dns
        return Result(interfaces, (*prev.ips, *ips), (*prev.routes, *routes), dns)

    def delete(self) -> None:
        ident = self.ident
        # the host end goes (by `ip`, on another CPU) while the datastore work runs here
        veth = Background(self.dataplane.delete_host, ident.host_ifname)
        try:
            wep = self._delete_wep()
            self._release()
        finally:
            removed = veth.result()
        log.info(
            "cni.del.done container=%s veth_removed=%s wep_removed=%s",
            self.env.container_id,
            removed,
            wep,
        )

    def _expected(self) -> set[IPInterface]:
        prev = self.conf.prev_result
        if prev:
            result = parse_result(prev)
            ours = {
                i
                for i, iface in enumerate(result.interfaces)
                if iface.name == self.env.ifname and iface.sandbox
            }
            return {
                ipaddress.ip_interface(f"{c.address.ip}/{c.address.max_prefixlen}")
                for c in result.ips
                if c.interface is None or c.interface in ours
            }
        if self.ipam.type == TABBY_IPAM:
            return {
                ipaddress.ip_interface(f"{ip}/{ip.max_prefixlen}")
                for ip in ipamops.owned(self.store, self.ident.handle)
            }
        return set()

    def check(self) -> None:
        if self.conf.cni_version in ("0.3.0", "0.3.1"):
            raise CNIError(
                INCOMPATIBLE_VERSION,
                f"CHECK needs cniVersion 0.4.0 or later (config has {self.conf.cni_version})",
            )
        env, ident = self.env, self.ident
        problems: list[str] = []
        expected = self._expected()
        if not expected:
            problems.append(f"no addresses are allocated to handle {ident.handle}")
        state = self.dataplane.inspect(env.netns, env.ifname)
        if state is None:
            problems.append(f"interface {env.ifname} is missing in {env.netns}")
        else:
            if not state.up:
                problems.append(f"interface {env.ifname} in {env.netns} is down")
            for a in sorted(expected - state.addresses, key=str):
                problems.append(f"address {a} is missing on {env.ifname}")
            want_routes: set[tuple[str, str | None]] = set()
            if any(a.version == 4 for a in expected):
                want_routes |= {(str(GATEWAY_V4), None), ("default", str(GATEWAY_V4))}
            if any(a.version == 6 for a in expected):
                want_routes.add(("default", str(GATEWAY_V6)))
            for dst, gw in sorted(want_routes - state.routes, key=str):
                problems.append(f"route {dst}{' via ' + gw if gw else ''} is missing")
        if not self.dataplane.host_link_exists(ident.host_ifname):
            problems.append(f"host interface {ident.host_ifname} is missing")
        problems.extend(self._check_wep(expected))
        if self.ipam.type == TABBY_IPAM and self.conf.prev_result:
            owned = {
                ipaddress.ip_interface(f"{ip}/{ip.max_prefixlen}")
                for ip in ipamops.owned(self.store, ident.handle)
            }
            if owned != expected:
                problems.append(
                    f"IPAM handle {ident.handle} holds {sorted(map(str, owned))}, "
                    f"expected {sorted(map(str, expected))}"
                )
        if problems:
            raise CNIError(
                CHECK_FAILED,
                f"CHECK failed for container {env.container_id}: {problems[0]}",
                "; ".join(problems),
            )

    def _check_wep(self, expected: set[IPInterface]) -> list[str]:
        from datastore.client import ResourceNotFound  # noqa: PLC0415

        ident = self.ident
        with ipamops.datastore_errors(f"reading WorkloadEndpoint {ident.wep}"):
            try:
                wep = self._client().get(WEP_KIND, ident.wep, ident.namespace)
            except ResourceNotFound:
                return [f"WorkloadEndpoint {ident.namespace}/{ident.wep} is missing"]
        problems = []
        spec = wep.spec
        if spec.container_id != self.env.container_id:
            problems.append(
                f"WorkloadEndpoint {ident.wep} belongs to container {spec.container_id}"
            )
        if spec.interface_name != ident.host_ifname:
            problems.append(
                f"WorkloadEndpoint {ident.wep} spec.interfaceName is {spec.interface_name}"
            )
        nets = {ipaddress.ip_interface(str(n)) for n in spec.ip_networks}
        if nets != expected:
            problems.append(
                f"WorkloadEndpoint {ident.wep} spec.ipNetworks is {sorted(map(str, nets))}"
            )
        return problems


def handle(
    conf: NetConf, env: CniEnv, stdin: bytes, environ: Mapping[str, str]
) -> dict[str, Any] | None:
    plugin = TabbyPlugin(conf, env, stdin=stdin, environ=environ)
    try:
        if env.command == "ADD":
            return plugin.add().to_dict(conf.cni_version)
        if env.command == "DEL":
            plugin.delete()
        elif env.command == "CHECK":
            plugin.check()
        return None
    finally:
        plugin.close()


def main() -> int:
    # A short-lived process: the cyclic GC only costs time here (importing the resource model
    # creates many classes).
    gc.disable()
    return run(handle, "tabby-cni")


if __name__ == "__main__":
    sys.exit(main())
