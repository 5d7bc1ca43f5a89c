"""``tabby-lab``: a whole tabby cluster on one machine, in network namespaces it creates.

Commands: ``up`` (fabric, router, nodes, etcd, agents, workloads made by the CNI plugin),
``status``, ``check`` (workload-to-workload connectivity matrix), ``exec NODE|WORKLOAD -- CMD``,
``agent stop|start|kill NODE AGENT`` (for tests and demos), ``peer add|del|list|cli`` (BIRD and
FRR peers in their own namespaces, see ``lab.peers``), ``down`` (removes everything, also
after a crash). State lives in ``--state-dir`` (default /run/tabby-lab/<name>).
Safety: every namespace, link and route is inside a namespace the lab created; nothing is
configured in the namespace tabby-lab runs in; processes are stopped by PID.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import click

from lab import fabric, peers, tor
from lab.topology import LabSpec, Topology, TopologyError, WorkloadPlan, plan

DEFAULT_STATE_ROOT = Path("/run/tabby-lab")
VENV_BIN = Path(sys.executable).parent
# Seconds a tabbyctl/CNI command or the supervisor's start may take; raise it on slow machines
# (tests/vm runs the lab in an emulated VM, where a Python process start alone takes seconds).
CMD_TIMEOUT = float(os.environ.get("TABBY_LAB_CMD_TIMEOUT", "60"))
# The CNI plugin's etcd deadline (its own default is 5 s).
CNI_ETCD_TIMEOUT = float(os.environ.get("TABBY_LAB_ETCD_TIMEOUT", "5"))


def _state_dir(root: Path, name: str) -> Path:
    return root / name


def _load(state: Path) -> Topology:
    try:
        return Topology.from_json(json.loads((state / "topology.json").read_text()))
    except FileNotFoundError:
        raise click.ClickException(f"no lab in {state} (run `tabby-lab up`)") from None


def _supervisor(state: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads((state / "supervisor.json").read_text())
        return data
    except (FileNotFoundError, ValueError):
        return {}


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _ns(
    netns: str,
    argv: Sequence[str],
    timeout: float = 60,
    check: bool = True,
    input_text: str | None = None,
) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(
        ["ip", "netns", "exec", netns, *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input_text,
        check=False,
        stdin=None if input_text is not None else subprocess.DEVNULL,
    )
    if check and res.returncode != 0:
        raise click.ClickException(
            f"in {netns}: {' '.join(argv)} failed: {(res.stderr or res.stdout).strip()}"
        )
    return res


def _tabbyctl(topo: Topology, args: Sequence[str], input_text: str | None = None) -> str:
    """Run tabbyctl inside the first node (where etcd is reachable at 127.0.0.1:2379)."""
    ctl = str(VENV_BIN / "tabbyctl")
    res = _ns(
        topo.nodes[0].netns,
        ["env", "ETCD_ENDPOINTS=http://127.0.0.1:2379", ctl, *args],
        input_text=input_text,
        timeout=CMD_TIMEOUT,
    )
    return res.stdout


# ------------------------------------------------------------------------------ resources
def _resources(topo: Topology) -> list[dict[str, Any]]:
    spec = topo.spec
    docs: list[dict[str, Any]] = [
        {
            "apiVersion": "projectcalico.org/v3",
            "kind": "BGPConfiguration",
            "metadata": {"name": "default"},
            "spec": {"nodeToNodeMeshEnabled": True, "asNumber": spec.as_number},
        },
        {
            "apiVersion": "projectcalico.org/v3",
            "kind": "IPPool",
            "metadata": {"name": "lab-pool"},
            "spec": {
                "cidr": "10.65.0.0/16",
                "blockSize": 26,
                "ipipMode": spec.ipip,
                "natOutgoing": False,
                "nodeSelector": "all()",
            },
        },
        {
            "apiVersion": "projectcalico.org/v3",
            "kind": "Profile",
            "metadata": {"name": "kns.default"},
            "spec": {
                "ingress": [{"action": "Allow"}],
                "egress": [{"action": "Allow"}],
                "labelsToApply": {"pcns.projectcalico.org/name": "default"},
            },
        },
    ]
    for node in topo.nodes:
        docs.append(
            {
                "apiVersion": "projectcalico.org/v3",
                "kind": "Node",
                "metadata": {"name": node.name, "labels": {"rack": f"r{node.subnet}"}},
                "spec": {"bgp": {"ipv4Address": node.address}},
            }
        )
    return tor.resources(topo, docs)


def _cni_conf(node_name: str, pod: str = "") -> str:
    # Labels a Kubernetes pod would carry, so policies can select one workload or one node's.
    labels = {"node": node_name, **({"workload": pod} if pod else {})}
    return json.dumps(
        {
            "cniVersion": "1.0.0",
            "name": "tabby-lab",
            "type": "tabby",
            "etcd_endpoints": "http://127.0.0.1:2379",
            "nodename": node_name,
            "labels": labels,
            "mtu": 1480,
            "etcd_timeout": CNI_ETCD_TIMEOUT,
            "ipam": {"type": "tabby-ipam", "ipv4_pools": ["10.65.0.0/16"]},
        }
    )


def cni(topo: Topology, wl: WorkloadPlan, command: str) -> dict[str, Any]:
    node = topo.node(wl.node)
    env = {
        **os.environ,
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": wl.container_id,
        "CNI_NETNS": f"/run/netns/{wl.netns}",
        "CNI_IFNAME": "eth0",
        "CNI_ARGS": f"K8S_POD_NAMESPACE={wl.namespace};K8S_POD_NAME={wl.name}",
        "CNI_PATH": str(VENV_BIN),
        "TABBY_EXPECT_NETNS": node.netns,
    }
    res = subprocess.run(
        ["ip", "netns", "exec", node.netns, str(VENV_BIN / "tabby-cni")],
        input=_cni_conf(node.name, wl.name),
        capture_output=True,
        text=True,
        env=env,
        timeout=CMD_TIMEOUT,
        check=False,
    )
    if res.returncode != 0:
        raise click.ClickException(
            f"CNI {command} {wl.name}: {res.stdout.strip()} {res.stderr.strip()}"
        )
    out: dict[str, Any] = json.loads(res.stdout) if res.stdout.strip() else {}
    return out


def workload_ips(state: Path) -> dict[str, str]:
    try:
        data: dict[str, str] = json.loads((state / "workloads.json").read_text())
        return data
    except FileNotFoundError:
        return {}


# ------------------------------------------------------------------------------ commands
@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--name",
    default="tabby",
    show_default=True,
    envvar="TABBY_LAB_NAME",
    show_envvar=True,
    help="Lab name (1-8 letters/digits).",
)
@click.option(
    "--state-root",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_STATE_ROOT,
    show_default=True,
    envvar="TABBY_LAB_STATE_ROOT",
    show_envvar=True,
    help="Where lab state is kept.",
)
@click.pass_context
def main(ctx: click.Context, name: str, state_root: Path) -> None:
    """A tabby cluster on one machine, built only in network namespaces it creates."""
    ctx.obj = {"name": name, "state": _state_dir(state_root, name)}


@main.command()
@click.option("--nodes", default=3, show_default=True, help="Number of nodes.")
@click.option("--subnets", default=1, show_default=True, help="Underlay subnets (racks).")
@click.option(
    "--ipip",
    type=click.Choice(["Never", "CrossSubnet", "Always"]),
    default="Never",
    show_default=True,
    help="ipipMode of the lab's IP pool.",
)
@click.option("--workloads-per-node", default=2, show_default=True)
@click.option(
    "--etcd-endpoints",
    default=None,
    help="Use this etcd instead of starting one (reachable from this namespace).",
)
@click.option(
    "--agents",
    default="tabby-felix,tabby-bgp",
    show_default=True,
    help="Agents to run on every node.",
)
@click.option(
    "--tor",
    "tor_kind",
    type=click.Choice(["frr"]),
    default=None,
    help="A top-of-rack router per subnet (FRR, eBGP, AS per rack and per node, no mesh; "
    "see lab/tor.py) instead of the shared router.",
)
@click.pass_context
def up(
    ctx: click.Context,
    nodes: int,
    subnets: int,
    ipip: str,
    workloads_per_node: int,
    etcd_endpoints: str | None,
    agents: str,
    tor_kind: str | None,
) -> None:
    """Create the lab: fabric, router, nodes, etcd, agents, workloads."""
    state: Path = ctx.obj["state"]
    try:
        topo = plan(
            LabSpec(
                ctx.obj["name"],
                nodes,
                subnets,
                ipip,  # type: ignore[arg-type]
                workloads_per_node,
                tor=tor_kind or "",
            )
        )
    except TopologyError as exc:
        raise click.ClickException(str(exc)) from None
    if (state / "topology.json").exists():
        raise click.ClickException(f"a lab already exists in {state}; run `tabby-lab down`")
    state.mkdir(parents=True, exist_ok=True)
    (state / "topology.json").write_text(json.dumps(topo.to_json(), indent=2))
    t0 = time.monotonic()

    def progress(msg: str) -> None:
        click.echo(f"[{time.monotonic() - t0:5.1f}s] {msg}")

    try:
        fabric.build(topo, progress)
        tor.build(topo, state, progress)
        if ipip != "Never" and not fabric.kernel_has_ipip(topo.nodes[0].netns):
            click.echo(
                f"note: this kernel ({os.uname().release}) has no IP-in-IP (ipip): with --ipip "
                f"{ipip} the routes via tunl0 stay pending and encapsulated pairs will not "
                "connect (tabby-bgp logs ipip.unavailable). Use --ipip Never, or a stock kernel "
                "(tests/vm/run_in_vm.py boots one).",
                err=True,
            )
        wanted = [a for a in agents.split(",") if a and (VENV_BIN / a).exists()]
        missing = [a for a in agents.split(",") if a and a not in wanted]
        if missing:
            progress(f"not installed, skipped: {', '.join(missing)}")
        progress(f"supervisor (etcd, namespace bridges, agents: {', '.join(wanted)})")
        log = open(state / "supervisor.log", "ab")  # noqa: SIM115 (handed to the child)
        sup = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lab.supervisor",
                str(state),
                ",".join(wanted),
                etcd_endpoints or "",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        (state / "supervisor.pid").write_text(str(sup.pid))
        deadline = time.monotonic() + CMD_TIMEOUT
        while not (state / "supervisor.ready").exists():
            if sup.poll() is not None or time.monotonic() > deadline:
                raise click.ClickException(f"supervisor failed; see {state / 'supervisor.log'}")
            time.sleep(0.1)
        progress("datastore resources (pool, nodes, BGP configuration, profile)")
        docs = "\n---\n".join(json.dumps(d) for d in _resources(topo))
        _tabbyctl(topo, ["apply", "-f", "-"], input_text=docs)
        progress(f"{len(topo.workloads)} workloads via the CNI plugin")
        for wl in topo.workloads:
            fabric.add_netns(wl.netns)
        ips: dict[str, str] = {}

        def add(wl: WorkloadPlan) -> tuple[str, str]:
            result = cni(topo, wl, "ADD")
            return wl.name, str(result["ips"][0]["address"]).split("/")[0]

        with ThreadPoolExecutor(max_workers=4) as pool:
            for name, ip in pool.map(add, topo.workloads):
                ips[name] = ip
        (state / "workloads.json").write_text(json.dumps(ips, indent=2))
        progress(
            f"up: {len(topo.nodes)} nodes, {len(topo.workloads)} workloads "
            f"(check with `tabby-lab check`)"
        )
    except BaseException:
        click.echo("tabby-lab: up failed; cleaning up", err=True)
        _down(state, quiet=True)
        raise


def _down(state: Path, quiet: bool = False) -> None:
    pid_file = state / "supervisor.pid"
    if pid_file.exists():
        pid = int(pid_file.read_text() or 0)
        if _alive(pid):
            os.kill(pid, signal.SIGTERM)
            for _ in range(150):
                if not _alive(pid):
                    break
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    if (state / "topology.json").exists():
        gone = peers.destroy_all(state)
        if gone and not quiet:
            click.echo(f"removed peers: {', '.join(gone)}")
        topo = _load(state)
        removed = fabric.destroy(topo.all_netns())
        if not quiet:
            click.echo(f"removed {len(removed)} namespaces")
    for f in (
        "topology.json",
        "workloads.json",
        "supervisor.json",
        "supervisor.pid",
        "supervisor.ready",
    ):
        (state / f).unlink(missing_ok=True)
    shutil.rmtree(state / "secrets", ignore_errors=True)


@main.command()
@click.pass_context
def down(ctx: click.Context) -> None:
    """Remove everything the lab made (works after a crash too)."""
    _down(ctx.obj["state"])


@main.command()
@click.pass_context
def status(ctx: click.Context) -> None:
    """Nodes, agents, BGP sessions and routes."""
    state: Path = ctx.obj["state"]
    topo = _load(state)
    sup = _supervisor(state)
    click.echo(
        f"lab {topo.spec.name}: {len(topo.nodes)} nodes, {len(topo.subnets)} subnets, "
        f"ipip {topo.spec.ipip}; etcd {sup.get('etcd_endpoint', '?')}; supervisor "
        f"{'running' if _alive(sup.get('pid')) else 'NOT running'}"
    )
    agents = {(a["node"], a["agent"]): a for a in sup.get("agents", [])}
    for node in topo.nodes:
        parts = []
        for (n, name), a in sorted(agents.items()):
            if n == node.name:
                state_txt = (
                    "paused" if a.get("paused") else ("running" if _alive(a.get("pid")) else "down")
                )
                parts.append(f"{name}={state_txt}(restarts {max(0, a['restarts'] - 1)})")
        routes = _ns(node.netns, ["ip", "-j", "route"], check=False).stdout
        try:
            table = json.loads(routes or "[]")
        except ValueError:
            table = []
        felix = sum(1 for r in table if r.get("protocol") in ("80", 80))
        bgp = sum(1 for r in table if r.get("protocol") in ("81", 81))
        click.echo(
            f"  {node.name:8} {node.address:18} {' '.join(parts)} routes: felix {felix}, bgp {bgp}"
        )
    for peer in peers.load(state):
        alive = all(_alive(pid) for pid in peer.pids) and bool(peer.pids)
        running = "running" if alive else "NOT running"
        if peer.role == "tor":
            click.echo(
                f"  {peer.name:8} {peer.address:18} {peer.kind} top-of-rack router {running}, "
                f"AS {peer.as_number}, transit {peer.transit}"
            )
            continue
        click.echo(
            f"  {peer.name:8} {peer.address:18} {peer.kind} peer "
            f"{running}, originates {peer.originate} "
            f"(target {peer.target})"
        )


def _ping(src_ns: str, ip: str) -> bool:
    res = subprocess.run(
        ["ip", "netns", "exec", src_ns, "ping", "-c", "1", "-W", "1", "-q", ip],
        capture_output=True,
        timeout=15,
        check=False,
    )
    return res.returncode == 0


@main.command()
@click.option("--retries", default=3, show_default=True, help="Pings per failing pair.")
@click.pass_context
def check(ctx: click.Context, retries: int) -> None:
    """Full workload-to-workload connectivity matrix; exit 0 only if every pair connects."""
    state: Path = ctx.obj["state"]
    topo = _load(state)
    ips = workload_ips(state)
    wls = [w for w in topo.workloads if w.name in ips]
    pairs = [(a, b) for a in wls for b in wls if a is not b]

    def probe(pair: tuple[WorkloadPlan, WorkloadPlan]) -> bool:
        a, b = pair
        return any(_ping(a.netns, ips[b.name]) for _ in range(max(1, retries)))

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = dict(zip(pairs, pool.map(probe, pairs), strict=True))
    width = max((len(w.name) for w in wls), default=4)
    click.echo(" " * (width + 1) + " ".join(f"{w.name[-width:]:>{width}}" for w in wls))
    for a in wls:
        row = []
        for b in wls:
            row.append("-" if a is b else ("ok" if results[(a, b)] else "FAIL"))
        click.echo(f"{a.name:>{width}} " + " ".join(f"{c:>{width}}" for c in row))
    failed = [(a.name, b.name) for (a, b), ok in results.items() if not ok]
    click.echo(f"{len(pairs) - len(failed)}/{len(pairs)} pairs connect")
    if failed:
        raise SystemExit(1)


@main.command(name="exec", context_settings={"ignore_unknown_options": True})
@click.argument("target")
@click.argument("cmd", nargs=-1, type=click.UNPROCESSED, required=True)
@click.pass_context
def exec_(ctx: click.Context, target: str, cmd: tuple[str, ...]) -> None:
    """Run CMD inside a node, workload or peer namespace (e.g. `exec node1 -- ip route`)."""
    topo = _load(ctx.obj["state"])
    names = (
        {n.name: n.netns for n in topo.nodes}
        | {w.name: w.netns for w in topo.workloads}
        | {p.name: p.netns for p in peers.load(ctx.obj["state"])}
    )
    if target not in names:
        raise click.ClickException(
            f"unknown node, workload or peer {target!r} (one of: {', '.join(sorted(names))})"
        )
    os.execvp("ip", ["ip", "netns", "exec", names[target], *cmd])


@main.command()
@click.argument("action", type=click.Choice(["stop", "start", "kill"]))
@click.argument("node")
@click.argument("agent", type=click.Choice(["tabby-felix", "tabby-bgp"]))
@click.pass_context
def agent(ctx: click.Context, action: str, node: str, agent: str) -> None:
    """Stop, start or kill one node's agent (the supervisor restarts a killed one)."""
    state: Path = ctx.obj["state"]
    ctl = state / "control"
    ctl.mkdir(exist_ok=True)
    f = ctl / f"{time.time_ns()}.json"
    f.write_text(json.dumps({"action": action, "node": node, "agent": agent}))


