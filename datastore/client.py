"""Resource-level CRUD on top of the ``KVStore`` seam: what ``tabbyctl`` (and tools) write with.

Role: ``ResourceClient(store)`` turns typed ``Resource`` values into etcd keys/values (Calico's
etcdv3 layout, via ``datastore.keys`` and ``datastore.codec``) and back, with calicoctl's
create / replace / apply / get / list / delete semantics.
Inputs: validated ``Resource`` values (``datastore.codec.resource_from_dict``), kind names as
calicoctl accepts them (or ``KindInfo``), names, namespaces. Outputs: ``Resource`` values whose
``metadata.resource_version`` is the key's etcd mod revision.

Invariants:
- The stored value is exactly ``codec.encode(resource)``: no ``resourceVersion`` in it; the
  version is always the key's mod revision, filled in on read.
- Every write is a compare-and-swap: ``create`` requires the key absent; ``replace`` requires the
  given ``metadata.resource_version`` (or, when unset, the revision read just before); ``apply``
  retries a lost race from a fresh read (only when the caller gave no resource version), so a
  concurrent writer's update is never overwritten blindly from a stale read.
- ``metadata.uid`` and ``metadata.creationTimestamp`` are server-owned: set on create when
  absent (uuid4, RFC 3339 UTC), carried over from the stored value on replace/apply.
- Namespaced kinds default to namespace ``"default"`` when none is given (as calicoctl does);
  a namespace given for a cluster-scoped kind is an error (``KeyFormatError``).
- ``list`` never fails because of one bad stored value: it is skipped with one log line naming
  the key and the problem.
- Errors: ``ResourceNotFound`` / ``ResourceExists`` / ``ResourceConflict`` (all
  ``ResourceError``) name the kind and namespace/name; store failures (e.g.
  ``datastore.kv.UnavailableError``) propagate unchanged; a resource that does not validate
  raises ``datastore.errors.ValidationError`` before anything is written.
"""

from __future__ import annotations

import builtins
import dataclasses
import datetime
import logging
import uuid

from datastore.codec import decode, encode, resource_from_dict, resource_to_dict
from datastore.errors import DatastoreError, FieldError, KeyFormatError, ValidationError
from datastore.keys import kind_prefix, resource_key
from datastore.kinds import KindInfo, lookup_kind
from datastore.kv import KV, AlreadyExistsError, ConflictError, KVStore, NotFoundError
from datastore.model import Metadata, Resource

__all__ = [
    "APPLY_ATTEMPTS",
    "DEFAULT_NAMESPACE",
    "ResourceClient",
    "ResourceConflict",
    "ResourceError",
    "ResourceExists",
    "ResourceNotFound",
]

log = logging.getLogger(__name__)

DEFAULT_NAMESPACE = "default"
# How often ``apply`` re-reads and retries after losing a compare-and-swap race.
APPLY_ATTEMPTS = 8


def _describe(kind: str, namespace: str | None, name: str) -> str:
    return f"{kind} {namespace}/{name}" if namespace else f"{kind} {name}"


class ResourceError(DatastoreError):
    """A resource-level failure; ``kind``/``namespace``/``name`` say which resource."""

    def __init__(self, kind: str, namespace: str | None, name: str, message: str) -> None:
        self.kind = kind
        self.namespace = namespace
        self.name = name
        super().__init__(f"{_describe(kind, namespace, name)}: {message}")


class ResourceNotFound(ResourceError):  # noqa: N818 (calicoctl-style names)
    """The resource does not exist."""

    def __init__(self, kind: str, namespace: str | None, name: str) -> None:
        super().__init__(kind, namespace, name, "resource does not exist")


class ResourceExists(ResourceError):  # noqa: N818 (calicoctl-style names)
    """``create`` found the resource already present."""

    def __init__(self, kind: str, namespace: str | None, name: str) -> None:
        super().__init__(kind, namespace, name, "resource already exists")


class ResourceConflict(ResourceError):  # noqa: N818 (calicoctl-style names)
    """The resource changed since the version the caller based its write on."""


