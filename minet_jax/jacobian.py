"""Jacobian probes of an IM-block's field f (the paper's Theorem 1) and their regularisers.

Theorem 1: the iteration g <- g0 + eta f(g) is stable where every eigenvalue of eta * J_f (J_f the
Jacobian of the field at the point) lies inside the unit circle, i.e. the spectral radius of
eta * J_f is < 1.

- Exact (small crops): `jax.jacfwd` of the pure field f, all eigenvalues by numpy.
- Matrix-free (any size): the dominant eigenvalues by Arnoldi on Jacobian-vector products, and
  sigma_max(J_f), an upper bound on the spectral radius, from J^T J products (linalg.py).
- For training: `spectral_radius_estimate` (jit-able, fixed-size Arnoldi) and `jacobian_penalty`
  (Hutchinson ||J_f||_F^2 or a power-iteration radius hinge, as in Bai et al., "Stabilizing
  equilibrium models by Jacobian regularization").

`jax.jacfwd` and `jvp` are applied to the field f itself, never to a solver's custom_vjp; the
fields come from `block_fields`, built with forward-mode-safe layers. The command line and plots
are `python -m minet_jax.tools.stability`.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from minet_jax import linalg, solvers
from minet_jax.model import MINet, conv_vjp, field_fn, share_sep_impl

Array = jax.Array
F = solvers.F

EXACT_MAX_UNKNOWNS = 4096  # method "auto" takes the exact route up to this many unknowns per block

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
) -> linalg.ArnoldiResult:
    """Dominant eigenvalues of J_f at g (matrix-free: Arnoldi on Jacobian-vector products)."""
    jvp, _ = _flat_ops(f, params, g)
    return linalg.arnoldi(jvp, _start(key, g), krylov=krylov, keep=keep, max_restarts=max_restarts, tol=tol)


def sigma_max(f: F, params: Any, g: Array, *, method: str = "power", max_iter: int = 50, tol: float = 1e-4,
              key: Array | None = None) -> linalg.PowerResult:  # fmt: skip
    """sigma_max(J_f) at g (an upper bound on its spectral radius) from J^T J products.

    method="power": power iteration on J^T J (max_iter products); "lanczos": the Arnoldi above on
    the symmetric J^T J (Lanczos with full reorthogonalisation, 20 vectors, up to max_iter
    products), much faster where the top singular values cluster. The residual is always that of
    the J^T J eigenpair, relative to sigma^2.
    """
    _, jtj = _flat_ops(f, params, g)
    v0 = _start(jax.random.key(1) if key is None else key, g)
    if method == "power":
        return linalg.power_sigma(jtj, v0, max_iter=max_iter, tol=tol)
    if method == "lanczos":
        krylov = min(20, g.size)
        r = linalg.arnoldi(lambda v: jtj(v)[1], v0, krylov=krylov, max_restarts=max(0, (max_iter - krylov) // (krylov // 2)),
                    tol=tol)  # fmt: skip
        return linalg.PowerResult(float(np.sqrt(r.radius)), r.explicit_residual, r.converged,
                           [float(np.sqrt(h)) for h in r.history], r.matvecs)  # fmt: skip
    raise ValueError(f"sigma method must be 'power' or 'lanczos', got {method!r}")


# --- cheap, jit-able functions for training ---


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

    return eta * linalg.ritz_radius(matvec, jax.random.normal(key, (n,), dt), m)


def jacobian_penalty(
    f: F,
    params: Any,
    g: Array,
    key: Array,
    *,
    kind: str = "frobenius",
    eta: float = 1.0,
    samples: int = 1,
    distribution: str = "rademacher",
    margin: float = 0.9,
    power_iters: int = 8,
    grad_steps: int = 1,
) -> Array:
    """A differentiable Jacobian regulariser of the field at g (scalar, float32).

    kind="frobenius": Hutchinson estimate of ||eta J_f||_F^2 / g.size, the mean over `samples`
      random vectors v (`distribution` Rademacher or Gaussian) of ||v^T J||^2 (one vjp each) divided by the element count.
    kind="radius": max(rho - margin, 0)^2 with rho = eta ||J^k u||^(1/k), k = grad_steps, where u is
      the unit vector after `power_iters` power steps (not differentiated); only the last k steps
      carry gradient (norm growth rather than a ratio of iterates, so complex pairs do not make it
      oscillate).
    """
    dt = jnp.promote_types(g.dtype, jnp.float32)

    def fx(x):
        return f(params, x)

    if kind == "frobenius":
        shape = (samples, *g.shape)
        if distribution == "rademacher":
            v = jax.random.rademacher(key, shape, g.dtype)
        elif distribution == "gaussian":
            v = jax.random.normal(key, shape, g.dtype)
        else:
            raise ValueError(f"distribution must be 'rademacher' or 'gaussian', got {distribution!r}")
        _, vjp = jax.vjp(fx, g)
        vj = jax.vmap(lambda p: vjp(p)[0])(v).astype(dt)
        return eta**2 * jnp.sum(jnp.square(vj)) / (samples * g.size)
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


def forward_mode_model(model: MINet) -> MINet:
    """`model` with the same parameters, built with layers that forward mode can differentiate.

    On CPU, ShareSepConv runs as shifted sums with a hand-written (custom_vjp) gradient and the
    IM-block convolutions with another (`conv_vjp="explicit"`), which jacfwd / jvp / linearize
    cannot go through, nor `remat`'s recomputed segments; `share_sep_impl="shift_autodiff"`,
    `conv_vjp="lax"` and no remat are the same ops left to JAX's autodiff. Values are identical."""
    cfg = model.config
    if share_sep_impl(cfg) != "shift" and conv_vjp(cfg) != "explicit" and not cfg.get("remat", False):
        return model
    return nnx.merge(_forward_mode_graphdef(model.config.to_json()), nnx.state(model))


@functools.lru_cache(maxsize=16)
def _forward_mode_graphdef(config_json: str) -> nnx.GraphDef:
    cfg = ml_collections.ConfigDict(json.loads(config_json))
    cfg.dilations = tuple(cfg.dilations)
    if share_sep_impl(cfg) == "shift":
        cfg.share_sep_impl = "shift_autodiff"
    cfg.conv_vjp = "lax"
    cfg.remat = False
    return nnx.graphdef(nnx.eval_shape(lambda: MINet(cfg, rngs=nnx.Rngs(0))))


# One f per graphdef, so that jitted functions taking f as a static argument are reused.
_field = functools.lru_cache(maxsize=64)(field_fn)


def block_fields(model) -> list[tuple[str, int, F, Any, float]]:
    """(name, dilation, f, params, eta) for each IM-block, with forward-mode-safe convolutions;
    official blocks are named as the authors' (res1, res2, res4), others block1..3."""
    if model.config.block != "im":
        raise ValueError(
            f"Theorem 1's probes need IM-blocks (model.block='im'), got model.block={model.config.block!r}"
        )
    model = forward_mode_model(model)
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
        ev, zeros = linalg.eigenvalues_of(jac)
        sigma = linalg.largest_singular_value(jac)
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
    graphdef, state = nnx.split(forward_mode_model(model))
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
