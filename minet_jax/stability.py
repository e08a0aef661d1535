"""Stability of the IM-blocks' iteration g <- g0 + eta f(g) (the paper's Theorem 1).

Theorem 1: the iteration is stable where every eigenvalue of eta * J_f (J_f the Jacobian of the
field at the point) lies inside the unit circle, i.e. the spectral radius of eta * J_f is < 1.

- Exact (small crops): `jax.jacfwd` of the pure field f, all eigenvalues by numpy.
- Matrix-free (any size): the dominant eigenvalues by a thick-restarted (Krylov-Schur) Arnoldi on
  Jacobian-vector products; sigma_max(J_f), an upper bound on the spectral radius, by power
  iteration on J^T J. A plain power method does not settle on a dominant complex pair, Arnoldi does.
- For training: `spectral_radius_estimate` (jit-able, fixed-size Arnoldi) and `jacobian_penalty`
  (Hutchinson ||J_f||_F^2 or a power-iteration radius hinge, as in Bai et al., "Stabilizing
  equilibrium models by Jacobian regularization").

CLI: python -m minet_jax.stability --checkpoint CKPT --image IMG [--crop S] --output OUT
     [--method auto|exact|arnoldi] [--fixed-point]
writes OUT/stability.json, OUT/eigenvalues.png and OUT/residuals.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
from flax import nnx

from minet_jax import solvers
from minet_jax.model import field_fn

Array = jax.Array
F = solvers.F
Matvec = Callable[[np.ndarray], np.ndarray]

EXACT_MAX_UNKNOWNS = 4096  # `--method auto` takes the exact route up to this many unknowns per block
_HIGHEST = jax.lax.Precision.HIGHEST


# --- linear algebra on callables (numpy driven) ---


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


# --- the Jacobian of a pure field f(params, g) ---


@jax.jit(static_argnums=0)
def _jacfwd(f: F, params: Any, g: Array) -> Array:
    return jax.jacfwd(lambda x: f(params, x))(g)


@jax.jit(static_argnums=0)
def _jvp(f: F, params: Any, g: Array, v: Array) -> Array:
    return jax.jvp(lambda x: f(params, x), (g,), (v,))[1]


def jacobian_matrix(f: F, params: Any, g: Array) -> np.ndarray:
    """The n x n Jacobian of g -> f(params, g) (n = g.size) by `jax.jacfwd`, C-order flattening."""
    return np.asarray(_jacfwd(f, params, g)).reshape(g.size, g.size)


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


def _flat_ops(f: F, params: Any, g: Array):
    """Eager matvecs on flat numpy vectors: v -> J v and v -> (||J v||^2, J^T J v)."""
    _, lin = jax.linearize(lambda x: f(params, x), g)  # forward once, reused by every product
    lin_t = jax.linear_transpose(lin, g)

    def as_tangent(v):
        return jnp.asarray(v, g.dtype).reshape(g.shape)

    def jvp(v):
        return np.asarray(lin(as_tangent(v)), np.float32 if g.dtype != jnp.float64 else np.float64).reshape(-1)

    def jtj(v):
        u = lin(as_tangent(v))
        (w,) = lin_t(u)
        return float(jnp.vdot(u, u)), np.asarray(w, np.float32 if g.dtype != jnp.float64 else np.float64)

    return jvp, jtj


def _start(key: Array | None, g: Array) -> np.ndarray:
    key = jax.random.key(0) if key is None else key
    dt = np.float64 if g.dtype == jnp.float64 else np.float32
    return np.asarray(jax.random.normal(key, (g.size,), jnp.float32), dt)


def arnoldi_eigenvalues(
    f: F,
    params: Any,
    g: Array,
    *,
    krylov: int = 30,
    keep: int | None = None,
    max_restarts: int = 10,
    tol: float = 1e-4,
    key: Array | None = None,
) -> ArnoldiResult:
    """Dominant eigenvalues of J_f at g (matrix-free: Arnoldi on Jacobian-vector products)."""
    jvp, _ = _flat_ops(f, params, g)
    return arnoldi(jvp, _start(key, g), krylov=krylov, keep=keep, max_restarts=max_restarts, tol=tol)


def sigma_max(f: F, params: Any, g: Array, *, method: str = "power", max_iter: int = 50, tol: float = 1e-4,
              key: Array | None = None) -> PowerResult:  # fmt: skip
    """sigma_max(J_f) at g (an upper bound on its spectral radius) from J^T J products.

    method="power": power iteration on J^T J (max_iter products); "lanczos": the Arnoldi above on
    the symmetric J^T J (Lanczos with full reorthogonalisation, 20 vectors, up to max_iter
    products), much faster where the top singular values cluster. The residual is always that of
    the J^T J eigenpair, relative to sigma^2.
    """
    _, jtj = _flat_ops(f, params, g)
    v0 = _start(jax.random.key(1) if key is None else key, g)
    if method == "power":
        return power_sigma(jtj, v0, max_iter=max_iter, tol=tol)
    if method == "lanczos":
        krylov = min(20, g.size)
        r = arnoldi(lambda v: jtj(v)[1], v0, krylov=krylov, max_restarts=max(0, (max_iter - krylov) // (krylov // 2)),
                    tol=tol)  # fmt: skip
        return PowerResult(float(np.sqrt(r.radius)), r.explicit_residual, r.converged,
                           [float(np.sqrt(h)) for h in r.history], r.matvecs)  # fmt: skip
    raise ValueError(f"sigma method must be 'power' or 'lanczos', got {method!r}")


# --- cheap, jit-able functions for training ---


def _matrix_spectral_radius(a: Array, squarings: int = 24) -> Array:
    """rho(a) = lim ||a^k||^(1/k), by normalised repeated squaring (no eig: works on any backend)."""

    def body(_, c):
        a, log_r = c
        a = jnp.matmul(a, a, precision=_HIGHEST)
        s = jnp.linalg.norm(a)
        return a / jnp.maximum(s, jnp.finfo(a.dtype).tiny), 2 * log_r + jnp.log(s)

    s = jnp.linalg.norm(a)
    a, log_r = jax.lax.fori_loop(0, squarings, body, (a / jnp.maximum(s, jnp.finfo(a.dtype).tiny), jnp.log(s)))
    return jnp.exp(log_r / 2.0**squarings)


def spectral_radius_estimate(f: F, params: Any, g: Array, *, eta: float = 1.0, iters: int = 20,
                             key: Array) -> Array:  # fmt: skip
    """Estimate of the spectral radius of eta * J_f at g: the largest Ritz value modulus of `iters`
    Arnoldi steps (no restart) on Jacobian-vector products. Pure JAX (jit, any backend); not
    differentiable in any useful sense (use `jacobian_penalty` for training signals).
    """
    dt = jnp.promote_types(g.dtype, jnp.float32)
    params, g = jax.lax.stop_gradient((params, g))
    _, lin = jax.linearize(lambda x: f(params, x), g)
    n = g.size
    m = min(iters, n)

    def matvec(v):
        return lin(v.reshape(g.shape).astype(g.dtype)).reshape(-1).astype(dt)

    v0 = jax.random.normal(key, (n,), dt)
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
    return eta * _matrix_spectral_radius(H[:m, :m])


def jacobian_penalty(
    f: F,
    params: Any,
    g: Array,
    key: Array,
    *,
    kind: str = "frobenius",
    eta: float = 1.0,
    num_probes: int = 1,
    probe: str = "rademacher",
    margin: float = 0.9,
    power_iters: int = 8,
    grad_steps: int = 1,
) -> Array:
    """A differentiable Jacobian regulariser of the field at g (scalar, float32).

    kind="frobenius": Hutchinson estimate of ||eta J_f||_F^2 / g.size, the mean over `num_probes`
      probes v (Rademacher or Gaussian) of ||v^T J||^2 (one vjp each) divided by the element count.
    kind="radius": max(rho - margin, 0)^2 with rho = eta ||J^k u||^(1/k), k = grad_steps, where u is
      the unit vector after `power_iters` power steps (not differentiated); only the last k steps
      carry gradient (norm growth rather than a ratio of iterates, so complex pairs do not make it
      oscillate).
    """
    dt = jnp.promote_types(g.dtype, jnp.float32)

    def fx(x):
        return f(params, x)

    if kind == "frobenius":
        shape = (num_probes, *g.shape)
        if probe == "rademacher":
            v = jax.random.rademacher(key, shape, g.dtype)
        elif probe == "gaussian":
            v = jax.random.normal(key, shape, g.dtype)
        else:
            raise ValueError(f"probe must be 'rademacher' or 'gaussian', got {probe!r}")
        _, vjp = jax.vjp(fx, g)
        vj = jax.vmap(lambda p: vjp(p)[0])(v).astype(dt)
        return eta**2 * jnp.sum(jnp.square(vj)) / (num_probes * g.size)
    if kind == "radius":
        sg = jax.lax.stop_gradient
        _, lin = jax.linearize(lambda x: f(sg(params), x), sg(g))

        def power(_, u):
            u = lin(u).astype(dt)
            return u / jnp.maximum(jnp.linalg.norm(u), jnp.finfo(dt).tiny)

        u = jax.random.normal(key, g.shape, dt)
        u = jax.lax.fori_loop(0, power_iters, power, u / jnp.linalg.norm(u))
        w = sg(u)
        for _ in range(grad_steps):
            w = jax.jvp(fx, (g,), (w.astype(g.dtype),))[1].astype(dt)
        rho = eta * jnp.linalg.norm(w) ** (1.0 / grad_steps)
        return jnp.square(jnp.maximum(rho - margin, 0.0))
    raise ValueError(f"kind must be 'frobenius' or 'radius', got {kind!r}")


# --- MI-Net ---


def with_lax_convs(module):
    """A copy of `module` whose convolutions are XLA's own.

    The model may use custom_vjp convolutions (faster on CPU: conv.py), which have no forward-mode
    rule; jacfwd / jvp / linearize need the plain ones. Values are the same.
    """
    from minet_jax.model import ShareSepConv  # noqa: PLC0415

    module = nnx.clone(module)
    for _, m in nnx.iter_modules(module):
        if isinstance(m, nnx.Conv):
            m.conv_general_dilated = jax.lax.conv_general_dilated
        elif isinstance(m, ShareSepConv) and m.impl == "shift":
            m.impl = "shift_autodiff"
    return module


# One f per graphdef, so that jitted functions taking f as a static argument are reused.
_field = functools.lru_cache(maxsize=64)(field_fn)


def block_fields(model) -> list[tuple[str, int, F, Any, float]]:
    """(name, dilation, f, params, eta) for each IM-block, with forward-mode-safe convolutions;
    official blocks are named as the authors' (res1, res2, res4), others block1..3."""
    model = with_lax_convs(model)
    out = []
    for i, (d, block) in enumerate(zip(model.config.dilations, model.blocks, strict=True)):
        graphdef, params = nnx.split(block.f)
        name = f"res{d}" if model.config.variant == "official" else f"block{i + 1}"
        out.append((name, int(d), _field(graphdef), params, float(block.eta)))
    return out


