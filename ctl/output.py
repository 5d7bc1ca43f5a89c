"""Rendering resources for ``tabbyctl get``: tables (default and wide), YAML and JSON.

Role: pure functions from ``Resource`` values to text; no I/O.
Inputs: resources (as read from the datastore, ``resourceVersion`` set), the requested format.
Outputs: strings ending in a newline (empty string for an empty table).

Invariants:
- YAML/JSON print full Calico documents (``apiVersion``, ``kind``, ``metadata`` with
  ``resourceVersion``, ``spec`` [, ``status``]) that ``tabbyctl apply -f`` reads back unchanged.
- A single named resource prints as one document; a listing prints as calicoctl does: a
  ``<Kind>List`` document with ``items`` and ``metadata.resourceVersion`` (the list revision).
- Tables: a header row, columns separated by at least two spaces, no trailing blanks. The
  default table shows NAME (NAMESPACE first when listing all namespaces of a namespaced kind);
  ``wide`` adds per-kind columns (see ``WIDE_COLUMNS``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import yaml

from datastore.codec import resource_to_dict
from datastore.model import API_VERSION, Resource

__all__ = [
    "FORMATS",
    "WIDE_COLUMNS",
    "list_document",
    "render",
    "render_json",
    "render_table",
    "render_yaml",
    "to_document",
]

FORMATS = ("table", "wide", "yaml", "json")

Getter = Callable[[Mapping[str, Any]], str]


def to_document(resource: Resource) -> dict[str, Any]:
    """The Calico document of ``resource`` (with resourceVersion), apiVersion/kind first."""
    d = resource_to_dict(resource, include_resource_version=True)
    out: dict[str, Any] = {"apiVersion": d.pop("apiVersion"), "kind": d.pop("kind")}
    out.update(d)
    return out


def list_document(kind: str, resources: Sequence[Resource], revision: int) -> dict[str, Any]:
    """calicoctl's list shape: ``<Kind>List`` with ``items`` and the list's resourceVersion."""
    return {
        "apiVersion": API_VERSION,
        "kind": f"{kind}List",
        "metadata": {"resourceVersion": str(revision)},
        "items": [to_document(r) for r in resources],
    }


class _Dumper(yaml.SafeDumper):
    """Block-style YAML with list items indented under their key (kubectl's look)."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def render_yaml(document: Mapping[str, Any]) -> str:
    text: str = yaml.dump(
        dict(document),
        Dumper=_Dumper,
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        width=1_000_000,
    )
    return text


def render_json(document: Mapping[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


# --- tables -------------------------------------------------------------------------------


def _at(d: Mapping[str, Any], path: str) -> Any:
    value: Any = d
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(_text(v) for v in value)
    if isinstance(value, Mapping):
        return ",".join(f"{k}={_text(v)}" for k, v in value.items())
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _col(path: str, default: str = "") -> Getter:
    def get(d: Mapping[str, Any]) -> str:
        value = _at(d, path)
        return default if value is None or value == "" else _text(value)

    return get


def _peer_node(d: Mapping[str, Any]) -> str:
    spec = d.get("spec") or {}
    if spec.get("node"):
        return str(spec["node"])
    if spec.get("nodeSelector"):
        return str(spec["nodeSelector"])
    return "(global)"


def _peer_ip(d: Mapping[str, Any]) -> str:
    spec = d.get("spec") or {}
    if spec.get("peerIP"):
        return _text(spec["peerIP"])
    if spec.get("peerSelector"):
        return _text(spec["peerSelector"])
    return ""


_POLICY = [
    ("TIER", _col("spec.tier", "default")),
    ("ORDER", _col("spec.order")),
    ("TYPES", _col("spec.types")),
    ("SELECTOR", _col("spec.selector", "all()")),
]

# Extra columns (after NAMESPACE/NAME) that ``-o wide`` shows, per kind.
WIDE_COLUMNS: dict[str, list[tuple[str, Getter]]] = {
    "GlobalNetworkPolicy": _POLICY,
    "NetworkPolicy": _POLICY,
    "Tier": [("ORDER", _col("spec.order")), ("DEFAULTACTION", _col("spec.defaultAction"))],
    "IPPool": [
        ("CIDR", _col("spec.cidr")),
        ("NAT", _col("spec.natOutgoing", "false")),
        ("IPIPMODE", _col("spec.ipipMode", "Never")),
        ("VXLANMODE", _col("spec.vxlanMode", "Never")),
        ("DISABLED", _col("spec.disabled", "false")),
        ("DISABLEBGPEXPORT", _col("spec.disableBGPExport", "false")),
        ("SELECTOR", _col("spec.nodeSelector", "all()")),
    ],
    "WorkloadEndpoint": [
        ("WORKLOAD", _col("spec.workload")),
        ("NODE", _col("spec.node")),
        ("NETWORKS", _col("spec.ipNetworks")),
        ("INTERFACE", _col("spec.interfaceName")),
        ("PROFILES", _col("spec.profiles")),
    ],
    "HostEndpoint": [
        ("NODE", _col("spec.node")),
        ("INTERFACE", _col("spec.interfaceName")),
        ("IPS", _col("spec.expectedIPs")),
        ("PROFILES", _col("spec.profiles")),
    ],
    "NetworkSet": [("NETS", _col("spec.nets")), ("LABELS", _col("metadata.labels"))],
    "GlobalNetworkSet": [("NETS", _col("spec.nets")), ("LABELS", _col("metadata.labels"))],
    "Profile": [("LABELSTOAPPLY", _col("spec.labelsToApply"))],
    "BGPPeer": [
        ("PEERIP", _peer_ip),
        ("NODE", _peer_node),
        ("ASN", _col("spec.asNumber")),
    ],
    "BGPConfiguration": [
        ("LOGSEVERITY", _col("spec.logSeverityScreen")),
        ("MESHENABLED", _col("spec.nodeToNodeMeshEnabled")),
        ("ASNUMBER", _col("spec.asNumber")),
    ],
    "Node": [
        ("ASN", _col("spec.bgp.asNumber")),
        ("IPV4", _col("spec.bgp.ipv4Address")),
        ("IPV6", _col("spec.bgp.ipv6Address")),
    ],
}


def format_rows(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def render_table(
    kind: str,
    resources: Sequence[Resource],
    *,
    wide: bool = False,
    show_namespace: bool = False,
) -> str:
    """A calicoctl-style table of ``kind`` (the header row even when there are no rows)."""
    extra = WIDE_COLUMNS.get(kind, []) if wide else []
    header = (["NAMESPACE"] if show_namespace else []) + ["NAME"] + [h for h, _ in extra]
    rows: list[list[str]] = [header]
    for r in resources:
        d = resource_to_dict(r)
        row = ([r.namespace or ""] if show_namespace else []) + [r.name]
        row.extend(get(d) for _, get in extra)
        rows.append(row)
    return format_rows(rows)


def render(
    kind: str,
    resources: Sequence[Resource],
    fmt: str,
    *,
    single: bool = False,
    revision: int = 0,
    show_namespace: bool = False,
) -> str:
    """``resources`` in ``fmt`` (one of ``FORMATS``); ``single`` prints one bare document."""
    if fmt in ("table", "wide"):
        return render_table(kind, resources, wide=fmt == "wide", show_namespace=show_namespace)
    if single and len(resources) == 1:
        doc = to_document(resources[0])
    else:
        doc = list_document(kind, resources, revision)
    if fmt == "yaml":
        return render_yaml(doc)
    if fmt == "json":
        return render_json(doc)
    raise ValueError(f"unknown output format {fmt!r}; expected one of {', '.join(FORMATS)}")
