"""The skeleton shared by ``tabby-cni`` and ``tabby-ipam``: one CNI invocation, start to exit.

Role: read the environment and stdin, answer VERSION, parse the network config, set up logging
(``log_file_path`` -> that file, else stderr; never stdout, which belongs to the result), call
the plugin's handler, and print its result (exit 0) or a CNI error object (exit 1).
Inputs: ``os.environ``, stdin bytes. Outputs: JSON on stdout, exit status.

Invariants: stdout carries exactly one JSON document (a result, a version object, or an error)
or nothing (DEL/CHECK success); every exception ends as a CNI error object, unexpected ones as
code 100 with the exception in ``details`` and the traceback in the log.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Mapping
from typing import IO, Any

from cni.config import SUPPORTED_VERSIONS, CniEnv, NetConf, parse_env, parse_netconf
from cni.errors import INTERNAL, CNIError
from cni.result import version_result

__all__ = ["Handler", "run"]

log = logging.getLogger(__name__)

# (conf, env, stdin bytes, environment) -> result dict to print, or None
Handler = Callable[[NetConf, CniEnv, bytes, Mapping[str, str]], dict[str, Any] | None]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "fatal": logging.CRITICAL,
    "panic": logging.CRITICAL,
}


def _setup_logging(conf: NetConf, program: str) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler: logging.Handler
    if conf.log_file_path:
        try:
            os.makedirs(os.path.dirname(conf.log_file_path) or ".", exist_ok=True)
            handler = logging.FileHandler(conf.log_file_path)
        except OSError:
            handler = logging.StreamHandler(sys.stderr)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s %(levelname)s {program}[%(process)d] %(name)s %(message)s")
    )
    root.addHandler(handler)
    root.setLevel(_LEVELS.get(conf.log_level, logging.WARNING))


def _version_hint(data: bytes) -> str:
    try:
        raw = json.loads(data)
        version = raw.get("cniVersion") if isinstance(raw, dict) else None
        if isinstance(version, str) and version in SUPPORTED_VERSIONS:
            return version
    except ValueError:
        pass
    return SUPPORTED_VERSIONS[-1]


def run(
    handler: Handler,
    program: str,
    environ: Mapping[str, str] | None = None,
    stdin: bytes | None = None,
    stdout: IO[str] | None = None,
) -> int:
    env_map = os.environ if environ is None else environ
    out = sys.stdout if stdout is None else stdout
    data = sys.stdin.buffer.read() if stdin is None else stdin
    version = _version_hint(data)
    try:
        env = parse_env(env_map)
        if env.command == "VERSION":
            json.dump(version_result(version, SUPPORTED_VERSIONS), out)
            out.write("\n")
            return 0
        conf = parse_netconf(data)
        version = conf.cni_version
        _setup_logging(conf, program)
        log.debug(
            "cni.invoke command=%s container=%s netns=%s ifname=%s",
            env.command,
            env.container_id,
            env.netns,
            env.ifname,
        )
        result = handler(conf, env, data, env_map)
        if result is not None:
            json.dump(result, out)
            out.write("\n")
        return 0
    except CNIError as exc:
        log.error("cni.error code=%d msg=%s details=%s", exc.code, exc.msg, exc.details)
        json.dump(exc.to_dict(version), out)
        out.write("\n")
        return 1
    except Exception as exc:
        log.exception("cni.internal_error")
        err = CNIError(INTERNAL, "internal error in the plugin (see its log)", repr(exc))
        json.dump(err.to_dict(version), out)
        out.write("\n")
        return 1
