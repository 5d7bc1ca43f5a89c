"""Felix configuration, layered as Calico's: defaults < FelixConfiguration "default" <
FelixConfiguration "node.<name>" < config file < FELIX_* environment variables.

Role: one table of parameters (Calico names, types, defaults) and the merge of the five sources,
remembering where each value came from so the agent can log it.
Inputs: FelixConfiguration specs (typed, from the datastore), an INI file (section ``[global]``,
``Name = value``, names case-insensitive as in Calico's felix.cfg), the environment.
Outputs: ``FelixConfig`` (frozen) and ``sources`` (parameter -> where its value came from).
Invariants: pure apart from reading the file and environment passed in; a bad value in any source
is reported (``ConfigError`` naming source and parameter) and never silently ignored for the
file and environment; a bad value in a datastore resource is logged and that source skipped for
that parameter (the datastore must not be able to stop the agent).
Bootstrap parameters (etcd connection, node name) come only from the file, the environment and the
command line, since they are needed before the datastore is read.
"""

from __future__ import annotations

import configparser
import ipaddress
import logging
import math
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from datastore.model import FelixConfigurationSpec
from felix.render import CALICO_FAILSAFE_IN, CALICO_FAILSAFE_OUT, FailsafePort

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A configuration value could not be used; the message names source and parameter."""


@dataclass(frozen=True, slots=True)
class FelixConfig:
    """Effective felix settings (Calico parameter names in the comments)."""

    node_name: str = ""  # FelixHostname / NODENAME
    etcd_endpoints: str = "http://127.0.0.1:2379"  # EtcdEndpoints
    etcd_ca_file: str = ""  # EtcdCaFile
    etcd_cert_file: str = ""  # EtcdCertFile
    etcd_key_file: str = ""  # EtcdKeyFile
    log_severity_screen: str = "Info"  # LogSeverityScreen
    log_format: str = "text"  # LogFormat (tabby): text | json
    iptables_backend: str = "auto"  # IptablesBackend: auto | legacy | nft
    iptables_refresh_interval: float = 90.0  # IptablesRefreshInterval
    iptables_post_write_check_interval: float = 1.0  # IptablesPostWriteCheckInterval
    route_refresh_interval: float = 90.0  # RouteRefreshInterval
    ipsets_refresh_interval: float = 90.0  # IpsetsRefreshInterval
    interface_prefix: str = "tbw"  # InterfacePrefix
    default_endpoint_to_host_action: str = "Drop"  # DefaultEndpointToHostAction
    failsafe_inbound_host_ports: tuple[FailsafePort, ...] = CALICO_FAILSAFE_IN
    failsafe_outbound_host_ports: tuple[FailsafePort, ...] = CALICO_FAILSAFE_OUT
    ipv6_support: bool = True  # Ipv6Support
    iptables_mark_mask: int = 0xFFFF0000  # IptablesMarkMask
    health_enabled: bool = True  # HealthEnabled
    health_host: str = "127.0.0.1"  # HealthHost
    health_port: int = 9099  # HealthPort
    prometheus_metrics_enabled: bool = False  # PrometheusMetricsEnabled
    prometheus_metrics_host: str = "127.0.0.1"  # PrometheusMetricsHost
    prometheus_metrics_port: int = 9091  # PrometheusMetricsPort
    max_consecutive_failures: int = 5  # tabby: dataplane failures before exiting (fail closed)

    @property
    def mark_bits(self) -> tuple[int, int]:
        """(accept, pass) mark bits: the two lowest bits of the mark mask."""
        mask = self.iptables_mark_mask
        bits = [1 << i for i in range(32) if mask & (1 << i)]
        if len(bits) < 2:
            raise ConfigError("IptablesMarkMask: needs at least two bits")
        return bits[0], bits[1]


# ---------------------------------------------------------------------------- value parsing
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``1m30s``, ``500ms`` -> seconds."""
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        # float() also takes "nan", "inf" and negative numbers: none is a duration.
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"not a duration: {text!r}")
        return value
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError(f"not a duration: {text!r}")
    return total


