"""IPAM for the CNI plugins: tabby's IPAM in-process, any other IPAM plugin by delegation.

Role: shared by ``tabby-cni`` (network plugin) and ``tabby-ipam`` (IPAM plugin).
- ``open_store(conf)``: the etcd ``KVStore`` from the network config (``etcd_*`` keys, else the
  ``ETCD_*`` environment like calicoctl, else http://127.0.0.1:2379). Heavy imports (gRPC) are
  done here, lazily, so VERSION and argument errors stay fast.
- ``assign(store, handle, node, ipam, attrs)``: the addresses of ``handle``. A retried ADD
  (same handle) *reuses* the addresses already allocated to the handle when they cover what the
  config asks for; otherwise it releases them and allocates anew with ``IPAM.auto_assign``.
- ``release(store, handle)``: idempotent release by handle.
- ``delegate(...)``: run another IPAM plugin (``ipam.type`` found in ``CNI_PATH``) as a runtime
  would, for configs that use e.g. ``host-local``.
- ``datastore_errors()``: turns datastore/IPAM exceptions into ``CNIError`` with the right code
  (etcd unreachable -> 11 "try again later"; exhausted pool -> 101; no matching pool -> 102).

Invariants: an allocation is always recorded under the handle before anything uses it, so a
DEL (release by handle) frees whatever a crashed ADD allocated.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import subprocess
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from cni.config import IpamConf, NetConf
from cni.errors import (
    DATASTORE,
    INVALID_CONFIG,
    IPAM_DELEGATE,
    IPAM_EXHAUSTED,
    IPAM_NO_POOL,
    TRY_AGAIN_LATER,
    CNIError,
)

if TYPE_CHECKING:
    from datastore.kv import KVStore

__all__ = ["assign", "datastore_errors", "delegate", "open_store", "owned", "release"]

log = logging.getLogger(__name__)

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address


@contextlib.contextmanager
def datastore_errors(what: str) -> Iterator[None]:
    """Translate datastore and IPAM failures raised inside the block into ``CNIError``."""
    from datastore.errors import DatastoreError, ValidationError  # noqa: PLC0415
    from datastore.etcd import ConfigError  # noqa: PLC0415
    from datastore.ipam import IPAMError, NoMatchingPoolError, PoolExhaustedError  # noqa: PLC0415
    from datastore.kv import UnavailableError  # noqa: PLC0415

    try:
        yield
    except CNIError:
        raise
    except UnavailableError as exc:
        raise CNIError(
            TRY_AGAIN_LATER, f"{what}: etcd is unavailable; check etcd_endpoints", str(exc)
        ) from exc
    except ConfigError as exc:
        raise CNIError(INVALID_CONFIG, f"{what}: etcd configuration: {exc}") from exc
    except ValidationError as exc:
        raise CNIError(INVALID_CONFIG, f"{what}: {exc}") from exc
    except PoolExhaustedError as exc:
        raise CNIError(
            IPAM_EXHAUSTED, f"{what}: the IP pools are exhausted; add or grow an IPPool", str(exc)
        ) from exc
    except NoMatchingPoolError as exc:
        raise CNIError(
            IPAM_NO_POOL,
            f"{what}: no usable IPPool; create one or fix ipam.ipv4_pools/ipv6_pools",
            str(exc),
        ) from exc
    except (IPAMError, DatastoreError) as exc:
        raise CNIError(DATASTORE, f"{what}: {exc}") from exc


def open_store(conf: NetConf) -> KVStore:
    from datastore.etcd import EtcdConfig, EtcdKVStore  # noqa: PLC0415

    with datastore_errors("connecting to etcd"):
        if conf.etcd_endpoints:
            cfg = EtcdConfig(
                endpoints=conf.etcd_endpoints,
                ca_cert_file=conf.etcd_ca_cert_file,
                cert_file=conf.etcd_cert_file,
                key_file=conf.etcd_key_file,
                timeout=conf.etcd_timeout,
            )
        else:
            env = EtcdConfig.from_env()
            cfg = EtcdConfig(
                endpoints=env.endpoints,
                ca_cert_file=conf.etcd_ca_cert_file or env.ca_cert_file,
                cert_file=conf.etcd_cert_file or env.cert_file,
                key_file=conf.etcd_key_file or env.key_file,
                timeout=conf.etcd_timeout,
            )
        return EtcdKVStore(cfg)


def _pools(raw: tuple[str, ...]) -> tuple[str, ...]:
    return raw


def owned(store: KVStore, handle: str) -> list[IPAddr]:
    from datastore.ipam import IPAM  # noqa: PLC0415

    with datastore_errors(f"reading IPAM handle {handle}"):
        return list(IPAM(store).ips_by_handle(handle))


def assign(
    store: KVStore, handle: str, node: str, ipam: IpamConf, attrs: Mapping[str, str]
) -> list[IPInterface]:
    """Addresses for ``handle`` (see module docstring: reuse on a retried ADD)."""
    from datastore.ipam import IPAM  # noqa: PLC0415

    want_v4 = 1 if ipam.assign_ipv4 else 0
    want_v6 = 1 if ipam.assign_ipv6 else 0
    with datastore_errors(f"assigning addresses to {handle}"):
        client = IPAM(store)
        existing = list(client.ips_by_handle(handle))
        have_v4 = sum(1 for ip in existing if ip.version == 4)
        have_v6 = sum(1 for ip in existing if ip.version == 6)
        if existing and have_v4 == want_v4 and have_v6 == want_v6:
            log.info("cni.ipam.reuse handle=%s ips=%s", handle, ",".join(str(i) for i in existing))
            ips: list[IPAddr] = existing
        else:
            if existing:
                log.info("cni.ipam.release_stale handle=%s count=%d", handle, len(existing))
                client.release_by_handle(handle)
            v4, v6 = client.auto_assign(
                handle,
                node,
                num_v4=want_v4,
                num_v6=want_v6,
                pools_v4=_pools(ipam.ipv4_pools),
                pools_v6=_pools(ipam.ipv6_pools),
                attrs=dict(attrs),
            )
            ips = [*v4, *v6]
            log.info("cni.ipam.assigned handle=%s ips=%s", handle, ",".join(str(i) for i in ips))
    if len(ips) != want_v4 + want_v6:
        release(store, handle)
        raise CNIError(
            IPAM_EXHAUSTED,
            f"IPAM gave {len(ips)} addresses for {handle}, wanted {want_v4} IPv4 + {want_v6} IPv6",
        )
    return [ipaddress.ip_interface(f"{ip}/{ip.max_prefixlen}") for ip in ips]


def release(store: KVStore, handle: str) -> list[IPAddr]:
    from datastore.ipam import IPAM  # noqa: PLC0415

    with datastore_errors(f"releasing addresses of {handle}"):
        released = list(IPAM(store).release_by_handle(handle))
    if released:
        log.info("cni.ipam.released handle=%s ips=%s", handle, ",".join(str(i) for i in released))
    return released


# ---------------------------------------------------------------------------------------------
# delegation to another IPAM plugin


def find_plugin(plugin_type: str, path: tuple[str, ...]) -> str:
    if "/" in plugin_type or not plugin_type:
        raise CNIError(INVALID_CONFIG, f"network config: ipam.type {plugin_type!r} is not valid")
    for directory in path:
        candidate = os.path.join(directory, plugin_type)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise CNIError(
        INVALID_CONFIG,
        f"IPAM plugin {plugin_type!r} not found in CNI_PATH ({':'.join(path) or 'empty'})",
    )


def delegate(
    plugin_type: str,
    command: str,
    stdin: bytes,
    environ: Mapping[str, str],
    path: tuple[str, ...],
) -> dict[str, Any] | None:
    """Run IPAM plugin ``plugin_type`` with ``CNI_COMMAND=command``; its parsed stdout."""
    exe = find_plugin(plugin_type, path)
    env = {**environ, "CNI_COMMAND": command}
    res = subprocess.run([exe], input=stdin, capture_output=True, env=env, timeout=120, check=False)
    out: Any = None
    if res.stdout.strip():
        try:
            out = json.loads(res.stdout)
        except ValueError:
            out = None
    if res.returncode != 0:
        if isinstance(out, dict) and isinstance(out.get("code"), int):
            raise CNIError(
                int(out["code"]),
                f"IPAM plugin {plugin_type} {command}: {out.get('msg', '')}",
                str(out.get("details", "")),
            )
        raise CNIError(
            IPAM_DELEGATE,
            f"IPAM plugin {plugin_type} {command} failed (exit {res.returncode})",
            res.stderr.decode(errors="replace").strip()[-2000:],
        )
    if command == "ADD" and not isinstance(out, dict):
        raise CNIError(IPAM_DELEGATE, f"IPAM plugin {plugin_type} ADD printed no JSON result")
    return out if isinstance(out, dict) else None