_SECRET_NAME = re.compile(r"^[a-z0-9]([-.a-z0-9]*[a-z0-9])?$")
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")


def _secret_path(state: Path, name: str, key: str) -> Path:
    """``<state>/secrets/<name>/<key>``: the layout tabby-bgp reads (bgp/secrets.py), whose
    own checks are stricter; these keep the path inside the directory."""
    if not _SECRET_NAME.match(name) or ".." in name:
        raise click.ClickException(f"secret name {name!r}: lower-case letters, digits, - and .")
    if not _SECRET_KEY.match(key) or key in (".", ".."):
        raise click.ClickException(f"secret key {key!r}: letters, digits, -, _ and .")
    return state / "secrets" / name / key


@main.group()
def secret() -> None:
    """Secrets for BGP passwords (``secretKeyRef``), as files every node's tabby-bgp reads."""


@secret.command(name="set")
@click.argument("name")
@click.argument("key")
@click.option("--value", default=None, help="The value (default: read from standard input).")
@click.pass_context
def secret_set(ctx: click.Context, name: str, key: str, value: str | None) -> None:
    """Set key KEY of secret NAME (a BGPPeer's password.secretKeyRef {name, key})."""
    state: Path = ctx.obj["state"]
    _load(state)
    data = value if value is not None else sys.stdin.read()
    path = _secret_path(state, name, key)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{key}.tmp")
    tmp.write_bytes(b"")
    tmp.chmod(0o600)
    tmp.write_text(data)
    tmp.replace(path)
    click.echo(f"secret {name} key {key} set ({path})")


