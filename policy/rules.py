"""Calico v3 policy rule model: parse, validate and render ``Rule`` / ``EntityRule``.

Role
    Turn the JSON-decoded ``ingress`` / ``egress`` rules of a Calico v3 (Global)NetworkPolicy or
    Profile into frozen, hashable values, validating them the way Calico's API validation does,
    and render them back into canonical Calico JSON.

Inputs
    ``data``: whatever ``json.loads`` produced for one rule (``parse_rule``) or for a list of
    rules (``parse_rules``). Nothing is trusted: wrong types, unknown keys and bad values are
    reported as ``RuleError`` naming the dotted field path (``ingress[2].destination.ports[0]``).

Outputs
    ``Rule`` values (``ipaddress`` networks, ``Selector`` objects from ``policy.selector``,
    IANA protocol numbers, ``PortRange`` / ``NamedPort``), or every problem found in the input
    (``validate_rule`` / ``validate_rules``, or ``RuleError.errors`` on the raised error).

Modelled
    ``action``, ``ipVersion``, ``protocol``, ``notProtocol``, ``icmp``, ``notICMP``,
    ``source`` / ``destination`` (``nets``, ``notNets``, ``selector``, ``notSelector``,
    ``namespaceSelector``, ``ports``, ``notPorts``, ``serviceAccounts`` {names, selector}),
    ``metadata`` {annotations}.

Rejected (clear ``RuleError``)
    ``http`` (application-layer policy needs a proxy we do not have) and the entity rule's
    ``services`` (needs Service/Endpoints resolution we do not have). Rejecting is deliberate:
    silently ignoring a match field would make a rule match more traffic than its author meant.

Invariants
    * ``parse_rule(rule_to_dict(r)) == r`` for every rule ``parse_rule`` returns, and
      ``rule_to_dict`` is canonical (equal rules render to equal dicts).
    * A parsed rule satisfies Calico's cross-field checks: ports only with protocol TCP, UDP
      or SCTP; ``icmp`` / ``notICMP`` only with protocol ICMP or ICMPv6; ICMP needs ipVersion 4
      (or none), ICMPv6 ipVersion 6 (or none); every net has the rule's IP version and a rule
      never mixes IPv4 and IPv6 nets.
    * Numeric ports are 1..65535 (Calico rejects port 0), ranges have ``first <= last``.
    * Empty values (``null``, ``""``, ``[]``, ``{}``) mean "absent", as Calico's ``omitempty``
      Go structs treat them; they render as absent.
    * Nets are normalised with host bits masked off (``10.0.0.1/24`` -> ``10.0.0.0/24``); a
      bare address is a /32 or /128. ``serviceAccounts.names`` is sorted and de-duplicated.

Constructing ``Rule`` / ``EntityRule`` directly bypasses validation; use ``parse_rule``.
Pure code: no I/O.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network
from typing import Any, TypeVar

from policy.selector import Selector, SelectorError
from policy.selector import parse as parse_selector

__all__ = [
    "PROTOCOL_NAMES",
    "Action",
    "EntityRule",
    "ICMPMatch",
    "NamedPort",
    "Port",
    "PortRange",
    "Rule",
    "RuleError",
    "ServiceAccountMatch",
    "parse_rule",
    "parse_rules",
    "protocol_name",
    "protocol_number",
    "rule_to_dict",
    "validate_rule",
    "validate_rules",
]

T = TypeVar("T")


# --------------------------------------------------------------------------- errors


class RuleError(ValueError):
    """A rule is invalid.

    ``field`` is the dotted path of the offending field relative to what the caller passed in,
    prefixed with the caller's ``field`` argument (``"ingress[2].destination.ports[1]"``; ``""``
    when the rule itself is the problem and no prefix was given). ``message`` says what is wrong.

    ``errors`` lists *every* problem found in the input, this one first: ``parse_rule`` /
    ``parse_rules`` raise the first problem and attach all of them, so a caller can report a
    whole document at once.
    """

    field: str
    message: str
    errors: tuple[RuleError, ...]

    def __init__(self, field: str, message: str, errors: Sequence[RuleError] = ()) -> None:
        super().__init__(field, message)
        self.field = field
        self.message = message
        self.errors = tuple(errors) if errors else (self,)

    def __str__(self) -> str:
        text = f"{self.field}: {self.message}" if self.field else self.message
        extra = len(self.errors) - 1
        if extra > 0:
            text += f" (and {extra} more problem{'s' if extra > 1 else ''})"
        return text

    def __repr__(self) -> str:
        return f"RuleError(field={self.field!r}, message={self.message!r})"

    def prefixed(self, prefix: str) -> RuleError:
        """The same problem(s) with ``prefix`` prepended to every field path."""
        fixed = [RuleError(_join(prefix, e.field), e.message) for e in self.errors]
        return RuleError(fixed[0].field, fixed[0].message, fixed)


def _join(prefix: str, name: str) -> str:
    """Join a dotted path: ``_join("a", "b") == "a.b"``; indexes (``[0]``) attach directly."""
    if not prefix:
        return name
    if not name:
        return prefix
    if name.startswith("["):
        return prefix + name
    return f"{prefix}.{name}"


class _Errors:
    """Collects problems while parsing continues, so that all of them can be reported."""

    def __init__(self) -> None:
        self.items: list[RuleError] = []

    def add(self, path: str, message: str) -> None:
        self.items.append(RuleError(path, message))

    def raise_if_any(self) -> None:
        if self.items:
            first = self.items[0]
            raise RuleError(first.field, first.message, self.items)


# --------------------------------------------------------------------------- values


class Action(enum.Enum):
    """What a matching rule does. ``Pass`` skips to the next tier (or the profiles)."""

    ALLOW = "Allow"
    DENY = "Deny"
    LOG = "Log"
    PASS = "Pass"


@dataclass(frozen=True, slots=True)
class PortRange:
    """Ports ``first..last`` inclusive; a single port has ``first == last``."""

    first: int
    last: int


@dataclass(frozen=True, slots=True)
class NamedPort:
    """A named port (Kubernetes ``IANA_SVC_NAME``), resolved against endpoints' ports."""

    name: str


