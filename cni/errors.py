"""CNI errors: the exception the plugins raise and the JSON a runtime reads on stdout.

Role: every failure of ``tabby-cni`` / ``tabby-ipam`` ends as one ``CNIError`` carrying a CNI
error code, a one-line message that says what to fix, and optional details. ``to_dict`` gives
the CNI error object (``cniVersion``, ``code``, ``msg``, ``details``) that the plugin prints on
stdout before exiting non-zero.

Codes 1-99 are reserved by the CNI specification (the ones used here are named below); 100 and
above are this plugin's own. Pure module, no I/O.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BAD_ENV",
    "CHECK_FAILED",
    "CONTAINER_UNKNOWN",
    "DATASTORE",
    "DECODE",
    "INCOMPATIBLE_VERSION",
    "INTERNAL",
    "INVALID_CONFIG",
    "IO_FAILURE",
    "IPAM_DELEGATE",
    "IPAM_EXHAUSTED",
    "IPAM_NO_POOL",
    "KERNEL",
    "TRY_AGAIN_LATER",
    "UNSUPPORTED_FIELD",
    "CNIError",
]

# --- codes reserved by the CNI specification -------------------------------------------------
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
CONTAINER_UNKNOWN = 3
BAD_ENV = 4
IO_FAILURE = 5
DECODE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11

# --- tabby's own codes (100+) ----------------------------------------------------------------
INTERNAL = 100
IPAM_EXHAUSTED = 101
IPAM_NO_POOL = 102
KERNEL = 103
DATASTORE = 104
CHECK_FAILED = 105
IPAM_DELEGATE = 106


class CNIError(Exception):
    """A CNI failure: ``code`` (see module constants), ``msg`` (what to fix), ``details``."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_dict(self, cni_version: str) -> dict[str, Any]:
        out: dict[str, Any] = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out

    def __str__(self) -> str:
        return f"[{self.code}] {self.msg}" + (f": {self.details}" if self.details else "")
