"""bench.bench_bgp_stages measures the agent's real receive path: every stage runs, and the
input it builds really produces one kernel route per prefix."""

from __future__ import annotations

from pathlib import Path

from bench.bench_bgp_stages import LABELS, main, one_pass, update_lines


def test_every_stage_is_measured_on_a_real_feed() -> None:
    lines = update_lines(1000)
    assert len(lines) == 2  # 810 prefixes fit a 4096-octet UPDATE
    costs = one_pass(lines, 1000)  # raises if the routes did not all become kernel operations
    assert set(costs) == set(LABELS)
    assert all(v > 0 for v in costs.values())


def test_report_written(tmp_path: Path) -> None:
    out = tmp_path / "stages.md"
    assert main(["--routes", "200", "--repeat", "1", "--out", str(out)]) == 0
    text = out.read_text()
    assert "| **total (Python)** |" in text and "200 routes in 1 UPDATEs" in text