Port = PortRange | NamedPort


@dataclass(frozen=True, slots=True)
class ICMPMatch:
    """ICMP type (0..254) and optional code (0..255)."""

    type: int
    code: int | None = None


@dataclass(frozen=True, slots=True)
class ServiceAccountMatch:
    """Match endpoints by Kubernetes service account: any of ``names`` and/or ``selector``.

    Both parts must match when both are given (Calico semantics). ``names`` is sorted and
    de-duplicated by the parser.
    """

    names: tuple[str, ...] = ()
    selector: Selector | None = None


IPNet = IPv4Network | IPv6Network


@dataclass(frozen=True, slots=True)
class EntityRule:
    """The source or destination half of a rule; every present field must match."""

    nets: tuple[IPNet, ...] = ()
    not_nets: tuple[IPNet, ...] = ()
    selector: Selector | None = None
    not_selector: Selector | None = None
    namespace_selector: Selector | None = None
    ports: tuple[Port, ...] = ()
    not_ports: tuple[Port, ...] = ()
    service_accounts: ServiceAccountMatch | None = None


@dataclass(frozen=True, slots=True)
class Rule:
    """One Calico v3 policy rule.

    ``protocol`` / ``not_protocol`` are IANA numbers (``protocol_name`` gives Calico's
    spelling). ``annotations`` is ``metadata.annotations`` as sorted ``(key, value)`` pairs.
    """

    action: Action
    ip_version: int | None = None
    protocol: int | None = None
    not_protocol: int | None = None
    icmp: ICMPMatch | None = None
    not_icmp: ICMPMatch | None = None
    source: EntityRule = field(default_factory=EntityRule)
    destination: EntityRule = field(default_factory=EntityRule)
    annotations: tuple[tuple[str, str], ...] = ()


# --------------------------------------------------------------------------- protocols

#: Calico's protocol names (canonical spelling) and their IANA numbers.
PROTOCOL_NAMES: Mapping[str, int] = {
    "TCP": 6,
    "UDP": 17,
    "ICMP": 1,
    "ICMPv6": 58,
    "SCTP": 132,
    "UDPLite": 136,
}
_NAME_BY_NUMBER: dict[int, str] = {num: name for name, num in PROTOCOL_NAMES.items()}
_NUMBER_BY_FOLDED: dict[str, int] = {name.lower(): num for name, num in PROTOCOL_NAMES.items()}