def _now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ResourceClient:
    """calicoctl-style CRUD of Calico v3 resources in a ``KVStore`` (see module docstring)."""

    def __init__(self, store: KVStore) -> None:
        self.store = store

    # --- helpers --------------------------------------------------------------------------

    @staticmethod
    def _info(kind: KindInfo | str) -> KindInfo:
        return kind if isinstance(kind, KindInfo) else lookup_kind(kind)

    @staticmethod
    def _namespace(info: KindInfo, namespace: str | None) -> str | None:
        if info.namespaced:
            return namespace or DEFAULT_NAMESPACE
        if namespace:
            raise KeyFormatError(f"{info.kind} is cluster-scoped: it has no namespace")
        return None

    @staticmethod
    def _check(resource: Resource) -> Resource:
        """Re-validate (a ``Resource`` built by hand bypasses the codec); returns it unchanged."""
        resource_from_dict(resource_to_dict(resource, include_resource_version=False))
        return resource

    @staticmethod
    def _expected_revision(resource: Resource) -> int | None:
        text = resource.metadata.resource_version
        if not text:
            return None
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value <= 0:
            raise ValidationError(
                [
                    FieldError(
                        resource.kind,
                        resource.namespace,
                        resource.name,
                        "metadata.resourceVersion",
                        f"expected a positive integer, got {text[:64]!r}",
                    )
                ]
            )
        return value

    @staticmethod
    def _with_meta(resource: Resource, **changes: object) -> Resource:
        meta: Metadata = dataclasses.replace(resource.metadata, **changes)  # type: ignore[arg-type]
        return dataclasses.replace(resource, metadata=meta)

    def _fresh_meta(self, resource: Resource) -> Resource:
        """``resource`` with uid/creationTimestamp filled in when absent (for a create)."""
        return self._with_meta(
            resource,
            uid=resource.metadata.uid or str(uuid.uuid4()),
            creation_timestamp=resource.metadata.creation_timestamp or _now_rfc3339(),
            resource_version="",
        )

    def _carry_meta(self, resource: Resource, current: KV) -> Resource:
        """``resource`` with the stored uid/creationTimestamp (for a replace)."""
        try:
            stored = decode(current.key, current.value, current.mod_revision).metadata
        except ValidationError as exc:
            # Replacing an invalid stored value is how a user repairs it: start afresh.
            log.warning("client.replace_invalid key=%s error=%s", current.key, exc)
            return self._fresh_meta(resource)
        return self._with_meta(
            resource,
            uid=stored.uid or resource.metadata.uid or str(uuid.uuid4()),
            creation_timestamp=(
                stored.creation_timestamp or resource.metadata.creation_timestamp or _now_rfc3339()
            ),
            resource_version="",
        )

    @staticmethod
    def _stored(resource: Resource, revision: int) -> Resource:
        meta = dataclasses.replace(resource.metadata, resource_version=str(revision))
        return dataclasses.replace(resource, metadata=meta)

    # --- writes ---------------------------------------------------------------------------

    def create(self, resource: Resource) -> Resource:
        """Store a new resource; ``ResourceExists`` if it is already there."""
        self._check(resource)
        new = self._fresh_meta(resource)
        try:
            revision = self.store.create(new.key, encode(new))
        except AlreadyExistsError:
            raise ResourceExists(resource.kind, resource.namespace, resource.name) from None
        log.debug("client.create key=%s revision=%d", new.key, revision)
        return self._stored(new, revision)

    def replace(self, resource: Resource) -> Resource:
        """Replace an existing resource (compare-and-swap; see module docstring).

        ``ResourceNotFound`` if absent; ``ResourceConflict`` if it changed since
        ``metadata.resource_version`` (or since the read this call makes when that is unset).
        """
        self._check(resource)
        expected = self._expected_revision(resource)
        kind, ns, name = resource.kind, resource.namespace, resource.name
        current = self.store.get(resource.key)
        if current is None:
            raise ResourceNotFound(kind, ns, name)
        if expected is not None and expected != current.mod_revision:
            raise ResourceConflict(
                kind,
                ns,
                name,
                f"update conflict: resourceVersion {expected} is stale"
                f" (current is {current.mod_revision}); get the resource again and retry",
            )
        return self._update(resource, current, current.mod_revision)

    def _update(self, resource: Resource, current: KV, expected: int) -> Resource:
        kind, ns, name = resource.kind, resource.namespace, resource.name
        new = self._carry_meta(resource, current)
        try:
            revision = self.store.update(new.key, encode(new), expected)
        except NotFoundError:
            raise ResourceNotFound(kind, ns, name) from None
        except ConflictError:
            raise ResourceConflict(
                kind,
                ns,
                name,
                f"update conflict: modified concurrently since resourceVersion {expected}",
            ) from None
        log.debug("client.replace key=%s revision=%d", new.key, revision)
        return self._stored(new, revision)

    def apply(self, resource: Resource) -> Resource:
        """Create the resource, or replace it if it exists (calicoctl's ``apply``).

        With ``metadata.resource_version`` set, an existing resource is replaced only at that
        version (``ResourceConflict`` otherwise; a create ignores it). Without it, a lost race
        against a concurrent writer is retried from a fresh read, up to ``APPLY_ATTEMPTS`` times.
        """
        self._check(resource)
        expected = self._expected_revision(resource)
        kind, ns, name = resource.kind, resource.namespace, resource.name
        for attempt in range(1, APPLY_ATTEMPTS + 1):
            current = self.store.get(resource.key)
            try:
                if current is None:
                    return self.create(resource)
                if expected is not None and expected != current.mod_revision:
                    raise ResourceConflict(
                        kind,
                        ns,
                        name,
                        f"update conflict: resourceVersion {expected} is stale"
                        f" (current is {current.mod_revision})",
                    )
                return self._update(resource, current, current.mod_revision)
            except (ResourceExists, ResourceNotFound, ResourceConflict):
                if expected is not None:
                    raise
                log.info("client.apply.retry key=%s attempt=%d", resource.key, attempt)
        raise ResourceConflict(
            kind, ns, name, f"gave up after {APPLY_ATTEMPTS} attempts: modified concurrently"
        )

    def delete(
        self,
        kind: KindInfo | str,
        name: str,
        namespace: str | None = None,
        resource_version: str | None = None,
    ) -> Resource | None:
        """Delete a resource; returns what was stored (None if it could not be decoded).

        ``ResourceNotFound`` if absent; with ``resource_version``, ``ResourceConflict`` if the
        resource changed since that version.
        """
        info = self._info(kind)
        ns = self._namespace(info, namespace)
        key = resource_key(info, name, ns)
        current = self.store.get(key)
        if current is None:
            raise ResourceNotFound(info.kind, ns, name)
        expected = current.mod_revision
        if resource_version:
            try:
                expected = int(resource_version)
            except ValueError:
                raise ResourceConflict(
                    info.kind, ns, name, f"invalid resourceVersion {resource_version[:64]!r}"
                ) from None
        try:
            self.store.delete(key, expected_mod_revision=expected)
        except NotFoundError:
            raise ResourceNotFound(info.kind, ns, name) from None
        except ConflictError:
            raise ResourceConflict(
                info.kind,
                ns,
                name,
                f"delete conflict: resourceVersion {expected} is stale; get it again and retry",
            ) from None
        log.debug("client.delete key=%s revision=%d", key, expected)
        try:
            return decode(key, current.value, current.mod_revision)
        except ValidationError:
            return None

    # --- reads ----------------------------------------------------------------------------

    def get(self, kind: KindInfo | str, name: str, namespace: str | None = None) -> Resource:
        """One resource; ``ResourceNotFound`` if absent. A stored value that does not decode
        raises ``ValidationError`` (naming the key's resource and the field)."""
        info = self._info(kind)
        ns = self._namespace(info, namespace)
        kv = self.store.get(resource_key(info, name, ns))
        if kv is None:
            raise ResourceNotFound(info.kind, ns, name)
        return decode(kv.key, kv.value, kv.mod_revision)

    def list(
        self,
        kind: KindInfo | str,
        namespace: str | None = None,
        *,
        all_namespaces: bool = False,
    ) -> builtins.list[Resource]:
        """All valid resources of a kind, in key order (see ``list_with_revision``)."""
        return self.list_with_revision(kind, namespace, all_namespaces=all_namespaces)[0]

    def list_with_revision(
        self,
        kind: KindInfo | str,
        namespace: str | None = None,
        *,
        all_namespaces: bool = False,
    ) -> tuple[builtins.list[Resource], int]:
        """All valid resources of a kind at one revision, and that revision.

        Namespaced kinds: ``namespace`` (default ``"default"``), or every namespace with
        ``all_namespaces=True``. Invalid stored values are skipped, one log line each.
        """
        info = self._info(kind)
        if info.namespaced and all_namespaces:
            prefix = kind_prefix(info)
        else:
            prefix = kind_prefix(info, self._namespace(info, namespace))
        kvs, revision = self.store.list(prefix)
        out: builtins.list[Resource] = []
        for kv in kvs:
            try:
                out.append(decode(kv.key, kv.value, kv.mod_revision))
            except ValidationError as exc:
                log.warning("client.list.skip_invalid key=%s error=%s", kv.key, exc)
        return out, revision
