"""minet_jax.training: schedule, losses, the jitted train step and its statistics, validation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minet_jax import training
from minet_jax.checkpoint import build_model
from minet_jax.config import apply_overrides, load_config
from minet_jax.image_io import to_uint8
from minet_jax.metrics import psnr, ssim


def _cfg(*overrides: str):
    return apply_overrides(load_config("test"), ["model.channels=4", *overrides])


def _batch(seed: int = 0, size: int = 16) -> dict:
    clear = np.random.default_rng(seed).uniform(0.1, 0.9, (2, size, size, 3)).astype(np.float32)
    return {"hazy": jnp.asarray(0.6 * clear + 0.3), "clear": jnp.asarray(clear)}


def _step(cfg):
    """(graphdef, step-0 state, the train step compiled on first call at XLA optimisation level 0,
    which compiles several times faster on CPU and computes the same values)."""
    tx = training.make_optimizer(cfg)
    graphdef, state = training.init_state(build_model(cfg.model, seed=cfg.seed), tx)
    jitted, compiled = training.make_train_step(graphdef, tx, cfg.loss, cfg.stability), []

    def step(state, batch):
        if not compiled:
            compiled.append(jitted.lower(state, batch).compile({"xla_backend_optimization_level": 0}))
        return compiled[0](state, batch)

    return graphdef, state, step


@pytest.fixture(scope="module")
def plain():
    """(graphdef, state, jitted step) of the tiny test config: compiled once for the module."""
    return _step(_cfg())


def test_step_decay_schedule():
    sched = training.learning_rate_schedule(_cfg("lr=1.0", "lr_decay_every=10", "lr_decay_factor=0.5"))
    assert [float(sched(s)) for s in (0, 9, 10, 19, 20, 35)] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.125]
    capped = training.learning_rate_schedule(_cfg("lr=1.0", "lr_decay_every=10", "lr_decay_factor=0.5", "lr_decay_count=1"))
    assert [float(capped(s)) for s in (9, 10, 100)] == [1.0, 0.5, 0.5]
    assert float(training.learning_rate_schedule(_cfg("lr=0.3"))(10**6)) == pytest.approx(0.3)


def test_losses():
    rng = np.random.default_rng(0)
    out, clear = rng.uniform(size=(2, 4, 4, 3)), rng.uniform(size=(2, 4, 4, 3))
    d = out - clear
    assert float(training.loss_value("mse", out, clear)) == pytest.approx(np.mean(d**2), rel=1e-6)
    assert float(training.loss_value("l1", out, clear)) == pytest.approx(np.mean(np.abs(d)), rel=1e-6)
    # The authors': ||out - gt||_2 over the whole batch on 0..255.
    assert float(training.loss_value("frobenius", out, clear)) == pytest.approx(np.linalg.norm(255 * d), rel=1e-6)
    with pytest.raises(ValueError, match="config.loss must be one of"):
        training.loss_value("ssim", out, clear)


def test_train_step_moves_parameters_and_reports_solver_statistics(plain):
    graphdef, state, step = plain
    new, metrics = step(state, _batch())
    assert int(new.step) == 1 and bool(new.last_good)
    moved = [float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(state.params))]
    assert max(moved) > 0
    # Unrolled backward: the stats slots report T backpropagated steps per block.
    assert [int(metrics[f"solver/block{i}_backward_iterations"]) for i in (1, 2, 3)] == [2, 2, 2]
    assert float(metrics["stability/penalty"]) == 0.0


def test_implicit_backward_reports_its_adjoint_solve():
    # eta 0.25: the freshly initialised blocks are contractions there, so the adjoint converges.
    _, state, step = _step(_cfg("model.solver.backward=implicit", "model.solver.backward_tol=1e-4", "model.eta=0.25"))
    _, metrics = step(state, _batch())
    for i in (1, 2, 3):
        assert 1 <= float(metrics[f"solver/block{i}_backward_iterations"]) <= 50
        assert 0 <= float(metrics[f"solver/block{i}_backward_residual"]) < 1e-4


def test_stability_regulariser_enters_loss_and_gradient(plain):
    _, state, plain_step = plain
    _, _, regularised = _step(_cfg("stability.weight=10.0"))
    a, m_a = plain_step(state, _batch())
    b, m_b = regularised(state, _batch())
    assert float(m_a["stability/penalty"]) == 0.0 < float(m_b["stability/penalty"])
    assert float(m_a["loss"]) == pytest.approx(float(m_b["loss"]), rel=1e-6)  # the data term alone
    assert float(m_a["grad_norm"]) != pytest.approx(float(m_b["grad_norm"]), rel=1e-6)


@pytest.mark.parametrize("kind", ["radius", "frobenius"])
def test_stability_sub_batch_sees_only_its_examples(plain, kind):
    graphdef, state, _ = plain
    outs = training._forward(graphdef, state.params, _batch()["hazy"])[1]["block_outputs"]
    changed = [g.at[1].multiply(3.0) for g in outs]  # the second example only
    key = jax.random.key(3)

    def pen(block_outputs, **kw):
        cfg = _cfg(f"stability.kind={kind}", "stability.margin=0.0", *(f"stability.{k}={v}" for k, v in kw.items()))
        return float(training._stability_penalty(graphdef, state.params, block_outputs, key, cfg.stability))

    # On the first example alone: blind to the second, and the same as a batch of that example.
    assert pen(outs, batch=1) == pen(changed, batch=1)
    assert pen(outs, batch=1) == pytest.approx(pen([g[:1] for g in outs]), rel=1e-5)
    assert pen(outs) != pytest.approx(pen(changed), rel=1e-3)  # the whole batch sees it
    # The power steps are the estimate's: more of them move the radius estimate.
    if kind == "radius":
        assert pen(outs, power_iters=1) != pytest.approx(pen(outs, power_iters=20), rel=1e-4)


def test_non_finite_batch_leaves_the_state_and_clears_last_good(plain):
    _, state, step = plain
    bad = _batch()
    bad["hazy"] = bad["hazy"].at[0, 0, 0, 0].set(jnp.nan)
    new, _ = step(state, bad)
    assert not bool(new.last_good) and int(new.step) == 1
    for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(state.params), strict=True):
        np.testing.assert_array_equal(a, b)


def test_validate_and_input_quality_use_uint8_metrics(plain):
    graphdef, state, _ = plain
    rng = np.random.default_rng(1)
    images = [{"hazy": rng.uniform(size=(16, 20, 3)).astype(np.float32),
               "clear": rng.uniform(size=(16, 20, 3)).astype(np.float32)} for _ in range(2)]  # fmt: skip
    val, outs = training.validate(training.make_predict(graphdef), state.params, images)
    want = np.mean([psnr(to_uint8(o), to_uint8(ex["clear"])) for o, ex in zip(outs, images)])
    assert val["val_psnr"] == pytest.approx(want, abs=1e-12) and val["val_nonfinite"] == 0
    assert len(outs) == 2 and outs[0].shape == (16, 20, 3)
    q = training.input_quality(images)
    assert q["input_psnr"] == pytest.approx(np.mean([psnr(to_uint8(e["hazy"]), to_uint8(e["clear"])) for e in images]))
    assert q["input_ssim"] == pytest.approx(np.mean([ssim(to_uint8(e["hazy"]), to_uint8(e["clear"])) for e in images]))


def test_radius_monitor_reads_a_fixed_central_validation_crop():
    img = np.arange(10 * 14 * 3, dtype=np.float32).reshape(10, 14, 3)
    crop = training.radius_monitor_input([{"hazy": img}, {"hazy": -img}], crop_size=4)
    assert crop.shape == (1, 4, 4, 3)
    np.testing.assert_array_equal(crop[0], img[3:7, 5:9])
    # Crop larger than the image: the largest central square.
    assert training.radius_monitor_input([{"hazy": img}], crop_size=0).shape == (1, 10, 10, 3)
    assert training.radius_monitor_input([], crop_size=4) is None


def test_radius_monitor_estimates_each_block():
    graphdef, state, _ = _step(_cfg())
    radii = training.make_radius_monitor(graphdef, iters=6)(state.params, _batch()["hazy"], 3)
    assert sorted(radii) == [f"stability/block{i}_radius" for i in (1, 2, 3)]
    assert all(0 < float(r) < 100 for r in radii.values())


def test_divergence_watch_uses_the_recent_median_not_one_lucky_batch():
    # Healthy fine-tuning losses spread over two decades (batch 2): a lowest-so-far test would fire.
    losses = np.exp(np.random.default_rng(0).uniform(np.log(3e-4), np.log(6e-2), 300))
    watch = training.DivergenceWatch(100.0, window=50)
    assert not any(watch.diverging(float(x)) for x in losses)
    assert losses.max() > 100 * losses.min()
    ref = watch.reference()
    assert ref == pytest.approx(np.median(losses[-50:]))
    assert watch.diverging(101 * ref) and not watch.diverging(99 * ref)
    assert watch.reference() == pytest.approx(np.median([*losses[-49:], 99 * ref]))  # the jump is not recorded
    off = training.DivergenceWatch(0.0)
    assert not off.diverging(1.0) and not off.diverging(1e30)