_TCP, _UDP, _ICMP, _ICMPV6, _SCTP = 6, 17, 1, 58, 132
_PORT_PROTOCOLS = frozenset({_TCP, _UDP, _SCTP})
_ICMP_PROTOCOLS = frozenset({_ICMP, _ICMPV6})


def protocol_number(name_or_number: str | int) -> int:
    """IANA number of a Calico protocol name (case-insensitive) or number (1..255).

    Numeric strings (``"47"``) are accepted. Raises ``ValueError`` for anything else.
    """
    if isinstance(name_or_number, bool):
        raise ValueError(f"invalid protocol {name_or_number!r}")
    if isinstance(name_or_number, int):
        number = name_or_number
    elif isinstance(name_or_number, str):
        text = name_or_number.strip()
        folded = _NUMBER_BY_FOLDED.get(text.lower())
        if folded is not None:
            return folded
        if not text.isascii() or not text.isdigit():
            names = ", ".join(PROTOCOL_NAMES)
            raise ValueError(
                f"invalid protocol {name_or_number!r}: expected one of {names} or 1..255"
            )
        number = int(text)
    else:
        raise ValueError(f"invalid protocol {name_or_number!r}: expected a name or a number")
    if not 1 <= number <= 255:
        raise ValueError(f"invalid protocol number {number}: expected 1..255")
    return number


def protocol_name(number: int) -> str | int:
    """Calico's name for protocol ``number`` (``6 -> "TCP"``), or the number if it has none."""
    return _NAME_BY_NUMBER.get(number, number)


# --------------------------------------------------------------------------- parsing helpers

_RULE_KEYS = frozenset(
    {
        "action",
        "ipVersion",
        "protocol",
        "notProtocol",
        "icmp",
        "notICMP",
        "source",
        "destination",
        "http",
        "metadata",
    }
)
_ENTITY_KEYS = frozenset(
    {
        "nets",
        "notNets",
        "selector",
        "notSelector",
        "namespaceSelector",
        "ports",
        "notPorts",
        "serviceAccounts",
        "services",
    }
)
_ICMP_KEYS = frozenset({"type", "code"})
_SERVICE_ACCOUNT_KEYS = frozenset({"names", "selector"})
_METADATA_KEYS = frozenset({"annotations"})

_PORT_NAME_CHARS = re.compile(r"^[a-z0-9-]+$")
_PORT_NAME_MAX = 15
_ANNOTATION_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_ANNOTATIONS_MAX_BYTES = 256 * 1024


def _is_empty(value: object) -> bool:
    """Calico's omitempty: null, "", [] and {} all mean "not set"."""
    return value is None or (isinstance(value, str | list | dict) and len(value) == 0)


def _int_in(value: object, low: int, high: int) -> int | None:
    """``value`` if it is an integer (not a boolean) in ``low..high``, else None."""
    if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
        return value
    return None


def _type_name(value: object) -> str:
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


def _check_keys(
    data: Mapping[object, object], allowed: frozenset[str], path: str, errs: _Errors
) -> None:
    for key in data:
        if not isinstance(key, str):
            errs.add(path, f"field names must be strings, got {key!r}")
        elif key not in allowed:
            errs.add(_join(path, key), f"unknown field {key!r}")


def _as_object(
    value: object, path: str, errs: _Errors, what: str
) -> Mapping[object, object] | None:
    if isinstance(value, dict):
        return value
    errs.add(path, f"{what} must be an object, got {_type_name(value)}")
    return None


def _parse_list(
    value: object,
    path: str,
    errs: _Errors,
    item: Callable[[object, str, _Errors], T | None],
) -> tuple[T, ...]:
    """Parse a list item by item; bad items are reported (with their index) and skipped."""
    if _is_empty(value):
        return ()
    if not isinstance(value, list):
        errs.add(path, f"must be a list, got {_type_name(value)}")
        return ()
    out: list[T] = []
    for index, raw in enumerate(value):
        parsed = item(raw, f"{path}[{index}]", errs)
        if parsed is not None:
            out.append(parsed)
    return tuple(out)


def _parse_selector_field(value: object, path: str, errs: _Errors) -> Selector | None:
    if _is_empty(value):
        return None
    if not isinstance(value, str):
        errs.add(path, f"selector must be a string, got {_type_name(value)}")
        return None
    try:
        return parse_selector(value)
    except SelectorError as exc:
        errs.add(path, f"invalid selector: {exc}")
        return None


