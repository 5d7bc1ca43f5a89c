"""bgp.tunnel.IpTunnelKernel on the real kernel, in namespaces: reading a device and its
addresses, the uplink MTU, and creation. On a kernel without ipip (this development machine)
creation must raise ``TunnelUnavailableError``; with ipip (the VM test) it must give a tunl0.
The device steps (MTU, up, address) are exercised on a veth here, since tunl0 may not exist."""

from __future__ import annotations

import os
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path

import pytest

from bgp.tunnel import IpTunnelKernel, TunnelStep, TunnelUnavailableError
from kernel.links import add_address, create_veth, set_link_up
from tests.support.netns import NetnsFactory

pytestmark = pytest.mark.netns


def test_read_uplink_and_steps_on_a_real_device(netns: NetnsFactory) -> None:
    a = netns.new("ta")
    b = netns.new("tb")
    create_veth(a, "eth0", b, "peer0", mtu=1500)
    add_address(a, "eth0", IPv4Interface("198.51.100.2/26"))
    k = IpTunnelKernel(a)
    assert not k.read("tunl0").exists
    assert k.uplink_mtu(IPv4Address("198.51.100.2")) == 1500
    assert k.uplink_mtu(IPv4Address("198.51.100.9")) is None
    # A device without any IPv4 address is still found (``ip -4`` would hide it).
    create_veth(a, "tv0", b, "tv1")
    link = k.read("tv0")
    assert link.exists and not link.up and link.addresses == ()
    k.apply("tv0", TunnelStep("set_mtu", mtu=1480))
    k.apply("tv0", TunnelStep("set_up"))
    k.apply("tv0", TunnelStep("add_address", address=IPv4Interface("10.65.1.0/32")))
    k.apply("tv0", TunnelStep("add_address", address=IPv4Interface("10.65.9.9/32")))
    k.apply("tv0", TunnelStep("del_address", address=IPv4Interface("10.65.9.9/32")))
    set_link_up(b, "tv1")
    link = k.read("tv0")
    assert link.up and link.mtu == 1480
    assert link.addresses == (IPv4Interface("10.65.1.0/32"),)


def test_create_tunl0_or_report_unavailable(netns: NetnsFactory) -> None:
    a = netns.new("tc")
    k = IpTunnelKernel(a)
    if k.read("tunl0").exists:  # ipip loaded: the kernel made tunl0 already
        k.create("tunl0")  # "File exists" counts as success
        assert k.read("tunl0").exists
        return
    release = os.uname().release
    if any((Path("/lib/modules") / release).glob("kernel/net/ipv4/ipip.ko*")):
        pytest.skip(
            "creating tunl0 would load the ipip module, which adds a tunl0 to every namespace,"
            " the root one included; tests/vm covers creation"
        )
    with pytest.raises(TunnelUnavailableError):
        k.create("tunl0")
    assert not k.read("tunl0").exists