@secret.command(name="del")
@click.argument("name")
@click.argument("key")
@click.pass_context
def secret_del(ctx: click.Context, name: str, key: str) -> None:
    """Remove key KEY of secret NAME (peers using it are left out: fail closed)."""
    path = _secret_path(ctx.obj["state"], name, key)
    path.unlink(missing_ok=True)
    click.echo(f"secret {name} key {key} removed")


@main.group()
def peer() -> None:
    """External BGP speakers (BIRD 2, FRR) in their own namespaces on the fabric."""


@peer.command(name="add")
@click.argument("name")
@click.option("--kind", type=click.Choice(list(peers.KINDS)), required=True)
@click.option(
    "--originate",
    default=None,
    help="Prefix the peer announces (default: a free /26 at the top of the lab pool).",
)
@click.option(
    "--node/--no-node",
    "register",
    default=True,
    show_default=True,
    help="Create a Node resource for it, so that every tabby node peers with it (mesh).",
)
@click.pass_context
def peer_add(
    ctx: click.Context, name: str, kind: peers.PeerKind, originate: str | None, register: bool
) -> None:
    """Start a BIRD or FRR peer NAME with iBGP sessions to every node."""
    state: Path = ctx.obj["state"]
    topo = _load(state)
    try:
        prefix = IPv4Network(originate) if originate else None
    except ValueError as exc:
        raise click.ClickException(f"--originate {originate!r}: {exc}") from None
    try:
        p = peers.add(topo, state, name, kind, prefix, avoid=list(workload_ips(state).values()))
    except (peers.PeerError, fabric.FabricError) as exc:
        raise click.ClickException(str(exc)) from None
    if register:
        _tabbyctl(topo, ["apply", "-f", "-"], input_text=json.dumps(peers.node_resource(p)))
    click.echo(
        f"peer {p.name}: {p.kind} at {p.address} in {p.netns}, originates {p.originate} "
        f"(target {p.target}), pids {' '.join(map(str, p.pids))}"
    )


