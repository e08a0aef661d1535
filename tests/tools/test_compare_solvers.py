"""minet_jax.tools.compare_solvers on a tiny network: outputs, record keys, memory pattern, gradients."""

from __future__ import annotations

import json
import math

import pytest

from minet_jax.config import apply_overrides, load_config
from minet_jax.tools import compare_solvers as cs


@pytest.fixture(scope="module")
def report(tmp_path_factory, tiny_data):
    synth, tfds = tiny_data
    cfg = apply_overrides(load_config("default"), ["model.channels=8", f"data.manual_dir={synth}", f"data.data_dir={tfds}"])
    out = tmp_path_factory.mktemp("cs_out")
    rep = cs.compare(
        cfg,
        pairs=["unrolled/unrolled", "unrolled/implicit", "fixed_point/implicit"],
        Ts=[2, 4],
        crops=[16],
        batch_size=1,
        ref_T=4,
        timing_steps=1,
        train_steps=1,
        val_limit=1,
        output=out,
        verbose=False,
        # Halves XLA's compile time on CPU; the memory analysis is unchanged.
        compiler_options={"xla_backend_optimization_level": 0},
    )
    return rep, out


def _rec(rep, pair, T):
    (r,) = [r for r in rep["records"] if r["pair"] == pair and r["T"] == T]
    return r


def test_outputs_and_keys(report):
    rep, out = report
    for name in ("compare_solvers.json", "compare_solvers.md", "compare_solvers.png"):
        assert (out / name).stat().st_size > 0
    saved = json.loads((out / "compare_solvers.json").read_text())
    assert set(saved) >= {"machine", "settings", "records"}
    assert saved["machine"]["backend"]
    # unrolled forwards once per T, the fixed_point forward once with T null
    assert [(r["pair"], r["T"]) for r in saved["records"]] == [
        ("unrolled/unrolled", 2), ("unrolled/unrolled", 4), ("unrolled/implicit", 2), ("unrolled/implicit", 4),
        ("fixed_point/implicit", None),
    ]  # fmt: skip
    assert set(saved["fields"]) == set(cs.RECORD_KEYS)
    for r in saved["records"]:
        assert set(r) == set(cs.RECORD_KEYS)
        assert r["error"] is None, r["error"]
        assert r["xla_peak_bytes"] > 0 and r["step_time_median_s"] > 0
        assert len(r["forward_iterations"]) == len(r["backward_iterations"]) == 3
        assert math.isfinite(r["val_psnr"]) and 0 < r["val_ssim"] <= 1
    md = (out / "compare_solvers.md").read_text()
    assert md.count("| 16 |") == 5
    fp = _rec(rep, "fixed_point/implicit", None)
    assert fp["tol"] == rep["settings"]["tol"] and fp["max_iter"] == rep["settings"]["max_iter"]
    assert all(1 <= k <= fp["max_iter"] for k in fp["forward_iterations"])


def test_reference_against_itself(report):
    r = _rec(report[0], "unrolled/unrolled", 4)  # the reference (ref_T = 4) itself
    assert r["grad_cosine_ref"] == pytest.approx(1.0, abs=1e-9)
    assert r["grad_rel_error_ref"] == 0.0
    assert r["grad_cosine_exact_blocks"] == pytest.approx(1.0, abs=1e-9)


def test_memory_grows_with_T_for_unrolled_backward_only(report):
    rep = report[0]
    u2, u4 = _rec(rep, "unrolled/unrolled", 2), _rec(rep, "unrolled/unrolled", 4)
    i2, i4 = _rec(rep, "unrolled/implicit", 2), _rec(rep, "unrolled/implicit", 4)
    assert u4["xla_peak_bytes"] > u2["xla_peak_bytes"]
    growth = u4["xla_peak_bytes"] - u2["xla_peak_bytes"]
    assert i4["xla_peak_bytes"] - i2["xla_peak_bytes"] <= max(0.1 * growth, 4096)
    assert i4["xla_peak_bytes"] < u4["xla_peak_bytes"]


def test_implicit_gradient_and_backward_stats(report):
    rep = report[0]
    for r in (_rec(rep, "unrolled/implicit", 4), _rec(rep, "fixed_point/implicit", None)):
        for key in ("grad_cosine_ref", "grad_cosine_ref_blocks"):
            assert math.isfinite(r[key]) and r[key] > 0
        assert all(k >= 1 for k in r["backward_iterations"])
        assert all(0 <= res < 1 for res in r["backward_residual"])
    u = _rec(rep, "unrolled/unrolled", 2)
    assert u["backward_iterations"] == [2.0, 2.0, 2.0]  # unrolled backward: the steps backpropagated
    assert rep["implicit_vs_unrolled"]["2"]["16"]["memory_ratio"] > 0


def test_plan_and_cli_parsing():
    assert cs.plan(["fixed_point/implicit", "unrolled/unrolled"], [4, 8]) == [
        ("unrolled/unrolled", 4), ("unrolled/unrolled", 8), ("fixed_point/implicit", None)
    ]  # fmt: skip
    with pytest.raises(ValueError):
        cs.parse_pair("unrolled-implicit")
    args = cs.build_parser().parse_args(
        ["--channels", "8", "--tol", "1e-4", "--max-iter", "7", "--eta", "0.5", "--set", "model.solver.anderson_m=3"]
    )
    cfg = cs.config_from_args(args)
    assert (cfg.model.channels, cfg.model.eta, cfg.model.solver.tol, cfg.model.solver.max_iter) == (8, 0.5, 1e-4, 7)
    assert cfg.model.solver.anderson_m == 3
    c = cs.config_for(cfg, "anderson/phantom", 12)
    assert (c.model.solver.forward, c.model.solver.backward, c.model.T) == ("anderson", "phantom", 12)
    assert cs.parse_crops("64x64,32") == [64, 32]
    with pytest.raises(SystemExit, match="unknown config field 'model.solver.anderson'"):
        cs.config_from_args(cs.build_parser().parse_args(["--set", "model.solver.anderson=3"]))
