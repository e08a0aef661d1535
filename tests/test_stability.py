"""Theorem 1 diagnostics: Arnoldi / power estimates against numpy on known spectra and against the
exact jacfwd Jacobian of an IM-block; the training regularisers; the CLI on the authors' weights."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from minet_jax import solvers, stability
from minet_jax.model import IMBlock, field_fn
from minet_jax.model_config import model_config
from tests.conftest import SOTS_MINI, WEIGHTS, require


def linear(p, g):
    return (p @ g.reshape(-1)).reshape(g.shape)


def rotation_scaling(r: float, theta: float) -> np.ndarray:
    return r * np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])


def complex_pair_matrix(n: int = 200, seed: int = 0, nonnormal: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Q (B + N) Q^T with B block diagonal (2x2 rotation-scalings, then reals), dominant eigenvalue
    the pair exp(+-1.1 i), all others of modulus <= 0.8; N strictly above the 2x2 blocks (so the
    eigenvalues stay those of B). Returns the float32 matrix and its exact eigenvalues."""
    rng = np.random.default_rng(seed)
    b = np.zeros((n, n))
    b[:2, :2] = rotation_scaling(1.0, 1.1)
    ev = [np.exp(1.1j), np.exp(-1.1j)]
    i = 2
    while i + 2 <= n - 20:
        r, t = rng.uniform(0.0, 0.8), rng.uniform(0.1, 3.0)
        b[i : i + 2, i : i + 2] = rotation_scaling(r, t)
        ev += [r * np.exp(1j * t), r * np.exp(-1j * t)]
        i += 2
    for j in range(i, n):
        b[j, j] = rng.uniform(-0.8, 0.8)
        ev.append(b[j, j])
    mask = np.ones((n, n), bool)
    for k in range(0, i, 2):
        mask[k : k + 2, k : k + 2] = False
    b += nonnormal * np.triu(rng.normal(size=(n, n)), 1) * mask
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    return (q @ b @ q.T).astype(np.float32), np.asarray(ev)


@pytest.mark.parametrize("nonnormal", [0.0, 0.1])
def test_arnoldi_finds_dominant_complex_pair(nonnormal):
    a, ev = complex_pair_matrix(nonnormal=nonnormal)
    ref = np.linalg.eigvals(a.astype(np.float64))
    mod = np.sort(np.abs(ref))  # as constructed (the float32 rounding moves the small ones)
    np.testing.assert_allclose(mod[-2:], 1.0, rtol=1e-4)
    assert mod[-3] < np.sort(np.abs(ev))[-3] + 0.02
    g = jnp.zeros(a.shape[0])
    r = stability.arnoldi_eigenvalues(linear, jnp.asarray(a), g, krylov=30, key=jax.random.key(3))
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


def test_arnoldi_on_invariant_subspace_and_small_n():
    a = np.diag(np.arange(1.0, 11.0)).astype(np.float32)  # n < krylov: exact after n steps
    r = stability.arnoldi(lambda v: a @ v, np.ones(10, np.float32), krylov=30)
    assert r.converged and r.radius == pytest.approx(10.0, rel=1e-5)


@pytest.mark.parametrize("method", ["power", "lanczos"])
def test_sigma_max_against_numpy(method):
    rng = np.random.default_rng(2)
    n = 150
    u, _ = np.linalg.qr(rng.normal(size=(n, n)))
    w, _ = np.linalg.qr(rng.normal(size=(n, n)))
    s = np.concatenate([[2.0, 1.5], rng.uniform(0, 1.4, n - 2)])
    a = (u * s) @ w.T
    ref = np.linalg.svd(a, compute_uv=False)[0]
    r = stability.sigma_max(linear, jnp.asarray(a, jnp.float32), jnp.zeros(n), method=method, max_iter=50)
    assert r.converged
    assert r.sigma == pytest.approx(ref, rel=1e-3)
    # non-normal complex-pair matrix: sigma_max bounds the spectral radius from above
    b, _ = complex_pair_matrix(nonnormal=0.1)
    r = stability.sigma_max(linear, jnp.asarray(b), jnp.zeros(b.shape[0]), method=method, max_iter=50)
    assert r.sigma == pytest.approx(np.linalg.norm(b.astype(np.float64), 2), rel=1e-3)
    assert r.sigma > 1.0


@pytest.mark.parametrize("nonnormal", [0.0, 0.1])
def test_spectral_radius_estimate_jits(nonnormal):
    a, _ = complex_pair_matrix(nonnormal=nonnormal)
    est = jax.jit(lambda p, g, k: stability.spectral_radius_estimate(linear, p, g, eta=0.5, iters=20, key=k))
    rho = float(est(jnp.asarray(a), jnp.zeros(a.shape[0]), jax.random.key(0)))
    assert rho == pytest.approx(0.5, rel=0.03)


