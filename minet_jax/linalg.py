"""Linear algebra on callables, for spectra of Jacobians that are never formed: no model knowledge.

- `arnoldi`: dominant eigenvalues of a linear map by thick-restarted (Krylov-Schur) Arnoldi,
  numpy driven; complex pairs stay together, which a plain power method cannot do.
- `power_sigma`: the largest singular value by power iteration on A^T A.
- `eigenvalues_of`, `largest_singular_value`: of an explicit matrix (numpy, float64).
- `ritz_radius`, `matrix_spectral_radius`: a fixed-size Arnoldi and the spectral radius of its
  Hessenberg matrix in pure JAX (jit-able on any backend), for estimates inside training.

scipy supplies the ordered real Schur form; its own `eigs` (ARPACK) takes no float32 callables
on the accelerator and reports no Krylov residual, so the Arnoldi loop is written here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

Array = jax.Array
Matvec = Callable[[np.ndarray], np.ndarray]

_HIGHEST = jax.lax.Precision.HIGHEST



@dataclasses.dataclass
class ArnoldiResult:
    """Ritz values of a (restarted) Arnoldi run, largest modulus first."""

    ritz: np.ndarray  # complex Ritz values of the last Krylov basis, descending modulus
    residuals: np.ndarray  # ||A x - theta x|| / |theta| for each, from the Krylov relation
    explicit_residual: float  # the same for the top pair, recomputed with two more matvecs
    converged: bool  # top pair's Krylov residual < tol (or an invariant subspace was found)
    history: list[float]  # top |theta| after each cycle
    restarts: int
    matvecs: int
    vector: np.ndarray | None = None  # the top Ritz vector (complex, unit norm)

    @property
    def radius(self) -> float:
        return float(np.abs(self.ritz[0])) if self.ritz.size else 0.0


@dataclasses.dataclass
class PowerResult:
    """sigma_max by power iteration on A^T A."""

    sigma: float
    residual: float  # ||A^T A v - sigma^2 v|| / sigma^2 at the last v
    converged: bool
    history: list[float]  # sigma estimate per iteration
    iterations: int


def _sorted_eig(h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    theta, y = np.linalg.eig(h)
    order = np.argsort(-np.abs(theta), kind="stable")
    return theta[order], y[:, order]


def arnoldi(
    matvec: Matvec,
    v0: np.ndarray,
    *,
    krylov: int = 30,
    keep: int | None = None,
    max_restarts: int = 10,
    tol: float = 1e-4,
) -> ArnoldiResult:
    """Dominant eigenvalues of the linear map `matvec` (flat vectors) by Krylov-Schur Arnoldi.

    Each cycle grows the basis to `krylov` vectors (classical Gram-Schmidt, twice); between cycles
    the `keep` (default krylov // 2) largest-modulus Ritz vectors are kept through an ordered real
    Schur form, so complex pairs stay together. Stops when the top Ritz pair's relative residual
    is < tol, or after `max_restarts` restarts.
    """
    v0 = np.asarray(v0).reshape(-1)
    dt = v0.dtype if v0.dtype in (np.float32, np.float64) else np.float64
    n = v0.size
    m = min(krylov, n)
    keep = max(1, m // 2) if keep is None else min(keep, m - 1)
    eps = np.finfo(dt).eps
    V = np.zeros((m + 1, n), dt)
    H = np.zeros((m + 1, m))
    V[0] = v0 / np.linalg.norm(v0)
    j0, matvecs, restarts, history = 0, 0, 0, []
    while True:
        size = m
        for j in range(j0, m):
            w = np.asarray(matvec(V[j]), dt).reshape(-1)
            matvecs += 1
            wnorm = np.linalg.norm(w)
            h = np.zeros(j + 1)
            for _ in range(2):  # CGS2: one reorthogonalisation keeps V orthonormal in float32
                c = V[: j + 1] @ w
                w = w - c @ V[: j + 1]
                h += c
            beta = float(np.linalg.norm(w))
            H[: j + 1, j] = h
            H[j + 1, j] = beta
            if beta <= 100 * eps * wnorm or wnorm == 0:  # invariant subspace: Ritz values exact
                H[j + 1, j] = 0.0
                size = j + 1
                break
            V[j + 1] = w / beta
        theta, y = _sorted_eig(H[:size, :size])
        res = np.abs(H[size, :size] @ y) / np.maximum(np.abs(theta), np.finfo(float).tiny)
        history.append(float(np.abs(theta[0])))
        converged = size < m or res[0] < tol
        if converged or restarts >= max_restarts:
            break
        # Thick restart: keep the invariant subspace of H belonging to the `keep` largest moduli.
        thresh = np.abs(theta[keep - 1]) * (1 - 1e-9)
        t, z, sdim = scipy.linalg.schur(H[:m, :m], output="real", sort=lambda re, im, c=thresh: np.hypot(re, im) >= c)
        if sdim >= m or sdim == 0:
            break
        p = sdim
        V[:p] = z[:, :p].T.astype(dt) @ V[:m]
        V[p] = V[m]
        V[p + 1 :] = 0
        H_new = np.zeros_like(H)
        H_new[:p, :p] = t[:p, :p]
        H_new[p, :p] = H[m, :m] @ z[:, :p]
        H = H_new
        j0 = p
        restarts += 1
    # The top pair's residual recomputed from its Ritz vector (guards against lost orthogonality).
    x = y[:, 0] @ V[:size]
    ax = np.asarray(matvec(np.ascontiguousarray(x.real).astype(dt)), np.float64).reshape(-1)
    matvecs += 1
    if np.any(x.imag):
        ax = ax + 1j * np.asarray(matvec(np.ascontiguousarray(x.imag).astype(dt)), np.float64).reshape(-1)
        matvecs += 1
    scale = max(abs(theta[0]), np.finfo(float).tiny) * np.linalg.norm(x)
    explicit = float(np.linalg.norm(ax - theta[0] * x) / scale)
    return ArnoldiResult(theta, res, explicit, bool(converged), history, restarts, matvecs, x / np.linalg.norm(x))


def power_sigma(jtj: Callable[[np.ndarray], tuple[float, np.ndarray]], v0: np.ndarray, *,
                max_iter: int = 100, tol: float = 1e-4) -> PowerResult:  # fmt: skip
    """sigma_max of A by power iteration; `jtj(v)` returns (||A v||^2, A^T A v) for flat v."""
    v = np.asarray(v0).reshape(-1)
    v = v / np.linalg.norm(v)
    history, res, k = [], np.inf, 0
    for k in range(1, max_iter + 1):
        s2, w = jtj(v)
        s2 = float(s2)
        w = np.asarray(w).reshape(-1)
        history.append(float(np.sqrt(max(s2, 0.0))))
        res = float(np.linalg.norm(w - s2 * v) / max(s2, np.finfo(float).tiny))
        wn = np.linalg.norm(w)
        if res < tol or wn == 0:
            break
        v = (w / wn).astype(v.dtype)
    return PowerResult(history[-1], res, bool(res < tol), history, k)


def eigenvalues_of(jac: np.ndarray) -> tuple[np.ndarray, int]:
    """Eigenvalues of a square matrix as (the nonzero-block eigenvalues, number of zeros left out).

    Indices whose row or column is identically zero (ReLU-dead outputs, unused inputs) only add
    zero eigenvalues (the matrix is block triangular after permuting them out), so numpy works
    on the remaining block alone.
    """
    live = np.any(jac != 0, axis=1) & np.any(jac != 0, axis=0)
    core = jac[np.ix_(live, live)].astype(np.float64)
    ev = np.linalg.eigvals(core) if core.size else np.zeros(0, complex)
    return ev[np.argsort(-np.abs(ev), kind="stable")], int(jac.shape[0] - live.sum())


def largest_singular_value(jac: np.ndarray) -> float:
    """||jac||_2, from the largest eigenvalue of the Gram matrix of its nonzero rows and columns."""
    core = jac[np.any(jac != 0, axis=1)][:, np.any(jac != 0, axis=0)].astype(np.float64)
    if core.size == 0:
        return 0.0
    gram = core.T @ core if core.shape[1] <= core.shape[0] else core @ core.T
    k = gram.shape[0]
    return float(np.sqrt(max(scipy.linalg.eigh(gram, eigvals_only=True, subset_by_index=[k - 1, k - 1])[0], 0.0)))


# --- pure JAX ---


def matrix_spectral_radius(a: Array, squarings: int = 24) -> Array:
    """rho(a) = lim ||a^k||^(1/k), by normalised repeated squaring (no eig: works on any backend)."""

    def body(_, c):
        a, log_r = c
        a = jnp.matmul(a, a, precision=_HIGHEST)
        s = jnp.linalg.norm(a)
        return a / jnp.maximum(s, jnp.finfo(a.dtype).tiny), 2 * log_r + jnp.log(s)

    s = jnp.linalg.norm(a)
    a, log_r = jax.lax.fori_loop(0, squarings, body, (a / jnp.maximum(s, jnp.finfo(a.dtype).tiny), jnp.log(s)))
    return jnp.exp(log_r / 2.0**squarings)


def ritz_radius(matvec: Callable[[Array], Array], v0: Array, m: int) -> Array:
    """The largest Ritz value modulus of `m` Arnoldi steps (no restart) of the linear map `matvec`
    on flat vectors from `v0`: pure JAX, jit-able. The basis stops growing at an invariant subspace."""
    dt = v0.dtype
    n = v0.size
    V = jnp.zeros((m + 1, n), dt).at[0].set(v0 / jnp.linalg.norm(v0))
    H = jnp.zeros((m + 1, m), dt)
    eps = jnp.finfo(dt).eps

    def step(j, c):
        V, H = c
        w = matvec(V[j])
        wn = jnp.linalg.norm(w)
        h = jnp.zeros((m + 1,), dt)
        for _ in range(2):  # rows of V past j are still zero, so they add nothing
            cj = jnp.matmul(V, w, precision=_HIGHEST)
            w = w - jnp.matmul(cj, V, precision=_HIGHEST)
            h = h + cj
        beta = jnp.linalg.norm(w)
        ok = beta > 100 * eps * wn
        V = V.at[j + 1].set(jnp.where(ok, w / jnp.where(ok, beta, 1), 0))
        return V, H.at[:, j].set(h.at[j + 1].set(jnp.where(ok, beta, 0)))

    _, H = jax.lax.fori_loop(0, m, step, (V, H))
    return matrix_spectral_radius(H[:m, :m])
