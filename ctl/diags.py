"""``tabbyctl diags``: one archive with everything needed to debug this node.

Role: run inside the node's network namespace (where the agents run) and collect, read-only,
what an engineer asks for first: versions, configuration sources, agent logs, the kernel's
iptables/ipset/route/link state, the BGP agent's status and ExaBGP's files, and the datastore
objects that concern this node. Everything goes into ONE ``.tar.gz`` under a top directory
``tabby-diags-<node>-<time>/``.

Inputs: options (``--node``, ``--since``, ``--log-dir``, ``--log-file``, ...), ``/proc`` (the
agents ``tabby-felix`` / ``tabby-bgp`` running in this network namespace: command line, the
``FELIX_*``/``TABBY_*``/``NODENAME``/``ETCD_*`` part of their environment, the file their stdout
goes to), read-only commands (``iptables-*-save -c``, ``ipset list``, ``ip ...``,
``journalctl``), the agents' HTTP endpoints on 127.0.0.1, and etcd.
Outputs: the archive; its path and a one-line summary on stdout.

Layout of the archive (``DIR`` = the top directory)::

    DIR/summary.txt         node, time, command line, every member with its size
    DIR/errors.txt          one line per collector failure ("none" when everything worked)
    DIR/versions.txt        tabby, python, kernel, iptables, ipset, exabgp, etcd (client, server)
    DIR/config/             felix.cfg (if present), agents.txt (PIDs, argv, environment)
    DIR/logs/               journal of the units (systemd), agent stdout files, --log-dir/-file
    DIR/kernel/             iptables-<backend>-save.txt / ip6tables-..., ipset-list.txt,
                            ip-route.txt, ip6-route.txt, ip-link.txt, ip-addr.txt, ip-rule.txt
    DIR/bgp/                status.json (tabby-bgp /status), exabgp.log, exabgp.conf, ...
    DIR/felix/health.txt    tabby-felix /liveness and /readiness
    DIR/datastore/          <kind plural>.yaml (calicoctl's List shape), ipam-blocks.yaml

Invariants:
- Read-only: no kernel write, no datastore write, no signal to any process.
- A collector failure never aborts the run: it is recorded in ``errors.txt`` (part: reason) and
  the other collectors go on; the command fails (exit 1) only when the archive cannot be written.
- Every external command and HTTP request has a timeout; a log is cut to its last
  ``--max-log-bytes`` bytes.
- Secrets: only the ``FELIX_*``, ``TABBY_*``, ``NODENAME`` and ``ETCD_*`` variables of an agent's
  environment are recorded; ``BGPPeer`` passwords are stored in Secrets, never in the peer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import io
import json
import logging
import os
import platform
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import click
import yaml

from ctl import output
from datastore import kinds, kv
from datastore.client import ResourceClient, ResourceNotFound
from datastore.etcd import EtcdConfig
from datastore.ipam_block import block_prefix
from datastore.model import Resource

log = logging.getLogger(__name__)

AGENTS = ("tabby-felix", "tabby-bgp")
AGENT_MODULES = {"felix": "tabby-felix", "bgp": "tabby-bgp"}
ENV_PREFIXES = ("FELIX_", "TABBY_", "ETCD_")
ENV_NAMES = ("NODENAME",)
DEFAULT_FELIX_CONFIG = Path("/etc/tabby/felix.cfg")
DEFAULT_BGP_PORT = 9098
DEFAULT_FELIX_PORT = 9099
DEFAULT_MAX_LOG_BYTES = 5 * 1024 * 1024
MAX_LOG_DIR_FILES = 200
PACKAGE = "tabby-net"


class DiagsError(Exception):
    """The archive could not be written."""


# --------------------------------------------------------------------------- the archive


@dataclasses.dataclass
class Bundle:
    """The members collected so far (path under the top directory -> bytes) and the errors."""

    top: str
    members: dict[str, bytes] = dataclasses.field(default_factory=dict)
    errors: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    def add(self, path: str, data: bytes | str) -> None:
        self.members[path] = data.encode() if isinstance(data, str) else data

    def error(self, part: str, message: str) -> None:
        line = f"{part}: {' '.join(message.split())}"
        log.warning("diags.collector_failed %s", line)
        self.errors.append(line)

    def note(self, text: str) -> None:
        self.notes.append(text)

    def tar_gz(self, header: str) -> bytes:
        """The gzip'd tar of every member, plus ``summary.txt`` and ``errors.txt``."""
        files = dict(self.members)
        files["errors.txt"] = ("\n".join(self.errors) + "\n" if self.errors else "none\n").encode()
        lines = [header, "", "notes:"] + [f"  {n}" for n in self.notes or ["none"]]
        lines += ["", f"errors: {len(self.errors)} (see errors.txt)", "", "members:"]
        lines += [f"  {len(data):>10}  {path}" for path, data in sorted(files.items())]
        files["summary.txt"] = ("\n".join(lines) + "\n").encode()
        buf = io.BytesIO()
        now = time.time()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for path, data in sorted(files.items()):
                info = tarfile.TarInfo(f"{self.top}/{path}")
                info.size = len(data)
                info.mtime = int(now)
                info.mode = 0o600
                tar.addfile(info, io.BytesIO(data))
        return buf.getvalue()