def parse_bool(text: str) -> bool:
    t = text.strip().lower()
    if t in ("true", "1", "yes", "on"):
        return True
    if t in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def parse_ports(text: str) -> tuple[FailsafePort, ...]:
    """Calico's ``tcp:22,udp:68`` or ``tcp:10.0.0.0/8:22``; ``none`` or empty = no ports."""
    text = text.strip()
    if text.lower() in ("", "none"):
        return ()
    out = []
    for item in text.split(","):
        parts = item.strip().split(":")
        if len(parts) == 2:
            proto, port, net = parts[0], parts[1], None
        elif len(parts) == 3:
            proto, net, port = parts[0], parts[1], parts[2]
        else:
            raise ValueError(f"bad port entry {item!r} (want proto:port or proto:net:port)")
        proto = proto.lower()
        if proto not in ("tcp", "udp"):
            raise ValueError(f"bad protocol in {item!r}")
        n = int(port)
        if not 0 <= n <= 65535:
            raise ValueError(f"bad port in {item!r}")
        out.append(FailsafePort(proto, n, ipaddress.ip_network(net) if net else None))
    return tuple(out)


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        for a in allowed:
            if text.strip().lower() == a.lower():
                return a
        raise ValueError(f"{text!r} is not one of {', '.join(allowed)}")

    return parse


def _int(text: str) -> int:
    return int(text.strip(), 0)


def _check_mark_mask(mask: int) -> int:
    if not 0 <= mask <= 0xFFFFFFFF or bin(mask).count("1") < 2:
        raise ValueError(f"{mask:#x} needs at least two bits within 32 bits")
    return mask


def _mark_mask(text: str) -> int:
    return _check_mark_mask(_int(text))


# Calico name -> (FelixConfig attribute, parser for text sources, bootstrap-only)
@dataclass(frozen=True, slots=True)
class Param:
    name: str
    attr: str
    parse: Callable[[str], Any]
    bootstrap: bool = False


PARAMS: tuple[Param, ...] = (
    Param("FelixHostname", "node_name", str.strip, True),
    Param("EtcdEndpoints", "etcd_endpoints", str.strip, True),
    Param("EtcdCaFile", "etcd_ca_file", str.strip, True),
    Param("EtcdCertFile", "etcd_cert_file", str.strip, True),
    Param("EtcdKeyFile", "etcd_key_file", str.strip, True),
    Param(
        "LogSeverityScreen",
        "log_severity_screen",
        _choice("Debug", "Info", "Warning", "Error", "Fatal"),
    ),
    Param("LogFormat", "log_format", _choice("text", "json")),
    Param("IptablesBackend", "iptables_backend", _choice("auto", "legacy", "nft")),
    Param("IptablesRefreshInterval", "iptables_refresh_interval", parse_duration),
    Param("IptablesPostWriteCheckInterval", "iptables_post_write_check_interval", parse_duration),
    Param("RouteRefreshInterval", "route_refresh_interval", parse_duration),
    Param("IpsetsRefreshInterval", "ipsets_refresh_interval", parse_duration),
    Param("InterfacePrefix", "interface_prefix", str.strip),
    Param(
        "DefaultEndpointToHostAction",
        "default_endpoint_to_host_action",
        _choice("Drop", "Return", "Accept"),
    ),
    Param("FailsafeInboundHostPorts", "failsafe_inbound_host_ports", parse_ports),
    Param("FailsafeOutboundHostPorts", "failsafe_outbound_host_ports", parse_ports),
    Param("Ipv6Support", "ipv6_support", parse_bool),
    Param("IptablesMarkMask", "iptables_mark_mask", _mark_mask),
    Param("HealthEnabled", "health_enabled", parse_bool),
    Param("HealthHost", "health_host", str.strip),
    Param("HealthPort", "health_port", _int),
    Param("PrometheusMetricsEnabled", "prometheus_metrics_enabled", parse_bool),
    Param("PrometheusMetricsHost", "prometheus_metrics_host", str.strip),
    Param("PrometheusMetricsPort", "prometheus_metrics_port", _int),
)
_BY_NAME = {p.name.lower(): p for p in PARAMS}


def _from_spec(spec: FelixConfigurationSpec, param: Param) -> Any:
    """The value a FelixConfiguration spec sets for ``param``, or None when unset."""
    attr = param.attr
    if attr in ("failsafe_inbound_host_ports", "failsafe_outbound_host_ports"):
        ports = getattr(spec, attr)
        if ports is None:
            return None
        return tuple(FailsafePort(p.protocol.lower(), p.port, p.net) for p in ports)
    if attr == "log_format" or param.bootstrap:
        return None
    value = getattr(spec, attr, None)
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return param.parse(value)
    if attr == "iptables_mark_mask":
        return _check_mark_mask(value)
    return value


