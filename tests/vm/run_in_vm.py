"""Boot a stock Debian kernel in a VM (virtme-ng, no KVM) and run the IP-in-IP scenario in it.

Role: this machine's kernel has no ipip; a stock kernel does. ``vng`` boots it with this
machine's file system shared read-only (so the project's venv and Debian's etcd, iproute2,
tcpdump are all there) and one host directory shared read-write, where ``tests/vm/scenario.py``
(run inside the VM as root) writes its JSON summary. This script prints that summary with the
VM's wall time added (``vm_seconds``) and exits 0 when the scenario's expectations all held.

Usage: ``.venv/bin/python tests/vm/run_in_vm.py [--kernel /boot/vmlinuz-X] [--out FILE]
[--timeout S] [MODE...]`` (modes: CrossSubnet Always, the default). Exit codes: 0 ok, 1 the
scenario failed, 2 the VM could not be booted or produced no result (``vm_error`` in the JSON).

Needs (Debian): ``qemu-system-x86 linux-image-amd64 busybox-static`` (virtme-ng builds its
initramfs with a static busybox) and ``virtme-ng`` in the venv. ``find_kernel`` picks the
newest /boot/vmlinuz whose modules include ipip.
Safety: the VM has its own kernel and no network device; nothing on this machine is
configured. The only process started here is ``vng`` (killed by PID on timeout).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SCENARIO = Path(__file__).resolve().parent / "scenario.py"
VENV_BIN = Path(sys.executable).parent
DEFAULT_TIMEOUT = 1500.0
PACKAGES = ("policy", "datastore", "kernel", "felix", "bgp", "cni", "ctl", "lab", "tests/vm")
NINEP_OPTS = "trans=virtio,version=9p2000.L,msize=524288"
LAB_CMD_TIMEOUT = 240  # tabby-lab's per-command limit inside the emulated VM


def _version_key(path: Path) -> list[int]:
    return [int(x) for x in re.findall(r"\d+", path.name)]


def find_kernel() -> Path | None:
    """The newest /boot/vmlinuz-* that has an ipip module (None: no such kernel installed)."""
    found = []
    for image in Path("/boot").glob("vmlinuz-*"):
        release = image.name.removeprefix("vmlinuz-")
        if any((Path("/lib/modules") / release).glob("kernel/net/ipv4/ipip.ko*")):
            found.append(image)
    return max(found, key=_version_key) if found else None


def find_vng() -> Path | None:
    for cand in (VENV_BIN / "vng", Path(shutil.which("vng") or "")):
        if cand.name == "vng" and cand.exists():
            return cand
    return None


def missing_requirements() -> list[str]:
    """What the VM run needs and this machine lacks (empty: ready)."""
    missing = []
    if shutil.which("qemu-system-x86_64") is None:
        missing.append("apt: qemu-system-x86")
    if find_kernel() is None:
        missing.append("apt: linux-image-amd64")
    if not _static("busybox"):
        missing.append("apt: busybox-static")
    if find_vng() is None:
        missing.append("pip: virtme-ng")
    return missing


def _static(name: str) -> bool:
    """True when ``name`` on PATH is a statically linked executable (what virtme-ng needs)."""
    path = shutil.which(name)
    if path is None:
        return False
    res = subprocess.run(
        ["ldd", path], capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL
    )
    return "not a dynamic executable" in res.stdout + res.stderr


def run_vm(
    modes: list[str], *, kernel: Path | None = None, timeout: float = DEFAULT_TIMEOUT
) -> dict[str, Any]:
    """Boot the VM, run the scenario, return its summary (``vm_error`` set on VM failure)."""
    kernel = kernel or find_kernel()
    vng = find_vng()
    missing = missing_requirements()
    if kernel is None or vng is None or missing:
        return {"ok": False, "vm_error": f"missing: {', '.join(missing) or 'kernel/vng'}"}
    # The guest sees this machine's files read-only over 9p without caching: every Python
    # import is a round trip. Compile here once, and re-mount the project and the Python
    # installation (shared separately) with cache=loose inside the guest.
    subprocess.run(
        [str(VENV_BIN / "python"), "-m", "compileall", "-q", *PACKAGES],
        cwd=REPO,
        capture_output=True,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    cached = [REPO]
    base = Path(sys.base_prefix).resolve()
    if not base.is_relative_to("/usr") and not REPO.is_relative_to(base):
        cached.append(base)
    share = Path(tempfile.mkdtemp(prefix="tabby-vm-", dir="/var/tmp"))
    result = share / "result.json"
    remounts = [
        # tag N+1: the rwdir is initmount0, then the --rodir shares in order
        f"{{ umount {d} && mount -t 9p -o {NINEP_OPTS},cache=loose,ro virtme.initmount{i} {d}"
        f" || mount -t 9p -o {NINEP_OPTS},ro virtme.initmount{i} {d}; }}"
        for i, d in enumerate(cached, start=1)
    ]
    inner = "; ".join(
        [
            *remounts,
            f"cd {REPO}",
            "env -u TABBY_REQUIRE_NETNS -u TABBY_EXPECT_NETNS"
            f" TABBY_LAB_CMD_TIMEOUT={LAB_CMD_TIMEOUT} TABBY_LAB_ETCD_TIMEOUT=60"
            " PYTHONDONTWRITEBYTECODE=1"
            f" {VENV_BIN / 'python'} {SCENARIO} {result} {' '.join(modes)}"
            f" > {share / 'scenario.log'} 2>&1",
        ]
    )
    argv = [
        str(vng),
        "--run",
        str(kernel),
        "--disable-kvm",
        "--cpus",
        str(min(4, os.cpu_count() or 2)),
        "--memory",
        "2G",
        "--rwdir",
        str(share),
        *(a for d in cached for a in ("--rodir", str(d))),
        "--cwd",
        "/",
        "--exec",
        inner,
    ]
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    t0 = time.monotonic()
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        text=True,
        start_new_session=True,
    )
    try:
        console, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # vng leads its own session (start_new_session): its group is vng, virtme-run and
        # qemu, all started by us; stop exactly that group.
        os.killpg(proc.pid, signal.SIGKILL)
        console, _ = proc.communicate(timeout=30)
        console += f"\n(run_in_vm: timeout after {timeout:.0f} s)"
    elapsed = time.monotonic() - t0
    summary: dict[str, Any]
    try:
        summary = json.loads(result.read_text())
    except (OSError, ValueError):
        summary = {"ok": False, "vm_error": "no result from the VM"}
    summary["booted"] = (share / "started").exists()
    summary["vm_seconds"] = round(elapsed, 1)
    summary["vm_kernel_image"] = str(kernel)
    summary["vng_rc"] = proc.returncode
    if not summary.get("ok"):
        summary["console_tail"] = console.splitlines()[-40:]
        log = share / "scenario.log"
        if log.exists():
            summary["scenario_log_tail"] = log.read_text(errors="replace").splitlines()[-40:]
    shutil.rmtree(share, ignore_errors=True)
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modes", nargs="*", default=["CrossSubnet", "Always"])
    parser.add_argument("--kernel", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None, help="Also write the summary here.")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT)
    args = parser.parse_args()
    summary = run_vm(args.modes, kernel=args.kernel, timeout=args.timeout)
    text = json.dumps(summary, indent=2)
    if args.out:
        args.out.write_text(text)
    print(text)
    if "vm_error" in summary:
        return 2
    return 0 if summary.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
