"""benchmarks/warm_start.py: usage errors and its report (the solves are solvers.anderson's, whose
warm start is tested in tests/test_solvers.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import warm_start as bench  # noqa: E402


@pytest.mark.parametrize(
    ("extra", "message"),
    [([], "expected a paired folder with hazy/ and clear/"), (["--steps", "0"], "--steps 0: expected >= 1")],
)
def test_usage_errors_name_the_option(tmp_path, extra, message, capsys):
    folder = tmp_path / "pairs"
    if extra:
        (folder / "hazy").mkdir(parents=True)
    with pytest.raises(SystemExit) as e:
        bench.main(["--data", str(folder), *extra])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_report_sums_warm_against_cold():
    rows = [
        {"step": 0, "block": "res1", "cold_iterations": 13, "cold_residual": 1e-4},
        {"step": 1, "block": "res1", "cold_iterations": 8, "cold_residual": 1e-4, "warm_iterations": 6,
         "warm_residual": 1e-4, "moved": 0.5},
        {"step": 2, "block": "res1", "cold_iterations": 7, "cold_residual": 1e-4, "warm_iterations": 5,
         "warm_residual": 1e-4, "moved": 0.05},
    ]  # fmt: skip
    report = {"machine": {"cpu": "X", "cores": 2, "jax": "0"}, "date": "d", "data": "pairs", "steps": 2,
              "batch": 8, "crop": 64, "init_from": "", "overrides": [], "rows": rows}  # fmt: skip
    md = bench.markdown(report)
    assert "| 0 | res1 | 13 | - | - |" in md and "| 2 | res1 | 7 | 5 | 5.0e-02 |" in md
    assert "11 warm against 15 cold iterations (0.73x)" in md