def _parse_net(value: object, path: str, errs: _Errors) -> IPNet | None:
    if not isinstance(value, str):
        errs.add(path, f"net must be a CIDR string, got {_type_name(value)}")
        return None
    address, slash, prefix_len = value.partition("/")
    # Only "address" or "address/length": no netmask notation, no IPv6 zone (Calico's form).
    if "%" in address or (slash and not (prefix_len.isascii() and prefix_len.isdigit())):
        errs.add(path, f"invalid CIDR or IP address {value!r}")
        return None
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        errs.add(path, f"invalid CIDR or IP address {value!r}")
        return None


def _port_name_problem(name: str) -> str | None:
    """Why ``name`` is not a valid Kubernetes port name (IANA_SVC_NAME), or None."""
    if len(name) > _PORT_NAME_MAX:
        return f"must be no more than {_PORT_NAME_MAX} characters"
    if not _PORT_NAME_CHARS.match(name):
        return "must contain only lower-case letters, digits and '-'"
    if not any("a" <= c <= "z" for c in name):
        return "must contain at least one letter"
    if name.startswith("-") or name.endswith("-"):
        return "must not begin or end with '-'"
    if "--" in name:
        return "must not contain consecutive '-'"
    return None


def _port_number(text: str) -> int | None:
    """``int(text)`` for a plain decimal string, else None."""
    if text.isascii() and text.isdigit():
        return int(text)
    return None


def _parse_port(value: object, path: str, errs: _Errors) -> Port | None:
    if isinstance(value, int) and not isinstance(value, bool):
        if not 1 <= value <= 65535:
            errs.add(path, f"port {value} out of range: expected 1..65535")
            return None
        return PortRange(value, value)
    if not isinstance(value, str):
        errs.add(path, f"port must be a number or a string, got {_type_name(value)}")
        return None
    number = _port_number(value)
    if number is not None:
        if not 1 <= number <= 65535:
            errs.add(path, f"port {number} out of range: expected 1..65535")
            return None
        return PortRange(number, number)
    if ":" in value:
        parts = value.split(":")
        bounds = [_port_number(p) for p in parts]
        if len(parts) != 2 or bounds[0] is None or bounds[1] is None:
            errs.add(path, f"invalid port range {value!r}: expected 'min:max'")
            return None
        first, last = bounds[0], bounds[1]
        if not (1 <= first <= 65535 and 1 <= last <= 65535):
            errs.add(path, f"invalid port range {value!r}: ports must be 1..65535")
            return None
        if first > last:
            errs.add(path, f"invalid port range {value!r}: min is greater than max")
            return None
        return PortRange(first, last)
    problem = _port_name_problem(value)
    if problem is not None:
        errs.add(path, f"invalid port name {value!r}: {problem}")
        return None
    return NamedPort(value)


def _parse_icmp(value: object, path: str, errs: _Errors) -> ICMPMatch | None:
    if _is_empty(value):
        return None
    obj = _as_object(value, path, errs, "ICMP match")
    if obj is None:
        return None
    _check_keys(obj, _ICMP_KEYS, path, errs)
    raw_type = obj.get("type")
    raw_code = obj.get("code")
    icmp_type = _int_in(raw_type, 0, 254)
    code = _int_in(raw_code, 0, 255)
    ok = True
    if raw_type is not None and icmp_type is None:
        errs.add(_join(path, "type"), f"ICMP type must be an integer 0..254, got {raw_type!r}")
        ok = False
    if raw_code is not None and code is None:
        errs.add(_join(path, "code"), f"ICMP code must be an integer 0..255, got {raw_code!r}")
        ok = False
    if raw_code is not None and raw_type is None:
        errs.add(_join(path, "code"), "ICMP code specified without an ICMP type")
        ok = False
    if not ok or icmp_type is None:
        return None
    return ICMPMatch(icmp_type, code)


def _parse_service_accounts(value: object, path: str, errs: _Errors) -> ServiceAccountMatch | None:
    if _is_empty(value):
        return None
    obj = _as_object(value, path, errs, "serviceAccounts")
    if obj is None:
        return None
    _check_keys(obj, _SERVICE_ACCOUNT_KEYS, path, errs)

    def name_item(raw: object, item_path: str, item_errs: _Errors) -> str | None:
        if not isinstance(raw, str) or not raw:
            item_errs.add(
                item_path, f"service account name must be a non-empty string, got {raw!r}"
            )
            return None
        return raw

    names = _parse_list(obj.get("names"), _join(path, "names"), errs, name_item)
    selector = _parse_selector_field(obj.get("selector"), _join(path, "selector"), errs)
    if not names and selector is None:
        return None
    return ServiceAccountMatch(tuple(sorted(set(names))), selector)