# --------------------------------------------------------------------------- pure helpers


def agent_name(comm: str, argv: Sequence[str]) -> str | None:
    """``tabby-felix``/``tabby-bgp`` for a process running an agent, else None.

    Matches the console scripts (the kernel's ``comm`` is the script name) and
    ``python -m felix`` / ``python -m bgp``."""
    if comm in AGENTS:
        return comm
    for i, arg in enumerate(argv[:3]):
        if Path(arg).name in AGENTS and i <= 1:
            return Path(arg).name
        if arg == "-m" and i + 1 < len(argv) and argv[i + 1] in AGENT_MODULES:
            return AGENT_MODULES[argv[i + 1]]
    return None


def filter_env(raw: bytes) -> dict[str, str]:
    """The configuration part of a ``/proc/<pid>/environ`` blob (see ``ENV_PREFIXES``)."""
    out: dict[str, str] = {}
    for item in raw.split(b"\0"):
        name, sep, value = item.decode(errors="replace").partition("=")
        if sep and (name in ENV_NAMES or name.startswith(ENV_PREFIXES)):
            out[name] = value
    return dict(sorted(out.items()))


def has_rules(save_text: str) -> bool:
    """Whether an ``iptables-save [-c]`` dump holds any rule (``-A``, with ``-c`` after the
    ``[packets:bytes]`` counters)."""
    for line in save_text.splitlines():
        rule = line.split("] ", 1)[1] if line.startswith("[") and "] " in line else line
        if rule.startswith("-A "):
            return True
    return False


def tail(data: bytes, limit: int) -> bytes:
    if len(data) <= limit:
        return data
    cut = data[-limit:]
    nl = cut.find(b"\n")
    cut = cut[nl + 1 :] if 0 <= nl < 4096 else cut
    return b"[... cut: only the last %d bytes are kept ...]\n" % limit + cut


def safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip("._") or "x"


# --------------------------------------------------------------------------- processes


@dataclasses.dataclass(frozen=True, slots=True)
class AgentProcess:
    pid: int
    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    stdout: Path | None  # the regular file its stdout goes to, if any


def _netns_inode(pid: str) -> int:
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def find_agents(proc: Path = Path("/proc")) -> tuple[list[AgentProcess], list[str]]:
    """Agents running in this network namespace; and problems met (unreadable processes)."""
    mine = _netns_inode("self")
    found: list[AgentProcess] = []
    problems: list[str] = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
            argv = tuple(
                a.decode(errors="replace") for a in (entry / "cmdline").read_bytes().split(b"\0")
            )
            name = agent_name(comm, [a for a in argv if a])
            if name is None:
                continue
            if _netns_inode(entry.name) != mine:
                continue
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited meanwhile
        except OSError as exc:
            problems.append(f"pid {entry.name}: {exc}")
            continue
        try:
            env = filter_env((entry / "environ").read_bytes())
        except OSError as exc:
            problems.append(f"pid {entry.name} ({name}) environment: {exc}")
            env = {}
        out: Path | None = None
        try:
            target = Path(os.readlink(entry / "fd" / "1"))
            if target.is_absolute() and stat.S_ISREG(target.stat().st_mode):
                out = target
        except OSError:
            pass
        found.append(AgentProcess(int(entry.name), name, tuple(a for a in argv if a), env, out))
    found.sort(key=lambda a: (a.name, a.pid))
    return found, problems


# --------------------------------------------------------------------------- collection


class Connect(Protocol):
    def __call__(self, etcd_endpoints: str | None, timeout: float) -> ResourceClient: ...


