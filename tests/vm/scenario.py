"""The IP-in-IP scenario, run *inside* the VM (a stock kernel with ipip) by ``run_in_vm.py``.

Role: for each ipipMode (default CrossSubnet, then Always) build a lab with ``tabby-lab up
--nodes 4 --subnets 2 --ipip MODE --workloads-per-node 1`` (node1, node2 on subnet 0; node3,
node4 on subnet 1), wait until ``tabby-lab check`` passes, then measure on the underlay with
tcpdump which traffic is encapsulated:
- *cross-subnet*: on the router's interfaces (eth0: subnet 0, eth1: subnet 1), 5 pings
  node1-w1 -> node3-w1 (10 packets each way summed), plus 3 pings from node1 itself (the kernel
  must pick node1's tunnel address as their inner source);
- *same subnet*: on node1's port of the fabric bridge, 5 pings node1-w1 -> node2-w1.
Packets are counted as ``ipip`` (outer protocol 4 between the two nodes' underlay addresses) or
``plain`` (outer ICMP between the two workloads). Then a host that is not a node (the router)
sends IP-in-IP to node1: felix's ``tby4-all-hosts`` rule must drop it.
Also recorded: each node's tunl0 (up, MTU, address), the Node's ipv4IPIPTunnelAddr, felix's
ipset members and IP-in-IP rule.

Inputs: argv: RESULT_JSON [MODE...]. Outputs: RESULT_JSON (one document, see ``main``), exit 0
when every expectation held.
Safety: everything happens in namespaces the lab creates (inside the VM); processes this
script starts (tcpdump) are stopped by PID; the lab is always taken down.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

VENV_BIN = Path(sys.executable).parent
LAB = str(VENV_BIN / "tabby-lab")
STATE_ROOT = Path("/run/tabby-lab")
CAPTURES = Path("/run/tabby-vm-captures")
PINGS = 5
HOST_PINGS = 3
FOREIGN_PINGS = 3
CAPTURE_FILTER = "ip proto 4 or icmp"
UP_ATTEMPTS = 2


def run(
    argv: list[str], timeout: float = 120, check: bool = False
) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False
    )
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: rc={res.returncode} {res.stderr.strip()}")
    return res


def ns(netns: str, argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return run(["ip", "netns", "exec", netns, *argv], **kw)


def lab(name: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return run([LAB, "--name", name, "--state-root", str(STATE_ROOT), *args], timeout=timeout)


class Capture:
    """tcpdump writing a pcap in ``netns`` on ``iface``; stopped by PID."""

    def __init__(self, netns: str, iface: str, path: Path) -> None:
        self.path = path
        self.proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                netns,
                "tcpdump",
                "-Z",
                "root",
                "-U",
                "-n",
                "-i",
                iface,
                "-w",
                str(path),
                CAPTURE_FILTER,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()  # "listening on IFACE ..." once it captures
        if "listening on" not in line:
            self.stop()
            raise RuntimeError(f"tcpdump in {netns} on {iface}: {line.strip()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def count(self, expr: str) -> int:
        res = run(["tcpdump", "-n", "-r", str(self.path), expr], check=True)
        return len([x for x in res.stdout.splitlines() if x.strip()])

    def lines(self, expr: str) -> list[str]:
        res = run(["tcpdump", "-n", "-r", str(self.path), expr], check=True)
        return [x for x in res.stdout.splitlines() if x.strip()]


def tunnel_facts(netns: str) -> dict[str, Any]:
    res = ns(netns, ["ip", "-j", "-d", "addr", "show", "dev", "tunl0"])
    if res.returncode != 0:
        return {"exists": False, "error": res.stderr.strip()}
    link = json.loads(res.stdout)[0]
    return {
        "exists": True,
        "kind": link.get("linkinfo", {}).get("info_kind"),
        "up": "UP" in link.get("flags", []),
        "mtu": link.get("mtu"),
        "addresses": [
            f"{a['local']}/{a['prefixlen']}"
            for a in link.get("addr_info", [])
            if a.get("family") == "inet"
        ],
    }


def node_tunnel_addrs(first_node_ns: str) -> dict[str, str | None]:
    res = ns(
        first_node_ns,
        [
            "env",
            "ETCD_ENDPOINTS=http://127.0.0.1:2379",
            str(VENV_BIN / "tabbyctl"),
            "get",
            "nodes",
            "-o",
            "json",
        ],
        timeout=60,
    )
    if res.returncode != 0:
        return {"error": res.stderr.strip()}
    data = json.loads(res.stdout)
    items = data.get("items", data if isinstance(data, list) else [data])
    return {
        n["metadata"]["name"]: n.get("spec", {}).get("bgp", {}).get("ipv4IPIPTunnelAddr")
        for n in items
    }


def ping(netns: str, dst: str, count: int, src: str | None = None) -> bool:
    argv = ["ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", "2"]
    if src:
        argv += ["-I", src]
    return ns(netns, [*argv, dst], timeout=60).returncode == 0


def input_drop_counter(netns: str) -> int:
    """Packets counted by tby-INPUT's IP-in-IP rule (protocol 4 DROP)."""
    res = ns(netns, ["iptables", "-t", "filter", "-L", "tby-INPUT", "-v", "-x", "-n"], check=True)
    for line in res.stdout.splitlines():
        parts = line.split()
        if len(parts) > 3 and parts[2] == "DROP" and parts[3] in ("4", "ipencap"):
            return int(parts[0])
    return -1