def _parse_entity(value: object, path: str, errs: _Errors) -> EntityRule:
    if _is_empty(value):
        return EntityRule()
    obj = _as_object(value, path, errs, "entity rule")
    if obj is None:
        return EntityRule()
    _check_keys(obj, _ENTITY_KEYS, path, errs)
    if not _is_empty(obj.get("services")):
        errs.add(_join(path, "services"), "matching on Kubernetes services is not supported")
    return EntityRule(
        nets=_parse_list(obj.get("nets"), _join(path, "nets"), errs, _parse_net),
        not_nets=_parse_list(obj.get("notNets"), _join(path, "notNets"), errs, _parse_net),
        selector=_parse_selector_field(obj.get("selector"), _join(path, "selector"), errs),
        not_selector=_parse_selector_field(
            obj.get("notSelector"), _join(path, "notSelector"), errs
        ),
        namespace_selector=_parse_selector_field(
            obj.get("namespaceSelector"), _join(path, "namespaceSelector"), errs
        ),
        ports=_parse_list(obj.get("ports"), _join(path, "ports"), errs, _parse_port),
        not_ports=_parse_list(obj.get("notPorts"), _join(path, "notPorts"), errs, _parse_port),
        service_accounts=_parse_service_accounts(
            obj.get("serviceAccounts"), _join(path, "serviceAccounts"), errs
        ),
    )


def _annotation_key_problem(key: str) -> str | None:
    """Why ``key`` is not a Kubernetes qualified name (checked lower-cased, as Calico does)."""
    folded = key.lower()
    prefix, slash, name = folded.rpartition("/")
    if slash:
        if not prefix or len(prefix) > 253:
            return "prefix must be a DNS subdomain of at most 253 characters"
        if not all(_DNS_LABEL.match(label) for label in prefix.split(".")):
            return "prefix must be a DNS subdomain"
    if not name or len(name) > 63:
        return "name part must be 1..63 characters"
    if not _ANNOTATION_NAME.match(name):
        return "name part must be alphanumeric, '-', '_' or '.', starting and ending alphanumeric"
    return None


def _parse_metadata(value: object, path: str, errs: _Errors) -> tuple[tuple[str, str], ...]:
    if _is_empty(value):
        return ()
    obj = _as_object(value, path, errs, "metadata")
    if obj is None:
        return ()
    _check_keys(obj, _METADATA_KEYS, path, errs)
    raw = obj.get("annotations")
    apath = _join(path, "annotations")
    if _is_empty(raw):
        return ()
    annotations = _as_object(raw, apath, errs, "annotations")
    if annotations is None:
        return ()
    pairs: list[tuple[str, str]] = []
    size = 0
    for key, val in annotations.items():
        kpath = _join(apath, str(key))
        if not isinstance(key, str):
            errs.add(kpath, f"invalid annotation key {key!r}: must be a string")
            continue
        problem = _annotation_key_problem(key)
        if problem is not None:
            errs.add(kpath, f"invalid annotation key {key!r}: {problem}")
            continue
        if not isinstance(val, str):
            errs.add(kpath, f"annotation value must be a string, got {_type_name(val)}")
            continue
        size += len(key.encode()) + len(val.encode())
        pairs.append((key, val))
    if size > _ANNOTATIONS_MAX_BYTES:
        errs.add(apath, f"annotations total {size} bytes, limit {_ANNOTATIONS_MAX_BYTES}")
    return tuple(sorted(pairs))


def _parse_protocol_field(value: object, path: str, errs: _Errors) -> int | None:
    if _is_empty(value):
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        errs.add(path, f"protocol must be a name or a number, got {_type_name(value)}")
        return None
    try:
        return protocol_number(value)
    except ValueError as exc:
        errs.add(path, str(exc))
        return None


