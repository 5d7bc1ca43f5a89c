"""Node registration: create or update this host's ``Node`` resource, as calico/node does at start.

Role: ``register_node`` writes ``spec.bgp.ipv4Address`` (always WITH its prefix length: the
node's subnet is what CrossSubnet compares), the matching ``spec.addresses`` entry (type
``CalicoNodeIP``), optionally ``spec.bgp.asNumber`` and extra labels, through
``ResourceClient``'s compare-and-swap writes. ``desired_node`` and ``address_owner`` are the
pure parts; ``register_from_env`` is the agents' start-up hook (``TABBY_REGISTER_NODE=true``).
Inputs: a ``Registration`` (name, address, AS, labels), a ``ResourceClient``.
Outputs: ``RegisterResult`` (the stored Node and whether it was created, updated or unchanged).

Invariants:
- Read-modify-write with compare-and-swap: every other field of an existing Node (tunnel
  addresses, route-reflector cluster ID, orchRefs, other addresses, labels not named) is kept;
  a concurrent writer makes the attempt start again from a fresh read, never overwritten.
- An address that another Node already has (its ``bgp.ipv4Address`` or any ``spec.addresses``
  entry) is refused with ``AddressInUseError`` naming that node; nothing is written. (The check
  and the write are two requests: two hosts registering the same new address at the same
  instant can both succeed; the BGP agent then sees two nodes with one address.)
- Nothing is written when the Node already says what we would write.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface
from typing import Literal

from datastore import kv
from datastore.autodetect import AutodetectError, choose_address
from datastore.client import (
    ResourceClient,
    ResourceConflict,
    ResourceExists,
    ResourceNotFound,
)
from datastore.errors import DatastoreError
from datastore.etcd import EtcdConfig, EtcdKVStore
from datastore.kinds import NODE
from datastore.kv import KVStore
from datastore.model import Metadata, NodeAddress, NodeBGPSpec, NodeSpec, Resource
from datastore.schema import FrozenMap

__all__ = [
    "ATTEMPTS",
    "REGISTER_ENV",
    "AddressInUseError",
    "RegisterResult",
    "Registration",
    "RegistrationError",
    "address_owner",
    "desired_node",
    "parse_labels",
    "register_from_env",
    "register_node",
    "registration_requested",
    "start_up_registration",
]

log = logging.getLogger(__name__)

ATTEMPTS = 8
REGISTER_ENV = "TABBY_REGISTER_NODE"
# How long an agent waits for etcd to register its node before giving up (and exiting).
START_UP_WAIT = 60.0
NODE_IP_TYPE = "CalicoNodeIP"
Action = Literal["created", "updated", "unchanged"]


class RegistrationError(DatastoreError):
    """The Node could not be registered; the message says why."""


class AddressInUseError(RegistrationError):
    """Another Node already has the address."""

    def __init__(self, name: str, address: IPv4Interface, owner: str) -> None:
        self.owner = owner
        super().__init__(
            f"Node {name}: address {address.ip} is already used by Node {owner}; "
            "choose another address (--ip / --ip-autodetection-method) or fix Node "
            f"{owner} first"
        )


@dataclass(frozen=True, slots=True)
class Registration:
    """What to register: the Node's name, its address with prefix length, AS and labels."""

    name: str
    address: IPv4Interface
    as_number: int | None = None
    labels: Mapping[str, str] = field(default_factory=FrozenMap[str, str])


@dataclass(frozen=True, slots=True)
class RegisterResult:
    node: Resource
    action: Action


