"""Core of the resource model: ``Metadata``, ``Resource``, the ``Spec`` base and the kind registry.

Role: the kind-independent part of the typed model. Each ``model_*`` module defines the spec
dataclasses of some kinds and registers a ``KindModel`` (spec schema, optional status, name rule,
resource-level cross checks) with ``register``; ``datastore.codec`` drives parsing/rendering
through the registry.

Invariants: every value is a frozen, slotted, hashable dataclass; ``Resource.kind`` is the
CamelCase kind; ``Metadata.resource_version`` is the etcd mod revision as a string ("" when
unknown) and is never part of a stored value.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from datastore.keys import resource_key
from datastore.kinds import KindInfo, lookup_kind
from datastore.schema import (
    EMPTY_MAP,
    AnyType,
    Errors,
    FrozenMap,
    IntType,
    Schema,
    StrMapType,
    StrType,
    check_dns_label,
    check_label_key,
)
from datastore.schema import field as f

__all__ = [
    "API_VERSION",
    "METADATA_SCHEMA",
    "KindModel",
    "Metadata",
    "Resource",
    "Spec",
    "kind_model",
    "register",
    "registered_kinds",
]

API_VERSION = "projectcalico.org/v3"


class Spec:
    """Base class of every spec/status/nested-struct dataclass of the model."""

    __slots__ = ()


_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}"
    r"(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)


def _check_timestamp(text: str) -> str | None:
    if _RFC3339.fullmatch(text) is None:
        return f"invalid timestamp {text[:60]!r}: expected RFC 3339, e.g. 2024-05-01T12:00:00Z"
    return None


def _no_check(_text: str) -> str | None:
    return None


@dataclass(frozen=True, slots=True)
class Metadata:
    """Kubernetes-style object metadata as Calico stores it.

    ``name``/``namespace`` identify the resource (``namespace`` is None for cluster-scoped
    kinds); the rarely used Kubernetes fields are kept verbatim (frozen JSON) so that nothing
    written by Calico is lost on a read-modify-write.
    """

    name: str = ""
    generate_name: str = ""
    namespace: str | None = None
    self_link: str = ""
    uid: str = ""
    resource_version: str = ""
    generation: int | None = None
    creation_timestamp: str = ""
    deletion_timestamp: str = ""
    deletion_grace_period_seconds: int | None = None
    labels: FrozenMap[str, str] = field(default=EMPTY_MAP)
    annotations: FrozenMap[str, str] = field(default=EMPTY_MAP)
    owner_references: object = None
    finalizers: object = None
    managed_fields: object = None


METADATA_SCHEMA = Schema(
    Metadata,
    [
        f("name", "name", StrType(max_len=253), "", required=True),
        f("generate_name", "generateName", StrType(max_len=253), ""),
        f("namespace", "namespace", StrType(check_dns_label, max_len=63)),
        f("self_link", "selfLink", StrType(), ""),
        f("uid", "uid", StrType(max_len=256), ""),
        f("resource_version", "resourceVersion", StrType(max_len=64), ""),
        f("generation", "generation", IntType()),
        f("creation_timestamp", "creationTimestamp", StrType(_check_timestamp, max_len=64), ""),
        f("deletion_timestamp", "deletionTimestamp", StrType(_check_timestamp, max_len=64), ""),
        f("deletion_grace_period_seconds", "deletionGracePeriodSeconds", IntType()),
        f("labels", "labels", StrMapType(), EMPTY_MAP),
        f("annotations", "annotations", StrMapType(check_label_key, _no_check), EMPTY_MAP),
        f("owner_references", "ownerReferences", AnyType()),
        f("finalizers", "finalizers", AnyType()),
        f("managed_fields", "managedFields", AnyType()),
    ],
)


@dataclass(frozen=True, slots=True)
class Resource:
    """One typed Calico v3 resource: kind, metadata, kind-specific spec (and rarely status)."""

    kind: str
    metadata: Metadata
    spec: Spec
    status: Spec | FrozenMap[str, Any] | None = None

    @property
    def info(self) -> KindInfo:
        return lookup_kind(self.kind)

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str | None:
        return self.metadata.namespace

    @property
    def key(self) -> str:
        """The etcd key this resource is stored under."""
        return resource_key(self.info, self.metadata.name, self.metadata.namespace)

    def describe(self) -> str:
        """``Kind ns/name`` or ``Kind name``, for messages."""
        ns = self.metadata.namespace
        return f"{self.kind} {ns}/{self.metadata.name}" if ns else f"{self.kind} {self.name}"


ResourceCheck = Callable[[Metadata, Any, Errors], None]


@dataclass(frozen=True, slots=True)
class KindModel:
    """Everything the codec needs to know about one kind.

    ``name_check`` returns a problem with ``metadata.name`` or None; ``check`` records problems
    that need both metadata and spec (e.g. a tiered policy's name prefix); ``status`` is the
    type of the optional top-level ``status`` object (None: the kind has no status).
    """

    info: KindInfo
    spec: Schema
    name_check: Callable[[str], str | None]
    check: ResourceCheck | None = None
    status: Schema | AnyType | None = None


_REGISTRY: dict[str, KindModel] = {}


def register(model: KindModel) -> KindModel:
    """Add a kind to the registry (once per kind)."""
    if model.info.kind in _REGISTRY:
        raise AssertionError(f"kind {model.info.kind} registered twice")
    _REGISTRY[model.info.kind] = model
    return model


def kind_model(kind: str) -> KindModel | None:
    """The registered model of an exact CamelCase kind, or None."""
    return _REGISTRY.get(kind)


def registered_kinds() -> tuple[str, ...]:
    """All registered CamelCase kinds, in registration order."""
    return tuple(_REGISTRY)
