"""Declarative field schemas: JSON <-> typed frozen dataclasses, with validation.

Role: the machinery behind ``datastore.model``. A ``Schema`` lists the ``Field``s of one frozen
dataclass (Python attribute, Calico JSON name, ``FieldType``, default, required); from that one
list it parses a JSON object into the dataclass (collecting *every* problem with its dotted path),
and renders the dataclass back to Calico JSON in a stable key order (the schema's order, which
follows Calico's Go struct order), omitting unset optional fields.

Inputs: whatever ``json.loads`` produced (untrusted: any type anywhere). Outputs: dataclass
instances whose values are immutable and hashable (``ipaddress`` objects, ``Selector``s,
``Rule``s, tuples, ``FrozenMap``s), or problems recorded in an ``Errors`` collector.

Invariants:
* ``parse`` never raises for bad input; it records problems and returns ``INVALID``.
* ``schema.parse(schema.render(x)) == x`` for every ``x`` that ``parse`` produced.
* JSON ``null`` means "absent" (as Go's decoder treats it), so ``{"node": null}`` == ``{}``.
* A struct with an invalid field value is not cross-checked (its ``finish`` hook is skipped),
  so one mistake is reported once, not again as a knock-on error.

Pure code, no I/O.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
)
from typing import Any, Final, TypeAlias, TypeVar, final

from policy.rules import RuleError, parse_rules, rule_to_dict
from policy.selector import SelectorError
from policy.selector import parse as parse_selector

__all__ = [
    "INVALID",
    "ASNumberType",
    "AnyType",
    "BoolType",
    "DurationType",
    "EnumType",
    "Errors",
    "Field",
    "FieldType",
    "FloatType",
    "FrozenMap",
    "IPAddress",
    "IPAddressType",
    "IPInterface",
    "IPInterfaceType",
    "IPNetwork",
    "IPNetworkType",
    "IntType",
    "ListType",
    "OpaqueType",
    "RulesType",
    "Schema",
    "SelectorType",
    "StrMapType",
    "StrType",
    "StructType",
    "cached_check",
    "check_dns_label",
    "check_dns_subdomain",
    "check_label_key",
    "check_label_value",
    "format_duration",
    "freeze_json",
    "json_type_name",
    "parse_duration",
    "thaw_json",
]

IPAddress: TypeAlias = IPv4Address | IPv6Address
IPNetwork: TypeAlias = IPv4Network | IPv6Network
IPInterface: TypeAlias = IPv4Interface | IPv6Interface

K = TypeVar("K")
V = TypeVar("V")


@final
class _Invalid:
    """Marker returned by parsers for a value that had problems (never stored in a model)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "INVALID"


INVALID: Final = _Invalid()


class Errors:
    """Collects ``(dotted path, message)`` problems while parsing continues."""

    __slots__ = ("items",)

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, path: str, message: str) -> None:
        self.items.append((path, message))

    def __len__(self) -> int:
        return len(self.items)

    def __bool__(self) -> bool:
        return bool(self.items)


