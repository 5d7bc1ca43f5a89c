"""External BGP speakers in the lab: a BIRD 2 or an FRR "node" in its own namespace on the fabric.

Role: ``tabby-lab peer add`` starts a real routing daemon next to the tabby nodes, so that tests
and demos can check that tabby-bgp interoperates with the implementations Calico users run.
Each peer gets a namespace ``<prefix><name>`` with ``eth0`` on subnet 0's bridge (addresses from
the top of the subnet down: .62, .61, ...), a default route via the lab router, one address of
the prefix it originates on ``lo`` (a /32: loopback addresses answer pings, so workloads can
reach "something behind" the peer), and iBGP sessions to every tabby node:
  bird  ``bird -f -c CONF -s SOCK -P PIDFILE``: ``device``, ``direct`` (resolves iBGP next hops),
        ``kernel`` (exports BGP routes to the namespace's kernel), ``static`` (the originated
        prefix, a blackhole), one ``bgp`` protocol per node.
  frr   ``zebra`` and ``bgpd`` with their own configuration files, PID files, zebra socket and vty
        socket directory (owned by the ``frr`` user the daemons drop to; ``bgpd`` without
        ``-l``, which would disable kernel installs); ``network P`` without import check.
Inputs: the lab's ``Topology`` and state directory. Outputs: ``peers.json`` in the state
directory (plan and PIDs of every peer), daemon configuration and logs under ``peers/<name>/``.
Invariants: every process is started by us and stopped by its recorded PID, and only while its
command line still names our configuration file; the namespaces carry the lab's prefix, so
``tabby-lab down`` (``destroy_all``) removes them even after a crash; nothing is configured
outside namespaces this module created.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from ipaddress import IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any, Literal

from kernel.links import add_address, create_veth, set_link_up
from lab import fabric
from lab.topology import POOL_CIDR, Topology

log = logging.getLogger(__name__)

PeerKind = Literal["bird", "frr"]
KINDS: tuple[PeerKind, ...] = ("bird", "frr")
FRR_DIR = Path("/usr/lib/frr")
MAX_PEERS = 8


class PeerError(RuntimeError):
    """A lab peer cannot be planned, started or found (names the peer)."""


@dataclass(frozen=True, slots=True)
class PeerPlan:
    name: str  # also the Node resource name
    kind: PeerKind
    netns: str
    address: str  # eth0, with prefix length
    gateway: str
    fabric_port: str
    originate: str  # the prefix it announces
    target: str  # an address inside ``originate``, on lo (answers pings)
    as_number: int
    state_dir: str
    pids: tuple[int, ...] = ()
    role: str = "peer"  # "peer" (``peer add``) or "tor" (a rack's router, ``lab.tor``)
    transit: str = ""  # a ToR's address on the inter-rack transit network, with prefix length

    @property
    def ip(self) -> str:
        return self.address.split("/")[0]

    def with_pids(self, pids: tuple[int, ...]) -> PeerPlan:
        return PeerPlan(**{**asdict(self), "pids": pids})

    @property
    def socket(self) -> str:
        """BIRD's control socket, or FRR's vty socket directory."""
        base = Path(self.state_dir)
        return str(base / "bird.ctl") if self.kind == "bird" else str(base / "vty")


# ------------------------------------------------------------------------------ state file
def load(state: Path) -> list[PeerPlan]:
    try:
        data = json.loads((state / "peers.json").read_text())
    except (FileNotFoundError, ValueError):
        return []
    return [PeerPlan(**{**p, "pids": tuple(p.get("pids", ()))}) for p in data]


def _save(state: Path, peers: list[PeerPlan]) -> None:
    tmp = state / "peers.json.tmp"
    tmp.write_text(json.dumps([asdict(p) for p in peers], indent=2))
    tmp.replace(state / "peers.json")


def save(state: Path, peers: list[PeerPlan]) -> None:
    """Replace the recorded peers (atomically)."""
    _save(state, peers)


def find(state: Path, name: str) -> PeerPlan:
    for p in load(state):
        if p.name == name:
            return p
    raise PeerError(f"no lab peer named {name!r}")


# ------------------------------------------------------------------------------ planning
def free_prefix(topo: Topology, taken: set[IPv4Network], avoid: list[str]) -> IPv4Network:
    """The highest /26 of the lab pool that holds none of ``avoid`` and is not ``taken``."""
    used = {IPv4Interface(f"{a}/32").ip for a in avoid}
    for net in reversed(list(POOL_CIDR.subnets(new_prefix=26))):
        if net in taken or any(ip in net for ip in used):
            continue
        return net
    raise PeerError("no free /26 left in the lab pool")


def plan_peer(
    topo: Topology,
    state: Path,
    name: str,
    kind: PeerKind,
    originate: IPv4Network,
    existing: list[PeerPlan],
) -> PeerPlan:
    if not name.isalnum() or len(name) > 8:
        raise PeerError(f"peer name {name!r}: use 1-8 letters or digits")
    if any(p.name == name for p in existing) or any(n.name == name for n in topo.nodes):
        raise PeerError(f"peer name {name!r} is already used in lab {topo.spec.name}")
    if kind not in KINDS:
        raise PeerError(f"peer {name}: kind {kind!r} is not one of {', '.join(KINDS)}")
    if sum(p.role == "peer" for p in existing) >= MAX_PEERS:
        raise PeerError(f"peer {name}: at most {MAX_PEERS} peers per lab")
    subnet = topo.subnets[0]
    cidr = IPv4Network(subnet.cidr)
    node_ips = {IPv4Interface(n.address).ip for n in topo.nodes}
    taken_ips = {IPv4Interface(p.address).ip for p in existing}
    address = None
    for offset in range(cidr.num_addresses - 2, 1, -1):
        ip = cidr.network_address + offset
        if ip not in node_ips and ip not in taken_ips:
            address = IPv4Interface(f"{ip}/{cidr.prefixlen}")
            break
    if address is None:
        raise PeerError(f"peer {name}: subnet {cidr} is full")
    ports = {p.fabric_port for p in existing}
    port = next(f"p{k}" for k in range(MAX_PEERS) if f"p{k}" not in ports)
    return PeerPlan(
        name=name,
        kind=kind,
        netns=f"{topo.ns_prefix}{name}",
        address=str(address),
        gateway=str(cidr.network_address + 1),
        fabric_port=port,
        originate=str(originate),
        target=str(originate.network_address + 1),
        as_number=topo.spec.as_number,
        state_dir=str(state / "peers" / name),
    )


# ------------------------------------------------------------------------------ configuration
def bird_config(peer: PeerPlan, neighbours: list[tuple[str, str]]) -> str:
    """BIRD 2 configuration: originate ``peer.originate``, iBGP to every (name, address)."""
    lines = [
        f"# Generated by tabby-lab for peer {peer.name}.",
        f"router id {peer.ip};",
        f'log "{Path(peer.state_dir) / "bird.log"}" all;',
        "protocol device { scan time 10; }",
        'protocol direct { ipv4; interface "eth0"; }',
        "protocol kernel {",
        "    ipv4 { import none; export where source = RTS_BGP; };",
        "    merge paths on;",
        "}",
        "protocol static originated {",
        "    ipv4;",
        f"    route {peer.originate} blackhole;",
        "}",
        "template bgp tabby {",
        f"    local {peer.ip} as {peer.as_number};",
        "    graceful restart on;",
        "    connect retry time 1;",
        "    ipv4 { import all; export where source = RTS_STATIC; next hop self; };",
        "}",
    ]
    for name, address in neighbours:
        lines.append(
            f"protocol bgp {name} from tabby {{ neighbor {address} as {peer.as_number}; }}"
        )
    return "\n".join(lines) + "\n"


def frr_bgpd_config(peer: PeerPlan, neighbours: list[tuple[str, str]]) -> str:
    """FRR bgpd configuration: originate ``peer.originate``, iBGP to every (name, address)."""
    lines = [
        "frr defaults traditional",
        f"hostname {peer.name}",
        "!",
        f"router bgp {peer.as_number}",
        f" bgp router-id {peer.ip}",
        " no bgp ebgp-requires-policy",
        " no bgp network import-check",
        " bgp graceful-restart",
    ]
    for _name, address in neighbours:
        lines += [
            f" neighbor {address} remote-as {peer.as_number}",
            f" neighbor {address} update-source {peer.ip}",
            f" neighbor {address} timers connect 1",
        ]
    lines += [" !", " address-family ipv4 unicast", f"  network {peer.originate}"]
    lines += [f"  neighbor {address} activate" for _name, address in neighbours]
    lines += [f"  neighbor {address} next-hop-self" for _name, address in neighbours]
    lines += [" exit-address-family", "!"]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ processes
def _cmdline(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


def _ours(pid: int, peer: PeerPlan) -> bool:
    """True while ``pid`` still runs one of this peer's daemons (its command names our dir)."""
    return any(peer.state_dir.encode() in word for word in _cmdline(pid))


