"""Network configuration and runtime environment of one CNI invocation, parsed and validated.

Inputs: the network configuration JSON a runtime writes on stdin (one plugin's entry of a
``.conflist``, with ``name``, ``cniVersion`` and, when chained, ``prevResult`` injected) and the
``CNI_*`` environment variables. Outputs: ``NetConf`` and ``CniEnv`` values.

Keys follow Calico's CNI plugin where it has them: ``etcd_endpoints`` (comma-separated),
``etcd_key_file``, ``etcd_cert_file``, ``etcd_ca_cert_file``, ``nodename``, ``nodename_file``,
``nodename_file_optional``, ``mtu`` (default 1500), ``log_level``, ``log_file_path``,
``ipam: {type, ipv4_pools, ipv6_pools, assign_ipv4, assign_ipv6}`` (``assign_*`` are strings
``"true"``/``"false"`` in Calico; booleans are accepted too), ``dns``; ``policy``,
``kubernetes``, ``datastore_type: etcdv3`` are accepted and ignored. tabby extensions:
``labels`` (map) and ``profiles`` (list) for the WorkloadEndpoint, ``etcd_timeout`` (seconds).
Labels may also come from the CNI convention ``args.cni.labels: [{key, value}]``.

Invariants: every problem raises ``CNIError`` with code 7 (invalid network config), 6 (cannot
decode), 1 (unsupported cniVersion) or 4 (bad environment); the message names the key (dotted
path) and says what is expected. Pure module apart from ``resolve_nodename`` (reads a file,
asks the hostname).
"""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cni.errors import BAD_ENV, DECODE, INCOMPATIBLE_VERSION, INVALID_CONFIG, CNIError

__all__ = [
    "DEFAULT_MTU",
    "DEFAULT_NODENAME_FILE",
    "SUPPORTED_VERSIONS",
    "CniEnv",
    "IpamConf",
    "NetConf",
    "parse_cni_args",
    "parse_env",
    "parse_ipam_conf",
    "parse_netconf",
    "resolve_nodename",
]

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0")
DEFAULT_MTU = 1500
DEFAULT_NODENAME_FILE = "/var/lib/calico/nodename"
COMMANDS = ("ADD", "DEL", "CHECK", "VERSION")
_CONTAINER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
_IFNAME_BAD = re.compile(r"[/:\s]")
_LOG_LEVELS = ("debug", "info", "warning", "warn", "error", "fatal", "panic")


def _bad(path: str, problem: str) -> CNIError:
    return CNIError(INVALID_CONFIG, f"network config: {path}: {problem}")


@dataclass(frozen=True, slots=True)
class IpamConf:
    """The ``ipam`` section; ``raw`` is kept for delegating to another IPAM plugin."""

    type: str
    ipv4_pools: tuple[str, ...] = ()
    ipv6_pools: tuple[str, ...] = ()
    assign_ipv4: bool = True
    assign_ipv6: bool = False
    raw: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class NetConf:
    """One plugin's network configuration (see module docstring for the keys)."""

    cni_version: str
    name: str
    type: str
    ipam: IpamConf | None
    etcd_endpoints: tuple[str, ...] = ()
    etcd_key_file: str | None = None
    etcd_cert_file: str | None = None
    etcd_ca_cert_file: str | None = None
    etcd_timeout: float = 5.0
    nodename: str = ""
    nodename_file: str = DEFAULT_NODENAME_FILE
    nodename_file_optional: bool = True
    mtu: int = DEFAULT_MTU
    log_level: str = "warning"
    log_file_path: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    profiles: tuple[str, ...] | None = None
    dns: Mapping[str, Any] = field(default_factory=dict)
    prev_result: Mapping[str, Any] | None = None
    raw: Mapping[str, Any] = field(default_factory=dict)


def _str(d: Mapping[str, Any], key: str, path: str, default: str = "") -> str:
    value = d.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise _bad(f"{path}{key}", f"expected a string, got {type(value).__name__}")
    return value


def _bool(d: Mapping[str, Any], key: str, path: str, default: bool) -> bool:
    value = d.get(key)
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise _bad(f"{path}{key}", f'expected "true" or "false", got {value!r}')


def _str_list(d: Mapping[str, Any], key: str, path: str) -> tuple[str, ...]:
    value = d.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _bad(f"{path}{key}", "expected a list of non-empty strings")
    return tuple(value)


def _check_pools(pools: tuple[str, ...], version: int, path: str) -> None:
    import ipaddress  # noqa: PLC0415 - only needed when pools are given

    for i, pool in enumerate(pools):
        if "/" not in pool:
            continue  # a pool name
        try:
            net = ipaddress.ip_network(pool, strict=False)
        except ValueError:
            raise _bad(f"{path}[{i}]", f"{pool!r} is neither a pool name nor a CIDR") from None
        if net.version != version:
            raise _bad(f"{path}[{i}]", f"{pool} is not an IPv{version} CIDR")