def _parse_rule_into(data: object, path: str, errs: _Errors) -> Rule | None:
    """Parse one rule, adding every problem to ``errs``; None if there was any problem."""
    before = len(errs.items)
    obj = _as_object(data, path, errs, "rule")
    if obj is None:
        return None
    _check_keys(obj, _RULE_KEYS, path, errs)

    action: Action | None = None
    raw_action = obj.get("action")
    if _is_empty(raw_action):
        errs.add(_join(path, "action"), "action is required (Allow, Deny, Log or Pass)")
    else:
        try:
            action = Action(raw_action)
        except ValueError:
            errs.add(
                _join(path, "action"),
                f"invalid action {raw_action!r}: expected Allow, Deny, Log or Pass",
            )

    ip_version: int | None = None
    raw_version = obj.get("ipVersion")
    if raw_version is not None:
        if (
            isinstance(raw_version, int)
            and not isinstance(raw_version, bool)
            and raw_version in (4, 6)
        ):
            ip_version = raw_version
        else:
            errs.add(_join(path, "ipVersion"), f"ipVersion must be 4 or 6, got {raw_version!r}")

    protocol = _parse_protocol_field(obj.get("protocol"), _join(path, "protocol"), errs)
    not_protocol = _parse_protocol_field(obj.get("notProtocol"), _join(path, "notProtocol"), errs)
    icmp = _parse_icmp(obj.get("icmp"), _join(path, "icmp"), errs)
    not_icmp = _parse_icmp(obj.get("notICMP"), _join(path, "notICMP"), errs)
    source = _parse_entity(obj.get("source"), _join(path, "source"), errs)
    destination = _parse_entity(obj.get("destination"), _join(path, "destination"), errs)
    annotations = _parse_metadata(obj.get("metadata"), _join(path, "metadata"), errs)
    if not _is_empty(obj.get("http")):
        errs.add(_join(path, "http"), "HTTP (application layer) matches are not supported")

    # Cross-field checks (Calico's validateRule), on whatever parsed cleanly.
    if protocol not in _PORT_PROTOCOLS:
        for side_name, side in (("source", source), ("destination", destination)):
            for attr, key in (("ports", "ports"), ("not_ports", "notPorts")):
                if getattr(side, attr):
                    errs.add(
                        _join(path, f"{side_name}.{key}"),
                        "rules that specify ports must set protocol to TCP, UDP or SCTP",
                    )
    for match, key in ((icmp, "icmp"), (not_icmp, "notICMP")):
        if match is not None and protocol not in _ICMP_PROTOCOLS:
            errs.add(
                _join(path, key),
                "rules that specify ICMP fields must set protocol to ICMP or ICMPv6",
            )
    if ip_version is not None:
        if _ICMP in (protocol, not_protocol) and ip_version != 4:
            errs.add(_join(path, "ipVersion"), "must be 4 (or unset) with protocol ICMP")
        if _ICMPV6 in (protocol, not_protocol) and ip_version != 6:
            errs.add(_join(path, "ipVersion"), "must be 6 (or unset) with protocol ICMPv6")
    _check_net_versions(ip_version, path, (source, destination), errs)

    if len(errs.items) > before or action is None:
        return None
    return Rule(
        action=action,
        ip_version=ip_version,
        protocol=protocol,
        not_protocol=not_protocol,
        icmp=icmp,
        not_icmp=not_icmp,
        source=source,
        destination=destination,
        annotations=annotations,
    )


def _check_net_versions(
    ip_version: int | None, path: str, sides: tuple[EntityRule, EntityRule], errs: _Errors
) -> None:
    """Every net must match ``ipVersion``; without it, all nets must share one family."""
    seen: int | None = ip_version
    for side_name, side in zip(("source", "destination"), sides, strict=True):
        for attr, key in (("nets", "nets"), ("not_nets", "notNets")):
            nets: tuple[IPNet, ...] = getattr(side, attr)
            for index, net in enumerate(nets):
                item = _join(path, f"{side_name}.{key}[{index}]")
                if ip_version is not None and net.version != ip_version:
                    errs.add(
                        item, f"IPv{net.version} net {net} does not match ipVersion {ip_version}"
                    )
                elif ip_version is None and seen is not None and net.version != seen:
                    errs.add(item, "rule contains both IPv4 and IPv6 nets")
                elif seen is None:
                    seen = net.version


# --------------------------------------------------------------------------- public API


