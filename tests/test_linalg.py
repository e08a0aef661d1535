"""minet_jax.linalg on plain matrices of known spectrum, against numpy: Arnoldi (complex pairs
kept together), sigma_max by power iteration / Lanczos, the pure-JAX spectral radius, and the
eigenvalues of explicit matrices. A linear "field" p @ g stands in for a Jacobian."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from minet_jax import linalg


@pytest.mark.parametrize("nonnormal", [0.0, 0.1])
def test_arnoldi_on_a_matrix_finds_its_dominant_complex_pair(nonnormal, complex_pair_matrix):
    a, _ = complex_pair_matrix(nonnormal=nonnormal)
    ref = np.linalg.eigvals(a.astype(np.float64))
    v0 = np.random.default_rng(3).normal(size=a.shape[0]).astype(np.float32)
    r = linalg.arnoldi(lambda v: a @ v, v0, krylov=30)
    assert r.converged and r.explicit_residual < 1e-3
    top = ref[np.argsort(-np.abs(ref))[:2]]
    assert np.allclose(np.sort_complex(r.ritz[:2]), np.sort_complex(top), atol=1e-3)
    assert r.radius == pytest.approx(np.abs(top[0]), rel=1e-3)


def test_power_sigma_and_ritz_radius_against_numpy():
    rng = np.random.default_rng(5)
    a = rng.normal(size=(60, 60)) / 8
    sigma = np.linalg.svd(a, compute_uv=False)[0]
    r = linalg.power_sigma(lambda v: (float(np.sum((a @ v) ** 2)), a.T @ (a @ v)), rng.normal(size=60), max_iter=500,
                           tol=1e-8)  # fmt: skip
    assert r.converged and r.sigma == pytest.approx(sigma, rel=1e-4)
    # 60 Arnoldi steps on a 60-dimensional map: the Hessenberg matrix is similar to it.
    rho = float(linalg.ritz_radius(lambda v: jnp.asarray(a, jnp.float32) @ v, jnp.ones(60, jnp.float32), 60))
    assert rho == pytest.approx(np.max(np.abs(np.linalg.eigvals(a))), rel=1e-3)


def test_arnoldi_on_invariant_subspace_and_small_n():
    a = np.diag(np.arange(1.0, 11.0)).astype(np.float32)  # n < krylov: exact after n steps
    r = linalg.arnoldi(lambda v: a @ v, np.ones(10, np.float32), krylov=30)
    assert r.converged and r.radius == pytest.approx(10.0, rel=1e-5)


def test_matrix_spectral_radius():
    rng = np.random.default_rng(4)
    for m in [
        rng.normal(size=(12, 12)),
        0.7 * np.array([[np.cos(2.0), -np.sin(2.0)], [np.sin(2.0), np.cos(2.0)]]),
        np.triu(rng.normal(size=(6, 6)), 1),
    ]:
        ref = np.max(np.abs(np.linalg.eigvals(m)))
        got = float(linalg.matrix_spectral_radius(jnp.asarray(m, jnp.float32)))
        assert got == pytest.approx(ref, rel=1e-3, abs=1e-6)


def test_eigenvalues_of_drops_zero_rows_and_columns():
    rng = np.random.default_rng(5)
    j = rng.normal(size=(40, 40))
    j[rng.random(40) < 0.3] = 0  # dead outputs
    j[:, rng.random(40) < 0.2] = 0  # unused inputs
    ev, zeros = linalg.eigenvalues_of(j)
    full = np.linalg.eigvals(j)
    both = np.concatenate([ev, np.zeros(zeros)])
    assert np.allclose(np.sort(np.abs(both)), np.sort(np.abs(full)), atol=1e-8)
    assert linalg.largest_singular_value(j) == pytest.approx(np.linalg.norm(j, 2), rel=1e-10)
