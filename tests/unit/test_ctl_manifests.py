"""tabbyctl's pure parts: manifest reading/validation (``ctl.manifests``), output rendering
(``ctl.output``), and the offline commands (``validate``, ``version``, usage errors)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from ctl import manifests, output
from ctl.main import cli, main
from datastore.codec import decode, encode, resource_from_dict, resource_to_dict
from datastore.model import Resource

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"

GNP_YAML = """\
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: {name}
spec:
  order: {order}
  selector: all()
"""


def gnp_doc(name: str, order: Any = 10) -> str:
    return GNP_YAML.format(name=name, order=order)


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def names(result: manifests.LoadResult) -> list[str]:
    return [r.name for _, r in result.resources]


# --- reading ----------------------------------------------------------------------------


def test_multi_document_yaml_with_empty_documents(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "m.yaml",
        "# leading comment\n" + gnp_doc("a") + "---\n# only a comment\n---\n" + gnp_doc("b"),
    )
    result = manifests.load([str(p)])
    assert result.ok, result.problems
    assert names(result) == ["a", "b"]
    locations = [d.location for d, _ in result.resources]
    assert locations == [f"{p} document 1 (line 2)", f"{p} document 3 (line 12)"]


def test_list_documents_and_kind_list_output_are_expanded(tmp_path: Path) -> None:
    items = [yaml.safe_load(gnp_doc(n)) for n in ("a", "b")]
    p = write(
        tmp_path,
        "l.yaml",
        yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": items})
        + "---\n"
        + yaml.safe_dump(
            {"kind": "GlobalNetworkPolicyList", "items": [yaml.safe_load(gnp_doc("c"))]}
        ),
    )
    result = manifests.load([str(p)])
    assert result.ok, result.problems
    assert names(result) == ["a", "b", "c"]
    first = result.resources[0][0]
    assert (first.index, first.item) == (1, 1)
    assert result.resources[2][0].index == 2


def test_json_file_with_concatenated_objects(tmp_path: Path) -> None:
    docs = [yaml.safe_load(gnp_doc(n)) for n in ("a", "b")]
    p = write(tmp_path, "p.json", json.dumps(docs[0], indent=2) + "\n" + json.dumps(docs[1]))
    result = manifests.load([str(p)])
    assert result.ok, result.problems
    assert names(result) == ["a", "b"]
    assert result.resources[1][0].line == 12


def test_json_file_rejects_nan(tmp_path: Path) -> None:
    p = write(tmp_path, "p.json", '{"kind": "GlobalNetworkPolicy", "x": NaN}')
    result = manifests.load([str(p)])
    assert not result.ok
    assert "invalid JSON" in result.problems[0].errors[0].message


def test_directory_is_read_sorted_and_filtered(tmp_path: Path) -> None:
    write(tmp_path, "d/20-b.yml", gnp_doc("b"))
    write(tmp_path, "d/10-a.json", json.dumps(yaml.safe_load(gnp_doc("a"))))
    write(tmp_path, "d/30-c.yaml", gnp_doc("c"))
    write(tmp_path, "d/README.md", "not a manifest")
    write(tmp_path, "d/sub/40-d.yaml", gnp_doc("d"))
    result = manifests.load([str(tmp_path / "d")])
    assert names(result) == ["a", "b", "c"]
    assert result.sources == 3
    assert names(manifests.load([str(tmp_path / "d")], recursive=True)) == ["a", "b", "c", "d"]


def test_stdin_yaml_and_json() -> None:
    result = manifests.load(["-"], io.StringIO(gnp_doc("a") + "---\n" + gnp_doc("b")))
    assert names(result) == ["a", "b"]
    assert result.resources[0][0].source == "<stdin>"
    as_json = json.dumps(yaml.safe_load(gnp_doc("j")))
    assert names(manifests.load(["-"], io.StringIO(as_json))) == ["j"]


def test_unreadable_sources_raise(tmp_path: Path) -> None:
    with pytest.raises(manifests.ManifestError, match="no such file"):
        manifests.load([str(tmp_path / "missing.yaml")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(manifests.ManifestError, match="no manifest files"):
        manifests.load([str(tmp_path / "empty")])
    with pytest.raises(manifests.ManifestError):
        manifests.load([])


def test_timestamps_stay_strings(tmp_path: Path) -> None:
    text = gnp_doc("a").replace(
        "  name: a\n", "  name: a\n  creationTimestamp: 2024-05-01T12:00:00Z\n"
    )
    result = manifests.load([str(write(tmp_path, "t.yaml", text))])
    assert result.ok, result.problems
    assert result.resources[0][1].metadata.creation_timestamp == "2024-05-01T12:00:00Z"


def test_examples_directory_is_valid() -> None:
    result = manifests.load([str(EXAMPLES)])
    assert result.ok, [p.lines() for p in result.problems]
    assert result.sources == len(list(EXAMPLES.glob("*.yaml")))
    assert {"security.block-metadata", "platform.allow-dns"} <= set(names(result))


# --- namespaces -------------------------------------------------------------------------

NETPOL = """\
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata:
  name: np1
{ns}spec:
  selector: all()
