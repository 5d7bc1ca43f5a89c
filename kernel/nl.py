"""Shared low-level helpers for the kernel drivers: namespaces, subprocesses, rtnetlink links.

Role: the typed layer under ``routes``, ``links``, ``sysctl`` and ``conntrack``.

- ``run_in_netns(netns, fn)`` runs ``fn`` in a *short-lived thread* that first joins the named
  network namespace with ``setns(2)``. A thread's network namespace is its own (Linux tracks it
  per task), so the rest of the process never moves; the thread ends afterwards, so it can never
  be left in the wrong namespace. Sockets created there stay bound to that namespace, and
  ``/proc/sys/net`` opened there shows that namespace's values.
- ``run_cmd(netns, argv, input)`` runs a command via ``kernel.netns.ns_argv``.
- A minimal rtnetlink codec for links (RTM_NEWLINK/RTM_DELLINK): only the fields the agents
  need (index, name, flags, operstate, MTU, MAC). pyroute2 would do this too, but it creates
  namespace sockets by forking a child (and by default *creates* a missing namespace), and its
  sync API runs its own event loop; a 100-line codec is simpler to type and to reason about.

Invariants: nothing here writes to the kernel except what callers ask for; ``run_in_netns``
never changes the calling thread's namespace; every parse tolerates unknown attributes.
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

from kernel.netns import ns_argv

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
NETLINK_ROUTE = 0
RTMGRP_LINK = 0x1

NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4
RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18

NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_DUMP = 0x300

IFF_UP = 0x1
IFF_RUNNING = 0x40
IFF_LOWER_UP = 0x10000

IFLA_ADDRESS = 1
IFLA_IFNAME = 3
IFLA_MTU = 4
IFLA_OPERSTATE = 16

OPER_STATES = {
    0: "unknown",
    1: "notpresent",
    2: "down",
    3: "lowerlayerdown",
    4: "testing",
    5: "dormant",
    6: "up",
}

_NLMSGHDR = struct.Struct("=IHHII")
_IFINFOMSG = struct.Struct("=BxHiII")
_RTATTR = struct.Struct("=HH")


class NetnsError(OSError):
    """Entering a network namespace failed (it does not exist, or we may not join it)."""


_libc: ctypes.CDLL | None = None


def _setns(fd: int) -> None:
    global _libc  # noqa: PLW0603 - loaded once, lazily
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NetnsError(err, os.strerror(err))


def run_in_netns(netns: str | None, fn: Callable[[], T]) -> T:
    """Return ``fn()`` evaluated inside ``netns`` (``None``: here, in the calling thread)."""
    if netns is None:
        return fn()
    path = f"/run/netns/{netns}"
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            error.append(NetnsError(exc.errno, f"network namespace {netns!r}: {exc.strerror}"))
            return
        try:
            _setns(fd)
        except BaseException as exc:
            error.append(exc)
            return
        finally:
            os.close(fd)
        try:
            result.append(fn())
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=target, name=f"netns-{netns}", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def run_cmd(
    netns: str | None, argv: Sequence[str], input: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` inside ``netns`` (via ``ns_argv``); never raises on a non-zero exit."""
    return subprocess.run(
        ns_argv(netns, argv),
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=None if input is not None else subprocess.DEVNULL,
    )


# ---------------------------------------------------------------------------------------------
# rtnetlink links


@dataclass(frozen=True, slots=True)
class Link:
    """One network interface as the kernel reports it."""

    index: int
    name: str
    admin_up: bool
    oper_state: str
    mtu: int
    mac: str | None

    @property
    def up(self) -> bool:
        """Administratively up and carrier present (``unknown`` counts: lo, tun devices)."""
        return self.admin_up and self.oper_state in ("up", "unknown")


@dataclass(frozen=True, slots=True)
class LinkMessage:
    """A decoded RTM_NEWLINK / RTM_DELLINK (``deleted``) message."""

    seq: int
    deleted: bool
    link: Link


def netlink_socket(netns: str | None, groups: int = 0, rcvbuf: int = 1 << 20) -> socket.socket:
    """A NETLINK_ROUTE socket bound inside ``netns`` and subscribed to ``groups``."""

    def make() -> socket.socket:
        sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE
        )
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.bind((0, groups))
        except BaseException:
            sock.close()
            raise
        return sock

    return run_in_netns(netns, make)


def getlink_dump_request(seq: int) -> bytes:
    body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
    hdr = _NLMSGHDR.pack(
        _NLMSGHDR.size + len(body), RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, seq, 0
    )
    return hdr + body


class NetlinkError(OSError):
    """The kernel answered a request with an error."""


def _attrs(data: bytes, offset: int, end: int) -> Iterator[tuple[int, bytes]]:
    while offset + _RTATTR.size <= end:
        length, kind = _RTATTR.unpack_from(data, offset)
        if length < _RTATTR.size:
            return
        yield kind & 0x3FFF, data[offset + _RTATTR.size : offset + length]
        offset += (length + 3) & ~3


@dataclass(frozen=True, slots=True)
class Parsed:
    """Messages decoded from one datagram, and which dump sequence numbers completed."""

    links: list[LinkMessage]
    done: list[int]


def parse_messages(data: bytes) -> Parsed:
    """Decode link messages and DONE markers; raise NetlinkError on an error reply."""
    links: list[LinkMessage] = []
    done: list[int] = []
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _flags, seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size:
            break
        body = offset + _NLMSGHDR.size
        end = offset + length
        if kind == NLMSG_DONE:
            done.append(seq)
        elif kind == NLMSG_ERROR:
            (code,) = struct.unpack_from("=i", data, body)
            if code != 0:
                raise NetlinkError(-code, os.strerror(-code))
        elif kind in (RTM_NEWLINK, RTM_DELLINK):
            _family, _type, index, flags, _change = _IFINFOMSG.unpack_from(data, body)
            name = ""
            mtu = 0
            mac: str | None = None
            oper = 0
            for attr, value in _attrs(data, body + _IFINFOMSG.size, end):
                if attr == IFLA_IFNAME:
                    name = value.split(b"\0", 1)[0].decode()
                elif attr == IFLA_MTU and len(value) >= 4:
                    (mtu,) = struct.unpack_from("=I", value)
                elif attr == IFLA_ADDRESS and len(value) == 6:
                    mac = ":".join(f"{b:02x}" for b in value)
                elif attr == IFLA_OPERSTATE and value:
                    oper = value[0]
            link = Link(
                index=index,
                name=name,
                admin_up=bool(flags & IFF_UP),
                oper_state=OPER_STATES.get(oper, "unknown"),
                mtu=mtu,
                mac=mac,
            )
            links.append(LinkMessage(seq=seq, deleted=kind == RTM_DELLINK, link=link))
        offset += (length + 3) & ~3
    return Parsed(links=links, done=done)


def dump_links(sock: socket.socket, seq: int = 1) -> list[Link]:
    """Blocking dump of all links over ``sock`` (multicast messages in between are ignored)."""
    sock.send(getlink_dump_request(seq))
    links: list[Link] = []
    while True:
        parsed = parse_messages(sock.recv(1 << 18))
        links.extend(m.link for m in parsed.links if m.seq == seq)
        if seq in parsed.done:
            return links
