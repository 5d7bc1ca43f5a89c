"""ExaBGP 5.0 configuration text and environment for this node's BGP sessions.

Role: pure rendering. ``render_config`` turns (router id, local address, listen port, peers,
API process command) into the text of an ExaBGP configuration file; ``render_env`` gives the
environment ExaBGP must run with. The agent writes the file atomically and restarts/reloads
ExaBGP when the text changes.

Inputs: ``PeerSpec`` values (from ``bgp.peers``), this node's IPv4 address, the API process argv.
Outputs: configuration text (deterministic: same inputs, same bytes); an environment dict.

Syntax (checked with ``exabgp validate FILE`` and by running ExaBGP 5.0.15 sessions against
ExaBGP and BIRD 2.0.12 peers in namespaces)::

    process tabby-api {
        run /abs/path/program arg ...;      # argv words; absolute program path, executable
        encoder json;
    }

    neighbor 198.51.100.2 {
        description "mesh:node-b";
        router-id 198.51.100.1;
        local-address 198.51.100.1;
        local-as 64512;
        peer-as 64512;
        hold-time 90;                        # 0 or 3..65535
        passive true;                        # passive side: wait for the peer ...
        listen 179;                          # ... on local-address:listen
        connect 1179;                        # active side: the peer's port
        md5-password "c2VjcmV0";             # base64 of the key ...
        md5-base64 true;                     # ... so no character of a secret can break parsing
        manual-eor true;                     # End-of-RIB only when the API sends it
        capability {
            graceful-restart 120;
        }
        family {
            ipv4 unicast;
        }
        api {
            processes [ tabby-api ];
            neighbor-changes;                # state connected/up/down events
            receive {
                parsed;
                update;
                notification;
                open;                        # the peer's router id, for best-path tie-breaks
            }
        }
    }

Environment names (``exabgp env -e`` lists them; ``exabgp.a.b`` and ``exabgp_a_b`` are both
accepted): ``exabgp_daemon_drop`` (false: stay root, else helpers run as ``nobody``),
``exabgp_daemon_daemonize`` (false: stay a supervised child), ``exabgp_api_terminate``
(true: exit when the API process dies, instead of leaving sessions half-open),
``exabgp_api_ack`` (true: every command is answered ``done``/``error``), ``exabgp_api_encoder``
(json), ``exabgp_api_respawn`` (true, the default; see below),
``exabgp_api_cli`` (false: no named-pipe control channel), ``exabgp_log_destination``
(``stdout``, ``stderr``, ``syslog``, ``host:NAME`` or ``file:PATH``), ``exabgp_log_level``,
``exabgp_log_statistics`` (false: ExaBGP otherwise logs its message counters after every
message it reads, ~24 lines per session coming up; 4,700 lines and ~4 % of ExaBGP's CPU on the
200-client reflector of ``bench.bench_rr``; ``tabbyctl node status`` has the counts that matter).

Measured with 5.0.15 (API process killed with SIGKILL, sessions Established):
- ``api_terminate=true`` + ``api_respawn=true``: ExaBGP logs "lost the helper process for this
  peer - stopping" and exits (rc 1, after an internal KeyError during shutdown) within ~1 s.
- ``api_terminate=true`` + ``api_respawn=false``: ExaBGP keeps running and the sessions stay up
  without any API process until the next event it must write, then crashes (KeyError, rc 1).
  So ``respawn`` must stay true for ``terminate`` to mean "exit when the API process dies".

Invariants:
- Every peer gets exactly one ``neighbor`` block; peers are rendered sorted by address.
- Every string that reaches the file is checked or encoded: ``description`` keeps only
  ``[A-Za-z0-9_.:/@=+-]`` (others become ``_``), passwords are base64, argv words must match a
  conservative pattern (``ExabgpConfigError`` otherwise). Nothing a resource says can inject
  configuration.
- ExaBGP re-sends its Adj-RIB-Out to a peer that reconnects (measured: routes announced before a
  session flap arrive again after it); with ``manual-eor`` the End-of-RIB is still ours to send.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from ipaddress import IPv4Address

from bgp.model import PeerSpec

__all__ = [
    "API_PROCESS_NAME",
    "ExabgpConfigError",
    "render_config",
    "render_env",
]

API_PROCESS_NAME = "tabby-api"
_ARG = re.compile(r"^[A-Za-z0-9_./:=@+%,-]+$")
_DESC_BAD = re.compile(r"[^A-Za-z0-9_.:/@=+-]")
_MAX_HOLD = 65535
_MIN_HOLD = 3


class ExabgpConfigError(ValueError):
    """A value that cannot be rendered into an ExaBGP configuration safely."""


def _check_argv(argv: Sequence[str]) -> str:
    if not argv:
        raise ExabgpConfigError("api process command is empty")
    if not argv[0].startswith("/"):
        raise ExabgpConfigError(f"api process program {argv[0]!r} must be an absolute path")
    for word in argv:
        if not _ARG.match(word):
            raise ExabgpConfigError(
                f"api process argument {word!r} has characters ExaBGP's parser would split on"
            )
    return " ".join(argv)


def _hold(peer: PeerSpec) -> int:
    hold = peer.hold_time
    if hold != 0 and not _MIN_HOLD <= hold <= _MAX_HOLD:
        raise ExabgpConfigError(f"peer {peer.name}: hold time {hold} must be 0 or 3..65535")
    return hold


def _neighbor(peer: PeerSpec, router_id: IPv4Address, local: IPv4Address, listen: int) -> str:
    lines = [
        f"neighbor {peer.address} {{",
        f'    description "{_DESC_BAD.sub("_", peer.name)[:200]}";',
        f"    router-id {router_id};",
        f"    local-address {local};",
        f"    local-as {peer.local_as};",
        f"    peer-as {peer.remote_as};",
        f"    hold-time {_hold(peer)};",
        # tabby keeps the Adj-RIB-In (bgp/rib.py); ExaBGP's own copy would store every
        # received route once more (memory, and a cache update per route on the receive path)
        "    adj-rib-in false;",
    ]
    if peer.passive:
        lines += ["    passive true;", f"    listen {listen};"]
    else:
        lines.append(f"    connect {peer.port};")
    if peer.md5_password:
        encoded = base64.b64encode(peer.md5_password.encode("utf-8")).decode("ascii")
        lines += [f'    md5-password "{encoded}";', "    md5-base64 true;"]
    lines += [
        "    manual-eor true;",
        "    capability {",
        # the raw UPDATE decoder (bgp/wire.py) reads AS numbers by the peer's OPEN alone
        "        asn4 enable;",
        f"        graceful-restart {peer.restart_time};",
        "    }",
        "    family {",
        "        ipv4 unicast;",
        "    }",
        "    api {",
        f"        processes [ {API_PROCESS_NAME} ];",
        "        neighbor-changes;",
        "        receive {",
        # UPDATEs reach tabby as their bytes (bgp/wire.py decodes them; bgp/exabgp_launch.py
        # keeps ExaBGP from decoding them too); the other messages as parsed JSON
        "            parsed;",
        "            packets;",
        "            update;",
        "            notification;",
        "            open;",
        "        }",
        "    }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def render_config(
    router_id: IPv4Address,
    local_address: IPv4Address,
    listen_port: int,
    peers: Sequence[PeerSpec],
    api_command: Sequence[str],
) -> str:
    """The ExaBGP configuration text (see the module doc for the exact syntax)."""
    if not 1 <= listen_port <= 65535:
        raise ExabgpConfigError(f"listen port {listen_port} must be 1..65535")
    seen: set[IPv4Address] = set()
    for p in peers:
        if p.address in seen:
            raise ExabgpConfigError(f"peer address {p.address} appears twice")
        seen.add(p.address)
    parts = [
        "# Generated by tabby-bgp. Do not edit: rewritten on every change.\n",
        f"process {API_PROCESS_NAME} {{\n"
        f"    run {_check_argv(api_command)};\n"
        "    encoder json;\n"
        "}\n",
    ]
    parts += [
        _neighbor(p, router_id, local_address, listen_port)
        for p in sorted(peers, key=lambda p: p.address)
    ]
    return "\n".join(parts)


def render_env(log_destination: str = "stdout", log_level: str = "INFO") -> dict[str, str]:
    """Environment variables for the ExaBGP child (merge over a minimal base environment)."""
    if not (
        log_destination in ("stdout", "stderr", "syslog")
        or log_destination.startswith(("file:", "host:"))
    ):
        raise ExabgpConfigError(
            f"log destination {log_destination!r}: expected stdout, stderr, syslog, "
            "file:PATH or host:NAME"
        )
    return {
        "exabgp_daemon_drop": "false",
        "exabgp_daemon_daemonize": "false",
        "exabgp_api_terminate": "true",
        "exabgp_api_ack": "true",
        "exabgp_api_encoder": "json",
        "exabgp_api_respawn": "true",
        "exabgp_api_cli": "false",
        "exabgp_log_destination": log_destination,
        "exabgp_log_level": log_level,
        "exabgp_log_statistics": "false",
    }
