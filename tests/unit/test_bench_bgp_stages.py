"""bench.bench_bgp_stages measures the agent's real receive path: every stage runs, and the
input it builds really produces one kernel route per prefix."""

from __future__ import annotations

from pathlib import Path

from bench.bench_bgp_stages import LABELS, main, one_pass, update_lines


def test_every_stage_is_measured_on_a_real_feed() -> None:
    lines = update_lines(300, 128)
    assert len(lines) == 3
    costs = one_pass(lines, 300)  # raises if the routes did not all become kernel operations
    assert set(costs) == set(LABELS)
    assert all(v > 0 for v in costs.values())


def test_report_written(tmp_path: Path) -> None:
    out = tmp_path / "stages.md"
    assert main(["--routes", "200", "--per-update", "64", "--repeat", "1", "--out", str(out)]) == 0
    text = out.read_text()
    assert "| **total (Python)** |" in text and "200 routes in UPDATEs of 64" in text
