"""felix.config: layering of the five sources, value parsing, and error reporting."""

from __future__ import annotations

import logging
from ipaddress import ip_network
from pathlib import Path

import pytest

from datastore.model import FelixConfigurationSpec, ProtoPort
from felix.config import (
    ConfigError,
    ConfigLoader,
    FelixConfig,
    describe,
    parse_bool,
    parse_duration,
    parse_ports,
)
from felix.render import CALICO_FAILSAFE_IN, FailsafePort


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "felix.cfg"
    p.write_text(text)
    return p


def load(
    tmp_path: Path,
    *,
    file_text: str | None = None,
    env: dict[str, str] | None = None,
    ds: dict[str, FelixConfigurationSpec] | None = None,
    cli: dict[str, object] | None = None,
) -> tuple[FelixConfig, dict[str, str]]:
    path = write(tmp_path, file_text) if file_text is not None else None
    loader = ConfigLoader(path, {"NODENAME": "n1", **(env or {})}, cli or {})
    return loader.load(ds)


def test_defaults(tmp_path: Path) -> None:
    cfg, sources = load(tmp_path)
    assert cfg.node_name == "n1"
    assert cfg.iptables_refresh_interval == 90.0
    assert cfg.failsafe_inbound_host_ports == CALICO_FAILSAFE_IN
    assert cfg.mark_bits == (0x10000, 0x20000)
    assert sources == {"FelixHostname": "environment"}  # NODENAME


def test_each_layer_overrides_the_previous(tmp_path: Path) -> None:
    default = FelixConfigurationSpec(
        route_refresh_interval=10.0,
        iptables_refresh_interval=10.0,
        ipsets_refresh_interval=10.0,
        health_port=1000,
    )
    node = FelixConfigurationSpec(
        iptables_refresh_interval=20.0, ipsets_refresh_interval=20.0, health_port=2000
    )
    other_node = FelixConfigurationSpec(ipsets_refresh_interval=99.0, health_port=9999)
    ds = {"default": default, "node.n1": node, "node.n2": other_node}
    file_text = "[global]\nIpsetsRefreshInterval = 30\nHealthPort = 3000\n"
    env = {"FELIX_HEALTHPORT": "4000"}
    cfg, sources = load(tmp_path, file_text=file_text, env=env, ds=ds)
    assert cfg.route_refresh_interval == 10.0
    assert cfg.iptables_refresh_interval == 20.0
    assert cfg.ipsets_refresh_interval == 30.0
    assert cfg.health_port == 4000
    assert sources == {
        "FelixHostname": "environment",
        "RouteRefreshInterval": "FelixConfiguration default",
        "IptablesRefreshInterval": "FelixConfiguration node.n1",
        "IpsetsRefreshInterval": "config file",
        "HealthPort": "environment",
    }
    assert "HealthPort=4000 source='environment'" in describe(cfg, sources)


def test_env_names_are_case_insensitive(tmp_path: Path) -> None:
    cfg, _ = load(
        tmp_path, env={"felix_interfaceprefix": "cali", "FELIX_LogSeverityScreen": "debug"}
    )
    assert cfg.interface_prefix == "cali"
    assert cfg.log_severity_screen == "Debug"


def test_config_file_names_case_insensitive(tmp_path: Path) -> None:
    cfg, sources = load(tmp_path, file_text="[global]\nipv6support = false\nINTERFACEPREFIX=x\n")
    assert cfg.ipv6_support is False
    assert cfg.interface_prefix == "x"
    assert sources["Ipv6Support"] == "config file"


def test_bootstrap_parameters_from_env_and_file_only(tmp_path: Path) -> None:
    cfg, _ = load(
        tmp_path,
        file_text="[global]\nEtcdEndpoints = http://file:2379\n",
        env={"ETCD_ENDPOINTS": "http://env:2379"},
    )
    assert cfg.etcd_endpoints == "http://env:2379"
    cfg, _ = load(tmp_path, env={"FELIX_FELIXHOSTNAME": "explicit"})
    assert cfg.node_name == "explicit"
    cfg, _ = load(tmp_path, cli={"node_name": "cli-node"}, env={"FELIX_FELIXHOSTNAME": "x"})
    assert cfg.node_name == "cli-node"


def test_node_specific_datastore_config_follows_node_name(tmp_path: Path) -> None:
    ds = {"node.other": FelixConfigurationSpec(health_port=7777)}
    cfg, _ = load(tmp_path, ds=ds, env={"FELIX_FELIXHOSTNAME": "other"})
    assert cfg.health_port == 7777


@pytest.mark.parametrize(
    ("env", "source", "param"),
    [
        ({"FELIX_HEALTHPORT": "abc"}, "FELIX_HEALTHPORT", "HealthPort"),
        ({"FELIX_IPV6SUPPORT": "maybe"}, "FELIX_IPV6SUPPORT", "Ipv6Support"),
        ({"FELIX_IPTABLESREFRESHINTERVAL": "10x"}, "FELIX_IPTABLESREFRESHINTERVAL", "Iptables"),
        ({"FELIX_FAILSAFEINBOUNDHOSTPORTS": "icmp:1"}, "FELIX_FAILSAFEINBOUNDHOSTPORTS", "Fail"),
        ({"FELIX_LOGSEVERITYSCREEN": "Loud"}, "FELIX_LOGSEVERITYSCREEN", "LogSeverityScreen"),
    ],
)
def test_bad_env_value_raises_naming_source_and_parameter(
    tmp_path: Path, env: dict[str, str], source: str, param: str
) -> None:
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, env=env)
    assert source in str(exc.value)
    assert param in str(exc.value)