def test_matrix_spectral_radius():
    rng = np.random.default_rng(4)
    for m in [rng.normal(size=(12, 12)), rotation_scaling(0.7, 2.0), np.triu(rng.normal(size=(6, 6)), 1)]:
        ref = np.max(np.abs(np.linalg.eigvals(m)))
        got = float(stability._matrix_spectral_radius(jnp.asarray(m, jnp.float32)))
        assert got == pytest.approx(ref, rel=1e-3, abs=1e-6)


def test_eigenvalues_of_drops_zero_rows_and_columns():
    rng = np.random.default_rng(5)
    j = rng.normal(size=(40, 40))
    j[rng.random(40) < 0.3] = 0  # dead outputs
    j[:, rng.random(40) < 0.2] = 0  # unused inputs
    ev, zeros = stability.eigenvalues_of(j)
    full = np.linalg.eigvals(j)
    both = np.concatenate([ev, np.zeros(zeros)])
    assert np.allclose(np.sort(np.abs(both)), np.sort(np.abs(full)), atol=1e-8)
    assert stability.largest_singular_value(j) == pytest.approx(np.linalg.norm(j, 2), rel=1e-10)


@pytest.fixture(scope="module")
def small_block():
    """A random-weight dilated IM-block (the official field, 8 channels) at 8x8: 512 unknowns;
    returns f, params, g0 and the block output g_T."""
    block = stability.with_lax_convs(IMBlock(model_config("official"), 8, dilation=2, rngs=nnx.Rngs(0)))
    graphdef, params = nnx.split(block.f)
    f = field_fn(graphdef)
    g0 = jax.random.normal(jax.random.key(0), (1, 8, 8, 8))
    g_t, _ = jax.jit(lambda p, g: solvers.unrolled(f, p, g, T=8))(params, g0)
    return f, params, g0, g_t


def test_jacobian_matches_jvp_and_finite_differences(small_block):
    f, params, _, g = small_block
    jac = stability.jacobian_matrix(f, params, g)
    assert jac.shape == (512, 512)
    for i in (0, 137, 511):  # columns are Jacobian-vector products with basis vectors
        e = jnp.zeros(g.size).at[i].set(1.0).reshape(g.shape)
        col = jax.jvp(lambda x: f(params, x), (g,), (e,))[1].reshape(-1)
        np.testing.assert_allclose(jac[:, i], col, atol=1e-5)
    v = jax.random.normal(jax.random.key(7), g.shape)
    h = 1e-3
    fd = (f(params, g + h * v) - f(params, g - h * v)).reshape(-1) / (2 * h)
    jv = jac @ np.asarray(v).reshape(-1)
    assert np.linalg.norm(jv - fd) / np.linalg.norm(jv) < 1e-2


def test_exact_and_arnoldi_agree_on_im_block(small_block):
    f, params, _, g = small_block
    exact = stability.analyze_point(f, params, g, eta=0.5, method="exact")
    rho = exact["spectral_radius"] / 0.5
    assert exact["method_residual"] < 1e-4
    assert exact["theorem1_holds"] == (0.5 * rho < 1)
    r = stability.arnoldi_eigenvalues(f, params, g, krylov=30)
    assert r.converged and r.radius == pytest.approx(rho, rel=1e-2)
    sigma = stability.sigma_max(f, params, g, method="lanczos").sigma
    assert sigma == pytest.approx(exact["sigma_max"] / 0.5, rel=1e-3)
    assert sigma >= rho
    est = jax.jit(lambda p, g: stability.spectral_radius_estimate(f, p, g, iters=30, key=jax.random.key(0)))
    assert float(est(params, g)) == pytest.approx(rho, rel=0.1)


def test_hutchinson_frobenius(small_block):
    f, params, _, g = small_block
    jac = stability.jacobian_matrix(f, params, g)
    exact = np.sum(jac.astype(np.float64) ** 2) / g.size
    pen = jax.jit(stability.jacobian_penalty, static_argnums=0, static_argnames="num_probes")
    est = pen(f, params, g, jax.random.key(1), num_probes=2000)
    assert float(est) == pytest.approx(exact, rel=0.05)


def test_hutchinson_gaussian_probes():
    a, _ = complex_pair_matrix(nonnormal=0.1)
    exact = np.sum(a.astype(np.float64) ** 2) / a.shape[0]
    est = stability.jacobian_penalty(
        linear, jnp.asarray(a), jnp.zeros(a.shape[0]), jax.random.key(2), num_probes=2000, probe="gaussian", eta=2.0
    )
    assert float(est) == pytest.approx(4 * exact, rel=0.05)


