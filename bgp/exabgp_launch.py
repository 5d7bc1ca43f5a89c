"""Start ExaBGP (``python -m bgp.exabgp_launch CONFIG``) with one copy removed from its hot path.

Role: the program ``bgp.exabgp_proc`` runs instead of the ``exabgp`` script. It applies the
patch below and hands over to ExaBGP's own ``main`` (same arguments, same environment, same
exit code). It is applied only to ExaBGP 5.0.x with the patched method present; otherwise
ExaBGP runs unchanged and a line on stderr (ExaBGP's log) says so. ``TABBY_EXABGP_PATCH=0`` in
the agent's environment (passed on to ExaBGP) runs ExaBGP unchanged on purpose, to compare or
to rule the patch out when diagnosing.

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
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["main", "share_unchanged_routes"]


def share_unchanged_routes() -> bool:
    """Patch ``Neighbor.remove_self`` to copy only ``next-hop self`` routes; True if applied."""
    try:  # ExaBGP ships no type information: imported as plain modules
        Neighbor = importlib.import_module("exabgp.bgp.neighbor").Neighbor  # noqa: N806
        version = importlib.import_module("exabgp.version").version
    except (ImportError, AttributeError):
        return False
    original: Callable[[Any, Any], Any] | None = getattr(Neighbor, "remove_self", None)
    if not str(version).startswith("5.0.") or original is None:
        return False
    if getattr(original, "_tabby_patched", False):
        return True

    def remove_self(self: Any, change: Any) -> Any:
        if not change.nlri.nexthop.SELF:
            return change  # nothing to rewrite for this neighbour: share it
        return original(self, change)

    remove_self._tabby_patched = True  # type: ignore[attr-defined]
    Neighbor.remove_self = remove_self
    return True


def main() -> int:
    if os.environ.get("TABBY_EXABGP_PATCH", "1") == "0":
        sys.stderr.write("tabby: ExaBGP runs unpatched (TABBY_EXABGP_PATCH=0)\n")
    elif not share_unchanged_routes():
        sys.stderr.write("tabby: ExaBGP runs unpatched (not 5.0.x): reflection is slower\n")
    exabgp_main = importlib.import_module("exabgp.application.main").main
    sys.argv[0] = "exabgp"
    return int(exabgp_main() or 0)


if __name__ == "__main__":
    sys.exit(main())