def parse_labels(text: str | None) -> dict[str, str]:
    """``k=v,k2=v2`` -> dict (empty text -> {}); a malformed item is a ``RegistrationError``."""
    out: dict[str, str] = {}
    for raw in (text or "").split(","):
        item = raw.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise RegistrationError(f"labels: expected key=value, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def _node_ips(spec: NodeSpec) -> set[IPv4Address]:
    ips: set[IPv4Address] = set()
    if spec.bgp is not None and spec.bgp.ipv4_address is not None:
        ips.add(spec.bgp.ipv4_address.ip)
    for a in spec.addresses:
        if a.address is not None and isinstance(a.address, IPv4Interface):
            ips.add(a.address.ip)
    return ips


def address_owner(nodes: Sequence[Resource], name: str, ip: IPv4Address) -> str | None:
    """The name of another Node (not ``name``) that has ``ip``, else None (pure)."""
    for node in sorted(nodes, key=lambda n: n.name):
        if node.name == name or not isinstance(node.spec, NodeSpec):
            continue
        if ip in _node_ips(node.spec):
            return node.name
    return None


def desired_node(current: Resource | None, reg: Registration) -> Resource:
    """``current`` (or a new Node) with the registration applied; other fields kept (pure)."""
    if current is None:
        meta = Metadata(name=reg.name, labels=FrozenMap(dict(reg.labels)))
        spec = NodeSpec()
        status = None
    else:
        if not isinstance(current.spec, NodeSpec):
            raise RegistrationError(f"Node {reg.name}: stored value is not a Node")
        meta = current.metadata
        if reg.labels:
            meta = dataclasses.replace(
                meta, labels=FrozenMap({**dict(meta.labels), **dict(reg.labels)})
            )
        spec = current.spec
        status = current.status
    bgp = spec.bgp or NodeBGPSpec()
    bgp = dataclasses.replace(
        bgp,
        ipv4_address=reg.address,
        as_number=reg.as_number if reg.as_number is not None else bgp.as_number,
    )
    kept = tuple(
        a
        for a in spec.addresses
        if not (a.type == NODE_IP_TYPE and isinstance(a.address, IPv4Interface))
        and not (a.address is not None and a.address.ip == reg.address.ip)
    )
    addresses = (NodeAddress(address=reg.address, type=NODE_IP_TYPE), *kept)
    spec = dataclasses.replace(spec, bgp=bgp, addresses=addresses)
    return Resource(kind=NODE.kind, metadata=meta, spec=spec, status=status)


def register_node(client: ResourceClient, reg: Registration) -> RegisterResult:
    """Create or update Node ``reg.name`` (see module docstring); retries lost CAS races."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            current: Resource | None = client.get(NODE, reg.name)
        except ResourceNotFound:
            current = None
        owner = address_owner(client.list(NODE), reg.name, reg.address.ip)
        if owner is not None:
            raise AddressInUseError(reg.name, reg.address, owner)
        desired = desired_node(current, reg)
        if (
            current is not None
            and desired.spec == current.spec
            and desired.metadata.labels == current.metadata.labels
        ):
            log.info("register.unchanged node=%s address=%s", reg.name, reg.address)
            return RegisterResult(current, "unchanged")
        try:
            if current is None:
                stored = client.create(desired)
                action: Action = "created"
            else:
                stored = client.replace(desired)
                action = "updated"
        except (ResourceExists, ResourceConflict, ResourceNotFound) as exc:
            log.info("register.retry node=%s attempt=%d reason=%s", reg.name, attempt, exc)
            continue
        log.info(
            "register.%s node=%s address=%s revision=%s",
            action,
            reg.name,
            reg.address,
            stored.metadata.resource_version,
        )
        return RegisterResult(stored, action)
    raise RegistrationError(
        f"Node {reg.name}: gave up after {ATTEMPTS} attempts: modified concurrently"
    )


# --- agents' start-up hook -------------------------------------------------------------------


def registration_requested(environ: Mapping[str, str]) -> bool:
    return environ.get(REGISTER_ENV, "").strip().lower() in ("true", "1", "yes", "on")


def register_from_env(
    node_name: str,
    etcd: EtcdConfig,
    environ: Mapping[str, str],
    *,
    store_factory: Callable[[], KVStore] | None = None,
) -> RegisterResult | None:
    """If ``TABBY_REGISTER_NODE`` is true: register ``node_name`` from Calico's variables
    ``IP`` (ADDRESS/LEN, or ``autodetect``), ``IP_AUTODETECTION_METHOD``, ``AS`` and
    ``TABBY_NODE_LABELS`` (k=v,...). Returns None when registration is not requested."""
    if not registration_requested(environ):
        return None
    as_text = environ.get("AS", "").strip()
    try:
        as_number = int(as_text) if as_text else None
    except ValueError:
        raise RegistrationError(f"AS: expected an AS number, got {as_text!r}") from None
    try:
        found = choose_address(environ.get("IP_AUTODETECTION_METHOD"), environ.get("IP"))
    except AutodetectError as exc:
        raise RegistrationError(f"Node {node_name}: {exc}") from None
    reg = Registration(
        name=node_name,
        address=found.address,
        as_number=as_number,
        labels=FrozenMap(parse_labels(environ.get("TABBY_NODE_LABELS"))),
    )
    if store_factory is not None:
        return register_node(ResourceClient(store_factory()), reg)
    store = EtcdKVStore(etcd)
    try:
        return register_node(ResourceClient(store), reg)
    finally:
        store.close()


def start_up_registration(
    node_name: str,
    etcd: EtcdConfig,
    environ: Mapping[str, str],
    *,
    wait: float = START_UP_WAIT,
    sleep: Callable[[float], None] = time.sleep,
    store_factory: Callable[[], KVStore] | None = None,
) -> str | None:
    """The agents' hook: ``register_from_env``, waiting up to ``wait`` seconds for etcd.

    Returns None on success (or when not requested), else a one-line error for the agent to
    print before it exits (systemd restarts it)."""
    deadline = time.monotonic() + wait
    delay = 1.0
    while True:
        try:
            result = register_from_env(node_name, etcd, environ, store_factory=store_factory)
        except kv.UnavailableError as exc:
            if time.monotonic() + delay > deadline:
                return f"node registration: etcd unavailable: {' '.join(str(exc).split())}"
            log.warning("register.etcd_unavailable node=%s retry_in=%.0fs", node_name, delay)
            sleep(delay)
            delay = min(delay * 2, 8.0)
            continue
        except DatastoreError as exc:
            return f"node registration: {' '.join(str(exc).split())}"
        if result is not None:
            spec = result.node.spec
            bgp = spec.bgp if isinstance(spec, NodeSpec) else None
            log.info(
                "register.start node=%s action=%s address=%s",
                node_name,
                result.action,
                bgp.ipv4_address if bgp is not None else None,
            )
        return None
