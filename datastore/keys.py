"""etcd key layout of resources, exactly as Calico's etcdv3 backend writes it.

Role: turn (kind, namespace, name) into the etcd key and back; give list prefixes.

Layout: ``/calico/resources/v3/projectcalico.org/<plural>/<name>`` for cluster-scoped kinds and
``/calico/resources/v3/projectcalico.org/<plural>/<namespace>/<name>`` for namespaced ones
(e.g. ``.../workloadendpoints/ns1/node1-k8s-pod1-eth0``). The value stored at the key is the JSON
document (see ``datastore.codec``); ``resourceVersion`` is the key's etcd mod revision.

Invariants: ``parse_resource_key(resource_key(k, n, ns)) == (k, ns, n)``; prefixes returned by
``kind_prefix`` end with "/" so that ``ns1`` never matches ``ns10``; key components never contain
"/" and are never empty. Foreign keys raise ``KeyFormatError``.
"""

from __future__ import annotations

from datastore.errors import KeyFormatError
from datastore.kinds import KindInfo, kind_by_plural, lookup_kind

__all__ = [
    "RESOURCES_ROOT",
    "kind_prefix",
    "parse_resource_key",
    "resource_key",
]

RESOURCES_ROOT = "/calico/resources/v3/projectcalico.org/"


def _info(kind: KindInfo | str) -> KindInfo:
    return kind if isinstance(kind, KindInfo) else lookup_kind(kind)


def _component(what: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise KeyFormatError(f"{what} must be a non-empty string, got {value!r}")
    if "/" in value:
        raise KeyFormatError(f"{what} {value!r} must not contain '/'")
    return value


def resource_key(kind: KindInfo | str, name: str, namespace: str | None = None) -> str:
    """The etcd key of one resource. ``namespace`` is required exactly for namespaced kinds."""
    info = _info(kind)
    name = _component("name", name)
    if info.namespaced:
        if namespace is None:
            raise KeyFormatError(f"{info.kind} is namespaced: a namespace is required")
        namespace = _component("namespace", namespace)
        return f"{RESOURCES_ROOT}{info.plural_lower}/{namespace}/{name}"
    if namespace is not None:
        raise KeyFormatError(f"{info.kind} is cluster-scoped: namespace must be None")
    return f"{RESOURCES_ROOT}{info.plural_lower}/{name}"


def kind_prefix(kind: KindInfo | str, namespace: str | None = None) -> str:
    """The prefix (ending in "/") under which all resources of a kind (in a namespace) live."""
    info = _info(kind)
    if namespace is None:
        return f"{RESOURCES_ROOT}{info.plural_lower}/"
    if not info.namespaced:
        raise KeyFormatError(f"{info.kind} is cluster-scoped: namespace must be None")
    namespace = _component("namespace", namespace)
    return f"{RESOURCES_ROOT}{info.plural_lower}/{namespace}/"


def parse_resource_key(key: str) -> tuple[KindInfo, str | None, str]:
    """Split a resource key into (kind, namespace or None, name).

    Raises ``KeyFormatError`` for anything that is not a key of a modelled kind with the right
    number of non-empty components.
    """
    if not isinstance(key, str) or not key.startswith(RESOURCES_ROOT):
        raise KeyFormatError(f"not a Calico v3 resource key: {key!r}")
    parts = key[len(RESOURCES_ROOT) :].split("/")
    info = kind_by_plural(parts[0])
    if info is None:
        raise KeyFormatError(f"unknown resource type {parts[0]!r} in key {key!r}")
    want = 3 if info.namespaced else 2
    if len(parts) != want or not all(parts[1:]):
        shape = "<namespace>/<name>" if info.namespaced else "<name>"
        raise KeyFormatError(
            f"malformed {info.kind} key {key!r}: expected {RESOURCES_ROOT}"
            f"{info.plural_lower}/{shape}"
        )
    if info.namespaced:
        return info, parts[1], parts[2]
    return info, None, parts[1]
