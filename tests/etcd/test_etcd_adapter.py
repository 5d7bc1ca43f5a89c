"""The etcd adapter against a real etcd: the shared ``KVStore`` contract, large snapshots,
outages, TLS with client certificates, and calicoctl-style configuration."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from datastore.etcd import (
    DEFAULT_ENDPOINTS,
    ConfigError,
    EtcdConfig,
    EtcdKVStore,
    ParsedEndpoint,
    parse_endpoint,
)
from datastore.kv import DatastoreError, KVStore, UnavailableError
from lab.etcd import EtcdServer, find_etcd_binary, free_port
from tests.unit.test_fake_kv import KVContract, collect

pytestmark = pytest.mark.etcd


def connect(endpoint: str, **kwargs: object) -> EtcdKVStore:
    return EtcdKVStore(EtcdConfig(endpoints=(endpoint,), timeout=5.0, **kwargs))  # type: ignore[arg-type]


class TestEtcdContract(KVContract):
    @pytest.fixture
    def store(self, etcd_endpoint: str) -> Iterator[KVStore]:
        store = connect(etcd_endpoint)
        yield store
        store.close()


def test_list_larger_than_grpc_default_message_limit(etcd_endpoint: str) -> None:
    store = connect(etcd_endpoint)
    try:
        value = b"x" * 100_000
        for i in range(60):  # 6 MB in one page: above gRPC's 4 MiB default receive limit
            store.put(f"/big/{i:02d}", value)
        kvs, _ = store.list("/big/", page_size=1000)
        assert len(kvs) == 60 and all(kv.value == value for kv in kvs)
        kvs, _ = store.list("/big/", page_size=7)
        assert len(kvs) == 60
    finally:
        store.close()


def test_unavailable_server(private_etcd: EtcdServer) -> None:
    store = connect(private_etcd.endpoint)
    rev = store.put("/a", b"1")
    w = store.watch("/", rev + 1)
    private_etcd.kill()
    t0 = time.monotonic()
    with pytest.raises(UnavailableError):
        w.poll(10.0)
    with pytest.raises(UnavailableError):
        store.get("/a")
    with pytest.raises(UnavailableError):
        store.put("/a", b"2")
    with pytest.raises(UnavailableError):
        store.watch("/", 0)
    assert time.monotonic() - t0 < 8.0
    store.close()
    private_etcd.start()
    store = connect(private_etcd.endpoint)  # a fresh client reconnects at once
    kv = store.get("/a")
    assert kv is not None and kv.value == b"1" and kv.mod_revision == rev
    store.close()


def test_nothing_listening() -> None:
    store = connect(f"127.0.0.1:{free_port()}")
    t0 = time.monotonic()
    with pytest.raises(UnavailableError):
        store.get("/a")
    with pytest.raises(UnavailableError):
        store.list("/")
    assert time.monotonic() - t0 < 8.0


# --- configuration ----------------------------------------------------------------------------


def test_config_from_env() -> None:
    cfg = EtcdConfig.from_env(
        {
            "ETCD_ENDPOINTS": "https://10.0.0.1:2379, https://etcd-2:4001",
            "ETCD_CA_CERT_FILE": "/ca.pem",
            "ETCD_CERT_FILE": "/c.pem",
            "ETCD_KEY_FILE": "/k.pem",
        }
    )
    assert cfg.endpoints == ("https://10.0.0.1:2379", "https://etcd-2:4001")
    assert (cfg.ca_cert_file, cfg.cert_file, cfg.key_file) == ("/ca.pem", "/c.pem", "/k.pem")
    empty = EtcdConfig.from_env({})
    assert empty.endpoints == DEFAULT_ENDPOINTS and empty.ca_cert_file is None


def test_parse_endpoint() -> None:
    assert parse_endpoint("http://h:1", tls_configured=True) == ParsedEndpoint("h", 1, False)
    assert parse_endpoint("https://h", tls_configured=False) == ParsedEndpoint("h", 2379, True)
    assert parse_endpoint("h:5", tls_configured=False) == ParsedEndpoint("h", 5, False)
    assert parse_endpoint("h:5", tls_configured=True) == ParsedEndpoint("h", 5, True)
    assert parse_endpoint("[::1]:7", tls_configured=False) == ParsedEndpoint("::1", 7, False)
    for bad in ("unix:///x", "http://:5", "h:notaport"):
        with pytest.raises(ConfigError):
            parse_endpoint(bad, tls_configured=False)


def test_config_errors_name_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ETCD_CERT_FILE and ETCD_KEY_FILE"):
        EtcdKVStore(EtcdConfig(endpoints=("https://h:1",), cert_file="/c"))
    with pytest.raises(ConfigError, match="ETCD_CA_CERT_FILE"):
        EtcdKVStore(EtcdConfig(endpoints=("https://h:1",), ca_cert_file=str(tmp_path / "no")))
    with pytest.raises(ConfigError, match="ETCD_ENDPOINTS"):
        EtcdKVStore(EtcdConfig(endpoints=()))


# --- TLS with client certificates -------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _make_pki(d: Path) -> None:
    """A CA, a server certificate for 127.0.0.1 and a client certificate (EC P-256, 1 day)."""
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "1",
             "-subj", "/CN=tabby-test-ca", cwd=d)  # fmt: skip
    for name, ext in (
        ("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"),
        ("client", "extendedKeyUsage=clientAuth\n"),
        ("other", "extendedKeyUsage=clientAuth\n"),
    ):
        (d / f"{name}.ext").write_text(ext)
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN=tabby-{name}", cwd=d)  # fmt: skip
        ca: tuple[str, ...] = ("-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial")
        if name == "other":  # self-signed: a client certificate from the wrong CA
            ca = ("-signkey", "other.key")
        _openssl("x509", "-req", "-in", f"{name}.csr", *ca, "-out", f"{name}.crt",
                 "-days", "1", "-extfile", f"{name}.ext", cwd=d)  # fmt: skip


@pytest.fixture
def tls_etcd(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An etcd that requires client certificates: (https endpoint, directory of the PKI)."""
    pki = tmp_path / "pki"
    pki.mkdir()
    _make_pki(pki)
    client_port, peer_port = free_port(), free_port()
    url, peer = f"https://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
    cmd = [
        find_etcd_binary(),
        "--name", "tls", "--data-dir", str(tmp_path / "data"),
        "--listen-client-urls", url, "--advertise-client-urls", url,
        "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
        "--initial-cluster", f"tls={peer}",
        "--cert-file", str(pki / "server.crt"), "--key-file", str(pki / "server.key"),
        "--trusted-ca-file", str(pki / "ca.crt"), "--client-cert-auth",
        "--log-level", "warn",
    ]  # fmt: skip
    with open(tmp_path / "etcd.log", "wb") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={
                **os.environ,
                "ETCD_UNSUPPORTED_ARCH": os.environ.get("ETCD_UNSUPPORTED_ARCH", ""),
            },
            start_new_session=True,
        )
    try:
        store = connect(
            url,
            ca_cert_file=str(pki / "ca.crt"),
            cert_file=str(pki / "client.crt"),
            key_file=str(pki / "client.key"),
        )
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, (tmp_path / "etcd.log").read_text()
            try:
                store.get("/health-probe")
                break
            except UnavailableError:
                assert time.monotonic() < deadline, "TLS etcd did not come up"
                store.close()
                time.sleep(0.1)
                store = connect(
                    url,
                    ca_cert_file=str(pki / "ca.crt"),
                    cert_file=str(pki / "client.crt"),
                    key_file=str(pki / "client.key"),
                )
        store.close()
        yield url, pki
    finally:
        proc.kill()
        proc.wait(10)