def json_type_name(value: object) -> str:
    """The JSON name of a decoded value's type, for messages ("expected a string, got list")."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


# --------------------------------------------------------------------------- frozen values


class FrozenMap(Mapping[K, V]):
    """An immutable, hashable mapping that keeps insertion order (labels, opaque JSON objects).

    Equal to any ``Mapping`` with the same items (order does not matter for equality).
    """

    __slots__ = ("_d", "_h")

    def __init__(self, items: Mapping[K, V] | Sequence[tuple[K, V]] = ()) -> None:
        self._d: dict[K, V] = dict(items)
        self._h: int | None = None

    def __getitem__(self, key: K) -> V:
        return self._d[key]

    def __iter__(self) -> Iterator[K]:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)

    def __contains__(self, key: object) -> bool:
        return key in self._d

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FrozenMap):
            return self._d == other._d
        if isinstance(other, Mapping):
            return self._d == dict(other)
        return NotImplemented

    def __hash__(self) -> int:
        if self._h is None:
            self._h = hash(frozenset(self._d.items()))
        return self._h

    def __repr__(self) -> str:
        return f"FrozenMap({self._d!r})"

    def to_dict(self) -> dict[K, V]:
        """A fresh, mutable copy."""
        return dict(self._d)


EMPTY_MAP: Final[FrozenMap[Any, Any]] = FrozenMap()


def freeze_json(value: object) -> object:
    """Recursively turn decoded JSON into hashable values (dict -> FrozenMap, list -> tuple)."""
    if isinstance(value, dict):
        return FrozenMap({k: freeze_json(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(freeze_json(v) for v in value)
    return value


def thaw_json(value: object) -> object:
    """Inverse of ``freeze_json``: plain dicts and lists again."""
    if isinstance(value, FrozenMap):
        return {k: thaw_json(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [thaw_json(v) for v in value]
    return value


# --------------------------------------------------------------------------- name rules

_DNS_LABEL_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_NAME_RE = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")

_CACHE_LIMIT = 50_000


def cached_check(check: Callable[[str], str | None]) -> Callable[[str], str | None]:
    """Memoise a pure string check (names, label keys repeat across 100k endpoints)."""
    good: set[str] = set()

    def wrapper(text: str) -> str | None:
        if text in good:
            return None
        problem = check(text)
        if problem is None:
            if len(good) >= _CACHE_LIMIT:
                good.clear()
            good.add(text)
        return problem

    wrapper.__doc__ = check.__doc__
    return wrapper


@cached_check
def check_dns_subdomain(text: str) -> str | None:
    """Problem with a DNS-1123 subdomain name (Calico's resource name rule), or None."""
    if not text:
        return "must not be empty"
    if len(text) > 253:
        return f"must be at most 253 characters (is {len(text)})"
    if _DNS_SUBDOMAIN_RE.fullmatch(text) is None:
        return (
            f"{text!r} is not a valid name: lower case alphanumerics, '-' and '.', "
            "starting and ending with an alphanumeric"
        )
    return None


@cached_check
def check_dns_label(text: str) -> str | None:
    """Problem with a DNS-1123 label (namespaces, tier names), or None."""
    if not text:
        return "must not be empty"
    if len(text) > 63:
        return f"must be at most 63 characters (is {len(text)})"
    if _DNS_LABEL_RE.fullmatch(text) is None:
        return (
            f"{text!r} is not a valid DNS label: lower case alphanumerics and '-', "
            "starting and ending with an alphanumeric"
        )
    return None


@cached_check
def check_label_key(text: str) -> str | None:
    """Problem with a Kubernetes label/annotation key (``[prefix/]name``), or None."""
    prefix, slash, name = text.rpartition("/")
    if slash:
        if not prefix:
            return f"label key {text!r} has an empty prefix"
        if len(prefix) > 253 or _DNS_SUBDOMAIN_RE.fullmatch(prefix) is None:
            return f"label key prefix {prefix!r} must be a DNS-1123 subdomain"
    if not name:
        return f"label key {text!r} has an empty name"
    if len(name) > 63:
        return f"label key name {name!r} must be at most 63 characters"
    if _LABEL_NAME_RE.fullmatch(name) is None:
        return (
            f"label key name {name!r} must be alphanumerics, '-', '_' or '.', "
            "starting and ending with an alphanumeric"
        )
    return None


@cached_check
def check_label_value(text: str) -> str | None:
    """Problem with a Kubernetes label value, or None (the empty value is valid)."""
    if not text:
        return None
    if len(text) > 63:
        return f"label value {text!r} must be at most 63 characters"
    if _LABEL_NAME_RE.fullmatch(text) is None:
        return (
            f"label value {text!r} must be alphanumerics, '-', '_' or '.', "
            "starting and ending with an alphanumeric"
        )
    return None


# --------------------------------------------------------------------------- durations

_DURATION_UNITS: Final[dict[str, int]] = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "μs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "h": 3600 * 1_000_000_000,
}
_DURATION_PART = re.compile(r"([0-9]*(?:\.[0-9]*)?)(ns|us|µs|μs|ms|s|m|h)")
_MAX_DURATION_NS = (1 << 63) - 1


