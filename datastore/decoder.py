"""Typed view of the syncer's stream: bytes-level updates in, validated resources out.

Role: the tolerant reader every agent puts between ``datastore.syncer`` and its own logic.
``ResourceDecoder.decode(update)`` turns ``Update(key, value | None, revision)`` into
``ResourceUpdate(key, info, namespace, name, resource | None, revision, invalid)``.
Invariants: it never raises for bad data. A value that is not JSON, fails validation, is too
large, is of the wrong kind for its key, or has unknown fields is treated as *absent*
(``resource=None``, ``invalid=True``) so the consumer drops whatever valid version it had, and it
is logged once per key and revision, naming the key and every field problem. Keys outside the
resource layout are reported as ``None`` (ignored) and logged once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from datastore.codec import decode
from datastore.errors import KeyFormatError, ValidationError
from datastore.keys import parse_resource_key
from datastore.kinds import KindInfo
from datastore.model import Resource
from datastore.syncer import Update

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ResourceUpdate:
    key: str
    info: KindInfo
    namespace: str | None
    name: str
    resource: Resource | None  # None: deleted, or present but invalid
    revision: int
    invalid: bool = False


class ResourceDecoder:
    """Decodes updates; remembers which (key, revision) it already complained about."""

    def __init__(self) -> None:
        self._logged: dict[str, int] = {}
        self.invalid_count = 0

    def decode(self, upd: Update) -> ResourceUpdate | None:
        try:
            info, namespace, name = parse_resource_key(upd.key)
        except KeyFormatError as exc:
            if self._logged.get(upd.key) != upd.revision:
                self._logged[upd.key] = upd.revision
                log.warning("decoder.foreign_key key=%s error=%s", upd.key, exc)
            return None
        if upd.value is None:
            self._logged.pop(upd.key, None)
            return ResourceUpdate(upd.key, info, namespace, name, None, upd.revision)
        try:
            res = decode(upd.key, upd.value, upd.revision)
        except ValidationError as exc:
            self.invalid_count += 1
            if self._logged.get(upd.key) != upd.revision:
                self._logged[upd.key] = upd.revision
                problems = "; ".join(str(e) for e in exc.errors) or str(exc)
                log.warning(
                    "decoder.invalid key=%s revision=%d treated_as=absent problems=%s",
                    upd.key,
                    upd.revision,
                    problems[:2000],
                )
            return ResourceUpdate(upd.key, info, namespace, name, None, upd.revision, True)
        self._logged.pop(upd.key, None)
        return ResourceUpdate(upd.key, info, namespace, name, res, upd.revision)
