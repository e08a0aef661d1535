"""The shifted-sum ShareSepConv (conv.shared_depthwise_conv) against XLA's depthwise convolution."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads

from minet_jax import MINet, conv, model_config

EPS32 = float(jnp.finfo(jnp.float32).eps)


def _sum_bound(terms: int, scale: float) -> float:
    """How far two float32 evaluations of the same sum of `terms` products of magnitude <= `scale`
    may differ: each is within (log2(terms) + 1) eps of sum |term_i| <= terms * scale when summed
    pairwise (XLA's reductions are trees), so twice that (both sides round)."""
    return 2 * (np.log2(terms) + 1) * EPS32 * terms * scale


@pytest.mark.parametrize("k", [1, 3, 7])
def test_values_and_gradients_match_lax(k):
    kx, kk, kg = jax.random.split(jax.random.key(k), 3)
    x = jax.random.normal(kx, (2, 9, 11, 5))
    kernel = jax.random.normal(kk, (k, k))
    g = jax.random.normal(kg, (2, 9, 11, 5))
    ref = conv.shared_depthwise_conv_lax(x, kernel)
    scale = float(jnp.abs(x).max() * jnp.abs(kernel).max())
    np.testing.assert_allclose(conv.shared_depthwise_conv(x, kernel), ref, rtol=0, atol=_sum_bound(k * k, scale))
    loss = lambda op: lambda x, w: jnp.sum(op(x, w) * g)  # noqa: E731
    got = jax.grad(loss(conv.shared_depthwise_conv), argnums=(0, 1))(x, kernel)
    want = jax.grad(loss(conv.shared_depthwise_conv_lax), argnums=(0, 1))(x, kernel)
    # dx sums k^2 products g * kernel; dk sums every pixel's x * g (N H W C terms).
    terms = {0: k * k, 1: x.size}
    scales = {0: float(jnp.abs(g).max() * jnp.abs(kernel).max()), 1: float(jnp.abs(g).max() * jnp.abs(x).max())}
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        np.testing.assert_allclose(a, b, rtol=0, atol=_sum_bound(terms[i], scales[i]))


def test_input_gradient_used_twice_as_in_an_im_block():
    """The case conv._unfused is for: g <- g0 + S(g) over steps, so each step's input gradient
    feeds both the step before and g0's sum. Jitted, as XLA fuses it, against lax's."""

    def block(op):
        def loss(g0, kernel):
            g = g0
            for _ in range(4):
                g = g0 + 0.5 * jnp.tanh(op(g, kernel))
            return jnp.sum(g * g)

        return jax.jit(jax.grad(loss, argnums=(0, 1)))

    g0 = jax.random.normal(jax.random.key(3), (2, 9, 11, 5))
    kernel = 0.2 * jax.random.normal(jax.random.key(4), (7, 7))
    got, want = block(conv.shared_depthwise_conv)(g0, kernel), block(conv.shared_depthwise_conv_lax)(g0, kernel)
    for a, b in zip(got, want, strict=True):
        # four steps of 49-term sums, each within _sum_bound of lax's; a margin of 4 for the chain
        np.testing.assert_allclose(a, b, rtol=0, atol=4 * 4 * _sum_bound(49, float(jnp.abs(b).max())))
    assert np.array_equal(conv._unfused(jnp.flip, g0, kernel), jnp.flip(g0))


def test_gradient_against_finite_differences_in_float64():
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(0), (1, 6, 7, 3), jnp.float64)
        kernel = jax.random.normal(jax.random.key(1), (3, 3), jnp.float64)
        check_grads(conv.shared_depthwise_conv, (x, kernel), order=1, modes=["rev"], atol=1e-7, rtol=1e-7)
        # and its gradient is itself differentiable (the Jacobian penalty takes a gradient of a vjp)
        check_grads(conv.shared_depthwise_conv, (x, kernel), order=2, modes=["rev"], atol=1e-6, rtol=1e-6)


