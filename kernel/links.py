"""Links: list interfaces, watch them change, and the few link writes felix and CNI need.

Role:
- ``list_links(netns)``: one rtnetlink dump -> ``Link`` values (index, name, admin/oper state,
  MTU, MAC).
- ``LinkWatcher``: subscribes to RTNLGRP_LINK in the namespace, dumps once on start (and again
  whenever the socket overflows, ENOBUFS), and reports differences from its previous view as
  ``LinkEvent``s: ``added``, ``removed``, ``renamed`` (same index, new name) and ``changed``
  (admin/oper state, MTU, MAC). It runs inside the agent's asyncio loop (``loop.add_reader`` on a
  non-blocking socket; no thread) and calls a plain callback in the loop.
- ``create_veth``, ``delete_link``, ``set_link_up``, ``add_address``: small imperative helpers
  (one ``ip`` process each) for CNI and tests.

Invariants: the watcher's view (``links``) is always "last dump + every event since"; events are
only emitted for real differences, so a resync that finds nothing new emits nothing. Links are
keyed by index, never by name. Every write helper calls ``guard_writes`` for each namespace it
touches.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from kernel.netns import guard_writes
from kernel.nl import (
    RTMGRP_LINK,
    Link,
    dump_links,
    getlink_dump_request,
    netlink_socket,
    parse_messages,
    run_cmd,
)

__all__ = [
    "Link",
    "LinkError",
    "LinkEvent",
    "LinkWatcher",
    "add_address",
    "create_veth",
    "delete_link",
    "diff_links",
    "list_links",
    "set_link_up",
]

log = logging.getLogger(__name__)

EventKind = Literal["added", "removed", "renamed", "changed"]


class LinkError(RuntimeError):
    """An ``ip link``/``ip addr`` command failed; the message names the namespace and link."""


@dataclass(frozen=True, slots=True)
class LinkEvent:
    """A difference between two views of one interface (``old`` is None for ``added``)."""

    kind: EventKind
    link: Link
    old: Link | None = None


def list_links(netns: str | None) -> list[Link]:
    """All interfaces of ``netns``, by index."""
    sock = netlink_socket(netns)
    with sock:
        return sorted(dump_links(sock), key=lambda link: link.index)


def _event(old: Link | None, new: Link | None) -> LinkEvent | None:
    if old is None and new is not None:
        return LinkEvent("added", new)
    if new is None and old is not None:
        return LinkEvent("removed", old, old)
    if old is None or new is None or old == new:
        return None
    if old.name != new.name:
        return LinkEvent("renamed", new, old)
    return LinkEvent("changed", new, old)


def diff_links(old: dict[int, Link], new: dict[int, Link]) -> list[LinkEvent]:
    """Events that turn view ``old`` into view ``new`` (removals first)."""
    events: list[LinkEvent] = []
    for index in sorted(old.keys() - new.keys()):
        ev = _event(old[index], None)
        if ev is not None:
            events.append(ev)
    for index in sorted(new):
        ev = _event(old.get(index), new[index])
        if ev is not None:
            events.append(ev)
    return events


class LinkWatcher:
    """Reports interface changes in ``netns`` to ``callback`` from within the asyncio loop.

    ``await watcher.run()`` runs until cancelled; ``watcher.ready`` is set after the first dump
    (whose links are reported as ``added``). ``links`` is the current view by index.
    """

    def __init__(self, netns: str | None, callback: Callable[[LinkEvent], None]) -> None:
        self.netns = netns
        self.callback = callback
        self.links: dict[int, Link] = {}
        self.ready = asyncio.Event()
        self.resyncs = 0
        self._seq = 0
        self._dumping: int | None = None
        self._dump: dict[int, Link] = {}
        self._dump_deleted: set[int] = set()
        self._sock: socket.socket | None = None

    def resync(self) -> None:
        """Ask for a full dump now (also done on start and on overflow); no-op when not running."""
        if self._sock is not None:
            self._start_dump(self._sock)

    def _emit(self, events: list[LinkEvent]) -> None:
        for ev in events:
            log.debug("links.event kind=%s index=%d name=%s", ev.kind, ev.link.index, ev.link.name)
            try:
                self.callback(ev)
            except Exception:
                log.exception("links.callback_failed kind=%s name=%s", ev.kind, ev.link.name)

    def _start_dump(self, sock: socket.socket) -> None:
        self._seq += 1
        self._dumping = self._seq
        self._dump = {}
        self._dump_deleted = set()
        self.resyncs += 1
        sock.send(getlink_dump_request(self._seq))

    def _on_readable(self, sock: socket.socket) -> None:
        while True:
            try:
                data = sock.recv(1 << 18)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    log.warning("links.overflow netns=%s: resync", self.netns)
                    self._start_dump(sock)
                    continue
                raise
            parsed = parse_messages(data)
            for msg in parsed.links:
                if self._dumping is not None and msg.seq == self._dumping:
                    self._dump[msg.link.index] = msg.link
                    continue
                if self._dumping is not None:  # an event during a dump: the dump may miss it
                    if msg.deleted:
                        self._dump.pop(msg.link.index, None)
                        self._dump_deleted.add(msg.link.index)
                    else:
                        self._dump[msg.link.index] = msg.link
                        self._dump_deleted.discard(msg.link.index)
                    continue
                old = self.links.get(msg.link.index)
                if msg.deleted:
                    self.links.pop(msg.link.index, None)
                    ev = _event(old, None)
                else:
                    self.links[msg.link.index] = msg.link
                    ev = _event(old, msg.link)
                if ev is not None:
                    self._emit([ev])
            if self._dumping is not None and self._dumping in parsed.done:
                self._dumping = None
                new = {i: link for i, link in self._dump.items() if i not in self._dump_deleted}
                events = diff_links(self.links, new)
                self.links = new
                self._emit(events)
                self.ready.set()

    async def run(self) -> None:
        """Watch until cancelled."""
        loop = asyncio.get_running_loop()
        sock = netlink_socket(self.netns, groups=RTMGRP_LINK)
        sock.setblocking(False)
        fut: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            try:
                self._on_readable(sock)
            except Exception as exc:
                if not fut.done():
                    fut.set_exception(exc)

        self._sock = sock
        try:
            self._start_dump(sock)
            loop.add_reader(sock.fileno(), readable)
            await fut
        finally:
            with contextlib.suppress(Exception):
                loop.remove_reader(sock.fileno())
            self._sock = None
            sock.close()


# ---------------------------------------------------------------------------------------------
# writes (imperative helpers)


def _ip(netns: str | None, argv: list[str], what: str) -> None:
    guard_writes(netns)
    res = run_cmd(netns, ["ip", *argv])
    if res.returncode != 0:
        raise LinkError(f"{what} netns={netns}: {res.stderr.strip()}")


def create_veth(
    netns_a: str | None,
    name_a: str,
    netns_b: str | None,
    name_b: str,
    *,
    mac_a: str | None = None,
    mac_b: str | None = None,
    mtu: int | None = None,
) -> None:
    """Create a veth pair: ``name_a`` in ``netns_a``, its peer ``name_b`` in ``netns_b``.

    Both ends are left down (see ``set_link_up``). The pair is created in ``netns_a`` and the
    peer moved at creation time, so no end ever exists in another namespace.
    """
    guard_writes(netns_a)
    guard_writes(netns_b)
    argv = ["link", "add", name_a]
    if mac_a:
        argv += ["address", mac_a]
    if mtu:
        argv += ["mtu", str(mtu)]
    argv += ["type", "veth", "peer", "name", name_b]
    if mac_b:
        argv += ["address", mac_b]
    if mtu:
        argv += ["mtu", str(mtu)]
    if netns_b != netns_a:
        # a PID names a namespace for ip: ours is the current one (netns_b=None)
        argv += ["netns", netns_b if netns_b is not None else str(os.getpid())]
    _ip(netns_a, argv, f"create veth {name_a}/{name_b}")


def delete_link(netns: str | None, name: str) -> bool:
    """Delete ``name``; False when it did not exist."""
    guard_writes(netns)
    res = run_cmd(netns, ["ip", "link", "del", name])
    if res.returncode == 0:
        return True
    if "Cannot find device" in res.stderr:
        return False
    raise LinkError(f"delete link {name} netns={netns}: {res.stderr.strip()}")


def set_link_up(netns: str | None, name: str, up: bool = True) -> None:
    _ip(netns, ["link", "set", name, "up" if up else "down"], f"set link {name}")


def add_address(
    netns: str | None,
    name: str,
    address: ipaddress.IPv4Interface | ipaddress.IPv6Interface,
    *,
    nodad: bool = True,
) -> None:
    """Add ``address`` (with prefix length) to ``name``; present already is fine."""
    argv = ["addr", "replace", address.with_prefixlen, "dev", name]
    if address.version == 6 and nodad:
        argv.append("nodad")
    _ip(netns, argv, f"add address {address} to {name}")