def _pairs(z: np.ndarray) -> list[list[float]]:
    return [[float(v.real), float(v.imag)] for v in z]


def analyze_point(
    f: F,
    params: Any,
    g: Array,
    *,
    eta: float,
    method: str = "auto",
    top: int = 8,
    krylov: int = 30,
    max_restarts: int = 10,
    tol: float = 1e-4,
    power_iters: int = 50,
    sigma_method: str = "power",
    key: Array | None = None,
) -> dict:
    """Theorem 1 at one point g: spectral radius and sigma_max of eta * J_f, top eigenvalues and
    the method's own accuracy. The key "_eigenvalues" (of J_f, for plotting) is not JSON."""
    key = jax.random.key(0) if key is None else key
    k_eig, k_sig, k_chk = jax.random.split(key, 3)
    if method == "auto":
        method = "exact" if g.size <= EXACT_MAX_UNKNOWNS else "arnoldi"
    t0 = time.perf_counter()
    if method == "exact":
        jac = jacobian_matrix(f, params, g)
        ev, zeros = eigenvalues_of(jac)
        sigma = largest_singular_value(jac)
        # The matrix checked against one Jacobian-vector product (catches layout mistakes).
        v = _start(k_chk, g)
        ref = np.asarray(_jvp(f, params, g, jnp.asarray(v, g.dtype).reshape(g.shape))).reshape(-1)
        check = float(np.linalg.norm(jac @ v - ref) / max(np.linalg.norm(ref), np.finfo(float).tiny))
        radius = float(np.abs(ev[0])) if ev.size else 0.0
        out = {
            "method": "exact", "method_residual": check,
            "convergence": {"what": "||J v - jvp(v)|| / ||jvp(v)|| for a random v", "zero_eigenvalues": zeros},
            "sigma_convergence": {"what": "exact (largest eigenvalue of the Gram matrix)"},
        }  # fmt: skip
        eigs = ev
    elif method == "arnoldi":
        r = arnoldi_eigenvalues(f, params, g, krylov=krylov, max_restarts=max_restarts, tol=tol, key=k_eig)
        p = sigma_max(f, params, g, method=sigma_method, max_iter=power_iters, tol=tol, key=k_sig)
        radius, sigma, eigs = r.radius, p.sigma, r.ritz
        out = {
            "method": "arnoldi", "method_residual": r.explicit_residual,
            "convergence": {
                "what": "top Ritz pair ||J x - theta x|| / (|theta| ||x||), recomputed", "converged": r.converged,
                "krylov_residual": float(r.residuals[0]), "restarts": r.restarts, "matvecs": r.matvecs,
                "top_modulus_history": r.history,
            },
            "sigma_convergence": {
                "what": "||J^T J v - s^2 v|| / s^2", "method": sigma_method, "residual": p.residual,
                "converged": p.converged, "products": p.iterations, "history": p.history[-5:],
            },
        }  # fmt: skip
    else:
        raise ValueError(f"method must be 'auto', 'exact' or 'arnoldi', got {method!r}")
    rho = eta * radius
    out = {
        "spectral_radius": rho, "sigma_max": eta * sigma, "theorem1_holds": bool(rho < 1.0),
        "top_eigenvalues": _pairs(eta * eigs[:top]), **out, "seconds": round(time.perf_counter() - t0, 2),
        "_eigenvalues": eigs,
    }  # fmt: skip
    return out