def _start(peer: PeerPlan, argv: list[str], log_name: str) -> int:
    with open(Path(peer.state_dir) / log_name, "ab") as out:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", peer.netns, *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return proc.pid


def _wait_for(path: Path, pid: int, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline or not _cmdline(pid):
            raise PeerError(f"{what} did not start (no {path}); see its log in {path.parent}")
        time.sleep(0.05)


def _start_bird(peer: PeerPlan, neighbours: list[tuple[str, str]]) -> tuple[int, ...]:
    base = Path(peer.state_dir)
    conf = base / "bird.conf"
    conf.write_text(bird_config(peer, neighbours))
    bird = shutil.which("bird") or "/usr/sbin/bird"
    pid = _start(
        peer,
        [bird, "-f", "-c", str(conf), "-s", peer.socket, "-P", str(base / "bird.pid")],
        "bird.out",
    )
    _wait_for(Path(peer.socket), pid, f"BIRD of peer {peer.name}")
    return (pid,)


def _start_frr(peer: PeerPlan, neighbours: list[tuple[str, str]]) -> tuple[int, ...]:
    return start_frr(peer, frr_bgpd_config(peer, neighbours))


def start_frr(peer: PeerPlan, bgpd_conf: str) -> tuple[int, ...]:
    """Start zebra and bgpd for ``peer`` with ``bgpd_conf``; returns (bgpd, zebra) PIDs."""
    base = Path(peer.state_dir)
    vty = Path(peer.socket)
    vty.mkdir(exist_ok=True)
    (base / "zebra.conf").write_text(f"hostname {peer.name}\n!\n")
    (base / "bgpd.conf").write_text(bgpd_conf)
    for path in (base, vty, base / "zebra.conf", base / "bgpd.conf"):
        shutil.chown(path, "frr", "frr")
    zsock = str(base / "zserv.api")
    common = ["--vty_socket", str(vty), "-z", zsock, "-u", "frr", "-g", "frr", "--log", "stdout"]
    zebra = _start(
        peer,
        [
            str(FRR_DIR / "zebra"),
            "-f",
            str(base / "zebra.conf"),
            "-i",
            str(base / "zebra.pid"),
            *common,
        ],
        "zebra.log",
    )
    try:
        _wait_for(Path(zsock), zebra, f"zebra of peer {peer.name}")
        bgpd = _start(
            peer,
            [
                str(FRR_DIR / "bgpd"),
                "-f",
                str(base / "bgpd.conf"),
                "-i",
                str(base / "bgpd.pid"),
                *common,
            ],
            "bgpd.log",
        )
    except BaseException:
        _stop_pids(peer.with_pids((zebra,)))
        raise
    try:
        _wait_for(vty / "bgpd.vty", bgpd, f"bgpd of peer {peer.name}")
    except BaseException:
        _stop_pids(peer.with_pids((bgpd, zebra)))
        raise
    return (bgpd, zebra)


def _stop_pids(peer: PeerPlan, timeout: float = 5.0) -> None:
    for pid in peer.pids:
        if _ours(pid, peer):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for pid in peer.pids:
        while _ours(pid, peer) and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.05)
        if _ours(pid, peer):
            log.warning("peers.kill peer=%s pid=%d", peer.name, pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# ------------------------------------------------------------------------------ add / remove
def add(
    topo: Topology,
    state: Path,
    name: str,
    kind: PeerKind,
    originate: IPv4Network | None = None,
    avoid: list[str] | None = None,
) -> PeerPlan:
    """Create the peer's namespace and link, start its daemon(s), record it in peers.json."""
    existing = load(state)
    if originate is None:
        originate = free_prefix(
            topo, {IPv4Network(p.originate) for p in existing if p.originate}, list(avoid or [])
        )
    peer = plan_peer(topo, state, name, kind, originate, existing)
    if peer.netns in fabric.existing_netns():
        raise PeerError(f"namespace {peer.netns} already exists")
    Path(peer.state_dir).mkdir(parents=True, exist_ok=True)
    _save(state, [*existing, peer])  # recorded before anything exists: down always finds it
    try:
        fabric.add_netns(peer.netns)
        create_veth(peer.netns, "eth0", topo.fabric_netns, peer.fabric_port)
        fabric.ns_run(
            topo.fabric_netns,
            ["ip", "link", "set", peer.fabric_port, "master", topo.subnets[0].bridge],
            f"attach {peer.fabric_port}",
        )
        set_link_up(topo.fabric_netns, peer.fabric_port)
        add_address(peer.netns, "eth0", IPv4Interface(peer.address))
        set_link_up(peer.netns, "eth0")
        add_address(peer.netns, "lo", IPv4Interface(f"{peer.target}/32"))
        fabric.ns_run(
            peer.netns,
            ["ip", "route", "replace", "default", "via", peer.gateway],
            f"default route of peer {name}",
        )
        neighbours = [(n.name, n.address.split("/")[0]) for n in topo.nodes]
        start = _start_bird if kind == "bird" else _start_frr
        pids = start(peer, neighbours)
    except BaseException:
        remove(state, name)
        raise
    peer = peer.with_pids(pids)
    _save(state, [p if p.name != name else peer for p in load(state)])
    log.info("peers.add peer=%s kind=%s address=%s pids=%s", name, kind, peer.address, pids)
    return peer


def remove(state: Path, name: str) -> bool:
    """Stop the peer's daemons (by recorded PID) and delete its namespace; False if unknown."""
    peers = load(state)
    peer = next((p for p in peers if p.name == name), None)
    if peer is None:
        return False
    _stop_pids(peer)
    fabric.destroy([peer.netns])
    _save(state, [p for p in peers if p.name != name])
    return True


def destroy_all(state: Path) -> list[str]:
    """Remove every peer of the lab (used by ``tabby-lab down``); returns their names."""
    names = [p.name for p in load(state)]
    for name in names:
        remove(state, name)
    (state / "peers.json").unlink(missing_ok=True)
    return names


def control_argv(peer: PeerPlan, command: list[str]) -> list[str]:
    """The argv (inside the peer's namespace) of its control client running ``command``."""
    if peer.kind == "bird":
        return ["birdc", "-s", peer.socket, *command]
    return ["vtysh", "--vty_socket", peer.socket, "-c", " ".join(command)]


def node_resource(peer: PeerPlan) -> dict[str, Any]:
    """The Node resource that puts the peer into the node-to-node mesh."""
    return {
        "apiVersion": "projectcalico.org/v3",
        "kind": "Node",
        "metadata": {"name": peer.name, "labels": {"tabby-lab/peer": peer.kind}},
        "spec": {"bgp": {"ipv4Address": peer.address}},
    }