def parse_duration(text: str) -> float:
    """Parse a Go duration string ("90s", "1m30s", "1.5h", "250ms", "0") into seconds.

    Raises ``ValueError`` for anything Go's ``time.ParseDuration`` would reject.
    """
    s = text
    sign = 1
    if s[:1] in ("+", "-"):
        sign = -1 if s[0] == "-" else 1
        s = s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise ValueError(f"invalid duration {text!r}")
    total = 0
    pos = 0
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if m is None or m.group(1) in ("", "."):
            raise ValueError(f"invalid duration {text!r}: expected e.g. '90s', '1m30s', '250ms'")
        whole, _, frac = m.group(1).partition(".")
        unit = _DURATION_UNITS[m.group(2)]
        total += int(whole or "0") * unit
        if frac:
            total += int(frac) * unit // (10 ** len(frac))
        if total > _MAX_DURATION_NS:
            raise ValueError(f"invalid duration {text!r}: out of range")
        pos = m.end()
    return sign * total / 1e9


def _fmt_frac(value: int, scale: int) -> str:
    """``value/scale`` as Go prints it: integer part, then the fraction without trailing 0s."""
    whole, frac = divmod(value, scale)
    if not frac:
        return str(whole)
    digits = len(str(scale)) - 1
    return f"{whole}.{frac:0{digits}d}".rstrip("0")


def format_duration(seconds: float) -> str:
    """Render seconds the way Go's ``time.Duration.String()`` does ("1m30s", "250ms", "0s")."""
    ns = round(seconds * 1e9)
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns < 1_000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return f"{sign}{_fmt_frac(ns, 1_000)}µs"
    if ns < 1_000_000_000:
        return f"{sign}{_fmt_frac(ns, 1_000_000)}ms"
    hours, rest = divmod(ns, 3600 * 1_000_000_000)
    minutes, rest = divmod(rest, 60 * 1_000_000_000)
    secs = _fmt_frac(rest, 1_000_000_000)
    if hours:
        return f"{sign}{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{sign}{minutes}m{secs}s"
    return f"{sign}{secs}s"


# --------------------------------------------------------------------------- field types


class FieldType:
    """How one JSON value is parsed, validated and rendered. Subclasses override both."""

    __slots__ = ()

    def parse(self, raw: object, path: str, errs: Errors) -> object:
        raise NotImplementedError

    def render(self, value: Any) -> object:
        return value


class AnyType(FieldType):
    """Any JSON scalar-or-structure, kept verbatim (frozen). Used for opaque values."""

    __slots__ = ()

    def parse(self, raw: object, path: str, errs: Errors) -> object:
        return freeze_json(raw)

    def render(self, value: Any) -> object:
        return thaw_json(value)


OpaqueType = AnyType


class StrType(FieldType):
    """A string, optionally checked (``check`` returns a problem or None) and length-limited."""

    __slots__ = ("check", "max_len")

    def __init__(
        self, check: Callable[[str], str | None] | None = None, max_len: int = 4096
    ) -> None:
        self.check = check
        self.max_len = max_len

    def parse(self, raw: object, path: str, errs: Errors) -> object:
        if type(raw) is not str:
            errs.add(path, f"expected a string, got {json_type_name(raw)}")
            return INVALID
        if len(raw) > self.max_len:
            errs.add(path, f"must be at most {self.max_len} characters (is {len(raw)})")
            return INVALID
        if self.check is not None and raw:
            problem = self.check(raw)
            if problem is not None:
                errs.add(path, problem)
                return INVALID
        return raw


class EnumType(FieldType):
    """One of a fixed set of strings; ``fold`` accepts any case and stores the canonical one."""

    __slots__ = ("by_key", "fold", "values")

    def __init__(self, *values: str, fold: bool = False) -> None:
        self.values = values
        self.fold = fold
        self.by_key = {(v.lower() if fold else v): v for v in values}

    def parse(self, raw: object, path: str, errs: Errors) -> object:
        if type(raw) is not str:
            errs.add(path, f"expected a string, got {json_type_name(raw)}")
            return INVALID
        if not raw:
            return None  # Go's omitempty: "" is unset
        hit = self.by_key.get(raw.lower() if self.fold else raw)
        if hit is None:
            errs.add(path, f"invalid value {raw[:80]!r}: expected one of {', '.join(self.values)}")
            return INVALID
        return hit


class BoolType(FieldType):
    __slots__ = ()

    def parse(self, raw: object, path: str, errs: Errors) -> object:
        if type(raw) is not bool:
            errs.add(path, f"expected a boolean, got {json_type_name(raw)}")
            return INVALID
        return raw


