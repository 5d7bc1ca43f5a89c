"""``tabbyctl`` run as a user runs it: a subprocess talking to a real etcd.

The connection comes from ``ETCD_ENDPOINTS`` (calicoctl's variable); what is stored is read back
with ``etcdctl``, independently of tabby's own code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from ctl import manifests
from datastore.codec import resource_to_dict
from datastore.keys import RESOURCES_ROOT
from lab.etcd import free_port

pytestmark = pytest.mark.etcd

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
TABBYCTL = str(Path(sys.executable).parent / "tabbyctl")
GNP_ROOT = RESOURCES_ROOT + "globalnetworkpolicies/"


def tabbyctl(
    endpoint: str, *args: str, stdin: str | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}
    env["ETCD_ENDPOINTS"] = f"http://{endpoint}"
    return subprocess.run(
        [TABBYCTL, *args],
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr}"
    return result.stdout


def etcdctl(endpoint: str, *args: str) -> str:
    return subprocess.run(
        ["etcdctl", "--endpoints", endpoint, *args],
        env={**os.environ, "ETCDCTL_API": "3"},
        capture_output=True,
        text=True,
        check=True,
        stdin=subprocess.DEVNULL,
    ).stdout


def all_keys(endpoint: str) -> list[str]:
    return etcdctl(endpoint, "get", "", "--from-key", "--keys-only").split()


def raw_json(endpoint: str, key: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(etcdctl(endpoint, "get", key, "--print-value-only"))
    return out


def example_resources() -> list[Any]:
    result = manifests.load([str(EXAMPLES)])
    assert result.ok
    return [r for _, r in result.resources]


GNP = """\
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: {name}
spec:
  order: {order}
  selector: all()