def felix_facts(netns: str) -> dict[str, Any]:
    ipset = ns(netns, ["ipset", "list", "tby4-all-hosts"])
    members: list[str] = []
    if ipset.returncode == 0:
        lines = ipset.stdout.splitlines()
        if "Members:" in lines:
            members = sorted(x.strip() for x in lines[lines.index("Members:") + 1 :] if x.strip())
    save = ns(netns, ["iptables-save", "-t", "filter"]).stdout
    rules = [x for x in save.splitlines() if x.startswith("-A tby-INPUT") and "all-hosts" in x]
    first = next((x for x in save.splitlines() if x.startswith("-A tby-INPUT")), "")
    return {
        "ipset_exists": ipset.returncode == 0,
        "all_hosts": members,
        "ipip_rules": rules,
        "ipip_rule_first": "all-hosts" in first,
    }


def routes_ready(topo: dict[str, Any]) -> bool:
    """Every node has a proto-81 route to each other node's block and an up tunl0 (cheap:
    ``ip -n``, no Python process per poll; the VM is slow)."""
    others = len(topo["nodes"]) - 1
    for node in topo["nodes"]:
        res = run(["ip", "-n", node["netns"], "-j", "route", "show", "proto", "81"])
        routes = json.loads(res.stdout or "[]") if res.returncode == 0 else []
        if sum(1 for r in routes if r.get("type", "unicast") == "unicast") < others:
            return False
        link = run(["ip", "-n", node["netns"], "-j", "link", "show", "tunl0"])
        if link.returncode != 0 or "UP" not in json.loads(link.stdout)[0].get("flags", []):
            return False
    return True


