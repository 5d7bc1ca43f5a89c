"""Secrets for BGP passwords: Calico's ``secretKeyRef`` resolved from files, one per key.

Role: tabby has no Kubernetes API, so a ``password.secretKeyRef {name, key}`` of a BGPPeer (or
``nodeMeshPassword`` of the default BGPConfiguration) is read from the node's file system, laid
out the way Kubernetes mounts a secret volume: ``<secrets dir>/<name>/<key>``, the file's content
being the value. The directory is ``$TABBY_SECRETS_DIR``, else ``/etc/tabby/secrets``
(``tabby-bgp --secrets-dir`` overrides both). Example: ``secretKeyRef: {name: bgp-tor,
key: password}`` reads ``/etc/tabby/secrets/bgp-tor/password``.

Inputs: a ``SecretKeyRef``. Outputs: the value, or None (missing, unreadable or invalid), which
the BGP model turns into ``password_unresolved``: that peer is left out (fail closed: never a
session without the key it was configured with).

Rules:
- ``name`` must be a Kubernetes secret name (lower-case DNS subdomain, at most 253 characters)
  and ``key`` a secret key (``[-._a-zA-Z0-9]+``, at most 253, not ``.`` or ``..``): nothing in a
  resource can name a file outside the secrets directory.
- One trailing newline (``\\n`` or ``\\r\\n``) is stripped, nothing else: ``echo pw > file`` and
  ``printf pw > file`` give the same key. The value must be UTF-8, non-empty, and at most 80
  bytes (the kernel's ``TCP_MD5SIG_MAXKEYLEN``).
- Files are read on every call (a few microseconds; the agent asks on each reconcile), so a
  rotated secret takes effect on the next reconcile: the ExaBGP configuration changes and the
  session restarts with the new key.
- Each outcome change per reference is logged once (``bgp.secret_unresolved`` with the path and
  reason at warning, ``bgp.secret_resolved`` at info); the value itself is never logged.
- A file readable by group or others is used, with a warning (once).
"""

from __future__ import annotations

import logging
import os
import re
import stat
from pathlib import Path

from datastore.model import SecretKeyRef

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_SECRETS_DIR",
    "MAX_KEY_BYTES",
    "SECRETS_DIR_ENV",
    "FileSecretResolver",
    "SecretError",
    "secret_path",
]

DEFAULT_SECRETS_DIR = Path("/etc/tabby/secrets")
SECRETS_DIR_ENV = "TABBY_SECRETS_DIR"
MAX_KEY_BYTES = 80  # TCP_MD5SIG_MAXKEYLEN

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")


class SecretError(ValueError):
    """A secret reference or value that cannot be used (names the reference and the reason)."""


def secret_path(root: Path, ref: SecretKeyRef) -> Path:
    """``root/<name>/<key>``; ``SecretError`` when the name or key is not safe to use."""
    if len(ref.name) > 253 or not _NAME.match(ref.name):
        raise SecretError(f"secretKeyRef.name {ref.name!r} is not a valid secret name")
    if len(ref.key) > 253 or not _KEY.match(ref.key) or ref.key in (".", ".."):
        raise SecretError(f"secretKeyRef.key {ref.key!r} is not a valid secret key")
    return root / ref.name / ref.key


def _decode(raw: bytes) -> str:
    if raw.endswith(b"\r\n"):
        raw = raw[:-2]
    elif raw.endswith(b"\n"):
        raw = raw[:-1]
    if not raw:
        raise SecretError("the value is empty")
    if len(raw) > MAX_KEY_BYTES:
        raise SecretError(f"the value has {len(raw)} bytes (TCP-MD5: {MAX_KEY_BYTES} at most)")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SecretError("the value is not UTF-8") from None


class FileSecretResolver:
    """A ``bgp.model.SecretResolver`` reading ``<root>/<name>/<key>`` (see the module doc)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root if root is not None else self.default_root()
        self._last: dict[tuple[str, str], str] = {}  # ref -> last outcome ("ok" or the reason)
        self._loose_warned: set[Path] = set()

    @staticmethod
    def default_root() -> Path:
        env = os.environ.get(SECRETS_DIR_ENV)
        return Path(env) if env else DEFAULT_SECRETS_DIR

    def _outcome(self, ref: SecretKeyRef, path: Path | None, outcome: str) -> None:
        ident = (ref.name, ref.key)
        if self._last.get(ident) == outcome:
            return
        self._last[ident] = outcome
        if outcome == "ok":
            log.info("bgp.secret_resolved secret=%s key=%s path=%s", ref.name, ref.key, path)
        else:
            log.warning(
                "bgp.secret_unresolved secret=%s key=%s path=%s reason=%s",
                ref.name,
                ref.key,
                path,
                outcome,
            )

    def __call__(self, ref: SecretKeyRef) -> str | None:
        path: Path | None = None
        try:
            path = secret_path(self.root, ref)
            with open(path, "rb") as fh:
                mode = os.fstat(fh.fileno()).st_mode
                raw = fh.read(MAX_KEY_BYTES + 3)
            value = _decode(raw)
        except FileNotFoundError:
            self._outcome(ref, path, "missing")
            return None
        except (OSError, SecretError) as exc:
            reason = str(exc) if isinstance(exc, SecretError) else (exc.strerror or str(exc))
            self._outcome(ref, path, reason)
            return None
        if mode & (stat.S_IRWXG | stat.S_IRWXO) and path not in self._loose_warned:
            self._loose_warned.add(path)
            log.warning("bgp.secret_permissions path=%s mode=%o (use 0600)", path, mode & 0o777)
        self._outcome(ref, path, "ok")
        return value