"""


def test_apply_examples_then_get_round_trips(etcd_endpoint: str) -> None:
    resources = example_resources()
    out = ok(tabbyctl(etcd_endpoint, "apply", "-f", str(EXAMPLES)))
    assert out.strip() == f"Successfully applied {len(resources)} resource(s)"
    # Every resource is stored under exactly Calico's key, and nothing else is.
    assert sorted(all_keys(etcd_endpoint)) == sorted(r.key for r in resources)

    listing = yaml.safe_load(ok(tabbyctl(etcd_endpoint, "get", "gnp", "-o", "yaml")))
    assert listing["kind"] == "GlobalNetworkPolicyList"
    got = {item["metadata"]["name"]: item for item in listing["items"]}
    want = {r.name: resource_to_dict(r) for r in resources if r.kind == "GlobalNetworkPolicy"}
    assert set(got) == set(want)
    for name, item in got.items():
        assert item["spec"] == want[name]["spec"], name
        assert item["apiVersion"] == "projectcalico.org/v3"
        assert item["metadata"]["resourceVersion"].isdigit()

    table = ok(tabbyctl(etcd_endpoint, "get", "networkpolicy", "-A", "-o", "wide"))
    header, row = table.splitlines()
    assert header.split()[:3] == ["NAMESPACE", "NAME", "TIER"]
    assert row.split()[:2] == ["shop", "frontend-to-backend"]


def test_stored_value_is_calico_layout(etcd_endpoint: str) -> None:
    ok(tabbyctl(etcd_endpoint, "apply", "-f", "-", stdin=GNP.format(name="web", order=5)))
    stored = raw_json(etcd_endpoint, GNP_ROOT + "web")
    assert list(stored) == ["kind", "apiVersion", "metadata", "spec"]
    assert stored["kind"] == "GlobalNetworkPolicy"
    assert stored["apiVersion"] == "projectcalico.org/v3"
    assert "resourceVersion" not in stored["metadata"]
    assert stored["metadata"]["name"] == "web"
    assert stored["metadata"]["uid"] and stored["metadata"]["creationTimestamp"]
    assert stored["spec"]["order"] == 5 and stored["spec"]["selector"] == "all()"
    doc = yaml.safe_load(ok(tabbyctl(etcd_endpoint, "get", "gnp", "web", "-o", "yaml")))
    mod_revision = json.loads(etcdctl(etcd_endpoint, "get", GNP_ROOT + "web", "-w", "json"))["kvs"][
        0
    ]["mod_revision"]
    assert doc["metadata"]["resourceVersion"] == str(mod_revision)
    assert doc["metadata"]["uid"] == stored["metadata"]["uid"]


def test_invalid_documents_write_nothing_and_are_all_reported(
    etcd_endpoint: str, tmp_path: Path
) -> None:
    bad = tmp_path / "mixed.yaml"
    bad.write_text(
        GNP.format(name="fine", order=1)
        + "---\n"
        + GNP.format(name="bad-order", order="high")
        + "---\n"
        + GNP.format(name="Bad_Name", order=2).replace("all()", "a ===")
    )
    result = tabbyctl(etcd_endpoint, "apply", "-f", str(bad))
    assert result.returncode == 1
    assert all_keys(etcd_endpoint) == []
    err = result.stderr
    assert "2 invalid document(s)" in err and "nothing was written" in err
    assert f"{bad} document 2 (line 9): GlobalNetworkPolicy bad-order:" in err
    assert "  spec.order: " in err
    assert f"{bad} document 3 (line 17): GlobalNetworkPolicy Bad_Name:" in err
    assert "  metadata.name: " in err and "  spec.selector: " in err
    assert "Traceback" not in err


def test_get_delete_and_missing_resources(etcd_endpoint: str, tmp_path: Path) -> None:
    manifest = tmp_path / "two.yaml"
    manifest.write_text(GNP.format(name="a", order=1) + "---\n" + GNP.format(name="b", order=2))
    ok(tabbyctl(etcd_endpoint, "create", "-f", str(manifest)))
    assert ok(tabbyctl(etcd_endpoint, "get", "gnp")).split() == ["NAME", "a", "b"]

    missing = tabbyctl(etcd_endpoint, "get", "gnp", "nope")
    assert missing.returncode == 1
    assert missing.stderr.strip() == "error: GlobalNetworkPolicy nope: resource does not exist"

    out = ok(tabbyctl(etcd_endpoint, "delete", "globalnetworkpolicy", "a"))
    assert out.strip() == "Successfully deleted 1 'GlobalNetworkPolicy' resource(s)"
    assert all_keys(etcd_endpoint) == [GNP_ROOT + "b"]
    again = tabbyctl(etcd_endpoint, "delete", "gnp", "a")
    assert again.returncode == 1 and "does not exist" in again.stderr

    # delete -f stops at the first missing resource (as calicoctl does) ...
    failed = tabbyctl(etcd_endpoint, "delete", "-f", str(manifest))
    assert failed.returncode == 1 and "GlobalNetworkPolicy a: resource does not exist" in (
        failed.stderr
    )
    assert all_keys(etcd_endpoint) == [GNP_ROOT + "b"]
    # ... unless told to skip it.
    out = ok(tabbyctl(etcd_endpoint, "delete", "-f", str(manifest), "--skip-not-exists"))
    assert out.splitlines() == [
        "Successfully deleted 1 'GlobalNetworkPolicy' resource(s)",
        "Skipped 1 resource(s)",
    ]
    assert all_keys(etcd_endpoint) == []


def test_replace_with_stale_resource_version_fails(etcd_endpoint: str) -> None:
    ok(tabbyctl(etcd_endpoint, "apply", "-f", "-", stdin=GNP.format(name="p", order=1)))
    snapshot = ok(tabbyctl(etcd_endpoint, "get", "gnp", "p", "-o", "yaml"))
    first = snapshot.replace("order: 1", "order: 2")
    ok(tabbyctl(etcd_endpoint, "replace", "-f", "-", stdin=first))
    stale = snapshot.replace("order: 1", "order: 3")
    result = tabbyctl(etcd_endpoint, "replace", "-f", "-", stdin=stale)
    assert result.returncode == 1
    assert "GlobalNetworkPolicy p" in result.stderr and "conflict" in result.stderr
    assert raw_json(etcd_endpoint, GNP_ROOT + "p")["spec"]["order"] == 2
    # replace of something that does not exist fails too.
    absent = tabbyctl(etcd_endpoint, "replace", "-f", "-", stdin=GNP.format(name="q", order=1))
    assert absent.returncode == 1 and "does not exist" in absent.stderr


def test_concurrent_read_modify_write_loses_no_update(etcd_endpoint: str) -> None:
    """Two writers loop: get -o yaml, add a label, replace (CAS); on conflict, start over."""
    ok(tabbyctl(etcd_endpoint, "apply", "-f", "-", stdin=GNP.format(name="shared", order=1)))
    edits = 3
    conflicts: list[int] = []
    failures: list[str] = []

    def writer(w: int) -> None:
        for n in range(edits):
            for _attempt in range(20):
                got = tabbyctl(etcd_endpoint, "get", "gnp", "shared", "-o", "yaml")
                if got.returncode != 0:
                    failures.append(got.stderr)
                    return
                doc = yaml.safe_load(got.stdout)
                doc["metadata"].setdefault("labels", {})[f"w{w}-{n}"] = "yes"
                put = tabbyctl(etcd_endpoint, "replace", "-f", "-", stdin=yaml.safe_dump(doc))
                if put.returncode == 0:
                    break
                if "conflict" not in put.stderr:
                    failures.append(put.stderr)
                    return
                conflicts.append(w)
            else:
                failures.append(f"writer {w} edit {n} never got through")

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert failures == []
    labels = raw_json(etcd_endpoint, GNP_ROOT + "shared")["metadata"].get("labels", {})
    assert set(labels) == {f"w{w}-{n}" for w in range(2) for n in range(edits)}


def test_parallel_apply_of_one_resource_all_succeed(etcd_endpoint: str) -> None:
    ok(tabbyctl(etcd_endpoint, "apply", "-f", "-", stdin=GNP.format(name="hot", order=0)))
    uid = raw_json(etcd_endpoint, GNP_ROOT + "hot")["metadata"]["uid"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}
    env["ETCD_ENDPOINTS"] = f"http://{etcd_endpoint}"
    procs = [
        subprocess.Popen(
            [TABBYCTL, "apply", "-f", "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(4)
    ]
    for i, p in enumerate(procs):
        assert p.stdin is not None
        p.stdin.write(GNP.format(name="hot", order=i + 1))
        p.stdin.close()
    results = [(p.wait(timeout=30), p.stderr.read() if p.stderr else "") for p in procs]
    for p in procs:
        for stream in (p.stdout, p.stderr):
            if stream is not None:
                stream.close()
    assert [code for code, _ in results] == [0, 0, 0, 0], results
    stored = raw_json(etcd_endpoint, GNP_ROOT + "hot")
    assert stored["spec"]["order"] in {1, 2, 3, 4}
    assert stored["metadata"]["uid"] == uid  # replaced, never recreated


def test_invalid_stored_value_is_skipped_with_a_warning(etcd_endpoint: str) -> None:
    ok(tabbyctl(etcd_endpoint, "apply", "-f", "-", stdin=GNP.format(name="good", order=1)))
    etcdctl(etcd_endpoint, "put", GNP_ROOT + "junk", '{"kind": "GlobalNetworkPolicy"')
    result = tabbyctl(etcd_endpoint, "get", "gnp", "-o", "json")
    listing = json.loads(ok(result))
    assert [i["metadata"]["name"] for i in listing["items"]] == ["good"]
    assert f"key={GNP_ROOT}junk" in result.stderr


def test_unreachable_etcd_is_one_line_error(etcd_endpoint: str) -> None:
    start = time.monotonic()
    result = tabbyctl(etcd_endpoint, "get", "gnp", "--etcd-endpoints", f"127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert time.monotonic() - start < 15
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot reach etcd at 127.0.0.1:")
