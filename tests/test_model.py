"""The network's structure: parameter counts, variants, the IM-block iteration, any input size."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from minet_jax import MINet, count_params, dehaze, model_config
from minet_jax.model import IMBlock, field_fn


def test_official_parameter_count():
    assert count_params(MINet(model_config("official"))) == 628_078


def test_paper_variant_structure():
    cfg = model_config("paper")
    m = MINet(cfg)
    assert [b.T for b in m.blocks] == [12, 12, 12]
    assert [b.f.conv1.kernel_dilation for b in m.blocks] == [1, 2, 5]
    assert m.gate.kernel.shape == (3, 3, 64, 3)  # group conv: each W_i sees x_i only
    assert m.attention is None and m.rca is not None
    assert m.rca.fc1.kernel.shape == (64, 4)
    # The official network minus its image attention (12) and 2/3 of the gate's weights, plus the
    # feature RCA: 1x1 conv (64*64+64) and the MLP (64*4+4 + 4*64+64); no ShareSepConvs (2*(9+49)).
    expected = 628_078 - 16 - 2 * (9 + 49) - 2 * 64 * 9 * 3 + (64 * 64 + 64) + (64 * 4 + 4) + (4 * 64 + 64)
    assert count_params(m) == expected


def test_eta_is_configurable():
    cfg = model_config("paper")
    cfg.eta = 0.5
    assert all(b.eta == 0.5 for b in MINet(cfg).blocks)


def test_im_block_is_t_steps_of_the_implicit_euler_iteration():
    cfg = model_config("official")
    block = IMBlock(cfg, 8, dilation=2, rngs=nnx.Rngs(3))
    g0 = jax.random.normal(jax.random.key(0), (2, 12, 10, 8))
    got, stats = block(g0)
    graphdef, params = nnx.split(block.f)
    f = field_fn(graphdef)
    g = g0
    for _ in range(cfg.T):
        g = g0 + cfg.eta * f(params, g)
    # float32 round-off, not a fixed 1e-6 (1 of 1920 elements was 1.25e-6 off on another CPU):
    # the block (a compiled scan) and this eager loop sum each convolution's fan_in = 3*3*C
    # products in different orders, a difference of about sqrt(fan_in) * eps32 relative to the
    # values (the probabilistic round-off bound), in each of the two convolutions of each of the
    # T steps; the instance norms bring every step back to unit scale and the iteration contracts,
    # so earlier steps' errors are not amplified. c = 1 thus bounds the accumulated difference with
    # headroom (measured: 1/25 to 1/17 of it over 20 seeds) while staying ~1e-4 of what one step
    # too few or too many changes and ~1e-1 of what eta off by 1e-4 does: a wrong iteration fails.
    fan_in = int(np.prod(block.f.conv1.kernel.shape[:3]))
    atol = 1.0 * np.finfo(np.float32).eps * cfg.T * np.sqrt(fan_in) * float(jnp.abs(g).max())
    np.testing.assert_allclose(np.asarray(got), np.asarray(g), rtol=1e-6, atol=atol)
    assert int(stats.iterations) == cfg.T and stats.residuals.shape == (cfg.T,)


@pytest.mark.parametrize("variant", ["official", "paper"])
@pytest.mark.parametrize("hw", [(17, 23), (16, 24), (1, 5)])
def test_any_size_gives_same_size(variant, hw):
    cfg = model_config(variant)
    cfg.T = 2
    m = MINet(cfg)
    x = jax.random.uniform(jax.random.key(0), (1, *hw, 3))
    assert m(x).shape == (1, *hw, 3)


def test_odd_size_is_padded_then_cropped():
    # An odd-sized input equals the even network run on the edge-padded image, cropped back.
    cfg = model_config("official")
    cfg.T = 2
    m = MINet(cfg)
    x = jax.random.uniform(jax.random.key(1), (1, 15, 20, 3)) * 255
    padded = jnp.pad(x, ((0, 0), (0, 1), (0, 0), (0, 0)), mode="edge")
    np.testing.assert_allclose(np.asarray(m(x)), np.asarray(m(padded))[:, :15], rtol=1e-6, atol=1e-5)


def test_identity_init_starts_near_identity():
    cfg = model_config("official")
    cfg.input_format, cfg.init, cfg.T = "rgb01", "identity", 2
    x = np.random.default_rng(0).random((20, 24, 3)).astype(np.float32)
    out = dehaze(MINet(cfg), x, clip=False)
    assert np.abs(out - x).max() < 0.05


# ----------------------------------------------------------------------------- Table 2's ablations


def _field_params(c: int, d: int, smooth: bool) -> int:
    """An IMField: two bias-free 3x3 convs, two instance norms (scale, bias), and a ShareSepConv
    (2d-1)^2 kernel before each conv where smoothed."""
    return 2 * 9 * c * c + 2 * 2 * c + (2 * (2 * d - 1) ** 2 if smooth and d > 1 else 0)


def _ablated(variant: str, **changes):
    cfg = model_config(variant)
    cfg.update(changes)
    return cfg


@pytest.mark.parametrize("variant", ["official", "paper"])
def test_ablation_parameter_counts(variant):
    base_cfg = model_config(variant)
    base = count_params(MINet(base_cfg))
    c, T, smooth = base_cfg.channels, base_cfg.T, base_cfg.smooth_dilated
    fields = sum(_field_params(c, d, smooth) for d in base_cfg.dilations)
    gate = 3 * c // base_cfg.mlf_groups * 9 * 3 + 3
    hidden = max(1, c // 16)
    if variant == "official":  # attention on the 3-channel image: RCA = 1x1 conv 3->3 and 4 scalars
        rca, oa = 3 * 3 + 3 + 4, (3 * 1 + 1) + (1 * 3 + 3)
    else:  # on the C-channel features: 1x1 conv C->C and the MLP C -> C/16 -> C
        rca = (c * c + c) + (c * hidden + hidden) + (hidden * c + c)
        oa = (c * hidden + hidden) + (hidden * c + c)
    assert count_params(MINet(_ablated(variant, block="resblock1"))) == base  # one field per block, as the IM-block
    assert count_params(MINet(_ablated(variant, block="resblockT"))) == base + (T - 1) * fields
    assert count_params(MINet(_ablated(variant, mlf=False))) == base - gate
    assert count_params(MINet(_ablated(variant, attention="none"))) == base - rca
    assert count_params(MINet(_ablated(variant, attention="oa"))) == base - rca + oa


def _small(**changes):
    cfg = model_config("official")
    cfg.update({"channels": 8, "T": 3, **changes})
    return cfg


def _x():
    return jax.random.uniform(jax.random.key(5), (1, 12, 14, 3)) * 255


def test_resblock1_is_the_im_block_with_one_step():
    # g1 = g0 + eta f(g0): the explicit-Euler step the paper says the IM-block reduces to at k = 0.
    cfg = _small(block="resblock1", eta=0.7)
    one_step = _small(T=1, eta=0.7)
    np.testing.assert_allclose(np.asarray(MINet(cfg)(_x())), np.asarray(MINet(one_step)(_x())), rtol=1e-5, atol=1e-4)


def test_resblockt_chains_t_residual_blocks_with_their_own_weights():
    cfg = _small(block="resblockT", eta=0.7)
    m = MINet(cfg)
    steps = m.blocks[1]
    assert len(steps.fields) == cfg.T
    k0, k1 = steps.fields[0].conv1.kernel[...], steps.fields[1].conv1.kernel[...]
    assert not np.allclose(np.asarray(k0), np.asarray(k1))  # unshared
    x = jax.random.normal(jax.random.key(0), (1, 6, 7, 8))
    want = np.asarray(x, np.float64)
    for f in steps.fields:  # x <- x + eta f_k(x), the explicit-Euler chain of Eq. (1)
        want = want + 0.7 * np.asarray(f(jnp.asarray(want, jnp.float32)), np.float64)
    got, stats = steps(x)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    assert int(stats.iterations) == cfg.T
    # Not the IM-block's g0 + eta f(g_k) with the first field's weights.
    g = x
    for _ in range(cfg.T):
        g = x + 0.7 * steps.fields[0](g)
    assert np.abs(np.asarray(g) - want).max() > 1e-2


def test_without_mlf_the_third_block_goes_on():
    # MLF with gates fixed at (0, 0, 1) is the network without MLF (same initialisation otherwise).
    plain, fused = MINet(_small(mlf=False)), MINet(_small())
    assert plain.gate is None
    fused.gate.kernel[...] = jnp.zeros_like(fused.gate.kernel[...])
    fused.gate.bias[...] = jnp.array([0.0, 0.0, 1.0])
    np.testing.assert_allclose(np.asarray(plain(_x())), np.asarray(fused(_x())), rtol=1e-5, atol=1e-4)


def test_attention_none_is_a_closed_rca():
    bare, closed = MINet(_small(attention="none")), MINet(_small())
    assert bare.attention is None and bare.rca is None
    closed.attention.l3_w[...] = jnp.zeros((1, 1))
    closed.attention.l3_b[...] = jnp.full((1,), -200.0)  # sigmoid = 0 in float32: x + x * 0
    for name in ("kernel", "bias"):  # the one layer made after the attention draws other keys
        getattr(bare.deconv, name)[...] = getattr(closed.deconv, name)[...]
    np.testing.assert_allclose(np.asarray(bare(_x())), np.asarray(closed(_x())), rtol=1e-6, atol=1e-4)


def test_oa_is_cbam_channel_attention():
    from minet_jax.model import ChannelAttention

    att = ChannelAttention(model_config(), 8, 4, rngs=nnx.Rngs(2))
    att.fc1.bias[...] = jax.random.normal(jax.random.key(3), (2,))
    x = np.asarray(jax.random.normal(jax.random.key(1), (2, 5, 6, 8)), np.float64)
    w1, b1 = (np.asarray(v[...], np.float64) for v in (att.fc1.kernel, att.fc1.bias))
    w2, b2 = (np.asarray(v[...], np.float64) for v in (att.fc2.kernel, att.fc2.bias))
    mlp = lambda v: np.maximum(v @ w1 + b1, 0) @ w2 + b2  # noqa: E731
    v = mlp(x.mean(axis=(1, 2))) + mlp(x.max(axis=(1, 2)))
    want = x * (1 / (1 + np.exp(-v)))[:, None, None, :]
    np.testing.assert_allclose(np.asarray(att(jnp.asarray(x, jnp.float32))), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("changes", [{"attention": "oa"}, {"block": "resblockT"}, {"mlf": False}])
def test_identity_init_holds_for_the_ablations(changes):
    cfg = model_config("official")
    cfg.update(dict(input_format="rgb01", init="identity", T=2, **changes))
    x = np.random.default_rng(0).random((20, 24, 3)).astype(np.float32)
    assert np.abs(dehaze(MINet(cfg), x, clip=False) - x).max() < 0.05


def test_ablations_refuse_what_needs_the_im_block():
    from minet_jax.config import ConfigError, check, train_config
    from minet_jax.jacobian import block_fields
    from minet_jax.streaming import check_streamable

    m = MINet(_small(block="resblockT"))
    with pytest.raises(ValueError, match="model.block='im'"):
        block_fields(m)
    with pytest.raises(ValueError, match="model.block='resblockT'"):
        check_streamable(m)
    with pytest.raises(ValueError, match="model.attention='oa'"):
        check_streamable(MINet(_small(attention="oa")))
    cfg = train_config()
    cfg.model.block, cfg.stability.weight = "resblock1", 1.0
    with pytest.raises(ConfigError, match="stability.weight"):
        check(cfg)


def test_batch_split_is_a_divisor_of_the_batch():
    from minet_jax.model import AUTO_BATCH_SPLIT_CPU, batch_split

    cfg = model_config()
    cases = {(3, 4): 2, (4, 4): 4, (4, 3): 3, (5, 2): 2, (2, 7): 1, (8, 1): 1, (1, 8): 1}
    for (n, batch), want in cases.items():
        cfg.batch_split = n
        assert batch_split(cfg, batch) == want, (n, batch)
    cfg.batch_split = 0
    auto = AUTO_BATCH_SPLIT_CPU if jax.default_backend() == "cpu" else 1
    assert batch_split(cfg, 12) == auto
    cfg.batch_split = -1
    with pytest.raises(ValueError, match="model.batch_split must be >= 0"):
        batch_split(cfg, 4)


def _split_model(base, n: int) -> MINet:
    cfg = model_config()
    cfg.update(base)
    cfg.batch_split = n
    return MINet(cfg, rngs=nnx.Rngs(0))


@pytest.mark.parametrize(
    "solver", [{}, {"forward": "fixed_point", "tol": 1e-3, "max_iter": 6, "backward": "implicit"}]
)
def test_batch_split_keeps_outputs_and_gradients(solver):
    """Every layer is per image, so the groups give the batch's values; the statistics are the
    worst group's (each group solved alone), and the stats slots' gradient their maximum."""
    base = model_config()
    base.T, base.channels = 3, 8
    base.solver.update(solver)
    x = jnp.asarray(np.random.default_rng(0).uniform(0, 255, (4, 8, 10, 3)).astype(np.float32))

    def run(n: int, x: jax.Array):
        graphdef, params = nnx.split(_split_model(base, n))

        def loss(p, slots):
            y, aux = nnx.merge(graphdef, p)(x, with_aux=True, stats_slots=slots)
            return jnp.mean(jnp.square(y - 100.0)), (y, aux)

        (_, (y, aux)), (g, slot_bar) = jax.value_and_grad(loss, (0, 1), has_aux=True)(params, jnp.zeros((3, 2)))
        return y, aux, jax.tree.leaves(g), slot_bar

    run = jax.jit(run, static_argnums=0)
    y1, aux1, g1, _ = run(1, x)
    gscale = max(float(jnp.max(jnp.abs(a))) for a in g1)
    for n in (2,):  # 4 (one image per group) alike; each n costs a compile of the whole network
        y, aux, g, slot_bar = run(n, x)
        # The same arithmetic per image; only the order of float32 sums over a batch may differ.
        np.testing.assert_allclose(y, y1, rtol=0, atol=1e-5 * float(jnp.max(jnp.abs(y1))))
        for a, b in zip(aux["block_outputs"], aux1["block_outputs"], strict=True):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * float(jnp.max(jnp.abs(b))))
        for a, b in zip(g, g1, strict=True):  # some are ~0 in exact arithmetic: scale by the largest
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-4 * gscale)
        # Forward and backward statistics: each group's own (run alone, as a batch of its own),
        # combined by maximum, not summed.
        alone = [run(1, xi) for xi in jnp.split(x, n)]
        for i, st in enumerate(aux["solver_stats"]):
            assert int(st.iterations) == max(int(a[1]["solver_stats"][i].iterations) for a in alone)
            want = max(float(a[1]["solver_stats"][i].residual) for a in alone)
            np.testing.assert_allclose(st.residual, want, rtol=1e-4)
        own = np.stack([a[3] for a in alone])
        np.testing.assert_array_equal(slot_bar[:, 0], own[:, :, 0].max(0))
        np.testing.assert_allclose(slot_bar[:, 1], own[:, :, 1].max(0), rtol=1e-3, atol=1e-7)
        if not solver:
            np.testing.assert_array_equal(slot_bar[:, 0], base.T)