class IntType(FieldType):
    """An integer in ``[low, high]`` (JSON numbers with no fraction, e.g. ``3.0``, accepted)."""

    __slots__ = ("high", "low")

    def __init__(self, low: int = -(1 << 63), high: int = (1 << 63) - 1) -> None:
        self.low = low
        self.high = high

    def parse(self, raw: object, path: str, errs: Errors) -> object:
        if type(raw) is int:
            value = raw
        elif type(raw) is float and raw.is_integer():
            value = int(raw)
        else:
            errs.add(path, f"expected an integer, got {json_type_name(raw)}")
            return INVALID
        if not self.low <= value <= self.high:
            errs.add(path, f"{value} is out of range {self.low}..{self.high}")
            return INVALID
        return value


class FloatType(FieldType):
    """A finite number, stored as float, rendered as an integer when it has no fraction."""

    __slots__ = ()

    def parse(self, raw: object, path: str, errs: Errors) -> object:
        if type(raw) not in (int, float):
            errs.add(path, f"expected a number, got {json_type_name(raw)}")
            return INVALID
        value = float(raw)  # type: ignore[arg-type]
        if not math.isfinite(value):
            errs.add(path, "must be a finite number")
            return INVALID
        return value

    def render(self, value: Any) -> object:
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
            return int(value)
        return value


def _version_problem(version: int | None, got: int) -> str | None:
    if version is not None and got != version:
        return f"expected an IPv{version} value, got IPv{got}"
    return None


class IPAddressType(FieldType):
    """A plain IP address (no prefix), optionally of one IP version."""

    __slots__ = ("version",)

    def __init__(self, version: int | None = None) -> None:
        self.version = version

    def parse(self, raw: object, path: str, errs: Errors) -> object:
        if type(raw) is not str:
            errs.add(path, f"expected an IP address string, got {json_type_name(raw)}")
            return INVALID
        if not raw:
            return None  # Go's omitempty: "" is unset
        try:
            addr = ipaddress.ip_address(raw)
        except ValueError:
            errs.add(path, f"invalid IP address {raw[:80]!r}")
            return INVALID
        problem = _version_problem(self.version, addr.version)
        if problem:
            errs.add(path, f"{problem} ({raw})")
            return INVALID
        return addr

    def render(self, value: Any) -> object:
        return str(value)


class IPNetworkType(FieldType):
    """A CIDR (a bare address means /32 or /128).

    ``strict``: host bits must be zero (else they are masked off); ``host_only``: the network
    must be a single address (/32, /128), as Calico requires for endpoint ``ipNetworks``.
    """

    __slots__ = ("host_only", "strict", "version")

    def __init__(
        self, version: int | None = None, *, strict: bool = False, host_only: bool = False
    ) -> None:
        self.version = version
        self.strict = strict
        self.host_only = host_only

    def parse(self, raw: object, path: str, errs: Errors) -> object:
        if type(raw) is not str:
            errs.add(path, f"expected a CIDR string, got {json_type_name(raw)}")
            return INVALID
        if not raw:
            return None  # Go's omitempty: "" is unset
        try:
            net = ipaddress.ip_network(raw, strict=False)
        except ValueError:
            errs.add(path, f"invalid CIDR {raw[:80]!r}")
            return INVALID
        problem = _version_problem(self.version, net.version)
        if problem:
            errs.add(path, f"{problem} ({raw})")
            return INVALID
        if self.host_only and net.prefixlen != net.max_prefixlen:
            errs.add(path, f"{raw} contains multiple addresses; expected a /32 or /128")
            return INVALID
        if self.strict and "/" in raw:
            addr = raw.partition("/")[0]
            try:
                exact = ipaddress.ip_address(addr) == net.network_address
            except ValueError:
                exact = False
            if not exact:
                errs.add(path, f"CIDR {raw} is not strictly masked (did you mean {net}?)")
                return INVALID
        return net

    def render(self, value: Any) -> object:
        return str(value)