@dataclasses.dataclass(frozen=True, slots=True)
class DiagsOptions:
    node: str | None = None
    since: str | None = None
    log_dirs: tuple[Path, ...] = ()
    log_files: tuple[Path, ...] = ()
    felix_config: Path = DEFAULT_FELIX_CONFIG
    bgp_state_dir: Path | None = None
    bgp_port: int | None = None
    felix_port: int | None = None
    max_log_bytes: int = DEFAULT_MAX_LOG_BYTES
    command_timeout: float = 20.0
    etcd_endpoints: str | None = None
    etcd_timeout: float = 5.0
    datastore: bool = True


@dataclasses.dataclass
class Context:
    opts: DiagsOptions
    node: str
    agents: list[AgentProcess]
    connect: Connect | None

    def agent_env(self, agent: str, name: str) -> str | None:
        for a in self.agents:
            if a.name == agent and a.env.get(name):
                return a.env[name]
        return None


def run_command(
    bundle: Bundle, member: str | None, argv: Sequence[str], timeout: float
) -> str | None:
    """Run a read-only command; its stdout (stderr appended) becomes ``member``.

    Returns stdout, or None when the command could not run; a failure is recorded."""
    part = member or " ".join(argv)
    try:
        res = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except FileNotFoundError:
        bundle.error(part, f"{argv[0]}: not installed")
        return None
    except subprocess.TimeoutExpired:
        bundle.error(part, f"{' '.join(argv)}: no answer within {timeout:.0f}s")
        return None
    text = res.stdout
    if res.stderr.strip():
        text += f"\n# stderr of {' '.join(argv)}:\n{res.stderr}"
    if member is not None:
        bundle.add(member, f"# {' '.join(argv)} (exit {res.returncode})\n{text}")
    if res.returncode != 0:
        first = (res.stderr.strip() or res.stdout.strip() or "no output").splitlines()[0]
        bundle.error(part, f"{' '.join(argv)} exited {res.returncode}: {first}")
    return res.stdout


def _http_get(url: str, timeout: float = 3.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status), resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode(errors="replace")


def collect_versions(ctx: Context, bundle: Bundle) -> None:
    lines: list[str] = []

    def add(name: str, fn: Callable[[], str]) -> None:
        try:
            value = fn().strip() or "(no output)"
        except Exception as exc:
            bundle.error(f"versions.txt {name}", f"{type(exc).__name__}: {exc}")
            value = f"unavailable ({type(exc).__name__}: {' '.join(str(exc).split())})"
        lines.append(f"{name}: {' | '.join(value.splitlines())}")

    def cmd(*argv: str) -> Callable[[], str]:
        def fn() -> str:
            res = subprocess.run(
                list(argv),
                capture_output=True,
                text=True,
                timeout=ctx.opts.command_timeout,
                stdin=subprocess.DEVNULL,
                check=False,
            )
            if res.returncode != 0:
                raise RuntimeError(f"{' '.join(argv)} exited {res.returncode}: {res.stderr}")
            return (res.stdout or res.stderr).splitlines()[0] if (res.stdout or res.stderr) else ""

        return fn

    add("tabby", lambda: importlib.metadata.version(PACKAGE))
    add("python", lambda: f"{sys.version} ({sys.executable})")
    add("kernel", lambda: " ".join(platform.uname()))
    add("iptables", cmd("iptables", "--version"))
    add("ip6tables", cmd("ip6tables", "--version"))
    add("ipset", cmd("ipset", "--version"))
    add("iproute2", cmd("ip", "-V"))
    add("exabgp", lambda: importlib.metadata.version("exabgp"))
    add("etcd (binary)", cmd("etcd", "--version"))
    add("etcd (server)", lambda: _etcd_server_version(ctx))
    bundle.add("versions.txt", "\n".join(lines) + "\n")


def _etcd_server_version(ctx: Context) -> str:
    cfg = EtcdConfig.from_env()
    raw = ctx.opts.etcd_endpoints or ctx.agent_env("tabby-felix", "FELIX_ETCDENDPOINTS")
    endpoints = [e.strip() for e in raw.split(",")] if raw else list(cfg.endpoints)
    url = endpoints[0] if "://" in endpoints[0] else f"http://{endpoints[0]}"
    context: ssl.SSLContext | None = None
    if url.startswith("https://"):
        context = ssl.create_default_context(cafile=cfg.ca_cert_file)
        if cfg.cert_file:
            context.load_cert_chain(cfg.cert_file, cfg.key_file)
    with urllib.request.urlopen(
        url.rstrip("/") + "/version", timeout=ctx.opts.etcd_timeout, context=context
    ) as resp:
        return f"{resp.read().decode(errors='replace')} ({url})"


