"""The package layout imports (guards against a broken packaging change)."""

import importlib

import pytest


@pytest.mark.parametrize(
    "name", ["policy", "datastore", "kernel", "felix", "bgp", "cni", "ctl", "lab", "lab.etcd"]
)
def test_package_imports(name: str) -> None:
    module = importlib.import_module(name)
    assert module.__doc__