"""


def test_namespace_defaults_and_conflicts() -> None:
    bare = NETPOL.format(ns="")
    assert manifests.load(["-"], io.StringIO(bare)).resources[0][1].namespace == "default"
    got = manifests.load(["-"], io.StringIO(bare), namespace="shop")
    assert got.resources[0][1].namespace == "shop"
    named = NETPOL.format(ns="  namespace: web\n")
    assert manifests.load(["-"], io.StringIO(named)).resources[0][1].namespace == "web"
    clash = manifests.load(["-"], io.StringIO(named), namespace="shop")
    assert not clash.ok
    assert clash.problems[0].errors[0].field == "metadata.namespace"
    # -n does not apply to cluster-scoped kinds.
    assert manifests.load(["-"], io.StringIO(gnp_doc("a")), namespace="shop").ok


# --- every invalid document is reported ---------------------------------------------------


def test_every_invalid_document_is_reported_with_location_and_fields(tmp_path: Path) -> None:
    a = write(
        tmp_path,
        "a.yaml",
        gnp_doc("good")
        + "---\n"
        + gnp_doc("bad-order", "high")
        + "---\n"
        + "kind: List\nitems:\n"
        + "  - apiVersion: projectcalico.org/v3\n    kind: IPPool\n"
        + "    metadata: {name: p1}\n    spec: {cidr: 10.1.0.0/33, ipipMode: Sometimes}\n"
        + "  - [1, 2]\n",
    )
    b = write(tmp_path, "b.yaml", gnp_doc("good").replace("good", "Not_Valid") + "---\nkey: [\n")
    c = write(tmp_path, "c.yaml", gnp_doc("good"))  # duplicate of a.yaml's first document
    result = manifests.load([str(a), str(b), str(c)])
    assert names(result) == ["good"]
    by_location = {p.location: p for p in result.problems}
    assert list(by_location) == [
        f"{a} document 2 (line 9)",
        f"{a} document 3 item 1 (line 19)",
        f"{a} document 3 item 2 (line 23)",
        f"{b} document 1 (line 1)",
        f"{b} document 2 (line 10, column 1)",
        f"{c} document 1 (line 1)",
    ]
    p = by_location[f"{a} document 2 (line 9)"]
    assert (p.kind, p.name) == ("GlobalNetworkPolicy", "bad-order")
    assert [e.field for e in p.errors] == ["spec.order"]
    pool = by_location[f"{a} document 3 item 1 (line 19)"]
    assert pool.resource == "IPPool p1"
    assert {e.field for e in pool.errors} == {"spec.cidr", "spec.ipipMode"}
    assert by_location[f"{b} document 1 (line 1)"].errors[0].field == "metadata.name"
    assert "invalid YAML" in by_location[f"{b} document 2 (line 10, column 1)"].errors[0].message
    dup = by_location[f"{c} document 1 (line 1)"]
    assert f"also defined at {a} document 1" in dup.errors[0].message
    text = "\n".join(line for p in result.problems for line in p.lines())
    assert "GlobalNetworkPolicy bad-order:\n  spec.order: " in text


# --- output -----------------------------------------------------------------------------


def stored(doc: str, revision: int = 7) -> Resource:
    r = resource_from_dict(yaml.safe_load(doc))
    return decode(r.key, encode(r), revision)


POOL = """\
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: pool-a}
spec: {cidr: 10.65.0.0/16, ipipMode: CrossSubnet, natOutgoing: true}
"""


def test_table_default_and_namespace_column() -> None:
    rs = [stored(gnp_doc("short")), stored(gnp_doc("a-much-longer-name"))]
    assert output.render("GlobalNetworkPolicy", rs, "table") == (
        "NAME\nshort\na-much-longer-name\n"
    )
    nps = [stored(NETPOL.format(ns=f"  namespace: {ns}\n")) for ns in ("shop", "default")]
    text = output.render("NetworkPolicy", nps, "table", show_namespace=True)
    assert text.splitlines() == ["NAMESPACE  NAME", "shop       np1", "default    np1"]
    assert output.render("Tier", [], "table") == "NAME\n"


def test_wide_tables() -> None:
    text = output.render("GlobalNetworkPolicy", [stored(gnp_doc("p", 5))], "wide")
    assert text.splitlines() == [
        "NAME  TIER     ORDER  TYPES    SELECTOR",
        "p     default  5      Ingress  all()",
    ]
    pool = output.render("IPPool", [stored(POOL)], "wide").splitlines()
    header, row = pool[0].split(), pool[1].split()
    assert dict(zip(header, row, strict=True)) == {
        "NAME": "pool-a",
        "CIDR": "10.65.0.0/16",
        "NAT": "true",
        "IPIPMODE": "CrossSubnet",
        "VXLANMODE": "Never",
        "DISABLED": "false",
        "DISABLEBGPEXPORT": "false",
        "SELECTOR": "all()",
    }
    wep = stored(
        """\
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: node1-k8s-pod1-eth0, namespace: default}
spec:
  node: node1
  orchestrator: k8s
  pod: pod1
  endpoint: eth0
  interfaceName: cali0123456789a
  ipNetworks: [10.65.0.5/32]