def test_shifted_sum_has_forward_mode():
    """The Jacobian probes' version (jvp / jacfwd) against XLA's depthwise convolution."""
    x = jax.random.normal(jax.random.key(0), (1, 6, 7, 3))
    kernel = jax.random.normal(jax.random.key(1), (3, 3))
    v = jax.random.normal(jax.random.key(2), x.shape)
    _, got = jax.jvp(lambda x: conv.shifted_sum(x, kernel), (x,), (v,))
    _, want = jax.jvp(lambda x: conv.shared_depthwise_conv_lax(x, kernel), (x,), (v,))
    np.testing.assert_allclose(got, want, rtol=0, atol=_sum_bound(9, float(jnp.abs(v).max() * jnp.abs(kernel).max())))


def test_bf16_inputs_keep_bf16_and_float32_kernel_gradient():
    x = jax.random.normal(jax.random.key(0), (1, 8, 8, 4)).astype(jnp.bfloat16)
    kernel = jnp.eye(3)
    y, vjp = jax.vjp(conv.shared_depthwise_conv, x, kernel)
    dx, dk = vjp(jnp.ones_like(y))
    assert y.dtype == dx.dtype == jnp.bfloat16 and dk.dtype == jnp.float32


def test_model_same_output_with_either_implementation():
    """The released architecture (ShareSepConv in blocks 2 and 3) gives the same output and
    gradient with every share_sep_impl."""
    x = jax.random.uniform(jax.random.key(2), (1, 16, 20, 3)) * 255
    outs, grads = {}, {}
    for impl in ("shift", "shift_autodiff", "xla"):
        cfg = model_config("official")
        cfg.channels, cfg.T, cfg.share_sep_impl = 8, 2, impl
        model = MINet(cfg, rngs=nnx.Rngs(0))
        graphdef, params = nnx.split(model)
        outs[impl] = nnx.merge(graphdef, params)(x)
        grads[impl] = jax.grad(lambda p, gd=graphdef: jnp.mean(nnx.merge(gd, p)(x) ** 2))(params)
    for impl in ("shift", "shift_autodiff"):
        np.testing.assert_allclose(outs[impl], outs["xla"], rtol=1e-5, atol=1e-3)
        for a, b in zip(jax.tree.leaves(grads[impl]), jax.tree.leaves(grads["xla"]), strict=True):
            np.testing.assert_allclose(a, b, rtol=2e-3, atol=1e-5 * max(1.0, float(jnp.abs(b).max())))


def test_unknown_implementation_is_refused():
    cfg = model_config("official")
    cfg.share_sep_impl = "fft"
    with pytest.raises(ValueError, match="share_sep_impl must be 'auto' or one of"):
        MINet(cfg)


def _dilated_transpose(x, kernel):
    """ConvTranspose2d(k=4, s=2, p=1) as XLA's correlation over the 2x-dilated input padded by 2."""
    return jax.lax.conv_general_dilated(
        x, kernel.astype(x.dtype), (1, 1), ((2, 2), (2, 2)), lhs_dilation=(2, 2),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=jax.lax.Precision.HIGHEST,
    )  # fmt: skip