def validate_rule(data: object, field: str = "") -> list[RuleError]:
    """Every problem with one JSON-decoded rule (empty list if it is valid).

    Field paths are prefixed with ``field`` (``validate_rule(d, "spec.ingress[0]")``).
    """
    errs = _Errors()
    _parse_rule_into(data, field, errs)
    return errs.items


def parse_rule(data: object, field: str = "") -> Rule:
    """Parse one JSON-decoded Calico v3 rule.

    Raises ``RuleError`` for the first problem, with ``.errors`` holding all of them; field
    paths are relative to ``data`` and prefixed with ``field``.
    """
    errs = _Errors()
    rule = _parse_rule_into(data, field, errs)
    errs.raise_if_any()
    assert rule is not None
    return rule


def _parse_rules_into(data: object, field: str, errs: _Errors) -> tuple[Rule, ...]:
    if data is None:
        return ()
    if not isinstance(data, list):
        errs.add(field, f"rules must be a list, got {_type_name(data)}")
        return ()
    return _parse_list(data, field, errs, _parse_rule_into)


def validate_rules(data: object, field: str) -> list[RuleError]:
    """Every problem with a JSON-decoded list of rules (``null`` is an empty list).

    ``validate_rules(spec["ingress"], "spec.ingress")`` reports paths such as
    ``spec.ingress[2].destination.ports[0]``.
    """
    errs = _Errors()
    _parse_rules_into(data, field, errs)
    return errs.items


def parse_rules(data: object, field: str) -> tuple[Rule, ...]:
    """Parse a JSON-decoded list of rules (``null`` is an empty list), keeping their order.

    Raises ``RuleError`` for the first problem, with ``.errors`` holding every problem in the
    list; paths look like ``ingress[2].destination.ports[0]`` for ``field="ingress"``.
    """
    errs = _Errors()
    rules = _parse_rules_into(data, field, errs)
    errs.raise_if_any()
    return rules


def _port_to_json(port: Port) -> int | str:
    if isinstance(port, NamedPort):
        return port.name
    if port.first == port.last:
        return port.first
    return f"{port.first}:{port.last}"


def _icmp_to_json(match: ICMPMatch) -> dict[str, int]:
    out = {"type": match.type}
    if match.code is not None:
        out["code"] = match.code
    return out


def _entity_to_json(entity: EntityRule) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if entity.nets:
        out["nets"] = [str(n) for n in entity.nets]
    if entity.not_nets:
        out["notNets"] = [str(n) for n in entity.not_nets]
    if entity.selector is not None:
        out["selector"] = str(entity.selector)
    if entity.not_selector is not None:
        out["notSelector"] = str(entity.not_selector)
    if entity.namespace_selector is not None:
        out["namespaceSelector"] = str(entity.namespace_selector)
    if entity.ports:
        out["ports"] = [_port_to_json(p) for p in entity.ports]
    if entity.not_ports:
        out["notPorts"] = [_port_to_json(p) for p in entity.not_ports]
    if entity.service_accounts is not None:
        sa: dict[str, Any] = {}
        if entity.service_accounts.names:
            sa["names"] = list(entity.service_accounts.names)
        if entity.service_accounts.selector is not None:
            sa["selector"] = str(entity.service_accounts.selector)
        out["serviceAccounts"] = sa
    return out


def rule_to_dict(rule: Rule) -> dict[str, Any]:
    """Render ``rule`` as canonical Calico v3 JSON (absent fields omitted).

    Protocols use Calico's names where one exists (``"TCP"``, ``"ICMPv6"``, ...), else the
    number; ports are ``80``, ``"1000:2000"`` or a name; selectors use ``str(selector)``.
    """
    out: dict[str, Any] = {"action": rule.action.value}
    if rule.ip_version is not None:
        out["ipVersion"] = rule.ip_version
    if rule.protocol is not None:
        out["protocol"] = protocol_name(rule.protocol)
    if rule.not_protocol is not None:
        out["notProtocol"] = protocol_name(rule.not_protocol)
    if rule.icmp is not None:
        out["icmp"] = _icmp_to_json(rule.icmp)
    if rule.not_icmp is not None:
        out["notICMP"] = _icmp_to_json(rule.not_icmp)
    source = _entity_to_json(rule.source)
    if source:
        out["source"] = source
    destination = _entity_to_json(rule.destination)
    if destination:
        out["destination"] = destination
    if rule.annotations:
        out["metadata"] = {"annotations": dict(rule.annotations)}
    return out
