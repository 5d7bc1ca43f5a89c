"""``tabbyctl diags`` run inside a node namespace where tabby-felix programs real rules.

The archive must hold every part (versions, config sources with the agent's environment read
from /proc, logs, iptables of the backend that has rules, ipsets, routes, links, addresses, the
datastore objects of this node as YAML), and a part that cannot be collected (here: tabby-bgp is
not running) must be listed in errors.txt without stopping the others.
"""

from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path

import yaml

from tests.support.felix import ALLOW_ALL, FelixBed, gnp

TABBYCTL = str(Path(__file__).resolve().parents[2] / ".venv/bin/tabbyctl")


def _members(path: Path) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    with tarfile.open(path, "r:gz") as tar:
        tops = {m.name.split("/", 1)[0] for m in tar.getmembers()}
        assert len(tops) == 1, f"one top directory expected, got {tops}"
        for m in tar.getmembers():
            f = tar.extractfile(m)
            assert f is not None
            out[m.name.split("/", 1)[1]] = f.read()
    return out


def test_diags_archive_has_every_part(felix_bed: FelixBed, tmp_path: Path) -> None:
    bed = felix_bed
    bed.put(ALLOW_ALL)
    bed.put(
        gnp(
            "allow-web",
            'app == "web"',
            ingress=[
                {
                    "action": "Allow",
                    "protocol": "TCP",
                    "source": {"selector": 'app == "cli"'},
                    "destination": {"ports": [80]},
                }
            ],
        )
    )
    bed.put(
        {
            "apiVersion": "projectcalico.org/v3",
            "kind": "HostEndpoint",
            "metadata": {"name": "node1-eth0", "labels": {"role": "host"}},
            "spec": {"node": "node1", "interfaceName": "eth0", "expectedIPs": ["198.51.100.1"]},
        }
    )
    bed.put(
        {
            "apiVersion": "projectcalico.org/v3",
            "kind": "HostEndpoint",
            "metadata": {"name": "other-eth0"},
            "spec": {"node": "node9", "interfaceName": "eth0"},
        }
    )
    bed.add_workload("web", "10.65.0.2", {"app": "web"}, profiles=("allow-all",))
    bed.add_workload("cli", "10.65.0.3", {"app": "cli"}, profiles=("allow-all",))
    bed.start_felix(tmp_path)
    bed.wait_ready()

    bgp_state = tmp_path / "bgp-state"
    bgp_state.mkdir()
    (bgp_state / "exabgp.log").write_text("exabgp: peer 198.51.100.2 up\n")
    felix_cfg = tmp_path / "felix.cfg"
    felix_cfg.write_text("[global]\nIptablesRefreshInterval = 60\n")
    archive = tmp_path / "out.tar.gz"
    assert bed.log_path is not None
    res = subprocess.run(
        [
            *("ip", "netns", "exec", bed.node, TABBYCTL, "diags", "-o", str(archive)),
            *("--log-file", str(bed.log_path), "--bgp-state-dir", str(bgp_state)),
            *("--felix-config", str(felix_cfg), "--felix-port", str(bed.health_port)),
            *("--bgp-port", "1"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    assert f"wrote {archive}" in res.stdout
    files = _members(archive)

    for name in (
        "summary.txt",
        "errors.txt",
        "versions.txt",
        "config/felix.cfg",
        "config/agents.txt",
        "kernel/ipset-list.txt",
        "kernel/ip-route.txt",
        "kernel/ip-link.txt",
        "kernel/ip-addr.txt",
        "kernel/iptables-backends.txt",
        "felix/health.txt",
        "bgp/exabgp.log",
        "datastore/nodes.yaml",
        "datastore/workloadendpoints.yaml",
        "datastore/hostendpoints.yaml",
        "datastore/globalnetworkpolicies.yaml",
        "datastore/ippools.yaml",
        "datastore/bgppeers.yaml",
        "datastore/felixconfigurations.yaml",
        "datastore/ipam-blocks.yaml",
    ):
        assert files.get(name, b"").strip(), f"{name} missing or empty; have {sorted(files)}"

    versions = files["versions.txt"].decode()
    for what in ("tabby:", "python:", "kernel:", "iptables:", "ipset:", "exabgp:", "etcd"):
        assert what in versions, versions

    # The agent was found in this namespace and its environment read from /proc.
    agents = files["config/agents.txt"].decode()
    assert "tabby-felix pid" in agents and "env FELIX_FELIXHOSTNAME=node1" in agents, agents
    assert any(n.startswith("logs/tabby-felix-") for n in files), sorted(files)
    assert b"IptablesRefreshInterval" in files["config/felix.cfg"]

    # iptables: felix's chains, from the backend that holds them, with counters.
    saved = [n for n in files if n.startswith("kernel/iptables-") and n.endswith("-save.txt")]
    assert saved, sorted(files)
    text = b"".join(files[n] for n in saved).decode()
    assert ":tby-FORWARD" in text and "-A tby-" in text, text[:2000]
    assert "[0:0]" in text or "] -A" in text, "iptables-save -c counters expected"
    assert "tby" in files["kernel/ipset-list.txt"].decode()
    assert "10.65.0.2" in files["kernel/ip-route.txt"].decode()
    assert "tbwweb" in files["kernel/ip-link.txt"].decode()
    assert "198.51.100.1" in files["kernel/ip-addr.txt"].decode()
    assert "/readiness: HTTP 200" in files["felix/health.txt"].decode()

    # Datastore: this node's objects only, as calicoctl-shaped YAML lists.
    weps = yaml.safe_load(files["datastore/workloadendpoints.yaml"])
    assert weps["kind"] == "WorkloadEndpointList"
    assert sorted(i["spec"]["pod"] for i in weps["items"]) == ["cli", "web"]
    heps = yaml.safe_load(files["datastore/hostendpoints.yaml"])
    assert [i["metadata"]["name"] for i in heps["items"]] == ["node1-eth0"]
    gnps = yaml.safe_load(files["datastore/globalnetworkpolicies.yaml"])
    assert [i["metadata"]["name"] for i in gnps["items"]] == ["allow-web"]

    # tabby-bgp is not running: recorded, and the rest was still collected.
    errors = files["errors.txt"].decode()
    assert "bgp/status.json" in errors, errors
    assert "errors: " in files["summary.txt"].decode()