def test_penalty_is_differentiable(small_block):
    f, params, _, g = small_block
    # jit compiles the frobenius gradient faster than eager runs it; for radius the reverse holds
    for kind, wrap in (("frobenius", jax.jit), ("radius", lambda fn: fn)):

        def loss(p, kind=kind):
            return stability.jacobian_penalty(f, p, g, jax.random.key(0), kind=kind, margin=0.1, num_probes=2)

        value, grads = wrap(jax.value_and_grad(loss))(params)
        leaves = jax.tree.leaves(grads)
        assert float(value) > 0
        assert all(bool(jnp.all(jnp.isfinite(x))) for x in leaves)
        assert sum(float(jnp.sum(jnp.abs(x))) for x in leaves) > 0


def test_radius_penalty_hinge(small_block):
    f, params, _, g = small_block
    assert float(stability.jacobian_penalty(f, params, g, jax.random.key(0), kind="radius", margin=100.0)) == 0.0


@pytest.mark.parametrize("kind", ["radius", "frobenius"])
def test_descending_the_penalty_brings_the_exact_radius_under_one(small_block, kind):
    """What the training term is for: eta is set so that rho(eta J_f) = 1.5 (numpy's eigenvalues of
    the exact Jacobian); ten Adam steps on the penalty alone bring it under 1."""
    import optax

    f, params, _, g = small_block

    def exact_rho(p):
        return float(np.max(np.abs(np.linalg.eigvals(stability.jacobian_matrix(f, p, g)))))

    eta = 1.5 / exact_rho(params)
    tx = optax.adam(1e-2)

    @jax.jit
    def step(p, opt, key):
        loss = lambda p: stability.jacobian_penalty(f, p, g, key, kind=kind, eta=eta, margin=0.8, num_probes=4)  # noqa: E731
        value, grads = jax.value_and_grad(loss)(p)
        updates, opt = tx.update(grads, opt, p)
        return optax.apply_updates(p, updates), opt, value

    opt, p = tx.init(params), params
    for i in range(10):
        p, opt, _ = step(p, opt, jax.random.key(i))
    assert eta * exact_rho(p) < 1.0


# --- the CLI on the authors' weights ---


@pytest.fixture(scope="module")
def hazy_image():
    require(WEIGHTS)
    return require(SOTS_MINI / "hazy" / "1400_1.png")


def check_report(out, method: str, unknowns: int) -> list[dict]:
    report = json.loads((out / "stability.json").read_text())
    assert [b["name"] for b in report["blocks"]] == ["res1", "res2", "res4"]
    for b in report["blocks"]:
        assert b["method"] == method and b["unknowns"] == unknowns and b["eta"] == 1.0
        assert b["method_residual"] < 1e-3
        assert len(b["forward_residuals"]) == 8
        assert b["theorem1_holds"] == (b["spectral_radius"] < 1)
        assert b["sigma_max"] >= b["spectral_radius"] * (1 - 1e-3)
        assert len(b["top_eigenvalues"]) == 8 and len(b["top_eigenvalues"][0]) == 2
    assert (out / "eigenvalues.png").stat().st_size > 0
    assert (out / "residuals.png").stat().st_size > 0
    return report["blocks"]


def test_cli_exact_and_arnoldi_agree(hazy_image, tmp_path):
    """--crop 8: 4x4x64 = 1024 unknowns per block, small enough for the exact eigenvalues."""
    blocks = {}
    for method in ("exact", "arnoldi"):
        out = tmp_path / method
        stability.main([
            "--checkpoint", str(WEIGHTS), "--image", str(hazy_image), "--crop", "8", "--output", str(out),
            "--method", method, "--sigma-method", "lanczos", *(["--fixed-point"] if method == "exact" else []),
        ])  # fmt: skip
        blocks[method] = check_report(out, method, 4 * 4 * 64)
    for b in blocks["exact"]:
        fp = b["fixed_point"]
        assert fp["converged"] == ("spectral_radius" in fp)
        assert fp["converged"] or fp["status"] == "did not converge"
        k = min(len(fp["residuals"]), len(b["forward_residuals"]))  # the same iteration from g0
        assert fp["residuals"][:k] == pytest.approx(b["forward_residuals"][:k], rel=1e-4)
    for key in ("spectral_radius", "sigma_max"):
        exact = [b[key] for b in blocks["exact"]]
        assert [b[key] for b in blocks["arnoldi"]] == pytest.approx(exact, rel=1e-2)


@pytest.mark.slow
def test_cli_crop32(hazy_image, tmp_path):
    """--crop 32 (16x16x64 = 16384 unknowns per block: --method auto takes Arnoldi)."""
    out = tmp_path / "stab"
    stability.main([
        "--checkpoint", str(WEIGHTS), "--image", str(hazy_image), "--crop", "32", "--output", str(out),
        "--sigma-method", "lanczos", "--power-iters", "20",
    ])  # fmt: skip
    for b in check_report(out, "arnoldi", 16 * 16 * 64):
        assert b["convergence"]["converged"]
