"""CNI results: typed values, JSON for each supported cniVersion, and ``prevResult`` parsing.

Role: ``Result`` is what ADD prints on stdout and what a chained plugin receives as
``prevResult``. ``to_dict(version)`` renders it for the configuration's ``cniVersion``:
1.0.0 drops the per-IP ``version`` field that 0.3.0/0.3.1/0.4.0 carry; everything else has the
same shape (``interfaces`` with ``name``/``mac``/``sandbox``, ``ips`` with ``address`` (CIDR),
``gateway`` and ``interface`` (index into ``interfaces``), ``routes``, ``dns``).
``parse_result`` reads any of those versions back (a ``prevResult``), raising ``CNIError`` (7)
naming the field on bad input.

Invariants: ``parse_result(r.to_dict(v)) == r`` for every supported ``v``; pure, no I/O.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cni.errors import INVALID_CONFIG, CNIError

__all__ = ["IPConfig", "Interface", "Result", "Route", "parse_result", "version_result"]

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNet = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Interface:
    name: str
    mac: str = ""
    sandbox: str = ""


@dataclass(frozen=True, slots=True)
class IPConfig:
    address: IPInterface
    interface: int | None = None
    gateway: IPAddr | None = None


@dataclass(frozen=True, slots=True)
class Route:
    dst: IPNet
    gw: IPAddr | None = None


@dataclass(frozen=True, slots=True)
class Result:
    interfaces: tuple[Interface, ...] = ()
    ips: tuple[IPConfig, ...] = ()
    routes: tuple[Route, ...] = ()
    dns: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self, cni_version: str) -> dict[str, Any]:
        legacy = cni_version != "1.0.0"
        out: dict[str, Any] = {"cniVersion": cni_version}
        if self.interfaces:
            ifaces = []
            for iface in self.interfaces:
                d: dict[str, Any] = {"name": iface.name}
                if iface.mac:
                    d["mac"] = iface.mac
                if iface.sandbox:
                    d["sandbox"] = iface.sandbox
                ifaces.append(d)
            out["interfaces"] = ifaces
        ips = []
        for ip in self.ips:
            d = {}
            if legacy:
                d["version"] = str(ip.address.version)
            d["address"] = ip.address.with_prefixlen
            if ip.gateway is not None:
                d["gateway"] = str(ip.gateway)
            if ip.interface is not None:
                d["interface"] = ip.interface
            ips.append(d)
        out["ips"] = ips
        if self.routes:
            routes = []
            for r in self.routes:
                rd: dict[str, Any] = {"dst": r.dst.with_prefixlen}
                if r.gw is not None:
                    rd["gw"] = str(r.gw)
                routes.append(rd)
            out["routes"] = routes
        out["dns"] = dict(self.dns)
        return out


def version_result(cni_version: str, supported: tuple[str, ...]) -> dict[str, Any]:
    return {"cniVersion": cni_version, "supportedVersions": list(supported)}


def _bad(path: str, problem: str) -> CNIError:
    return CNIError(INVALID_CONFIG, f"prevResult: {path}: {problem}")


def parse_result(raw: Mapping[str, Any]) -> Result:
    """A result of any supported version (e.g. ``prevResult``) as a ``Result``."""
    interfaces: list[Interface] = []
    for i, d in enumerate(raw.get("interfaces") or []):
        if not isinstance(d, dict) or not isinstance(d.get("name"), str):
            raise _bad(f"interfaces[{i}]", "expected an object with a name")
        interfaces.append(Interface(d["name"], str(d.get("mac", "")), str(d.get("sandbox", ""))))
    ips: list[IPConfig] = []
    for i, d in enumerate(raw.get("ips") or []):
        if not isinstance(d, dict):
            raise _bad(f"ips[{i}]", "expected an object")
        try:
            address = ipaddress.ip_interface(str(d.get("address", "")))
            gw = ipaddress.ip_address(d["gateway"]) if d.get("gateway") else None
        except ValueError as exc:
            raise _bad(f"ips[{i}]", str(exc)) from None
        index = d.get("interface")
        if index is not None and (
            not isinstance(index, int) or isinstance(index, bool) or index < 0
        ):
            raise _bad(f"ips[{i}].interface", "expected a non-negative integer")
        ips.append(IPConfig(address, index, gw))
    routes: list[Route] = []
    for i, d in enumerate(raw.get("routes") or []):
        if not isinstance(d, dict):
            raise _bad(f"routes[{i}]", "expected an object")
        try:
            dst = ipaddress.ip_network(str(d.get("dst", "")), strict=False)
            rgw = ipaddress.ip_address(d["gw"]) if d.get("gw") else None
        except ValueError as exc:
            raise _bad(f"routes[{i}]", str(exc)) from None
        routes.append(Route(dst, rgw))
    dns = raw.get("dns") or {}
    return Result(
        tuple(interfaces), tuple(ips), tuple(routes), dns if isinstance(dns, dict) else {}
    )