def collect_config(ctx: Context, bundle: Bundle) -> None:
    path = ctx.opts.felix_config
    if path.exists():
        bundle.add(f"config/{safe_name(path.name)}", path.read_bytes())
    else:
        bundle.note(f"felix config file {path} does not exist (defaults, datastore and env apply)")
    lines = []
    for a in ctx.agents:
        lines.append(f"{a.name} pid {a.pid}")
        lines.append(f"  argv: {' '.join(a.argv)}")
        lines.append(f"  stdout: {a.stdout or '-'}")
        for k, v in a.env.items():
            lines.append(f"  env {k}={v}")
    if not ctx.agents:
        lines.append("no tabby-felix or tabby-bgp process runs in this network namespace")
        bundle.note("no agent process found in this network namespace")
    env = filter_env(b"\0".join(f"{k}={v}".encode() for k, v in os.environ.items()))
    lines.append("")
    lines.append("environment of tabbyctl diags itself:")
    lines += [f"  env {k}={v}" for k, v in env.items()] or ["  (no FELIX_/TABBY_/ETCD_ variables)"]
    bundle.add("config/agents.txt", "\n".join(lines) + "\n")


def collect_logs(ctx: Context, bundle: Bundle) -> None:
    limit = ctx.opts.max_log_bytes
    if Path("/run/systemd/system").is_dir() and shutil.which("journalctl"):
        for unit in AGENTS:
            argv = ["journalctl", "-u", unit, "--no-pager", "-o", "short-iso"]
            if ctx.opts.since:
                argv += ["--since", ctx.opts.since]
            out = run_command(bundle, None, argv, ctx.opts.command_timeout)
            if out is not None:
                bundle.add(f"logs/{unit}.journal.txt", tail(out.encode(), limit))
    else:
        bundle.note("no systemd: journal not read (log files are collected instead)")
    seen: set[Path] = set()

    def add_file(path: Path, prefix: str = "") -> None:
        real = path.resolve()
        if real in seen:
            return
        seen.add(real)
        try:
            with open(real, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(0, size - limit))
                data = f.read()
        except OSError as exc:
            bundle.error(f"logs/{path}", str(exc))
            return
        bundle.add(f"logs/{prefix}{safe_name(path.name)}", tail(data, limit))

    for a in ctx.agents:
        if a.stdout is not None:
            add_file(a.stdout, f"{a.name}-{a.pid}-")
    for path in ctx.opts.log_files:
        if path.is_file():
            add_file(path)
        else:
            bundle.error(f"logs/{path}", "no such file")
    for d in ctx.opts.log_dirs:
        if not d.is_dir():
            bundle.error(f"logs/{d}", "no such directory")
            continue
        files = sorted(p for p in d.rglob("*") if p.is_file())
        if len(files) > MAX_LOG_DIR_FILES:
            bundle.note(f"{d}: {len(files)} files, only the first {MAX_LOG_DIR_FILES} kept")
        for p in files[:MAX_LOG_DIR_FILES]:
            parts = [safe_name(d.name), *map(safe_name, p.relative_to(d).parts[:-1])]
            add_file(p, "/".join(parts) + "/")