class IPInterfaceType(FieldType):
    """An address with an optional prefix length ("198.51.100.2/24").

    ``bare_if_host``: render a full-length prefix as a bare address (Node ``addresses``).
    """

    __slots__ = ("bare_if_host", "require_prefix", "version")

    def __init__(
        self,
        version: int | None = None,
        *,
        bare_if_host: bool = False,
        require_prefix: bool = False,
    ) -> None:
        self.version = version
        self.bare_if_host = bare_if_host
        self.require_prefix = require_prefix

    def parse(self, raw: object, path: str, errs: Errors) -> object:
        if type(raw) is not str:
            errs.add(path, f"expected an address string, got {json_type_name(raw)}")
            return INVALID
        if not raw:
            return None  # Go's omitempty: "" is unset
        if self.require_prefix and "/" not in raw:
            errs.add(path, f"{raw[:80]!r} needs a prefix length, e.g. '198.51.100.2/24'")
            return INVALID
        try:
            iface = ipaddress.ip_interface(raw)
        except ValueError:
            errs.add(path, f"invalid IP address/prefix {raw[:80]!r}")
            return INVALID
        problem = _version_problem(self.version, iface.version)
        if problem:
            errs.add(path, f"{problem} ({raw})")
            return INVALID
        return iface

    def render(self, value: Any) -> object:
        if self.bare_if_host and value.network.prefixlen == value.max_prefixlen:
            return str(value.ip)
        return str(value)


class DurationType(FieldType):
    """A Go duration string ("90s", "1m30s"), stored as float seconds, rendered the Go way."""

    __slots__ = ("minimum",)

    def __init__(self, minimum: float = 0.0) -> None:
        self.minimum = minimum

    def parse(self, raw: object, path: str, errs: Errors) -> object:
        if type(raw) is not str:
            errs.add(path, f"expected a duration string such as '90s', got {json_type_name(raw)}")
            return INVALID
        try:
            seconds = parse_duration(raw)
        except ValueError as exc:
            errs.add(path, str(exc))
            return INVALID
        if seconds < self.minimum:
            errs.add(path, f"duration {raw} must be at least {format_duration(self.minimum)}")
            return INVALID
        return seconds

    def render(self, value: Any) -> object:
        return format_duration(value)


_ASDOT = re.compile(r"([0-9]{1,5})\.([0-9]{1,5})")


class ASNumberType(FieldType):
    """A BGP AS number: integer, digit string, or asdot "a.b"; stored as int 1..4294967295."""

    __slots__ = ()

    def parse(self, raw: object, path: str, errs: Errors) -> object:
        value: int | None = None
        if type(raw) is int:
            value = raw
        elif type(raw) is str:
            if raw.isascii() and raw.isdigit() and len(raw) <= 10:
                value = int(raw)
            else:
                m = _ASDOT.fullmatch(raw)
                if m and int(m.group(1)) <= 0xFFFF and int(m.group(2)) <= 0xFFFF:
                    value = (int(m.group(1)) << 16) | int(m.group(2))
        if value is None:
            errs.add(path, f"invalid AS number {str(raw)[:80]!r}")
            return INVALID
        if not 1 <= value <= 0xFFFFFFFF:
            errs.add(path, f"AS number {value} is out of range 1..4294967295")
            return INVALID
        return value


class SelectorType(FieldType):
    """A Calico selector expression, parsed by ``policy.selector``; "" means absent (None)."""

    __slots__ = ("allow_global",)

    def __init__(self, *, allow_global: bool = False) -> None:
        self.allow_global = allow_global

    def parse(self, raw: object, path: str, errs: Errors) -> object:
        if type(raw) is not str:
            errs.add(path, f"expected a selector string, got {json_type_name(raw)}")
            return INVALID
        if not raw.strip():
            return None
        if len(raw) > 4096:
            errs.add(path, f"selector is too long ({len(raw)} characters, at most 4096)")
            return INVALID
        try:
            sel = parse_selector(raw)
        except SelectorError as exc:
            errs.add(path, f"invalid selector: {exc}")
            return INVALID
        except (ValueError, RecursionError) as exc:  # defensive: never escape the parser
            errs.add(path, f"invalid selector: {exc}")
            return INVALID
        if not self.allow_global and "global(" in str(sel):
            errs.add(path, "global() can only be used in a rule's namespaceSelector")
            return INVALID
        return sel

    def render(self, value: Any) -> object:
        return str(value)


