"""Node IPv4 address autodetection with Calico's ``IP_AUTODETECTION_METHOD`` names.

Role: choose the address (WITH its prefix length: CrossSubnet decisions use the node's subnet)
that a node registers as ``spec.bgp.ipv4Address``. ``parse_method`` reads a method string,
``detect`` picks an address from a list of interfaces; both are pure. ``read_interfaces`` and
``route_source`` are the only I/O here (read-only ``ip -j`` queries of the current network
namespace, or of ``netns`` via ``ip -n``); nothing is ever written to the kernel.

Methods (as Calico's calico/node documents them):
- ``first-found``: the first valid address on the first valid interface, skipping
  ``DEFAULT_EXCLUDES`` (docker bridges, veths, CNI and tunnel devices, loopback, tabby's own
  workload interfaces ``tbw*``...).
- ``interface=REGEX[,REGEX...]``: as first-found, over the interfaces whose name matches one of
  the regexes (Calico's semantics: unanchored search, so ``eth0`` also matches ``eth0.100``;
  write ``^eth0$`` for exactly one). The default exclusions do not apply.
- ``skip-interface=REGEX[,REGEX...]``: first-found, also skipping the matching interfaces.
- ``cidr=CIDR[,CIDR...]``: the first valid address inside one of the CIDRs, on any interface.
- ``can-reach=DEST``: the source address the routing table picks to reach DEST (an address or
  a host name), matched back to the interface that holds it for the prefix length.

Invariants:
- "Valid" means IPv4 and globally usable as a node address: not loopback, link-local,
  multicast, unspecified or broadcast; only interfaces that are administratively up count.
- Order is deterministic: interfaces by ifindex, addresses in the kernel's order (primary
  first). (Calico's own enumeration order is "system dependent"; on a host with several
  eligible interfaces, use ``interface=``, ``cidr=`` or ``can-reach=`` rather than relying on
  order.)
- Errors are ``AutodetectError`` naming the method and what was looked at.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import socket
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any, Literal

from datastore.errors import DatastoreError

__all__ = [
    "DEFAULT_EXCLUDES",
    "AutodetectError",
    "Detected",
    "HostInterface",
    "Method",
    "choose_address",
    "detect",
    "interfaces_from_ip_json",
    "local_prefix",
    "parse_method",
    "read_interfaces",
    "resolve_target",
    "route_source",
]

log = logging.getLogger(__name__)

MethodKind = Literal["first-found", "interface", "skip-interface", "cidr", "can-reach"]

# Interfaces that never carry the node's address (Calico's list, plus tabby's ``tbw`` workload
# veths and ``tby`` devices). Regexes, searched in the interface name.
DEFAULT_EXCLUDES: tuple[str, ...] = (
    r"^docker.*",
    r"^cbr.*",
    r"^dummy.*",
    r"^virbr.*",
    r"^lxcbr.*",
    r"^veth.*",
    r"^lo",
    r"^cali.*",
    r"^tunl.*",
    r"^flannel.*",
    r"^kube-ipvs.*",
    r"^cni.*",
    r"^vxlan\.calico.*",
    r"^vxlan-v6\.calico.*",
    r"^wireguard\.cali.*",
    r"^wg-v6\.cali.*",
    r"^nodelocaldns.*",
    r"^tbw.*",
    r"^tby.*",
)

_BROADCAST = IPv4Address("255.255.255.255")
_SPLIT = re.compile(r"\s*,\s*")
IP_TIMEOUT = 10.0


class AutodetectError(DatastoreError):
    """No address could be chosen, or the method is malformed."""


@dataclass(frozen=True, slots=True)
class HostInterface:
    """One interface as the kernel reports it: name, index, admin state, IPv4 addresses."""

    name: str
    index: int = 0
    up: bool = True
    addresses: tuple[IPv4Interface, ...] = ()


@dataclass(frozen=True, slots=True)
class Method:
    """A parsed ``IP_AUTODETECTION_METHOD``."""

    kind: MethodKind
    regexes: tuple[str, ...] = ()
    cidrs: tuple[IPv4Network, ...] = ()
    target: str = ""

    def __str__(self) -> str:
        if self.kind == "first-found":
            return "first-found"
        if self.kind == "cidr":
            return "cidr=" + ",".join(str(c) for c in self.cidrs)
        if self.kind == "can-reach":
            return f"can-reach={self.target}"
        return f"{self.kind}=" + ",".join(self.regexes)


@dataclass(frozen=True, slots=True)
class Detected:
    """The chosen address and where it was found."""

    address: IPv4Interface
    interface: str
    method: Method


def _regexes(method: str, text: str) -> tuple[str, ...]:
    parts = tuple(p for p in _SPLIT.split(text.strip()) if p)
    if not parts:
        raise AutodetectError(f"IP autodetection method {method!r}: give at least one regex")
    for p in parts:
        try:
            re.compile(p)
        except re.error as exc:
            raise AutodetectError(
                f"IP autodetection method {method!r}: invalid regex {p!r}: {exc}"
            ) from None
    return parts


def parse_method(text: str | None) -> Method:
    """``first-found`` (also for empty/None), ``interface=``, ``skip-interface=``, ``cidr=``,
    ``can-reach=``; anything else is an ``AutodetectError``."""
    raw = (text or "").strip()
    if raw in ("", "first-found"):
        return Method("first-found")
    for prefix in ("interface=", "skip-interface="):
        if raw.startswith(prefix):
            kind: MethodKind = "interface" if prefix == "interface=" else "skip-interface"
            return Method(kind, regexes=_regexes(raw, raw[len(prefix) :]))
    if raw.startswith("cidr="):
        cidrs: list[IPv4Network] = []
        for part in _SPLIT.split(raw[len("cidr=") :].strip()):
            if not part:
                continue
            try:
                net = ipaddress.ip_network(part, strict=False)
            except ValueError:
                raise AutodetectError(
                    f"IP autodetection method {raw!r}: invalid CIDR {part!r}"
                ) from None
            if not isinstance(net, IPv4Network):
                raise AutodetectError(
                    f"IP autodetection method {raw!r}: {part!r} is not an IPv4 CIDR"
                )
            cidrs.append(net)
        if not cidrs:
            raise AutodetectError(f"IP autodetection method {raw!r}: give at least one CIDR")
        return Method("cidr", cidrs=tuple(cidrs))
    if raw.startswith("can-reach="):
        target = raw[len("can-reach=") :].strip()
        if not target:
            raise AutodetectError(
                f"IP autodetection method {raw!r}: give an address or host name to reach"
            )
        return Method("can-reach", target=target)
    raise AutodetectError(
        f"unknown IP autodetection method {raw!r} (expected first-found, interface=REGEX, "
        "skip-interface=REGEX, cidr=CIDR or can-reach=DEST)"
    )


def _usable(addr: IPv4Interface) -> bool:
    ip = addr.ip
    return not (
        ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_unspecified
        or ip == _BROADCAST
    )


def _matches(name: str, regexes: Sequence[str]) -> bool:
    return any(re.search(r, name) for r in regexes)


def _first(
    interfaces: Sequence[HostInterface],
    method: Method,
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    cidrs: Sequence[IPv4Network] = (),
) -> Detected:
    looked: list[str] = []
    for iface in sorted(interfaces, key=lambda i: i.index):
        if include and not _matches(iface.name, include):
            continue
        if exclude and _matches(iface.name, exclude):
            continue
        if not iface.up:
            looked.append(f"{iface.name} (down)")
            continue
        looked.append(iface.name)
        for addr in iface.addresses:
            if _usable(addr) and (not cidrs or any(addr.ip in c for c in cidrs)):
                return Detected(addr, iface.name, method)
    where = ", ".join(looked) if looked else "no eligible interface"
    raise AutodetectError(f"IP autodetection {method}: no usable IPv4 address (looked at {where})")


def detect(
    interfaces: Sequence[HostInterface],
    method: Method,
    reach_source: IPv4Address | None = None,
) -> Detected:
    """Choose the node address by ``method`` (pure).

    For ``can-reach``, ``reach_source`` is the source address the routing table chose for the
    target (``route_source``); it is matched against every interface to find its prefix length.
    """
    if method.kind == "first-found":
        return _first(interfaces, method, exclude=DEFAULT_EXCLUDES)
    if method.kind == "interface":
        return _first(interfaces, method, include=method.regexes)
    if method.kind == "skip-interface":
        return _first(interfaces, method, exclude=DEFAULT_EXCLUDES + method.regexes)
    if method.kind == "cidr":
        return _first(interfaces, method, cidrs=method.cidrs)
    if reach_source is None:
        raise AutodetectError(f"IP autodetection {method}: no route source address")
    for iface in sorted(interfaces, key=lambda i: i.index):
        for addr in iface.addresses:
            if addr.ip == reach_source:
                return Detected(addr, iface.name, method)
    raise AutodetectError(
        f"IP autodetection {method}: the route's source address {reach_source} is not on any "
        "local interface"
    )


def local_prefix(interfaces: Sequence[HostInterface], ip: IPv4Address) -> Detected | None:
    """The interface address equal to ``ip`` (to give a bare ``--ip`` its prefix length)."""
    for iface in sorted(interfaces, key=lambda i: i.index):
        for addr in iface.addresses:
            if addr.ip == ip:
                return Detected(addr, iface.name, Method("first-found"))
    return None


# --- read-only kernel queries ---------------------------------------------------------------


def _ip_json(argv: Sequence[str], netns: str | None) -> Any:
    cmd = ["ip", *(["-n", netns] if netns else []), "-j", *argv]
    try:
        res = subprocess.run(
            cmd,
            check=False,
            capture_output=True,
            text=True,
            timeout=IP_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise AutodetectError(f"{' '.join(cmd)}: {exc}") from None
    if res.returncode != 0:
        msg = " ".join(res.stderr.split()) or f"exit status {res.returncode}"
        raise AutodetectError(f"{' '.join(cmd)}: {msg}")
    try:
        return json.loads(res.stdout or "[]")
    except ValueError as exc:
        raise AutodetectError(f"{' '.join(cmd)}: unreadable output: {exc}") from None


def interfaces_from_ip_json(doc: Any) -> list[HostInterface]:
    """``ip -j addr show`` output -> interfaces (IPv4 addresses only; pure)."""
    out: list[HostInterface] = []
    if not isinstance(doc, list):
        return out
    for link in doc:
        if not isinstance(link, dict) or not isinstance(link.get("ifname"), str):
            continue
        addrs: list[IPv4Interface] = []
        for info in link.get("addr_info") or ():
            if not isinstance(info, dict) or info.get("family") != "inet":
                continue
            try:
                addrs.append(IPv4Interface(f"{info['local']}/{int(info['prefixlen'])}"))
            except (KeyError, ValueError, TypeError):
                continue
        flags = link.get("flags") or ()
        out.append(
            HostInterface(
                name=link["ifname"],
                index=int(link.get("ifindex") or 0),
                up="UP" in flags,
                addresses=tuple(addrs),
            )
        )
    return out


def read_interfaces(netns: str | None = None) -> list[HostInterface]:
    """Interfaces and IPv4 addresses of the current namespace (or ``netns``), read-only."""
    return interfaces_from_ip_json(_ip_json(["-4", "addr", "show"], netns))


def resolve_target(target: str) -> IPv4Address:
    """An IPv4 address, or the first IPv4 address a host name resolves to."""
    try:
        ip = ipaddress.ip_address(target)
    except ValueError:
        pass
    else:
        if not isinstance(ip, IPv4Address):
            raise AutodetectError(f"can-reach={target}: only IPv4 destinations are supported")
        return ip
    try:
        infos = socket.getaddrinfo(target, None, socket.AF_INET, socket.SOCK_DGRAM)
    except OSError as exc:
        raise AutodetectError(f"can-reach={target}: cannot resolve: {exc}") from None
    for info in infos:
        return IPv4Address(info[4][0])
    raise AutodetectError(f"can-reach={target}: no IPv4 address")


def route_source(target: str, netns: str | None = None) -> IPv4Address:
    """The source address the routing table uses to reach ``target`` (``ip route get``)."""
    dest = resolve_target(target)
    doc = _ip_json(["-4", "route", "get", str(dest)], netns)
    routes = doc if isinstance(doc, list) else []
    for route in routes:
        if isinstance(route, dict) and isinstance(route.get("prefsrc"), str):
            src = IPv4Address(route["prefsrc"])
            log.debug("autodetect.route_get dest=%s prefsrc=%s", dest, src)
            return src
    raise AutodetectError(f"can-reach={target}: the route to {dest} names no source address")


def choose_address(
    method_text: str | None, ip_text: str | None = None, netns: str | None = None
) -> Detected:
    """The node address: ``ip_text`` when given (``ADDRESS/LEN``; a bare address takes its
    prefix length from the interface that holds it), else detected by ``method_text``.
    ``autodetect`` as ``ip_text`` means "detect", as Calico's ``IP=autodetect``. Reads the
    kernel (read-only); ``netns`` only for tools that look into another namespace."""
    given = (ip_text or "").strip()
    if given and given.lower() != "autodetect":
        return _given_address(given, netns)
    method = parse_method(method_text)
    interfaces = read_interfaces(netns)
    source = route_source(method.target, netns) if method.kind == "can-reach" else None
    found = detect(interfaces, method, source)
    log.info(
        "autodetect.found method=%s interface=%s address=%s", method, found.interface, found.address
    )
    return found


def _given_address(text: str, netns: str | None) -> Detected:
    given = Method("first-found")
    if "/" in text:
        try:
            return Detected(IPv4Interface(text), "", given)
        except ValueError:
            raise AutodetectError(f"--ip {text!r}: expected an IPv4 ADDRESS/PREFIXLEN") from None
    try:
        ip = IPv4Address(text)
    except ValueError:
        raise AutodetectError(f"--ip {text!r}: expected an IPv4 ADDRESS/PREFIXLEN") from None
    found = local_prefix(read_interfaces(netns), ip)
    if found is None:
        raise AutodetectError(
            f"--ip {text}: no prefix length given and no local interface has {ip}; "
            "give ADDRESS/PREFIXLEN (the node's subnet matters for CrossSubnet)"
        )
    return found