def collect_kernel(ctx: Context, bundle: Bundle) -> None:
    t = ctx.opts.command_timeout
    summary = []
    any_saved = False
    for v, tool in ((4, "iptables"), (6, "ip6tables")):
        for backend in ("nft", "legacy"):
            exe = f"{tool}-{backend}-save"
            if shutil.which(exe) is None:
                summary.append(f"{exe}: not installed")
                continue
            scratch = Bundle(bundle.top)
            out = run_command(scratch, None, [exe, "-c"], t)
            for e in scratch.errors:
                bundle.error(f"kernel/{exe}.txt", e)
            if out is None:
                continue
            rules = has_rules(out)
            summary.append(f"{exe}: {'has rules' if rules else 'no rules'} (IPv{v})")
            if rules:
                bundle.add(f"kernel/{exe}.txt", f"# {exe} -c\n{out}")
                any_saved = True
    if not any_saved:
        # No backend-specific tool, or no rules anywhere: the plain dump, whatever it holds.
        run_command(bundle, "kernel/iptables-save.txt", ["iptables-save", "-c"], t)
        run_command(bundle, "kernel/ip6tables-save.txt", ["ip6tables-save", "-c"], t)
    bundle.add("kernel/iptables-backends.txt", "\n".join(summary) + "\n")
    run_command(bundle, "kernel/ipset-list.txt", ["ipset", "list"], t)
    run_command(bundle, "kernel/ip-route.txt", ["ip", "-d", "route", "show", "table", "all"], t)
    run_command(
        bundle, "kernel/ip6-route.txt", ["ip", "-6", "-d", "route", "show", "table", "all"], t
    )
    run_command(bundle, "kernel/ip-link.txt", ["ip", "-d", "link"], t)
    run_command(bundle, "kernel/ip-addr.txt", ["ip", "addr"], t)
    run_command(bundle, "kernel/ip-rule.txt", ["ip", "rule"], t)
    sysctls = []
    for name in ("net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"):
        try:
            sysctls.append(f"{name.replace('/', '.')} = {Path('/proc/sys', name).read_text()}")
        except OSError as exc:
            sysctls.append(f"{name.replace('/', '.')}: {exc}\n")
    bundle.add("kernel/sysctl.txt", "".join(sysctls))


def collect_bgp(ctx: Context, bundle: Bundle) -> None:
    port = (
        ctx.opts.bgp_port
        or int(ctx.agent_env("tabby-bgp", "TABBY_BGP_HEALTHPORT") or 0)
        or int(os.environ.get("TABBY_BGP_HEALTHPORT", "0") or 0)
        or DEFAULT_BGP_PORT
    )
    try:
        code, body = _http_get(f"http://127.0.0.1:{port}/status")
        with contextlib.suppress(ValueError):
            body = json.dumps(json.loads(body), indent=2) + "\n"
        bundle.add("bgp/status.json", body)
        if code != 200:
            bundle.error("bgp/status.json", f"HTTP {code} from 127.0.0.1:{port}/status")
    except (urllib.error.URLError, OSError) as exc:
        bundle.error("bgp/status.json", f"tabby-bgp not answering on 127.0.0.1:{port}: {exc}")
    env_dir = ctx.agent_env("tabby-bgp", "TABBY_BGP_STATE_DIR")
    state = ctx.opts.bgp_state_dir or Path(env_dir or f"/run/tabby-bgp/{ctx.node}")
    if not state.is_dir():
        bundle.error("bgp/exabgp.log", f"ExaBGP state directory {state} does not exist")
        return
    bundle.add("bgp/state-dir.txt", f"{state}\n" + "".join(f"{p.name}\n" for p in state.iterdir()))
    for name in ("exabgp.log", "exabgp.conf", "exabgp.env", "exabgp.pid"):
        f = state / name
        if f.is_file():
            bundle.add(f"bgp/{name}", tail(f.read_bytes(), ctx.opts.max_log_bytes))
        elif name == "exabgp.log":
            bundle.error("bgp/exabgp.log", f"{f} does not exist")


def collect_felix(ctx: Context, bundle: Bundle) -> None:
    port = (
        ctx.opts.felix_port
        or int(ctx.agent_env("tabby-felix", "FELIX_HEALTHPORT") or 0)
        or DEFAULT_FELIX_PORT
    )
    host = ctx.agent_env("tabby-felix", "FELIX_HEALTHHOST") or "127.0.0.1"
    lines = []
    for path in ("/liveness", "/readiness"):
        try:
            code, body = _http_get(f"http://{host}:{port}{path}")
            lines.append(f"{path}: HTTP {code} {body.strip()}")
        except (urllib.error.URLError, OSError) as exc:
            lines.append(f"{path}: no answer ({exc})")
            bundle.error("felix/health.txt", f"tabby-felix not answering on {host}:{port}: {exc}")
            break
    bundle.add("felix/health.txt", "\n".join(lines) + "\n")


def _yaml_list(kind: str, resources: Sequence[Resource], revision: int) -> str:
    return output.render(kind, list(resources), "yaml", revision=revision)