@dataclass
class ConfigLoader:
    """Merges the sources; ``load()`` may be called again when FelixConfiguration changes."""

    config_file: Path | None = None
    environ: Mapping[str, str] = field(default_factory=dict)
    cli: Mapping[str, Any] = field(default_factory=dict)  # attr -> value (bootstrap only)

    def _file_values(self) -> dict[str, str]:
        if self.config_file is None or not self.config_file.exists():
            return {}
        cp = configparser.ConfigParser(interpolation=None)
        try:
            cp.read(self.config_file)
        except configparser.Error as exc:
            raise ConfigError(f"config file {self.config_file}: {exc}") from None
        out: dict[str, str] = {}
        for section in cp.sections():
            for k, v in cp.items(section):
                out[k.lower()] = v
        return out

    def _env_values(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for k, v in self.environ.items():
            if k.upper().startswith("FELIX_"):
                out[k[6:].lower()] = v
        if "NODENAME" in self.environ and "felixhostname" not in out:
            out["felixhostname"] = self.environ["NODENAME"]
        for ek, name in (
            ("ETCD_ENDPOINTS", "etcdendpoints"),
            ("ETCD_CA_CERT_FILE", "etcdcafile"),
            ("ETCD_CERT_FILE", "etcdcertfile"),
            ("ETCD_KEY_FILE", "etcdkeyfile"),
        ):
            if ek in self.environ and name not in out:
                out[name] = self.environ[ek]
        return out

    def load(
        self, datastore: Mapping[str, FelixConfigurationSpec] | None = None
    ) -> tuple[FelixConfig, dict[str, str]]:
        """The effective config and, for every non-default parameter, its source."""
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        file_vals = self._file_values()
        env_vals = self._env_values()
        for unknown in sorted(set(file_vals) - set(_BY_NAME)):
            log.warning("config.unknown_parameter source=file name=%s", unknown)
        for unknown in sorted(set(env_vals) - set(_BY_NAME)):
            log.warning("config.unknown_parameter source=env name=FELIX_%s", unknown.upper())
        node_name = str(
            self.cli.get("node_name")
            or env_vals.get("felixhostname")
            or file_vals.get("felixhostname")
            or socket.gethostname()
        ).strip()
        layers: list[tuple[str, FelixConfigurationSpec | None]] = []
        if datastore is not None:
            layers.append(("FelixConfiguration default", datastore.get("default")))
            layers.append(
                (f"FelixConfiguration node.{node_name}", datastore.get(f"node.{node_name}"))
            )
        for param in PARAMS:
            for label, spec in layers:
                if spec is None or param.bootstrap:
                    continue
                try:
                    v = _from_spec(spec, param)
                except (ValueError, TypeError) as exc:
                    log.warning(
                        "config.bad_value source=%r name=%s error=%s", label, param.name, exc
                    )
                    continue
                if v is not None:
                    values[param.attr], sources[param.name] = v, label
            for label, raw in (("config file", file_vals), ("environment", env_vals)):
                text = raw.get(param.name.lower())
                if text is None:
                    continue
                try:
                    values[param.attr] = param.parse(text)
                except (ValueError, TypeError) as exc:
                    where = (
                        f"environment variable FELIX_{param.name.upper()}"
                        if label == "environment"
                        else f"config file {self.config_file}"
                    )
                    raise ConfigError(f"{where}: {param.name}: {exc}") from None
                sources[param.name] = label
            if param.attr in self.cli and self.cli[param.attr] not in (None, ""):
                values[param.attr] = self.cli[param.attr]
                sources[param.name] = "command line"
        values["node_name"] = node_name
        cfg = replace(FelixConfig(), **values)
        cfg.mark_bits  # noqa: B018  (validates the mark mask)
        return cfg, sources


def describe(cfg: FelixConfig, sources: Mapping[str, str]) -> list[str]:
    """One ``config.loaded`` line per parameter that is not at its default."""
    by_attr = {p.attr: p.name for p in PARAMS}
    out = []
    for f in fields(cfg):
        name = by_attr.get(f.name, f.name)
        if name in sources:
            out.append(f"{name}={getattr(cfg, f.name)!r} source={sources[name]!r}")
    return out
