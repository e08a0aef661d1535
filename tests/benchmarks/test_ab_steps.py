"""benchmarks/ab_steps.py: its variant syntax, usage errors and summary (the timed steps are
minet_jax.tools.measure.compile_train_step's)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import ab_steps as bench  # noqa: E402

from minet_jax.config import ConfigError  # noqa: E402
from minet_jax.tools.measure import alternated_summary  # noqa: E402


def test_variant_syntax():
    assert bench.parse_variant("model.dtype=bfloat16,model.remat=true") == [
        ("model.dtype", "bfloat16"), ("model.remat", True)]  # fmt: skip
    assert bench.parse_variant("model.T=16") == [("model.T", 16)]
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        bench.parse_variant("model.remat")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--variant", "model.T=8"], "at least two --variant"),
        (["--variant", "model.T=8", "--variant", "remat"], "'remat': expected KEY=VALUE"),
        (["--variant", "model.T=8", "--variant", "model.T=4", "--T", "8,x"], "--T '8,x'"),
    ],
)
def test_usage_errors_name_the_option(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_summary_medians_and_ratios():
    rows = alternated_summary(["a", "b"], [[3.0, 1.0, 2.0, 9.0], [1.5, 0.5, 1.0]])
    assert rows[0]["median_s"] == pytest.approx(2.5) and rows[0]["ratio"] == pytest.approx(1.0)
    assert rows[1]["median_s"] == pytest.approx(1.0) and rows[1]["ratio"] == pytest.approx(0.4)
    for r in rows:
        r.update(T=8, batch=4, crop=128)
    report = {"machine": {"cpu": "X", "cores": 2, "jax": "0"}, "date": "d", "common": ["model.T=8"], "reps": 4,
              "warmup": 1, "rows": rows}  # fmt: skip
    md = bench.markdown(report)
    assert "| b | 4 x 128 | 8 | 1.000 s | 0.50 - 1.50 | 0.40 |" in md and "`model.T=8`" in md
