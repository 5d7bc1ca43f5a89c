"""``tabby-felix``: the node agent's command line.

Run it inside the node's network namespace (as a systemd service on a host, or under
``ip netns exec NODE`` in the lab). Configuration is layered as Calico's felix: defaults <
FelixConfiguration "default" < FelixConfiguration "node.<name>" < config file < FELIX_*
environment variables; command-line options override the bootstrap settings.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import click

from datastore.logsetup import setup_logging
from datastore.registration import start_up_registration
from felix.agent import FelixAgent, etcd_config
from felix.config import ConfigError, ConfigLoader


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--node-name", default=None, help="This node's name (default: $NODENAME or the hostname)."
)
@click.option(
    "--config-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("/etc/tabby/felix.cfg"),
    show_default=True,
    help="INI file with a [global] section of Calico felix parameters (optional).",
)
@click.option(
    "--etcd-endpoints",
    default=None,
    help="Comma-separated etcd URLs (default: $ETCD_ENDPOINTS or $FELIX_ETCDENDPOINTS).",
)
def main(node_name: str | None, config_file: Path, etcd_endpoints: str | None) -> None:
    """Program this node's routes and iptables/ipset policy from the datastore."""
    cli = {"node_name": node_name, "etcd_endpoints": etcd_endpoints}
    loader = ConfigLoader(config_file=config_file, environ=dict(os.environ), cli=cli)
    try:
        cfg, _ = loader.load()
    except ConfigError as exc:
        click.echo(f"tabby-felix: {exc}", err=True)
        sys.exit(2)
    setup_logging(cfg.log_severity_screen, cfg.log_format, "tabby-felix")
    if (error := start_up_registration(cfg.node_name, etcd_config(cfg), os.environ)) is not None:
        click.echo(f"tabby-felix: {error}", err=True)  # TABBY_REGISTER_NODE=true and it failed
        sys.exit(2)
    agent = FelixAgent(loader)
    code = asyncio.run(agent.run())
    sys.exit(code)


if __name__ == "__main__":
    main()