def _valid(residuals: Array) -> list[float]:
    r = np.asarray(residuals, np.float64)
    return [float(x) for x in r[~np.isnan(r)]]


@jax.jit(static_argnums=(0, 3, 4, 5))
def _fixed_point(f: F, params: Any, g0: Array, eta: float, tol: float, max_iter: int):
    return solvers.fixed_point(f, params, g0, eta=eta, tol=tol, max_iter=max_iter)


@jax.jit(static_argnums=0)
def _forward_aux(graphdef, state, x: Array):
    _, aux = nnx.merge(graphdef, state)(x, with_aux=True)
    return aux["block_inputs"], aux["block_outputs"], [s.residuals for s in aux["solver_stats"]]


def analyze_model(
    model,
    x: Array,
    *,
    method: str = "auto",
    fixed_point: bool = False,
    fp_tol: float = 1e-3,
    fp_max_iter: int = 100,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
    **kw,
) -> dict:
    """Theorem 1 for every IM-block of `model` on network input `x` (NHWC, the network's space),
    at the block's output g_T and, with `fixed_point`, at the fixed point reached from g0.
    `kw` goes to `analyze_point`."""
    log = log or (lambda s: None)
    graphdef, state = nnx.split(with_lax_convs(model))
    g0s, gTs, residuals = _forward_aux(graphdef, state, x)
    blocks = []
    key = jax.random.key(seed)
    for i, (name, d, f, params, eta) in enumerate(block_fields(model)):
        k_t, k_fp = jax.random.split(jax.random.fold_in(key, i))
        log(f"{name}: {gTs[i].size} unknowns, analysing g_T")
        entry = {"name": name, "dilation": d, "eta": eta, "unknowns": int(gTs[i].size)}
        entry.update(analyze_point(f, params, gTs[i], eta=eta, method=method, key=k_t, **kw))
        entry["forward_residuals"] = _valid(residuals[i])
        if fixed_point:
            g_star, stats = _fixed_point(f, params, g0s[i], eta, fp_tol, fp_max_iter)
            conv = bool(stats.residual < fp_tol)
            fp = {
                "converged": conv, "tol": fp_tol, "max_iter": fp_max_iter, "iterations": int(stats.iterations),
                "final_residual": float(stats.residual), "residuals": _valid(stats.residuals),
                "distance_to_g_T": float(solvers.relative_residual(gTs[i], g_star)),
            }  # fmt: skip
            if conv:
                log(f"{name}: fixed point after {fp['iterations']} iterations, analysing g*")
                fp.update(analyze_point(f, params, g_star, eta=eta, method=method, key=k_fp, **kw))
            else:
                fp["status"] = "did not converge"
            entry["fixed_point"] = fp
        log(f"{name}: rho(eta J) = {entry['spectral_radius']:.4f}, sigma_max = {entry['sigma_max']:.4f}")
        blocks.append(entry)
    return {"blocks": blocks}