def test_tls_requires_client_certificate(tls_etcd: tuple[str, Path]) -> None:
    url, pki = tls_etcd
    env = {
        "ETCD_ENDPOINTS": url,
        "ETCD_CA_CERT_FILE": str(pki / "ca.crt"),
        "ETCD_CERT_FILE": str(pki / "client.crt"),
        "ETCD_KEY_FILE": str(pki / "client.key"),
    }
    good = EtcdKVStore(EtcdConfig.from_env(env))
    rev = good.put("/tls/a", b"secret")
    kv = good.get("/tls/a")
    assert kv is not None and kv.value == b"secret" and kv.mod_revision == rev
    w = good.watch("/tls/", rev)
    assert [e.value for e in collect(w, 1)] == [b"secret"]
    w.cancel()
    good.close()

    refused = [
        EtcdConfig(endpoints=(url,), ca_cert_file=str(pki / "ca.crt"), timeout=3.0),  # no cert
        EtcdConfig(  # a certificate the server's CA did not sign
            endpoints=(url,),
            ca_cert_file=str(pki / "ca.crt"),
            cert_file=str(pki / "other.crt"),
            key_file=str(pki / "other.key"),
            timeout=3.0,
        ),
        EtcdConfig(endpoints=(url.replace("https", "http"),), timeout=3.0),  # plaintext
    ]
    for cfg in refused:
        store = EtcdKVStore(cfg)
        with pytest.raises(DatastoreError):
            store.get("/tls/a")
        with pytest.raises(DatastoreError):
            store.put("/tls/a", b"overwritten")
        store.close()
    check = EtcdKVStore(EtcdConfig.from_env(env))
    kv = check.get("/tls/a")
    assert kv is not None and kv.value == b"secret"
    check.close()
