"""``tabbyctl node register``: create or update this host's Node resource.

Role: like calico/node's start-up (and ``calicoctl node run --ip ... --ip-autodetection-method
...``): find this host's IPv4 address with its prefix length (``datastore.autodetect``, Calico's
``IP_AUTODETECTION_METHOD`` names) and write it as ``spec.bgp.ipv4Address`` and a
``CalicoNodeIP`` entry of ``spec.addresses`` (``datastore.registration``), keeping every other
field of an existing Node. ``command`` builds the click command; ``ctl.main`` adds it to the
``node`` group with its own connection options and error boundary, so it connects and reports
errors exactly as every other ``tabbyctl`` command (one ``error: ...`` line, exit status 1).
Inputs: options, ``$NODENAME``, ``$IP_AUTODETECTION_METHOD``, the interfaces and routes of the
network namespace it runs in (read-only). Outputs: the Node in etcd; one summary line.
Invariants: an address another Node has is refused (the error names that Node) and nothing is
written; the address is always stored with its prefix length.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import ParamSpec, Protocol, TypeVar

import click

from datastore.autodetect import choose_address
from datastore.client import ResourceClient
from datastore.registration import Registration, parse_labels, register_node
from datastore.schema import FrozenMap

__all__ = ["command"]

P = ParamSpec("P")
R = TypeVar("R")


class Decorator(Protocol):
    def __call__(self, fn: Callable[P, R], /) -> Callable[P, R]: ...


_METHOD_HELP = (
    "How to find this host's address (Calico's IP_AUTODETECTION_METHOD): first-found, "
    "interface=REGEX[,REGEX], skip-interface=REGEX[,REGEX], cidr=CIDR[,CIDR], can-reach=DEST. "
    "Default: $IP_AUTODETECTION_METHOD, else first-found."
)


def command(
    *,
    connect: Callable[[str | None, float], ResourceClient],
    guard: Decorator,
    connection_options: Decorator,
) -> click.Command:
    """The ``register`` click command; ``ctl.main`` passes its connection and error handling."""

    @click.command("register")
    @click.option(
        "--name",
        metavar="NAME",
        default=None,
        help="The Node's name (default: $NODENAME, else the hostname). Agents on this host "
        "must use the same name.",
    )
    @click.option(
        "--ip-autodetection-method", "method", metavar="METHOD", default=None, help=_METHOD_HELP
    )
    @click.option(
        "--ip",
        "ip_text",
        metavar="ADDR/LEN",
        default=None,
        help="Use this address instead of detecting one; a bare address takes its prefix "
        "length from the local interface that has it.",
    )
    @click.option(
        "--as-number",
        type=click.IntRange(0, 2**32 - 1),
        metavar="N",
        default=None,
        help="spec.bgp.asNumber (default: keep the Node's; none means the cluster's).",
    )
    @click.option(
        "--labels",
        metavar="K=V,...",
        default=None,
        help="Labels to set on the Node (merged with the labels it has).",
    )
    @connection_options
    @guard
    def register(
        *,
        name: str | None,
        method: str | None,
        ip_text: str | None,
        as_number: int | None,
        labels: str | None,
        etcd_endpoints: str | None,
        timeout: float,
    ) -> None:
        """Create or update this host's Node: address (with prefix length), AS, labels.

        The address is checked against every other Node first: one that another Node already
        has is refused, naming that Node, and nothing is written.
        """
        node_name = (name or os.environ.get("NODENAME") or socket.gethostname()).strip()
        method_text = method if method is not None else os.environ.get("IP_AUTODETECTION_METHOD")
        label_map = parse_labels(labels)
        found = choose_address(method_text, ip_text)
        client = connect(etcd_endpoints, timeout)
        result = register_node(
            client,
            Registration(
                name=node_name,
                address=found.address,
                as_number=as_number,
                labels=FrozenMap(label_map),
            ),
        )
        given = ip_text is not None and ip_text.strip().lower() not in ("", "autodetect")
        source = f"--ip {ip_text}" if given else str(found.method)
        where = f" on {found.interface}" if found.interface else ""
        click.echo(
            f"Node {node_name} {result.action}: ipv4Address {found.address}{where} ({source})"
        )

    return register
