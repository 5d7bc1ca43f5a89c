"""``tabby-bgp``: the BGP agent's command line.

Run it inside the node's network namespace (a systemd service on a host, ``ip netns exec NODE``
in the lab), next to tabby-felix. It needs the etcd connection and the node name; everything
else (AS number, mesh, peers, pools) comes from the datastore, except BGP passwords: those
are files under ``--secrets-dir`` (see ``bgp.secrets``). ``--route-reflector`` runs it as
a dedicated route reflector host (no workloads, no felix).
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path

import click

from bgp.agent import BgpAgent, BgpSettings
from datastore.etcd import EtcdConfig
from datastore.logsetup import setup_logging
from datastore.registration import start_up_registration


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--node-name", default=None, help="This node's name (default: $NODENAME, else the hostname)."
)
@click.option(
    "--etcd-endpoints",
    default=None,
    help="Comma-separated etcd URLs (default: $ETCD_ENDPOINTS or http://127.0.0.1:2379).",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="ExaBGP config, log and API socket (default: /run/tabby-bgp/<node>).",
)
@click.option(
    "--health-port",
    type=int,
    default=None,
    help="Port of /status, /liveness and /readiness on 127.0.0.1 (default 9098).",
)
@click.option(
    "--secrets-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="BGP passwords: secretKeyRef {name, key} is read from DIR/name/key "
    "(default: $TABBY_SECRETS_DIR, else /etc/tabby/secrets).",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    envvar="TABBY_BGP_METRICSPORT",
    default=0,
    help="Serve Prometheus metrics at /metrics on this port (conventionally 9092; "
    "$TABBY_BGP_METRICSPORT; default 0: off).",
)
@click.option(
    "--metrics-host",
    envvar="TABBY_BGP_METRICSHOST",
    default="127.0.0.1",
    show_default=True,
    help="Address of the metrics endpoint ($TABBY_BGP_METRICSHOST; 0.0.0.0: all).",
)
@click.option("--log-level", default=None, help="Debug, Info, Warning or Error (default Info).")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"], case_sensitive=False),
    envvar="TABBY_BGP_LOGFORMAT",
    default="text",
    show_default=True,
    help="Log lines on stderr: text, or one JSON object per line ($TABBY_BGP_LOGFORMAT).",
)
@click.option(
    "--route-reflector",
    is_flag=True,
    help="Run as a dedicated route reflector (the Node needs routeReflectorClusterID).",
)
def main(
    node_name: str | None,
    etcd_endpoints: str | None,
    state_dir: Path | None,
    health_port: int | None,
    secrets_dir: Path | None,
    metrics_port: int,
    metrics_host: str,
    log_level: str | None,
    log_format: str,
    route_reflector: bool,
) -> None:
    """Advertise this node's address blocks over BGP and program the routes it learns."""
    env = os.environ
    node = node_name or env.get("NODENAME") or socket.gethostname()
    endpoints = etcd_endpoints or env.get("ETCD_ENDPOINTS") or "http://127.0.0.1:2379"
    setup_logging(
        log_level or env.get("TABBY_BGP_LOGSEVERITYSCREEN", "Info"),
        log_format.lower(),
        "tabby-bgp",
    )
    settings = BgpSettings(
        node_name=node,
        etcd_endpoints=tuple(e.strip() for e in endpoints.split(",") if e.strip()),
        etcd_ca_file=env.get("ETCD_CA_CERT_FILE") or None,
        etcd_cert_file=env.get("ETCD_CERT_FILE") or None,
        etcd_key_file=env.get("ETCD_KEY_FILE") or None,
        state_dir=state_dir or Path(env.get("TABBY_BGP_STATE_DIR", f"/run/tabby-bgp/{node}")),
        health_port=health_port or int(env.get("TABBY_BGP_HEALTHPORT", "9098")),
        route_reflector=route_reflector,
        secrets_dir=secrets_dir,
        metrics_host=metrics_host,
        metrics_port=metrics_port,
    )
    etcd = EtcdConfig(
        endpoints=settings.etcd_endpoints,
        ca_cert_file=settings.etcd_ca_file,
        cert_file=settings.etcd_cert_file,
        key_file=settings.etcd_key_file,
    )
    if (error := start_up_registration(node, etcd, env)) is not None:  # TABBY_REGISTER_NODE
        click.echo(f"tabby-bgp: {error}", err=True)
        sys.exit(2)
    sys.exit(asyncio.run(BgpAgent(settings).run()))


if __name__ == "__main__":
    main()
