"""bgp.exabgp_config: rendered text, escaping, and validation by the real ExaBGP 5.0 binary."""

from __future__ import annotations

import base64
import subprocess
import sys
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from bgp.exabgp_config import API_PROCESS_NAME, ExabgpConfigError, render_config, render_env
from bgp.model import PeerSpec
from tests.support.bgp import peer_spec

EXABGP = Path(sys.executable).parent / "exabgp"
ME = IPv4Address("198.51.100.1")


def peer(addr: str, **kw: object) -> PeerSpec:
    return peer_spec(addr, **kw)


PEERS = [
    peer("198.51.100.10", passive=True, md5_password="p@ss \"w;rd#1'{x} }"),
    peer("198.51.100.5", port=1179, remote_as=65005, restart_time=30, hold_time=0),
    peer("203.0.113.1", remote_as=65100, kind="global", name='global:tor"; evil {', hold_time=3),
]
API = [sys.executable, "-m", "bgp.api_relay", "--state-dir=/run/tabby"]


def validate(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    conf = tmp_path / "exabgp.conf"
    conf.write_text(text)
    return subprocess.run(
        [str(EXABGP), "validate", "-n", str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", **render_env()},
        check=False,
    )


def test_render_exact_neighbor_block() -> None:
    text = render_config(ME, ME, 179, [PEERS[0]], API)
    encoded = base64.b64encode(PEERS[0].md5_password.encode()).decode()  # type: ignore[union-attr]
    assert f"process {API_PROCESS_NAME} {{\n    run {' '.join(API)};\n    encoder json;\n}}" in text
    assert (
        "neighbor 198.51.100.10 {\n"
        '    description "mesh:198.51.100.10";\n'
        "    router-id 198.51.100.1;\n"
        "    local-address 198.51.100.1;\n"
        "    local-as 64512;\n"
        "    peer-as 64512;\n"
        "    hold-time 90;\n"
        "    adj-rib-in false;\n"
        "    passive true;\n"
        "    listen 179;\n"
        f'    md5-password "{encoded}";\n'
        "    md5-base64 true;\n"
        "    manual-eor true;\n"
        "    capability {\n"
        "        asn4 enable;\n"
        "        graceful-restart 120;\n"
        "    }\n"
        "    family {\n"
        "        ipv4 unicast;\n"
        "    }\n"
        "    api {\n"
        f"        processes [ {API_PROCESS_NAME} ];\n"
        "        neighbor-changes;\n"
        "        receive {\n"
        "            parsed;\n"
        "            packets;\n"
        "            update;\n"
        "            notification;\n"
        "            open;\n"
        "        }\n"
        "    }\n"
        "}\n"
    ) in text


def test_render_is_sorted_deterministic_and_escaped() -> None:
    one = render_config(ME, ME, 1179, PEERS, API)
    two = render_config(ME, ME, 1179, PEERS[::-1], API)
    assert one == two
    order = [line.split()[1] for line in one.splitlines() if line.startswith("neighbor ")]
    assert order == ["198.51.100.5", "198.51.100.10", "203.0.113.1"]  # by address, not text
    assert "connect 1179;" in one and "listen 1179;" in one
    assert 'description "global:tor___evil__";' in one
    assert "evil {" not in one and "w;rd" not in one


def test_render_refuses_unsafe_values() -> None:
    with pytest.raises(ExabgpConfigError, match="absolute path"):
        render_config(ME, ME, 179, [], ["python3"])
    with pytest.raises(ExabgpConfigError, match="split on"):
        render_config(ME, ME, 179, [], ["/bin/x", "a;b"])
    with pytest.raises(ExabgpConfigError, match="twice"):
        render_config(ME, ME, 179, [PEERS[0], PEERS[0]], API)
    with pytest.raises(ExabgpConfigError, match="hold time 2"):
        render_config(ME, ME, 179, [peer("198.51.100.9", hold_time=2)], API)
    with pytest.raises(ExabgpConfigError, match="listen port"):
        render_config(ME, ME, 0, [], API)


def test_env_names_and_values() -> None:
    env = render_env("file:/var/log/tabby/exabgp.log", "WARNING")
    assert env["exabgp_daemon_drop"] == "false"
    assert env["exabgp_api_terminate"] == "true"
    assert env["exabgp_api_respawn"] == "true"
    assert env["exabgp_api_ack"] == "true"
    assert env["exabgp_log_destination"] == "file:/var/log/tabby/exabgp.log"
    assert env["exabgp_log_statistics"] == "false"
    with pytest.raises(ExabgpConfigError):
        render_env("/var/log/x")


@pytest.mark.skipif(not EXABGP.exists(), reason="exabgp not installed in this environment")
def test_real_exabgp_validates_rendered_config(tmp_path: Path) -> None:
    text = render_config(ME, ME, 179, PEERS, API)
    result = validate(tmp_path, text)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout + result.stderr
    for p in PEERS:
        assert f"neighbor  {p.address}" in out or f"neighbor {p.address}" in out


@pytest.mark.skipif(not EXABGP.exists(), reason="exabgp not installed in this environment")
def test_real_exabgp_rejects_a_broken_config(tmp_path: Path) -> None:
    """The validation test can fail: a config ExaBGP does not accept is reported."""
    text = render_config(ME, ME, 179, PEERS, API).replace("hold-time 90;", "hold-time 90x;")
    result = validate(tmp_path, text)
    assert result.returncode != 0
    assert "invalid hold-time" in result.stdout + result.stderr


@pytest.mark.skipif(not EXABGP.exists(), reason="exabgp not installed in this environment")
def test_real_exabgp_env_names_are_known(tmp_path: Path) -> None:
    """``exabgp env -d`` shows exactly the settings we changed from the defaults."""
    result = subprocess.run(
        [str(EXABGP), "env", "-d", "-e"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", **render_env("syslog", "WARNING")},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    changed = set(result.stdout.split())
    assert "exabgp.daemon.drop=false" in changed
    assert "exabgp.api.terminate=true" in changed
    assert "exabgp.api.cli=false" in changed
    assert (
        "exabgp.log.destination='syslog'" in changed or "exabgp.log.destination=syslog" in changed
    )
