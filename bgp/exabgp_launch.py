"""Start ExaBGP (``python -m bgp.exabgp_launch CONFIG``) with two costs removed from its hot path.

Role: the program ``bgp.exabgp_proc`` runs instead of the ``exabgp`` script. It applies the
patches below and hands over to ExaBGP's own ``main`` (same arguments, same environment, same
exit code). They are applied only to ExaBGP 5.0.x with the patched functions present; otherwise
ExaBGP runs unchanged and a line on stderr (ExaBGP's log) says so. ``TABBY_EXABGP_PATCH=0`` in
the agent's environment (passed on to ExaBGP) runs ExaBGP unchanged on purpose, to compare or
to rule the patches out when diagnosing. ``TABBY_EXABGP_PROFILE=PATH`` runs ExaBGP under
cProfile and writes ``PATH.<pid>`` when it exits (for benchmarks; ``pstats`` reads it).

``share_unchanged_routes``: for every API announcement, ExaBGP deep-copies the route once per
neighbour it goes to (``Neighbor.remove_self``), in case ``next-hop self`` must be rewritten
for that neighbour. On a route reflector with 200 clients that is 40,000 deep copies, ~50 us
each: 2 to 3 s of CPU, 70 % of ExaBGP's time in the 200-client benchmark (cProfile,
docs/bench/rr.md). tabby never announces ``next-hop self``, and a route whose next hop is not
``self`` is never modified per neighbour, so the copy buys nothing: with the patch such a route
object is shared by the neighbours' Adj-RIB-Outs, and only ``self`` routes are still copied (by
the original method). ExaBGP's other mutations of a stored route work on copies of their own
(``OutgoingRIB.del_from_rib``) or on received routes; the one that does not (the watchdog
feature) is not used by tabby.

``prefilter_neighbor_match``: an API command naming a neighbour (``neighbor 198.51.100.10
announce eor ipv4 unicast``) is matched against every configured neighbour by building and
running a regular expression per selector term and neighbour: ~1 ms per command with 200
neighbours, 200 ms for the End-of-RIBs of a 200-client reflector coming up. A term can only
match a neighbour whose name contains it literally, so a substring test now goes first and the
regular expression runs only on the few names that pass it: the same answers, ~50 times faster
(checked against the original on every term shape in the unit tests).

``skip_update_decoding``: tabby's configuration asks for received UPDATEs as bytes (the API's
``packets`` output), which ``bgp.wire`` decodes, but ExaBGP 5.0 still decodes every received
UPDATE into its object model (and, with ``parsed`` on for the other messages, encodes it as
JSON too): ~75 % of its CPU on a table load, for nothing (measured, docs/bench/bgp.md). Its
reader has a branch that skips the decoding, but only when no API process wants UPDATEs in any
form. With the patch, ``Message.unpack`` answers a received UPDATE with an empty one (no route:
nothing for ExaBGP to store; tabby runs ``adj-rib-in false`` anyway), and ``Processes.message``
does not encode that placeholder. The bytes were handed to the API before ``unpack`` runs. Sent
UPDATEs and every other message are decoded as before. Unpatched, ExaBGP sends each UPDATE
twice (bytes and JSON); the agent uses the bytes and ignores the JSON copy.

``fast_hexstring``: those bytes are written as hex by ExaBGP's ``hexstring``, one
``'{:02X}'.format`` per octet (~0.7 ms per full UPDATE, on the path of every received
route); the patch gives the same text with ``bytes.hex`` (checked equal in the unit tests).
"""

from __future__ import annotations

import cProfile
import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

__all__ = [
    "fast_hexstring",
    "main",
    "prefilter_neighbor_match",
    "share_unchanged_routes",
    "skip_update_decoding",
]


def _install(
    owner: Any, attr: str, wrap: Callable[[Callable[..., Any]], Callable[..., Any]]
) -> bool:
    """Replace ``owner.attr`` by ``wrap(original)``, only on ExaBGP 5.0.x and only once; True
    if the patched function is in place."""
    try:  # ExaBGP ships no type information: imported as plain modules
        version = importlib.import_module("exabgp.version").version
    except ImportError:
        return False
    original: Callable[..., Any] | None = getattr(owner, attr, None)
    if not str(version).startswith("5.0.") or original is None:
        return False
    if getattr(original, "_tabby_patched", False):
        return True
    patched = wrap(original)
    patched._tabby_patched = True  # type: ignore[attr-defined]
    inner = getattr(patched, "__func__", None)  # a classmethod: its lookups see the function
    if inner is not None:
        inner._tabby_patched = True
    setattr(owner, attr, patched)
    return True


