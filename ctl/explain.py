"""``tabbyctl explain`` and ``tabbyctl trace``: felix's policy decisions, shown to people.

Role: load every felix-relevant key from etcd in one consistent snapshot (the prefixes of
``felix.inputs.felix_prefixes()``, all read at the revision of the first list), hand them to
``felix.explain`` (which runs felix's own ``InputState`` + ``Calculator`` and the reference
engine) and print the result as text or JSON.
  * ``explain endpoint NAME`` / ``explain hostendpoint NAME``: per direction, the tiers,
    policies (with rules) and profiles that apply, in evaluation order; ``--counters`` adds the
    packet/byte counters of each rule read with ``iptables-save -c`` / ``ip6tables-save -c``
    in the *current* network namespace (run it on the endpoint's node, e.g.
    ``tabby-lab exec node1 -- tabbyctl explain endpoint ...``).
  * ``trace``: the verdict for one flow, the step that decided it and every step's trace.
Inputs: arguments, etcd (``--etcd-endpoints`` / ``ETCD_ENDPOINTS``), iptables (read only).
Outputs: text or JSON on stdout. Exit status: ``explain`` 0, or 1 on an error; ``trace`` 0 when
the flow is allowed, 1 when it is denied or on an error (errors print ``error: ...`` on stderr).
Invariants: read-only: nothing is written to etcd or the kernel.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click

from datastore.client import ResourceClient
from datastore.syncer import Update
from felix import explain as fx
from felix.inputs import felix_prefixes
from kernel.iptables_backend import (
    IptablesSaveError,
    SubprocessIptablesBackend,
    detect_backend,
)

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])
Decorator = Callable[[F], F]
COUNTER_TABLES = ("filter", "mangle", "raw")


def load_updates(client: ResourceClient) -> list[Update]:
    """Every key felix reads, as syncer updates, from one etcd revision."""
    updates: list[Update] = []
    revision: int | None = None
    for prefix in felix_prefixes():
        kvs, at = client.store.list(prefix, revision=revision)
        revision = revision or at
        updates.extend(Update(kv.key, kv.value, kv.mod_revision) for kv in kvs)
    log.debug("explain.loaded keys=%d revision=%s", len(updates), revision)
    return updates


def read_counters() -> fx.CounterTable:
    """Counters of this network namespace's iptables (filter, mangle, raw; IPv4 and IPv6)."""
    mode = detect_backend(None)
    texts: list[str] = []
    for version in (4, 6):
        backend = SubprocessIptablesBackend(mode, 4 if version == 4 else 6, None, timeout=10.0)
        for table in COUNTER_TABLES:
            try:
                texts.append(backend.save(table, counters=True))
            except IptablesSaveError as exc:
                if version == 4 and table == "filter":
                    raise
                log.warning(
                    "explain.counters_unreadable version=%d table=%s: %s", version, table, exc
                )
    return fx.parse_counters(texts)


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))


