"""Restart and repair: a felix restart under continuous ping loses nothing and changes nothing;
chains flushed and hook rules deleted by another program are restored; endpoints deleted while
felix was down are swept after the restart."""

from __future__ import annotations

import re
import shlex
import signal
import subprocess
import time
from pathlib import Path

from tests.support.felix import ALLOW, ALLOW_ALL, FelixBed, gnp, wait_for
from tests.support.netns import ns_exec


def _kernel_snapshot(bed: FelixBed) -> dict[str, str]:
    def save(cmd: str) -> str:
        # Drop counters and the timestamp comments; keep everything else verbatim.
        text = ns_exec(bed.node, [cmd])
        text = re.sub(r"\[\d+:\d+\]", "", text)
        return "\n".join(line for line in text.splitlines() if not line.startswith("#"))

    return {
        "iptables": save("iptables-save"),
        "ip6tables": save("ip6tables-save"),
        "ipset": ns_exec(bed.node, ["ipset", "save"]),
        "routes": ns_exec(bed.node, ["ip", "route", "show", "table", "all"]),
        "routes6": ns_exec(bed.node, ["ip", "-6", "route", "show", "table", "all"]),
        "links": ns_exec(bed.node, ["ip", "-o", "link"]),
        "addrs": ns_exec(bed.node, ["ip", "-o", "addr"]),
    }


def _rich_state(bed: FelixBed, tmp_path: Path) -> tuple[str, str, str]:
    """Workloads, a selector policy (ipset), natOutgoing (static ipsets); felix ready."""
    bed.put(ALLOW_ALL)
    a = bed.add_workload("a", "10.65.0.1", {"role": "client"}, profiles=("allow-all",))
    b = bed.add_workload("b", "10.65.0.2", {"role": "server"}, profiles=("allow-all",))
    bed.put(
        gnp(
            "from-clients",
            "role == 'server'",
            ingress=[{"action": "Allow", "source": {"selector": "role == 'client'"}}],
        )
    )
    bed.put(
        {
            "apiVersion": "projectcalico.org/v3",
            "kind": "IPPool",
            "metadata": {"name": "pool1"},
            "spec": {"cidr": "10.65.0.0/16", "natOutgoing": True},
        }
    )
    bed.start_felix(tmp_path)
    bed.wait_ready()
    bed.expect({"a->b": (bed.can_ping(a.netns, b.ip), True)})
    return a.netns, b.netns, b.ip


