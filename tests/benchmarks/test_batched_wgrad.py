"""benchmarks/batched_wgrad.py: the stacked kernel gradient is the sum of the per-step ones
(float64, against numpy's direct correlation sum), and its report."""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import batched_wgrad as bench  # noqa: E402


def _numpy_wgrad(xs, gs, d):
    """sum over t, n, h, w of x_pad[t, n, h + d i, w + d j, :] outer g[t, n, h, w, :]."""
    T, n, h, w, c = xs.shape
    xp = np.pad(xs, ((0, 0), (0, 0), (d, d), (d, d), (0, 0)))
    out = np.zeros((3, 3, c, gs.shape[-1]))
    for i in range(3):
        for j in range(3):
            out[i, j] = np.einsum("tnhwc,tnhwk->ck", xp[:, :, d * i : d * i + h, d * j : d * j + w], gs)
    return out


@pytest.mark.parametrize("dilation", [1, 2])
def test_every_form_is_the_summed_kernel_gradient(dilation):
    rng = np.random.default_rng(dilation)
    xs, gs = rng.standard_normal((3, 4, 7, 6, 2)), rng.standard_normal((3, 4, 7, 6, 5))
    want = _numpy_wgrad(xs, gs, dilation)
    with jax.enable_x64(True):
        for name, fn in bench.forms(dilation).items():
            np.testing.assert_allclose(np.asarray(fn(xs, gs)), want, rtol=1e-10, atol=1e-10 * np.abs(want).max(),
                                       err_msg=name)  # fmt: skip


def test_odd_batch_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(["--batch", "3"])
    assert e.value.code == 2 and "--batch 3" in capsys.readouterr().err


def test_report_names_the_machine_and_ratios():
    rows = [{"T": 8, "batch": 4, "size": 64, "channels": 64, "dilation": 1, "form": f, "median_s": s, "min_s": s,
             "max_s": s, "ratio": s / 0.068, "max_rel_diff": 1e-7} for f, s in (("apart", 0.068), ("stacked", 0.0787))]
    md = bench.markdown({"machine": {"cpu": "EPYC", "cores": 2, "jax": "0"}, "date": "d", "reps": 9, "rows": rows})
    assert "EPYC, 2 cores" in md and "| 8 x 4 x 64 x 64 | 1 | stacked | 78.7 ms | 78.7 - 78.7 | 1.16 | 1.0e-07 |" in md
