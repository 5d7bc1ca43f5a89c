"""``tabbyctl``: the calicoctl-shaped command-line client of tabby's datastore.

Role: parse the command line (click), load and validate manifests (``ctl.manifests``), talk to
etcd through ``datastore.client.ResourceClient`` and print results (``ctl.output``).
Commands: ``apply``, ``create``, ``replace``, ``delete``, ``get``, ``validate``, ``version``,
``ipam show|check|release`` (``ctl.ipam``), ``node status`` (``ctl.node``),
``explain endpoint|hostendpoint`` and ``trace`` (``ctl.explain``; exit 1 also for a denied flow).
Inputs: arguments, manifest files/directories/stdin, the connection from ``--etcd-endpoints``
or calicoctl's ``ETCD_ENDPOINTS``/``ETCD_CA_CERT_FILE``/``ETCD_CERT_FILE``/``ETCD_KEY_FILE``.
Outputs: results on stdout; errors on stderr as one line each (``error: ...``), never a
traceback (unless ``--log-level debug``).

Invariants:
- Exit status 0 on success, 1 on any error (usage errors included).
- Manifest commands validate the WHOLE set before connecting: any invalid document means
  nothing is written, and every invalid document is reported (location, resource, fields).
- Writes happen in input order and stop at the first failure, reporting how many succeeded
  (calicoctl's "Partial success" message).
- Every etcd request has a short deadline (``--timeout``), so an unreachable etcd gives an
  error line within seconds.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, ParamSpec, TypeVar

import click

from ctl import diags, explain, ipam, manifests, output
from ctl.node import node as node_group
from ctl.register import command as node_register_command
from datastore import errors as ds_errors
from datastore import kv
from datastore.client import (
    ResourceClient,
    ResourceError,
    ResourceExists,
    ResourceNotFound,
)
from datastore.etcd import EtcdConfig, EtcdKVStore
from datastore.kinds import KindInfo, lookup_kind
from datastore.model import Resource

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_TIMEOUT = 5.0
PACKAGE = "tabby-net"


class CtlError(Exception):
    """A user-facing failure: printed as ``error: <message>`` and exit status 1."""


def _fail(message: str) -> NoReturn:
    raise CtlError(message)


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


# --- connection ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Connection:
    endpoints: str | None
    timeout: float


def _connection_options(fn: Callable[P, R]) -> Callable[P, R]:
    fn = click.option(
        "--timeout",
        type=click.FloatRange(min=0.1),
        metavar="SECONDS",
        default=DEFAULT_TIMEOUT,
        show_default=True,
        help="Seconds to wait for each etcd request.",
    )(fn)
    fn = click.option(
        "--etcd-endpoints",
        metavar="URLS",
        help="Comma-separated etcd endpoints (http[s]://host:port); "
        "default: $ETCD_ENDPOINTS, else http://127.0.0.1:2379. TLS files come from "
        "$ETCD_CA_CERT_FILE, $ETCD_CERT_FILE, $ETCD_KEY_FILE.",
    )(fn)
    return fn


def _client(etcd_endpoints: str | None, timeout: float) -> ResourceClient:
    config = EtcdConfig.from_env()
    if etcd_endpoints:
        endpoints = tuple(e.strip() for e in etcd_endpoints.split(",") if e.strip())
        if not endpoints:
            _fail("--etcd-endpoints: no endpoint given")
        config = dataclasses.replace(config, endpoints=endpoints)
    config = dataclasses.replace(config, timeout=timeout)
    log.debug("ctl.connect endpoints=%s timeout=%.1f", ",".join(config.endpoints), timeout)
    return ResourceClient(EtcdKVStore(config))


def _endpoints_hint(etcd_endpoints: str | None) -> str:
    if etcd_endpoints:
        return etcd_endpoints
    return ",".join(EtcdConfig.from_env().endpoints)


# --- error boundary -----------------------------------------------------------------------


def _guarded(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn every expected failure into ``error: ...`` on stderr and exit status 1."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except CtlError as exc:
            _die(str(exc))
        except manifests.ManifestError as exc:
            _die(str(exc))
        except kv.UnavailableError as exc:
            endpoints = kwargs.get("etcd_endpoints")
            hint = _endpoints_hint(endpoints if isinstance(endpoints, str) else None)
            _die(f"cannot reach etcd at {hint}: {_one_line(exc)}")
        except (kv.DatastoreError, ds_errors.DatastoreError) as exc:
            _die(_one_line(exc))

    return wrapper


def _die(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


# --- shared helpers -----------------------------------------------------------------------


def _kind(name: str) -> KindInfo:
    try:
        return lookup_kind(name)
    except ds_errors.UnknownKindError as exc:
        raise CtlError(str(exc)) from None


def _kinds_phrase(resources: Sequence[Resource]) -> str:
    kinds = {r.kind for r in resources}
    return f" '{next(iter(kinds))}'" if len(kinds) == 1 else ""


def _report_problems(result: manifests.LoadResult) -> NoReturn:
    n = len(result.problems)
    files = result.sources
    click.echo(
        f"error: {n} invalid document(s) in {files} source(s); nothing was written",
        err=True,
    )
    for problem in result.problems:
        for line in problem.lines():
            click.echo(line, err=True)
    sys.exit(1)


def _load(filenames: Sequence[str], namespace: str | None, recursive: bool) -> list[Resource]:
    stdin = sys.stdin if "-" in filenames else None
    result = manifests.load(filenames, stdin, namespace=namespace, recursive=recursive)
    if not result.ok:
        _report_problems(result)
    if not result.resources:
        _fail(f"no resources found in {', '.join(filenames)}")
    return [r for _, r in result.resources]


def _write_all(
    resources: Sequence[Resource],
    verb: str,
    action: Callable[[Resource], object],
    skip: type[ResourceError] | None = None,
) -> None:
    """Run ``action`` on each resource in order; report success or partial success."""
    done = 0
    skipped = 0
    phrase = _kinds_phrase(resources)
    for r in resources:
        try:
            action(r)
        except ResourceError as exc:
            if skip is not None and isinstance(exc, skip):
                skipped += 1
                log.info("ctl.skip resource=%s reason=%s", r.describe(), type(exc).__name__)
                continue
            _partial(verb, done + skipped, len(resources), phrase, exc)
        except (kv.DatastoreError, ds_errors.DatastoreError) as exc:
            if done + skipped == 0:
                raise
            _partial(verb, done + skipped, len(resources), phrase, exc)
        done += 1
    click.echo(f"Successfully {verb} {done}{phrase} resource(s)")
    if skipped:
        click.echo(f"Skipped {skipped} resource(s)")


def _partial(verb: str, done: int, total: int, phrase: str, exc: Exception) -> NoReturn:
    if done:
        click.echo(
            f"Partial success: {verb} the first {done} out of {total}{phrase} resources:", err=True
        )
    click.echo(f"error: {_one_line(exc)}", err=True)
    sys.exit(1)


_FILE_HELP = "File or directory of YAML/JSON manifests; '-' reads stdin. Repeatable."
_NS_HELP = (
    "Namespace for namespaced resources (NetworkPolicy, NetworkSet, WorkloadEndpoint) that do "
    "not name one [default: default]; a document naming another namespace is an error."
)


def _manifest_options(fn: Callable[P, R]) -> Callable[P, R]:
    fn = click.option("-n", "--namespace", metavar="NS", help=_NS_HELP)(fn)
    fn = click.option(
        "-R",
        "--recursive",
        is_flag=True,
        help="Also read manifests in subdirectories of a directory given with -f.",
    )(fn)
    fn = click.option(
        "-f",
        "--filename",
        "filenames",
        multiple=True,
        required=True,
        metavar="FILE|DIR|-",
        help=_FILE_HELP,
    )(fn)
    return fn


# --- commands -----------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "-l",
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    default="warning",
    show_default=True,
    help="Log messages at or above this level on stderr.",
)
def cli(log_level: str) -> None:
    """Manage tabby's Calico v3 resources in etcd, as calicoctl does.

    Resources are stored in Calico's etcdv3 layout
    (/calico/resources/v3/projectcalico.org/<plural>/[<namespace>/]<name>). Kinds may be given
    as calicoctl names them: singular, plural or short (gnp, np, wep, hep, ippool, bgpp, ...).

    etcd is found through each command's --etcd-endpoints option, else calicoctl's variables
    ETCD_ENDPOINTS, ETCD_CA_CERT_FILE, ETCD_CERT_FILE, ETCD_KEY_FILE. Exit status: 0 on
    success, 1 on any error.
    """
    logging.basicConfig(
        level=getattr(logging, log_level.upper()),
        stream=sys.stderr,
        format="%(levelname)s %(name)s %(message)s",
    )


@cli.command()
@_manifest_options
@_connection_options
@_guarded
def apply(
    *,
    filenames: tuple[str, ...],
    recursive: bool,
    namespace: str | None,
    etcd_endpoints: str | None,
    timeout: float,
) -> None:
    """Create resources, or replace them where they exist.

    Every document is validated first; if any is invalid nothing is written. An existing
    resource is replaced at the resourceVersion the document gives (a stale one is an error),
    else at the current one (retrying if a concurrent writer got there first).
    """
    resources = _load(filenames, namespace, recursive)
    client = _client(etcd_endpoints, timeout)
    _write_all(resources, "applied", client.apply)


@cli.command()
@_manifest_options
@click.option("--skip-exists", is_flag=True, help="Skip resources that already exist.")
@_connection_options
@_guarded
def create(
    *,
    filenames: tuple[str, ...],
    recursive: bool,
    namespace: str | None,
    skip_exists: bool,
    etcd_endpoints: str | None,
    timeout: float,
) -> None:
    """Create resources; an existing resource is an error (unless --skip-exists).

    Every document is validated first; if any is invalid nothing is written.
    """
    resources = _load(filenames, namespace, recursive)
    client = _client(etcd_endpoints, timeout)
    _write_all(resources, "created", client.create, ResourceExists if skip_exists else None)


@cli.command()
@_manifest_options
@_connection_options
@_guarded
def replace(
    *,
    filenames: tuple[str, ...],
    recursive: bool,
    namespace: str | None,
    etcd_endpoints: str | None,
    timeout: float,
) -> None:
    """Replace existing resources; a missing resource is an error.

    With metadata.resourceVersion in a document (as 'get -o yaml' prints it), the resource is
    replaced only if it has not changed since: a stale version fails, so a read-modify-write
    loses no concurrent update. Every document is validated first; if any is invalid nothing
    is written.
    """
    resources = _load(filenames, namespace, recursive)
    client = _client(etcd_endpoints, timeout)
    _write_all(resources, "replaced", client.replace)


@cli.command()
@click.argument("kind", required=False, metavar="[KIND")
@click.argument("names", nargs=-1, metavar="NAME...]")
@click.option(
    "-f",
    "--filename",
    "filenames",
    multiple=True,
    metavar="FILE|DIR|-",
    help="Delete the resources these manifests name. " + _FILE_HELP,
)
@click.option("-R", "--recursive", is_flag=True, help="With -f DIR: also read subdirectories.")
@click.option("-n", "--namespace", metavar="NS", help=_NS_HELP)
@click.option("--skip-not-exists", is_flag=True, help="Skip resources that do not exist.")
@_connection_options
@_guarded
def delete(
    *,
    kind: str | None,
    names: tuple[str, ...],
    filenames: tuple[str, ...],
    recursive: bool,
    namespace: str | None,
    skip_not_exists: bool,
    etcd_endpoints: str | None,
    timeout: float,
) -> None:
    """Delete resources by KIND and NAME, or those named in manifests (-f).

    With -f, a document's metadata.resourceVersion (if any) must still be current.
    """
    skip = ResourceNotFound if skip_not_exists else None
    if filenames:
        if kind is not None:
            _fail("give either -f FILE or KIND NAME, not both")
        resources = _load(filenames, namespace, recursive)
        client = _client(etcd_endpoints, timeout)
        _write_all(
            resources,
            "deleted",
            lambda r: client.delete(
                r.kind, r.name, r.namespace, r.metadata.resource_version or None
            ),
            skip,
        )
        return
    if kind is None or not names:
        _fail("give KIND and NAME (e.g. 'tabbyctl delete gnp my-policy') or -f FILE")
    info = _kind(kind)
    ns = namespace if info.namespaced else None
    client = _client(etcd_endpoints, timeout)
    done = 0
    skipped = 0
    for name in names:
        try:
            client.delete(info, name, ns)
        except ResourceNotFound:
            if skip is None:
                if done:
                    click.echo(
                        f"Partial success: deleted the first {done} out of {len(names)}"
                        f" '{info.kind}' resources:",
                        err=True,
                    )
                raise
            skipped += 1
            continue
        done += 1
    click.echo(f"Successfully deleted {done} '{info.kind}' resource(s)")
    if skipped:
        click.echo(f"Skipped {skipped} resource(s)")


@cli.command()
@click.argument("kind")
@click.argument("name", required=False)
@click.option(
    "-n",
    "--namespace",
    metavar="NS",
    help="Namespace of namespaced kinds [default: default]; ignored for cluster-scoped kinds.",
)
@click.option(
    "-A", "--all-namespaces", is_flag=True, help="List namespaced kinds across all namespaces."
)
@click.option(
    "-o",
    "--output",
    "fmt",
    type=click.Choice(["yaml", "json", "wide"]),
    help="yaml/json: full documents with resourceVersion (a listing prints a <Kind>List);"
    " wide: a table with per-kind columns. Default: a table of names.",
)
@_connection_options
@_guarded
def get(
    *,
    kind: str,
    name: str | None,
    namespace: str | None,
    all_namespaces: bool,
    fmt: str | None,
    etcd_endpoints: str | None,
    timeout: float,
) -> None:
    """Show one resource (KIND NAME) or list all resources of KIND.

    A missing NAME is an error. Stored values that fail validation are skipped from listings
    with a warning naming their key.
    """
    info = _kind(kind)
    if name is not None and all_namespaces:
        _fail("-A/--all-namespaces cannot be used with a NAME")
    ns = namespace if info.namespaced else None
    fmt = fmt or "table"
    client = _client(etcd_endpoints, timeout)
    show_ns = info.namespaced and all_namespaces
    if name is not None:
        resource = client.get(info, name, ns)
        text = output.render(info.kind, [resource], fmt, single=True, show_namespace=show_ns)
    else:
        resources, revision = client.list_with_revision(info, ns, all_namespaces=all_namespaces)
        text = output.render(info.kind, resources, fmt, revision=revision, show_namespace=show_ns)
    click.echo(text, nl=False)


@cli.command()
@_manifest_options
def validate(*, filenames: tuple[str, ...], recursive: bool, namespace: str | None) -> None:
    """Check manifests offline (no etcd needed) and report every invalid document."""
    try:
        stdin = sys.stdin if "-" in filenames else None
        result = manifests.load(filenames, stdin, namespace=namespace, recursive=recursive)
    except manifests.ManifestError as exc:
        _die(str(exc))
    if not result.ok:
        n = len(result.problems)
        click.echo(f"error: {n} invalid document(s) in {result.sources} source(s)", err=True)
        for problem in result.problems:
            for line in problem.lines():
                click.echo(line, err=True)
        sys.exit(1)
    click.echo(f"Valid: {len(result.resources)} resource(s) in {result.sources} source(s)")


@cli.command()
def version() -> None:
    """Print the client version."""
    try:
        v = importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        v = "unknown"
    click.echo(f"Client Version:    {v}")


cli.add_command(
    ipam.command_group(
        connect=_client, guard=_guarded, connection_options=_connection_options, fail=_fail
    )
)

node_group.add_command(
    node_register_command(connect=_client, guard=_guarded, connection_options=_connection_options)
)
cli.add_command(node_group)

cli.add_command(diags.command(connect=_client, connection_options=_connection_options))

for _command in explain.commands(
    connect=_client, guard=_guarded, connection_options=_connection_options, fail=_fail
):
    cli.add_command(_command)


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point; returns (and exits with) 0 on success, 1 on any error."""
    try:
        rv: Any = cli.main(args=list(argv) if argv is not None else None, standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        code = 1
    except click.exceptions.Abort:
        click.echo("error: aborted", err=True)
        code = 1
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BrokenPipeError:
        # The reader went away (``tabbyctl get ... | head``): stop quietly, and keep Python's
        # final flush of stdout from reporting the same broken pipe again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 1
    except Exception as exc:
        if logging.getLogger().isEnabledFor(logging.DEBUG):
            raise
        click.echo(f"error: internal error: {type(exc).__name__}: {_one_line(exc)}", err=True)
        code = 1
    else:
        code = rv if isinstance(rv, int) else 0
    code = 1 if code else 0
    if argv is None:
        sys.exit(code)
    return code