def test_restart_under_ping_loses_nothing_and_changes_nothing(
    felix_bed: FelixBed, tmp_path: Path
) -> None:
    bed = felix_bed
    a_ns, _, b_ip = _rich_state(bed, tmp_path)
    # IPv6 duplicate address detection of the link-local addresses is the kernel's own event
    # stream: let it finish first. Then felix's post-write check, so its state is settled.
    assert wait_for(
        lambda: ns_exec(bed.node, ["ip", "-6", "addr", "show", "tentative"]).strip() == "", 10
    )
    time.sleep(1.2)
    before = _kernel_snapshot(bed)
    mon_out = tmp_path / "ip-monitor.txt"
    with open(mon_out, "wb") as f:
        monitor = subprocess.Popen(
            ["ip", "netns", "exec", bed.node, "ip", "monitor", "link", "address", "route"],
            stdout=f,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    bed.procs.append(monitor)
    ping = bed.spawn(a_ns, ["ping", "-i", "0.02", "-W", "1", b_ip])
    try:
        time.sleep(0.5)
        bed.stop_felix(signal.SIGTERM)
        time.sleep(0.3)
        bed.start_felix(tmp_path)
        bed.wait_ready()
        time.sleep(2.0)
    finally:
        ping.send_signal(signal.SIGINT)
        out, _ = ping.communicate(timeout=10)
        monitor.kill()
        monitor.wait(5)
    summary = out.decode(errors="replace")
    m = re.search(r"(\d+) packets transmitted, (\d+) received", summary)
    assert m is not None, summary
    sent, received = int(m.group(1)), int(m.group(2))
    assert sent > 100, summary
    # The last request may still be in flight when ping is interrupted.
    assert sent - received <= 1, summary
    assert mon_out.read_text().strip() == "", mon_out.read_text()
    after = _kernel_snapshot(bed)
    for key in before:
        assert after[key] == before[key], f"{key} changed across the restart"
    # The restarted felix itself reports no write of any kind.
    applies = [ln for ln in bed.felix_log().splitlines() if "dataplane.apply " in ln]
    assert applies, bed.felix_log()
    for ln in applies:
        for field in ("iptables_restores=0", "ipset_writes=0", "routes=0", "sysctls=0"):
            assert field in ln, ln


def _trigger_write(bed: FelixBed, order: int) -> str:
    """Change a policy (a write), and wait until it is in the kernel; the new rule's comment."""
    marker = f"order{order}"
    bed.put(
        gnp(
            "touch",
            "role == 'server'",
            order=order,
            ingress=[{"action": "Log", "source": {"nets": [f"10.77.{order}.0/24"]}}],
        )
    )
    assert wait_for(lambda: f"10.77.{order}.0/24" in bed.iptables_save(), 5), bed.felix_log()
    return marker


def _chain(bed: FelixBed, name: str) -> list[str]:
    return [ln for ln in bed.iptables_save().splitlines() if ln.startswith(f"-A {name} ")]


def test_flushed_chains_and_deleted_hook_are_restored(felix_bed: FelixBed, tmp_path: Path) -> None:
    bed = felix_bed
    a_ns, _, b_ip = _rich_state(bed, tmp_path)
    fwd = _chain(bed, "tby-FORWARD")
    assert fwd
    pol_chain = next(
        n for n in re.findall(r"^:(tby-pi-\S+)", bed.iptables_save(), re.M) if _chain(bed, n)
    )
    pol_rules = _chain(bed, pol_chain)

    _trigger_write(bed, 1)
    ns_exec(bed.node, ["iptables", "-F", "tby-FORWARD"])
    ns_exec(bed.node, ["iptables", "-F", pol_chain])
    assert _chain(bed, "tby-FORWARD") == []
    assert wait_for(lambda: _chain(bed, "tby-FORWARD") == fwd, 3), bed.iptables_save()
    assert wait_for(lambda: _chain(bed, pol_chain) == pol_rules, 3), bed.iptables_save()
    bed.expect({"a->b after repair": (bed.can_ping(a_ns, b_ip), True)})

    hook = [
        ln
        for ln in bed.iptables_save().splitlines()
        if ln.startswith("-A FORWARD ") and "tby-FORWARD" in ln
    ]
    assert len(hook) == 1, hook
    _trigger_write(bed, 2)
    ns_exec(bed.node, ["iptables", *shlex.split("-D" + hook[0][2:])])
    assert not any(
        "tby-FORWARD" in ln
        for ln in bed.iptables_save().splitlines()
        if ln.startswith("-A FORWARD ")
    )
    assert wait_for(lambda: hook[0] in bed.iptables_save().splitlines(), 3), bed.iptables_save()


def test_endpoints_deleted_while_down_are_swept(felix_bed: FelixBed, tmp_path: Path) -> None:
    bed = felix_bed
    bed.put(ALLOW_ALL)
    a = bed.add_workload("a", "10.65.0.1", {}, profiles=("allow-all",))
    b = bed.add_workload("b", "10.65.0.2", {}, profiles=("allow-all",))
    c = bed.add_workload("c", "10.65.0.3", {}, profiles=("allow-all",))
    bed.put(gnp("only-c", "all()", order=1, ingress=[ALLOW], egress=[ALLOW]))
    bed.start_felix(tmp_path)
    bed.wait_ready()
    bed.expect(
        {"a->b": (bed.can_ping(a.netns, b.ip), True), "a->c": (bed.can_ping(a.netns, c.ip), True)}
    )

    def felix_routes() -> set[str]:
        return {r["dst"] for r in bed.routes() if str(r.get("protocol")) == "80"}

    assert felix_routes() == {a.ip, b.ip, c.ip}
    bed.stop_felix()
    bed.delete_workload(b)
    bed.delete("GlobalNetworkPolicy", "only-c")
    bed.start_felix(tmp_path)
    bed.wait_ready()
    assert wait_for(lambda: felix_routes() == {a.ip, c.ip}, 5), bed.routes()
    saved = bed.iptables_save()
    assert f"tby-tw-{b.iface}" not in saved and f"tby-fw-{b.iface}" not in saved
    assert "tby-pi-" not in saved  # the deleted policy's chains are gone
    # b's interface still exists but has no endpoint now: fail closed.
    ns_exec(bed.node, ["ip", "route", "add", f"{b.ip}/32", "dev", b.iface])
    bed.expect(
        {
            "a->b (swept)": (bed.can_ping(a.netns, b.ip), False),
            "a->c": (bed.can_ping(a.netns, c.ip), True),
        }
    )
