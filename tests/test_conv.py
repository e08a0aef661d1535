"""The im2col weight-gradient convolution against XLA's own convolution."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from minet_jax import MINet, model_config
from minet_jax.conv import conv_general_dilated


@pytest.mark.parametrize(
    "k,stride,dilation,pad",
    [(3, 1, 1, 1), (3, 2, 1, 1), (3, 1, 4, 4), (1, 1, 1, 0), (4, 1, 1, 2)],
)
def test_values_and_gradients_match_lax(k, stride, dilation, pad):
    kx, kw = jax.random.split(jax.random.key(k * 10 + stride))
    x = jax.random.normal(kx, (2, 13, 11, 5))
    w = jax.random.normal(kw, (k, k, 5, 7))
    args = ((stride, stride), ((pad, pad), (pad, pad)))
    kwargs = dict(rhs_dilation=(dilation, dilation), dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def loss(fn):
        return lambda x, w: jnp.sum(jnp.sin(fn(x, w, *args, **kwargs)))

    np.testing.assert_array_equal(conv_general_dilated(x, w, *args, **kwargs), lax.conv_general_dilated(x, w, *args, **kwargs))
    want = jax.grad(loss(lax.conv_general_dilated), argnums=(0, 1))(x, w)
    got = jax.grad(loss(conv_general_dilated), argnums=(0, 1))(x, w)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.abs(b).max()))


def test_minet_gradients_do_not_depend_on_conv_impl():
    grads = {}
    x = jax.random.uniform(jax.random.key(0), (1, 16, 20, 3))
    for impl in ("xla", "im2col"):
        cfg = model_config("official")
        cfg.channels, cfg.T, cfg.conv_impl, cfg.input_format = 8, 2, impl, "rgb01"
        graphdef, params = nnx.split(MINet(cfg, rngs=nnx.Rngs(1)))
        grads[impl] = jax.grad(lambda p, gd=graphdef: jnp.mean(nnx.merge(gd, p)(x) ** 2))(params)
    for a, b in zip(jax.tree.leaves(grads["xla"]), jax.tree.leaves(grads["im2col"]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5 * max(1.0, float(jnp.abs(a).max())))
