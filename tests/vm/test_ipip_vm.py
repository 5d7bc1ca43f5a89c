"""Real IP-in-IP on a stock Debian kernel in a VM (this machine's kernel has no ipip).

Boots the VM with ``tests/vm/run_in_vm.py`` and asserts on the summary that
``tests/vm/scenario.py`` measured inside it: two tabby-lab clusters (4 nodes, 2 subnets), one
with ``--ipip CrossSubnet`` and one with ``--ipip Always``, must connect fully; tcpdump on the
router's interfaces and the fabric bridge must see protocol 4 exactly where the mode says, and
plain ICMP elsewhere; IP-in-IP from a host that is not a node must be dropped by felix.

Missing tools are installed first (apt: qemu-system-x86 linux-image-amd64 busybox-static; pip:
virtme-ng), non-interactively. The test is skipped only when the VM cannot be booted (tools
could not be installed, or the guest never started the scenario): a skip is not a pass.
Takes about 5 minutes (software emulation).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from tests.vm.run_in_vm import missing_requirements, run_vm

pytestmark = [pytest.mark.vm, pytest.mark.slow]

APT = ["qemu-system-x86", "linux-image-amd64", "busybox-static"]
PINGS = 5  # per direction, as in scenario.py


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )


def _install_missing() -> list[str]:
    """Install what the VM needs; returns what is still missing afterwards."""
    missing = missing_requirements()
    if any(m.startswith("apt:") for m in missing) and os.geteuid() == 0:
        apt = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *APT]
        if _run(apt).returncode != 0:
            _run(["apt-get", "update", "-q"])
            _run(apt)
    if "pip: virtme-ng" in missing_requirements():
        _run([sys.executable, "-m", "pip", "install", "-q", "virtme-ng"])
    return missing_requirements()


@pytest.fixture(scope="module")
def summary() -> dict[str, Any]:
    still = _install_missing()
    if still:
        pytest.skip(f"the VM cannot boot: missing {', '.join(still)} (install failed)")
    result = run_vm(["CrossSubnet", "Always"])
    if not result.get("booted"):
        tail = "\n".join(result.get("console_tail", [])[-15:])
        pytest.skip(f"the VM did not boot ({result.get('vm_error', '?')}):\n{tail}")
    print(json.dumps(result, indent=2))  # the measured proof, in the test's output
    return result


def _show(case: dict[str, Any]) -> str:
    keep = {k: v for k, v in case.items() if k not in ("check_output",)}
    return json.dumps(keep, indent=1)[:6000]


def _measured(summary: dict[str, Any], mode: str) -> dict[str, Any]:
    """The case of ``mode``; fails (with what the VM reported) if it was not measured."""
    case: dict[str, Any] = summary.get("cases", {}).get(mode, {})
    assert case.get("up_rc") == 0 and "cross_subnet" in case, _show(case) or summary
    return case


@pytest.mark.timeout(1200)
def test_vm_is_a_stock_kernel_with_ipip(summary: dict[str, Any]) -> None:
    assert "vm_error" not in summary, summary
    assert summary["kernel"] != os.uname().release
    assert summary["netns_works"]
    assert summary["ipip_module_after"], "tabby-bgp should have loaded ipip (tunl0)"


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("mode", ["CrossSubnet", "Always"])
def test_lab_connects_fully(summary: dict[str, Any], mode: str) -> None:
    case = _measured(summary, mode)
    assert case["up_rc"] == 0, _show(case)
    assert not case["kernel_note"], "tabby-lab claimed the VM kernel has no ipip"
    assert case["check_ok"], _show(case)
    assert all(case["pings"].values()), _show(case)


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("mode", ["CrossSubnet", "Always"])
def test_traffic_between_subnets_is_ip_in_ip(summary: dict[str, Any], mode: str) -> None:
    case = _measured(summary, mode)
    for iface in ("router_eth0", "router_eth1"):
        seen = case["cross_subnet"][iface]
        assert seen["ipip"] >= 2 * PINGS, (iface, _show(case))
        assert seen["plain"] == 0, (iface, _show(case))
    # node1's own packets to a remote workload leave with its tunnel address inside.
    assert case["cross_subnet"]["host_pings_from_tunnel_addr"] >= 3, _show(case)


@pytest.mark.timeout(1200)
def test_same_subnet_is_plain_with_crosssubnet(summary: dict[str, Any]) -> None:
    case = _measured(summary, "CrossSubnet")
    seen = case["same_subnet"]["fabric_n1"]
    assert seen["plain"] >= 2 * PINGS, _show(case)
    assert seen["ipip"] == 0, _show(case)


@pytest.mark.timeout(1200)
def test_same_subnet_is_ip_in_ip_with_always(summary: dict[str, Any]) -> None:
    case = _measured(summary, "Always")
    seen = case["same_subnet"]["fabric_n1"]
    assert seen["ipip"] >= 2 * PINGS, _show(case)
    assert seen["plain"] == 0, _show(case)


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("mode", ["CrossSubnet", "Always"])
def test_tunl0_owned_by_bgp_and_felix_filter(summary: dict[str, Any], mode: str) -> None:
    case = _measured(summary, mode)
    recorded = case["node_tunnel_addrs"]
    assert len(set(recorded.values())) == 4, _show(case)  # one distinct address per node
    for node, t in case["tunnels"].items():
        assert t["up"] and t["kind"] == "ipip" and t["mtu"] == 1480, (node, t)
        assert t["addresses"] == [f"{recorded[node]}/32"], (node, t, recorded)
        assert recorded[node].startswith("10.65."), recorded
    felix = case["felix_node1"]
    assert felix["ipip_rule_first"] and len(felix["ipip_rules"]) == 1, felix
    assert felix["all_hosts"] == sorted(
        ["198.51.100.2", "198.51.100.3", "198.51.100.66", "198.51.100.67"]
    ), felix
    # A host that is not a node (the router) sends IP-in-IP to node1's workload: dropped.
    foreign = case["foreign_ipip"]
    assert not foreign["ping_ok"] and foreign["dropped"] >= 1, foreign


@pytest.mark.timeout(1200)
def test_every_expectation_of_the_scenario(summary: dict[str, Any]) -> None:
    assert summary.get("cases"), summary
    for mode, case in summary["cases"].items():
        failed = [k for k, ok in case.get("expectations", {"measured": False}).items() if not ok]
        assert not failed, (mode, failed, _show(case))
    assert summary["ok"]
