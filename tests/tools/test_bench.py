"""minet_jax.tools.bench: inference and training rows against independent counts, and its report."""

import json

import jax
import numpy as np
import pytest

from minet_jax.tools import bench, measure

def test_inference_flops_agree_with_xla():
    """The forward's convolution count against XLA's cost analysis, an independent count that also
    includes norms, attention and elementwise work (a few percent)."""
    shape = (2, 32, 48, 3)
    row = bench.bench_inference("official", "float32", shape, repeats=1, peaks=[])
    assert row["flops_exact"]
    assert row["conv_flops_per_image"] <= row["xla_flops_per_image"] <= 1.05 * row["conv_flops_per_image"]
    # At T = 8 the IM-blocks' 3x3 convolutions dominate: about 8 x 3 blocks x 2 convs x 64 x 64 x 9 x 2
    # FLOPs per feature pixel (features are half the image size); the full-size head and tail add ~25%.
    blocks = 8 * 3 * 2 * 64 * 64 * 9 * 2 * (32 // 2) * (48 // 2)
    assert 1.1 * blocks < row["conv_flops_per_image"] < 1.4 * blocks
    assert row["achieved_flops_per_s"] == pytest.approx(row["conv_flops_per_image"] * shape[0] / row["median_s"])
    assert row["xla_peak_bytes"] > 0


def test_microbatched_inference_counts_the_same_work():
    """A batch run one image at a time in one program (lax.map) does the same convolutions per
    image, and XLA's analysis sees the loop body once (one image) with less temporary memory."""
    shape = (3, 16, 24, 3)
    whole = bench.bench_inference("official", "float32", shape, repeats=1, peaks=[], overrides=[("model.T", 2)])
    micro = bench.bench_inference("official", "float32", shape, repeats=1, peaks=[], overrides=[("model.T", 2)], microbatch=1)
    assert (whole["microbatch"], micro["microbatch"]) == (3, 1)
    assert micro["flops_exact"] and micro["conv_flops_per_image"] == whole["conv_flops_per_image"]
    assert micro["xla_flops_per_image"] == pytest.approx(whole["xla_flops_per_image"] / 3, rel=0.05)
    assert micro["xla_peak_bytes"] < whole["xla_peak_bytes"]


def test_training_rows_and_report(tmp_path):
    """Training steps: the unrolled step does about 3x the forward's convolution work (forward, input
    and weight gradients); the implicit backward's adjoint is a while loop, so its count is flagged
    as a lower bound and no FLOP rate is derived. The CLI writes JSON and Markdown."""
    code = bench.main([
        "--sections", "training", "--dtypes", "float32", "--pairs", "unrolled/unrolled,unrolled/implicit",
        "--train-crop", "16", "--train-batch", "2", "--train-repeats", "1", "--T", "2", "--output", str(tmp_path),
    ])  # fmt: skip
    assert code == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    rows = {r["pair"]: r for r in report["training"]}
    unrolled, implicit = rows["unrolled/unrolled"], rows["unrolled/implicit"]
    fwd = bench.bench_inference("official", "float32", (2, 16, 16, 3), repeats=1, peaks=[])
    fwd_T2 = fwd["conv_flops_per_image"] * 2 * (2 / 8)  # roughly: the IM-blocks dominate
    assert unrolled["flops_exact"] and 2.0 * fwd_T2 < unrolled["conv_flops_per_step"] < 4.0 * fwd["conv_flops_per_image"] * 2
    assert unrolled["achieved_flops_per_s"] == pytest.approx(unrolled["conv_flops_per_step"] / unrolled["median_s"])
    assert not implicit["flops_exact"] and implicit["achieved_flops_per_s"] is None
    assert report["machine"]["backend"] == jax.default_backend()
    md = (tmp_path / "bench.md").read_text()
    assert "unrolled/implicit" in md and "lower bound" in md
    assert np.isfinite(unrolled["median_s"]) and unrolled["xla_peak_bytes"] > 0


def test_isolated_rows_report_their_own_peak_memory():
    """--isolate runs a row in a fresh process: its peak resident memory grows with the work done
    (a bigger batch needs more), and the table shows it."""
    kw = dict(variant="official", dtype="float32", repeats=1, peaks=[], overrides=[("model.T", 1)])
    ballast = np.ones((768, 2**18), np.float32)  # 768 MiB here must not count as the child's
    small = bench.run_row("inference", {**kw, "shape": (1, 32, 32, 3)}, isolate=True)
    assert small["rss_peak_bytes"] < ballast.nbytes, small["rss_peak_bytes"] / 2**20
    del ballast
    big = bench.run_row("inference", {**kw, "shape": (1, 1024, 1024, 3)}, isolate=True)
    for r in (small, big):
        assert 0 < r["rss_before_bytes"] <= r["rss_peak_bytes"]
    # Compilation alone takes several hundred MiB either way; 64-channel 1024 x 1024 float32
    # feature maps are 256 MiB each, and the stem holds at least two at once.
    assert big["rss_peak_bytes"] - small["rss_peak_bytes"] > 400 * 2**20
    md = bench.markdown({"machine": measure.machine(), "peak": [], "inference": [small]})
    assert f"{small['rss_peak_bytes'] / 2**20:.0f} ({small['rss_before_bytes'] / 2**20:.0f})" in md


def test_overrides_are_rooted_at_the_training_config():
    """--set is rooted at the training config, as everywhere (the training rows build their step
    with measure.compile_train_step from that config, regulariser included: tests/tools/test_measure.py);
    a bad key is refused before anything runs."""
    cfg = bench.bench_config(["model.T=3", "stability.weight=1", "model.share_sep_impl=xla"])
    assert (cfg.model.T, cfg.stability.weight, cfg.model.share_sep_impl) == (3, 1.0, "xla")
    assert bench.bench_config().model.input_format == "rgb01"  # configs/default.py's model
    with pytest.raises(SystemExit):
        bench.main(["--sections", "peak", "--set", "stability.wieght=1"])


@pytest.mark.filterwarnings("ignore:implicit backward")  # the random 4-channel start is no contraction
def test_training_row_times_a_checkpoint_on_real_crops(tmp_path):
    """A solve to a tolerance takes what the weights and the batch need, so the row can start from
    a checkpoint (`init_from`) on a paired folder's crops, and records the iterations: with every
    IM-block's field zeroed, f = 0 and Anderson stops after one evaluation, where the initialised
    network needs more."""
    from flax import nnx

    from minet_jax.checkpoint import build_model, save_model
    from minet_jax.image_io import write_png

    rng = np.random.default_rng(0)
    for sub in ("hazy", "clear"):
        (tmp_path / "pairs" / sub).mkdir(parents=True)
        for name in ("a", "b"):
            write_png(tmp_path / "pairs" / sub / f"{name}.png", rng.integers(0, 256, (20, 24, 3), dtype=np.uint8))
    base = [("model.channels", 4), ("model.solver.tol", 1e-4), ("model.solver.max_iter", 12),
            ("model.solver.backward_tol", 1e-4)]  # fmt: skip
    model = build_model(bench.bench_config(base).model)
    for block in model.blocks:
        nnx.update(block.f, jax.tree.map(np.zeros_like, nnx.state(block.f, nnx.Param)))
    ckpt = save_model(model, tmp_path / "zero_fields")
    kw = dict(pair="anderson/implicit", dtype="float32", crop=16, batch=2, T=8, repeats=1, peaks=[],
              data_dir=str(tmp_path / "pairs"))  # fmt: skip
    start = bench.bench_training(**kw, overrides=base)
    zero = bench.bench_training(**kw, overrides=[*base, ("init_from", str(ckpt))])
    assert zero["init_from"] == str(ckpt) and zero["data"] == str(tmp_path / "pairs")
    assert [zero["solver_iterations"][f"solver/block{i}_iterations"] for i in (1, 2, 3)] == [1, 1, 1]
    assert min(start["solver_iterations"][f"solver/block{i}_iterations"] for i in (1, 2, 3)) > 1
    md = bench.markdown({"machine": measure.machine(), "peak": [], "training": [zero]})
    assert "| 1/1/1; " in md
    with pytest.raises(SystemExit):
        bench.main(["--sections", "training", "--train-data", str(tmp_path / "nothing")])