def collect_datastore(ctx: Context, bundle: Bundle) -> None:
    if ctx.connect is None or not ctx.opts.datastore:
        bundle.note("datastore not read (--no-datastore)")
        return
    client = ctx.connect(ctx.opts.etcd_endpoints, ctx.opts.etcd_timeout)
    node = ctx.node

    def mine(r: Resource) -> bool:
        return getattr(r.spec, "node", None) == node

    wanted: list[tuple[kinds.KindInfo, Callable[[Resource], bool] | None]] = [
        (kinds.NODE, lambda r: r.name == node),
        (kinds.WORKLOAD_ENDPOINT, mine),
        (kinds.HOST_ENDPOINT, mine),
        (kinds.BGP_PEER, None),
        (kinds.BGP_CONFIGURATION, None),
        (kinds.IP_POOL, None),
        (kinds.FELIX_CONFIGURATION, None),
        (kinds.TIER, None),
        (kinds.GLOBAL_NETWORK_POLICY, None),
        (kinds.NETWORK_POLICY, None),
        (kinds.PROFILE, None),
        (kinds.GLOBAL_NETWORK_SET, None),
        (kinds.NETWORK_SET, None),
    ]
    for info, keep in wanted:
        member = f"datastore/{info.plural_lower}.yaml"
        try:
            found, revision = client.list_with_revision(info, all_namespaces=True)
        except kv.UnavailableError as exc:
            bundle.error("datastore", f"etcd unavailable, datastore objects skipped: {exc}")
            return
        except Exception as exc:
            bundle.error(member, f"{type(exc).__name__}: {exc}")
            continue
        chosen = [r for r in found if keep is None or keep(r)]
        bundle.add(member, _yaml_list(info.kind, chosen, revision))
        if info is kinds.NODE and not chosen:
            bundle.error(member, str(ResourceNotFound(info.kind, None, node)))
    try:
        kvs, revision = client.store.list(block_prefix())
    except Exception as exc:
        bundle.error("datastore/ipam-blocks.yaml", f"{type(exc).__name__}: {exc}")
        return
    blocks: list[dict[str, Any]] = []
    for item in kvs:
        try:
            value: Any = json.loads(item.value)
        except ValueError:
            value = item.value.decode(errors="replace")
        if isinstance(value, dict) and value.get("affinity") == f"host:{node}":
            blocks.append({"key": item.key, "modRevision": item.mod_revision, "value": value})
    doc = {"node": node, "revision": revision, "blocks": blocks}
    bundle.add("datastore/ipam-blocks.yaml", yaml.safe_dump(doc, sort_keys=False))


COLLECTORS: tuple[tuple[str, Callable[[Context, Bundle], None]], ...] = (
    ("versions", collect_versions),
    ("config", collect_config),
    ("logs", collect_logs),
    ("kernel", collect_kernel),
    ("bgp", collect_bgp),
    ("felix", collect_felix),
    ("datastore", collect_datastore),
)


def default_node(agents: Iterable[AgentProcess]) -> str:
    """$NODENAME, else the node name a running agent was given, else the hostname."""
    if os.environ.get("NODENAME"):
        return os.environ["NODENAME"]
    for a in agents:
        for var in ("NODENAME", "FELIX_FELIXHOSTNAME"):
            if a.env.get(var):
                return a.env[var]
        if "--node-name" in a.argv[:-1]:
            return a.argv[a.argv.index("--node-name") + 1]
    return socket.gethostname()


def collect(opts: DiagsOptions, connect: Connect | None) -> tuple[Bundle, str]:
    """Run every collector; returns the bundle and the summary header."""
    agents, problems = find_agents()
    node = opts.node or default_node(agents)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    bundle = Bundle(f"tabby-diags-{safe_name(node)}-{stamp}")
    for p in problems:
        bundle.error("config/agents.txt", p)
    ctx = Context(opts, node, agents, connect)
    timings = []
    for name, fn in COLLECTORS:
        t0 = time.monotonic()
        try:
            fn(ctx, bundle)
        except Exception as exc:
            bundle.error(name, f"{type(exc).__name__}: {exc}")
        timings.append(f"{name} {time.monotonic() - t0:.1f}s")
    header = "\n".join(
        [
            f"tabby diagnostics for node {node}",
            f"collected: {time.strftime('%Y-%m-%d %H:%M:%S %z')} on {socket.gethostname()}",
            f"command: {' '.join(sys.argv)}",
            f"network namespace inode: {_netns_inode('self')}",
            f"agents: {', '.join(f'{a.name}[{a.pid}]' for a in agents) or 'none found'}",
            f"collectors: {', '.join(timings)}",
        ]
    )
    return bundle, header


