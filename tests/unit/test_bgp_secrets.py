"""The file-per-key secret resolver behind BGP passwords (bgp/secrets.py), on a temp directory."""

from __future__ import annotations

import logging
from ipaddress import IPv4Interface
from pathlib import Path

import pytest

from bgp.model import BGPConfig, NodeInfo, from_bgppeer_resource
from bgp.peers import desired_peers
from bgp.secrets import SECRETS_DIR_ENV, FileSecretResolver, SecretError, secret_path
from datastore.codec import resource_from_dict
from datastore.model import Resource, SecretKeyRef


def _write(root: Path, name: str, key: str, data: bytes, mode: int = 0o600) -> Path:
    path = root / name / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)
    return path


def test_reads_name_key_file_and_strips_one_newline(tmp_path: Path) -> None:
    r = FileSecretResolver(tmp_path)
    _write(tmp_path, "bgp-tor", "password", b"s3cret\n")
    assert r(SecretKeyRef(name="bgp-tor", key="password")) == "s3cret"
    _write(tmp_path, "bgp-tor", "password", b"s3cret\r\n")
    assert r(SecretKeyRef(name="bgp-tor", key="password")) == "s3cret"
    _write(tmp_path, "bgp-tor", "password", b" two words \n\n")
    assert r(SecretKeyRef(name="bgp-tor", key="password")) == " two words \n"


def test_rotation_is_seen_on_the_next_call(tmp_path: Path) -> None:
    r = FileSecretResolver(tmp_path)
    ref = SecretKeyRef(name="s", key="k")
    assert r(ref) is None
    _write(tmp_path, "s", "k", b"one")
    assert r(ref) == "one"
    _write(tmp_path, "s", "k", b"two")
    assert r(ref) == "two"
    (tmp_path / "s" / "k").unlink()
    assert r(ref) is None


@pytest.mark.parametrize(
    ("data", "why"),
    [(b"", "empty"), (b"\n", "empty"), (b"x" * 81, "80"), (b"\xff\xfe", "UTF-8")],
)
def test_invalid_values_are_unresolved(
    tmp_path: Path, data: bytes, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    _write(tmp_path, "s", "k", data)
    with caplog.at_level(logging.WARNING, logger="bgp.secrets"):
        assert FileSecretResolver(tmp_path)(SecretKeyRef(name="s", key="k")) is None
    assert why in caplog.text
    assert "x" * 81 not in caplog.text


def test_eighty_bytes_is_the_limit(tmp_path: Path) -> None:
    _write(tmp_path, "s", "k", b"y" * 80 + b"\n")
    assert FileSecretResolver(tmp_path)(SecretKeyRef(name="s", key="k")) == "y" * 80


@pytest.mark.parametrize(
    ("name", "key"),
    [("..", "k"), ("a/b", "k"), ("Upper", "k"), ("", "k"), ("s", ".."), ("s", "a/b"), ("s", "")],
)
def test_names_cannot_leave_the_directory(tmp_path: Path, name: str, key: str) -> None:
    with pytest.raises(SecretError):
        secret_path(tmp_path, SecretKeyRef(name=name, key=key))
    assert FileSecretResolver(tmp_path / "d")(SecretKeyRef(name=name, key=key)) is None


def test_outcome_changes_logged_once_value_never(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    r = FileSecretResolver(tmp_path)
    ref = SecretKeyRef(name="s", key="k")
    with caplog.at_level(logging.INFO, logger="bgp.secrets"):
        for _ in range(3):
            r(ref)
        _write(tmp_path, "s", "k", b"hunter2", mode=0o644)
        for _ in range(3):
            r(ref)
    msgs = [rec.getMessage() for rec in caplog.records]
    assert sum("bgp.secret_unresolved" in m for m in msgs) == 1
    assert sum("bgp.secret_resolved" in m for m in msgs) == 1
    assert sum("bgp.secret_permissions" in m for m in msgs) == 1
    assert "hunter2" not in caplog.text


def test_default_root_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRETS_DIR_ENV, str(tmp_path))
    assert FileSecretResolver().root == tmp_path
    monkeypatch.delenv(SECRETS_DIR_ENV)
    assert FileSecretResolver().root == Path("/etc/tabby/secrets")


def _peer_resource(secret: str) -> Resource:
    return resource_from_dict(
        {
            "apiVersion": "projectcalico.org/v3",
            "kind": "BGPPeer",
            "metadata": {"name": "rack-r0"},
            "spec": {
                "nodeSelector": "rack == 'r0'",
                "peerIP": "198.51.100.1",
                "asNumber": 65000,
                "holdTime": "30s",
                "maxRestartTime": "77s",
                "password": {"secretKeyRef": {"name": secret, "key": "password"}},
            },
        }
    )


def test_peer_with_password_resolved_or_left_out(tmp_path: Path) -> None:
    """End to end through the model and the peer calculation: fail closed."""
    resolver = FileSecretResolver(tmp_path)
    nodes = {"node1": NodeInfo("node1", IPv4Interface("198.51.100.2/26"), as_number=65101)}
    labels = {"node1": {"rack": "r0"}}
    res = _peer_resource("tor")
    peer = from_bgppeer_resource(res, resolver)
    assert peer.password_unresolved
    assert desired_peers("node1", nodes, BGPConfig(), [peer], labels) == ()
    _write(tmp_path, "tor", "password", b"s3cret\n")
    peer = from_bgppeer_resource(res, resolver)
    (spec,) = desired_peers("node1", nodes, BGPConfig(), [peer], labels)
    assert spec.md5_password == "s3cret" and spec.ebgp and spec.next_hop_self
    assert (spec.local_as, spec.remote_as) == (65101, 65000)
    assert (spec.hold_time, spec.keepalive, spec.restart_time) == (30, 10, 77)
