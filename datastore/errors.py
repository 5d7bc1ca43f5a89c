"""Exception hierarchy of the datastore package.

Role: one place for every error the resource model, key layout and codec raise, so callers can
catch ``DatastoreError`` (or the precise subclass) at their item boundary.

* ``UnknownKindError`` - a kind name (or calicoctl alias) that tabby does not model.
* ``KeyFormatError`` - an etcd key outside the Calico v3 resource layout, or arguments that cannot
  form one (missing namespace for a namespaced kind, a '/' in a name, ...).
* ``FieldError`` - one problem in one document: kind, namespace/name and dotted field path.
* ``ValidationError`` - a document failed validation; ``.errors`` lists *every* problem found.

Invariant: ``str(FieldError)`` names the resource and the field, e.g.
``GlobalNetworkPolicy default.deny: spec.ingress[0].destination.ports[1]: port range 90:80 is
reversed``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "DatastoreError",
    "FieldError",
    "KeyFormatError",
    "UnknownKindError",
    "ValidationError",
]


class DatastoreError(Exception):
    """Base class of every error raised by the datastore package."""


class UnknownKindError(DatastoreError, ValueError):
    """A resource kind (or alias) that is not one of the kinds tabby models."""


class KeyFormatError(DatastoreError, ValueError):
    """An etcd key (or key component) that does not fit the Calico v3 resource layout."""


@dataclass(frozen=True, slots=True)
class FieldError:
    """One validation problem: which resource, which field (dotted path), what is wrong.

    ``kind``/``name`` may be empty when the document is too broken to tell; ``namespace`` is
    ``None`` for cluster-scoped resources. ``field`` is empty for problems with the document as a
    whole (e.g. "not a JSON object").
    """

    kind: str
    namespace: str | None
    name: str
    field: str
    message: str

    def resource(self) -> str:
        """``Kind ns/name`` (or ``Kind name``) as used at the start of ``str(self)``."""
        kind = self.kind or "<unknown kind>"
        name = self.name or "<unnamed>"
        if self.namespace:
            return f"{kind} {self.namespace}/{name}"
        return f"{kind} {name}"

    def __str__(self) -> str:
        if self.field:
            return f"{self.resource()}: {self.field}: {self.message}"
        return f"{self.resource()}: {self.message}"


class ValidationError(DatastoreError, ValueError):
    """A document failed validation. ``errors`` holds every problem found (never empty)."""

    def __init__(self, errors: Iterable[FieldError]) -> None:
        self.errors: list[FieldError] = list(errors)
        if not self.errors:
            self.errors = [FieldError("", None, "", "", "invalid document")]
        super().__init__(self._summary())

    def _summary(self) -> str:
        first = str(self.errors[0])
        if len(self.errors) == 1:
            return first
        rest = "; ".join(str(e) for e in self.errors[1:6])
        more = f" (+{len(self.errors) - 6} more)" if len(self.errors) > 6 else ""
        return f"{len(self.errors)} problems: {first}; {rest}{more}"

    def __str__(self) -> str:
        return self._summary()

    def fields(self) -> list[str]:
        """The dotted field paths of all errors, in report order (handy in tests and logs)."""
        return [e.field for e in self.errors]