def parse_ipam_conf(raw: object, path: str = "ipam") -> IpamConf:
    if not isinstance(raw, dict):
        raise _bad(path, "expected an object with at least a 'type'")
    typ = _str(raw, "type", f"{path}.")
    if not typ:
        raise _bad(f"{path}.type", "missing: set it to the IPAM plugin, e.g. 'tabby-ipam'")
    v4 = _str_list(raw, "ipv4_pools", f"{path}.")
    v6 = _str_list(raw, "ipv6_pools", f"{path}.")
    _check_pools(v4, 4, f"{path}.ipv4_pools")
    _check_pools(v6, 6, f"{path}.ipv6_pools")
    assign_v4 = _bool(raw, "assign_ipv4", f"{path}.", True)
    assign_v6 = _bool(raw, "assign_ipv6", f"{path}.", False)
    if typ == "tabby-ipam" and not (assign_v4 or assign_v6):
        raise _bad(path, "assign_ipv4 and assign_ipv6 are both false: nothing to assign")
    return IpamConf(typ, v4, v6, assign_v4, assign_v6, dict(raw))


def _labels(raw: Mapping[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = {}
    value = raw.get("labels")
    if value is not None:
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise _bad("labels", "expected a map of string to string")
        labels.update(value)
    args = raw.get("args")
    if isinstance(args, dict) and isinstance(args.get("cni"), dict):
        conv = args["cni"].get("labels")
        if conv is not None:
            if not isinstance(conv, list):
                raise _bad("args.cni.labels", "expected a list of {key, value}")
            for i, item in enumerate(conv):
                if (
                    not isinstance(item, dict)
                    or not isinstance(item.get("key"), str)
                    or not isinstance(item.get("value"), str)
                ):
                    raise _bad(f"args.cni.labels[{i}]", "expected {key: string, value: string}")
                labels[item["key"]] = item["value"]
    return labels


def parse_netconf(data: bytes | str, *, require_name: bool = True) -> NetConf:
    """Parse and validate the network configuration from stdin."""
    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CNIError(DECODE, "network config on stdin is not valid JSON", str(exc)) from None
    if not isinstance(raw, dict):
        raise CNIError(DECODE, "network config on stdin must be a JSON object")
    version = _str(raw, "cniVersion", "")
    if not version:
        raise _bad("cniVersion", f"missing; supported: {', '.join(SUPPORTED_VERSIONS)}")
    if version not in SUPPORTED_VERSIONS:
        raise CNIError(
            INCOMPATIBLE_VERSION,
            f"cniVersion {version!r} is not supported; use one of {', '.join(SUPPORTED_VERSIONS)}",
        )
    name = _str(raw, "name", "")
    if require_name and not name:
        raise _bad("name", "missing: the network name is required")
    typ = _str(raw, "type", "")
    ipam = parse_ipam_conf(raw["ipam"]) if raw.get("ipam") is not None else None

    endpoints_raw = raw.get("etcd_endpoints", "")
    if isinstance(endpoints_raw, list):
        endpoints_raw = ",".join(str(e) for e in endpoints_raw)
    if not isinstance(endpoints_raw, str):
        raise _bad("etcd_endpoints", "expected a comma-separated string of URLs")
    endpoints = tuple(e.strip() for e in endpoints_raw.split(",") if e.strip())
    dstype = _str(raw, "datastore_type", "", "etcdv3")
    if dstype != "etcdv3":
        raise _bad("datastore_type", f"{dstype!r} is not supported; only 'etcdv3'")

    mtu = raw.get("mtu", DEFAULT_MTU)
    if mtu is None or mtu == 0:
        mtu = DEFAULT_MTU
    if isinstance(mtu, str) and mtu.isdigit():
        mtu = int(mtu)
    if isinstance(mtu, bool) or not isinstance(mtu, int) or not 68 <= mtu <= 65535:
        raise _bad("mtu", f"expected an integer between 68 and 65535, got {mtu!r}")

    timeout = raw.get("etcd_timeout", 5.0)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise _bad("etcd_timeout", f"expected a positive number of seconds, got {timeout!r}")

    log_level = _str(raw, "log_level", "", "warning").lower() or "warning"
    if log_level not in _LOG_LEVELS:
        raise _bad("log_level", f"{log_level!r}: use one of DEBUG, INFO, WARNING, ERROR")

    profiles: tuple[str, ...] | None = None
    if raw.get("profiles") is not None:
        profiles = _str_list(raw, "profiles", "")

    dns = raw.get("dns") or {}
    if not isinstance(dns, dict):
        raise _bad("dns", "expected an object (nameservers, domain, search, options)")
    prev = raw.get("prevResult")
    if prev is not None and not isinstance(prev, dict):
        raise _bad("prevResult", "expected an object (the previous plugin's result)")

    return NetConf(
        cni_version=version,
        name=name,
        type=typ,
        ipam=ipam,
        etcd_endpoints=endpoints,
        etcd_key_file=_str(raw, "etcd_key_file", "") or None,
        etcd_cert_file=_str(raw, "etcd_cert_file", "") or None,
        etcd_ca_cert_file=_str(raw, "etcd_ca_cert_file", "") or None,
        etcd_timeout=float(timeout),
        nodename=_str(raw, "nodename", "").strip(),
        nodename_file=_str(raw, "nodename_file", "") or DEFAULT_NODENAME_FILE,
        nodename_file_optional=_bool(raw, "nodename_file_optional", "", True),
        mtu=mtu,
        log_level=log_level,
        log_file_path=_str(raw, "log_file_path", ""),
        labels=_labels(raw),
        profiles=profiles,
        dns=dns,
        prev_result=prev,
        raw=raw,
    )


def resolve_nodename(conf: NetConf) -> str:
    """``nodename``, else the contents of ``nodename_file`` (if present), else the hostname."""
    if conf.nodename:
        return conf.nodename
    try:
        with open(conf.nodename_file) as f:
            name = f.read().strip()
        if name:
            return name
    except FileNotFoundError:
        if not conf.nodename_file_optional:
            raise _bad(
                "nodename_file", f"{conf.nodename_file} does not exist (is the node agent up?)"
            ) from None
    except OSError as exc:
        raise _bad("nodename_file", f"cannot read {conf.nodename_file}: {exc}") from None
    return socket.gethostname()


# ---------------------------------------------------------------------------------------------
# environment


@dataclass(frozen=True, slots=True)
class CniEnv:
    """The ``CNI_*`` variables of one invocation; ``args`` is ``CNI_ARGS`` as a map."""

    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: Mapping[str, str] = field(default_factory=dict)
    path: tuple[str, ...] = ()

    @property
    def pod_namespace(self) -> str:
        return self.args.get("K8S_POD_NAMESPACE", "")

    @property
    def pod_name(self) -> str:
        return self.args.get("K8S_POD_NAME", "")


def parse_cni_args(text: str) -> dict[str, str]:
    """``CNI_ARGS`` (``K=V;K2=V2``) as a map; raises ``CNIError`` (4) on a malformed pair."""
    out: dict[str, str] = {}
    for part in text.split(";"):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise CNIError(BAD_ENV, f"CNI_ARGS: {part!r} is not KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


def parse_env(environ: Mapping[str, str]) -> CniEnv:
    """Read and check the variables the command needs (CNI spec: DEL may lack CNI_NETNS)."""
    command = environ.get("CNI_COMMAND", "").strip().upper()
    if command not in COMMANDS:
        raise CNIError(
            BAD_ENV,
            f"CNI_COMMAND={environ.get('CNI_COMMAND', '')!r}: expected ADD, DEL, CHECK or VERSION",
        )
    if command == "VERSION":
        return CniEnv(command)
    required = ["CNI_CONTAINERID", "CNI_IFNAME"]
    if command in ("ADD", "CHECK"):
        required.append("CNI_NETNS")
    missing = [v for v in required if not environ.get(v, "").strip()]
    if missing:
        raise CNIError(BAD_ENV, f"{command} needs the environment variables {', '.join(missing)}")
    cid = environ["CNI_CONTAINERID"].strip()
    if not _CONTAINER_ID.fullmatch(cid):
        raise CNIError(
            BAD_ENV,
            f"CNI_CONTAINERID={cid[:80]!r}: must start with a letter or digit and contain only "
            "letters, digits, '_', '.', '-'",
        )
    ifname = environ["CNI_IFNAME"].strip()
    if len(ifname) > 15 or ifname in (".", "..") or _IFNAME_BAD.search(ifname):
        raise CNIError(
            BAD_ENV, f"CNI_IFNAME={ifname!r}: not a valid interface name (1-15 chars, no / : space)"
        )
    netns = environ.get("CNI_NETNS", "").strip()
    if netns and not os.path.isabs(netns):
        raise CNIError(BAD_ENV, f"CNI_NETNS={netns!r}: must be an absolute path")
    path = tuple(p for p in environ.get("CNI_PATH", "").split(os.pathsep) if p)
    return CniEnv(
        command=command,
        container_id=cid,
        netns=netns,
        ifname=ifname,
        args=parse_cni_args(environ.get("CNI_ARGS", "")),
        path=path,
    )