def commands(
    *,
    connect: Callable[[str | None, float], ResourceClient],
    guard: Decorator[Any],
    connection_options: Decorator[Any],
    fail: Callable[[str], NoReturn],
) -> list[click.Command]:
    """The ``explain`` group and the ``trace`` command (``ctl.main`` passes its own connection
    and error handling)."""

    def cluster(etcd_endpoints: str | None, timeout: float) -> fx.Cluster:
        return fx.Cluster(load_updates(connect(etcd_endpoints, timeout)))

    def show(calc_cluster: fx.Cluster, ep_key: str, node: str, fmt: str, counters: bool) -> None:
        table = None
        if counters:
            try:
                table = read_counters()
            except IptablesSaveError as exc:
                fail(f"--counters: {' '.join(str(exc).split())}")
        try:
            exp = fx.explain_endpoint(calc_cluster.calc(node), ep_key, table)
        except fx.ExplainError as exc:
            fail(str(exc))
        if (
            table is not None
            and not any(
                r.counter is not None
                for s in exp.sections
                for t in s.tiers
                for p in t.policies
                for r in p.rules
            )
            and any(p.rules for s in exp.sections for t in s.tiers for p in t.policies)
        ):
            click.echo(
                f"warning: none of this endpoint's policy chains is in this network namespace's"
                f" iptables; run tabbyctl on node {node} (tabby-lab exec {node} -- tabbyctl ...)",
                err=True,
            )
        if fmt == "json":
            _echo_json(fx.explanation_to_json(exp))
        else:
            click.echo(fx.render_explanation(exp), nl=False)

    output_option = click.option(
        "-o",
        "--output",
        "fmt",
        type=click.Choice(["text", "json"]),
        default="text",
        show_default=True,
        help="Output format.",
    )
    counters_option = click.option(
        "--counters",
        is_flag=True,
        help="Show each rule's packet/byte counters from iptables-save -c and ip6tables-save -c"
        " (IPv4 and IPv6 summed), read in the current network namespace: run this on the"
        " endpoint's node. Only a connection's first packet meets policy, and a policy's"
        " chain is shared by the node's endpoints that use it (its counters are their sum).",
    )
    node_option = click.option(
        "--node",
        metavar="NODE",
        help="Only consider endpoints of NODE (default: any; the endpoint's own node computes"
        " its policy).",
    )

    @click.group()
    def explain() -> None:
        """Show which tiers, policies and profiles felix applies to an endpoint, in order.

        The result is felix's own calculation (the same code as tabby-felix) over the current
        contents of etcd, for the endpoint's node.
        """

    @explain.command("endpoint")
    @click.argument("name")
    @click.option(
        "-n",
        "--namespace",
        metavar="NS",
        default="default",
        show_default=True,
        help="Namespace of the WorkloadEndpoint.",
    )
    @node_option
    @output_option
    @counters_option
    @connection_options
    @guard
    def endpoint(
        *,
        name: str,
        namespace: str,
        node: str | None,
        fmt: str,
        counters: bool,
        etcd_endpoints: str | None,
        timeout: float,
    ) -> None:
        """Policy of WorkloadEndpoint NAME: its full name (node-k8s-pod-eth0) or its pod name.

        Per direction (ingress, egress): the tiers in order, each with its policies in order
        and their rules, what happens at the end of a tier, then the profiles.
        """
        c = cluster(etcd_endpoints, timeout)
        try:
            ep = fx.find_workload(c.any_calc, name, namespace, node)
        except fx.ExplainError as exc:
            fail(str(exc))
        show(c, ep.key, ep.node, fmt, counters)

    @explain.command("hostendpoint")
    @click.argument("name")
    @node_option
    @output_option
    @counters_option
    @connection_options
    @guard
    def hostendpoint(
        *,
        name: str,
        node: str | None,
        fmt: str,
        counters: bool,
        etcd_endpoints: str | None,
        timeout: float,
    ) -> None:
        """Policy of HostEndpoint NAME.

        Sections: ingress and egress (normal policy, then profiles), forward ingress/egress
        (applyOnForward policies), preDNAT ingress, untracked ingress/egress (doNotTrack).
        """
        c = cluster(etcd_endpoints, timeout)
        try:
            ep = fx.find_host_endpoint(c.any_calc, name, node)
        except fx.ExplainError as exc:
            fail(str(exc))
        show(c, ep.key, ep.node, fmt, counters)

    @click.command("trace")
    @click.option(
        "--from",
        "source",
        required=True,
        metavar="END",
        help="Source: [NS/]NAME of a WorkloadEndpoint (full or pod name), hep:NAME, or an IP"
        " address (its endpoint is used when one owns it).",
    )
    @click.option(
        "--to", "destination", required=True, metavar="END", help="Destination, as --from."
    )
    @click.option(
        "--proto",
        "protocol",
        required=True,
        metavar="PROTO",
        help="tcp, udp, sctp, icmp (ICMPv6 for IPv6 addresses), icmpv6, or a number.",
    )
    @click.option("--port", type=click.IntRange(0, 65535), help="Destination port (TCP/UDP/SCTP).")
    @click.option(
        "--sport",
        type=click.IntRange(0, 65535),
        help=f"Source port (TCP/UDP/SCTP) [default: {fx.DEFAULT_SPORT}].",
    )
    @click.option(
        "--icmp-type",
        type=click.IntRange(0, 255),
        help="ICMP type [default: echo request, 8 or 128 for ICMPv6].",
    )
    @click.option("--icmp-code", type=click.IntRange(0, 255), help="ICMP code [default: 0].")
    @click.option(
        "-n",
        "--namespace",
        metavar="NS",
        default="default",
        show_default=True,
        help="Namespace of ends given without one.",
    )
    @output_option
    @connection_options
    @guard
    def trace(
        *,
        source: str,
        destination: str,
        protocol: str,
        port: int | None,
        sport: int | None,
        icmp_type: int | None,
        icmp_code: int | None,
        namespace: str,
        fmt: str,
        etcd_endpoints: str | None,
        timeout: float,
    ) -> None:
        """Would felix allow this flow? The verdict, what decided it, and every step.

        The first packet of the flow is evaluated as felix's rules evaluate it: the egress
        policy of the source endpoint (on its node), then the ingress policy of the destination
        endpoint (on its node), each through its tiers in order and then its profiles, with
        felix's inputs (effective labels, namespace-scoped selectors, network sets, named
        ports). Host endpoints also go through their untracked and preDNAT stages. An end
        that is no endpoint is not policed.

        Exit status: 0 when the flow is allowed, 1 when it is denied or on an error (errors
        print "error: ..." on stderr).
        """
        spec = fx.FlowSpec(
            source, destination, protocol, port, sport, icmp_type, icmp_code, namespace
        )
        try:
            result = fx.trace(cluster(etcd_endpoints, timeout), spec)
        except fx.ExplainError as exc:
            fail(str(exc))
        if fmt == "json":
            _echo_json(fx.trace_to_json(result))
        else:
            click.echo(fx.render_trace(result), nl=False)
        if result.action != "allow":
            sys.exit(1)

    return [explain, trace]