"""
    )
    lines = output.render("WorkloadEndpoint", [wep], "wide").splitlines()
    assert lines[0].split() == ["NAME", "WORKLOAD", "NODE", "NETWORKS", "INTERFACE", "PROFILES"]
    assert "node1" in lines[1] and "10.65.0.5/32" in lines[1] and "cali0123456789a" in lines[1]
    assert all(line == line.rstrip() for line in lines)


def test_yaml_and_json_documents_round_trip() -> None:
    r = stored(POOL, revision=42)
    single = yaml.safe_load(output.render("IPPool", [r], "yaml", single=True))
    assert list(single) == ["apiVersion", "kind", "metadata", "spec"]
    assert single["metadata"]["resourceVersion"] == "42"
    assert resource_from_dict(single) == r
    listing = json.loads(output.render("IPPool", [r, r], "json", revision=50))
    assert listing["kind"] == "IPPoolList"
    assert listing["metadata"] == {"resourceVersion": "50"}
    assert [resource_from_dict(i) for i in listing["items"]] == [r, r]
    # An empty listing is still a List.
    assert yaml.safe_load(output.render("IPPool", [], "yaml"))["items"] == []


def test_rendered_yaml_is_read_back_by_the_manifest_loader() -> None:
    rs = [stored(gnp_doc(n)) for n in ("a", "b")]
    text = output.render("GlobalNetworkPolicy", rs, "yaml", revision=9)
    result = manifests.load(["-"], io.StringIO(text))
    assert [r for _, r in result.resources] == rs
    assert resource_to_dict(result.resources[0][1])["metadata"]["resourceVersion"] == "7"


# --- offline commands -------------------------------------------------------------------


def test_validate_command(tmp_path: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(cli, ["validate", "-f", str(EXAMPLES)])
    assert ok.exit_code == 0, ok.output
    assert ok.output.startswith("Valid: ")
    bad = write(tmp_path, "bad.yaml", gnp_doc("x", "high") + "---\n" + gnp_doc("y", "[1]"))
    res = runner.invoke(cli, ["validate", "-f", str(bad)])
    assert res.exit_code == 1
    assert "2 invalid document(s)" in res.stderr
    assert f"{bad} document 1 (line 1): GlobalNetworkPolicy x:" in res.stderr
    assert f"{bad} document 2 (line 9): GlobalNetworkPolicy y:" in res.stderr
    piped = runner.invoke(cli, ["validate", "-f", "-"], input=gnp_doc("z"))
    assert piped.exit_code == 0 and "1 resource(s)" in piped.output


def test_exit_codes_of_main(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version"]) == 0
    assert capsys.readouterr().out.startswith("Client Version:    0.1.0")
    assert main(["no-such-command"]) == 1
    assert main(["get"]) == 1  # missing KIND: a usage error is still status 1
    assert main(["--help"]) == 0
    assert main(["get", "no-such-kind", "--etcd-endpoints", "127.0.0.1:1"]) == 1
    assert "unknown resource kind 'no-such-kind'" in capsys.readouterr().err