# --- report ---


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if not k.startswith("_")}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def plot_eigenvalues(report: dict, path: str | Path) -> None:
    """One panel per block: eigenvalues (or Ritz values) of J_f and the circle |z| = 1/eta."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = report["blocks"]
    fig, axes = plt.subplots(1, len(blocks), figsize=(4.2 * len(blocks), 4.2), squeeze=False)
    for ax, b in zip(axes[0], blocks, strict=True):
        what = "eigenvalues" if b["method"] == "exact" else "Ritz values"
        ev = b["_eigenvalues"]
        ax.scatter(ev.real, ev.imag, s=6, alpha=0.6, label=f"{what} at g_T")
        fp = b.get("fixed_point", {})
        if "_eigenvalues" in fp:
            ax.scatter(fp["_eigenvalues"].real, fp["_eigenvalues"].imag, s=14, marker="x", alpha=0.6,
                       label=f"{what} at g*")  # fmt: skip
        r = 1.0 / b["eta"]
        t = np.linspace(0, 2 * np.pi, 400)
        ax.plot(r * np.cos(t), r * np.sin(t), "k--", lw=1, label="|z| = 1/eta")
        lim = 1.1 * max(r, float(np.max(np.abs(ev), initial=0.0)))
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.axhline(0, color="0.8", lw=0.5)
        ax.axvline(0, color="0.8", lw=0.5)
        ax.set_title(f"{b['name']}: rho(eta J) = {b['spectral_radius']:.3f}")
        ax.set_xlabel("Re")
        ax.set_ylabel("Im")
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_residuals(report: dict, path: str | Path) -> None:
    """Forward relative residual per iteration, per block (network's T steps; fixed point dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, b in enumerate(report["blocks"]):
        c = f"C{i}"
        r = b["forward_residuals"]
        ax.semilogy(range(1, len(r) + 1), r, "o-", color=c, ms=3, label=f"{b['name']} (network, T={len(r)})")
        fp = b.get("fixed_point")
        if fp and fp["residuals"]:
            ax.semilogy(range(1, len(fp["residuals"]) + 1), fp["residuals"], "--", color=c,
                        label=f"{b['name']} fixed point")  # fmt: skip
    ax.set_xlabel("iteration")
    ax.set_ylabel("||g_next - g|| / ||g||")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def center_crop(img: np.ndarray, size: int) -> np.ndarray:
    """The central size x size crop of an HxWxC image."""
    h, w = img.shape[:2]
    if size > min(h, w):
        raise ValueError(f"--crop {size} is larger than the image ({h}x{w})")
    top, left = (h - size) // 2, (w - size) // 2
    return img[top : top + size, left : left + size]


def main(argv: list[str] | None = None) -> dict:
    """CLI entry point; returns the JSON-able report it wrote."""
    ap = argparse.ArgumentParser(prog="python -m minet_jax.stability", description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, help="authors' .pth or a minet-jax checkpoint dir")
    ap.add_argument("--image", required=True)
    ap.add_argument("--crop", type=int, default=None, help="central S x S crop (features are S/2 x S/2)")
    ap.add_argument("--output", required=True)
    ap.add_argument("--method", choices=("auto", "exact", "arnoldi"), default="auto")
    ap.add_argument("--fixed-point", action="store_true", help="also solve to the fixed point and analyse it")
    ap.add_argument("--fp-tol", type=float, default=1e-3)
    ap.add_argument("--fp-max-iter", type=int, default=100)
    ap.add_argument("--krylov", type=int, default=30)
    ap.add_argument("--max-restarts", type=int, default=10)
    ap.add_argument("--tol", type=float, default=1e-4, help="Arnoldi / power-iteration residual tolerance")
    ap.add_argument("--power-iters", type=int, default=50, help="J^T J products for sigma_max (at most)")
    ap.add_argument("--sigma-method", choices=("power", "lanczos"), default="power")
    ap.add_argument("--top", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from minet_jax.checkpoint import load_pretrained
    from minet_jax.imageio import read_rgb
    from minet_jax.inference import as_rgb01, to_network

    model = load_pretrained(args.checkpoint)
    rgb = read_rgb(args.image)
    if args.crop:
        rgb = center_crop(rgb, args.crop)
    x = to_network(jnp.asarray(as_rgb01(rgb))[None], model.config.input_format)
    t0 = time.perf_counter()
    report = analyze_model(
        model, x, method=args.method, fixed_point=args.fixed_point, fp_tol=args.fp_tol,
        fp_max_iter=args.fp_max_iter, seed=args.seed, log=lambda s: print(s, flush=True), top=args.top,
        krylov=args.krylov, max_restarts=args.max_restarts, tol=args.tol, power_iters=args.power_iters,
        sigma_method=args.sigma_method,
    )  # fmt: skip
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    plot_eigenvalues(report, out / "eigenvalues.png")
    plot_residuals(report, out / "residuals.png")
    report = {
        "checkpoint": str(args.checkpoint), "image": str(args.image), "crop": args.crop,
        "input_shape": list(x.shape), "method": args.method, "seconds": round(time.perf_counter() - t0, 1),
        **_strip(report),
    }  # fmt: skip
    (out / "stability.json").write_text(json.dumps(report, indent=2))
    for b in report["blocks"]:
        fp = b.get("fixed_point")
        fps = "" if fp is None else (
            f", fixed point: {fp['iterations']} it, rho {fp['spectral_radius']:.4f}" if fp["converged"]
            else ", fixed point: did not converge")  # fmt: skip
        print(f"{b['name']}: rho(eta J) {b['spectral_radius']:.4f} ({b['method']}), sigma_max {b['sigma_max']:.4f}, "
              f"theorem 1 {'holds' if b['theorem1_holds'] else 'fails'}{fps}")  # fmt: skip
    return report


if __name__ == "__main__":
    main()
