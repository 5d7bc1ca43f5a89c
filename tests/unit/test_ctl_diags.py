"""Pure helpers of ``tabbyctl diags``: agent recognition, environment filter, rule detection."""

from __future__ import annotations

import io
import tarfile

from ctl.diags import Bundle, agent_name, filter_env, has_rules, tail


def test_agent_name_console_scripts_and_modules() -> None:
    assert agent_name("tabby-felix", ["/v/bin/python3", "/v/bin/tabby-felix"]) == "tabby-felix"
    assert agent_name("python3", ["/v/bin/python3", "/v/bin/tabby-bgp"]) == "tabby-bgp"
    assert agent_name("python3", ["python3", "-m", "felix"]) == "tabby-felix"
    assert agent_name("python3", ["python3", "-m", "bgp"]) == "tabby-bgp"
    assert agent_name("python3", ["python3", "-m", "pytest", "tabby-felix"]) is None
    assert agent_name("bash", ["bash", "-c", "echo tabby-felix"]) is None


def test_filter_env_keeps_configuration_only() -> None:
    raw = b"FELIX_HEALTHPORT=9099\0SECRET_TOKEN=x\0NODENAME=n1\0TABBY_BGP_STATE_DIR=/s\0PATH=/b\0"
    assert filter_env(raw) == {
        "FELIX_HEALTHPORT": "9099",
        "NODENAME": "n1",
        "TABBY_BGP_STATE_DIR": "/s",
    }


def test_has_rules_with_and_without_counters() -> None:
    assert not has_rules("*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n")
    assert has_rules("*filter\n:tby-X - [0:0]\n-A tby-X -j DROP\nCOMMIT\n")
    assert has_rules("*filter\n[12:3400] -A INPUT -j tby-INPUT\nCOMMIT\n")


def test_tail_marks_the_cut() -> None:
    data = b"".join(b"line %d\n" % i for i in range(1000))
    out = tail(data, 100)
    assert out.startswith(b"[... cut") and out.endswith(b"line 999\n")
    assert tail(b"short\n", 100) == b"short\n"


def test_bundle_always_has_errors_and_summary() -> None:
    b = Bundle("top")
    b.add("a.txt", "x")
    b.error("bgp/status.json", "not\nanswering")
    with tarfile.open(fileobj=io.BytesIO(b.tar_gz("hdr")), mode="r:gz") as tar:
        names = sorted(m.name for m in tar.getmembers())
        f = tar.extractfile("top/errors.txt")
        assert f is not None
        assert f.read() == b"bgp/status.json: not answering\n"
    assert names == ["top/a.txt", "top/errors.txt", "top/summary.txt"]