def wait_check(name: str, topo: dict[str, Any], deadline_s: float) -> tuple[bool, float, str]:
    """Wait for the routes, then run ``tabby-lab check`` (a few times at most)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < deadline_s and not routes_ready(topo):
        time.sleep(2)
    out = ""
    for _ in range(3):
        res = lab(name, "check", "--retries", "3", timeout=300)
        out = res.stdout + res.stderr
        if res.returncode == 0:
            return True, time.monotonic() - t0, out
        if time.monotonic() - t0 > deadline_s:
            break
        time.sleep(5)
    return False, time.monotonic() - t0, out


def run_case(mode: str) -> dict[str, Any]:
    name = {"CrossSubnet": "vmcs", "Always": "vmal", "Never": "vmnv"}[mode]
    state = STATE_ROOT / name
    case: dict[str, Any] = {"mode": mode}
    t0 = time.monotonic()
    args = ["--nodes", "4", "--subnets", "2", "--ipip", mode, "--workloads-per-node", "1"]
    failures = []
    for _ in range(UP_ATTEMPTS):  # the emulated VM is slow: one retry of a timed-out step
        up = lab(name, "up", *args)
        if up.returncode == 0:
            break
        failures.append((up.stdout + up.stderr)[-2000:])
        lab(name, "down")
    case["up_rc"] = up.returncode
    case["up_attempts"] = len(failures) + (up.returncode == 0)
    case["up_seconds"] = round(time.monotonic() - t0, 1)
    case["kernel_note"] = "has no IP-in-IP" in up.stderr
    if failures:
        case["up_failures"] = failures
    if up.returncode != 0:
        case["expectations"] = expectations(case)
        case["ok"] = False
        return case
    caps: list[Capture] = []
    try:
        topo = json.loads((state / "topology.json").read_text())
        limit = float(os.environ.get("TABBY_VM_CONVERGE_S", "240"))
        ok, secs, out = wait_check(name, topo, limit)
        case["check_ok"], case["converge_seconds"], case["check_output"] = ok, round(secs, 1), out
        ips: dict[str, str] = json.loads((state / "workloads.json").read_text())
        nodes = {n["name"]: n for n in topo["nodes"]}
        addr = {n: v["address"].split("/")[0] for n, v in nodes.items()}
        wl_ns = {w["name"]: w["netns"] for w in topo["workloads"]}
        router = topo["router_netns"]
        case["tunnels"] = {n: tunnel_facts(v["netns"]) for n, v in nodes.items()}
        case["node_tunnel_addrs"] = node_tunnel_addrs(nodes["node1"]["netns"])
        case["felix_node1"] = felix_facts(nodes["node1"]["netns"])

        w1, w2, w3 = ips["node1-w1"], ips["node2-w1"], ips["node3-w1"]
        tun1 = (case["tunnels"]["node1"].get("addresses") or ["?/32"])[0].split("/")[0]
        cap_dir = CAPTURES / name
        cap_dir.mkdir(parents=True, exist_ok=True)
        r0 = Capture(router, "eth0", cap_dir / "router-eth0.pcap")
        caps.append(r0)
        r1 = Capture(router, "eth1", cap_dir / "router-eth1.pcap")
        caps.append(r1)
        f1 = Capture(
            topo["fabric_netns"], nodes["node1"]["fabric_port"], cap_dir / "fabric-n1.pcap"
        )
        caps.append(f1)
        pings = {
            "same_subnet_ok": ping(wl_ns["node1-w1"], w2, PINGS),
            "cross_subnet_ok": ping(wl_ns["node1-w1"], w3, PINGS),
            "host_to_remote_pod_ok": ping(nodes["node1"]["netns"], w3, HOST_PINGS),
        }
        time.sleep(1)
        for c in caps:
            c.stop()
        caps.clear()
        n1, n2, n3 = addr["node1"], addr["node2"], addr["node3"]
        cross_ipip = f"ip proto 4 and host {n1} and host {n3}"
        cross_plain = f"icmp and host {w1} and host {w3}"
        case["pings"] = pings
        case["cross_subnet"] = {
            "router_eth0": {"ipip": r0.count(cross_ipip), "plain": r0.count(cross_plain)},
            "router_eth1": {"ipip": r1.count(cross_ipip), "plain": r1.count(cross_plain)},
            # node1's own pings to node3-w1, encapsulated, with the tunnel address as source
            "host_pings_from_tunnel_addr": len(
                [x for x in r0.lines("ip proto 4") if f"{tun1} > {w3}" in x]
            ),
            "sample": r0.lines("ip proto 4")[:2],
        }
        case["same_subnet"] = {
            "fabric_n1": {
                "ipip": f1.count(f"ip proto 4 and host {n1} and host {n2}"),
                "plain": f1.count(f"icmp and host {w1} and host {w2}"),
            },
            "sample": f1.lines(f"host {n2} or host {w2}")[:2],
        }
        case["foreign_ipip"] = foreign_ipip(router, nodes["node1"]["netns"], n1, w1)
    except Exception as exc:  # reported, never hides the teardown
        case["error"] = repr(exc)
    finally:
        for c in caps:
            c.stop()
        if not case.get("check_ok") or "error" in case:
            case["bgp_log_tail"] = _log_tail(state / "logs" / "node1-tabby-bgp.log")
        down = lab(name, "down")
        case["down_rc"] = down.returncode
    try:
        case["expectations"] = expectations(case)
    except (KeyError, TypeError, IndexError) as exc:  # a measurement is missing
        case["expectations"] = {"measured": False}
        case.setdefault("error", repr(exc))
    case["ok"] = all(case["expectations"].values())
    return case


def foreign_ipip(router: str, node_ns: str, node_addr: str, wl_ip: str) -> dict[str, Any]:
    """The router (a host that is not a node) sends IP-in-IP to node1's workload."""
    before = input_drop_counter(node_ns)
    src = "10.99.0.1"
    ns(router, ["ip", "link", "set", "tunl0", "up"], check=True)
    ns(router, ["ip", "addr", "replace", f"{src}/32", "dev", "tunl0"], check=True)
    ns(
        router,
        ["ip", "route", "replace", f"{wl_ip}/32", "via", node_addr, "dev", "tunl0", "onlink"],
        check=True,
    )
    reached = ping(router, wl_ip, FOREIGN_PINGS, src=src)
    after = input_drop_counter(node_ns)
    return {"ping_ok": reached, "dropped": after - before if before >= 0 and after >= 0 else None}


