"""Which IP sets a rule needs: the one derivation shared by the calculation and the renderer.

Role: a rule's ``source`` / ``destination`` may refer to endpoints by selector, to several CIDRs,
or to named ports. Each such reference becomes an IP set whose identity (``SetDef.id``) is a hash
of *what it contains*, so two rules that need the same set share it.
Inputs: a ``policy.rules.Rule`` and the namespace of the policy it belongs to (None for global
policies and profiles). Outputs: ``RuleSets`` (set ids for each match of the rule, per side).
Invariants: pure; the same rule and namespace always give the same ids; set ids are short
enough that ``ipset_name(id, version)`` fits the kernel's 31-character limit.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import Literal

from felix.model import IPNet
from policy.engine import scoped_selectors
from policy.rules import EntityRule, NamedPort, Rule
from policy.selector import ALL, Selector

SetKind = Literal["selector", "nets", "named-port"]
Side = Literal["source", "destination"]
IPSET_PREFIX = "tby"


def _digest(text: str, length: int = 20) -> str:
    raw = hashlib.sha224(text.encode()).digest()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")[:length]


@dataclass(frozen=True, slots=True)
class SetDef:
    """An IP set's definition: what it contains (members are computed by the calculation)."""

    id: str
    kind: SetKind
    selector: Selector | None = None
    nets: frozenset[IPNet] = frozenset()
    port_name: str | None = None
    protocol: int | None = None

    @staticmethod
    def for_selector(selector: Selector) -> SetDef:
        return SetDef("s:" + _digest(selector.canonical), "selector", selector=selector)

    @staticmethod
    def for_nets(nets: frozenset[IPNet]) -> SetDef:
        text = ",".join(sorted(str(n) for n in nets))
        return SetDef("n:" + _digest(text), "nets", nets=nets)

    @staticmethod
    def for_named_port(selector: Selector, name: str, protocol: int) -> SetDef:
        text = f"{selector.canonical}|{name}|{protocol}"
        return SetDef(
            "p:" + _digest(text), "named-port", selector=selector, port_name=name, protocol=protocol
        )

    @property
    def ipset_type(self) -> str:
        return "hash:ip,port" if self.kind == "named-port" else "hash:net"


def ipset_name(set_id: str, ip_version: int) -> str:
    """Kernel name of a set: ``tby4s:<20 chars>`` (<= 31 characters)."""
    kind, _, digest = set_id.partition(":")
    return f"{IPSET_PREFIX}{ip_version}{kind}:{digest}"


@dataclass(frozen=True, slots=True)
class SideSets:
    """The sets one side (source or destination) of a rule matches against."""

    nets: SetDef | None = None  # more than one net
    not_nets: SetDef | None = None
    selector: SetDef | None = None
    not_selector: SetDef | None = None
    named_ports: tuple[SetDef, ...] = ()
    not_named_ports: tuple[SetDef, ...] = ()

    def all(self) -> tuple[SetDef, ...]:
        out = [
            s for s in (self.nets, self.not_nets, self.selector, self.not_selector) if s is not None
        ]
        return (*out, *self.named_ports, *self.not_named_ports)


@dataclass(frozen=True, slots=True)
class RuleSets:
    source: SideSets
    destination: SideSets

    def all(self) -> tuple[SetDef, ...]:
        return (*self.source.all(), *self.destination.all())


def _side_sets(entity: EntityRule, namespace: str | None, protocol: int | None) -> SideSets:
    selector, not_selector = scoped_selectors(entity, namespace)
    named = [p for p in entity.ports if isinstance(p, NamedPort)]
    not_named = [p for p in entity.not_ports if isinstance(p, NamedPort)]
    port_selector = selector if selector is not None else ALL
    proto = protocol if protocol is not None else 6
    return SideSets(
        nets=SetDef.for_nets(frozenset(entity.nets)) if len(entity.nets) > 1 else None,
        not_nets=SetDef.for_nets(frozenset(entity.not_nets)) if len(entity.not_nets) > 1 else None,
        selector=SetDef.for_selector(selector) if selector is not None else None,
        not_selector=SetDef.for_selector(not_selector) if not_selector is not None else None,
        named_ports=tuple(SetDef.for_named_port(port_selector, p.name, proto) for p in named),
        # As for ``ports`` (and policy.engine): a named port in ``notPorts`` excludes the port
        # only when an endpoint matching the side's selector declares it.
        not_named_ports=tuple(
            SetDef.for_named_port(port_selector, p.name, proto) for p in not_named
        ),
    )


def rule_sets(rule: Rule, namespace: str | None) -> RuleSets:
    """The sets ``rule`` (of a policy in ``namespace``, or global) needs."""
    return RuleSets(
        source=_side_sets(rule.source, namespace, rule.protocol),
        destination=_side_sets(rule.destination, namespace, rule.protocol),
    )
