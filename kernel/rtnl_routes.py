"""Route writes over rtnetlink: the default ``RouteBackend`` of ``kernel.routes.RouteTable``.

Role: encode ``RouteOp`` values as RTM_NEWROUTE / RTM_DELROUTE messages and send them in large
batches on one NETLINK_ROUTE socket bound inside the table's namespace; read-backs (``dump``)
stay on ``ip -N -j route show`` (``IpRouteBackend.dump``), which is fast enough for the rare
resync and shares the parser with the iproute2 backend.

Why not ``ip -force -batch``: measured on this kernel (docs/bench/bgp.md), 10,000 routes take
~100 ms through ``ip -batch`` (text parsing and one acknowledged round trip per route) and ~35 ms
here (kernel time; building the messages ~3 ms), because nothing waits per route:

- Requests carry no NLM_F_ACK, except the last one of each chunk of ``CHUNK`` messages. The
  kernel handles rtnetlink requests in order, in the sender's ``sendmsg``; a failed request is
  answered with an NLMSG_ERROR carrying its sequence number even without NLM_F_ACK. So reading
  until the acknowledgement of the chunk's last sequence number yields every failure of the
  chunk, mapped to its op, and no reply at all for the ones that worked.
- NETLINK_CAP_ACK (errors do not echo the request) and NETLINK_EXT_ACK (the kernel's own error
  text, e.g. "Nexthop has invalid gateway", as ``ip`` prints it) are set on the socket.
- A chunk (``CHUNK``) is small enough that its error replies fit the receive buffer; an
  overrun (ENOBUFS) fails the whole chunk, which makes the route table re-read the kernel.

Encoding follows iproute2's ``ip route {add,replace,del}``: ADD is NLM_F_CREATE|NLM_F_EXCL,
REPLACE is NLM_F_CREATE|NLM_F_REPLACE, DELETE names table, protocol, metric, type (0 for
unicast: any) and scope NOWHERE (any) and no next hop, so the kernel deletes only our route.
Interface names are resolved to indexes per apply with RTM_GETLINK on the same socket (so in
the right namespace); a missing interface fails only the routes that need it, as NO_INTERFACE.

Invariants: one result per op, in order; no op is retried here; the socket is reopened after
any socket error; nothing but the given ops is written.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from kernel.netns import guard_writes
from kernel.nl import netlink_socket
from kernel.routes import (
    IpRouteBackend,
    KernelRoute,
    OpKind,
    OpResult,
    OpStatus,
    PreparedOps,
    Route,
    RouteOp,
    classify,
)

log = logging.getLogger(__name__)

__all__ = ["CHUNK", "NetlinkRouteBackend", "encode_op"]

# Requests per send: one acknowledgement each. Large, because a sender running in a worker
# thread gives up the GIL during the send (the kernel inserts the routes in it) and then waits
# for it again: with 128, the GIL round trips dominated while the agent's main thread computed
# the next batch (docs/bench/bgp.md). Error replies of a whole chunk (~100 bytes each with
# NETLINK_CAP_ACK) fit the 1 MiB receive buffer.
CHUNK = 1024
REPLY_TIMEOUT = 10.0  # seconds without the kernel's reply: the socket is given up

SOL_NETLINK = 270
NETLINK_EXT_ACK = 11
NETLINK_CAP_ACK = 10

NLMSG_ERROR = 2
RTM_NEWLINK = 16
RTM_GETLINK = 18
RTM_NEWROUTE = 24
RTM_DELROUTE = 25

NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_ACK_TLVS = 0x200  # in an NLMSG_ERROR reply: extended-ack attributes follow
NLMSGERR_ATTR_MSG = 1

RTA_DST = 1
RTA_OIF = 4
RTA_GATEWAY = 5
RTA_PRIORITY = 6
RTA_MULTIPATH = 9
RTA_TABLE = 15
IFLA_IFNAME = 3

RTNH_F_ONLINK = 4
RT_SCOPE_NOWHERE = 255

_TYPE_NUM = {"unicast": 1, "blackhole": 6, "unreachable": 7, "prohibit": 8}
_SCOPE_NUM = {"universe": 0, "site": 200, "link": 253, "host": 254, "nowhere": 255}
_FLAGS = {
    OpKind.ADD: NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL,
    OpKind.REPLACE: NLM_F_REQUEST | NLM_F_CREATE | NLM_F_REPLACE,
    OpKind.DELETE: NLM_F_REQUEST,
}

_HDR = struct.Struct("=IHHII")  # nlmsghdr
_RTMSG = struct.Struct("=BBBBBBBBI")  # family dst_len src_len tos table protocol scope type flags
_RTA = struct.Struct("=HH")
_U32 = struct.Struct("=I")
_RTNH = struct.Struct("=HBBi")  # rtnexthop: len flags hops ifindex
_IFINFO = struct.Struct("=BxHiII")


def _rta(kind: int, payload: bytes) -> bytes:
    length = _RTA.size + len(payload)
    return _RTA.pack(length, kind) + payload + b"\0" * ((4 - length % 4) % 4)


class UnknownInterfaceError(Exception):
    """``encode_op`` needed the index of an interface that does not exist."""

    def __init__(self, ifname: str) -> None:
        super().__init__(ifname)
        self.ifname = ifname


# The common learned route, an IPv4 unicast via one gateway (no device, no onlink), as one
# struct: nlmsghdr, rtmsg, RTA_TABLE, RTA_DST, RTA_PRIORITY, RTA_GATEWAY. ``encode_op`` uses it
# (~0.6 us instead of ~1.8 us per route) and is checked equal to the general encoding.
_V4_VIA = struct.Struct("=IHHII BBBBBBBBI HHI HHI HHI HHI")  # addresses: htonl(int)
_htonl = socket.htonl


def encode_op(op: RouteOp, seq: int, ifindex: dict[str, int], ack: bool = False) -> bytes:
    """One rtnetlink request for ``op``; raises ``UnknownInterfaceError`` for a name not in
    ``ifindex``."""
    r: Route = op.route
    gateway = r.gateway
    dst = r.dst
    if (
        gateway is not None
        and r.ifname is None
        and not r.onlink
        and dst.version == 4
        and r.type == "unicast"
        and op.kind is not OpKind.DELETE
    ):
        table = op.table
        return _V4_VIA.pack(
            _V4_VIA.size,
            RTM_NEWROUTE,
            _FLAGS[op.kind] | (NLM_F_ACK if ack else 0),
            seq,
            0,
            socket.AF_INET,
            dst.prefixlen,
            0,
            0,
            table if table < 256 else 0,
            op.protocol,
            _SCOPE_NUM[str(r.scope)],
            1,  # RTN_UNICAST
            0,
            8,
            RTA_TABLE,
            table,
            8,
            RTA_DST,
            _htonl(int(dst.network_address)),
            8,
            RTA_PRIORITY,
            r.metric or 0,
            8,
            RTA_GATEWAY,
            _htonl(int(gateway)),
        )
    return _encode(op, r, seq, ifindex, ack)


def _encode(op: RouteOp, r: Route, seq: int, ifindex: dict[str, int], ack: bool) -> bytes:
    family = socket.AF_INET if r.dst.version == 4 else socket.AF_INET6
    table = op.table
    attrs = [
        _rta(RTA_TABLE, _U32.pack(table)),
        _rta(RTA_DST, r.dst.network_address.packed),
        _rta(RTA_PRIORITY, _U32.pack(r.metric or 0)),
    ]
    rflags = 0
    if op.kind is OpKind.DELETE:
        rtype = 0 if r.type == "unicast" else _TYPE_NUM[r.type]
        scope = RT_SCOPE_NOWHERE
        msg_type = RTM_DELROUTE
    else:
        rtype = _TYPE_NUM[r.type]
        scope = _SCOPE_NUM[str(r.scope)]
        msg_type = RTM_NEWROUTE
        if r.nexthops:
            hops = []
            for nh in r.nexthops:
                sub = _rta(RTA_GATEWAY, nh.gateway.packed) if nh.gateway is not None else b""
                idx = _index(nh.ifname, ifindex) if nh.ifname is not None else 0
                flags = RTNH_F_ONLINK if nh.onlink else 0
                hops.append(_RTNH.pack(_RTNH.size + len(sub), flags, nh.weight - 1, idx) + sub)
            attrs.append(_rta(RTA_MULTIPATH, b"".join(hops)))
        else:
            if r.gateway is not None:
                attrs.append(_rta(RTA_GATEWAY, r.gateway.packed))
            if r.ifname is not None:
                attrs.append(_rta(RTA_OIF, _U32.pack(_index(r.ifname, ifindex))))
            if r.onlink:
                rflags |= RTNH_F_ONLINK
    body = _RTMSG.pack(
        family,
        r.dst.prefixlen,
        0,
        0,
        table if table < 256 else 0,
        op.protocol,
        scope,
        rtype,
        rflags,
    ) + b"".join(attrs)
    flags = _FLAGS[op.kind] | (NLM_F_ACK if ack else 0)
    return _HDR.pack(_HDR.size + len(body), msg_type, flags, seq, 0) + body


def _index(name: str, ifindex: dict[str, int]) -> int:
    idx = ifindex.get(name)
    if not idx:
        raise UnknownInterfaceError(name)
    return idx


def _error_text(data: bytes, offset: int, length: int, flags: int, code: int) -> str:
    """The kernel's extended-ack message of an NLMSG_ERROR reply, else strerror."""
    if flags & NLM_F_ACK_TLVS:
        # error code (4) + the request's header (16: NETLINK_CAP_ACK drops its payload)
        pos = offset + _HDR.size + 4 + _HDR.size
        end = offset + length
        while pos + _RTA.size <= end:
            alen, akind = _RTA.unpack_from(data, pos)
            if alen < _RTA.size:
                break
            if akind == NLMSGERR_ATTR_MSG:
                text = (
                    data[pos + _RTA.size : pos + alen].split(b"\0", 1)[0].decode(errors="replace")
                )
                if text:
                    return f"Error: {text}"
            pos += (alen + 3) & ~3
    return os.strerror(code)


