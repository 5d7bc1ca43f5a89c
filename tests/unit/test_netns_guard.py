"""The root-namespace guard refuses writes when the test suite asks it to."""

import os

import pytest

from kernel.netns import REQUIRE_ENV, NamespaceGuardError, guard_writes, in_root_netns, ns_argv


def test_guard_refuses_root_namespace_when_required() -> None:
    assert os.environ.get(REQUIRE_ENV)  # set by tests/conftest.py for the whole run
    if not in_root_netns():
        pytest.skip("test process is not in the root namespace")
    with pytest.raises(NamespaceGuardError):
        guard_writes(None)


def test_guard_rejects_missing_named_namespace() -> None:
    with pytest.raises(NamespaceGuardError):
        guard_writes("tabby-no-such-namespace")


def test_ns_argv() -> None:
    assert ns_argv(None, ["ip", "route"]) == ["ip", "route"]
    assert ns_argv("n1", ["ip", "route"]) == ["ip", "netns", "exec", "n1", "ip", "route"]
