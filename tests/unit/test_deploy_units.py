"""The systemd units and sample environment files in ``deploy/``.

``systemd-analyze verify`` runs against a throw-away root directory (``--root``): the units are
installed under its /etc/systemd/system, the programs they start exist there as stubs (verify
refuses a unit whose ExecStart is not executable), and the host's own unit directory is copied
in for the targets they name (or minimal stand-ins where the host has none). Warnings that name
one of our units fail the test, since ``verify`` exits 0 on many of them (an unknown key or a
bad value is "ignored"). Nothing is started and nothing outside the temporary directory is
touched. The environment samples must only hold comments, and name settings the agents read.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ctl import manifests
from felix import config as felix_config

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
UNITS = sorted(DEPLOY.glob("*.service"))
ENV_FILES = sorted(DEPLOY.glob("*.env"))
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
HOST_UNIT_DIRS = (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"))

# Stand-ins for the units ours refer to, for hosts without systemd's own unit files.
STUB_UNITS = {
    "sysinit.target": "[Unit]\nDescription=sysinit\n",
    "basic.target": "[Unit]\nDescription=basic\n",
    "shutdown.target": "[Unit]\nDescription=shutdown\nDefaultDependencies=no\n",
    "network-online.target": "[Unit]\nDescription=network online\n",
    "multi-user.target": "[Unit]\nDescription=multi-user\n",
    "system.slice": "[Unit]\nDescription=system slice\n",
    "-.slice": "[Unit]\nDescription=root slice\n",
}

needs_systemd = pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze not found")


def unit_text(unit: Path) -> str:
    return unit.read_text()


def exec_paths(text: str) -> list[str]:
    """Programs of Exec*= lines (without systemd's ``-@:+!`` prefixes)."""
    out = []
    for m in re.finditer(r"^Exec\w+=(\S+)", text, flags=re.M):
        out.append(m.group(1).lstrip("-@:+!"))
    return out


def make_root(tmp: Path, units: dict[str, str]) -> Path:
    root = tmp / "root"
    unit_dir = root / "etc/systemd/system"
    unit_dir.mkdir(parents=True)
    host = next((d for d in HOST_UNIT_DIRS if (d / "sysinit.target").exists()), None)
    if host is not None:
        shutil.copytree(host, root / "usr/lib/systemd/system", symlinks=True)
    else:
        lib = root / "usr/lib/systemd/system"
        lib.mkdir(parents=True)
        for name, text in STUB_UNITS.items():
            (lib / name).write_text(text)
    for name, text in units.items():
        (unit_dir / name).write_text(text)
        for program in exec_paths(text):
            stub = root / program.lstrip("/")
            stub.parent.mkdir(parents=True, exist_ok=True)
            stub.write_text("#!/bin/sh\nexit 0\n")
            stub.chmod(0o755)
    etc_tabby = root / "etc/tabby"
    etc_tabby.mkdir(parents=True)
    for env in ENV_FILES:
        shutil.copy(env, etc_tabby / env.name)
    return root


def verify(root: Path, names: list[str]) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    help_text = subprocess.run(
        [SYSTEMD_ANALYZE, "--help"], capture_output=True, text=True, check=False
    ).stdout
    argv = [SYSTEMD_ANALYZE, "verify", "--man=no", f"--root={root}"]
    if "--recursive-errors" in help_text:
        argv.append("--recursive-errors=no")  # judge our units, not the host's
    env = {
        **os.environ,
        "SYSTEMD_LOG_COLOR": "0",
        "SYSTEMD_LOG_LOCATION": "0",
        "SYSTEMD_LOG_LEVEL": "info",
        "SYSTEMD_PAGER": "cat",
    }
    return subprocess.run(
        [*argv, *names],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
        cwd=root,
        stdin=subprocess.DEVNULL,
    )


def problems(res: subprocess.CompletedProcess[str], names: list[str]) -> list[str]:
    lines = (res.stdout + res.stderr).splitlines()
    return [ln for ln in lines if any(n in ln for n in names)]


def test_the_three_units_are_there() -> None:
    assert [u.name for u in UNITS] == [
        "tabby-bgp.service",
        "tabby-felix.service",
        "tabby-route-reflector.service",
    ]


@needs_systemd
@pytest.mark.parametrize("host_units", [True, False], ids=["host-units", "stand-ins"])
def test_units_pass_systemd_analyze_verify(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, host_units: bool
) -> None:
    if not host_units:
        monkeypatch.setattr(sys.modules[__name__], "HOST_UNIT_DIRS", ())
    names = [u.name for u in UNITS]
    root = make_root(tmp_path, {u.name: unit_text(u) for u in UNITS})
    res = verify(root, names)
    assert res.returncode == 0, res.stdout + res.stderr
    assert problems(res, names) == []


@needs_systemd
@pytest.mark.parametrize(
    ("change", "expect"),
    [
        (("Restart=always", "Restart=alwayz"), "restart"),
        (("KillMode=mixed", "KillMode=mixed\nBogusSetting=1"), "BogusSetting"),
    ],
)
def test_verify_would_catch_a_broken_unit(
    tmp_path: Path, change: tuple[str, str], expect: str
) -> None:
    """The check above can fail: a broken copy of a unit is reported."""
    text = unit_text(DEPLOY / "tabby-felix.service")
    assert change[0] in text
    root = make_root(tmp_path, {"tabby-felix.service": text.replace(change[0], change[1], 1)})
    res = verify(root, ["tabby-felix.service"])
    found = problems(res, ["tabby-felix.service"])
    assert res.returncode != 0 or found, res.stdout + res.stderr
    assert any(expect.lower() in ln.lower() for ln in found), found


@needs_systemd
def test_verify_catches_a_missing_program(tmp_path: Path) -> None:
    text = unit_text(DEPLOY / "tabby-felix.service")
    root = make_root(tmp_path, {"tabby-felix.service": text})
    (root / "opt/tabby/venv/bin/tabby-felix").unlink()
    res = verify(root, ["tabby-felix.service"])
    assert res.returncode != 0
    assert "not executable" in res.stdout + res.stderr


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_unit_shape(unit: Path) -> None:
    text = unit_text(unit)
    env_name = unit.name.replace(".service", ".env")
    assert f"EnvironmentFile=/etc/tabby/{env_name}" in text
    assert (DEPLOY / env_name).exists()
    for line in (
        "Restart=always",
        "Wants=network-online.target",
        "StartLimitBurst=",
        "StartLimitIntervalSec=",
        "RestartSec=",
        "NoNewPrivileges=yes",
    ):
        assert line in text, f"{unit.name}: missing {line}"
    assert re.search(r"^After=.*network-online\.target", text, flags=re.M)
    caps = re.search(r"^CapabilityBoundingSet=(.*)$", text, flags=re.M)
    assert caps is not None and {"CAP_NET_ADMIN", "CAP_NET_RAW"} <= set(caps.group(1).split())
    # The agents own the host's network: nothing may cut them off from it or from /proc/sys.
    settings = "\n".join(ln for ln in text.splitlines() if not ln.startswith("#"))
    for forbidden in ("PrivateNetwork=yes", "ProtectKernelTunables=yes", "IPAddressDeny="):
        assert forbidden not in settings, f"{unit.name}: {forbidden} would break the agent"
    assert all(p.startswith("/opt/tabby/venv/bin/") for p in exec_paths(text))


def test_route_reflector_unit_runs_the_reflector() -> None:
    text = unit_text(DEPLOY / "tabby-route-reflector.service")
    assert re.search(r"^ExecStart=/opt/tabby/venv/bin/tabby-bgp .*--route-reflector", text, re.M)
    assert "Conflicts=tabby-bgp.service" in text


@pytest.mark.parametrize("env_file", ENV_FILES, ids=lambda p: p.name)
def test_env_samples_only_hold_comments(env_file: Path) -> None:
    lines = env_file.read_text().splitlines()
    settings = [ln for ln in lines if re.match(r"#[A-Z][A-Z0-9_]*=", ln)]
    assert settings, "a sample should show its settings"
    for ln in lines:
        assert ln == "" or ln.startswith("#"), f"{env_file.name}: uncommented line {ln!r}"
    names = {ln[1:].split("=", 1)[0] for ln in settings}
    assert {"ETCD_ENDPOINTS", "ETCD_CA_CERT_FILE", "ETCD_CERT_FILE", "ETCD_KEY_FILE"} <= names
    assert "NODENAME" in names


def test_felix_env_sample_names_real_parameters() -> None:
    text = (DEPLOY / "tabby-felix.env").read_text()
    known = {p.name.lower() for p in felix_config.PARAMS}
    for name in re.findall(r"^#FELIX_([A-Z0-9_]+)=", text, flags=re.M):
        assert name.lower() in known, f"FELIX_{name} is not a felix parameter"


@pytest.mark.parametrize("env_name", ["tabby-bgp.env", "tabby-route-reflector.env"])
def test_bgp_env_samples_name_variables_tabby_bgp_reads(env_name: str) -> None:
    sources = [*sorted((REPO / "bgp").glob("*.py")), REPO / "datastore/registration.py"]
    source = "".join(p.read_text() for p in sources)
    text = (DEPLOY / env_name).read_text()
    for name in re.findall(r"^#([A-Z][A-Z0-9_]*)=", text, flags=re.M):
        assert f'"{name}"' in source or name.startswith("ETCD_"), f"{env_name}: {name} unused"


def test_host_protection_sample_is_valid() -> None:
    result = manifests.load([str(DEPLOY / "host-protection.yaml")], None)
    assert result.ok, [line for p in result.problems for line in p.lines()]
    kinds = sorted({r.kind for _, r in result.resources})
    assert kinds == ["GlobalNetworkPolicy", "HostEndpoint"]