def test_bad_file_value_raises_naming_file_and_parameter(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, file_text="[global]\nHealthPort = nope\n")
    assert "config file" in str(exc.value) and "felix.cfg" in str(exc.value)
    assert "HealthPort" in str(exc.value)


def test_unparseable_file_raises(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file"):
        load(tmp_path, file_text="HealthPort = 1\n")  # no section header


def test_missing_file_is_ignored(tmp_path: Path) -> None:
    loader = ConfigLoader(tmp_path / "absent.cfg", {"NODENAME": "n1"})
    cfg, _ = loader.load()
    assert cfg.health_port == 9099


def test_bad_datastore_value_is_skipped_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ds = {
        "default": FelixConfigurationSpec(
            default_endpoint_to_host_action="Explode", health_port=1234
        ),
        "node.n1": FelixConfigurationSpec(default_endpoint_to_host_action="Bogus"),
    }
    with caplog.at_level(logging.WARNING, logger="felix.config"):
        cfg, sources = load(tmp_path, ds=ds)
    assert cfg.default_endpoint_to_host_action == "Drop"  # both skipped: the default stays
    assert cfg.health_port == 1234  # other parameters of the same resource still apply
    assert "DefaultEndpointToHostAction" not in sources
    warnings = [r.getMessage() for r in caplog.records if "bad_value" in r.getMessage()]
    assert len(warnings) == 2
    assert all("DefaultEndpointToHostAction" in w for w in warnings)
    assert any("node.n1" in w for w in warnings)


def test_bad_datastore_mark_mask_does_not_stop_the_agent(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A one-bit IptablesMarkMask in the datastore is skipped (logged), not fatal."""
    ds = {"default": FelixConfigurationSpec(iptables_mark_mask=0x1)}
    with caplog.at_level(logging.WARNING, logger="felix.config"):
        cfg, _ = load(tmp_path, ds=ds)
    assert cfg.iptables_mark_mask == 0xFFFF0000
    assert any("IptablesMarkMask" in r.getMessage() for r in caplog.records)


def test_bad_env_mark_mask_raises(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="FELIX_IPTABLESMARKMASK: IptablesMarkMask"):
        load(tmp_path, env={"FELIX_IPTABLESMARKMASK": "0x100"})
    cfg, _ = load(tmp_path, env={"FELIX_IPTABLESMARKMASK": "0x0c000000"})
    assert cfg.mark_bits == (0x04000000, 0x08000000)


def test_datastore_failsafe_ports(tmp_path: Path) -> None:
    ds = {
        "default": FelixConfigurationSpec(
            failsafe_inbound_host_ports=(
                ProtoPort("TCP", 22),
                ProtoPort("UDP", 53, ip_network("10.0.0.0/8")),
            ),
            failsafe_outbound_host_ports=(),
        )
    }
    cfg, _ = load(tmp_path, ds=ds)
    assert cfg.failsafe_inbound_host_ports == (
        FailsafePort("tcp", 22),
        FailsafePort("udp", 53, ip_network("10.0.0.0/8")),
    )
    assert cfg.failsafe_outbound_host_ports == ()


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90.0),
        ("90s", 90.0),
        ("1m30s", 90.0),
        ("500ms", 0.5),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        (" 2m ", 120.0),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "1x", "1m30", "m1", "1s 2s", "nan", "inf", "-5s", "-1"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_bools() -> None:
    assert parse_bool("TRUE") is True and parse_bool(" off ") is False
    with pytest.raises(ValueError):
        parse_bool("y")


def test_failsafe_port_strings() -> None:
    assert parse_ports("tcp:22, UDP:68,tcp:10.0.0.0/8:2379") == (
        FailsafePort("tcp", 22),
        FailsafePort("udp", 68),
        FailsafePort("tcp", 2379, ip_network("10.0.0.0/8")),
    )
    assert parse_ports("none") == ()
    assert parse_ports("") == ()
    for bad in ("tcp", "icmp:1", "tcp:70000", "tcp:x", "tcp:10.0.0.0/33:22", "a:b:c:d"):
        with pytest.raises(ValueError):
            parse_ports(bad)


def test_failsafe_ports_from_env(tmp_path: Path) -> None:
    cfg, _ = load(tmp_path, env={"FELIX_FAILSAFEOUTBOUNDHOSTPORTS": "udp:53"})
    assert cfg.failsafe_outbound_host_ports == (FailsafePort("udp", 53),)


def test_unknown_names_are_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="felix.config"):
        load(tmp_path, file_text="[global]\nNoSuchThing = 1\n", env={"FELIX_ALSOUNKNOWN": "1"})
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "nosuchthing" in text and "FELIX_ALSOUNKNOWN" in text