class RulesType(FieldType):
    """A list of Calico policy rules, parsed by ``policy.rules`` (every problem reported)."""

    __slots__ = ()

    def parse(self, raw: object, path: str, errs: Errors) -> object:
        try:
            return parse_rules(raw, path)
        except RuleError as exc:
            for err in exc.errors:
                errs.add(err.field, err.message)
            return INVALID
        except (ValueError, RecursionError) as exc:  # defensive: never escape the parser
            errs.add(path, f"invalid rules: {exc}")
            return INVALID

    def render(self, value: Any) -> object:
        return [rule_to_dict(r) for r in value]


class ListType(FieldType):
    """A JSON list of one item type, stored as a tuple. ``unique`` rejects repeated items."""

    __slots__ = ("item", "max_items", "unique")

    def __init__(self, item: FieldType, *, unique: bool = False, max_items: int = 100_000) -> None:
        self.item = item
        self.unique = unique
        self.max_items = max_items

    def parse(self, raw: object, path: str, errs: Errors) -> object:
        if type(raw) is not list:
            errs.add(path, f"expected a list, got {json_type_name(raw)}")
            return INVALID
        if len(raw) > self.max_items:
            errs.add(path, f"too many items ({len(raw)}, at most {self.max_items})")
            return INVALID
        out = []
        ok = True
        parse = self.item.parse
        for i, item in enumerate(raw):
            value = parse(item, f"{path}[{i}]", errs)
            if value is INVALID:
                ok = False
            elif value is None:
                errs.add(f"{path}[{i}]", "empty value")
                ok = False
            elif self.unique and value in out:
                errs.add(f"{path}[{i}]", f"duplicate value {str(item)[:80]!r}")
                ok = False
            else:
                out.append(value)
        return tuple(out) if ok else INVALID

    def render(self, value: Any) -> object:
        render = self.item.render
        return [render(v) for v in value]


class StrMapType(FieldType):
    """A JSON object of string -> string (labels, annotations), stored as a ``FrozenMap``.

    ``key_check``/``value_check`` return a problem or None; ``max_bytes`` bounds the total size.
    """

    __slots__ = ("key_check", "max_bytes", "value_check")

    def __init__(
        self,
        key_check: Callable[[str], str | None] | None = check_label_key,
        value_check: Callable[[str], str | None] | None = check_label_value,
        max_bytes: int = 256 * 1024,
    ) -> None:
        self.key_check = key_check
        self.value_check = value_check
        self.max_bytes = max_bytes

    def parse(self, raw: object, path: str, errs: Errors) -> object:
        if type(raw) is not dict:
            errs.add(path, f"expected an object of strings, got {json_type_name(raw)}")
            return INVALID
        ok = True
        size = 0
        key_check = self.key_check
        value_check = self.value_check
        for key, value in raw.items():
            if type(value) is not str:
                errs.add(f"{path}.{key}", f"expected a string, got {json_type_name(value)}")
                ok = False
                continue
            size += len(key) + len(value)
            if key_check is not None:
                problem = key_check(key)
                if problem is not None:
                    errs.add(f"{path}.{key}", problem)
                    ok = False
                    continue
            if value_check is not None:
                problem = value_check(value)
                if problem is not None:
                    errs.add(f"{path}.{key}", problem)
                    ok = False
        if size > self.max_bytes:
            errs.add(path, f"total size {size} bytes exceeds {self.max_bytes}")
            ok = False
        if not ok:
            return INVALID
        return FrozenMap(raw) if raw else EMPTY_MAP

    def render(self, value: Any) -> object:
        return dict(value)


# --------------------------------------------------------------------------- structs


@dataclass(frozen=True, slots=True)
class Field:
    """One field of a schema: Python attribute, Calico JSON name, type, default, flags.

    ``default`` must be immutable; it is what a missing (or null) JSON value becomes and is the
    value omitted on render (unless ``always``). ``required`` fields must be present and
    non-empty.
    """

    attr: str
    json: str
    type: FieldType
    default: object = None
    required: bool = False
    always: bool = False


def field(
    attr: str,
    json: str,
    ftype: FieldType,
    default: object = None,
    *,
    required: bool = False,
    always: bool = False,
) -> Field:
    """Shorthand constructor for ``Field``."""
    return Field(attr, json, ftype, default, required, always)


Finish = Callable[[Any, str, Errors], Any]