@pytest.mark.parametrize("shape", [(2, 5, 7, 3), (1, 1, 1, 2), (1, 4, 6, 8)])
def test_conv_transpose_2x_matches_the_dilated_form(shape):
    kx, kk, kg = jax.random.split(jax.random.key(shape[1]), 3)
    x = jax.random.normal(kx, shape)
    kernel = jax.random.normal(kk, (4, 4, shape[-1], 5))
    g = jax.random.normal(kg, (shape[0], 2 * shape[1], 2 * shape[2], 5))
    hi = jax.lax.Precision.HIGHEST
    got, want = conv.conv_transpose_2x(x, kernel, precision=hi), _dilated_transpose(x, kernel)
    assert got.shape == want.shape == g.shape
    # each output sums 4 taps x C inputs (the dilation's zeros add nothing)
    terms = 4 * shape[-1]
    np.testing.assert_allclose(
        got, want, rtol=0, atol=_sum_bound(terms, float(jnp.abs(x).max() * jnp.abs(kernel).max()))
    )
    loss = lambda op: lambda x, w: jnp.sum(op(x, w) * g)  # noqa: E731
    grads = jax.grad(loss(lambda x, w: conv.conv_transpose_2x(x, w, precision=hi)), argnums=(0, 1))(x, kernel)
    refs = jax.grad(loss(_dilated_transpose), argnums=(0, 1))(x, kernel)
    gs = float(jnp.abs(g).max())
    bounds = (
        _sum_bound(16 * 5, gs * float(jnp.abs(kernel).max())),
        _sum_bound(g[..., 0].size, gs * float(jnp.abs(x).max())),
    )
    for a, b, bound in zip(grads, refs, bounds, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=bound)


def test_conv_transpose_2x_gradient_against_finite_differences_in_float64():
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(0), (1, 3, 4, 2), jnp.float64)
        kernel = jax.random.normal(jax.random.key(1), (4, 4, 2, 3), jnp.float64)
        check_grads(conv.conv_transpose_2x, (x, kernel), order=1, modes=("rev", "fwd"), atol=1e-7, rtol=1e-7)


@pytest.mark.parametrize("dilation", [1, 2, 4])
def test_explicit_vjp_conv_matches_lax_values_and_gradients(dilation):
    """The IM-block convolution with the hand-written gradient against JAX's own rule."""
    kx, kk, kg = jax.random.split(jax.random.key(dilation), 3)
    x = jax.random.normal(kx, (2, 9, 11, 5))
    kernel = jax.random.normal(kk, (3, 3, 5, 4))
    g = jax.random.normal(kg, (2, 9, 11, 4))
    pad = [(dilation, dilation)] * 2
    dn = jax.lax.conv_dimension_numbers(x.shape, kernel.shape, ("NHWC", "HWIO", "NHWC"))

    def op(fn):
        return lambda x, w: fn(x, w, (1, 1), pad, lhs_dilation=(1, 1), rhs_dilation=(dilation,) * 2,
                               dimension_numbers=dn, feature_group_count=1, precision=None)  # fmt: skip

    mine, ref = op(conv.conv_general_dilated_explicit_vjp), op(jax.lax.conv_general_dilated)
    np.testing.assert_array_equal(mine(x, kernel), ref(x, kernel))  # the same forward op
    got = jax.grad(lambda x, w: jnp.sum(mine(x, w) * g), argnums=(0, 1))(x, kernel)
    want = jax.grad(lambda x, w: jnp.sum(ref(x, w) * g), argnums=(0, 1))(x, kernel)
    # dx sums 9 * out-channels products g * kernel; dk every pixel's x * g (N H W terms).
    scale_dx = float(jnp.abs(g).max() * jnp.abs(kernel).max())
    scale_dk = float(jnp.abs(g).max() * jnp.abs(x).max())
    np.testing.assert_allclose(got[0], want[0], rtol=0, atol=_sum_bound(9 * 4, scale_dx))
    np.testing.assert_allclose(got[1], want[1], rtol=0, atol=_sum_bound(2 * 9 * 11, scale_dk))


def test_explicit_vjp_conv_against_finite_differences_in_float64():
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(0), (1, 7, 6, 3), jnp.float64)
        kernel = jax.random.normal(jax.random.key(1), (3, 3, 3, 2), jnp.float64)
        dn = jax.lax.conv_dimension_numbers(x.shape, kernel.shape, ("NHWC", "HWIO", "NHWC"))

        def f(x, w):
            return conv.conv_general_dilated_explicit_vjp(
                x, w, (1, 1), [(2, 2), (2, 2)], rhs_dilation=(2, 2), dimension_numbers=dn
            )

        check_grads(f, (x, kernel), order=1, modes=["rev"], atol=1e-7, rtol=1e-7)
        check_grads(f, (x, kernel), order=2, modes=["rev"], atol=1e-6, rtol=1e-6)


