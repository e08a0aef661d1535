"""benchmarks/batch_split.py: its variant and shape syntax and its summary (the timed steps are
minet_jax.tools.measure.compile_train_step's; batch_split's values are tested in test_model)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import batch_split as bench  # noqa: E402

from minet_jax.tools.measure import alternated_summary  # noqa: E402


def test_variant_and_shape_syntax():
    assert bench.parse_variant("2") == (2, False)
    assert bench.parse_variant("0:fused") == (0, True)
    assert bench.parse_shape("16x32") == (16, 32)
    for bad in ("two", "2:unfused", "-1", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="expected N or N:fused"):
            bench.parse_variant(bad)
    for bad in ("4", "4x", "0x32", "4x1"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected BATCHxCROP"):
            bench.parse_shape(bad)


def test_bad_variant_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(["--variants", "1,x"])
    assert e.value.code == 2 and "variant 'x'" in capsys.readouterr().err


def test_summary_medians_and_ratios():
    rows = alternated_summary(["1", "2"], [[3.0, 1.0, 2.0, 9.0], [1.5, 0.5, 1.0]])
    assert rows[0]["median_s"] == pytest.approx(2.5) and rows[0]["ratio"] == pytest.approx(1.0)
    assert rows[1]["median_s"] == pytest.approx(1.0) and rows[1]["ratio"] == pytest.approx(0.4)
    assert (rows[1]["min_s"], rows[1]["max_s"]) == (0.5, 1.5)
    for r in rows:
        r.update(pair="unrolled/unrolled", batch=4, crop=128, T=8, groups=int(r["variant"]))
    report = {"machine": {"cpu": "X", "cores": 2, "jax": "0"}, "date": "d", "reps": 4, "warmup": 1, "rows": rows}
    assert "| unrolled/unrolled | 4 x 128 | 8 | 2 | 2 | 1.000 s | 0.50 - 1.50 | 0.40 |" in bench.markdown(report)