def classify_errno(kind: OpKind, code: int, message: str) -> OpStatus:
    if kind is OpKind.DELETE and code == errno.ESRCH:
        return OpStatus.OK  # already gone
    if code in (errno.ENODEV, errno.ENETDOWN):
        return OpStatus.NO_INTERFACE
    if code == errno.EEXIST:
        return OpStatus.EXISTS
    return classify(kind, message)


@dataclass(frozen=True, slots=True)
class _Chunk:
    data: bytes  # CHUNK requests at most, the last one acknowledged
    where: dict[int, int]  # sequence number -> index of its op
    barrier: int  # the acknowledged request's sequence number


@dataclass(frozen=True, slots=True)
class _Encoded:
    chunks: list[_Chunk]
    results: list[OpResult]  # OK, or NO_INTERFACE for ops that were not encoded


class NetlinkRouteBackend:
    """``RouteBackend`` writing with rtnetlink batches (see the module doc); dumps with ``ip``."""

    def __init__(self, netns: str | None) -> None:
        self.netns = netns
        self._dumper = IpRouteBackend(netns)
        self._sock: socket.socket | None = None  # writes (``send``)
        self._lookup: socket.socket | None = None  # interface indexes (``prepare``)
        self._seq = 0  # last sequence number used (``prepare`` only)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _close_lookup(self) -> None:
        if self._lookup is not None:
            self._lookup.close()
            self._lookup = None

    def _lookup_socket(self) -> socket.socket:
        if self._lookup is None:
            sock = netlink_socket(self.netns, 0)
            sock.settimeout(REPLY_TIMEOUT)
            self._lookup = sock
        return self._lookup

    def dump(self, ip_version: int, table: int) -> list[KernelRoute]:
        return self._dumper.dump(ip_version, table)

    def _socket(self) -> socket.socket:
        if self._sock is None:
            sock = netlink_socket(self.netns, 0, rcvbuf=1 << 20)
            sock.settimeout(REPLY_TIMEOUT)
            try:
                sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
                sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
            except OSError:  # older kernels: plain errors, strerror text
                pass
            self._sock = sock
        return self._sock

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0x7FFFFFFF or 1
        return self._seq

    def _ifindexes(self, sock: socket.socket, names: set[str]) -> dict[str, int]:
        """Name -> index inside the socket's namespace; missing names are left out."""
        out: dict[str, int] = {}
        for name in sorted(names):
            seq = self._next_seq()
            attr = _rta(IFLA_IFNAME, name.encode() + b"\0")
            body = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + attr
            sock.send(_HDR.pack(_HDR.size + len(body), RTM_GETLINK, NLM_F_REQUEST, seq, 0) + body)
            while True:
                data = sock.recv(1 << 16)
                got = False
                offset = 0
                while offset + _HDR.size <= len(data):
                    length, kind, _flags, rseq, _pid = _HDR.unpack_from(data, offset)
                    if length < _HDR.size:
                        break
                    if rseq == seq:
                        got = True
                        if kind == RTM_NEWLINK:
                            out[name] = _IFINFO.unpack_from(data, offset + _HDR.size)[2]
                    offset += (length + 3) & ~3
                if got:
                    break
        return out

    def apply(self, ops: Sequence[RouteOp]) -> list[OpResult]:
        return self.send(self.prepare(ops))

    def prepare(self, ops: Sequence[RouteOp]) -> PreparedOps:
        """Resolve interface names (on a socket of its own: ``send`` may be using the write
        socket in another thread) and encode every request, in chunks of ``CHUNK``."""
        if not ops:
            return PreparedOps(ops)
        try:
            return PreparedOps(ops, self._encode(ops))
        except OSError as exc:
            self._close_lookup()
            text = f"netlink: {exc.strerror or exc}"
            log.warning("routes.netlink_failed netns=%s error=%s", self.netns, text)
            return PreparedOps(ops, [OpResult(OpStatus.ERROR, text)] * len(ops))

    def send(self, prepared: PreparedOps) -> list[OpResult]:
        """Send the chunks ``prepare`` encoded; one result per op."""
        ops, payload = prepared.ops, prepared.payload
        if not ops:
            return []
        if not isinstance(payload, _Encoded):
            return list(payload)  # prepare failed: its results
        guard_writes(self.netns)
        try:
            return self._send(ops, payload)
        except OSError as exc:
            self.close()
            text = f"netlink: {exc.strerror or exc}"
            log.warning("routes.netlink_failed netns=%s error=%s", self.netns, text)
            return [OpResult(OpStatus.ERROR, text)] * len(ops)

    def _encode(self, ops: Sequence[RouteOp]) -> _Encoded:
        names: set[str] = set()
        for op in ops:
            r = op.route
            if op.kind is OpKind.DELETE:
                continue
            if r.ifname is not None:
                names.add(r.ifname)
            elif r.nexthops:
                names |= r.ifnames
        ifindex = self._ifindexes(self._lookup_socket(), names) if names else {}
        ok = OpResult(OpStatus.OK)
        results: list[OpResult] = [ok] * len(ops)
        chunks: list[_Chunk] = []
        seq = barrier = self._seq
        for start in range(0, len(ops), CHUNK):
            msgs: list[bytes] = []
            where: dict[int, int] = {}  # seq -> index into ops
            for i in range(start, min(start + CHUNK, len(ops))):
                seq = (seq + 1) & 0x7FFFFFFF or 1
                try:
                    msgs.append(encode_op(ops[i], seq, ifindex))
                except UnknownInterfaceError as exc:
                    results[i] = OpResult(
                        OpStatus.NO_INTERFACE, f'Cannot find device "{exc.ifname}"'
                    )
                    continue
                where[seq] = i
                barrier = seq
            if msgs:
                # the last request is acknowledged: its reply ends the chunk's replies
                msgs[-1] = _with_ack(msgs[-1])
                chunks.append(_Chunk(b"".join(msgs), where, barrier))
        self._seq = seq
        return _Encoded(chunks, results)

    def _send(self, ops: Sequence[RouteOp], encoded: _Encoded) -> list[OpResult]:
        sock = self._socket()
        results = list(encoded.results)
        for chunk in encoded.chunks:
            sock.send(chunk.data)
            try:
                self._collect(sock, ops, chunk.where, chunk.barrier, results)
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                log.warning("routes.netlink_overrun last_seq=%d", chunk.barrier)
                for idx in chunk.where.values():
                    results[idx] = OpResult(OpStatus.ERROR, "netlink receive buffer overrun")
        return results

    def _collect(
        self,
        sock: socket.socket,
        ops: Sequence[RouteOp],
        where: dict[int, int],
        barrier: int,
        results: list[OpResult],
    ) -> None:
        while True:
            data = sock.recv(1 << 16)
            offset = 0
            done = False
            while offset + _HDR.size <= len(data):
                length, kind, flags, seq, _pid = _HDR.unpack_from(data, offset)
                if length < _HDR.size:
                    break
                if kind == NLMSG_ERROR and seq in where:
                    (code,) = struct.unpack_from("=i", data, offset + _HDR.size)
                    if code:
                        idx = where[seq]
                        op = ops[idx]
                        text = _error_text(data, offset, length, flags, -code)
                        results[idx] = OpResult(classify_errno(op.kind, -code, text), text)
                    if seq == barrier:
                        done = True
                offset += (length + 3) & ~3
            if done:
                return


def _with_ack(msg: bytes) -> bytes:
    length, kind, flags, seq, pid = _HDR.unpack_from(msg)
    return _HDR.pack(length, kind, flags | NLM_F_ACK, seq, pid) + msg[_HDR.size :]