@peer.command(name="del")
@click.argument("name")
@click.pass_context
def peer_del(ctx: click.Context, name: str) -> None:
    """Stop peer NAME, delete its namespace and its Node resource."""
    state: Path = ctx.obj["state"]
    topo = _load(state)
    if not peers.remove(state, name):
        raise click.ClickException(f"no lab peer named {name!r}")
    _ns(
        topo.nodes[0].netns,
        [
            "env",
            "ETCD_ENDPOINTS=http://127.0.0.1:2379",
            str(VENV_BIN / "tabbyctl"),
            "delete",
            "node",
            name,
        ],
        check=False,
    )
    click.echo(f"peer {name} removed")


@peer.command(name="list")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text")
@click.pass_context
def peer_list(ctx: click.Context, output: str) -> None:
    """The lab's peers (name, kind, address, originated prefix, PIDs)."""
    found = peers.load(ctx.obj["state"])
    if output == "json":
        click.echo(json.dumps([{**asdict(p), "socket": p.socket} for p in found], indent=2))
        return
    for p in found:
        click.echo(f"{p.name:8} {p.kind:5} {p.address:18} {p.originate:18} {p.netns}")


@peer.command(name="cli", context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.argument("cmd", nargs=-1, type=click.UNPROCESSED, required=True)
@click.pass_context
def peer_cli(ctx: click.Context, name: str, cmd: tuple[str, ...]) -> None:
    """Run a birdc / vtysh command on peer NAME (e.g. `peer cli bird1 show route`)."""
    try:
        p = peers.find(ctx.obj["state"], name)
    except peers.PeerError as exc:
        raise click.ClickException(str(exc)) from None
    os.execvp("ip", ["ip", "netns", "exec", p.netns, *peers.control_argv(p, list(cmd))])


if __name__ == "__main__":
    main()
