"""Links on the real kernel: listing, helpers, and the watcher (rename keeps the index)."""

from __future__ import annotations

import asyncio
import json
from ipaddress import IPv4Interface

import pytest

from kernel.links import (
    LinkEvent,
    LinkWatcher,
    add_address,
    create_veth,
    delete_link,
    list_links,
    set_link_up,
)
from tests.support.netns import NetnsFactory, ns_exec

pytestmark = pytest.mark.netns


def test_list_links_and_helpers(netns: NetnsFactory) -> None:
    a = netns.new("la")
    b = netns.new("lb")
    create_veth(a, "tbw1", b, "eth0", mac_a="ee:ee:ee:ee:ee:ee", mtu=1400)
    set_link_up(a, "tbw1")
    set_link_up(b, "eth0")
    add_address(b, "eth0", IPv4Interface("198.51.100.5/24"))
    links = {link.name: link for link in list_links(a)}
    assert set(links) == {"lo", "tbw1"}
    tbw1 = links["tbw1"]
    assert tbw1.mac == "ee:ee:ee:ee:ee:ee" and tbw1.mtu == 1400 and tbw1.admin_up
    assert {link.name for link in list_links(b)} == {"lo", "eth0"}
    addrs = json.loads(ns_exec(b, ["ip", "-j", "addr", "show", "dev", "eth0"]))
    assert addrs[0]["addr_info"][0]["local"] == "198.51.100.5"
    assert delete_link(a, "tbw1") is True
    assert delete_link(a, "tbw1") is False
    assert {link.name for link in list_links(b)} == {"lo"}  # the peer went with it


async def _next(q: asyncio.Queue[LinkEvent], pred: object, timeout: float = 5.0) -> LinkEvent:
    assert callable(pred)
    async with asyncio.timeout(timeout):
        while True:
            ev = await q.get()
            if pred(ev):
                return ev


def test_watcher_reports_add_up_rename_remove(netns: NetnsFactory) -> None:
    ns = netns.new("lw")
    ns_exec(ns, ["ip", "link", "add", "tbw0", "type", "veth", "peer", "name", "tbp0"])

    async def scenario() -> None:
        q: asyncio.Queue[LinkEvent] = asyncio.Queue()
        watcher = LinkWatcher(ns, q.put_nowait)
        task = asyncio.create_task(watcher.run())
        try:
            async with asyncio.timeout(5):
                await watcher.ready.wait()
            initial = {q.get_nowait().link.name for _ in range(q.qsize())}
            assert initial == {"lo", "tbw0", "tbp0"}

            await asyncio.to_thread(
                ns_exec, ns, ["ip", "link", "add", "tbw1", "type", "veth", "peer", "name", "tbp1"]
            )
            added = await _next(q, lambda e: e.kind == "added" and e.link.name == "tbw1")
            index = added.link.index

            await asyncio.to_thread(ns_exec, ns, ["ip", "link", "set", "tbw1", "up"])
            await _next(
                q, lambda e: e.kind == "changed" and e.link.name == "tbw1" and e.link.admin_up
            )

            await asyncio.to_thread(ns_exec, ns, ["ip", "link", "set", "tbw1", "down"])
            await asyncio.to_thread(ns_exec, ns, ["ip", "link", "set", "tbw1", "name", "tbw9"])
            ren = await _next(q, lambda e: e.kind == "renamed")
            assert ren.link.name == "tbw9" and ren.link.index == index
            assert ren.old is not None and ren.old.name == "tbw1"

            await asyncio.to_thread(ns_exec, ns, ["ip", "link", "del", "tbw9"])
            gone = await _next(q, lambda e: e.kind == "removed" and e.link.name == "tbw9")
            assert gone.link.index == index
            assert {link.name for link in watcher.links.values()} == {"lo", "tbw0", "tbp0"}
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(scenario())


def test_watcher_resync_emits_only_differences(netns: NetnsFactory) -> None:
    ns = netns.new("lr")

    async def scenario() -> None:
        events: list[LinkEvent] = []
        watcher = LinkWatcher(ns, events.append)
        task = asyncio.create_task(watcher.run())
        try:
            await asyncio.wait_for(watcher.ready.wait(), 5)
            assert [e.link.name for e in events] == ["lo"]
            events.clear()
            # what an overflow triggers: a fresh dump; nothing changed, so nothing is reported
            watcher.ready.clear()
            watcher.resync()
            await asyncio.wait_for(watcher.ready.wait(), 5)
            assert events == [] and watcher.resyncs == 2
            await asyncio.to_thread(ns_exec, ns, ["ip", "link", "set", "lo", "mtu", "1400"])
            await asyncio.sleep(0.2)
            assert [(e.kind, e.link.mtu) for e in events] == [("changed", 1400)]
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(scenario())
