"""Fixtures of the doc tests: the lab suite's ``make_lab`` and the netns suite's ``felix_bed``."""

from __future__ import annotations

from tests.lab.conftest import make_lab, pytest_runtest_makereport
from tests.netns.conftest import felix_bed

__all__ = ["felix_bed", "make_lab", "pytest_runtest_makereport"]