def _is_empty(value: object) -> bool:
    return value is None or (isinstance(value, str | tuple | FrozenMap) and not value)


class Schema:
    """The fields of one frozen dataclass plus an optional cross-field ``finish`` hook.

    ``opaque`` lists further JSON names that are accepted and preserved verbatim (frozen, in
    key order) in the ``FrozenMap`` attribute ``opaque_attr``; any other name is an error.

    ``finish(obj, path, errs)`` runs when every present field parsed (required ones may be
    missing, so it must tolerate defaults); it records cross-field problems and returns the
    object, possibly with derived defaults filled in via ``dataclasses.replace``.
    """

    __slots__ = (
        "_fast",
        "_required",
        "by_json",
        "cls",
        "fields",
        "finish",
        "name",
        "opaque",
        "opaque_attr",
    )

    def __init__(
        self,
        cls: type[Any],
        fields: Sequence[Field],
        finish: Finish | None = None,
        *,
        opaque: Sequence[str] = (),
        opaque_attr: str = "extra",
    ) -> None:
        self.cls = cls
        self.fields = tuple(fields)
        self.by_json = {f.json: f for f in self.fields}
        self.finish = finish
        self.name = cls.__name__
        self.opaque = frozenset(opaque)
        self.opaque_attr = opaque_attr
        # Hot path (100k endpoints at start-up): JSON name -> (attribute, bound parse method).
        self._fast = {f.json: (f.attr, f.type.parse) for f in self.fields}
        self._required = tuple(f for f in self.fields if f.required)
        if self.opaque & set(self.by_json):
            raise AssertionError(f"opaque and typed fields overlap in schema of {cls.__name__}")
        attrs = {f.attr for f in self.fields}
        if len(attrs) != len(self.fields) or len(self.by_json) != len(self.fields):
            raise AssertionError(f"duplicate field in schema of {cls.__name__}")

    def parse(self, raw: object, path: str, errs: Errors) -> object:
        """Parse a decoded JSON object at ``path``; returns an instance or ``INVALID``."""
        if type(raw) is not dict:
            errs.add(path, f"expected an object, got {json_type_name(raw)}")
            return INVALID
        before = len(errs.items)
        fast = self._fast
        kwargs: dict[str, object] = {}
        bad: list[str] = []
        extra: dict[str, object] = {}
        for key, value in raw.items():
            hit = fast.get(key)
            if hit is None:
                if key in self.opaque:
                    if value is not None:
                        extra[key] = freeze_json(value)
                    continue
                errs.add(f"{path}.{key}" if path else str(key), "unknown field")
                continue
            if value is None:
                continue
            attr, parse = hit
            parsed = parse(value, f"{path}.{key}", errs)
            if parsed is INVALID:
                bad.append(attr)
            elif parsed is not None:
                kwargs[attr] = parsed
        for f in self._required:
            if f.attr not in bad and _is_empty(kwargs.get(f.attr)):
                errs.add(f"{path}.{f.json}" if path else f.json, "required field is missing")
        if bad:
            return INVALID
        if extra:
            kwargs[self.opaque_attr] = FrozenMap(sorted(extra.items()))
        # Missing or unknown fields leave a well-typed object: still cross-check it so that
        # the report is complete, but do not return it.
        obj = self.cls(**kwargs)
        if self.finish is not None:
            obj = self.finish(obj, path, errs)
        if len(errs.items) > before:
            return INVALID
        return obj

    def render(self, obj: object) -> dict[str, object]:
        """Calico JSON for ``obj``: schema order, unset optional fields omitted."""
        out: dict[str, object] = {}
        for f in self.fields:
            value = getattr(obj, f.attr)
            if value is None:
                continue
            if not f.always and value == f.default:
                continue
            out[f.json] = f.type.render(value)
        if self.opaque:
            for key, value in getattr(obj, self.opaque_attr).items():
                out[key] = thaw_json(value)
        return out


class StructType(FieldType):
    """A nested object described by a ``Schema``."""

    __slots__ = ("schema",)

    def __init__(self, schema: Schema) -> None:
        self.schema = schema

    def parse(self, raw: object, path: str, errs: Errors) -> object:
        return self.schema.parse(raw, path, errs)

    def render(self, value: Any) -> object:
        return self.schema.render(value)
