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