def test_explicit_vjp_conv_leaves_other_convolutions_to_lax():
    """Strided, grouped or unevenly padded convolutions are not its case: JAX's rule, so forward
    mode works through them."""
    x = jax.random.normal(jax.random.key(0), (1, 8, 8, 4))
    kernel = jax.random.normal(jax.random.key(1), (3, 3, 4, 4))
    dn = ("NHWC", "HWIO", "NHWC")
    for kwargs in ({"window_strides": (2, 2), "padding": [(1, 1)] * 2}, {"window_strides": (1, 1), "padding": "SAME"}):
        f = lambda x: conv.conv_general_dilated_explicit_vjp(x, kernel, dimension_numbers=dn, **kwargs)  # noqa: E731
        want = jax.lax.conv_general_dilated(x, kernel, dimension_numbers=dn, **kwargs)
        np.testing.assert_array_equal(jax.jvp(f, (x,), (x,))[0], want)


def test_model_same_output_and_gradient_with_either_conv_vjp():
    x = jax.random.uniform(jax.random.key(2), (1, 16, 20, 3)) * 255
    outs, grads = {}, {}
    for mode in ("explicit", "lax"):
        cfg = model_config("official")
        cfg.channels, cfg.T, cfg.conv_vjp = 8, 2, mode
        graphdef, params = nnx.split(MINet(cfg, rngs=nnx.Rngs(0)))
        outs[mode] = nnx.merge(graphdef, params)(x)
        grads[mode] = jax.grad(lambda p, gd=graphdef: jnp.mean(nnx.merge(gd, p)(x) ** 2))(params)
    np.testing.assert_array_equal(outs["explicit"], outs["lax"])
    for a, b in zip(jax.tree.leaves(grads["explicit"]), jax.tree.leaves(grads["lax"]), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=1e-5 * max(1.0, float(jnp.abs(b).max())))


def test_1x1_as_dot_matches_lax_values_and_gradients():
    x = jax.random.normal(jax.random.key(5), (2, 6, 7, 16))
    k = jax.random.normal(jax.random.key(6), (1, 1, 16, 3))
    args = ((1, 1), ((0, 0), (0, 0)))
    dn = ("NHWC", "HWIO", "NHWC")
    f = lambda fn: lambda x, k: jnp.sum(jnp.sin(fn(x, k, *args, dimension_numbers=dn)))  # noqa: E731
    want = jax.lax.conv_general_dilated(x, k, *args, dimension_numbers=dn)
    got = conv.conv_general_dilated_1x1_as_dot(x, k, *args, dimension_numbers=dn)
    bound = _sum_bound(16, float(jnp.abs(x).max() * jnp.abs(k).max()))
    np.testing.assert_allclose(got, want, rtol=0, atol=bound)
    g_got = jax.grad(f(conv.conv_general_dilated_1x1_as_dot), (0, 1))(x, k)
    g_want = jax.grad(f(jax.lax.conv_general_dilated), (0, 1))(x, k)
    for a, b, terms in zip(g_got, g_want, (3, x.size // 16), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=_sum_bound(terms, float(jnp.abs(b).max()) * 16 + 1.0))
    # not 1x1 (or strided, or grouped): lax's own convolution, exactly
    k3 = jax.random.normal(jax.random.key(7), (3, 3, 16, 3))
    pad = ((1, 1), (1, 1))
    np.testing.assert_array_equal(
        conv.conv_general_dilated_1x1_as_dot(x, k3, (1, 1), pad, dimension_numbers=dn),
        jax.lax.conv_general_dilated(x, k3, (1, 1), pad, dimension_numbers=dn),
    )
