"""Sysctl desired values: the per-workload set, path validation, and the root-namespace guard."""

from __future__ import annotations

import pytest

from kernel.netns import NamespaceGuardError, in_root_netns
from kernel.sysctl import SysctlDriver, SysctlError, workload_interface_sysctls


def test_workload_interface_sysctls() -> None:
    v4 = workload_interface_sysctls("tbw1", ipv4=True, ipv6=False)
    assert v4 == {
        "net/ipv4/ip_forward": "1",
        "net/ipv4/conf/tbw1/forwarding": "1",
        "net/ipv4/conf/tbw1/rp_filter": "1",
        "net/ipv4/conf/tbw1/proxy_arp": "1",
        "net/ipv4/neigh/tbw1/proxy_delay": "0",
    }
    v6 = workload_interface_sysctls("tbw1", ipv4=False, ipv6=True)
    assert v6 == {
        "net/ipv6/conf/tbw1/proxy_ndp": "1",
        "net/ipv6/conf/tbw1/accept_ra": "0",
        "net/ipv6/conf/tbw1/forwarding": "1",
    }
    assert workload_interface_sysctls("tbw1", True, True) == {**v4, **v6}


@pytest.mark.parametrize("path", ["/proc/sys/net/ipv4/ip_forward", "net/../../etc/x", "", "a b"])
def test_bad_paths_refused(path: str) -> None:
    with pytest.raises(SysctlError):
        SysctlDriver("x").set(path, "1")


def test_forget_interface_keeps_others() -> None:
    d = SysctlDriver("x")
    d.set_many(workload_interface_sysctls("tbw1", True, True))
    d.set_many(workload_interface_sysctls("tbw2", True, False))
    d.forget_interface("tbw1")
    assert set(d.desired) == set(workload_interface_sysctls("tbw2", True, False))


def test_apply_in_root_namespace_is_refused_when_required() -> None:
    if not in_root_netns():
        pytest.skip("not in the root namespace")
    d = SysctlDriver(None)
    d.set("net/ipv4/ip_forward", "1")
    with pytest.raises(NamespaceGuardError):
        d.apply()


def test_apply_with_nothing_desired_does_nothing() -> None:
    assert SysctlDriver(None).apply().written == ()
