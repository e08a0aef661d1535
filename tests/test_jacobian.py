"""minet_jax.jacobian: the exact jacfwd Jacobian of an IM-block field against jvp and finite
differences, the matrix-free estimates (Arnoldi, sigma_max, the jit-able spectral radius) against
it, and the training regularisers (Hutchinson Frobenius, radius hinge)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from minet_jax import conv, jacobian, solvers
from minet_jax.config import model_config
from minet_jax.model import IMBlock, MINet, field_fn, share_sep_impl


def linear(p, g):
    return (p @ g.reshape(-1)).reshape(g.shape)


@pytest.mark.parametrize("nonnormal", [0.0, 0.1])
def test_spectral_radius_estimate_jits(nonnormal, complex_pair_matrix):
    a, _ = complex_pair_matrix(nonnormal=nonnormal)
    est = jax.jit(lambda p, g, k: jacobian.spectral_radius_estimate(linear, p, g, eta=0.5, iters=20, key=k))
    rho = float(est(jnp.asarray(a), jnp.zeros(a.shape[0]), jax.random.key(0)))
    assert rho == pytest.approx(0.5, rel=0.03)


@pytest.mark.parametrize("nonnormal", [0.0, 0.1])
def test_arnoldi_finds_dominant_complex_pair(nonnormal, complex_pair_matrix):
    a, ev = complex_pair_matrix(nonnormal=nonnormal)
    ref = np.linalg.eigvals(a.astype(np.float64))
    mod = np.sort(np.abs(ref))  # as constructed (the float32 rounding moves the small ones)
    np.testing.assert_allclose(mod[-2:], 1.0, rtol=1e-4)
    assert mod[-3] < np.sort(np.abs(ev))[-3] + 0.02
    g = jnp.zeros(a.shape[0])
    r = jacobian.arnoldi_eigenvalues(linear, jnp.asarray(a), g, krylov=30, key=jax.random.key(3))
    assert r.converged and r.explicit_residual < 1e-3
    assert r.radius == pytest.approx(1.0, rel=1e-3)
    top = ref[np.argsort(-np.abs(ref))[:2]]
    assert np.allclose(np.sort_complex(r.ritz[:2]), np.sort_complex(top), atol=1e-3)  # the pair itself
    # Why not a plain power method: on a complex pair its Rayleigh quotient settles near
    # Re(lambda) (or wanders), not |lambda|.
    v = np.random.default_rng(1).normal(size=a.shape[0])
    for _ in range(200):
        w = a @ v
        quotient = v @ w / (v @ v)
        v = w / np.linalg.norm(w)
    assert abs(quotient) < 0.9


@pytest.mark.parametrize("method", ["power", "lanczos"])
def test_sigma_max_against_numpy(method, complex_pair_matrix):
    rng = np.random.default_rng(2)
    n = 150
    u, _ = np.linalg.qr(rng.normal(size=(n, n)))
    w, _ = np.linalg.qr(rng.normal(size=(n, n)))
    s = np.concatenate([[2.0, 1.5], rng.uniform(0, 1.4, n - 2)])
    a = (u * s) @ w.T
    ref = np.linalg.svd(a, compute_uv=False)[0]
    r = jacobian.sigma_max(linear, jnp.asarray(a, jnp.float32), jnp.zeros(n), method=method, max_iter=50)
    assert r.converged
    assert r.sigma == pytest.approx(ref, rel=1e-3)
    # non-normal complex-pair matrix: sigma_max bounds the spectral radius from above
    b, _ = complex_pair_matrix(nonnormal=0.1)
    r = jacobian.sigma_max(linear, jnp.asarray(b), jnp.zeros(b.shape[0]), method=method, max_iter=50)
    assert r.sigma == pytest.approx(np.linalg.norm(b.astype(np.float64), 2), rel=1e-3)
    assert r.sigma > 1.0


@pytest.fixture(scope="module")
def small_block():
    """A random-weight dilated IM-block (the official field, 8 channels) at 8x8: 512 unknowns;
    returns f, params, g0 and the block output g_T."""
    cfg = model_config("official")
    if share_sep_impl(cfg) == "shift":  # what jacobian.forward_mode_model does for a whole MINet
        cfg.share_sep_impl = "shift_autodiff"  # the same op (same values) left to JAX's autodiff
    cfg.conv_vjp = "lax"  # likewise for the convolutions
    block = IMBlock(cfg, 8, dilation=2, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(block.f)
    f = field_fn(graphdef)
    g0 = jax.random.normal(jax.random.key(0), (1, 8, 8, 8))
    g_t, _ = jax.jit(lambda p, g: solvers.unrolled(f, p, g, T=8))(params, g0)
    return f, params, g0, g_t


def test_jacobian_matches_jvp_and_finite_differences(small_block):
    f, params, _, g = small_block
    jac = jacobian.jacobian_matrix(f, params, g)
    assert jac.shape == (512, 512)
    for i in (0, 137, 511):  # columns are Jacobian-vector products with basis vectors
        e = jnp.zeros(g.size).at[i].set(1.0).reshape(g.shape)
        col = jax.jvp(lambda x: f(params, x), (g,), (e,))[1].reshape(-1)
        # jacfwd batches the JVPs (another convolution algorithm): round-off relative to the column
        np.testing.assert_allclose(jac[:, i], col, rtol=1e-5, atol=1e-5 * max(1.0, float(jnp.abs(col).max())))
    v = jax.random.normal(jax.random.key(7), g.shape)
    h = 1e-3
    fd = (f(params, g + h * v) - f(params, g - h * v)).reshape(-1) / (2 * h)
    jv = jac @ np.asarray(v).reshape(-1)
    assert np.linalg.norm(jv - fd) / np.linalg.norm(jv) < 1e-2


def test_exact_and_arnoldi_agree_on_im_block(small_block):
    f, params, _, g = small_block
    exact = jacobian.analyze_point(f, params, g, eta=0.5, method="exact")
    rho = exact["spectral_radius"] / 0.5
    assert exact["method_residual"] < 1e-4
    assert exact["theorem1_holds"] == (0.5 * rho < 1)
    r = jacobian.arnoldi_eigenvalues(f, params, g, krylov=30)
    assert r.converged and r.radius == pytest.approx(rho, rel=1e-2)
    sigma = jacobian.sigma_max(f, params, g, method="lanczos").sigma
    assert sigma == pytest.approx(exact["sigma_max"] / 0.5, rel=1e-3)
    assert sigma >= rho
    est = jax.jit(lambda p, g: jacobian.spectral_radius_estimate(f, p, g, iters=30, key=jax.random.key(0)))
    assert float(est(params, g)) == pytest.approx(rho, rel=0.1)


def test_hutchinson_frobenius(small_block):
    f, params, _, g = small_block
    jac = jacobian.jacobian_matrix(f, params, g)
    exact = np.sum(jac.astype(np.float64) ** 2) / g.size
    pen = jax.jit(jacobian.jacobian_penalty, static_argnums=0, static_argnames="samples")
    est = pen(f, params, g, jax.random.key(1), samples=2000)
    assert float(est) == pytest.approx(exact, rel=0.05)


def test_hutchinson_gaussian_probes(complex_pair_matrix):
    a, _ = complex_pair_matrix(nonnormal=0.1)
    exact = np.sum(a.astype(np.float64) ** 2) / a.shape[0]
    est = jacobian.jacobian_penalty(
        linear, jnp.asarray(a), jnp.zeros(a.shape[0]), jax.random.key(2), samples=2000, distribution="gaussian", eta=2.0
    )
    assert float(est) == pytest.approx(4 * exact, rel=0.05)


def test_penalty_is_differentiable(small_block):
    f, params, _, g = small_block
    # jit compiles the frobenius gradient faster than eager runs it; for radius the reverse holds
    for kind, wrap in (("frobenius", jax.jit), ("radius", lambda fn: fn)):

        def loss(p, kind=kind):
            return jacobian.jacobian_penalty(f, p, g, jax.random.key(0), kind=kind, margin=0.1, samples=2)

        value, grads = wrap(jax.value_and_grad(loss))(params)
        leaves = jax.tree.leaves(grads)
        assert float(value) > 0
        assert all(bool(jnp.all(jnp.isfinite(x))) for x in leaves)
        assert sum(float(jnp.sum(jnp.abs(x))) for x in leaves) > 0


def test_radius_penalty_hinge(small_block):
    f, params, _, g = small_block
    assert float(jacobian.jacobian_penalty(f, params, g, jax.random.key(0), kind="radius", margin=100.0)) == 0.0


@pytest.mark.parametrize("kind", ["radius", "frobenius"])
def test_descending_the_penalty_brings_the_exact_radius_under_one(small_block, kind):
    """What the training term is for: eta is set so that rho(eta J_f) = 1.5 (numpy's eigenvalues of
    the exact Jacobian); ten Adam steps on the penalty alone bring it under 1."""
    import optax

    f, params, _, g = small_block

    def exact_rho(p):
        return float(np.max(np.abs(np.linalg.eigvals(jacobian.jacobian_matrix(f, p, g)))))

    eta = 1.5 / exact_rho(params)
    tx = optax.adam(1e-2)

    @jax.jit
    def step(p, opt, key):
        loss = lambda p: jacobian.jacobian_penalty(f, p, g, key, kind=kind, eta=eta, margin=0.8, samples=4)
        value, grads = jax.value_and_grad(loss)(p)
        updates, opt = tx.update(grads, opt, p)
        return optax.apply_updates(p, updates), opt, value

    opt, p = tx.init(params), params
    for i in range(10):
        p, opt, _ = step(p, opt, jax.random.key(i))
    assert eta * exact_rho(p) < 1.0


def test_forward_mode_model_keeps_values_and_parameters():
    """On CPU ShareSepConv's fast op and the block convolutions have only reverse-mode rules;
    forward_mode_model swaps in the same ops left to JAX's autodiff, so jvp goes through a block's
    field, with the same values."""
    cfg = model_config("official")
    cfg.channels, cfg.T, cfg.share_sep_impl, cfg.conv_vjp = 4, 1, "shift", "explicit"
    model = MINet(cfg, rngs=nnx.Rngs(0))
    fm = jacobian.forward_mode_model(model)
    assert {b.f.pre_conv1.impl for b in fm.blocks[1:]} == {"shift_autodiff"}
    assert {b.f.pre_conv1.impl for b in model.blocks[1:]} == {"shift"}  # the original is untouched
    assert {b.f.conv1.conv_general_dilated for b in fm.blocks} == {jax.lax.conv_general_dilated}
    assert {b.f.conv2.conv_general_dilated for b in model.blocks} == {conv.conv_general_dilated_explicit_vjp}
    for a, b in zip(jax.tree.leaves(nnx.state(model)), jax.tree.leaves(nnx.state(fm)), strict=True):
        np.testing.assert_array_equal(a, b)
    g = jax.random.normal(jax.random.key(0), (1, 6, 6, 4))
    np.testing.assert_array_equal(fm.blocks[2].f(g), model.blocks[2].f(g))
    _, tangent = jax.jvp(fm.blocks[2].f, (g,), (jnp.ones_like(g),))
    assert np.isfinite(np.asarray(tangent)).all() and np.abs(np.asarray(tangent)).max() > 0
    with pytest.raises(TypeError):  # custom_vjp: no forward mode
        jax.jvp(model.blocks[2].f, (g,), (jnp.ones_like(g),))