def write_archive(bundle: Bundle, header: str, path: Path) -> None:
    data = bundle.tar_gz(header)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise DiagsError(f"cannot write {path}: {exc}") from None


# --------------------------------------------------------------------------- command line


class _Decorator(Protocol):
    def __call__(self, fn: Callable[..., Any], /) -> Callable[..., Any]: ...


def command(*, connect: Connect, connection_options: _Decorator) -> click.Command:
    """The ``diags`` command; ``ctl.main`` passes its etcd connection and options."""

    @click.command()
    @click.option(
        "-o",
        "--output",
        "output_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Archive to write [default: ./tabby-diags-<node>-<time>.tar.gz].",
    )
    @click.option(
        "--node",
        default=None,
        help="Node name [default: $NODENAME, else the name a running agent was given, "
        "else the hostname].",
    )
    @click.option(
        "--since",
        default=None,
        metavar="TIME",
        help="Journal entries since TIME (journalctl --since syntax, e.g. '-1h' or "
        "'2024-05-01 10:00'); log files are always cut to their last --max-log-bytes.",
    )
    @click.option(
        "--log-dir",
        "log_dirs",
        multiple=True,
        type=click.Path(path_type=Path),
        help="Also collect every file under DIR (e.g. the lab's /run/tabby-lab/<name>/logs). "
        "Repeatable.",
    )
    @click.option(
        "--log-file",
        "log_files",
        multiple=True,
        type=click.Path(path_type=Path),
        help="Also collect this log file. Repeatable.",
    )
    @click.option(
        "--felix-config",
        type=click.Path(dir_okay=False, path_type=Path),
        default=DEFAULT_FELIX_CONFIG,
        show_default=True,
        help="tabby-felix's config file.",
    )
    @click.option(
        "--bgp-state-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="tabby-bgp's state dir (exabgp.log, exabgp.conf) [default: the running agent's "
        "TABBY_BGP_STATE_DIR, else /run/tabby-bgp/<node>].",
    )
    @click.option(
        "--bgp-port",
        type=int,
        default=None,
        help="tabby-bgp's health port [default: the agent's TABBY_BGP_HEALTHPORT, else 9098].",
    )
    @click.option(
        "--felix-port",
        type=int,
        default=None,
        help="tabby-felix's health port [default: the agent's FELIX_HEALTHPORT, else 9099].",
    )
    @click.option(
        "--max-log-bytes",
        type=click.IntRange(min=1024),
        default=DEFAULT_MAX_LOG_BYTES,
        show_default=True,
        help="Keep at most the last N bytes of each log.",
    )
    @click.option(
        "--no-datastore", is_flag=True, help="Do not read the datastore (etcd is down or far)."
    )
    @connection_options
    def diags(
        *,
        output_path: Path | None,
        node: str | None,
        since: str | None,
        log_dirs: tuple[Path, ...],
        log_files: tuple[Path, ...],
        felix_config: Path,
        bgp_state_dir: Path | None,
        bgp_port: int | None,
        felix_port: int | None,
        max_log_bytes: int,
        no_datastore: bool,
        etcd_endpoints: str | None,
        timeout: float,
    ) -> None:
        """Collect this node's diagnostics into one .tar.gz (read-only).

        Run it where the agents run (the node's network namespace; in the lab:
        `tabby-lab exec node1 -- tabbyctl diags`). Versions, config sources and the agents'
        FELIX_*/TABBY_* environment, agent and ExaBGP logs, iptables/ip6tables (each backend
        that has rules), ipsets, routes, links, addresses, tabby-bgp's status and this node's
        datastore objects (as YAML). A part that cannot be collected is listed in errors.txt;
        the others are still collected.
        """
        opts = DiagsOptions(
            node=node,
            since=since,
            log_dirs=log_dirs,
            log_files=log_files,
            felix_config=felix_config,
            bgp_state_dir=bgp_state_dir,
            bgp_port=bgp_port,
            felix_port=felix_port,
            max_log_bytes=max_log_bytes,
            etcd_endpoints=etcd_endpoints,
            etcd_timeout=timeout,
            datastore=not no_datastore,
        )
        bundle, header = collect(opts, connect)
        path = output_path or Path(f"{bundle.top}.tar.gz")
        try:
            write_archive(bundle, header, path)
        except DiagsError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(
            f"wrote {path}: {len(bundle.members) + 2} files, {len(bundle.errors)} collector "
            f"error(s){' (see errors.txt)' if bundle.errors else ''}"
        )

    return diags
