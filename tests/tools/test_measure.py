"""minet_jax.tools.measure: the convolution FLOP count against independent counts, the peak
resident memory, and the compiled training step that the benchmark and the solver comparison time."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from minet_jax import training
from minet_jax.config import apply_overrides, load_config
from minet_jax.model import MINet
from minet_jax.tools import measure

DN = ("NHWC", "HWIO", "NHWC")


@pytest.mark.parametrize(
    "lhs, rhs, kw",
    [
        ((1, 7, 9, 2), (3, 3, 2, 4), dict(window_strides=(1, 1), padding=[(1, 1), (1, 1)])),
        ((2, 7, 9, 2), (3, 4, 2, 3), dict(window_strides=(2, 1), padding=[(1, 2), (3, 0)], lhs_dilation=(1, 2),
                                          rhs_dilation=(2, 1))),  # fmt: skip
        ((1, 8, 8, 4), (3, 3, 1, 4), dict(window_strides=(1, 1), padding=[(2, 2), (2, 2)], rhs_dilation=(2, 2),
                                          feature_group_count=4)),  # fmt: skip
        # a depthwise convolution's weight gradient: batch-grouped
        ((4, 6, 6, 2), (6, 6, 2, 4), dict(window_strides=(1, 1), padding=[(1, 1), (1, 1)], batch_group_count=2)),
    ],
)
def test_conv_flops_against_a_convolution_of_ones(lhs, rhs, kw):
    """With all-ones input and kernel each output element is the number of input elements it
    multiplies, so the sum of the output is the multiply-add count, whatever the padding, dilation
    or grouping."""
    conv = lambda x, w: jax.lax.conv_general_dilated(x, w, dimension_numbers=DN, **kw)  # noqa: E731
    x, w = jnp.ones(lhs), jnp.ones(rhs)
    flops, loop = measure.conv_flops(jax.make_jaxpr(conv)(x, w).jaxpr)
    assert flops == 2 * int(jnp.sum(conv(x, w)))
    assert not loop


def test_conv_flops_counts_scans_and_flags_while_loops():
    w = jnp.ones((3, 3, 2, 2))
    conv = lambda x: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DN)  # noqa: E731
    x = jnp.ones((1, 5, 5, 2))
    one, _ = measure.conv_flops(jax.make_jaxpr(conv)(x).jaxpr)
    scanned = lambda x: jax.lax.scan(lambda c, _: (conv(c), None), x, None, length=4)[0]  # noqa: E731
    assert measure.conv_flops(jax.make_jaxpr(scanned)(x).jaxpr) == (4 * one, False)
    looped = lambda x: jax.lax.while_loop(lambda c: jnp.sum(c) < 1e6, conv, x)  # noqa: E731
    assert measure.conv_flops(jax.make_jaxpr(looped)(x).jaxpr) == (one, True)


def test_peak_rss_grows_with_an_allocation():
    before = measure.peak_rss_bytes()
    block = np.ones((64, 2**20), np.uint8)  # 64 MiB, touched
    assert measure.peak_rss_bytes() - before >= 0.9 * block.nbytes or before > block.nbytes
    assert measure.peak_rss_bytes() >= block.nbytes


def test_compiled_train_step_includes_the_stability_regulariser():
    """compile_train_step builds the step from the whole training config: with stability.weight > 0
    the regulariser is in the compiled step (its penalty is reported) and in the function whose
    FLOPs are counted (more convolutions than the same step without it)."""
    batch = measure.synthetic_batch(2, 16)
    cfg = apply_overrides(load_config("test"), ["model.channels=4", "model.T=1", "stability.weight=1.0"])
    params = nnx.state(MINet(cfg.model, rngs=nnx.Rngs(cfg.seed)), nnx.Param)
    # Optimisation level 0 compiles several times faster; values and the analyses stay valid.
    step = measure.compile_train_step(cfg, params, batch, {"xla_backend_optimization_level": 0})
    _, metrics = step.compiled(step.state, batch)
    assert float(metrics["stability/penalty"]) > 0
    assert step.compile_s > 0 and measure.xla_peak(measure.memory_fields(step.compiled)) > 0
    without = training.make_train_step(step.graphdef, training.make_optimizer(cfg), cfg.loss, None)
    counted = measure.conv_flops(jax.make_jaxpr(step.step_fn)(step.state, batch).jaxpr)[0]
    assert counted > measure.conv_flops(jax.make_jaxpr(without)(step.state, batch).jaxpr)[0]


def test_save_report_writes_the_json_and_the_markdown(tmp_path):
    report = {"machine": {"cpu": "X"}, "rows": [{"median_s": 1.5}]}
    measure.save_report(tmp_path / "new" / "dir", "thing", report, "# table\n")
    assert json.loads((tmp_path / "new" / "dir" / "thing.json").read_text()) == report
    assert (tmp_path / "new" / "dir" / "thing.md").read_text() == "# table\n"


def test_time_alternately_calls_each_step_in_turn():
    """Warm-up calls first, then one call of each step per repetition, A, B, A, B."""
    calls = []

    class Step:
        def __init__(self, name):
            self.state, self.name = name, name

        def compiled(self, state, batch):
            calls.append(state)
            return jnp.zeros(())

    times = measure.time_alternately([Step("a"), Step("b")], {}, reps=3, warmup=1)
    assert calls == ["a", "b", "a", "b", "a", "b", "a", "b"]
    assert [len(t) for t in times] == [3, 3] and all(x >= 0 for t in times for x in t)
