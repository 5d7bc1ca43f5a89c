"""``tabbyctl node status``: this node's BGP sessions, read from the running tabby-bgp agent.

Role: like ``calicoctl node status`` (which asks BIRD), ask the local tabby-bgp for its status
document (``GET /status`` on its health port, 127.0.0.1:9098 by default) and print the role and
one row per session: peer, type (mesh / global / node, plus its route-reflection role:
``rr-client`` = we reflect to it, ``rr-peer`` = a fellow reflector (non-client), ``reflector`` =
it reflects to us), state, since, prefixes received, installed and announced (own blocks plus
reflected routes). The role line says ``mesh``, ``client`` or ``reflector`` (with the cluster ID,
and ``dedicated`` for ``tabby-bgp --route-reflector``). Exit code 1 when the agent does not answer.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from typing import Any

import click

from ctl.output import format_rows

TYPE_NAMES = {"mesh": "node-to-node mesh", "global": "global", "node": "node specific"}


def _role(st: dict[str, Any]) -> str:
    role = str(st.get("role"))
    if role == "reflector":
        role += f" (cluster {st.get('clusterID')}"
        role += ", dedicated)" if st.get("dedicatedReflector") else ")"
    return role


def _peer_type(p: dict[str, Any]) -> str:
    name = TYPE_NAMES.get(str(p.get("type")), str(p.get("type")))
    return f"{name}, {p['rrRole']}" if p.get("rrRole") else name


def fetch_status(host: str, port: int, timeout: float = 3.0) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{host}:{port}/status", timeout=timeout) as resp:
        data: dict[str, Any] = json.loads(resp.read())
        return data


def render_status(st: dict[str, Any]) -> str:
    lines = [
        f"tabby-bgp is running on node {st.get('node')} ({st.get('address') or 'no address'}), "
        f"role: {_role(st)}, datastore {'in sync' if st.get('inSync') else 'NOT in sync'}.",
        f"ExaBGP: {'running' if st.get('exabgp', {}).get('running') else 'NOT running'} "
        f"(restarts {st.get('exabgp', {}).get('restarts', 0)})",
    ]
    ipip = st.get("ipip") or {}
    if ipip.get("needed"):
        if not ipip.get("available", True):
            lines.append(
                f"IP-in-IP: needed, but this kernel has no ipip: routes via {ipip.get('device')} "
                "stay pending"
            )
        else:
            lines.append(
                f"IP-in-IP: {ipip.get('device')}, address {ipip.get('address') or 'not yet'}, "
                f"MTU {ipip.get('mtu') or 'not set yet'}"
            )
    lines += [
        "",
        "IPv4 BGP status",
    ]
    rows = [["PEER ADDRESS", "PEER TYPE", "STATE", "SINCE", "RECEIVED", "INSTALLED", "ANNOUNCED"]]
    for p in st.get("peers", []):
        since = time.strftime("%H:%M:%S", time.localtime(float(p.get("since", 0))))
        rows.append(
            [
                str(p.get("peer")),
                _peer_type(p),
                "up" if p.get("state") == "established" else str(p.get("state")),
                since,
                str(p.get("prefixesReceived", 0)),
                str(p.get("prefixesInstalled", 0)),
                str(int(p.get("prefixesAnnounced", 0)) + int(p.get("prefixesReflected", 0))),
            ]
        )
    if len(rows) == 1:
        lines.append("No BGP peers configured.")
    else:
        lines.append(format_rows(rows).rstrip("\n"))
    return "\n".join(lines) + "\n"


@click.group()
def node() -> None:
    """This node: BGP status, registration."""


@node.command()
@click.option(
    "--port",
    type=int,
    default=None,
    help="tabby-bgp's health port (default: $TABBY_BGP_HEALTHPORT or 9098).",
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option(
    "-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True
)
def status(port: int | None, host: str, output: str) -> None:
    """BGP sessions of the tabby-bgp agent running on this node."""
    port = port or int(os.environ.get("TABBY_BGP_HEALTHPORT", "9098"))
    try:
        st = fetch_status(host, port)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise click.ClickException(
            f"tabby-bgp is not answering on {host}:{port} ({exc}); is it running on this node?"
        ) from None
    click.echo(json.dumps(st, indent=2) if output == "json" else render_status(st), nl=False)
