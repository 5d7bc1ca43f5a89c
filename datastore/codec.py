"""JSON codec for Calico v3 resources: validate on the way in, canonical JSON on the way out.

Role: the only path between stored/typed-in documents and ``datastore.model.Resource``.
* ``resource_from_dict(d)``: validate a decoded document (``kind``, ``apiVersion``,
  ``metadata``, ``spec`` [, ``status``]) and build the typed ``Resource``; raises
  ``ValidationError`` listing *every* problem (kind, namespace/name, dotted field path).
* ``resource_to_dict(r, include_resource_version=True)``: Calico's JSON shape with a stable key
  order (Calico's field order), unset optional fields omitted. Storage uses it without
  ``resourceVersion``; display with it.
* ``decode(key, value, mod_revision)``: bytes from etcd -> ``Resource``; checks that the key
  agrees with kind/namespace/name and sets ``metadata.resource_version = str(mod_revision)``.
  For *any* bad input (wrong key, huge, non-UTF-8, non-JSON, NaN, deep nesting, wrong types) it
  raises ``ValidationError`` and nothing else; callers treat that as "absent" and log once.
* ``encode(r)``: compact JSON bytes for storage (no ``resourceVersion``).

Invariants: ``resource_from_dict(resource_to_dict(r)) == r`` and
``decode(k, encode(r), n) == r`` with resource_version ``str(n)``, for every valid ``r``.
Pure code, no I/O.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from datastore.errors import FieldError, KeyFormatError, UnknownKindError, ValidationError
from datastore.keys import parse_resource_key
from datastore.kinds import lookup_kind
from datastore.model import API_VERSION, Metadata, Resource, Spec, kind_model
from datastore.model_base import METADATA_SCHEMA
from datastore.schema import INVALID, Errors, FrozenMap, json_type_name

__all__ = [
    "MAX_VALUE_BYTES",
    "decode",
    "encode",
    "resource_from_dict",
    "resource_to_dict",
]

log = logging.getLogger(__name__)

# etcd's default request limit is 1.5 MiB; nothing valid is larger.
MAX_VALUE_BYTES = 3 * 512 * 1024

_TOP_KEYS = ("kind", "apiVersion", "metadata", "spec", "status")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _identity(d: dict[Any, Any]) -> tuple[str, str | None, str]:
    """Best-effort (kind, namespace, name) of a raw document, for error messages."""
    kind = d.get("kind")
    meta = d.get("metadata")
    ns: object = None
    name: object = ""
    if isinstance(meta, dict):
        ns = meta.get("namespace")
        name = meta.get("name", "")
    return (
        kind if isinstance(kind, str) else "",
        ns if isinstance(ns, str) and ns else None,
        name[:253] if isinstance(name, str) else "",
    )


def _raise(errs: Errors, ident: tuple[str, str | None, str]) -> None:
    kind, ns, name = ident
    raise ValidationError(FieldError(kind[:64], ns, name, p, m) for p, m in errs.items)


def _check_kind(raw: object, errs: Errors) -> str | None:
    if raw is None:
        errs.add("kind", "required field is missing")
        return None
    if type(raw) is not str:
        errs.add("kind", f"expected a string, got {json_type_name(raw)}")
        return None
    if kind_model(raw) is not None:
        return raw
    try:
        info = lookup_kind(raw)
    except UnknownKindError as exc:
        errs.add("kind", str(exc))
        return None
    errs.add("kind", f"unknown kind {raw[:64]!r}: did you mean {info.kind}?")
    return None


def resource_from_dict(d: object) -> Resource:
    """Validate a decoded Calico v3 document and build its ``Resource``.

    Raises ``ValidationError`` with every problem found.
    """
    if type(d) is not dict:
        raise ValidationError(
            [FieldError("", None, "", "", f"expected a JSON object, got {json_type_name(d)}")]
        )
    errs = Errors()
    for key in d:
        if key not in _TOP_KEYS:
            errs.add(str(key)[:100], "unknown field")
    kind = _check_kind(d.get("kind"), errs)
    api = d.get("apiVersion")
    if api is None:
        errs.add("apiVersion", "required field is missing")
    elif api != API_VERSION:
        shown = api[:64] if isinstance(api, str) else json_type_name(api)
        errs.add("apiVersion", f"expected {API_VERSION!r}, got {shown!r}")

    raw_meta = d.get("metadata")
    meta: object = INVALID
    if raw_meta is None:
        errs.add("metadata", "required field is missing")
    else:
        meta = METADATA_SCHEMA.parse(raw_meta, "metadata", errs)

    model = kind_model(kind) if kind is not None else None
    spec: object = INVALID
    status: object = None
    if model is not None:
        if type(raw_meta) is dict:
            # Checked on the raw values so that they are reported even if metadata is invalid.
            name = raw_meta.get("name")
            if type(name) is str and name and len(name) <= 253:
                problem = model.name_check(name)
                if problem is not None:
                    errs.add("metadata.name", problem)
            namespace = raw_meta.get("namespace")
            if model.info.namespaced and namespace is None:
                errs.add("metadata.namespace", f"required: {model.info.kind} is namespaced")
            elif not model.info.namespaced and namespace is not None:
                errs.add(
                    "metadata.namespace", f"must not be set: {model.info.kind} is cluster-scoped"
                )
        raw_spec = d.get("spec")
        if raw_spec is None:
            errs.add("spec", "required field is missing")
        else:
            spec = model.spec.parse(raw_spec, "spec", errs)
        raw_status = d.get("status")
        if raw_status is not None:
            if model.status is None:
                errs.add("status", f"unknown field: {model.info.kind} has no status")
            else:
                status = model.status.parse(raw_status, "status", errs)
        if model.check is not None and isinstance(meta, Metadata) and isinstance(spec, Spec):
            model.check(meta, spec, errs)
    if errs:
        _raise(errs, _identity(d))
    assert kind is not None and isinstance(meta, Metadata) and isinstance(spec, Spec)
    assert status is None or isinstance(status, Spec | FrozenMap)
    return Resource(kind, meta, spec, status)


def resource_to_dict(r: Resource, include_resource_version: bool = True) -> dict[str, Any]:
    """Calico v3 JSON for ``r`` (stable key order; unset optional fields omitted)."""
    model = kind_model(r.kind)
    if model is None:
        raise UnknownKindError(f"unknown resource kind {r.kind!r}")
    meta = METADATA_SCHEMA.render(r.metadata)
    if not include_resource_version:
        meta.pop("resourceVersion", None)
    out: dict[str, Any] = {
        "kind": r.kind,
        "apiVersion": API_VERSION,
        "metadata": meta,
        "spec": model.spec.render(r.spec),
    }
    if r.status is not None and model.status is not None:
        out["status"] = model.status.render(r.status)
    return out


def encode(r: Resource) -> bytes:
    """Compact JSON bytes of ``r`` for storage in etcd (without ``resourceVersion``)."""
    return json.dumps(
        resource_to_dict(r, include_resource_version=False),
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    ).encode()


def _fail(kind: str, ns: str | None, name: str, field: str, message: str) -> ValidationError:
    return ValidationError([FieldError(kind, ns, name, field, message)])


def decode(key: str, value: bytes, mod_revision: int) -> Resource:
    """Decode the etcd value stored at ``key``; raises only ``ValidationError``."""
    try:
        info, ns, name = parse_resource_key(key)
    except KeyFormatError as exc:
        raise _fail("", None, "", "key", str(exc)) from None
    kind = info.kind
    if not isinstance(value, bytes | bytearray | memoryview | str):
        raise _fail(kind, ns, name, "", f"value must be bytes, got {type(value).__name__}")
    if len(value) > MAX_VALUE_BYTES:
        raise _fail(kind, ns, name, "", f"value is too large ({len(value)} bytes)")
    try:
        raw = value if isinstance(value, bytes | str) else bytes(value)
        d = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError, TypeError) as exc:
        raise _fail(kind, ns, name, "", f"value is not valid JSON: {str(exc)[:200]}") from None
    if type(d) is dict:
        meta = d.get("metadata")
        if type(meta) is dict:
            meta["resourceVersion"] = str(mod_revision)
    try:
        r = resource_from_dict(d)
    except ValidationError as exc:
        raise ValidationError(
            FieldError(kind, ns, name, e.field, e.message) for e in exc.errors
        ) from None
    except RecursionError:
        raise _fail(kind, ns, name, "", "value is nested too deeply") from None
    except Exception as exc:  # never let bad data crash a reader; keep the evidence in the log
        log.exception("codec.decode_bug key=%s", key)
        raise _fail(kind, ns, name, "", f"could not decode value: {exc!r}"[:300]) from None
    problems = []
    if r.kind != kind:
        problems.append(FieldError(kind, ns, name, "kind", f"{r.kind} stored under a {kind} key"))
    if r.metadata.namespace != ns:
        problems.append(
            FieldError(
                kind,
                ns,
                name,
                "metadata.namespace",
                f"{r.metadata.namespace!r} does not match the key's namespace {ns!r}",
            )
        )
    if r.metadata.name != name:
        problems.append(
            FieldError(
                kind,
                ns,
                name,
                "metadata.name",
                f"{r.metadata.name!r} does not match the key's name {name!r}",
            )
        )
    if problems:
        raise ValidationError(problems)
    return r