def share_unchanged_routes() -> bool:
    """Patch ``Neighbor.remove_self`` to copy only ``next-hop self`` routes; True if applied."""
    try:
        neighbor_cls = importlib.import_module("exabgp.bgp.neighbor").Neighbor
    except (ImportError, AttributeError):
        return False

    def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
        def remove_self(self: Any, change: Any) -> Any:
            if not change.nlri.nexthop.SELF:
                return change  # nothing to rewrite for this neighbour: share it
            return original(self, change)

        return remove_self

    return _install(neighbor_cls, "remove_self", wrap)


def prefilter_neighbor_match() -> bool:
    """Patch ExaBGP's ``match_neighbor`` with a literal pre-test; True if applied.
    ``match_neighbors`` looks it up in its module at call time, so replacing the module
    attribute is enough."""
    try:
        limit = importlib.import_module("exabgp.reactor.api.command.limit")
    except ImportError:
        return False

    def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
        def match_neighbor(description: Any, name: str) -> bool:
            for term in description:
                if term.strip() == "neighbor *":
                    break  # the original answers True from here on
                if term not in name:
                    return False  # the original's regex needs the term verbatim in the name
            return bool(original(description, name))

        return match_neighbor

    return _install(limit, "match_neighbor", wrap)


def skip_update_decoding() -> bool:
    """Patch ``Message.unpack`` and ``Processes.message`` so that received UPDATEs are not
    decoded by ExaBGP; True if applied (see the module doc)."""
    try:
        message_cls = importlib.import_module("exabgp.bgp.message").Message
        update_mod = importlib.import_module("exabgp.bgp.message.update")
        direction_in = importlib.import_module("exabgp.bgp.message.direction").Direction.IN
        processes_cls = importlib.import_module("exabgp.reactor.api.processes").Processes
    except (ImportError, AttributeError):
        return False
    update_id = update_mod.Update.ID
    undecoded = update_mod.Update([], update_mod.Attributes())  # no routes: nothing to store

    def wrap_unpack(original: Callable[..., Any]) -> Any:
        def unpack(cls: Any, message: Any, data: Any, direction: Any, negotiated: Any) -> Any:
            if message == update_id and direction == direction_in:
                return undecoded
            return original(message, data, direction, negotiated)

        return classmethod(unpack)

    def wrap_message(original: Callable[..., Any]) -> Callable[..., Any]:
        def message(
            self: Any, message_id: Any, neighbor: Any, direction: Any, msg: Any, *rest: Any
        ) -> Any:
            if msg is undecoded:
                return None  # its bytes went to the API process already
            return original(self, message_id, neighbor, direction, msg, *rest)

        return message

    return _install(processes_cls, "message", wrap_message) and _install(
        message_cls, "unpack", wrap_unpack
    )


def fast_hexstring() -> bool:
    """Patch the ``hexstring`` of ExaBGP's JSON encoder (the bytes of every received UPDATE
    go through it): it formats byte by byte in Python, ~0.7 ms per 4096-octet message;
    ``bytes.hex`` gives the same text ~100 times faster. True if applied."""
    try:
        json_mod = importlib.import_module("exabgp.reactor.api.response.json")
    except ImportError:
        return False

    def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
        def hexstring(value: Any) -> Any:
            if isinstance(value, bytes | bytearray | memoryview):
                return "0x" + value.hex().upper()
            return original(value)

        return hexstring

    return _install(json_mod, "hexstring", wrap)


def main() -> int:
    if os.environ.get("TABBY_EXABGP_PATCH", "1") == "0":
        sys.stderr.write("tabby: ExaBGP runs unpatched (TABBY_EXABGP_PATCH=0)\n")
    elif not (
        share_unchanged_routes()
        & prefilter_neighbor_match()
        & skip_update_decoding()
        & fast_hexstring()
    ):
        sys.stderr.write("tabby: ExaBGP runs (partly) unpatched (not 5.0.x): slower\n")
    exabgp_main = importlib.import_module("exabgp.application.main").main
    sys.argv[0] = "exabgp"
    profile_to = os.environ.get("TABBY_EXABGP_PROFILE", "")
    if not profile_to:
        return int(exabgp_main() or 0)
    prof = cProfile.Profile()
    prof.enable()
    try:
        return int(exabgp_main() or 0)
    finally:
        prof.disable()
        prof.dump_stats(f"{profile_to}.{os.getpid()}")


if __name__ == "__main__":
    sys.exit(main())