def expectations(case: dict[str, Any]) -> dict[str, bool]:
    mode = case["mode"]
    exp: dict[str, bool] = {
        "up": case.get("up_rc") == 0,
        "no_kernel_note": not case.get("kernel_note", True),
        "check_ok": bool(case.get("check_ok")),
        "no_error": "error" not in case,
    }
    if not exp["up"] or "cross_subnet" not in case:
        return exp
    both = 2 * PINGS
    cross = case["cross_subnet"]["router_eth0"]
    same = case["same_subnet"]["fabric_n1"]
    exp["pings_ok"] = all(case["pings"].values())
    exp["cross_subnet_encapsulated"] = cross["ipip"] >= both and cross["plain"] == 0
    exp["host_traffic_uses_tunnel_address"] = (
        case["cross_subnet"]["host_pings_from_tunnel_addr"] >= HOST_PINGS
    )
    if mode == "Always":
        exp["same_subnet_encapsulated"] = same["ipip"] >= both and same["plain"] == 0
    else:
        exp["same_subnet_plain"] = same["plain"] >= both and same["ipip"] == 0
    tunnels = case["tunnels"]
    recorded = case["node_tunnel_addrs"]
    exp["tunl0_up_mtu_1480_with_recorded_address"] = all(
        t.get("up") and t.get("mtu") == 1480 and t.get("addresses") == [f"{recorded.get(n)}/32"]
        for n, t in tunnels.items()
    )
    felix = case["felix_node1"]
    exp["felix_all_hosts_set"] = len(felix["all_hosts"]) == 4 and felix["ipip_rule_first"]
    foreign = case["foreign_ipip"]
    exp["foreign_ipip_dropped"] = not foreign["ping_ok"] and (foreign["dropped"] or 0) >= 1
    return exp


def _log_tail(path: Path, n: int = 30) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-n:]
    except OSError:
        return []


def main() -> int:
    result_path = Path(sys.argv[1])
    modes = sys.argv[2:] or ["CrossSubnet", "Always"]
    (result_path.parent / "started").write_text(os.uname().release)  # the guest booted
    t0 = time.monotonic()
    summary: dict[str, Any] = {
        "kernel": os.uname().release,
        "ipip_module": Path("/sys/module/ipip").exists(),
        "netns_works": run(["ip", "netns", "list"]).returncode == 0,
        "etcd": run(["etcd", "--version"]).stdout.splitlines()[:1],
        "cases": {},
    }
    for mode in modes:
        summary["cases"][mode] = run_case(mode)
        result_path.write_text(json.dumps(summary, indent=2))  # partial results survive a hang
    summary["ipip_module_after"] = Path("/sys/module/ipip").exists()
    summary["scenario_seconds"] = round(time.monotonic() - t0, 1)
    summary["ok"] = bool(summary["cases"]) and all(c["ok"] for c in summary["cases"].values())
    result_path.write_text(json.dumps(summary, indent=2))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
